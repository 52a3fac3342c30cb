#!/usr/bin/env python
"""TransVFC complexity vs the paper (Table 4, Sec. 4.4.1-4.4.2) and CPU coding time vs ssf2020.

The models are built from their configs with random weights (MODEL.WEIGHTS ""): parameter
counts, MACs and run time do not depend on the weights (entropy-coding time does a little,
through the symbol statistics: bytes per frame are reported next to the times).

1. Parameters: the codec (trained in stage 1; paper 22.4M), the frozen upstream network split
   into head (stem + res2) and perception network (res3-5 + FPN) (paper: 26.7M frozen), the
   task tails, and the FST of each task (paper: 4.3M).
2. MACs per image pixel at HEIGHTxWIDTH (``vcm_d2.evaluation.complexity``, fvcore: one
   multiply-add = 1 MAC): head; codec forward (encoder + decoder modules) on an I-frame and on
   a P-frame (P = MACs of an I+P clip minus the I-frame alone), with the perception network
   runs of the P-frame's conditions (PN of the current and of the compensated feature) in a
   row of their own (paper: 1.16M for the codec); the FSTs (paper: 0.14-0.16M); CompressAI's
   ssf2020 on the same frames for reference.
3. CPU time per frame (median of --runs interleaved runs after --warmup, --threads torch
   threads) on two frames of a synthetic video: TransVFC encode (image -> head -> codec
   ``compress_frame`` -> container frame bytes) and decode (stream bytes -> ``read_stream``
   -> ``decompress_frame`` -> decoded res2 feature) of the I-frame and of the P-frame that
   follows it; ssf2020 (``encode_keyframe`` / ``encode_inter`` / ``decode_keyframe`` /
   ``decode_inter``, frames padded to its downsampling and cropped back) on the same frames;
   the ratios ours / ssf2020. The per-stream model-hash check of ``decode_frames`` is timed
   on its own (once per stream, not per frame). Both round trips are checked before timing.

    python benchmarks/transvfc_complexity.py --threads 1 --runs 3 --warmup 1
    python benchmarks/transvfc_complexity.py --threads 1 --runs 3 --warmup 1 \
        MODEL.VCM.TRANSVFC.SCHEME_COMBINE separable
    python benchmarks/transvfc_complexity.py --height 128 --width 128 \\
        --config configs/synthetic/transvfc_stage2_slim_detection.yaml \\
        --semseg-config configs/synthetic/transvfc_stage2_slim_semseg.yaml
"""
import argparse
import logging
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from compressai.zoo import ssf2020
from torch import nn

from vcm_d2.data.synthetic import VAL_SPEC, render_video
from vcm_d2.engine import get_vcm_cfg  # importing vcm_d2 registers TransVFC
from vcm_d2.engine.trainer import VCMTrainer
from vcm_d2.evaluation.complexity import MAC_CONVENTION, complexity_report, format_complexity
from vcm_d2.modeling.transvfc.container import BITS_PER_BYTE, encode_frame, read_stream
from vcm_d2.modeling.transvfc.inter_prediction import SCHEME_COMBINE_MODES, SchemeCompensation
from vcm_d2.modeling.transvfc.layers import crop_to, lcm_all, pad_to_multiple
from vcm_d2.utils.io import atomic_write_bytes, atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTION_CONFIG = os.path.join(REPO, "configs", "TransVFC", "transvfc_R50_FPN_stage2_detection.yaml")
SEMSEG_CONFIG = os.path.join(REPO, "configs", "TransVFC", "transvfc_R50_FPN_stage2_semseg.yaml")
# The paper's numbers (Table 4 and Sec. 4.4; R50 widths, 720p).
PAPER = {"codec_params": 22.4e6, "frozen_params": 26.7e6, "total_params": 49.1e6,
         "codec_macs_px": 1.16e6, "fst_params": 4.3e6, "fst_macs_px": (0.14e6, 0.16e6),
         "encode_ms": 234.5, "decode_ms": 122.5}
