"""Predictions drawn on RGB frames, for demos and the command-line tools.

* ``draw_instances``: detectron2 ``Instances`` (boxes, masks, "class score%" labels);
* ``draw_sem_seg``: a label map blended over a frame;
* ``side_by_side`` / ``add_caption``: two frames next to each other, a text line under a frame.

Drawing uses PIL, not detectron2's ``Visualizer`` / ``VideoVisualizer`` (which the report
figures use): the tools write their videos with PyAV (H.264 at a chosen CRF, which OpenCV's
``VideoWriter`` cannot write), so frames stay numpy/PIL from decode to encode. The look
follows detectron2's: detectron2's colormap, masks
and label maps blended at half opacity, boxes, "class score%" labels, and for tracked
instances (the ``ID`` field of detectron2's trackers) one colour per track, as
``VideoVisualizer`` keeps it.
"""
import functools
from typing import Optional, Sequence

import numpy as np
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_instances", "draw_sem_seg", "side_by_side", "add_caption"]

MASK_ALPHA = 0.5  # mask / label-map opacity over the frame (detectron2's Visualizer default)
# Font size from the frame size as detectron2's Visualizer does: sqrt(H * W) / 90, at least 10 px.
FONT_SIZE_DIVISOR = 90
MIN_FONT_SIZE = 10
LINE_WIDTH_DIVISOR = 4  # box line width = font size / 4 (detectron2's Visualizer)
TEXT_PADDING = 2  # pixels around a label or caption
LIGHT_COLOR_LUMA = 128  # labels on colours brighter than this are written in black
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601
CAPTION_FOREGROUND, CAPTION_BACKGROUND = (255, 255, 255), (0, 0, 0)
_COLORS = colormap(rgb=True, maximum=255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _font_size(height: int, width: int) -> int:
    return max(MIN_FONT_SIZE, int(np.sqrt(height * width) // FONT_SIZE_DIVISOR))


def _text_color(background: Sequence[int]):
    luma = float(np.dot(LUMA_WEIGHTS, background))
    return (0, 0, 0) if luma > LIGHT_COLOR_LUMA else (255, 255, 255)


def _label(class_id: int, score: Optional[float], track_id: Optional[int],
           class_names: Optional[Sequence[str]]) -> str:
    known = class_names and 0 <= class_id < len(class_names)
    name = class_names[class_id] if known else str(class_id)
    text = name if score is None else f"{name} {score * 100:.0f}%"  # detectron2's label format
    return text if track_id is None else f"#{track_id} {text}"


def draw_instances(rgb: np.ndarray, instances: Instances,
                   class_names: Optional[Sequence[str]] = None,
                   score_threshold: float = 0.0) -> np.ndarray:
    """``instances`` (boxes, and if present masks, classes, scores, track ``ID``) drawn on an
    RGB uint8 frame of their image size; instances scoring below ``score_threshold`` are left
    out. Colour by track ID when the instances are tracked, else by class."""
    h, w = rgb.shape[:2]
    if tuple(instances.image_size) != (h, w):
        raise ValueError(f"instances are for a {tuple(instances.image_size)} image, the frame "
                         f"is {(h, w)}")
    instances = instances.to("cpu")
    n = len(instances)
    scores = instances.scores.numpy() if instances.has("scores") else None
    classes = instances.pred_classes.numpy() if instances.has("pred_classes") else np.zeros(n, int)
    ids = list(instances.ID) if instances.has("ID") else [None] * n
    boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else None
    masks = instances.pred_masks.numpy().astype(bool) if instances.has("pred_masks") else None
    keep = [i for i in range(n) if scores is None or scores[i] >= score_threshold]
    if boxes is not None:  # large ones first, so that small ones stay visible (as detectron2)
        keep.sort(key=lambda i: -float((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])))
    colors = {i: _COLORS[(ids[i] if ids[i] is not None else int(classes[i])) % len(_COLORS)]
              for i in keep}

    canvas = rgb.astype(np.float32)
    if masks is not None:
        for i in keep:
            canvas[masks[i]] = canvas[masks[i]] * (1 - MASK_ALPHA) + colors[i] * MASK_ALPHA
    image = Image.fromarray(canvas.round().astype(np.uint8))
    if boxes is None:
        return np.asarray(image)
    draw = ImageDraw.Draw(image)
    font_size = _font_size(h, w)
    font = _font(font_size)
    for i in keep:
        color = tuple(int(c) for c in colors[i])
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=color,
                       width=max(1, font_size // LINE_WIDTH_DIVISOR))
        text = _label(int(classes[i]), None if scores is None else float(scores[i]), ids[i],
                      class_names)
        origin = _label_origin(draw.textbbox((0, 0), text, font=font), (x0, y0, x1, y1), w)
        left, top, right, bottom = draw.textbbox(origin, text, font=font)
        draw.rectangle([left - TEXT_PADDING, top - TEXT_PADDING, right + TEXT_PADDING,
                        bottom + TEXT_PADDING], fill=color)
        draw.text(origin, text, fill=_text_color(color), font=font)
    return np.asarray(image)


def _label_origin(text_box: Sequence[float], box: Sequence[float], width: int):
    """Where a label goes: just above its box, or just below it at the top of the frame, so
    that it does not hide the object; shifted left to stay inside the frame."""
    _, top, right, bottom = text_box  # of the text drawn at (0, 0)
    x0, y0, _, y1 = box
    y = y0 - bottom - TEXT_PADDING
    if y + top - TEXT_PADDING < 0:
        y = y1 + TEXT_PADDING - top
    return max(0.0, min(x0, width - right - TEXT_PADDING)), y


def draw_sem_seg(rgb: np.ndarray, labels: np.ndarray, alpha: float = MASK_ALPHA) -> np.ndarray:
    """An H x W label map, one colour per label, blended over an RGB uint8 frame of its size."""
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and frame {rgb.shape[:2]} differ in size")
    colors = _COLORS[labels.astype(np.int64) % len(_COLORS)]
    return (rgb * (1 - alpha) + colors * alpha).round().astype(np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left`` and ``right`` (RGB uint8) next to each other; ``right`` is resized to the size
    of ``left`` if they differ."""
    h, w = left.shape[:2]
    if right.shape[:2] != (h, w):
        right = np.asarray(Image.fromarray(right).resize((w, h), Image.BILINEAR))
    return np.concatenate([left, right], axis=1)


def add_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` with a strip below it holding ``text`` (one line, font scaled with the frame)."""
    h, w = rgb.shape[:2]
    font = _font(_font_size(h, w))
    bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)[3]
    strip = Image.new("RGB", (w, bottom + 2 * TEXT_PADDING), CAPTION_BACKGROUND)
    ImageDraw.Draw(strip).text((TEXT_PADDING, TEXT_PADDING), text, fill=CAPTION_FOREGROUND,
                               font=font)
    return np.concatenate([rgb, np.asarray(strip)], axis=0)
