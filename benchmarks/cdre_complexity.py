#!/usr/bin/env python
"""CDRE overhead vs the paper (Sec. III-C): parameters, MACs, decoder-side time, side-stream rate.

1. Parameters and MACs per pixel (``vcm_d2.evaluation.complexity.complexity_report``, fvcore:
   one multiply-add = 1 MAC) of the CNN version at R50 widths (configs/CDRE/
   faster_rcnn_R_50_FPN_ours.yaml) at HEIGHTxWIDTH: encoder side (paper: 18K params,
   0.89K MACs/px), distortion decoder and embedding (paper: 1.61K MACs/px for the CNN
   decoder), CDRE total (paper: 1.9M params). The same for the Transformer version at Swin-T
   widths (configs/CDRE/mask_rcnn_swin_T_FPN_ours.yaml): token decoder (paper: 0.33K
   MACs/px), per-stage MLP and cross-attention, CDRE total (paper: 3.7M params). The CNN
   embedding is measured for every fusion option (MODEL.VCM.CDRE.EMBEDDING, --embeddings:
   "attention_fusion" f + Proj(CA(SA(f, d))), "gated" f + gamma * CA(SA(f, d))_f). Next to
   CDRE's decoder side: the restoration network R of the "restore, then analyse" competitor
   (Table I's PromptIR / PromptCIR / CascadeNet rows) at its R50 default config (configs/CDRE/
   faster_rcnn_R_50_FPN_restore.yaml), which the receiver runs on every decoded frame.
2. Decoder-side time on this CPU as a fraction of Faster R-CNN R50-FPN inference at the same
   size, all measured in one interleaved loop (median of --runs) so load changes affect every
   number alike; the load average before and after the loop is reported with them, and every
   item's median CPU time of the process next to its median wall time (with one thread the
   CPU time leaves out the time spent waiting for a core on a loaded machine). Each CDRE
   model (one per embedding option) gets the plain model's weights (only the CDRE modules
   differ). Overhead is measured three ways: the decoder-side modules alone; the CDRE ResNet
   minus the same ResNet run without CDRE; full CDRERCNN inference from the side stream minus
   plain inference. Side-stream decoding (Python range decoder) is listed separately. The
   restoration network R is timed alone (restore-then-detect inference is R + the plain
   detector, whose preprocessing is unchanged).
3. Side-stream rate at HEIGHTxWIDTH and --fps, raw vs cabac, on the y_hat of a TRAINED CDRE
   model (--weights, e.g. the "ours" model of benchmarks/cdre_table1.py or `make demo`)
   applied to decoded video: a synthetic video rendered at HEIGHTxWIDTH, the benchmark's own
   decoded validation videos (--pairs-root, native size), a pan over matplotlib's sample
   photo, and --video files (read with PyAV; e.g. opencv-doc's vtest.avi when installed).
   cabac is reported per frame without context (an image stream per frame), per frame with
   the previous frame as context, as one packet per sequence, and as the video side stream
   the evaluator counts for frames of a video (header once; raw and cabac records).

    python benchmarks/cdre_complexity.py --weights output/cdre_table1/ours/model_final.pth \\
        --pairs-root output/cdre_table1/compressed
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone import ResNet
from torch import nn

import vcm_d2  # noqa: F401  (registers the CDRE architecture and the synthetic benchmark)
from vcm_d2.codecs import build_codec
from vcm_d2.data.synthetic import VAL_SPEC, render_video
from vcm_d2.engine import get_vcm_cfg
from vcm_d2.evaluation.complexity import complexity_report, format_complexity
from vcm_d2.modeling.cdre import CDREEncoderSide, decode_side_stream, encode_side_stream
from vcm_d2.modeling.cdre.embedding import CNN_FUSIONS
from vcm_d2.modeling.cdre.side_stream import HEADER_BYTES
from vcm_d2.modeling.cdre.video_side_stream import (
    RECORD_CHECK_BYTES,
    VIDEO_HEADER_BYTES,
    encode_video_side_stream,
)
from vcm_d2.modeling.cdre.swin_backbone import swin_stage_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_CDRE_CONFIG = os.path.join(REPO, "configs", "CDRE", "faster_rcnn_R_50_FPN_ours.yaml")
R50_PLAIN_CONFIG = os.path.join(REPO, "configs", "CDRE", "faster_rcnn_R_50_FPN_direct.yaml")
R50_RESTORE_CONFIG = os.path.join(REPO, "configs", "CDRE", "faster_rcnn_R_50_FPN_restore.yaml")
SLIM_CDRE_CONFIG = os.path.join(REPO, "configs", "synthetic", "cdre_faster_rcnn_R18_slim_ours.yaml")
SWIN_T_CDRE_CONFIG = os.path.join(REPO, "configs", "CDRE", "mask_rcnn_swin_T_FPN_ours.yaml")
VAL_SET = "vcm_synth_val"
# The paper's numbers (Sec. III-C).
PAPER = {"encoder_params": 18e3, "encoder_macs_px": 0.89e3, "cnn_decoder_macs_px": 1.61e3,
         "total_params": 1.9e6, "side_kbps_720p30": 20.0,
         "token_decoder_macs_px": 0.33e3, "transformer_total_params": 3.7e6}
TIME_GOAL = 0.05  # decoder-side time / detector inference time (issue goal)
PARAMS_TOLERANCE = 0.15  # parameter counts vs the paper's (issue goal)
# CNN embedding options (MODEL.VCM.CDRE.EMBEDDING) measured side by side.
EMBEDDINGS = tuple(CNN_FUSIONS)
# Row and timed-item names (per embedding option: "<name> [<option>]").
EMBEDDING_ROW = "embedding (R50 stage inputs)"
DECODER_SIDE_ROW = "decoder side (decoder + embedding)"
PLAIN_INFERENCE = "plain Faster R-CNN inference"
PLAIN_RESNET = "plain ResNet-50"
CDRE_INFERENCE = "CDRE Faster R-CNN inference (from side stream)"
CDRE_RESNET = "CDRE ResNet-50 (decoder side inside)"
DECODER_SIDE_ALONE = "decoder side alone"
# The restoration network of the "restore, then analyse" competitor (complexity row, timed item).
RESTORATION_ROW = "restoration network R (restore, then analyse)"
CABAC_GOAL = 0.60  # cabac bits / raw bits (issue goal)
# Synthetic 720p video: object sizes and motions of the 128-px benchmark scaled by the frame
# height, fine textures (px periods) unchanged, more objects for the larger area.
SYNTH_REFERENCE_HEIGHT = 128
SYNTH_MAX_OBJECTS = 12
# matplotlib's sample photo, panned at this speed (px/frame) after upscaling to cover the frame.
SAMPLE_PHOTO = ("sample_data", "grace_hopper.jpg")
PHOTO_PAN_PX = 4

logger = logging.getLogger("vcm_d2.cdre_complexity")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=720, help="frame height (px)")
    p.add_argument("--width", type=int, default=1280, help="frame width (px)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate for KB/s")
    p.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--embeddings", nargs="+", default=list(EMBEDDINGS), choices=EMBEDDINGS,
                   help="CNN embedding options (MODEL.VCM.CDRE.EMBEDDING) to measure")
    p.add_argument("--weights", default="", help="trained CDRE model (model_final.pth) for part 3")
    p.add_argument("--model-config", default=SLIM_CDRE_CONFIG, help="config of --weights")
    p.add_argument("--codec", default="x264", help="codec of the videos of part 3")
    p.add_argument("--quality", type=float, default=27, help="codec quality (CRF / QP) of part 3")
    p.add_argument("--gop", type=int, default=12, help="key-frame interval of the codec")
    p.add_argument("--frames", type=int, default=12, help="frames per video of part 3")
    p.add_argument("--pairs-root", default="",
                   help="compressed pair root (tools/compress_dataset.py output) whose "
                        "vcm_synth_val/<codec>/q<quality> decoded frames are also measured")
    p.add_argument("--video", nargs="*", default=[], help="extra real video files for part 3")
    p.add_argument("--output", default="output/cdre_complexity", help="folder for results.json / report.md")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- models
def _cfg(path: str, extra: Sequence = ()):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(extra))
    return cfg


class Embedding(nn.Module):
    """The embedding stages only (d_0 given)."""

    def __init__(self, decoder_side):
        super().__init__()
        self.side = decoder_side

    def forward(self, d, *stage_inputs):
        outs = []
        for name, f in zip(self.side.stage_names, stage_inputs):
            f, d = self.side(name, f, d)
            outs.append(f)
        return tuple(outs)


class DecoderSide(Embedding):
    """CDRE decoder side alone: y_hat -> d_0, then the embedding before each stage, given the
    stage inputs (the backbone stages themselves are not run)."""

    def forward(self, y_hat, *stage_inputs):
        return super().forward(self.side.decode(y_hat), *stage_inputs)


class PlainResNet(nn.Module):
    """A CDREResNet run as detectron2's plain ResNet (same modules and weights, no CDRE)."""

    def __init__(self, cdre_resnet):
        super().__init__()
        self.net = cdre_resnet

    def forward(self, x):
        return ResNet.forward(self.net, x)