TIME_GOAL = 1.0  # ours / ssf2020 time per P-frame (issue goal: no slower)
# Synthetic test video: object sizes and motions of the 128-px benchmark scaled by the height.
SYNTH_REFERENCE_HEIGHT = 128
SYNTH_MAX_OBJECTS = 12
NUM_FRAMES = 2  # an I-frame and the P-frame that follows it
PIXEL_RANGE = 255.0
CODEC_PARTS = ("channel_reduction", "intra", "inter_prediction", "conditional_coding",
               "channel_restoration")
FST_PARTS = ("to_image", "from_image", "bottleneck_branch", "down_up_branch", "head")

logger = logging.getLogger("vcm_d2.transvfc_complexity")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DETECTION_CONFIG, help="TransVFC config with the detection task")
    p.add_argument("--semseg-config", default=SEMSEG_CONFIG,
                   help="TransVFC config with the segmentation task (its FST and tail; '' skips)")
    p.add_argument("--height", type=int, default=720, help="frame height (px)")
    p.add_argument("--width", type=int, default=1280, help="frame width (px)")
    p.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--ssf-quality", type=int, default=1, help="quality index of ssf2020 (1-9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--output", default="output/transvfc_complexity", help="folder for results.json / report.md")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="overrides of both TransVFC configs, KEY VALUE pairs (e.g. "
                        "MODEL.VCM.TRANSVFC.SCHEME_COMBINE separable)")
    args = p.parse_args(argv)
    if args.height < 1 or args.width < 1 or args.runs < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--height/--width/--runs/--threads must be >= 1 and --warmup >= 0")
    return args


# ----------------------------------------------------------------------------- models
def build_transvfc(path: str, opts=()):
    """The TransVFC model of ``path`` (+ ``opts``) with random weights, in eval mode, ready to
    code."""
    cfg = get_vcm_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts) + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    if cfg.MODEL.META_ARCHITECTURE != "TransVFC":
        raise ValueError(f"{path} is not a TransVFC config ({cfg.MODEL.META_ARCHITECTURE})")
    model = VCMTrainer.build_model(cfg)
    model.eval()
    model.prepare_for_coding()
    return model, cfg.INPUT.FORMAT


class Head(nn.Module):
    """Stem + res2 of the upstream network (normalized image -> res2)."""

    def __init__(self, model):
        super().__init__()
        self.stem = model.split.resnet.stem
        self.res2 = model.split.resnet.stages[0]

    def forward(self, image):
        return self.res2(self.stem(image))


class CodecClip(nn.Module):
    """The codec's forward over a clip (I-frame, then P-frames): encoder and decoder modules,
    with the perception network (``backbone``) computing the P-frames' conditions."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.codec
        self.backbone = model.backbone
        self._split = model.split

    def forward(self, *features):
        return tuple(self.codec(list(features), self._split.rest)["f_hat"])


class FSTPass(nn.Module):
    def __init__(self, fst):
        super().__init__()
        self.fst = fst

    def forward(self, feature):
        out = self.fst(feature)
        return (out["feature"],) if out["coarse_image"] is None else (out["feature"], out["coarse_image"])


class SSFClip(nn.Module):
    """ssf2020's forward over a clip (keyframe, then inter frames)."""

    def __init__(self, ssf):
        super().__init__()
        self.ssf = ssf

    def forward(self, *frames):
        return tuple(self.ssf(list(frames))["x_hat"])


def num_params(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _stride_product(module: nn.Module) -> int:
    return math.prod(m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d))


def ssf_pad_multiple(ssf) -> int:
    """Total downsampling of ssf2020's latents and hyper-latents (inputs must divide by it)."""
    paths = [(ssf.img_encoder, ssf.img_hyperprior), (ssf.motion_encoder, ssf.motion_hyperprior),
             (ssf.res_encoder, ssf.res_hyperprior)]
    return lcm_all(_stride_product(enc) * _stride_product(hyper.hyper_encoder) for enc, hyper in paths)


