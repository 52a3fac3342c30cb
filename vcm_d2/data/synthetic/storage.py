"""The on-disk copy of a synthetic split: rendered once into a folder named after the spec's
digest (PNG frames and semantic maps, RLE annotations), then read from there."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .render import render_video
from .spec import CLASS_NAMES, GENERATOR_VERSION, KEYPOINT_NAMES, SyntheticSpec

__all__ = ["default_root", "dataset_dir", "materialize", "load_annotations"]

logger = logging.getLogger(__name__)

_DONE_MARKER = "DONE"
_ANNOTATIONS_FILE = "annotations.json"
_SPEC_FILE = "spec.json"
_PNG_COMPRESS_LEVEL = 1  # fast; PNG is lossless at every level


def default_root() -> str:
    """$VCM_D2_SYNTHETIC, else $DETECTRON2_DATASETS/vcm_synthetic (default ./datasets/...)."""
    return os.environ.get(
        "VCM_D2_SYNTHETIC",
        os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "vcm_synthetic"),
    )


def dataset_dir(spec: SyntheticSpec, root: str) -> str:
    """Directory holding the materialized dataset of ``spec`` under ``root``."""
    return os.path.join(root, f"synth-{spec.digest()}")


def _frame_relpath(kind: str, video_index: int, t: int) -> str:
    return f"{kind}/v{video_index:04d}/f{t:04d}.png"


def _encode_rle(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, compress_level=_PNG_COMPRESS_LEVEL)


def materialize(spec: SyntheticSpec, root: Optional[str] = None) -> str:
    """Write the dataset of ``spec`` under ``root`` and return its directory.

    Layout: ``<root>/synth-<digest>/{images,semseg}/vNNNN/fNNNN.png``, ``annotations.json``,
    ``spec.json`` and a ``DONE`` marker. Idempotent (returns at once if the marker exists)
    and atomic: everything is written to a temporary sibling directory that is renamed into
    place at the end, so readers never see a partial dataset.
    """
    root = default_root() if root is None else root
    final = dataset_dir(spec, root)
    if os.path.isfile(os.path.join(final, _DONE_MARKER)):
        return final
    if os.path.exists(final):
        raise RuntimeError(
            f"{final} exists but has no {_DONE_MARKER} marker; it was not written by "
            "materialize(). Remove it to regenerate."
        )
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=root)
    try:
        videos = []
        for vi in range(spec.num_videos):
            video = render_video(spec, vi)
            frames = []
            for t in range(spec.frames_per_video):
                image_rel = _frame_relpath("images", vi, t)
                sem_rel = _frame_relpath("semseg", vi, t)
                _write_png(video.frames[t], os.path.join(tmp, image_rel))
                _write_png(video.semantic[t], os.path.join(tmp, sem_rel))
                frames.append({
                    "file_name": image_rel,
                    "sem_seg_file_name": sem_rel,
                    "frame_idx": t,
                    "image_id": vi * spec.frames_per_video + t + 1,
                    "instances": [{
                        "track_id": inst["track_id"],
                        "category_id": inst["category_id"],
                        "bbox": list(inst["bbox"]),
                        "area": int(inst["mask"].sum()),
                        "segmentation": _encode_rle(inst["mask"]),
                        "keypoints": (None if inst["keypoints"] is None
                                      else [float(x) for x in inst["keypoints"].reshape(-1)]),
                    } for inst in video.instances[t]],
                })
            videos.append({"video_id": vi + 1, "video_index": vi, "frames": frames})
        payload = {"version": GENERATOR_VERSION, "spec": asdict(spec),
                   "categories": CLASS_NAMES, "keypoint_names": KEYPOINT_NAMES,
                   "videos": videos}
        with open(os.path.join(tmp, _ANNOTATIONS_FILE), "w") as f:
            json.dump(payload, f)
        with open(os.path.join(tmp, _SPEC_FILE), "w") as f:
            json.dump({"version": GENERATOR_VERSION, "spec": asdict(spec)}, f, indent=2)
        open(os.path.join(tmp, _DONE_MARKER), "w").close()
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same dataset first: keep theirs.
            if not os.path.isfile(os.path.join(final, _DONE_MARKER)):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Materialized synthetic dataset (%d videos) at %s", spec.num_videos, final)
    return final


def load_annotations(spec: SyntheticSpec, root: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """The folder of ``spec``'s copy under ``root`` (materialized on first use) and its
    annotations."""
    directory = os.path.abspath(materialize(spec, root))
    with open(os.path.join(directory, _ANNOTATIONS_FILE)) as f:
        payload = json.load(f)
    if payload.get("spec") != asdict(spec):
        raise RuntimeError(f"{directory} holds a different spec than requested")
    return directory, payload