def stage_inputs(resnet, x: torch.Tensor, names: Sequence[str]) -> List[torch.Tensor]:
    """The tensors entering each stage in ``names`` (plain ResNet forward)."""
    feats = {}
    with torch.no_grad():
        f = resnet.stem(x)
        for name, stage in zip(resnet.stage_names, resnet.stages):
            feats[name] = f
            f = stage(f)
    return [feats[n] for n in names]


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def _per_stage(side) -> List[str]:
    """Submodule names of ``Embedding(side)``'s transform and fusion of every embedded stage."""
    return [f"side.embedding.{part}.{n}" for n in side.stage_names for part in ("transforms", "fusions")]


def _time(fn, warmup: int, store: Dict[str, List[float]], cpu_store: Dict[str, List[float]], key: str) -> None:
    """One timed call: wall-clock ms into ``store``, CPU ms of this process into ``cpu_store``
    (with one thread, the CPU time leaves out the time the process waits for a core)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        store.setdefault(key, []).append((time.perf_counter() - start) * 1000.0)
        cpu_store.setdefault(key, []).append((time.process_time() - cpu_start) * 1000.0)


# ----------------------------------------------------------------------------- part 1 + 2
def _cdre_model(plain: nn.Module, embedding: str) -> nn.Module:
    """The R50-FPN CDRE model with ``embedding`` (MODEL.VCM.CDRE.EMBEDDING) and the plain
    model's weights (seeded: every option gets the same encoder side and decoder)."""
    torch.manual_seed(0)
    cdre = build_model(_cfg(R50_CDRE_CONFIG, ["MODEL.VCM.CDRE.EMBEDDING", embedding])).eval()
    missing = cdre.load_state_dict(plain.state_dict(), strict=False)
    not_cdre = [k for k in missing.missing_keys if ".cdre." not in k and not k.startswith("cdre_")]
    if not_cdre or missing.unexpected_keys:
        raise RuntimeError(f"plain and CDRE R50-FPN differ beyond the CDRE modules: {not_cdre[:5]} "
                           f"{missing.unexpected_keys[:5]}")
    return cdre


