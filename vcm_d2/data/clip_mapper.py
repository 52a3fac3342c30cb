"""Clips and whole videos of consecutive frames for video models (TransVFC, the VIS model).

Datasets come either as per-frame image dicts carrying ``video_id`` and ``frame_idx``
(``vcm_synth_train``, ``vcm_synth_sem_*``, ``ytvis_2019_*_frames``, ``vspw_*``) or as YTVIS-style
video dicts (``file_names`` and per-frame ``annotations``: ``vcm_synth_vis_*``,
``ytvis_2019_*``, and their compressed pair datasets, whose per-frame ``bits`` and
``original_file_names`` travel with the frames). ``to_video_dicts`` turns both into
``{"video_id", "height", "width", "frames": [frame dicts in order]}``; ``ClipDatasetMapper``
maps one such video to one clip:

    {"video_id", "height", "width", "frame_indices": [...], "file_names": [...],
     "bits": [...] (pair datasets), "frames": [DatasetMapper outputs: "image", "instances",
     "sem_seg", "original" (VCM.PAIRS.LOAD_ORIGINAL), ...]}

In training a clip is ``VCM.CLIP.LENGTH`` frames, ``VCM.CLIP.FRAME_STRIDE`` apart, from a
random start; in inference it is the whole video, in order. One augmentation is drawn on the
first frame and applied to all, so the frames stay aligned (what inter-prediction needs).
``build_clip_train_loader(cfg)`` is detectron2's train loader over the videos of
DATASETS.TRAIN (each video sampled equally often, sharded across workers and ranks);
``build_video_test_loader(cfg, name)`` is detectron2's inference loader with one whole video
per item (videos split across ranks, never a video).
"""
import copy
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..codecs.stored import StoredBitstreamError
from ..utils.rate import BITS
from .mapper import PairDatasetMapper
from .pairs import BITSTREAM_FRAME, BITSTREAM_FRAMES

__all__ = ["ClipDatasetMapper", "to_video_dicts", "build_clip_train_loader",
           "build_video_test_loader", "is_video_dataset"]

logger = logging.getLogger(__name__)

# Per-frame keys of YTVIS-style video dicts (and of their pair datasets) and the frame-dict
# keys they become.
_VIDEO_LIST_KEYS = {"file_names": "file_name", "image_ids": "image_id",
                    "annotations": "annotations", "sem_seg_file_names": "sem_seg_file_name",
                    "original_file_names": "original_file_name", BITS: BITS, "bpp": "bpp",
                    BITSTREAM_FRAMES: BITSTREAM_FRAME}
# evaluator_type of datasets evaluated video by video (whole videos in inference).
VIDEO_EVALUATOR_TYPES = ("ytvis",)


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