# ----------------------------------------------------------------------------- part 1
def params_part(model, semseg_model, ssf) -> Dict[str, float]:
    resnet = model.split.resnet
    head = num_params(resnet.stem) + num_params(resnet.stages[0])
    out = {"codec": num_params(model.codec), "head (stem + res2)": head,
           "perception network (res3-5 + FPN)": num_params(model.backbone) - head}
    task_models = [model] if semseg_model is None else [model, semseg_model]
    out.update({f"task tail {k}": num_params(t) for m in task_models for k, t in m.tasks.items()})
    out.update({f"FST {k}": num_params(f) for m in task_models for k, f in m.fst.items()})
    out["ssf2020 (reference)"] = num_params(ssf)
    return out


# ----------------------------------------------------------------------------- part 2
def _quiet_report(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings on shape-dependent code
        return complexity_report(*args, **kwargs, time_runs=0)


def _parts(module: nn.Module, prefix: str, names: Sequence[str]) -> List[str]:
    return [f"{prefix}.{n}" for n in names if getattr(module, n, None) is not None]


def macs_part(model, semseg_model, ssf, image: torch.Tensor, frames01: Sequence[torch.Tensor]) -> Dict:
    """complexity_report of every part; ``image`` is the normalized first frame (1x3xHxW)."""
    px = image.shape[-2] * image.shape[-1]
    with torch.no_grad():
        features = [model.split.head(f) for f in frames01]
    codec_parts = _parts(model.codec, "codec", CODEC_PARTS) + ["backbone"]
    reports = {
        "head": _quiet_report(Head(model), (image,), num_pixels=px, submodules=[]),
        "codec I-frame": _quiet_report(CodecClip(model), (features[0],), num_pixels=px,
                                       submodules=codec_parts),
        "codec I+P clip": _quiet_report(CodecClip(model), tuple(features), num_pixels=px,
                                        submodules=codec_parts),
    }
    task_models = [model] if semseg_model is None else [model, semseg_model]
    for key, fst in [item for m in task_models for item in m.fst.items()]:
        reports[f"FST {key}"] = _quiet_report(FSTPass(fst), (features[0],), num_pixels=px,
                                              submodules=_parts(fst, "fst", FST_PARTS))
    pad = ssf_pad_multiple(ssf)
    rgb = [pad_to_multiple(f, pad) for f in ssf_inputs(frames01)]
    reports["ssf2020 I-frame"] = _quiet_report(SSFClip(ssf), (rgb[0],), num_pixels=px)
    reports["ssf2020 I+P clip"] = _quiet_report(SSFClip(ssf), tuple(rgb), num_pixels=px)
    return reports


def _module_macs(report: Mapping, name: str) -> int:
    for m in report["modules"]:
        if m.name == name:
            return m.macs
    raise KeyError(name)


def macs_summary(reports: Mapping, px: int) -> Dict[str, float]:
    """MACs per pixel of each row of the report (P-frame = I+P clip minus I-frame)."""
    i_rep, clip = reports["codec I-frame"], reports["codec I+P clip"]
    p_total = clip["total"].macs - i_rep["total"].macs
    p_perception = _module_macs(clip, "backbone") - _module_macs(i_rep, "backbone")
    out = {"head (stem + res2)": reports["head"]["total"].macs / px,
           "codec I-frame": i_rep["total"].macs / px,
           "codec P-frame without perception conditions": (p_total - p_perception) / px,
           "perception conditions of a P-frame (PN(F_t) + PN(R^-1(f~_t)))": p_perception / px,
           "codec P-frame incl. perception conditions": p_total / px}
    for name in CODEC_PARTS:
        key = f"codec.{name}"
        if any(m.name == key for m in clip["modules"]):
            out[f"- P-frame {name}"] = (_module_macs(clip, key) - _module_macs(i_rep, key)) / px
    for name, rep in reports.items():
        if name.startswith("FST "):
            out[name] = rep["total"].macs / px
    out["ssf2020 I-frame"] = reports["ssf2020 I-frame"]["total"].macs / px
    out["ssf2020 P-frame"] = (reports["ssf2020 I+P clip"]["total"].macs
                              - reports["ssf2020 I-frame"]["total"].macs) / px
    return out


# ----------------------------------------------------------------------------- part 3
def synthetic_frames(h: int, w: int) -> np.ndarray:
    """NUM_FRAMES RGB frames (T x H x W x 3 uint8) of a synthetic video at h x w."""
    scale = h / SYNTH_REFERENCE_HEIGHT
    spec = replace(VAL_SPEC, num_videos=1, frames_per_video=NUM_FRAMES, height=h, width=w,
                   max_objects=SYNTH_MAX_OBJECTS,
                   min_object_size=max(1, int(round(VAL_SPEC.min_object_size * scale))),
                   max_object_size=max(1, int(round(VAL_SPEC.max_object_size * scale))),
                   min_speed=VAL_SPEC.min_speed * scale, max_speed=VAL_SPEC.max_speed * scale,
                   max_pan_speed=VAL_SPEC.max_pan_speed * scale)
    return render_video(spec, 0).frames


def model_images(frames: np.ndarray, fmt: str) -> List[torch.Tensor]:
    """C x H x W float images in the model's INPUT.FORMAT, 0..255."""
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {fmt!r}")
    out = []
    for f in frames:
        img = f[:, :, ::-1] if fmt == "BGR" else f
        out.append(torch.as_tensor(np.ascontiguousarray(img).astype("float32").transpose(2, 0, 1)))
    return out


def ssf_inputs(rgb_frames: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """ssf2020's inputs (1 x 3 x H x W RGB in [0, 1]) from 1 x 3 x H x W RGB 0..255 tensors."""
    return [f / PIXEL_RANGE for f in rgb_frames]


class TransVFCCoder:
    """The real per-frame byte paths of TransVFC, with the reference of a preceding I-frame."""

    def __init__(self, model, images: Sequence[torch.Tensor]):
        self.model, self.images = model, list(images)
        encoded = model.encode_video(self.images, return_features=True)
        self.stream, self.encoder_features = encoded.stream, encoded.features
        if encoded.frame_types != ["I", "P"]:
            raise RuntimeError(f"expected an I- and a P-frame, got {encoded.frame_types}")
        decoded = list(model.decode_frames(self.stream))
        for enc, dec in zip(self.encoder_features, decoded):
            if not torch.equal(enc, dec.feature):
                raise RuntimeError("TransVFC decoding does not reproduce the encoder's features")
        self.frame_bytes = [b // BITS_PER_BYTE for b in encoded.frame_bits]
        with torch.no_grad():
            _, _, self.enc_reference = model.codec.compress_frame(
                model.image_to_feature(self.images[0]), model.split.rest, None)
            records = read_stream(self.stream).records
            _, self.dec_reference = model.codec.decompress_frame(records[0], model.split.rest, None)
        own = self.encode(1, reference=self.enc_reference)
        if not self.stream.endswith(own):
            raise RuntimeError("per-frame encoding does not give the stream's P-frame bytes")

    def encode(self, index: int, reference=None) -> bytes:
        m = self.model
        record, _, _ = m.codec.compress_frame(m.image_to_feature(self.images[index]), m.split.rest,
                                              reference, restore=False)
        return encode_frame(record)

    def decode(self, index: int, reference=None) -> torch.Tensor:
        record = read_stream(self.stream).records[index]
        feature, _ = self.model.codec.decompress_frame(record, self.model.split.rest, reference)
        return feature


class SSFCoder:
    """ssf2020's compress / decompress of a keyframe and the inter frame that follows it."""

    def __init__(self, ssf, rgb: Sequence[torch.Tensor]):
        self.ssf, self.frames = ssf, ssf_inputs(rgb)
        self.pad = ssf_pad_multiple(ssf)
        self.size = tuple(self.frames[0].shape[-2:])
        with torch.no_grad():
            self.enc_reference, self.key = ssf.encode_keyframe(self._padded(0))
            enc_p, self.inter = ssf.encode_inter(self._padded(1), self.enc_reference)
            self.dec_reference = ssf.decode_keyframe(self.key["strings"], self.key["shape"])
            dec_p = ssf.decode_inter(self.dec_reference, self.inter["strings"], self.inter["shape"])
        self.max_abs_diff = [float((self.enc_reference - self.dec_reference).abs().max()),
                             float((enc_p - dec_p).abs().max())]
        self.frame_bytes = [_num_bytes(self.key["strings"]), _num_bytes(self.inter["strings"])]

    def _padded(self, index: int) -> torch.Tensor:
        return pad_to_multiple(self.frames[index], self.pad)

    def encode_i(self):
        return self.ssf.encode_keyframe(self._padded(0))[1]["strings"]

    def encode_p(self):
        return self.ssf.encode_inter(self._padded(1), self.enc_reference)[1]["strings"]

    def decode_i(self):
        return crop_to(self.ssf.decode_keyframe(self.key["strings"], self.key["shape"]), self.size)

    def decode_p(self):
        x = self.ssf.decode_inter(self.dec_reference, self.inter["strings"], self.inter["shape"])
        return crop_to(x, self.size)


def _num_bytes(strings) -> int:
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    if isinstance(strings, Mapping):
        return sum(_num_bytes(v) for v in strings.values())
    return sum(_num_bytes(s) for s in strings)


def timing_items(model, ours: TransVFCCoder, ssf: SSFCoder) -> Dict[str, Callable[[], object]]:
    fst_key = next(iter(model.fst))
    decoded = ours.encoder_features[1]
    return {
        "TransVFC head (image -> res2)": lambda: model.image_to_feature(ours.images[1]),
        "TransVFC encode I-frame": lambda: ours.encode(0),
        "TransVFC encode P-frame": lambda: ours.encode(1, ours.enc_reference),
        "TransVFC decode I-frame": lambda: ours.decode(0),
        "TransVFC decode P-frame": lambda: ours.decode(1, ours.dec_reference),
        "TransVFC model-hash check (once per stream)": model.model_hash,
        f"TransVFC FST {fst_key} (decoded feature -> task feature)": lambda: model.transfer(fst_key, decoded),
        "ssf2020 encode I-frame": ssf.encode_i,
        "ssf2020 encode P-frame": ssf.encode_p,
        "ssf2020 decode I-frame": ssf.decode_i,
        "ssf2020 decode P-frame": ssf.decode_p,
    }


def scheme_combine_items(model, height: int, width: int) -> Dict[str, Callable[[], object]]:
    """Motion compensation (MC) of a P-frame at this size with each SCHEME_COMBINE (random
    weights, the model's widths, one input): the dense 7x7 combination is a third of a P-frame's
    MACs, the separable one ~1/28 of it."""
    mc = model.codec.inter_prediction.motion_compensation
    if not isinstance(mc, SchemeCompensation):
        return {}
    stride = model.codec.feature_stride
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    f_ref, motion = torch.randn(1, mc.feat_ch, h, w), torch.randn(1, mc.motion_ch, h, w)
    items = {}
    for mode in SCHEME_COMBINE_MODES:
        module = SchemeCompensation(mc.feat_ch, mc.motion_ch, mc.expansions, mc.combine_kernel,
                                    mode).eval()
        items[f"MC (scheme compensation), {mode} combination"] = (
            lambda m=module: m(f_ref, motion))
    return items


def run_timing(items: Mapping[str, Callable], runs: int, warmup: int) -> Dict[str, List[float]]:
    """Every run times every item once (interleaved), so load changes hit all items alike."""
    times: Dict[str, List[float]] = {k: [] for k in items}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in items.values():
                fn()
        for r in range(runs):
            for key, fn in items.items():
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1000.0)
            logger.info("timing run %d/%d done", r + 1, runs)
    return times


def ratios(ms: Mapping[str, float]) -> Dict[str, float]:
    return {f"{op} {ft}-frame": ms[f"TransVFC {op} {ft}-frame"] / ms[f"ssf2020 {op} {ft}-frame"]
            for op in ("encode", "decode") for ft in ("P", "I")}


# ----------------------------------------------------------------------------- report
def _si(v: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}"


def params_table(params: Mapping[str, float]) -> List[str]:
    frozen = params["head (stem + res2)"] + params["perception network (res3-5 + FPN)"]
    paper_fst = _si(PAPER["fst_params"])
    rows = [("codec (trained in stage 1)", params["codec"], _si(PAPER["codec_params"]))]
    rows += [(k, v, "") for k, v in params.items() if k.startswith(("head", "perception"))]
    rows += [("frozen upstream network (head + perception network)", frozen,
              f"{_si(PAPER['frozen_params'])} frozen")]
    rows += [("codec + frozen upstream network", params["codec"] + frozen, _si(PAPER["total_params"]))]
    rows += [(k, v, "") for k, v in params.items() if k.startswith("task tail")]
    rows += [(k, v, paper_fst) for k, v in params.items() if k.startswith("FST")]
    rows += [(k, v, "") for k, v in params.items() if k.startswith("ssf2020")]
    return ["| part | params | paper (R50 widths) |", "|---|---|---|"] + \
        [f"| {name} | {_si(v)} | {paper} |" for name, v, paper in rows]


def macs_table(summary: Mapping[str, float]) -> List[str]:
    low, high = PAPER["fst_macs_px"]
    paper = {"codec P-frame incl. perception conditions": f"{_si(PAPER['codec_macs_px'])} (codec)",
             "codec P-frame without perception conditions": f"{_si(PAPER['codec_macs_px'])} (codec)"}
    lines = ["| part | MACs/px | paper (R50 widths) |", "|---|---|---|"]
    for name, v in summary.items():
        ref = paper.get(name, f"{_si(low)}-{_si(high)}" if name.startswith("FST") else "")
        lines.append(f"| {name} | {_si(v)} | {ref} |")
    return lines


def time_tables(timing: Mapping) -> List[str]:
    ms, runs = timing["ms"], timing["runs_ms"]
    lines = ["| item | median ms | runs (ms) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {', '.join(f'{x:.0f}' for x in runs[k])} |" for k, v in ms.items()]
    lines += ["", f"| ours / ssf2020 | ratio (goal <= {TIME_GOAL:g} for P-frames) |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in timing["ratios"].items()]
    mc = [ms.get(f"MC (scheme compensation), {mode} combination") for mode in SCHEME_COMBINE_MODES]
    if all(mc):
        lines += ["", f"MC with the {SCHEME_COMBINE_MODES[1]} combination / with the "
                  f"{SCHEME_COMBINE_MODES[0]} one, same run: {mc[1] / mc[0]:.2f}"]
    lines += ["", "| bytes per frame (random weights) | I-frame | P-frame |", "|---|---|---|",
              f"| TransVFC (container frames, header on the I-frame) | {timing['bytes']['TransVFC'][0]} | "
              f"{timing['bytes']['TransVFC'][1]} |",
              f"| ssf2020 (entropy-coded strings) | {timing['bytes']['ssf2020'][0]} | "
              f"{timing['bytes']['ssf2020'][1]} |"]
    return lines


def report_text(args, params, summary, reports, timing) -> str:
    h, w = args.height, args.width
    lines = [f"# TransVFC complexity at {w}x{h}: `{os.path.relpath(args.config, REPO)}`"
             + (f" + `{os.path.relpath(args.semseg_config, REPO)}`" if args.semseg_config else "")
             + (f", overrides `{' '.join(args.opts)}`" if args.opts else ""), "",
             "Random weights. Paper: Table 4 (720p, GPU times) and Sec. 4.4.2.", "",
             "## Parameters", ""] + params_table(params)
    lines += ["", f"## MACs per image pixel at {w}x{h} ({MAC_CONVENTION})", ""] + macs_table(summary)
    lines += ["", "P-frame rows = I+P clip minus the I-frame alone. The codec rows count the codec's "
              "forward (encoder and decoder modules, rounding instead of entropy coding) on features "
              "padded to its downsampling (ssf2020: frames padded likewise), per unpadded image pixel. "
              "The paper does not say whether its 1.16M includes the perception network runs, "
              "hence both rows.", ""]
    for name, rep in reports.items():
        lines += [f"### {name}", "", format_complexity(rep)]
    lines += [f"## CPU time per frame at {w}x{h} ({timing['threads']} torch thread(s), median of "
              f"{args.runs} interleaved runs after {args.warmup} warm-up)", "",
              f"Paper (GPU, 720p): encode {PAPER['encode_ms']:g} ms, decode {PAPER['decode_ms']:g} ms. "
              f"ssf2020 quality {args.ssf_quality}, frames padded to a multiple of {timing['ssf_pad']} px. "
              "Encode = image -> head -> compress_frame -> frame bytes; decode = read_stream -> "
              "decompress_frame -> decoded res2 feature (FST and task tail not included).", ""]
    lines += time_tables(timing)
    lines += ["", f"ssf2020 encoder/decoder reconstruction max |diff| (I, P): "
              f"{timing['ssf_max_abs_diff'][0]:.2g}, {timing['ssf_max_abs_diff'][1]:.2g}; "
              "TransVFC decoding checked bit-exact.", ""]
    return "\n".join(lines)


def _serial_report(rep: Mapping) -> Dict:
    return {"total": vars(rep["total"]), "modules": [vars(m) for m in rep["modules"]],
            "unsupported_ops": rep["unsupported_ops"], "num_pixels": rep["num_pixels"]}


# ----------------------------------------------------------------------------- main
def measure(args) -> Dict:
    torch.manual_seed(args.seed)
    model, fmt = build_transvfc(args.config, args.opts)
    semseg_model = build_transvfc(args.semseg_config, args.opts)[0] if args.semseg_config else None
    ssf = ssf2020(quality=args.ssf_quality, pretrained=False).eval()
    ssf.update(force=True)
    frames = synthetic_frames(args.height, args.width)
    images = model_images(frames, fmt)
    rgb = [t[None] for t in model_images(frames, "RGB")]
    logger.info("parameters and MACs at %dx%d", args.width, args.height)
    params = params_part(model, semseg_model, ssf)
    normalized = [((img - model.pixel_mean) / model.pixel_std)[None] for img in images]
    reports = macs_part(model, semseg_model, ssf, normalized[0], normalized)
    summary = macs_summary(reports, args.height * args.width)
    del semseg_model
    logger.info("coding time: round trips")
    ours, theirs = TransVFCCoder(model, images), SSFCoder(ssf, rgb)
    items = {**timing_items(model, ours, theirs), **scheme_combine_items(model, args.height, args.width)}
    times = run_timing(items, args.runs, args.warmup)
    ms = {k: statistics.median(v) for k, v in times.items()}
    timing = {"threads": torch.get_num_threads(), "ms": ms, "runs_ms": times, "ratios": ratios(ms),
              "bytes": {"TransVFC": ours.frame_bytes, "ssf2020": theirs.frame_bytes},
              "ssf_pad": theirs.pad, "ssf_max_abs_diff": theirs.max_abs_diff}
    return {"params": params, "macs_per_pixel": summary, "reports": reports, "timing": timing}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    logging.getLogger("detectron2").setLevel(logging.WARNING)  # no model printout
    torch.set_num_threads(args.threads)
    out = os.path.abspath(args.output)
    res = measure(args)
    text = report_text(args, res["params"], res["macs_per_pixel"], res["reports"], res["timing"])
    serial = {"config": args.config, "semseg_config": args.semseg_config, "opts": args.opts,
              "height": args.height,
              "width": args.width, "params": res["params"], "macs_per_pixel": res["macs_per_pixel"],
              "complexity": {k: _serial_report(v) for k, v in res["reports"].items()},
              "timing": res["timing"], "paper": PAPER}
    atomic_write_json(os.path.join(out, "results.json"), serial, default=float)
    atomic_write_bytes(os.path.join(out, "report.md"), text.encode("utf-8"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