def _tag(name: str, embedding: str) -> str:
    return f"{name} [{embedding}]"


def complexity_and_time(h: int, w: int, runs: int, warmup: int,
                        embeddings: Sequence[str] = EMBEDDINGS) -> Dict:
    """Parts 1 and 2 for every CNN embedding option, timed in one interleaved loop."""
    torch.manual_seed(0)
    plain = build_model(_cfg(R50_PLAIN_CONFIG)).eval()
    models = {e: _cdre_model(plain, e) for e in embeddings}
    first = models[embeddings[0]]
    px = h * w
    x = torch.randn(1, 3, h, w)
    x_hat = x + 0.1 * torch.randn_like(x)
    bottom_up = first.backbone.bottom_up
    with torch.no_grad():
        y_hat = first.cdre_encoder(x, x_hat).y_hat
        d0 = bottom_up.cdre.decode(y_hat)
    feats = stage_inputs(bottom_up, x, bottom_up.cdre.stage_names)
    rows = {}
    rows["encoder side"] = complexity_report(first.cdre_encoder, (x, x_hat), num_pixels=px,
                                             submodules=["extractor", "encoder"], time_runs=0)
    rows["distortion decoder (CNN)"] = complexity_report(bottom_up.cdre.decoder, (y_hat,), num_pixels=px,
                                                         time_runs=0)
    for e, model in models.items():
        side = model.backbone.bottom_up.cdre
        rows[_tag(EMBEDDING_ROW, e)] = complexity_report(Embedding(side), (d0, *feats), num_pixels=px,
                                                         submodules=_per_stage(side), time_runs=0)
        rows[_tag(DECODER_SIDE_ROW, e)] = complexity_report(DecoderSide(side), (y_hat, *feats),
                                                            num_pixels=px, time_runs=0)
    # FPN needs sizes divisible by its size_divisibility: pad as the model's preprocessing does.
    div = plain.backbone.size_divisibility
    padded = nn.functional.pad(x, (0, -w % div, 0, -h % div))
    rows["Faster R-CNN R50-FPN backbone"] = complexity_report(plain.backbone, (padded,), num_pixels=px,
                                                              time_runs=0)
    restoration = build_model(_cfg(R50_RESTORE_CONFIG)).restoration.eval()
    rows[RESTORATION_ROW] = complexity_report(restoration, (torch.rand(1, 3, h, w) * 255,), num_pixels=px,
                                              time_runs=0)
    enc_p = sum(p.numel() for p in first.cdre_encoder.parameters())
    dec_p = {e: sum(p.numel() for p in m.backbone.bottom_up.cdre.parameters()) for e, m in models.items()}

    # Interleaved timing: every run times every item once, so load changes hit all alike.
    image = (torch.rand(3, h, w) * 255).round()
    original = (image + 8 * torch.randn_like(image)).clamp(0, 255).round()
    streams = first.encode_side_streams([{"image": image, "original": original}])
    plain_in = [{"image": image, "height": h, "width": w}]
    cdre_in = [{"image": image, "height": h, "width": w, "cdre_bits": streams[0]}]
    plain_res = PlainResNet(bottom_up)
    xn = (image[None] - first.pixel_mean) / first.pixel_std
    on = (original[None] - first.pixel_mean) / first.pixel_std
    items = {PLAIN_INFERENCE: lambda: plain(plain_in), PLAIN_RESNET: lambda: plain_res(xn)}
    for e, model in models.items():
        b, dec_side = model.backbone.bottom_up, DecoderSide(model.backbone.bottom_up.cdre)
        items[_tag(CDRE_INFERENCE, e)] = lambda m=model: m(cdre_in)
        items[_tag(CDRE_RESNET, e)] = lambda b=b: b(xn, y_hat=y_hat)
        items[_tag(DECODER_SIDE_ALONE, e)] = lambda d=dec_side: d(y_hat, *feats)
    items.update({
        "side-stream decode (cabac)": lambda: decode_side_stream(streams[0]),
        "encoder side (sender)": lambda: first.cdre_encoder(on, xn),
        RESTORATION_ROW: lambda: restoration(image[None]),
    })
    times: Dict[str, List[float]] = {}
    cpu_times: Dict[str, List[float]] = {}
    load = [os.getloadavg()]
    for r in range(runs):
        for key, fn in items.items():
            _time(fn, warmup if r == 0 else 0, times, cpu_times, key)
        logger.info("timing run %d/%d done", r + 1, runs)
    load.append(os.getloadavg())
    ms = {k: statistics.median(v) for k, v in times.items()}
    cpu_ms = {k: statistics.median(v) for k, v in cpu_times.items()}
    base = ms[PLAIN_INFERENCE]
    overhead, overhead_cpu = _overheads(ms, embeddings), _overheads(cpu_ms, embeddings)
    return {"complexity": rows, "embeddings": list(embeddings), "encoder_params": enc_p,
            "decoder_side_params": dec_p, "ms": ms, "cpu_ms": cpu_ms, "runs": times, "cpu_runs": cpu_times,
            "load_average_before_after": load, "overhead_ms": overhead,
            "overhead_fraction": {e: {k: v / base for k, v in o.items()} for e, o in overhead.items()},
            "overhead_fraction_cpu": {e: {k: v / cpu_ms[PLAIN_INFERENCE] for k, v in o.items()}
                                      for e, o in overhead_cpu.items()},
            "side_stream_decode_fraction": ms["side-stream decode (cabac)"] / base,
            "restoration_fraction": ms[RESTORATION_ROW] / base,
            "side_stream_bytes_random_weights": len(streams[0])}


