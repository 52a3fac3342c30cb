"""From per-frame detections to video-level tracks.

``VideoTracks`` follows one video: it feeds each frame's instances to a detectron2 tracker
(which writes an ``ID`` per instance) and collects, per identity, the frames it was detected
in. A finished video gives YouTube-VIS style tracks::

    {"track_id": int, "category_id": int (contiguous), "score": float,
     "segmentations": [compressed RLE dict at the video's size, or None, per frame]}

The category of a track is the class with the largest summed score over its frames (the
trackers are class-agnostic, so a track may hold detections of several classes); its score is
the mean score of its detections. Masks are stored as RLE as frames arrive, so a video's
memory grows with its detections, not with frames x pixels.
"""
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from detectron2.structures import Instances
from detectron2.tracking import TRACKER_HEADS_REGISTRY, BaseTracker
from pycocotools import mask as mask_util

from ...utils.rate import RATE_KEYS

__all__ = ["VideoTracks", "build_tracker"]


def build_tracker(name: str, height: int, width: int, **kwargs) -> BaseTracker:
    """A tracker of ``TRACKER_HEADS_REGISTRY`` for a video of ``height`` x ``width``."""
    try:
        cls = TRACKER_HEADS_REGISTRY.get(name)
    except KeyError as e:
        known = sorted(k for k, _ in TRACKER_HEADS_REGISTRY)
        raise ValueError(f"MODEL.VCM.VIS.TRACKER.NAME {name!r} is not a detectron2 tracker; "
                         f"known: {known}") from e
    return cls(video_height=int(height), video_width=int(width), **kwargs)


def _select(instances: Instances, keep: List[bool]) -> Instances:
    """Rows of ``instances`` where ``keep``; the trackers' fields are lists, which
    ``Instances.__getitem__`` cannot index with a mask."""
    index = torch.tensor(keep, dtype=torch.bool)
    out = Instances(instances.image_size)
    for name, value in instances.get_fields().items():
        out.set(name, [v for v, k in zip(value, keep) if k] if isinstance(value, list)
                else value[index])
    return out


class VideoTracks:
    """Tracking state and collected tracks of one video (module docstring)."""

    def __init__(self, tracker_name: str, tracker_args: Mapping[str, Any], *,
                 min_score: float = 0.0, max_tracks: int = 100):
        if max_tracks < 1:
            raise ValueError(f"max_tracks must be >= 1, got {max_tracks}")
        self.tracker_name = tracker_name
        self.tracker_args = dict(tracker_args)
        self.min_score = float(min_score)
        self.max_tracks = int(max_tracks)
        self._tracker: Optional[BaseTracker] = None
        self._size = None
        self._detections: Dict[int, List[tuple]] = defaultdict(list)  # ID -> (t, cls, score, rle)
        self._rates: Dict[str, List[int]] = defaultdict(list)
        self.num_frames = 0

    def add(self, output: Mapping[str, Any]) -> Dict[str, Any]:
        """Track one frame's output (``"instances"`` with ``pred_masks``, optional rate keys).

        Returns the output with ``"instances"`` = this frame's detections (on CPU, score >=
        min_score) carrying the tracker's ``ID`` / ``ID_period`` fields; tracks the tracker
        keeps alive from earlier frames are not part of it."""
        instances = output.get("instances")
        if not isinstance(instances, Instances):
            raise ValueError("the per-frame network must output 'instances' "
                             "(detectron2 Instances) for video instance segmentation")
        if not instances.has("pred_masks"):
            raise ValueError("the per-frame network gives no 'pred_masks': video instance "
                             "segmentation needs masks (MODEL.MASK_ON True)")
        instances = instances.to("cpu")
        instances = instances[instances.scores >= self.min_score]
        size = tuple(instances.image_size)
        if self._tracker is None:
            self._size = size
            self._tracker = build_tracker(self.tracker_name, *size, **self.tracker_args)
        elif size != self._size:
            raise ValueError(f"frame {self.num_frames} is {size} (HxW), the video started at "
                             f"{self._size}")
        tracked = self._tracker.update(instances)
        # Tracks kept alive while lost carry an earlier frame's box and mask: not detections.
        current = _select(tracked, [c == 0 for c in tracked.lost_frame_count])
        self._collect(current)
        for key in RATE_KEYS:  # per-video lists: RateTaskEvaluator counts every frame's bits
            if key in output:
                self._rates[key].append(int(output[key]))
        self.num_frames += 1
        return dict(output, instances=current)

    def _collect(self, current: Instances) -> None:
        if not len(current):
            return
        masks = current.pred_masks.numpy().astype(np.uint8).transpose(1, 2, 0)
        rles = mask_util.encode(np.asfortranarray(masks))
        for track_id, cls, score, rle in zip(current.ID, current.pred_classes.tolist(),
                                             current.scores.tolist(), rles):
            self._detections[int(track_id)].append((self.num_frames, int(cls), float(score), rle))

    def result(self) -> Dict[str, Any]:
        """``{"tracks": [...]}`` (highest scores first, at most max_tracks) plus per-frame lists
        of the rate keys every frame reported."""
        tracks = []
        for track_id, dets in self._detections.items():
            per_class: Dict[int, float] = defaultdict(float)
            for _, cls, score, _ in dets:
                per_class[cls] += score
            segmentations: List[Optional[dict]] = [None] * self.num_frames
            for t, _, _, rle in dets:
                segmentations[t] = rle
            tracks.append({
                "track_id": track_id,
                "category_id": max(per_class, key=lambda c: (per_class[c], -c)),
                "score": float(np.mean([d[2] for d in dets])),
                "segmentations": segmentations,
            })
        tracks.sort(key=lambda t: (-t["score"], t["track_id"]))
        out: Dict[str, Any] = {"tracks": tracks[:self.max_tracks]}
        for key, values in self._rates.items():
            if len(values) != self.num_frames:
                raise ValueError(f"{len(values)} of {self.num_frames} frames reported {key!r}: "
                                 "a video's rate must cover every frame")
            out[key] = list(values)
        return out
