"""Clips of consecutive frames for training video models (TransVFC).

Datasets come either as per-frame image dicts carrying ``video_id`` and ``frame_idx``
(``vcm_synth_train``, ``vcm_synth_sem_*``, ``ytvis_2019_*_frames``, ``vspw_*``) or as YTVIS-style
video dicts (``file_names`` and per-frame ``annotations``: ``vcm_synth_vis_*``,
``ytvis_2019_*``). ``to_video_dicts`` turns both into ``{"video_id", "height", "width",
"frames": [frame dicts in order]}``; ``ClipDatasetMapper`` maps one such video to one clip:

    {"video_id", "height", "width", "frame_indices": [...],
     "frames": [DatasetMapper outputs: "image", "instances", "sem_seg", ...]}

``CLIP_LENGTH`` frames, ``CLIP_FRAME_STRIDE`` apart, from a random start in training (the
first frames in inference). One augmentation is drawn on the first frame and applied to all,
so the frames stay aligned (what inter-prediction needs). ``build_clip_train_loader(cfg)`` is
detectron2's train loader over the videos of DATASETS.TRAIN (each video sampled equally often).
"""
import copy
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = ["ClipDatasetMapper", "to_video_dicts", "build_clip_train_loader"]

logger = logging.getLogger(__name__)

# Per-frame keys of YTVIS-style video dicts and the frame-dict keys they become.
_VIDEO_LIST_KEYS = {"file_names": "file_name", "image_ids": "image_id",
                    "annotations": "annotations", "sem_seg_file_names": "sem_seg_file_name"}


def _frames_of_video_dict(video: dict) -> List[dict]:
    n = len(video["file_names"])
    frames = []
    for t in range(n):
        frame = {"height": video["height"], "width": video["width"],
                 "video_id": video["video_id"], "frame_idx": t}
        for src, dst in _VIDEO_LIST_KEYS.items():
            if src in video:
                if len(video[src]) != n:
                    raise ValueError(f"video {video['video_id']!r}: {src} has {len(video[src])} "
                                     f"entries for {n} frames")
                frame[dst] = video[src][t]
        frames.append(frame)
    return frames


def to_video_dicts(dicts: Sequence[dict]) -> List[dict]:
    """Group dataset dicts into videos (order of first appearance; frames by ``frame_idx``).

    Image dicts without ``video_id`` each become a one-frame video."""
    groups: Dict[object, List[dict]] = defaultdict(list)
    order = []
    for i, d in enumerate(dicts):
        if "file_names" in d:
            key = ("video", d.get("video_id", i))
            frames = _frames_of_video_dict(d)
        elif "file_name" in d:
            key = ("frames", d["video_id"]) if "video_id" in d else ("image", i)
            frames = [d]
        else:
            raise ValueError(f"dataset dict {i} has neither 'file_name' nor 'file_names'")
        if key not in groups:
            order.append(key)
        groups[key].extend(frames)
    videos = []
    for key in order:
        frames = groups[key]
        if key[0] == "frames":
            idx = [f.get("frame_idx") for f in frames]
            if any(i is None for i in idx) or len(set(idx)) != len(idx):
                raise ValueError(f"video {key[1]!r}: frames need distinct 'frame_idx' values")
            frames = sorted(frames, key=lambda f: f["frame_idx"])
        videos.append({"video_id": frames[0].get("video_id", key[1]),
                       "height": frames[0].get("height"), "width": frames[0].get("width"),
                       "frames": frames})
    return videos


class ClipDatasetMapper(DatasetMapper):
    """Map a video dict (``to_video_dicts``) to a clip of aligned, augmented frames.

    Each frame is mapped like detectron2's DatasetMapper maps an image (image, sem_seg,
    instances with the configured masks / keypoints), with the transforms of the first frame.
    """

    @configurable
    def __init__(self, is_train: bool, *, clip_length: int, frame_stride: int = 1, **kwargs):
        super().__init__(is_train, **kwargs)
        if clip_length < 1 or frame_stride < 1:
            raise ValueError(f"clip length and frame stride must be >= 1, got {clip_length} "
                             f"and {frame_stride}")
        self.clip_length = int(clip_length)
        self.frame_stride = int(frame_stride)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["clip_length"] = cfg.MODEL.VCM.TRANSVFC.CLIP_LENGTH
        ret["frame_stride"] = cfg.MODEL.VCM.TRANSVFC.CLIP_FRAME_STRIDE
        return ret

    @property
    def span(self) -> int:
        """Frames a video needs for one clip."""
        return (self.clip_length - 1) * self.frame_stride + 1

    def _map_frame(self, frame: dict, transforms: Optional[T.TransformList]):
        frame = copy.deepcopy(frame)
        image = utils.read_image(frame["file_name"], format=self.image_format)
        utils.check_image_size(frame, image)
        sem_seg = None
        if "sem_seg_file_name" in frame:
            sem_seg = utils.read_image(frame.pop("sem_seg_file_name"), "L").squeeze(2)
        if transforms is None:
            aug_input = T.AugInput(image, sem_seg=sem_seg)
            transforms = self.augmentations(aug_input)
            image, sem_seg = aug_input.image, aug_input.sem_seg
        else:
            image = transforms.apply_image(image)
            if sem_seg is not None:
                sem_seg = transforms.apply_segmentation(sem_seg)
        image_shape = image.shape[:2]
        frame["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            frame["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if not self.is_train:
            frame.pop("annotations", None)
        elif "annotations" in frame:
            self._transform_annotations(frame, transforms, image_shape)
        return frame, transforms

    def __call__(self, video: dict) -> dict:
        frames = video.get("frames")
        if not frames:
            raise ValueError("ClipDatasetMapper expects video dicts with 'frames' "
                             "(see vcm_d2.data.clip_mapper.to_video_dicts)")
        if len(frames) < self.span:
            raise ValueError(f"video {video.get('video_id')!r} has {len(frames)} frames, a clip "
                             f"needs {self.span}")
        start = int(np.random.randint(0, len(frames) - self.span + 1)) if self.is_train else 0
        picked = frames[start:start + self.span:self.frame_stride]
        out, transforms = [], None
        for frame in picked:
            mapped, transforms = self._map_frame(frame, transforms)
            out.append(mapped)
        return {"video_id": video.get("video_id"), "height": video.get("height"),
                "width": video.get("width"),
                "frame_indices": [f.get("frame_idx", start + i * self.frame_stride)
                                  for i, f in enumerate(picked)],
                "frames": out}


def build_clip_train_loader(cfg, mapper: Optional[ClipDatasetMapper] = None):
    """detectron2's train loader over the videos of DATASETS.TRAIN, one clip per sample.

    Videos shorter than a clip are dropped (with a warning); none left is an error."""
    mapper = ClipDatasetMapper(cfg, True) if mapper is None else mapper
    # No class histogram: video dicts hold one annotation list per frame.
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False,
                                        check_consistency=False)
    videos = to_video_dicts(dicts)
    kept = [v for v in videos if len(v["frames"]) >= mapper.span]
    if len(kept) < len(videos):
        logger.warning("Dropped %d of %d videos shorter than a %d-frame clip",
                       len(videos) - len(kept), len(videos), mapper.span)
    if not kept:
        raise ValueError(f"no video of {cfg.DATASETS.TRAIN} has the {mapper.span} frames a clip "
                         "needs (MODEL.VCM.TRANSVFC.CLIP_LENGTH / CLIP_FRAME_STRIDE)")
    return build_detection_train_loader(cfg, mapper=mapper, dataset=kept)