def _overheads(ms: Dict[str, float], embeddings: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """The decoder side's time measured three ways (module docstring), per embedding option."""
    return {e: {
        DECODER_SIDE_ALONE: ms[_tag(DECODER_SIDE_ALONE, e)],
        "CDRE ResNet - plain ResNet": ms[_tag(CDRE_RESNET, e)] - ms[PLAIN_RESNET],
        "CDRE inference - plain inference (incl. side-stream decode)":
            ms[_tag(CDRE_INFERENCE, e)] - ms[PLAIN_INFERENCE],
    } for e in embeddings}


def transformer_version(h: int, w: int) -> Dict:
    """Part 1 for the Transformer version (eq. 7) at Swin-T widths: parameters, and MACs/px of
    the token decoder and of the embedding on random stage tokens of the Swin-T sizes."""
    torch.manual_seed(0)
    cfg = _cfg(SWIN_T_CDRE_CONFIG)
    side = build_backbone(cfg).cdre_decoder_side
    swin = cfg.MODEL.VCM.SWIN
    shapes = swin_stage_shapes(swin.EMBED_DIM, len(swin.DEPTHS))
    s = side.latent_stride
    y_hat = (torch.rand(1, side.latent_channels, _ceil(h, s), _ceil(w, s)) > 0.5).float()
    with torch.no_grad():
        d0 = side.decode(y_hat)
    tokens = [torch.randn(1, _ceil(h, shapes[n].stride) * _ceil(w, shapes[n].stride), shapes[n].channels)
              for n in side.stage_names]
    rows = {"token decoder": complexity_report(side.decoder, (y_hat,), num_pixels=h * w, time_runs=0),
            "embedding (Swin-T stage tokens)": complexity_report(Embedding(side), (d0, *tokens), num_pixels=h * w,
                                                                 submodules=_per_stage(side), time_runs=0)}
    # fvcore does not count scaled_dot_product_attention: Q K^T and A V are N x M x C MACs each.
    attention = sum(2 * t.shape[1] * d0.shape[1] * t.shape[2] for t in tokens)
    return {"complexity": rows, "encoder_params": sum(p.numel() for p in CDREEncoderSide(cfg).parameters()),
            "decoder_side_params": sum(p.numel() for p in side.parameters()),
            "attention_products_macs_px": attention / (h * w)}


# ----------------------------------------------------------------------------- part 3
def load_trained(weights: str, config: str):
    cfg = _cfg(config, ["MODEL.WEIGHTS", weights])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    return model, cfg.INPUT.FORMAT


def _chw(frame_rgb: np.ndarray, fmt: str) -> torch.Tensor:
    img = frame_rgb[:, :, ::-1] if fmt == "BGR" else frame_rgb
    return torch.as_tensor(np.ascontiguousarray(img).astype("float32").transpose(2, 0, 1))


def latent_maps(model, fmt: str, originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray]) -> np.ndarray:
    """y_hat of every frame, (T, C, h, w) uint8, from the model's own side streams."""
    maps = []
    for o, d in zip(originals, decoded):
        inp = {"image": _chw(d, fmt), "original": _chw(o, fmt)}
        stream = model.encode_side_streams([inp])[0]
        maps.append(decode_side_stream(stream).numpy().astype(np.uint8))
    return np.stack(maps)


