"""Write the synthetic benchmark in the official YouTube-VIS 2019, VSPW and COCO-2017 layouts.

Users bring the real datasets; we cannot ship them. Writing the synthetic splits in the official
layouts and loading them back through the real-data registrations tests those loaders end to end
(``tests/test_real_format_roundtrip.py``). The folders are the ones the registrations read
(``vcm_d2.data.datasets.builtin`` and detectron2's built-in COCO table)::

    <root>/ytvis_2019/{train,valid}.json, <root>/ytvis_2019/{train,valid}/JPEGImages/<video>/*.png
    <root>/VSPW/{train,val}.txt, <root>/VSPW/data/<video>/{origin,mask,mask_detectron2}/*.png
    <root>/coco/annotations/instances_{train,val}2017.json, <root>/coco/{train,val}2017/*.png

Frames are copied as PNG (lossless; the loaders accept .png frame names), so pixels are identical.
Every file is written atomically; reruns keep existing frames and masks (unless ``overwrite``) and
rewrite the small index files, so an interrupted export can simply be run again.
"""
import logging
import os
import shutil
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin import _PREDEFINED_SPLITS_COCO
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util

from ..utils.io import atomic_write, atomic_write_json
from .datasets.builtin import _PREDEFINED_SPLITS_YTVIS_2019, VSPW_DIRNAME
from .datasets.vspw import (
    FRAMES_DIRNAME as VSPW_FRAMES_DIRNAME,
    MASK_DIRNAME as VSPW_MASK_DIRNAME,
    RAW_MASK_DIRNAME as VSPW_RAW_MASK_DIRNAME,
    VSPW_CLASSES,
    VSPW_IGNORE_LABEL,
    convert_vspw_masks,
)
from .synthetic import PERSON_CATEGORY_ID

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_SPLITS",
    "SOURCE_DATASETS",
    "YTVIS_TRACK_ID_STRIDE",
    "COCO_KEYPOINT_OFFSET",
    "ytvis_annotation_id",
    "export_video_name",
    "ytvis_2019_paths",
    "coco_2017_paths",
    "mask_to_uncompressed_rle",
    "export_ytvis_2019",
    "export_vspw",
    "export_coco_2017",
    "export_synthetic",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("ytvis", "vspw", "coco")
EXPORT_SPLITS = ("train", "val")
# Format -> registered synthetic dataset it is written from ({split} is "train" or "val").
SOURCE_DATASETS = {
    "ytvis": "vcm_synth_vis_{split}",
    "vspw": "vcm_synth_sem_{split}",
    "coco": "vcm_synth_{split}",
}
# Synthetic split -> the registered real-data name whose folders we write (its split table
# is the single definition of the layout).
_YTVIS_NAMES = {"train": "ytvis_2019_train", "val": "ytvis_2019_val"}
_COCO_NAMES = {"train": "coco_2017_train", "val": "coco_2017_val"}

# Official layouts number categories from 1; detectron2's contiguous ids start at 0.
DATASET_CATEGORY_ID_OFFSET = 1
# VSPW raw labels: class k is raw k + 1 (raw 0 is "others", ignored like 255).
VSPW_RAW_LABEL_OFFSET = 1
# YTVIS annotation (= track) ids are unique over the whole json, while synthetic track ids restart
# in every video: id = video_id * stride + track_id, readable and reversible.
YTVIS_TRACK_ID_STRIDE = 1000
# detectron2's load_coco_json adds 0.5 to keypoint x, y (COCO keypoints are pixel indices,
# detectron2's are continuous coordinates): the export subtracts it.
COCO_KEYPOINT_OFFSET = 0.5

# The split is part of a video's name: VSPW keeps the videos of all splits in one data/ folder.
_VIDEO_NAME = "synth_{split}_{video_id:04d}"
# Frame names padded as in the official releases (so sorting keeps the temporal order).
_YTVIS_FRAME_NAME = "{t:05d}.png"
_VSPW_FRAME_NAME = "{t:08d}.png"
_COCO_FRAME_NAME = "{image_id:012d}.png"
_INFO = {"description": "vcm_d2 synthetic benchmark (vcm_d2.data.export)"}
_NUM_LABEL_VALUES = 256  # uint8 label maps


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def ytvis_annotation_id(video_id: int, track_id: int) -> int:
    """The YTVIS annotation id written for a synthetic track (see YTVIS_TRACK_ID_STRIDE)."""
    if not 0 <= int(track_id) < YTVIS_TRACK_ID_STRIDE:
        raise ValueError(f"track id {track_id} of video {video_id} is outside "
                         f"[0, YTVIS_TRACK_ID_STRIDE={YTVIS_TRACK_ID_STRIDE})")
    return int(video_id) * YTVIS_TRACK_ID_STRIDE + int(track_id)


