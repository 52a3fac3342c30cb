"""detectron2 dataset dicts of the synthetic splits (images, videos, semantic maps) and their
registration as built-in datasets."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from .spec import (
    CLASS_NAMES,
    IGNORE_LABEL,
    KEYPOINT_CONNECTION_RULES,
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    KEYPOINT_OKS_SIGMAS,
    SPLIT_SPECS,
    STUFF_CLASSES,
    SyntheticSpec,
)
from .storage import default_root, load_annotations

__all__ = ["load_synthetic_images", "load_synthetic_videos", "load_synthetic_semseg",
           "register_synthetic"]


def _instance_dict(inst: Dict[str, Any], num_keypoints: int, box_mode) -> Dict[str, Any]:
    keypoints = inst["keypoints"]
    return {
        "bbox": list(inst["bbox"]),
        "bbox_mode": box_mode,
        "category_id": inst["category_id"],
        "segmentation": dict(inst["segmentation"]),
        # Keypoint R-CNN needs keypoints on every instance: zeros (unlabeled) for non-persons.
        "keypoints": list(keypoints) if keypoints is not None else [0.0] * (3 * num_keypoints),
        "track_id": inst["track_id"],
        "area": inst["area"],
        "iscrowd": 0,
    }


def _frame_dict(directory: str, spec: SyntheticSpec, video: Dict[str, Any],
                frame: Dict[str, Any]) -> Dict[str, Any]:
    """What the per-frame dicts of every task share (image, semantic map, ids)."""
    return {
        "file_name": os.path.join(directory, frame["file_name"]),
        "sem_seg_file_name": os.path.join(directory, frame["sem_seg_file_name"]),
        "height": spec.height,
        "width": spec.width,
        "image_id": frame["image_id"],
        "video_id": video["video_id"],
        "frame_idx": frame["frame_idx"],
    }


def load_synthetic_images(spec: SyntheticSpec, root: Optional[str] = None) -> List[dict]:
    """Per-frame detectron2 dataset dicts (boxes XYXY_ABS, RLE masks, keypoints, track ids)."""
    from detectron2.structures import BoxMode

    directory, payload = load_annotations(spec, root)
    return [dict(_frame_dict(directory, spec, video, frame),
                 annotations=[_instance_dict(inst, len(KEYPOINT_NAMES), BoxMode.XYXY_ABS)
                              for inst in frame["instances"]])
            for video in payload["videos"] for frame in video["frames"]]


def load_synthetic_videos(spec: SyntheticSpec, root: Optional[str] = None) -> List[dict]:
    """YTVIS-style per-video dicts: ``annotations[t]`` lists frame t's instances, ``id`` = track."""
    from detectron2.structures import BoxMode

    directory, payload = load_annotations(spec, root)
    out = []
    for video in payload["videos"]:
        frames = video["frames"]
        annotations = []
        for frame in frames:
            objs = []
            for inst in frame["instances"]:
                obj = _instance_dict(inst, len(KEYPOINT_NAMES), BoxMode.XYXY_ABS)
                obj["id"] = inst["track_id"]
                objs.append(obj)
            annotations.append(objs)
        out.append({
            "video_id": video["video_id"],
            "length": len(frames),
            "height": spec.height,
            "width": spec.width,
            "file_names": [os.path.join(directory, f["file_name"]) for f in frames],
            "image_ids": [f["image_id"] for f in frames],
            "annotations": annotations,
        })
    return out


def load_synthetic_semseg(spec: SyntheticSpec, root: Optional[str] = None) -> List[dict]:
    """Semantic-segmentation dicts; labels index STUFF_CLASSES, IGNORE_LABEL ignored."""
    directory, payload = load_annotations(spec, root)
    return [_frame_dict(directory, spec, video, frame)
            for video in payload["videos"] for frame in video["frames"]]


def _common_metadata(spec: SyntheticSpec) -> Dict[str, Any]:
    return {"spec": asdict(spec), "video_key": "video_id"}


def register_synthetic(root: Optional[str] = None) -> None:
    """Register the synthetic splits in DatasetCatalog / MetadataCatalog (lazily rendered).

    Names: ``vcm_synth_{split}`` (images, evaluator "coco"), ``vcm_synth_vis_{split}`` (videos,
    "ytvis"), ``vcm_synth_sem_{split}`` (semantic, "sem_seg") for the splits of SPLIT_SPECS
    (train, val, test, holdout). The first load of
    a split materializes it under ``root`` (default :func:`default_root`, read at call time).
    Names already registered are left untouched, so calling twice is safe.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = default_root() if root is None else root
    thing_meta = {
        "thing_classes": list(CLASS_NAMES),
        "keypoint_names": list(KEYPOINT_NAMES),
        "keypoint_flip_map": list(KEYPOINT_FLIP_MAP),
        "keypoint_connection_rules": list(KEYPOINT_CONNECTION_RULES),
        "keypoint_oks_sigmas": list(KEYPOINT_OKS_SIGMAS),
    }
    registered = set(DatasetCatalog.list())
    for split, spec in SPLIT_SPECS.items():
        entries = [
            (f"vcm_synth_{split}", load_synthetic_images,
             dict(thing_meta, evaluator_type="coco")),
            (f"vcm_synth_vis_{split}", load_synthetic_videos,
             dict(thing_meta, evaluator_type="ytvis")),
            (f"vcm_synth_sem_{split}", load_synthetic_semseg,
             {"stuff_classes": list(STUFF_CLASSES), "ignore_label": IGNORE_LABEL,
              "evaluator_type": "sem_seg"}),
        ]
        for name, loader, meta in entries:
            if name in registered:
                continue
            DatasetCatalog.register(
                name, lambda loader=loader, spec=spec, root=root: loader(spec, root))
            MetadataCatalog.get(name).set(root=root, **meta, **_common_metadata(spec))
