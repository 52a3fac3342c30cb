"""YouTube-VIS 2019 / 2021: loader (official json layout) and registration helpers.

The official json has ``videos`` ({id, width, height, length, file_names}), ``annotations``
(one per track: {id, video_id, category_id, iscrowd, bboxes/segmentations/areas with one
entry per frame, None where the object is absent}) and ``categories``. The validation json
has no annotations.
"""
import json
import logging
import os
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = [
    "YTVIS_2019_CATEGORIES",
    "YTVIS_2021_CATEGORIES",
    "YTVIS_FRAME_ID_STRIDE",
    "load_ytvis_json",
    "ytvis_videos_to_frames",
    "get_ytvis_2019_metadata",
    "get_ytvis_2021_metadata",
    "register_ytvis_instances",
    "register_ytvis_frames",
]

logger = logging.getLogger(__name__)

# (dataset category id, name) of the 40 YouTube-VIS 2019 classes.
YTVIS_2019_CATEGORIES = [
    (1, "person"), (2, "giant_panda"), (3, "lizard"), (4, "parrot"), (5, "skateboard"),
    (6, "sedan"), (7, "ape"), (8, "dog"), (9, "snake"), (10, "monkey"),
    (11, "hand"), (12, "rabbit"), (13, "duck"), (14, "cat"), (15, "cow"),
    (16, "fish"), (17, "train"), (18, "horse"), (19, "turtle"), (20, "bear"),
    (21, "motorbike"), (22, "giraffe"), (23, "leopard"), (24, "fox"), (25, "deer"),
    (26, "owl"), (27, "surfboard"), (28, "airplane"), (29, "truck"), (30, "zebra"),
    (31, "tiger"), (32, "elephant"), (33, "snowboard"), (34, "boat"), (35, "shark"),
    (36, "mouse"), (37, "frog"), (38, "eagle"), (39, "earless_seal"), (40, "tennis_racket"),
]
# (dataset category id, name) of the 40 YouTube-VIS 2021 classes (the 2021 release renumbers
# them alphabetically and swaps 7 classes of 2019 for new ones).
YTVIS_2021_CATEGORIES = [
    (1, "airplane"), (2, "bear"), (3, "bird"), (4, "boat"), (5, "car"),
    (6, "cat"), (7, "cow"), (8, "deer"), (9, "dog"), (10, "duck"),
    (11, "earless_seal"), (12, "elephant"), (13, "fish"), (14, "flying_disc"), (15, "fox"),
    (16, "frog"), (17, "giant_panda"), (18, "giraffe"), (19, "horse"), (20, "leopard"),
    (21, "lizard"), (22, "monkey"), (23, "motorbike"), (24, "mouse"), (25, "parrot"),
    (26, "person"), (27, "rabbit"), (28, "shark"), (29, "skateboard"), (30, "snake"),
    (31, "snowboard"), (32, "squirrel"), (33, "surfboard"), (34, "tennis_racket"), (35, "tiger"),
    (36, "train"), (37, "truck"), (38, "turtle"), (39, "whale"), (40, "zebra"),
]
# Frame-level image_id = video_id * stride + frame index: stable, unique, independent of order.
# YTVIS videos have at most a few hundred frames.
YTVIS_FRAME_ID_STRIDE = 100000


def _metadata(categories) -> Dict[str, Any]:
    return {
        "thing_classes": [name for _, name in categories],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, (cid, _) in enumerate(categories)},
    }


def get_ytvis_2019_metadata() -> Dict[str, Any]:
    return _metadata(YTVIS_2019_CATEGORIES)


def get_ytvis_2021_metadata() -> Dict[str, Any]:
    return _metadata(YTVIS_2021_CATEGORIES)


def _segmentation(segm: Any, height: int, width: int) -> Any:
    """Polygons as is; uncompressed RLE (list counts) -> compressed RLE, as detectron2 does."""
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        from pycocotools import mask as mask_util

        return mask_util.frPyObjects(segm, height, width)
    return segm