def side_stream_stats(maps: np.ndarray, fps: float) -> Dict:
    """Bytes per frame of raw, cabac (no context / previous frame as context), one packet and
    the video side stream (header once; raw and cabac records)."""
    t = maps.shape[0]
    raw = [len(encode_side_stream(m, "raw")) for m in maps]
    alone = [len(encode_side_stream(m, "cabac")) for m in maps]
    prev_ctx = [len(encode_side_stream(m, "cabac", prev=maps[i - 1] if i else None))
                for i, m in enumerate(maps)]
    seq_cabac, seq_raw = len(encode_side_stream(maps, "cabac")), len(encode_side_stream(maps, "raw"))
    mean = lambda v: float(np.mean(v))  # noqa: E731
    return {
        "frames": t, "map_shape": list(maps.shape[1:]), "ones_fraction": float(maps.mean()),
        "bytes_per_frame": {"raw": mean(raw), "cabac": mean(alone), "cabac_prev": mean(prev_ctx),
                            "cabac_one_packet": seq_cabac / t, "raw_one_packet": seq_raw / t,
                            "video_raw": len(encode_video_side_stream(maps, "raw")) / t,
                            "video_cabac": len(encode_video_side_stream(maps, "cabac")) / t},
        "kB_per_s": {"raw": mean(raw) * fps / 1e3, "cabac": mean(alone) * fps / 1e3,
                     "cabac_prev": mean(prev_ctx) * fps / 1e3, "cabac_one_packet": seq_cabac / t * fps / 1e3},
        "cabac_to_raw": {"per_frame": sum(alone) / sum(raw), "per_frame_prev": sum(prev_ctx) / sum(raw),
                         "one_packet": seq_cabac / seq_raw,
                         "payload_per_frame_prev": (sum(prev_ctx) - HEADER_BYTES * t) / (sum(raw) - HEADER_BYTES * t),
                         "payload_one_packet": (seq_cabac - HEADER_BYTES) / (seq_raw - HEADER_BYTES)},
    }


def synthetic_video(h: int, w: int, frames: int) -> np.ndarray:
    scale = h / SYNTH_REFERENCE_HEIGHT
    spec = replace(VAL_SPEC, num_videos=1, frames_per_video=frames, height=h, width=w,
                   max_objects=SYNTH_MAX_OBJECTS,
                   min_object_size=int(round(VAL_SPEC.min_object_size * scale)),
                   max_object_size=int(round(VAL_SPEC.max_object_size * scale)),
                   min_speed=VAL_SPEC.min_speed * scale, max_speed=VAL_SPEC.max_speed * scale,
                   max_pan_speed=VAL_SPEC.max_pan_speed * scale)
    return render_video(spec, 0).frames


def photo_pan_video(h: int, w: int, frames: int):
    """Frames of a horizontal pan over matplotlib's sample photo, or None if it is missing."""
    import matplotlib
    from PIL import Image

    path = os.path.join(matplotlib.get_data_path(), *SAMPLE_PHOTO)
    if not os.path.exists(path):
        return None
    photo = Image.open(path).convert("RGB")
    span = w + PHOTO_PAN_PX * frames
    factor = max(h / photo.height, span / photo.width)
    big = np.asarray(photo.resize((int(np.ceil(photo.width * factor)), int(np.ceil(photo.height * factor))),
                                  Image.BICUBIC))
    return np.stack([big[:h, i * PHOTO_PAN_PX:i * PHOTO_PAN_PX + w] for i in range(frames)])


