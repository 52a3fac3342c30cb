#!/usr/bin/env python
"""Encode a video into a TransVFC bitstream.

    python tools/vfc_encode.py VIDEO -o STREAM --config-file CFG [KEY VALUE ...]
    python tools/vfc_encode.py frames_dir/ -o clip.tvfc \
        --config-file configs/synthetic/transvfc_stage2_slim_detection.yaml \
        MODEL.WEIGHTS output/synthetic/transvfc_stage2_slim_detection/model_final.pth

VIDEO is a video file (decoded with PyAV) or a folder of frames (sorted by name). Frames are
resized like detectron2's DefaultPredictor (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), their res2
features coded with an I-frame every GOP frames, and the stream written atomically. The header
records the model hash and the torch thread count: decode with tools/vfc_decode.py and the
same config and weights. Prints a JSON summary (frames, bytes, bpp at the source resolution).
"""
import argparse
import json
import sys

import torch

import vcm_d2  # noqa: F401  (registers the TransVFC meta-architecture)
from vcm_d2.engine.tool_setup import load_model, setup_cfg
from vcm_d2.modeling.transvfc import TransVFC
from vcm_d2.modeling.transvfc.container import save_stream
from vcm_d2.utils.tensor_io import save_tensors
from vcm_d2.utils.video import iter_video_frames, prepare_frame


def _chain(first, rest):
    yield first
    yield from rest


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="video file or folder of frames")
    p.add_argument("-o", "--output", required=True, help="stream file to write")
    p.add_argument("--config-file", required=True, help="TransVFC config")
    p.add_argument("--max-frames", type=int, default=None, help="code at most this many frames")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (stored in the stream; the decoder uses the same)")
    p.add_argument("--save-features", default=None,
                   help="also save the encoder's reconstructed res2 features (torch file)")
    p.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    # Intermixed: options may come after the positional arguments (STREAM -o OUT ... KEY VALUE).
    return p.parse_intermixed_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, args.opts, TransVFC.__name__)
    model = load_model(cfg)
    source = iter_video_frames(args.video, args.max_frames)
    first = next(source, None)
    if first is None:
        raise SystemExit(f"vfc_encode: no frames in {args.video}")
    original_size = first.shape[:2]
    coded = {"frames": 0, "size": None}

    def frames():  # streamed: only the records stay in memory
        for rgb in _chain(first, source):
            if rgb.shape[:2] != original_size:
                raise SystemExit(f"vfc_encode: frame {coded['frames']} is {rgb.shape[:2]}, the "
                                 f"first frame was {original_size}")
            image = prepare_frame(rgb, cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST,
                                  cfg.INPUT.MAX_SIZE_TEST)
            coded["frames"] += 1
            coded["size"] = list(image.shape[-2:])
            yield image

    encoded = model.encode_video(frames(), original_size=original_size,
                                 return_features=args.save_features is not None)
    save_stream(args.output, encoded.stream)
    if args.save_features:
        save_tensors(args.save_features, encoded.features)
    pixels = coded["frames"] * original_size[0] * original_size[1]
    summary = {
        "stream": args.output,
        "frames": coded["frames"],
        "frame_types": "".join(encoded.frame_types),
        "bytes": len(encoded.stream),
        "bpp": 8 * len(encoded.stream) / pixels,
        "original_size": list(original_size),
        "coded_size": coded["size"],
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
