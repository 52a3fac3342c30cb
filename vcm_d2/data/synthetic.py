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

Exports (registered as detectron2 built-ins by :func:`register_synthetic`):
* ``vcm_synth_{train,val,test}``: per-frame COCO-style instance dicts (boxes, RLE masks,
  keypoints, track ids);
* ``vcm_synth_vis_{train,val,test}``: YTVIS-style per-video dicts;
* ``vcm_synth_sem_{train,val,test}``: semantic segmentation (``"background"`` + thing classes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

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

# Bump whenever the rendering changes: it is part of the on-disk directory name, so stale
# materialized copies are never reused.
GENERATOR_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Classes
# ---------------------------------------------------------------------------------------------
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

# Smallest size (px) per class, whatever min_object_size says: a ring or a stick figure
# below these sizes is a blob, not an instance of its class.
_CLASS_SIZE_FLOOR: Dict[int, float] = {RING_CATEGORY_ID: 8.0, PERSON_CATEGORY_ID: 12.0}

# Shape geometry, in units of half the object size (the object's "radius").
_SQUARE_HALF_SIDE = 0.8  # square side = 0.8 * size, so its area is close to the disc's
_TRIANGLE_INRADIUS = 0.55  # equilateral triangle with circumradius 1.1
_PERSON_MAX_TILT = 0.3  # rad; keeps the figure upright so left/right stay well defined
_PERSON_GAIT_SPEED = (0.3, 0.8)  # rad/frame, range of the limb-swing phase speed
_PERSON_HEAD_RADIUS = 0.2  # head disc radius (in half-sizes), at least spec.thin_width px
# Stick-figure skeleton (x to the figure's left = image right when upright, y down).
_PERSON_HEAD_Y = -0.75
_PERSON_NECK_Y = -0.5
_PERSON_HIP_Y = 0.1
_PERSON_ARM_LENGTH = 0.5
_PERSON_LEG_LENGTH = 0.85
_PERSON_ARM_ANGLE = (0.9, 0.5)  # rad from straight down: mean, swing amplitude
_PERSON_LEG_ANGLE = (0.35, 0.2)

# Background: a few oriented sinusoidal gratings (one always fine) plus smooth value noise.
_BG_NUM_GRATINGS = 3
_BG_FINE_PERIOD = (3.0, 6.0)  # px, period range of the always-present fine grating
_BG_COARSE_PERIOD = (6.0, 24.0)  # px, period range of the other gratings
_BG_NOISE_CELL = 6.0  # px, lattice spacing of the value noise
_BG_MEAN_RANGE = (70.0, 185.0)  # per-channel range of the background mean colour
_COLOR_JITTER = 0.35  # chroma spread of texture colour directions (0 = grey-level only)

_DOT_FILL = 0.25  # dots pattern value outside dots, keeps it roughly zero-mean

# Images per dataset split (24 x 12 = 288 train frames, 8 x 12 = 96 val frames, 32 x 12 = 384
# test frames). The splits use different seeds, hence disjoint videos (per-video streams are
# seeded by (seed, video_index)). The test split is larger: a video-level metric (YouTube-VIS AP
# over a few dozen tracks) is noisy on 8 videos.
TRAIN_SEED = 0
VAL_SEED = 1
TEST_SEED = 2
TRAIN_NUM_VIDEOS = 24
VAL_NUM_VIDEOS = 8
TEST_NUM_VIDEOS = 32

_DONE_MARKER = "DONE"
_ANNOTATIONS_FILE = "annotations.json"
_SPEC_FILE = "spec.json"
_PNG_COMPRESS_LEVEL = 1  # fast; PNG is lossless at every level


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------
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
SPLIT_SPECS: Dict[str, SyntheticSpec] = {"train": TRAIN_SPEC, "val": VAL_SPEC, "test": TEST_SPEC}


@dataclass
class SyntheticVideo:
    """One rendered video, in memory.

    Attributes:
        video_index: index of the video in its spec (0-based).
        frames: (T, H, W, 3) uint8 RGB.
        semantic: (T, H, W) uint8; 0 background, category_id + 1 for things,
            IGNORE_LABEL for unannotated fragments.
        instances: per frame, a list of dicts with keys ``track_id`` (int, 1-based, stable
            within the video), ``category_id`` (int), ``bbox`` (XYXY absolute, the extent of
            the visible mask in pixel-edge coordinates), ``mask`` (H x W bool, visible part),
            ``keypoints`` ((K, 3) float32 of x, y, v in continuous pixel coordinates for the
            person class, else None; v = 2 visible, 1 occluded, 0 outside the image).
    """

    video_index: int
    frames: np.ndarray
    semantic: np.ndarray
    instances: List[List[Dict[str, Any]]]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _video_rng(spec: SyntheticSpec, video_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(spec.seed), int(video_index)]))


