#!/usr/bin/env python
r"""Run a model on a coded video and write a side-by-side mp4 of what it saw and predicted.

    python tools/video_demo.py INPUT --config-file CFG [--method direct|cdre|transvfc] \
        [--codec C --quality Q] -o OUT.mp4 [--max-frames N] [KEY VALUE ...]
    python tools/video_demo.py clip.mp4 -o clip_demo.mp4 --codec x264 --quality 27 \
        --config-file configs/synthetic/vis_mask_rcnn_R18_slim.yaml MODEL.WEIGHTS model_final.pth

INPUT is a video file (anything PyAV reads) or a folder of frames (sorted by name). Methods:

  direct    the frames are coded with the pixel codec --codec at --quality (one encode of
            the whole clip, GOP etc. from the codec's defaults or --codec-opt) and the model
            (a detector, a Mask R-CNN or the VIS model) runs on each decoded frame;
  cdre      as direct, with a CDRE model (CDRERCNN, or the VIS model with MODEL.VCM.VIS.DETECTOR
            CDRERCNN): the sender codes each frame's side stream from the original and the
            decoded frame, the receiver predicts from the decoded frame and the side stream;
  transvfc  no pixel codec: the model (TransVFC, or the VIS model with DETECTOR TransVFC) codes
            each original frame itself.

Every frame's bits (pixel codec, CDRE side stream or TransVFC stream) are counted in bpp at
the input resolution. OUT.mp4 (H.264, written atomically) shows the uncompressed input frame
on the left and the frame the model saw on the right (decoded frame, or the original for
transvfc) with its predictions (colours follow track IDs for the VIS model), over a line with
the frame index, the frame's bits and the running bpp. The whole clip is held in memory (the
pixel codec codes it as one sequence): use --max-frames for long videos. Prints a JSON
summary (frames, bits, bpp and, for the VIS model, the number of tracks).
"""
import argparse
import inspect
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import av
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

import vcm_d2  # noqa: F401  (registers codecs, meta-architectures and datasets)
from vcm_d2.codecs import CODEC_REGISTRY, available_codecs, build_codec, parse_codec_options, parse_quality
from vcm_d2.data.pairs import PAIR_NAME_SEPARATOR
from vcm_d2.engine import VideoPredictor
from vcm_d2.engine.tool_setup import setup_cfg
from vcm_d2.modeling.cdre.meta_arch import CDRERCNN
from vcm_d2.modeling.transvfc.meta_arch import TransVFC
from vcm_d2.modeling.vis import VideoInstanceSegmentor
from vcm_d2.utils.drawing import add_caption, draw_instances, side_by_side
from vcm_d2.utils.rate import RATE_KEYS, SIDE_BITS
from vcm_d2.utils.video import iter_video_frames, video_frame_rate, write_mp4

TOOL = "video_demo"
METHODS = ("direct", "cdre", "transvfc")
PIXEL_CODEC_METHODS = ("direct", "cdre")
# The per-frame network each method needs; direct takes any other detectron2 model.
METHOD_NETWORKS = {"cdre": CDRERCNN, "transvfc": TransVFC}
DEFAULT_FPS = 25.0  # output frame rate when the input does not state one (a folder of frames)
DEFAULT_CONFIDENCE = 0.5  # detectron2 demo's --confidence-threshold default
OUTPUT_EXTENSION = ".mp4"
FPS_OPTION = "fps"  # codec constructor argument: CRF rate control depends on the frame rate