class ClipDatasetMapper(PairDatasetMapper):
    """Map a video dict (``to_video_dicts``) to a clip of aligned, augmented frames.

    Each frame is mapped like detectron2's DatasetMapper maps an image (image, sem_seg,
    instances with the configured masks / keypoints; with ``load_original`` also the pair's
    original frame, as PairDatasetMapper does), with the transforms of the first frame.
    Errors name the video and the frame: missing frame files, frames or masks of the wrong
    size, videos shorter than a clip.
    """

    @configurable
    def __init__(self, is_train: bool, *, clip_length: int, frame_stride: int = 1, **kwargs):
        """
        Args:
            clip_length: frames per clip; 0: the whole video (inference).
            frame_stride: step between the frames of a clip.
            is_train, kwargs: as for PairDatasetMapper (detectron2's DatasetMapper arguments
                plus ``load_original``).
        """
        super().__init__(is_train, **kwargs)
        if clip_length < 0 or frame_stride < 1:
            raise ValueError(f"clip length must be >= 0 (0: whole videos) and frame stride "
                             f">= 1, got {clip_length} and {frame_stride}")
        self.clip_length = int(clip_length)
        self.frame_stride = int(frame_stride)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train and cfg.VCM.CLIP.LENGTH < 1:
            raise ValueError("training on clips needs VCM.CLIP.LENGTH >= 1")
        ret["clip_length"] = cfg.VCM.CLIP.LENGTH if is_train else 0
        ret["frame_stride"] = cfg.VCM.CLIP.FRAME_STRIDE
        return ret

    def span(self, num_frames: int) -> int:
        """Frames of a video that one clip covers (the whole video if clip_length is 0)."""
        if self.clip_length == 0:
            return num_frames
        return (self.clip_length - 1) * self.frame_stride + 1

    @staticmethod
    def _where(frame: dict) -> str:
        return f"video {frame.get('video_id')!r} frame {frame.get('frame_idx')}"

    def _read_image(self, frame: dict) -> np.ndarray:
        try:
            return super()._read_image(frame)
        except (FileNotFoundError, OSError) as e:
            raise FileNotFoundError(f"{self._where(frame)}: cannot read file_name "
                                    f"{frame['file_name']!r} ({e})") from e
        except StoredBitstreamError as e:
            raise StoredBitstreamError(f"{self._where(frame)}: {e}") from e

    def _check_masks(self, frame: dict, shape) -> None:
        """RLE masks must have the frame's size (detectron2 would only assert later)."""
        for obj in frame.get("annotations") or []:
            segm = obj.get("segmentation")
            if isinstance(segm, dict) and "size" in segm and tuple(segm["size"]) != tuple(shape):
                raise ValueError(
                    f"{self._where(frame)}: the mask of object {obj.get('id', obj.get('track_id'))} "
                    f"is {tuple(segm['size'])} (HxW) but the frame is {tuple(shape)}")

    def _map_frame(self, frame: dict, transforms: Optional[T.TransformList]):
        frame = copy.deepcopy(frame)
        image = self._read_image(frame)
        try:
            utils.check_image_size(frame, image)
        except utils.SizeMismatchError as e:
            raise ValueError(f"{self._where(frame)}: {e}") from e
        original = self._read_original(frame, image) if self.load_original else None
        source_shape = image.shape[:2]
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
        if original is not None:
            original = transforms.apply_image(original)
            frame["original"] = torch.as_tensor(np.ascontiguousarray(original.transpose(2, 0, 1)))
        if sem_seg is not None:
            frame["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if not self.is_train:
            frame.pop("annotations", None)
        elif "annotations" in frame:
            self._check_masks(frame, source_shape)
            self._transform_annotations(frame, transforms, image_shape)
        return frame, transforms

    def __call__(self, video: dict) -> dict:
        frames = video.get("frames")
        if not frames:
            raise ValueError("ClipDatasetMapper expects video dicts with 'frames' "
                             "(see vcm_d2.data.clip_mapper.to_video_dicts)")
        span = self.span(len(frames))
        if len(frames) < span:
            raise ValueError(f"video {video.get('video_id')!r} has {len(frames)} frames, a clip "
                             f"needs {span}")
        start = int(np.random.randint(0, len(frames) - span + 1)) if self.is_train else 0
        picked = frames[start:start + span:self.frame_stride]
        out, transforms = [], None
        for frame in picked:
            mapped, transforms = self._map_frame(frame, transforms)
            out.append(mapped)
        clip = {"video_id": video.get("video_id"), "height": video.get("height"),
                "width": video.get("width"),
                "frame_indices": [f.get("frame_idx", start + i * self.frame_stride)
                                  for i, f in enumerate(picked)],
                "file_names": [f["file_name"] for f in picked],
                "frames": out}
        if all(BITS in f for f in picked):  # a pair dataset: the pixel codec's bits
            clip[BITS] = [int(f[BITS]) for f in picked]
        return clip


def _video_dataset(names: Sequence[str]) -> List[dict]:
    # No class histogram: video dicts hold one annotation list per frame.
    return to_video_dicts(get_detection_dataset_dicts(list(names), filter_empty=False,
                                                      check_consistency=False))


def build_clip_train_loader(cfg, mapper: Optional[ClipDatasetMapper] = None):
    """detectron2's train loader over the videos of DATASETS.TRAIN, one clip per sample.

    Videos shorter than a clip are dropped (with a warning); none left is an error."""
    mapper = ClipDatasetMapper(cfg, True) if mapper is None else mapper
    videos = _video_dataset(cfg.DATASETS.TRAIN)
    kept = [v for v in videos if len(v["frames"]) >= mapper.span(len(v["frames"]))]
    if len(kept) < len(videos):
        logger.warning("Dropped %d of %d videos shorter than a %d-frame clip",
                       len(videos) - len(kept), len(videos), mapper.span(0))
    if not kept:
        raise ValueError(f"no video of {cfg.DATASETS.TRAIN} has the {mapper.span(0)} frames a "
                         "clip needs (VCM.CLIP.LENGTH / FRAME_STRIDE)")
    return build_detection_train_loader(cfg, mapper=mapper, dataset=kept)


def build_video_test_loader(cfg, dataset_name: str, mapper: Optional[ClipDatasetMapper] = None):
    """detectron2's inference loader with one whole video (all frames, in order) per item."""
    mapper = ClipDatasetMapper(cfg, False) if mapper is None else mapper
    return build_detection_test_loader(dataset=_video_dataset([dataset_name]), mapper=mapper,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)


def is_video_dataset(dataset_name: str) -> bool:
    """Whether a dataset is evaluated video by video (its evaluator_type, e.g. "ytvis")."""
    return MetadataCatalog.get(dataset_name).get("evaluator_type", None) in VIDEO_EVALUATOR_TYPES