def export_video_name(split: str, video_id: Any) -> str:
    """Folder name of a synthetic video in the YTVIS and VSPW layouts."""
    return _VIDEO_NAME.format(split=split, video_id=video_id)


def ytvis_2019_paths(root: str, split: str) -> Tuple[str, str]:
    """(json file, image root) of a synthetic split's YouTube-VIS 2019 export under ``root``."""
    image_rel, json_rel = _PREDEFINED_SPLITS_YTVIS_2019[_YTVIS_NAMES[_check_split(split)]]
    return os.path.join(root, json_rel), os.path.join(root, image_rel)


def coco_2017_paths(root: str, split: str) -> Tuple[str, str]:
    """(json file, image root) of a synthetic split's COCO-2017 export under ``root``."""
    image_rel, json_rel = _PREDEFINED_SPLITS_COCO["coco"][_COCO_NAMES[_check_split(split)]]
    return os.path.join(root, json_rel), os.path.join(root, image_rel)


def _check_split(split: str) -> str:
    if split not in EXPORT_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {EXPORT_SPLITS}")
    return split


def mask_to_uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """(H, W) binary mask -> uncompressed RLE as YTVIS stores it: ``counts`` is a list of
    column-major run lengths, the first one counting zeros (0 if the first pixel is set)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _decode_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Any detectron2 instance segmentation (polygons, compressed or uncompressed RLE) -> bool mask."""
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    elif isinstance(segm, dict) and "counts" in segm:
        rle = segm
    else:
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")
    mask = mask_util.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation of size {mask.shape} in a {height}x{width} image")
    return mask


def _compressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _xywh(obj: Dict[str, Any]) -> List[float]:
    box = BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYWH_ABS)
    return [float(v) for v in box]


def _copy_file(src: str, dst: str) -> None:
    def write(f):
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f)

    atomic_write(dst, write)


def _export_frame(src: str, dst: str, overwrite: bool) -> str:
    """Copy a PNG frame (bytes as is: lossless, pixels unchanged); keep an existing copy."""
    if not src.lower().endswith(".png"):
        raise ValueError(f"{src}: the export copies PNG frames only (other formats would need "
                         "re-encoding, which a lossy source format cannot round-trip)")
    if overwrite or not os.path.exists(dst):
        _copy_file(src, dst)
    return dst


def _source(kind: str, split: str) -> Tuple[List[dict], Any]:
    """Dataset dicts and metadata of the synthetic dataset a format is written from."""
    name = SOURCE_DATASETS[kind].format(split=_check_split(split))
    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered; import vcm_d2.data (which calls "
                       "vcm_d2.data.synthetic.register_synthetic) first")
    return DatasetCatalog.get(name), MetadataCatalog.get(name)


def _categories(meta) -> List[Dict[str, Any]]:
    return [{"id": i + DATASET_CATEGORY_ID_OFFSET, "name": name}
            for i, name in enumerate(meta.thing_classes)]


