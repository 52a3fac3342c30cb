"""A procedural video benchmark whose task degrades under lossy compression.

Short videos of moving, textured objects over a textured, slowly panning background, with
per-frame instance masks (visible parts under a depth order), boxes, track ids, keypoints of
an articulated stick-figure class and semantic maps. Everything is generated from a seed with
numpy in seconds; no input files are needed.

The benchmark is designed so that compression hurts: objects are small (down to a few
pixels), thin (rings, stick figures with ~1.5 px limbs) or told apart by fine texture
(stripes / checkers / dots with 2-4 px periods), and their mean colour is only moderately
different from a background that is itself textured. A codec at low rate removes exactly the
high frequencies that identify them. Object colours are random per object, so colour alone
never tells the class.

Modules: :mod:`.spec` (classes, generation parameters, split specs), :mod:`.background`,
:mod:`.tracks` and :mod:`.shapes` (what :mod:`.render` draws), :mod:`.storage` (the on-disk
copy) and :mod:`.register` (detectron2 dataset dicts and registration).

Exports (registered as detectron2 built-ins by :func:`register_synthetic`):
* ``vcm_synth_{train,val,test}``: per-frame COCO-style instance dicts (boxes, RLE masks,
  keypoints, track ids);
* ``vcm_synth_vis_{train,val,test}``: YTVIS-style per-video dicts;
* ``vcm_synth_sem_{train,val,test}``: semantic segmentation (``"background"`` + thing classes).
"""
from .register import (
    load_synthetic_images,
    load_synthetic_semseg,
    load_synthetic_videos,
    register_synthetic,
)
from .render import SyntheticVideo, render_video
from .spec import (
    CLASS_NAMES,
    HOLDOUT_SPEC,
    IGNORE_LABEL,
    KEYPOINT_CONNECTION_RULES,
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    KEYPOINT_OKS_SIGMAS,
    PERSON_CATEGORY_ID,
    SPLIT_SPECS,
    STUFF_CLASSES,
    TEST_SPEC,
    TRAIN_SPEC,
    VAL_SPEC,
    SyntheticSpec,
)
from .storage import dataset_dir, default_root, materialize

__all__ = [
    "SyntheticSpec",
    "SyntheticVideo",
    "CLASS_NAMES",
    "KEYPOINT_NAMES",
    "KEYPOINT_FLIP_MAP",
    "KEYPOINT_CONNECTION_RULES",
    "KEYPOINT_OKS_SIGMAS",
    "PERSON_CATEGORY_ID",
    "STUFF_CLASSES",
    "IGNORE_LABEL",
    "TRAIN_SPEC",
    "VAL_SPEC",
    "TEST_SPEC",
    "HOLDOUT_SPEC",
    "SPLIT_SPECS",
    "render_video",
    "materialize",
    "dataset_dir",
    "load_synthetic_images",
    "load_synthetic_videos",
    "load_synthetic_semseg",
    "register_synthetic",
    "default_root",
]
