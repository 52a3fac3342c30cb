"""Helpers of the TransVFC command-line tools (tools/vfc_encode.py, tools/vfc_decode.py):
reading video frames, preparing them like detectron2's DefaultPredictor, building the coding
model from a config, and atomic writes."""
import io
import os
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image, ImageDraw

from ...utils.io import atomic_write_bytes
from .meta_arch import TransVFC

__all__ = [
    "IMAGE_EXTENSIONS",
    "iter_video_frames",
    "prepare_frame",
    "load_coding_model",
    "setup_cfg",
    "atomic_write_bytes",
    "save_tensors",
    "load_tensors",
    "draw_detections",
    "draw_sem_seg",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_RGB_FORMATS = ("RGB", "BGR")
# Visualization (PIL only: detectron2's Visualizer needs OpenCV, an optional dependency).
_PALETTE_SEED = 0
_PALETTE_SIZE = 256
_SEG_ALPHA = 0.5  # opacity of label colours over the frame
_BOX_WIDTH = 2
_SCORE_THRESHOLD = 0.5  # boxes drawn (all are written to predictions.json)


def iter_video_frames(path: str, max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
    """RGB frames (H x W x 3 uint8) of a video file (decoded with PyAV) or of a folder of
    images (sorted by file name)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"{path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        frames = (np.asarray(Image.open(os.path.join(path, n)).convert("RGB")) for n in names)
    elif os.path.isfile(path):
        frames = _decode_video_file(path)
    else:
        raise FileNotFoundError(f"no video file or frame folder at {path}")
    for i, frame in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _decode_video_file(path: str) -> Iterator[np.ndarray]:
    import av

    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read {path} as a video: {e}") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def prepare_frame(rgb: np.ndarray, input_format: str, min_size: int, max_size: int) -> torch.Tensor:
    """An RGB frame as the model's input: resized like DefaultPredictor (shortest edge
    ``min_size``, longest at most ``max_size``; 0 keeps the size), channels in ``input_format``,
    C x H x W float tensor."""
    if input_format not in _RGB_FORMATS:
        raise ValueError(f"INPUT.FORMAT must be one of {_RGB_FORMATS} for video input, got "
                         f"{input_format!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 frame, got {rgb.shape} {rgb.dtype}")
    image = rgb[:, :, ::-1] if input_format == "BGR" else rgb
    if min_size > 0:
        image = T.ResizeShortestEdge([min_size, min_size], max_size).get_transform(image) \
            .apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def setup_cfg(config_file: str, opts: Sequence[str]):
    from ...engine import get_vcm_cfg

    cfg = get_vcm_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.META_ARCHITECTURE != "TransVFC":
        raise ValueError(f"{config_file} is not a TransVFC config (MODEL.META_ARCHITECTURE="
                         f"{cfg.MODEL.META_ARCHITECTURE!r})")
    cfg.freeze()
    return cfg


def load_coding_model(cfg) -> TransVFC:
    """The model of ``cfg`` with MODEL.WEIGHTS, in eval mode, CDF tables up to date."""
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    model.prepare_for_coding()
    return model


def save_tensors(path: str, tensors: List[torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save([t.detach().cpu() for t in tensors], buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: str) -> List[torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _palette() -> np.ndarray:
    return np.random.default_rng(_PALETTE_SEED).integers(0, 256, (_PALETTE_SIZE, 3), dtype=np.uint8)


def draw_detections(rgb: np.ndarray, boxes, scores, classes,
                    class_names: Optional[Sequence[str]] = None,
                    score_threshold: float = _SCORE_THRESHOLD) -> np.ndarray:
    """Boxes (XYXY) with "class score" labels drawn on an RGB frame."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    colors = _palette()
    for box, score, cls in zip(boxes, scores, classes):
        if score < score_threshold:
            continue
        color = tuple(int(c) for c in colors[int(cls) % _PALETTE_SIZE])
        name = class_names[int(cls)] if class_names and int(cls) < len(class_names) else str(cls)
        draw.rectangle([float(v) for v in box], outline=color, width=_BOX_WIDTH)
        draw.text((float(box[0]) + _BOX_WIDTH, float(box[1]) + _BOX_WIDTH),
                  f"{name} {score:.2f}", fill=color)
    return np.asarray(image)


def draw_sem_seg(rgb: np.ndarray, labels: np.ndarray, alpha: float = _SEG_ALPHA) -> np.ndarray:
    """Label colours blended over an RGB frame."""
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and frame {rgb.shape[:2]} differ in size")
    colors = _palette()[labels.astype(np.int64) % _PALETTE_SIZE]
    return (rgb * (1 - alpha) + colors * alpha).round().astype(np.uint8)