# ---------------------------------------------------------------------------------------------
# YouTube-VIS 2019
# ---------------------------------------------------------------------------------------------
def _ytvis_tracks(video: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One official annotation per track: per-frame boxes / masks / areas, None where absent."""
    video_id, length = video["video_id"], len(video["file_names"])
    height, width = video["height"], video["width"]
    if len(video["annotations"]) != length:
        raise ValueError(f"video {video_id} has {len(video['annotations'])} annotated frames "
                         f"for {length} frames")
    tracks: Dict[int, Dict[str, Any]] = {}
    for t, objs in enumerate(video["annotations"]):
        for obj in objs:
            category_id = obj["category_id"] + DATASET_CATEGORY_ID_OFFSET
            track = tracks.get(obj["id"])
            if track is None:
                track = tracks[obj["id"]] = {
                    "id": ytvis_annotation_id(video_id, obj["id"]),
                    "video_id": video_id,
                    "category_id": category_id,
                    "iscrowd": int(obj.get("iscrowd", 0)),
                    "bboxes": [None] * length,
                    "segmentations": [None] * length,
                    "areas": [None] * length,
                }
            if track["category_id"] != category_id:
                raise ValueError(f"track {obj['id']} of video {video_id} changes category; YTVIS "
                                 "has one category per track")
            if track["bboxes"][t] is not None:
                raise ValueError(f"track {obj['id']} of video {video_id} appears twice in frame {t}")
            mask = _decode_mask(obj["segmentation"], height, width)
            track["bboxes"][t] = _xywh(obj)
            track["segmentations"][t] = mask_to_uncompressed_rle(mask)
            track["areas"][t] = int(mask.sum())
    return [tracks[k] for k in sorted(tracks)]


def export_ytvis_2019(root: str, split: str, overwrite: bool = False) -> List[str]:
    """Write ``vcm_synth_vis_<split>`` as YouTube-VIS 2019 ``train`` / ``valid`` under ``root``.

    The valid json carries annotations too (the official one does not), so it can be evaluated.
    Returns the paths of the export (json first, then frames), written now or kept from a
    previous run.
    """
    videos, meta = _source("ytvis", split)
    json_file, image_root = ytvis_2019_paths(root, split)
    frames, json_videos, annotations = [], [], []
    for video in videos:
        name = export_video_name(split, video["video_id"])
        file_names = [f"{name}/{_YTVIS_FRAME_NAME.format(t=t)}"
                      for t in range(len(video["file_names"]))]
        for src, rel in zip(video["file_names"], file_names):
            frames.append(_export_frame(src, os.path.join(image_root, rel), overwrite))
        json_videos.append({"id": video["video_id"], "width": video["width"],
                            "height": video["height"], "length": len(file_names),
                            "file_names": file_names})
        annotations += _ytvis_tracks(video)
    # Written last: the registration looks for the json, so it never sees missing frames.
    atomic_write_json(json_file, {"info": _INFO, "videos": json_videos,
                                  "annotations": annotations, "categories": _categories(meta)},
                      indent=None)
    logger.info("YouTube-VIS %s: %d videos, %d tracks -> %s", split, len(json_videos),
                len(annotations), json_file)
    return [json_file] + frames


# ---------------------------------------------------------------------------------------------
# VSPW
# ---------------------------------------------------------------------------------------------
def _vspw_raw_lut(meta) -> Tuple[np.ndarray, np.ndarray]:
    """Synthetic label -> raw VSPW label, and which labels are valid."""
    num_classes = len(meta.stuff_classes)
    if num_classes > len(VSPW_CLASSES):
        raise ValueError(f"{num_classes} classes do not fit VSPW's {len(VSPW_CLASSES)}")
    lut = np.zeros(_NUM_LABEL_VALUES, dtype=np.uint8)
    valid = np.zeros(_NUM_LABEL_VALUES, dtype=bool)
    lut[:num_classes] = np.arange(num_classes) + VSPW_RAW_LABEL_OFFSET
    valid[:num_classes] = True
    lut[meta.ignore_label], valid[meta.ignore_label] = VSPW_IGNORE_LABEL, True
    return lut, valid


def _export_raw_mask(src: str, dst: str, lut: np.ndarray, valid: np.ndarray,
                     overwrite: bool) -> str:
    if overwrite or not os.path.exists(dst):
        with Image.open(src) as im:
            if im.mode != "L":
                raise ValueError(f"{src}: expected a single-channel label PNG, got mode {im.mode}")
            labels = np.asarray(im)
        bad = np.unique(labels[~valid[labels]])
        if bad.size:
            raise ValueError(f"{src} holds labels {bad.tolist()} that are neither classes nor "
                             "the ignore label")
        atomic_write(dst, lambda f: Image.fromarray(lut[labels]).save(f, format="PNG"))
    return dst


def export_vspw(root: str, split: str, overwrite: bool = False) -> List[str]:
    """Write ``vcm_synth_sem_<split>`` as VSPW ``<split>`` under ``root``, converted for detectron2.

    Raw masks follow the release: synthetic label s is raw s + 1, the ignore label becomes 255;
    then :func:`~vcm_d2.data.datasets.vspw.convert_vspw_masks` writes ``mask_detectron2/``.
    Returns the paths of the export (split list first, then frames and raw masks, then the
    converted masks).
    """
    records, meta = _source("vspw", split)
    lut, valid = _vspw_raw_lut(meta)
    vspw_root = os.path.join(root, VSPW_DIRNAME)
    by_video: Dict[Any, List[dict]] = {}  # insertion order = dataset order
    for record in records:
        by_video.setdefault(record["video_id"], []).append(record)
    paths, names, converted = [], [], []
    for video_id, frames in by_video.items():
        name = export_video_name(split, video_id)
        names.append(name)
        video_dir = os.path.join(vspw_root, "data", name)
        for t, record in enumerate(sorted(frames, key=lambda r: r["frame_idx"])):
            frame = _VSPW_FRAME_NAME.format(t=t)
            paths.append(_export_frame(
                record["file_name"], os.path.join(video_dir, VSPW_FRAMES_DIRNAME, frame), overwrite))
            paths.append(_export_raw_mask(
                record["sem_seg_file_name"], os.path.join(video_dir, VSPW_RAW_MASK_DIRNAME, frame),
                lut, valid, overwrite))
            converted.append(os.path.join(video_dir, VSPW_MASK_DIRNAME, frame))
    # The split list comes last but before the conversion, which reads it.
    split_file = os.path.join(vspw_root, f"{split}.txt")
    atomic_write(split_file, lambda f: f.write(("\n".join(names) + "\n").encode("utf-8")))
    num_converted = convert_vspw_masks(vspw_root, [split], overwrite=overwrite)
    logger.info("VSPW %s: %d videos, %d frames (%d masks converted) -> %s", split, len(names),
                len(records), num_converted, vspw_root)
    return [split_file] + paths + converted


# ---------------------------------------------------------------------------------------------
# COCO-2017
# ---------------------------------------------------------------------------------------------
def _coco_keypoints(keypoints: Sequence[float]) -> Tuple[List[float], int]:
    """detectron2 keypoints -> COCO's (pixel-index x, y, v); unlabeled points are (0, 0, 0)."""
    out: List[float] = []
    for x, y, v in zip(keypoints[0::3], keypoints[1::3], keypoints[2::3]):
        if v > 0:
            out += [float(x) - COCO_KEYPOINT_OFFSET, float(y) - COCO_KEYPOINT_OFFSET, int(v)]
        else:
            out += [0, 0, 0]
    return out, sum(1 for v in keypoints[2::3] if v > 0)


def _coco_annotation(obj: Dict[str, Any], ann_id: int, record: Dict[str, Any]) -> Dict[str, Any]:
    mask = _decode_mask(obj["segmentation"], record["height"], record["width"])
    ann = {
        "id": ann_id,
        "image_id": record["image_id"],
        "category_id": obj["category_id"] + DATASET_CATEGORY_ID_OFFSET,
        "bbox": _xywh(obj),
        "segmentation": _compressed_rle(mask),
        "area": int(mask.sum()),
        "iscrowd": int(obj.get("iscrowd", 0)),
    }
    if obj.get("keypoints") is not None:
        ann["keypoints"], ann["num_keypoints"] = _coco_keypoints(obj["keypoints"])
    return ann


def _coco_categories(meta) -> List[Dict[str, Any]]:
    categories = _categories(meta)
    names = meta.get("keypoint_names", None)
    if names:
        index = {name: i + 1 for i, name in enumerate(names)}  # COCO's skeleton is 1-based
        categories[PERSON_CATEGORY_ID].update(
            keypoints=list(names),
            skeleton=[[index[a], index[b]] for a, b, _ in meta.get("keypoint_connection_rules", [])],
        )
    return categories


def export_coco_2017(root: str, split: str, overwrite: bool = False) -> List[str]:
    """Write ``vcm_synth_<split>`` as COCO-2017 ``instances_<split>2017.json`` under ``root``.

    Image ids are the synthetic ones; masks are compressed RLE; keypoints follow COCO's pixel-index
    convention (see COCO_KEYPOINT_OFFSET) and the person category lists keypoints and skeleton.
    Returns the paths of the export (json first, then frames).
    """
    records, meta = _source("coco", split)
    json_file, image_root = coco_2017_paths(root, split)
    frames, images, annotations = [], [], []
    for record in records:
        file_name = _COCO_FRAME_NAME.format(image_id=record["image_id"])
        frames.append(_export_frame(record["file_name"], os.path.join(image_root, file_name),
                                    overwrite))
        images.append({"id": record["image_id"], "width": record["width"],
                       "height": record["height"], "file_name": file_name})
        for obj in record.get("annotations", []):
            annotations.append(_coco_annotation(obj, len(annotations) + 1, record))
    atomic_write_json(json_file, {"info": _INFO, "images": images, "annotations": annotations,
                                  "categories": _coco_categories(meta)}, indent=None)
    logger.info("COCO %s: %d images, %d annotations -> %s", split, len(images), len(annotations),
                json_file)
    return [json_file] + frames


_EXPORTERS = {"ytvis": export_ytvis_2019, "vspw": export_vspw, "coco": export_coco_2017}


def export_synthetic(root: str, splits: Sequence[str] = EXPORT_SPLITS,
                     formats: Sequence[str] = EXPORT_FORMATS, overwrite: bool = False) -> List[str]:
    """Write the synthetic ``splits`` in each of ``formats`` under ``root``.

    Returns the paths of the export, per format and split: its annotation file (json or split
    list) first, then its frames and masks.
    """
    for value, allowed, what in ((splits, EXPORT_SPLITS, "split"),
                                 (formats, EXPORT_FORMATS, "format")):
        if isinstance(value, str):
            raise ValueError(f"{what}s must be a sequence of names, got the string {value!r}")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}; expected some of {allowed}")
    paths: List[str] = []
    for fmt in formats:
        for split in splits:
            paths += _EXPORTERS[fmt](root, split, overwrite=overwrite)
    return paths