def read_video(path: str, frames: int, h: int, w: int) -> np.ndarray:
    """First ``frames`` frames of a video file (PyAV), resized to h x w."""
    import av

    out = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24", width=w, height=h))
            if len(out) == frames:
                break
    if not out:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(out)


def pair_sequences(root: str, codec: str, quality: float, frames: int):
    """(originals, decoded) per validation video from a pair root (native size)."""
    from PIL import Image

    from vcm_d2.data.pairs import MANIFEST_FILENAME, load_pair_dicts, quality_dirname

    manifest = os.path.join(root, VAL_SET, codec, quality_dirname(quality), MANIFEST_FILENAME)
    if not os.path.exists(manifest):
        raise FileNotFoundError(f"--pairs-root: {manifest} not found")
    by_video: Dict[int, List[dict]] = {}
    for r in load_pair_dicts(manifest, VAL_SET):
        by_video.setdefault(r["video_id"], []).append(r)
    seqs = []
    for recs in by_video.values():
        recs = sorted(recs, key=lambda r: r["frame_idx"])[:frames]
        seqs.append(([np.asarray(Image.open(r["original_file_name"]).convert("RGB")) for r in recs],
                     [np.asarray(Image.open(r["file_name"]).convert("RGB")) for r in recs]))
    return seqs


def side_stream_part(args) -> Dict:
    model, fmt = load_trained(args.weights, args.model_config)
    codec = build_codec(args.codec, gop=args.gop)
    results = {}
    sources = {"synthetic": lambda: synthetic_video(args.height, args.width, args.frames),
               "photo pan (matplotlib grace_hopper.jpg)": lambda: photo_pan_video(args.height, args.width, args.frames)}
    for path in args.video:
        sources[f"video {os.path.basename(path)}"] = (lambda p=path: read_video(p, args.frames, args.height, args.width))
    for name, make in sources.items():
        frames = make()
        if frames is None:
            results[name] = {"unavailable": True}
            continue
        coded = codec.encode(list(frames), args.quality)
        maps = latent_maps(model, fmt, frames, coded.frames)
        stats = side_stream_stats(maps, args.fps)
        stats["video_bpp"] = float(np.mean(coded.bpp()))
        results[f"{name} {args.width}x{args.height}"] = stats
        logger.info("side stream on %s done", name)
    if args.pairs_root:
        per_seq = [side_stream_stats(latent_maps(model, fmt, o, d), args.fps)
                   for o, d in pair_sequences(args.pairs_root, args.codec, args.quality, args.frames)]
        keys = per_seq[0]["cabac_to_raw"]
        results[f"benchmark val videos (native size), {len(per_seq)} sequences"] = {
            "map_shape": per_seq[0]["map_shape"],
            "ones_fraction": float(np.mean([s["ones_fraction"] for s in per_seq])),
            "bytes_per_frame": {k: float(np.mean([s["bytes_per_frame"][k] for s in per_seq]))
                                for k in per_seq[0]["bytes_per_frame"]},
            "cabac_to_raw": {k: float(np.mean([s["cabac_to_raw"][k] for s in per_seq])) for k in keys},
        }
    return results


# ----------------------------------------------------------------------------- report
def _fmt_k(v: float) -> str:
    return f"{v / 1e3:.3g}K" if v < 1e6 else f"{v / 1e6:.3g}M"


def transformer_lines(t: Dict) -> List[str]:
    """Report rows of ``transformer_version``."""
    dec, emb = t["complexity"]["token decoder"], t["complexity"]["embedding (Swin-T stage tokens)"]

    def part_sum(tag):
        return sum(m.params for m in emb["modules"] if tag in m.name)

    unsupported = ", ".join(sorted(emb["unsupported_ops"])) or "none"
    return ["## Transformer version (Swin-T widths, configs/CDRE/mask_rcnn_swin_T_FPN_ours.yaml)", "",
            "| quantity | ours | paper |", "|---|---|---|",
            f"| encoder-side params | {_fmt_k(t['encoder_params'])} | {_fmt_k(PAPER['encoder_params'])} |",
            f"| token decoder params / MACs/px | {_fmt_k(dec['total'].params)} / "
            f"{_fmt_k(dec['total'].macs_per_pixel)} | - / {_fmt_k(PAPER['token_decoder_macs_px'])} |",
            f"| embedding: per-stage MLPs params | {_fmt_k(part_sum('.transforms.'))} | - |",
            f"| embedding: cross-attentions params | {_fmt_k(part_sum('.fusions.'))} | - |",
            f"| embedding MACs/px (fvcore; not counted: {unsupported}) | {_fmt_k(emb['total'].macs_per_pixel)} | - |",
            f"| + cross-attention products Q K^T, A V (MACs/px, grow with the frame size) | "
            f"{_fmt_k(t['attention_products_macs_px'])} | - |",
            f"| CDRE params total | {_fmt_k(t['encoder_params'] + t['decoder_side_params'])} | "
            f"{_fmt_k(PAPER['transformer_total_params'])} |", ""]


