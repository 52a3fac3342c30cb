#!/usr/bin/env python
"""Decode a TransVFC bitstream and run a downstream task on the decoded features.

    python tools/vfc_decode.py STREAM --task detection --config-file CFG [KEY VALUE ...]
    python tools/vfc_decode.py clip.tvfc --task sem_seg --visualize --frames frames_dir/ \
        --config-file configs/synthetic/transvfc_stage2_slim_semseg.yaml MODEL.WEIGHTS ...

Decoded res2 features -> the task's FST -> the frozen task tail. The stream must come from the
same model (config + weights; checked with the model hash in its header) and is decoded with
the encoder's torch thread count, so the features equal the encoder's reconstruction bit for
bit. Foreign, corrupted or truncated streams are refused with an error before any output.

Writes into --output-dir (default: STREAM's name + "_<task>"):
  predictions.json   per frame: type, bits and, for detection, boxes (XYXY, source pixels),
                     scores, classes; for segmentation the label-map file
  sem_seg/fNNNNN.png label maps (segmentation tasks)
  vis/fNNNNN.png     with --visualize: predictions drawn on the source frames (--frames) or,
                     without them, on the FST's coarse reconstruction of the frame
Prints a JSON summary (frames, bits, bpp at the source resolution).
"""
import argparse
import io
import json
import os
import sys

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from PIL import Image

import vcm_d2  # noqa: F401  (registers the TransVFC meta-architecture and datasets)
from vcm_d2.engine.tool_setup import load_model, setup_cfg
from vcm_d2.modeling.transvfc.container import ContainerError, load_stream
from vcm_d2.modeling.transvfc.meta_arch import PIXEL_RANGE, TransVFC
from vcm_d2.utils.drawing import draw_instances, draw_sem_seg
from vcm_d2.utils.io import atomic_write_bytes
from vcm_d2.utils.tensor_io import save_tensors
from vcm_d2.utils.video import iter_video_frames

FRAME_NAME = "f{:05d}.png"
GRAY = 128  # canvas of --visualize when the task has no coarse image and no --frames
SCORE_THRESHOLD = 0.5  # detections drawn (all are written to predictions.json)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stream", help="stream written by tools/vfc_encode.py")
    p.add_argument("--config-file", required=True, help="TransVFC config (as for encoding)")
    p.add_argument("--task", default=None,
                   help="task of the config's MODEL.VCM.TRANSVFC.TASKS (default: the first)")
    p.add_argument("--output-dir", default=None, help="where to write predictions")
    p.add_argument("--visualize", action="store_true", help="draw predictions into vis/")
    p.add_argument("--frames", default=None,
                   help="source video or frame folder to draw on (with --visualize)")
    p.add_argument("--dataset", default=None,
                   help="registered dataset whose metadata names the classes "
                        "(default: the config's first DATASETS.TEST)")
    p.add_argument("--save-features", default=None,
                   help="also save the decoded res2 features (torch file)")
    p.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    # Intermixed: options may come after the positional arguments (STREAM -o OUT ... KEY VALUE).
    return p.parse_intermixed_args(argv)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _metadata(cfg, name):
    name = name or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    return MetadataCatalog.get(name) if name else MetadataCatalog.get("__unused__")


def _to_rgb(image: np.ndarray, input_format: str) -> np.ndarray:
    return image[:, :, ::-1] if input_format == "BGR" else image


def _canvas(coarse, size, input_format):
    """The FST's coarse frame (in [0, 1], INPUT.FORMAT) as an RGB image of ``size``."""
    h, w = size
    if coarse is None:
        return np.full((h, w, 3), GRAY, dtype=np.uint8)
    x = torch.nn.functional.interpolate(coarse[:1].float(), size=(h, w), mode="bilinear",
                                        align_corners=False)[0]
    x = (x.clamp(0, 1) * PIXEL_RANGE).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(_to_rgb(x, input_format))


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts, TransVFC.__name__)
    model = load_model(cfg)
    task = (args.task or next(iter(model.tasks), "")).lower()
    if task not in model.tasks:
        raise SystemExit(f"vfc_decode: task {args.task!r} is not in this config's TASKS "
                         f"{list(model.tasks)}")
    tail = model.tasks[task]
    data = load_stream(args.stream)
    try:
        parsed = model.read_header(data)
    except ContainerError as e:
        raise SystemExit(f"vfc_decode: {args.stream}: {e}") from e
    header, frames = parsed.header, model.decode_parsed(parsed)
    out_dir = args.output_dir or f"{os.path.splitext(args.stream)[0]}_{task}"
    os.makedirs(out_dir, exist_ok=True)
    metadata = _metadata(cfg, args.dataset)
    sources = iter_video_frames(args.frames) if (args.visualize and args.frames) else None
    records, features, total_bits = [], [], 0
    for frame in frames:
        with torch.no_grad():
            transferred = model.transfer(task, frame.feature)
            result = tail.inference(tail.high_features(transferred["feature"]),
                                    [header.image_size], [header.original_size])[0]
        prediction = result[tail.output_key]
        record = {"frame": frame.index, "type": frame.frame_type, "bits": frame.bits}
        total_bits += frame.bits
        if tail.output_key == "instances":
            inst = prediction.to("cpu")
            record.update(boxes=inst.pred_boxes.tensor.tolist(), scores=inst.scores.tolist(),
                          classes=inst.pred_classes.tolist())
        elif tail.output_key == "sem_seg":
            labels = prediction.argmax(dim=0).to("cpu").numpy().astype(np.uint8)
            rel = os.path.join("sem_seg", FRAME_NAME.format(frame.index))
            atomic_write_bytes(os.path.join(out_dir, rel), _png_bytes(labels))
            record["sem_seg_file"] = rel
        if args.visualize:
            source = next(sources, None) if sources is not None else None
            if source is not None and source.shape[:2] != tuple(header.original_size):
                raise SystemExit(f"vfc_decode: --frames frame {frame.index} is "
                                 f"{source.shape[:2]}, the stream's source was "
                                 f"{tuple(header.original_size)}")
            canvas = source if source is not None else _canvas(
                transferred["coarse_image"], header.original_size, cfg.INPUT.FORMAT)
            if tail.output_key == "instances":
                drawn = draw_instances(canvas, inst, metadata.get("thing_classes", None),
                                       SCORE_THRESHOLD)
            else:
                drawn = draw_sem_seg(canvas, labels)
            atomic_write_bytes(os.path.join(out_dir, "vis", FRAME_NAME.format(frame.index)),
                               _png_bytes(drawn))
        records.append(record)
        if args.save_features:
            features.append(frame.feature)
    atomic_write_bytes(os.path.join(out_dir, "predictions.json"),
                       json.dumps({"task": task, "frames": records}).encode("utf-8"))
    if args.save_features:
        save_tensors(args.save_features, features)
    h, w = header.original_size
    summary = {"stream": args.stream, "task": task, "frames": len(records),
               "bits": total_bits, "bpp": total_bits / (len(records) * h * w),
               "model_id": header.model_id, "output_dir": out_dir}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