def _color_direction(rng: np.random.Generator) -> np.ndarray:
    """A mostly-luminance colour direction with some chroma, mean 1 per channel."""
    direction = 1.0 + _COLOR_JITTER * rng.standard_normal(3)
    return direction * (math.sqrt(3.0) / np.linalg.norm(direction))


def _reflect(x: float, low: float, high: float) -> float:
    """Fold x into [low, high] like a ball bouncing off the walls."""
    span = high - low
    if span <= 0:
        return low
    y = (x - low) % (2.0 * span)
    return low + (y if y <= span else 2.0 * span - y)


@dataclass
class _Background:
    mean: np.ndarray  # (3,)
    gratings: List[Tuple[float, float, float, float, np.ndarray]]  # kx, ky, phase, amp, colour
    noise: np.ndarray  # (gh, gw) lattice values in [-1, 1]
    noise_color: np.ndarray  # (3,)
    noise_amp: float
    pan_velocity: Tuple[float, float]  # px/frame (x, y)
    pan_origin: Tuple[float, float]


def _make_background(spec: SyntheticSpec, rng: np.random.Generator) -> _Background:
    mean = rng.uniform(*_BG_MEAN_RANGE, size=3)
    gratings = []
    for i in range(_BG_NUM_GRATINGS):
        period = rng.uniform(*(_BG_FINE_PERIOD if i == 0 else _BG_COARSE_PERIOD))
        theta = rng.uniform(0.0, math.pi)
        k = 2.0 * math.pi / period
        gratings.append((k * math.cos(theta), k * math.sin(theta), rng.uniform(0, 2 * math.pi),
                         spec.background_amplitude, _color_direction(rng)))
    pan = tuple(rng.uniform(-spec.max_pan_speed, spec.max_pan_speed, size=2))
    max_shift = spec.max_pan_speed * spec.frames_per_video
    origin = (rng.uniform(0.0, _BG_NOISE_CELL), rng.uniform(0.0, _BG_NOISE_CELL))
    gh = int(math.ceil((spec.height + 2 * max_shift + 2 * _BG_NOISE_CELL) / _BG_NOISE_CELL)) + 2
    gw = int(math.ceil((spec.width + 2 * max_shift + 2 * _BG_NOISE_CELL) / _BG_NOISE_CELL)) + 2
    noise = rng.uniform(-1.0, 1.0, size=(gh, gw))
    return _Background(mean, gratings, noise, _color_direction(rng), spec.background_amplitude,
                       pan, (origin[0] + max_shift + _BG_NOISE_CELL,
                             origin[1] + max_shift + _BG_NOISE_CELL))


def _render_background(bg: _Background, spec: SyntheticSpec, t: int) -> np.ndarray:
    ys = np.arange(spec.height, dtype=np.float64)[:, None] + 0.5 + bg.pan_velocity[1] * t
    xs = np.arange(spec.width, dtype=np.float64)[None, :] + 0.5 + bg.pan_velocity[0] * t
    image = np.broadcast_to(bg.mean, (spec.height, spec.width, 3)).copy()
    for kx, ky, phase, amp, color in bg.gratings:
        wave = np.sin(kx * xs + ky * ys + phase)
        image += (amp * wave)[..., None] * color
    # Bilinear value noise on a lattice that pans with the gratings.
    gx = (xs + bg.pan_origin[0]) / _BG_NOISE_CELL
    gy = (ys + bg.pan_origin[1]) / _BG_NOISE_CELL
    x0 = np.floor(gx).astype(np.int64)
    y0 = np.floor(gy).astype(np.int64)
    fx = gx - x0
    fy = gy - y0
    n = bg.noise
    top = n[y0, x0] * (1 - fx) + n[y0, x0 + 1] * fx
    bottom = n[y0 + 1, x0] * (1 - fx) + n[y0 + 1, x0 + 1] * fx
    value = top * (1 - fy) + bottom * fy
    image += (bg.noise_amp * value)[..., None] * bg.noise_color
    return image