def load_ytvis_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[dict]:
    """Load a YouTube-VIS json into per-video dicts.

    Each dict has ``video_id``, ``length``, ``height``, ``width``, ``file_names`` (absolute under
    ``image_root``), ``image_ids`` (frame ids, see YTVIS_FRAME_ID_STRIDE) and, if the json has
    annotations, ``annotations``: one list per frame of the objects visible in it,
    ``{"id": track id, "category_id": contiguous, "bbox": XYXY_ABS, "bbox_mode",
    "segmentation": RLE or polygons, "iscrowd"}``. With ``dataset_name``, checks the json classes
    against (or sets) that dataset's ``thing_classes``.
    """
    with open(json_file, "r", encoding="utf-8") as f:
        data = json.load(f)
    for key in ("videos", "categories"):
        if key not in data:
            raise ValueError(f"{json_file} is not a YouTube-VIS json: no {key!r} field")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    names = [c["name"] for c in categories]
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        existing = meta.get("thing_classes", None)
        if existing is None:
            meta.set(thing_classes=names, thing_dataset_id_to_contiguous_id=id_map)
        elif list(existing) != names:
            raise ValueError(
                f"{json_file} has classes {names} but dataset {dataset_name!r} was registered with "
                f"{list(existing)}; for a dataset of your own in this layout register it with the "
                "json's classes (register_all_ytvis_2019(root, metadata={}) or "
                "register_ytvis_instances(name, {}, json_file, image_root))"
            )

    has_annotations = "annotations" in data
    tracks: Dict[int, List[dict]] = {}
    for ann in data.get("annotations") or []:
        tracks.setdefault(ann["video_id"], []).append(ann)

    out = []
    for video in data["videos"]:
        vid, length = video["id"], len(video["file_names"])
        h, w = video["height"], video["width"]
        if length >= YTVIS_FRAME_ID_STRIDE:
            raise ValueError(f"video {vid} has {length} frames, more than YTVIS_FRAME_ID_STRIDE")
        if video.get("length", length) != length:
            raise ValueError(f"{json_file}: video {vid} has length {video['length']} but "
                             f"{length} file_names")
        record = {
            "video_id": vid,
            "length": length,
            "height": h,
            "width": w,
            "file_names": [os.path.join(image_root, name) for name in video["file_names"]],
            "image_ids": [vid * YTVIS_FRAME_ID_STRIDE + t for t in range(length)],
        }
        if has_annotations:
            frames: List[List[dict]] = [[] for _ in range(length)]
            for ann in tracks.get(vid, []):
                if ann["category_id"] not in id_map:
                    raise ValueError(
                        f"{json_file}: annotation {ann['id']} has unknown category {ann['category_id']}"
                    )
                bboxes, segms = ann.get("bboxes") or [], ann.get("segmentations") or []
                if len(bboxes) != length or len(segms) != length:
                    raise ValueError(
                        f"{json_file}: track {ann['id']} of video {vid} has {len(bboxes)} boxes and "
                        f"{len(segms)} masks for {length} frames"
                    )
                for t in range(length):
                    if bboxes[t] is None or segms[t] is None:
                        continue  # object not visible in this frame
                    size = segms[t].get("size") if isinstance(segms[t], dict) else None
                    if size is not None and list(size) != [h, w]:
                        raise ValueError(f"{json_file}: track {ann['id']} of video {vid} has a "
                                         f"{list(size)} mask in frame {t}, the video is {[h, w]}")
                    frames[t].append({
                        "id": ann["id"],
                        "category_id": id_map[ann["category_id"]],
                        "bbox": BoxMode.convert(list(bboxes[t]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS),
                        "bbox_mode": BoxMode.XYXY_ABS,
                        "segmentation": _segmentation(segms[t], h, w),
                        "iscrowd": ann.get("iscrowd", 0),
                    })
            record["annotations"] = frames
        out.append(record)
    logger.info("Loaded %d videos from %s", len(out), json_file)
    return out


def ytvis_videos_to_frames(videos: List[dict]) -> List[dict]:
    """Per-frame image dicts (``video_id``, ``frame_idx``, ``image_id``) for image detectors."""
    out = []
    for v in videos:
        for t, (name, image_id) in enumerate(zip(v["file_names"], v["image_ids"])):
            record = {
                "file_name": name,
                "height": v["height"],
                "width": v["width"],
                "image_id": image_id,
                "video_id": v["video_id"],
                "frame_idx": t,
            }
            if "annotations" in v:
                record["annotations"] = [
                    dict({k: val for k, val in obj.items() if k != "id"}, track_id=obj["id"])
                    for obj in v["annotations"][t]
                ]
            out.append(record)
    return out


def register_ytvis_instances(name: str, metadata: Dict[str, Any], json_file: str, image_root: str) -> None:
    """Register a YouTube-VIS split as per-video dicts (evaluator_type "ytvis")."""
    DatasetCatalog.register(name, lambda: load_ytvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="ytvis", video_key="video_id", **metadata
    )


def register_ytvis_frames(name: str, metadata: Dict[str, Any], json_file: str, image_root: str) -> None:
    """Register a YouTube-VIS split as per-frame image dicts (evaluator_type "coco").

    No ``json_file`` is set (the YTVIS json is not COCO format): COCOEvaluator converts the
    dicts itself. The source json is kept as ``ytvis_json_file``.
    """
    DatasetCatalog.register(
        name, lambda: ytvis_videos_to_frames(load_ytvis_json(json_file, image_root, name))
    )
    MetadataCatalog.get(name).set(
        ytvis_json_file=json_file, image_root=image_root, evaluator_type="coco", video_key="video_id",
        **metadata
    )
