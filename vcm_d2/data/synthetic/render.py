"""Rendering of one synthetic video: background, objects painted back to front, and the
annotations of what stays visible (masks, boxes, keypoints, semantic maps)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from .background import make_background, render_background
from .shapes import render_object
from .spec import IGNORE_LABEL, PERSON_CATEGORY_ID, SyntheticSpec
from .tracks import make_tracks

__all__ = ["SyntheticVideo", "render_video"]


@dataclass
class SyntheticVideo:
    """One rendered video, in memory.

    Attributes:
        video_index: index of the video in its spec (0-based).
        frames: (T, H, W, 3) uint8 RGB.
        semantic: (T, H, W) uint8; 0 background, category_id + 1 for things,
            IGNORE_LABEL for unannotated fragments.
        instances: per frame, a list of dicts with keys ``track_id`` (int, 1-based, stable
            within the video), ``category_id`` (int), ``bbox`` (XYXY absolute, the extent of
            the visible mask in pixel-edge coordinates), ``mask`` (H x W bool, visible part),
            ``keypoints`` ((K, 3) float32 of x, y, v in continuous pixel coordinates for the
            person class, else None; v = 2 visible, 1 occluded, 0 outside the image).
    """

    video_index: int
    frames: np.ndarray
    semantic: np.ndarray
    instances: List[List[Dict[str, Any]]]


def _video_rng(spec: SyntheticSpec, video_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(spec.seed), int(video_index)]))


def _mask_bbox(mask: np.ndarray) -> Tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def render_video(spec: SyntheticSpec, video_index: int) -> SyntheticVideo:
    """Render one video; depends only on (spec, video_index)."""
    if not isinstance(spec, SyntheticSpec):
        raise ValueError(f"render_video expects a SyntheticSpec, got {type(spec).__name__}")
    if not 0 <= int(video_index) < spec.num_videos:
        raise ValueError(f"video_index {video_index} out of range [0, {spec.num_videos})")
    rng = _video_rng(spec, video_index)
    bg = make_background(spec, rng)
    tracks = make_tracks(spec, bg, rng)  # list order = depth order, back to front
    T, H, W = spec.frames_per_video, spec.height, spec.width
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    semantic = np.zeros((T, H, W), dtype=np.uint8)
    all_instances: List[List[Dict[str, Any]]] = []
    for t in range(T):
        image = render_background(bg, spec, t)
        owner = np.full((H, W), -1, dtype=np.int16)
        keypoints_by_track: Dict[int, np.ndarray] = {}
        for depth, track in enumerate(tracks):
            rendered = render_object(track, spec, t)
            if rendered is None:
                continue
            (y0, y1, x0, x1), mask, colors, kps = rendered
            image[y0:y1, x0:x1][mask] = colors[mask]
            owner[y0:y1, x0:x1][mask] = depth
            if kps is not None:
                keypoints_by_track[depth] = kps
        frames[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        instances = []
        for depth, track in enumerate(tracks):
            visible = owner == depth
            count = int(visible.sum())
            if count == 0:
                continue
            if count < spec.min_visible_pixels:
                semantic[t][visible] = IGNORE_LABEL
                continue
            semantic[t][visible] = track.category_id + 1
            keypoints = None
            if track.category_id == PERSON_CATEGORY_ID:
                keypoints = _keypoint_visibility(keypoints_by_track[depth], visible)
            instances.append({
                "track_id": track.track_id,
                "category_id": track.category_id,
                "bbox": _mask_bbox(visible),
                "mask": visible,
                "keypoints": keypoints,
            })
        all_instances.append(instances)
    return SyntheticVideo(int(video_index), frames, semantic, all_instances)


def _keypoint_visibility(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """COCO visibility: 2 on the visible mask, 1 occluded inside the image, 0 outside."""
    H, W = visible.shape
    out = np.zeros((len(points), 3), dtype=np.float32)
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x < W and 0.0 <= y < H):
            continue  # unlabeled: (0, 0, 0)
        out[i] = (x, y, 2.0 if visible[int(y), int(x)] else 1.0)
    return out