@dataclass
class _Track:
    track_id: int
    category_id: int
    size0: float  # px
    scale_rate: float  # d log(size) / frame
    position0: Tuple[float, float]  # (x, y) px
    velocity: Tuple[float, float]  # px/frame
    angle0: float
    angular_speed: float
    base_color: np.ndarray  # (3,)
    texture_color: np.ndarray  # (3,) colour direction of the texture modulation
    gait_phase0: float = 0.0
    gait_speed: float = 0.0


def _stratified_sizes(spec: SyntheticSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Log-uniform sizes, one per equal stratum of log-size, so each video spans the range."""
    lo, hi = math.log(spec.min_object_size), math.log(spec.max_object_size)
    u = (np.arange(n) + rng.uniform(0.0, 1.0, size=n)) / n
    return np.exp(lo + u * (hi - lo))


def _make_tracks(spec: SyntheticSpec, bg: _Background, rng: np.random.Generator) -> List[_Track]:
    num_classes = len(CLASS_NAMES)
    n = int(rng.integers(int(math.ceil(spec.max_objects / 2)), spec.max_objects + 1))
    # Balanced classes: a random rotation of 0..K-1 repeated, then shuffled.
    classes = rng.permutation(np.resize(np.roll(np.arange(num_classes),
                                                int(rng.integers(num_classes))), n))
    sizes = _stratified_sizes(spec, n, rng)
    order = rng.permutation(n)  # stratum of each object
    sizes = sizes[order]
    # Give the smallest stratum to a class without a size floor (if any), so every video
    # contains an object near min_object_size.
    smallest = int(np.argmin(sizes))
    if int(classes[smallest]) in _CLASS_SIZE_FLOOR:
        free = [i for i in range(n) if int(classes[i]) not in _CLASS_SIZE_FLOOR]
        if free:
            j = free[int(rng.integers(len(free)))]
            classes[smallest], classes[j] = classes[j], classes[smallest]
    tracks = []
    for i in range(n):
        cat = int(classes[i])
        floor = min(_CLASS_SIZE_FLOOR.get(cat, 0.0), float(spec.max_object_size))
        size0 = max(float(sizes[i]), floor, float(spec.min_object_size))
        speed = rng.uniform(spec.min_speed, spec.max_speed)
        heading = rng.uniform(0.0, 2.0 * math.pi)
        if cat == PERSON_CATEGORY_ID:
            angle0 = rng.uniform(-_PERSON_MAX_TILT, _PERSON_MAX_TILT)
            angular_speed = 0.0
        else:
            angle0 = rng.uniform(0.0, 2.0 * math.pi)
            angular_speed = rng.uniform(-spec.max_rotation_speed, spec.max_rotation_speed)
        # Mean colour: background mean moved by object_contrast along a random direction.
        offset = rng.standard_normal(3)
        offset *= spec.object_contrast / max(np.linalg.norm(offset), 1e-9)
        base = np.clip(bg.mean + offset, 0.0, 255.0)
        tracks.append(_Track(
            track_id=i + 1,
            category_id=cat,
            size0=size0,
            scale_rate=rng.uniform(-spec.max_scale_rate, spec.max_scale_rate),
            position0=(rng.uniform(0.0, spec.width), rng.uniform(0.0, spec.height)),
            velocity=(speed * math.cos(heading), speed * math.sin(heading)),
            angle0=angle0,
            angular_speed=angular_speed,
            base_color=base,
            texture_color=_color_direction(rng),
            gait_phase0=rng.uniform(0.0, 2.0 * math.pi),
            gait_speed=rng.uniform(*_PERSON_GAIT_SPEED),
        ))
    return tracks


def _track_state(track: _Track, spec: SyntheticSpec, t: int) -> Tuple[float, float, float, float]:
    """(cx, cy, size, angle) at frame t: straight motion folded at the borders."""
    cx = _reflect(track.position0[0] + track.velocity[0] * t, 0.0, float(spec.width))
    cy = _reflect(track.position0[1] + track.velocity[1] * t, 0.0, float(spec.height))
    floor = min(_CLASS_SIZE_FLOOR.get(track.category_id, 0.0), float(spec.max_object_size))
    size = float(np.clip(track.size0 * math.exp(track.scale_rate * t),
                         max(float(spec.min_object_size), floor), float(spec.max_object_size)))
    angle = track.angle0 + track.angular_speed * t
    return cx, cy, size, angle


def _person_keypoints(track: _Track, cx: float, cy: float, size: float, angle: float,
                      t: int) -> np.ndarray:
    """(K, 2) keypoint positions in image coordinates, in KEYPOINT_NAMES order."""
    phase = track.gait_phase0 + track.gait_speed * t
    arm_l = _PERSON_ARM_ANGLE[0] + _PERSON_ARM_ANGLE[1] * math.sin(phase)
    arm_r = _PERSON_ARM_ANGLE[0] + _PERSON_ARM_ANGLE[1] * math.sin(phase + math.pi)
    leg_l = _PERSON_LEG_ANGLE[0] + _PERSON_LEG_ANGLE[1] * math.sin(phase + math.pi)
    leg_r = _PERSON_LEG_ANGLE[0] + _PERSON_LEG_ANGLE[1] * math.sin(phase)
    neck = (0.0, _PERSON_NECK_Y)
    hip = (0.0, _PERSON_HIP_Y)

    def limb_end(origin, length, swing, side):  # side +1: the figure's left (local +x)
        return (origin[0] + side * length * math.sin(swing), origin[1] + length * math.cos(swing))

    local = np.array([
        (0.0, _PERSON_HEAD_Y),
        neck,
        hip,
        limb_end(neck, _PERSON_ARM_LENGTH, arm_l, +1),
        limb_end(neck, _PERSON_ARM_LENGTH, arm_r, -1),
        limb_end(hip, _PERSON_LEG_LENGTH, leg_l, +1),
        limb_end(hip, _PERSON_LEG_LENGTH, leg_r, -1),
    ])
    radius = size / 2.0
    c, s = math.cos(angle), math.sin(angle)
    x = (local[:, 0] * c - local[:, 1] * s) * radius + cx
    y = (local[:, 0] * s + local[:, 1] * c) * radius + cy
    return np.stack([x, y], axis=1)


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    length2 = float(d @ d)
    if length2 == 0.0:
        return np.hypot(px - a[0], py - a[1])
    u = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / length2, 0.0, 1.0)
    return np.hypot(px - (a[0] + u * d[0]), py - (a[1] + u * d[1]))


def _render_object(track: _Track, spec: SyntheticSpec, t: int
                   ) -> Optional[Tuple[Tuple[int, int, int, int], np.ndarray, np.ndarray,
                                       Optional[np.ndarray]]]:
    """Rasterize one object at frame t.

    Returns ((y0, y1, x0, x1) window, mask within window, colours within window (h, w, 3),
    keypoints (K, 2) or None), or None if the object is entirely outside the frame.
    """
    cx, cy, size, angle = _track_state(track, spec, t)
    radius = size / 2.0
    reach = radius * 1.5 + spec.thin_width + 1.0  # bounds every shape incl. rotation
    x0, x1 = max(0, int(math.floor(cx - reach))), min(spec.width, int(math.ceil(cx + reach)))
    y0, y1 = max(0, int(math.floor(cy - reach))), min(spec.height, int(math.ceil(cy + reach)))
    if x0 >= x1 or y0 >= y1:
        return None
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    px, py = np.broadcast_arrays(px, py)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = px - cx, py - cy
    # Object-frame coordinates in px (texture) and in half-sizes (shape).
    lx = dx * c + dy * s
    ly = -dx * s + dy * c
    u, v = lx / radius, ly / radius
    # Texture coordinates scale with the object, so the texture moves rigidly with it.
    tx, ty = lx * (track.size0 / size), ly * (track.size0 / size)
    keypoints = None
    cat = track.category_id
    name = CLASS_NAMES[cat]
    if name == "disc":
        mask = u * u + v * v <= 1.0
        pattern = np.where(np.cos(2.0 * math.pi * tx / spec.stripe_period) >= 0.0, 1.0, -1.0)
    elif name == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF_SIDE
        cells = np.floor(tx / spec.checker_cell) + np.floor(ty / spec.checker_cell)
        pattern = np.where(cells % 2 == 0, 1.0, -1.0)
    elif name == "triangle":
        mask = np.ones_like(u, dtype=bool)
        for k in range(3):  # apex up: edge normals at 90, 210, 330 degrees (y down)
            phi = math.pi / 2 + k * 2.0 * math.pi / 3
            mask &= u * math.cos(phi) + v * math.sin(phi) <= _TRIANGLE_INRADIUS
        gx = tx - spec.dot_spacing * np.round(tx / spec.dot_spacing)
        gy = ty - spec.dot_spacing * np.round(ty / spec.dot_spacing)
        pattern = np.where(gx * gx + gy * gy <= spec.dot_radius ** 2, 1.0, -_DOT_FILL)
    elif name == "ring":
        r = np.hypot(dx, dy)
        mask = np.abs(r - (radius - spec.thin_width / 2.0)) <= spec.thin_width / 2.0
        dashes = max(2, int(round(math.pi * size / spec.dash_period)))
        pattern = np.where(np.sin(dashes * np.arctan2(ly, lx)) >= 0.0, 1.0, -1.0)
    elif name == "person":
        keypoints = _person_keypoints(track, cx, cy, size, angle, t)
        k = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
        half = spec.thin_width / 2.0
        head_r = max(_PERSON_HEAD_RADIUS * radius, spec.thin_width)
        head = keypoints[k["head"]]
        mask = np.hypot(px - head[0], py - head[1]) <= head_r
        for a, b, _ in KEYPOINT_CONNECTION_RULES:
            if a == "head":
                continue
            mask |= _segment_distance(px, py, keypoints[k[a]], keypoints[k[b]]) <= half
        pattern = np.zeros_like(u)
    else:  # pragma: no cover - guarded by CLASS_NAMES
        raise RuntimeError(f"no renderer for class {name!r}")
    colors = track.base_color + (spec.texture_amplitude * pattern)[..., None] * track.texture_color
    return (y0, y1, x0, x1), mask, colors, keypoints


def _mask_bbox(mask: np.ndarray) -> Tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def render_video(spec: SyntheticSpec, video_index: int) -> SyntheticVideo:
    """Render one video; depends only on (spec, video_index)."""
    if not isinstance(spec, SyntheticSpec):
        raise ValueError(f"render_video expects a SyntheticSpec, got {type(spec).__name__}")
    if not 0 <= int(video_index) < spec.num_videos:
        raise ValueError(f"video_index {video_index} out of range [0, {spec.num_videos})")
    rng = _video_rng(spec, video_index)
    bg = _make_background(spec, rng)
    tracks = _make_tracks(spec, bg, rng)  # list order = depth order, back to front
    T, H, W = spec.frames_per_video, spec.height, spec.width
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    semantic = np.zeros((T, H, W), dtype=np.uint8)
    all_instances: List[List[Dict[str, Any]]] = []
    for t in range(T):
        image = _render_background(bg, spec, t)
        owner = np.full((H, W), -1, dtype=np.int16)
        keypoints_by_track: Dict[int, np.ndarray] = {}
        for depth, track in enumerate(tracks):
            rendered = _render_object(track, spec, t)
            if rendered is None:
                continue
            (y0, y1, x0, x1), mask, colors, kps = rendered
            image[y0:y1, x0:x1][mask] = colors[mask]
            owner[y0:y1, x0:x1][mask] = depth
            if kps is not None:
                keypoints_by_track[depth] = kps
        frames[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        instances = []
        for depth, track in enumerate(tracks):
            visible = owner == depth
            count = int(visible.sum())
            if count == 0:
                continue
            if count < spec.min_visible_pixels:
                semantic[t][visible] = IGNORE_LABEL
                continue
            semantic[t][visible] = track.category_id + 1
            keypoints = None
            if track.category_id == PERSON_CATEGORY_ID:
                keypoints = _keypoint_visibility(keypoints_by_track[depth], visible)
            instances.append({
                "track_id": track.track_id,
                "category_id": track.category_id,
                "bbox": _mask_bbox(visible),
                "mask": visible,
                "keypoints": keypoints,
            })
        all_instances.append(instances)
    return SyntheticVideo(int(video_index), frames, semantic, all_instances)


def _keypoint_visibility(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """COCO visibility: 2 on the visible mask, 1 occluded inside the image, 0 outside."""
    H, W = visible.shape
    out = np.zeros((len(points), 3), dtype=np.float32)
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x < W and 0.0 <= y < H):
            continue  # unlabeled: (0, 0, 0)
        out[i] = (x, y, 2.0 if visible[int(y), int(x)] else 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# On-disk materialization
# ---------------------------------------------------------------------------------------------
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


def _load_annotations(spec: SyntheticSpec, root: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    directory = os.path.abspath(materialize(spec, root))
    with open(os.path.join(directory, _ANNOTATIONS_FILE)) as f:
        payload = json.load(f)
    if payload.get("spec") != asdict(spec):
        raise RuntimeError(f"{directory} holds a different spec than requested")
    return directory, payload


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


def load_synthetic_images(spec: SyntheticSpec, root: Optional[str] = None) -> List[dict]:
    """Per-frame detectron2 dataset dicts (boxes XYXY_ABS, RLE masks, keypoints, track ids)."""
    from detectron2.structures import BoxMode

    directory, payload = _load_annotations(spec, root)
    out = []
    for video in payload["videos"]:
        for frame in video["frames"]:
            out.append({
                "file_name": os.path.join(directory, frame["file_name"]),
                "sem_seg_file_name": os.path.join(directory, frame["sem_seg_file_name"]),
                "height": spec.height,
                "width": spec.width,
                "image_id": frame["image_id"],
                "video_id": video["video_id"],
                "frame_idx": frame["frame_idx"],
                "annotations": [_instance_dict(inst, len(KEYPOINT_NAMES), BoxMode.XYXY_ABS)
                                for inst in frame["instances"]],
            })
    return out


def load_synthetic_videos(spec: SyntheticSpec, root: Optional[str] = None) -> List[dict]:
    """YTVIS-style per-video dicts: ``annotations[t]`` lists frame t's instances, ``id`` = track."""
    from detectron2.structures import BoxMode

    directory, payload = _load_annotations(spec, root)
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
    directory, payload = _load_annotations(spec, root)
    return [{
        "file_name": os.path.join(directory, frame["file_name"]),
        "sem_seg_file_name": os.path.join(directory, frame["sem_seg_file_name"]),
        "height": spec.height,
        "width": spec.width,
        "image_id": frame["image_id"],
        "video_id": video["video_id"],
        "frame_idx": frame["frame_idx"],
    } for video in payload["videos"] for frame in video["frames"]]


# ---------------------------------------------------------------------------------------------
# detectron2 registration
# ---------------------------------------------------------------------------------------------
def _common_metadata(spec: SyntheticSpec) -> Dict[str, Any]:
    return {"spec": asdict(spec), "video_key": "video_id"}


def register_synthetic(root: Optional[str] = None) -> None:
    """Register the synthetic splits in DatasetCatalog / MetadataCatalog (lazily rendered).

    Names: ``vcm_synth_{split}`` (images, evaluator "coco"), ``vcm_synth_vis_{split}`` (videos,
    "ytvis"), ``vcm_synth_sem_{split}`` (semantic, "sem_seg") for the splits of SPLIT_SPECS
    (train, val, test). The first load of
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