def restoration_lines(part12: Dict, w: int, h: int) -> List[str]:
    """CDRE's decoder side next to the restoration network of the "restore, then analyse"
    competitor: what the receiver runs per frame besides the detector."""
    c, ms = part12["complexity"], part12["ms"]
    r = c[RESTORATION_ROW]["total"]
    lines = [f"## Decoder side at {w}x{h}: CDRE vs restore, then analyse", "",
             "Restoration network: configs/CDRE/faster_rcnn_R_50_FPN_restore.yaml (the R50 default "
             "MODEL.VCM.RESTORATION); time as a fraction of plain Faster R-CNN R50-FPN inference, same "
             "interleaved runs.", "",
             "| decoder side | params | MACs/px | ms | fraction of plain inference |", "|---|---|---|---|---|"]
    for e in part12["embeddings"]:
        side = c[_tag(DECODER_SIDE_ROW, e)]["total"]
        lines.append(f"| CDRE decoder side (decoder + embedding), EMBEDDING {e} | "
                     f"{_fmt_k(part12['decoder_side_params'][e])} | {_fmt_k(side.macs_per_pixel)} | "
                     f"{ms[_tag(DECODER_SIDE_ALONE, e)]:.1f} | "
                     f"{part12['overhead_fraction'][e][DECODER_SIDE_ALONE]:.2%} |")
    return lines + [
        f"| + CDRE side-stream decode (cabac) | - | - | {ms['side-stream decode (cabac)']:.1f} | "
        f"{part12['side_stream_decode_fraction']:.2%} |",
        f"| restoration network R | {_fmt_k(r.params)} | {_fmt_k(r.macs_per_pixel)} | "
        f"{ms[RESTORATION_ROW]:.1f} | {part12['restoration_fraction']:.2%} |", ""]


def _vs_paper(ours: float, paper: float) -> str:
    dev = ours / paper - 1
    return f"{dev:+.0%}" + ("" if abs(dev) <= PARAMS_TOLERANCE else f" (beyond {PARAMS_TOLERANCE:.0%})")


def embedding_lines(part12: Dict) -> List[str]:
    """One table row group per CNN embedding option: MACs/px, parameters vs the paper."""
    c = part12["complexity"]
    dec = c["distortion decoder (CNN)"]["total"]
    enc_p = part12["encoder_params"]
    lines = ["| EMBEDDING | transform blocks d_i params / MACs/px | fusions params / MACs/px | "
             "embedding MACs/px | decoder side MACs/px | decoder-side params | CDRE params total "
             f"(paper {_fmt_k(PAPER['total_params'])}) |", "|---|---|---|---|---|---|---|"]
    for e in part12["embeddings"]:
        emb = c[_tag(EMBEDDING_ROW, e)]

        def part_sum(tag, field):
            return sum(getattr(m, field) for m in emb["modules"] if tag in m.name)

        total = enc_p + part12["decoder_side_params"][e]
        lines.append(
            f"| {e} | {_fmt_k(part_sum('.transforms.', 'params'))} / "
            f"{_fmt_k(part_sum('.transforms.', 'macs_per_pixel'))} | {_fmt_k(part_sum('.fusions.', 'params'))} / "
            f"{_fmt_k(part_sum('.fusions.', 'macs_per_pixel'))} | {_fmt_k(emb['total'].macs_per_pixel)} | "
            f"{_fmt_k(dec.macs_per_pixel + emb['total'].macs_per_pixel)} | "
            f"{_fmt_k(part12['decoder_side_params'][e])} | {_fmt_k(total)} "
            f"{_vs_paper(total, PAPER['total_params'])} |")
    return lines + [""]


