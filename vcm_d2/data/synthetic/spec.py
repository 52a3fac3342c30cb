"""What the synthetic benchmark is made of: its classes and keypoints, the generation
parameters (:class:`SyntheticSpec`) and the specs of the train / val / test splits."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "CLASS_NAMES",
    "PERSON_CATEGORY_ID",
    "RING_CATEGORY_ID",
    "KEYPOINT_NAMES",
    "KEYPOINT_FLIP_MAP",
    "KEYPOINT_CONNECTION_RULES",
    "KEYPOINT_OKS_SIGMAS",
    "STUFF_CLASSES",
    "IGNORE_LABEL",
    "SyntheticSpec",
    "TRAIN_SPEC",
    "VAL_SPEC",
    "TEST_SPEC",
    "HOLDOUT_SPEC",
    "SPLIT_SPECS",
]

# Bump whenever the rendering (render.py and the modules it calls) changes: it is part of the
# on-disk directory name, so stale materialized copies are never reused.
GENERATOR_VERSION = 1

# Thing classes in contiguous category-id order. Each differs from the others in shape AND in
# texture: disc + fine stripes, square + checkerboard, triangle + dot grid, stick-figure person
# (thin limbs, keypoints), thin ring with dashes.
CLASS_NAMES: List[str] = ["disc", "square", "triangle", "person", "ring"]
PERSON_CATEGORY_ID = CLASS_NAMES.index("person")
RING_CATEGORY_ID = CLASS_NAMES.index("ring")

KEYPOINT_NAMES: List[str] = [
    "head",
    "neck",
    "hip",
    "left_hand",
    "right_hand",
    "left_foot",
    "right_foot",
]
# "left" limbs always lie on the figure's own left (image right when upright), so a
# horizontal flip maps left <-> right consistently.
KEYPOINT_FLIP_MAP: List[Tuple[str, str]] = [
    ("left_hand", "right_hand"),
    ("left_foot", "right_foot"),
]
KEYPOINT_CONNECTION_RULES: List[Tuple[str, str, Tuple[int, int, int]]] = [
    ("head", "neck", (255, 255, 0)),
    ("neck", "hip", (255, 255, 0)),
    ("neck", "left_hand", (0, 255, 0)),
    ("neck", "right_hand", (255, 0, 0)),
    ("hip", "left_foot", (0, 255, 0)),
    ("hip", "right_foot", (255, 0, 0)),
]
# OKS sigmas for COCO keypoint evaluation (cfg.TEST.KEYPOINT_OKS_SIGMAS); COCO's values for
# nose / shoulders / hips / wrists / ankles, since the stick figure's joints play those roles.
KEYPOINT_OKS_SIGMAS: List[float] = [0.026, 0.079, 0.107, 0.062, 0.062, 0.089, 0.089]

STUFF_CLASSES: List[str] = ["background"] + CLASS_NAMES  # semantic id = category_id + 1
IGNORE_LABEL = 255  # semantic label of visible fragments too small to be annotated

# Images per dataset split (24 x 12 = 288 train frames, 8 x 12 = 96 val frames, 32 x 12 = 384
# test frames). The splits use different seeds, hence disjoint videos (per-video streams are
# seeded by (seed, video_index)). The test split is larger: a video-level metric (YouTube-VIS AP
# over a few dozen tracks) is noisy on 8 videos.
TRAIN_SEED = 0
VAL_SEED = 1
TEST_SEED = 2
# A second held-out split of the test split's size for final reported figures: frames no model
# or design choice was made on (the TransVFC diagnostics used the test split to choose).
HOLDOUT_SEED = 3
TRAIN_NUM_VIDEOS = 24
VAL_NUM_VIDEOS = 8
TEST_NUM_VIDEOS = 32
HOLDOUT_NUM_VIDEOS = TEST_NUM_VIDEOS


@dataclass(frozen=True)
class SyntheticSpec:
    """All generation parameters. Equal specs give byte-identical datasets.

    Attributes:
        num_videos: number of videos.
        frames_per_video: frames per video.
        height, width: frame size in pixels.
        max_objects: most object tracks per video (each video has between
            ceil(max_objects / 2) and max_objects).
        min_object_size, max_object_size: object size range in px (diameter of a disc; rings
            and stick figures have their own larger floors, 8 and 12 px). Sizes are drawn
            log-uniformly, stratified per video so every video has a small object.
        seed: master seed; video i is generated from the stream seeded by (seed, i).
        object_contrast: distance (RGB levels) between an object's mean colour and the
            background's mean colour. Moderate on purpose: large flat contrasts survive codecs.
        texture_amplitude: amplitude (levels) of the object's fine texture.
        background_amplitude: amplitude (levels) of each background texture component.
        stripe_period: px, period of the disc's stripes.
        checker_cell: px, cell size of the square's checkerboard.
        dot_spacing, dot_radius: px, lattice spacing and radius of the triangle's dots.
        dash_period: px, arc length of one dash period along a ring.
        thin_width: px, line width of rings and stick-figure limbs.
        min_speed, max_speed: px/frame, range of object speed (objects bounce off borders).
        max_scale_rate: largest relative size change per frame (|d log size / dt|).
        max_rotation_speed: rad/frame, largest rotation speed (stick figures only sway).
        max_pan_speed: px/frame, largest background pan speed per axis.
        min_visible_pixels: instances with fewer visible pixels are not annotated (their
            pixels get IGNORE_LABEL in the semantic map).
    """

    num_videos: int = 16
    frames_per_video: int = 12
    height: int = 128
    width: int = 128
    max_objects: int = 6
    min_object_size: int = 5
    max_object_size: int = 40
    seed: int = 0
    object_contrast: float = 40.0
    texture_amplitude: float = 40.0
    background_amplitude: float = 16.0
    stripe_period: float = 3.0
    checker_cell: float = 2.0
    dot_spacing: float = 4.0
    dot_radius: float = 1.0
    dash_period: float = 4.0
    thin_width: float = 1.5
    min_speed: float = 0.3
    max_speed: float = 2.0
    max_scale_rate: float = 0.03
    max_rotation_speed: float = 0.05
    max_pan_speed: float = 1.0
    min_visible_pixels: int = 6

    def __post_init__(self):
        positive_ints = ("num_videos", "frames_per_video", "height", "width", "max_objects",
                         "min_visible_pixels")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SyntheticSpec.{name} must be a positive int, got {value!r}")
        if not 2 <= self.min_object_size <= self.max_object_size:
            raise ValueError(
                "SyntheticSpec needs 2 <= min_object_size <= max_object_size, got "
                f"{self.min_object_size} and {self.max_object_size}"
            )
        if self.max_object_size > min(self.height, self.width):
            raise ValueError(
                f"SyntheticSpec.max_object_size={self.max_object_size} exceeds the frame "
                f"size {self.height}x{self.width}"
            )
        positive_floats = ("stripe_period", "checker_cell", "dot_spacing", "dot_radius",
                           "dash_period", "thin_width")
        for name in positive_floats:
            if not getattr(self, name) > 0:
                raise ValueError(f"SyntheticSpec.{name} must be > 0, got {getattr(self, name)}")
        non_negative = ("object_contrast", "texture_amplitude", "background_amplitude",
                        "min_speed", "max_scale_rate", "max_rotation_speed", "max_pan_speed")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"SyntheticSpec.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_speed < self.min_speed:
            raise ValueError(
                f"SyntheticSpec.max_speed={self.max_speed} < min_speed={self.min_speed}"
            )
        if self.dot_radius * 2 >= self.dot_spacing:
            raise ValueError("SyntheticSpec.dot_radius must be below dot_spacing / 2")

    def digest(self) -> str:
        """Short stable hash of the spec and the generator version (names the data dir)."""
        payload = json.dumps({"spec": asdict(self), "version": GENERATOR_VERSION},
                             sort_keys=True)
        return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:12]


TRAIN_SPEC = SyntheticSpec(num_videos=TRAIN_NUM_VIDEOS, frames_per_video=12, seed=TRAIN_SEED)
VAL_SPEC = SyntheticSpec(num_videos=VAL_NUM_VIDEOS, frames_per_video=12, seed=VAL_SEED)
TEST_SPEC = SyntheticSpec(num_videos=TEST_NUM_VIDEOS, frames_per_video=12, seed=TEST_SEED)
HOLDOUT_SPEC = SyntheticSpec(num_videos=HOLDOUT_NUM_VIDEOS, frames_per_video=12, seed=HOLDOUT_SEED)
SPLIT_SPECS: Dict[str, SyntheticSpec] = {"train": TRAIN_SPEC, "val": VAL_SPEC, "test": TEST_SPEC,
                                         "holdout": HOLDOUT_SPEC}