logger = logging.getLogger("vcm_d2." + TOOL)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="video file or folder of frames")
    p.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    p.add_argument("--method", choices=METHODS, default="direct",
                   help="how frames are coded (default: direct)")
    p.add_argument("--codec", choices=available_codecs(), default=None,
                   help="pixel codec (direct, cdre)")
    p.add_argument("--quality", type=parse_quality, default=None,
                   help="codec quality (CRF/QP, JPEG quality, ...; direct, cdre)")
    p.add_argument("--codec-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="codec constructor option (repeatable), e.g. gop=12 preset=medium")
    p.add_argument("-o", "--output", required=True, help="mp4 file to write")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--fps", type=float, default=None,
                   help=f"frame rate of the output (and of a pixel codec that takes one); "
                        f"default: the input's, else {DEFAULT_FPS:g}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is fastest for small frames on "
                        "a busy machine)")
    p.add_argument("--confidence-threshold", type=float, default=DEFAULT_CONFIDENCE,
                   help="draw predictions scoring at least this (all are counted)")
    p.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_parser()
    # Intermixed: options may come after the positional arguments (INPUT -o OUT ... KEY VALUE).
    args = parser.parse_intermixed_args(argv)
    if args.method in PIXEL_CODEC_METHODS:
        if args.codec is None or args.quality is None:
            parser.error(f"--method {args.method} needs --codec and --quality (the pixel codec)")
    elif args.codec is not None or args.quality is not None or args.codec_opt:
        parser.error(f"--method {args.method} codes the frames with the model itself: "
                     "--codec, --quality and --codec-opt do not apply")
    try:
        args.codec_options = parse_codec_options(args.codec_opt)
    except ValueError as e:
        parser.error(str(e))
    if not args.output.lower().endswith(OUTPUT_EXTENSION):
        parser.error(f"--output must be an {OUTPUT_EXTENSION} file, got {args.output!r}")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        parser.error("--output would overwrite the input")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps must be > 0, got {args.fps}")
    if not os.path.isfile(args.config_file):
        parser.error(f"no config file at {args.config_file}")
    return args


def frame_network(cfg) -> type:
    """Class of the per-frame network of ``cfg`` (the VIS model's MODEL.VCM.VIS.DETECTOR)."""
    try:
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        if issubclass(arch, VideoInstanceSegmentor):
            arch = META_ARCH_REGISTRY.get(cfg.MODEL.VCM.VIS.DETECTOR)
    except KeyError as e:
        raise SystemExit(f"{TOOL}: {e}") from e
    return arch


def check_method(cfg, method: str, config_file: str) -> None:
    """SystemExit unless the model of ``cfg`` is one ``method`` can drive."""
    network = frame_network(cfg)
    needed = METHOD_NETWORKS.get(method)
    if needed is not None and not issubclass(network, needed):
        raise SystemExit(f"{TOOL}: --method {method} needs a {needed.__name__} model (or "
                         f"VideoInstanceSegmentor with MODEL.VCM.VIS.DETECTOR {needed.__name__}); "
                         f"{config_file} builds {network.__name__}")
    if needed is None:
        for other, cls in METHOD_NETWORKS.items():
            if issubclass(network, cls):
                raise SystemExit(f"{TOOL}: {config_file} builds {network.__name__}: use "
                                 f"--method {other}")


def read_frames(path: str, max_frames: Optional[int]) -> List[np.ndarray]:
    """RGB frames of the input, all of one size; SystemExit naming the problem otherwise."""
    try:
        frames = list(iter_video_frames(path, max_frames))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{TOOL}: {e}") from e
    except av.error.FFmpegError as e:  # opened, but a packet is corrupt
        raise SystemExit(f"{TOOL}: cannot decode {path}: {e}") from e
    if not frames:
        raise SystemExit(f"{TOOL}: no frames in {path}")
    for i, frame in enumerate(frames):
        if frame.shape != frames[0].shape:
            raise SystemExit(f"{TOOL}: frame {i} of {path} is {frame.shape[:2]} (H x W), frame 0 "
                             f"is {frames[0].shape[:2]}")
    return frames


def code_frames(frames: List[np.ndarray], args, fps: Optional[float]
                ) -> Tuple[List[np.ndarray], Optional[List[int]]]:
    """The frames the model sees and the pixel codec's bits per frame (None: no pixel codec,
    the model sees the originals)."""
    if args.method not in PIXEL_CODEC_METHODS:
        return frames, None
    options = dict(args.codec_options)
    codec_cls = CODEC_REGISTRY.get(args.codec)
    if fps is not None and FPS_OPTION not in options and \
            FPS_OPTION in inspect.signature(codec_cls).parameters:
        options[FPS_OPTION] = fps
    try:
        codec = build_codec(args.codec, **options)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{TOOL}: --codec {args.codec} with options {options}: {e}") from e
    logger.info("Coding %d frames with %r at quality %s", len(frames), codec, args.quality)
    try:
        coded = codec.encode(frames, args.quality)
    except ValueError as e:
        raise SystemExit(f"{TOOL}: --codec {args.codec} --quality {args.quality}: {e}") from e
    return coded.frames, coded.frame_bits