def report_text(args, part12: Dict, part3: Dict, transformer: Dict) -> str:
    h, w = args.height, args.width
    c = part12["complexity"]
    enc, dec = c["encoder side"]["total"], c["distortion decoder (CNN)"]["total"]
    lines = [f"# CDRE complexity at {w}x{h} (R50 widths, CNN version)", "",
             "| quantity | ours | paper |", "|---|---|---|",
             f"| encoder-side params | {_fmt_k(enc.params)} ({_vs_paper(enc.params, PAPER['encoder_params'])}) | "
             f"{_fmt_k(PAPER['encoder_params'])} |",
             f"| encoder-side MACs/px | {_fmt_k(enc.macs_per_pixel)} | {_fmt_k(PAPER['encoder_macs_px'])} |",
             f"| distortion decoder MACs/px | {_fmt_k(dec.macs_per_pixel)} | "
             f"{_fmt_k(PAPER['cnn_decoder_macs_px'])} (\"CNN-version decoder\", scope unstated) |",
             f"| R50-FPN backbone MACs/px (reference) | "
             f"{_fmt_k(c['Faster R-CNN R50-FPN backbone']['total'].macs_per_pixel)} | - |", "",
             "Embedding options (MODEL.VCM.CDRE.EMBEDDING; same transform blocks, different fusion):", ""]
    lines += embedding_lines(part12)
    for name, rep in c.items():
        lines += [f"### {name}", "", format_complexity(rep)]
    lines += transformer_lines(transformer)
    ms = part12["ms"]
    (l1, l5, l15), after = part12["load_average_before_after"]
    lines += [f"## Time on this CPU ({torch.get_num_threads()} threads, median of {args.runs} interleaved runs, "
              f"random weights; load average 1/5/15 min {l1:.2f}/{l5:.2f}/{l15:.2f} before, "
              f"{after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} after, {os.cpu_count()} CPUs)", "",
              "| item | wall ms | CPU ms |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {part12['cpu_ms'][k]:.1f} |" for k, v in ms.items()]
    lines += ["", f"| EMBEDDING | decoder-side overhead | wall ms | fraction of plain inference (goal <= "
                  f"{TIME_GOAL:.0%}): wall / CPU time |", "|---|---|---|---|"]
    for e, overhead in part12["overhead_ms"].items():
        for k, v in overhead.items():
            lines.append(f"| {e} | {k} | {v:.1f} | {part12['overhead_fraction'][e][k]:.2%} / "
                         f"{part12['overhead_fraction_cpu'][e][k]:.2%} |")
    lines += ["", f"Side-stream decode alone: {part12['side_stream_decode_fraction']:.2%} of plain inference.", ""]
    lines += restoration_lines(part12, w, h)
    if part3:
        lines += [f"## Side stream at {args.fps:g} fps, trained model `{args.weights}`, "
                  f"{args.codec} q{args.quality:g} (goal: cabac <= {CABAC_GOAL:.0%} of raw; "
                  f"paper ~{PAPER['side_kbps_720p30']:g} KB/s at 720p30)", "",
                  "| source | map | 1s | raw B/frame | cabac B/frame (no ctx / prev ctx / 1 packet) | "
                  "cabac/raw (no ctx / prev ctx / 1 packet) | payload cabac/raw (prev ctx / 1 packet) | "
                  "KB/s raw / cabac prev ctx | video stream B/frame raw / cabac |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in part3.items():
            if s.get("unavailable"):
                lines.append(f"| {name} | unavailable | | | | | | | |")
                continue
            b, r = s["bytes_per_frame"], s["cabac_to_raw"]
            kbs = s.get("kB_per_s")
            kb = f"{kbs['raw']:.1f} / {kbs['cabac_prev']:.1f}" if kbs else "-"
            lines.append(
                f"| {name} | {'x'.join(map(str, s['map_shape']))} | {s['ones_fraction']:.2f} | {b['raw']:.1f} | "
                f"{b['cabac']:.1f} / {b['cabac_prev']:.1f} / {b['cabac_one_packet']:.1f} | "
                f"{r['per_frame']:.2f} / {r['per_frame_prev']:.2f} / {r['one_packet']:.2f} | "
                f"{r['payload_per_frame_prev']:.2f} / {r['payload_one_packet']:.2f} | {kb} | "
                f"{b['video_raw']:.1f} / {b['video_cabac']:.1f} |")
        lines += ["", f"Every packet carries a {HEADER_BYTES}-byte header (magic, sizes, CRC32); "
                      "'payload' ratios leave it out. The video stream carries a "
                      f"{VIDEO_HEADER_BYTES}-byte header once and a {RECORD_CHECK_BYTES}-byte check "
                      "per frame (vcm_d2/modeling/cdre/video_side_stream.py).", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    logger.info("parts 1-2: complexity and timing at %dx%d", args.width, args.height)
    part12 = complexity_and_time(args.height, args.width, args.runs, args.warmup, args.embeddings)
    transformer = transformer_version(args.height, args.width)
    part3 = {}
    if args.weights:
        logger.info("part 3: side stream of %s", args.weights)
        part3 = side_stream_part(args)
    else:
        logger.warning("no --weights: side-stream rate of a trained model skipped")
    text = report_text(args, part12, part3, transformer)
    serial = {name: dict(part, complexity={k: {"total": vars(v["total"]), "modules": [vars(m) for m in v["modules"]],
                                               "unsupported_ops": v["unsupported_ops"]}
                                           for k, v in part["complexity"].items()})
              for name, part in (("complexity", part12), ("transformer", transformer))}
    for path, data in ((os.path.join(out, "results.json"), json.dumps(dict(serial, side_stream=part3),
                                                                        indent=1, default=float)),
                       (os.path.join(out, "report.md"), text)):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
