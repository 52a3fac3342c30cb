"""Register the real datasets found under ``$DETECTRON2_DATASETS`` (default ``./datasets``).

A split is registered only if its files are present, so importing vcm_d2 never fails without
data. COCO-2017 is registered by detectron2 itself; here we add YouTube-VIS 2019 / 2021, VSPW, the
degraded datasets found under ``<root>/vcm_degraded`` and the compressed pair datasets found under
``<root>/vcm_compressed`` (see datasets/README.md).
"""
import logging
import os
from typing import Optional

from detectron2.data import DatasetCatalog

from ..degradation import register_degraded_datasets_from_dir, register_derived_datasets
from ..pairs import register_pair_datasets_from_root
from .vspw import register_vspw
from .ytvis import (
    get_ytvis_2019_metadata,
    get_ytvis_2021_metadata,
    register_ytvis_frames,
    register_ytvis_instances,
)

__all__ = [
    "register_all_ytvis_2019",
    "register_all_ytvis_2021",
    "register_all_vspw",
    "register_all_degraded",
    "register_all_compressed_pairs",
    "register_all_derived",
    "register_all",
    "COMPRESSED_DIRNAME",
    "DEGRADED_DIRNAME",
    "datasets_root",
]

logger = logging.getLogger(__name__)

# name: (image root, json file), relative to the datasets root (the official layout).
_PREDEFINED_SPLITS_YTVIS_2019 = {
    "ytvis_2019_train": ("ytvis_2019/train/JPEGImages", "ytvis_2019/train.json"),
    "ytvis_2019_val": ("ytvis_2019/valid/JPEGImages", "ytvis_2019/valid.json"),
}
_PREDEFINED_SPLITS_YTVIS_2021 = {
    "ytvis_2021_train": ("ytvis_2021/train/JPEGImages", "ytvis_2021/train/instances.json"),
    "ytvis_2021_val": ("ytvis_2021/valid/JPEGImages", "ytvis_2021/valid/instances.json"),
}
# Frame-level variant of each YTVIS split, for image detectors.
FRAMES_SUFFIX = "_frames"

VSPW_DIRNAME = "VSPW"
# name: split (listed in VSPW/<split>.txt)
_PREDEFINED_SPLITS_VSPW = {
    "vspw_train": "train",
    "vspw_val": "val",
    "vspw_test": "test",
}

# Output folder of tools/compress_dataset.py inside the datasets root.
COMPRESSED_DIRNAME = "vcm_compressed"
# Output folder of the degraded datasets (vcm_d2.data.degradation) inside the datasets root.
DEGRADED_DIRNAME = "vcm_degraded"


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``./datasets``), read at call time."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _unregistered(name: str) -> bool:
    if name in DatasetCatalog.list():
        logger.info("Dataset %r is already registered; leaving it as is", name)
        return False
    return True


def _register_ytvis(root: str, splits, metadata) -> list:
    names = []
    for name, (image_root, json_file) in splits.items():
        image_root, json_file = os.path.join(root, image_root), os.path.join(root, json_file)
        if not (os.path.isfile(json_file) and os.path.isdir(image_root)):
            continue
        if _unregistered(name):
            register_ytvis_instances(name, metadata, json_file, image_root)
            names.append(name)
        if _unregistered(name + FRAMES_SUFFIX):
            register_ytvis_frames(name + FRAMES_SUFFIX, metadata, json_file, image_root)
            names.append(name + FRAMES_SUFFIX)
    return names


def register_all_ytvis_2019(root: str, metadata: Optional[dict] = None) -> list:
    """Register the YTVIS-2019 splits present under ``root``; returns the names registered.

    ``metadata``: class metadata of the splits; None: the official 40 classes (a json with
    other classes is then refused when loaded), ``{}``: the classes of the json itself, for a
    dataset of your own in this layout."""
    meta = get_ytvis_2019_metadata() if metadata is None else metadata
    return _register_ytvis(root, _PREDEFINED_SPLITS_YTVIS_2019, meta)


def register_all_ytvis_2021(root: str, metadata: Optional[dict] = None) -> list:
    """Register the YTVIS-2021 splits present under ``root`` (the 2021 release puts
    ``instances.json`` inside each split folder); ``metadata`` as for 2019."""
    meta = get_ytvis_2021_metadata() if metadata is None else metadata
    return _register_ytvis(root, _PREDEFINED_SPLITS_YTVIS_2021, meta)


def register_all_vspw(root: str) -> list:
    """Register the VSPW splits present under ``root``; returns the names registered."""
    vspw_root = os.path.join(root, VSPW_DIRNAME)
    names = []
    for name, split in _PREDEFINED_SPLITS_VSPW.items():
        present = os.path.isfile(os.path.join(vspw_root, f"{split}.txt")) and os.path.isdir(
            os.path.join(vspw_root, "data"))
        if present and _unregistered(name):
            register_vspw(name, vspw_root, split)
            names.append(name)
    return names


def register_all_degraded(root: str) -> list:
    """Register the finished ``<root>/vcm_degraded/<dataset>~<kind>/`` of registered datasets.

    Call after the base datasets and before the pairs (which may be pairs of degraded datasets);
    returns the degraded dataset names.
    """
    return register_degraded_datasets_from_dir(os.path.join(root, DEGRADED_DIRNAME), strict=False)


def register_all_compressed_pairs(root: str) -> list:
    """Register ``<root>/vcm_compressed/<dataset>/<codec>/q*/manifest.json`` of registered datasets.

    Call after the base datasets are registered; returns the pair dataset names.
    """
    return register_pair_datasets_from_root(os.path.join(root, COMPRESSED_DIRNAME), strict=False)


def register_all_derived(root: str) -> list:
    """:func:`register_all_degraded`, then :func:`register_all_compressed_pairs`; returns the
    names of both. A broken folder is skipped with a warning: it must not break ``import vcm_d2``.
    """
    return register_derived_datasets(os.path.join(root, COMPRESSED_DIRNAME),
                                     os.path.join(root, DEGRADED_DIRNAME), strict=False)


def register_all(root: str) -> list:
    """Register every dataset present under ``root``; returns the names registered."""
    names = register_all_ytvis_2019(root) + register_all_ytvis_2021(root) + register_all_vspw(root)
    return names + register_all_derived(root)


register_all(datasets_root())