def predict(predictor: VideoPredictor, method: str, original: np.ndarray, seen: np.ndarray,
            bits: Optional[int]) -> Dict[str, Any]:
    """One frame through ``predictor`` (RGB in, BGR to the model as DefaultPredictor takes)."""
    seen_bgr = np.ascontiguousarray(seen[:, :, ::-1])
    if method == "cdre":
        original_bgr = np.ascontiguousarray(original[:, :, ::-1])
        # Sender and receiver are one predictor: it encodes the frame's record of the video's
        # side stream, then decodes it (each side numbers its own frames).
        side_stream = predictor.encode_side_stream(original_bgr, seen_bgr)
        return predictor(seen_bgr, side_stream=side_stream, bits=bits)
    return predictor(seen_bgr, bits=bits)


def class_names(cfg) -> Optional[List[str]]:
    """thing_classes of cfg.DATASETS.TEST[0]; a compressed pair dataset that is not
    registered here ("<dataset>@<codec>_q<quality>") falls back to its source dataset."""
    if not cfg.DATASETS.TEST:
        return None
    name = cfg.DATASETS.TEST[0]
    if name not in DatasetCatalog.list():
        name = name.split(PAIR_NAME_SEPARATOR)[0]
        if name not in DatasetCatalog.list():
            return None
    return MetadataCatalog.get(name).get("thing_classes", None)


def render(original: np.ndarray, seen: np.ndarray, output: Dict[str, Any], index: int,
           running_bpp: float, names: Optional[List[str]], threshold: float) -> np.ndarray:
    """Output frame: input | predictions on the frame the model saw, over a caption."""
    if "instances" not in output:
        raise SystemExit(f"{TOOL}: the model outputs {sorted(output)}, no \"instances\" to draw")
    drawn = draw_instances(seen, output["instances"], names, threshold)
    bits = sum(int(output[k]) for k in RATE_KEYS if k in output)
    caption = f"frame {index} | {bits} bits | {running_bpp:.4f} bpp"
    return add_caption(side_by_side(original, drawn), caption)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    setup_logger(name="vcm_d2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, args.opts)
    check_method(cfg, args.method, args.config_file)
    originals = read_frames(args.input, args.max_frames)
    input_fps = video_frame_rate(args.input)
    fps = args.fps or (float(input_fps) if input_fps else None)  # None: not known
    seen, codec_bits = code_frames(originals, args, fps)
    predictor = VideoPredictor(cfg)
    names = class_names(cfg)
    side_bits = 0

    def frames():  # generated while the mp4 is written: one frame in memory at a time
        nonlocal side_bits
        bits = codec_bits or [None] * len(originals)
        for i in tqdm(range(len(originals)), desc=TOOL, unit="frame"):
            output = predict(predictor, args.method, originals[i], seen[i], bits[i])
            side_bits += int(output.get(SIDE_BITS, 0))
            yield render(originals[i], seen[i], output, i, predictor.bpp, names,
                         args.confidence_threshold)

    out_fps = fps or DEFAULT_FPS
    written = write_mp4(args.output, frames(), out_fps)
    h, w = originals[0].shape[:2]
    summary = {"input": args.input, "output": args.output, "method": args.method,
               "codec": args.codec, "quality": args.quality, "frames": written,
               "height": h, "width": w, "fps": out_fps,
               "bits": predictor.total_bits, "side_bits": side_bits, "bpp": predictor.bpp}
    if predictor.is_vis:
        summary["tracks"] = len(predictor.tracks()["tracks"])
    logger.info("%s: %d frames, %d bits (%d side), %.4f bpp%s -> %s", args.input, written,
                predictor.total_bits, side_bits, predictor.bpp,
                f", {summary['tracks']} tracks" if "tracks" in summary else "", args.output)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
