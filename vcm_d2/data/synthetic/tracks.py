"""The object tracks of a synthetic video: class, size, colour and texture direction, and a
straight motion that bounces off the frame borders while the size drifts and the object turns."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .background import Background, color_direction
from .spec import CLASS_NAMES, PERSON_CATEGORY_ID, RING_CATEGORY_ID, SyntheticSpec

__all__ = ["Track", "make_tracks", "track_state"]

# Smallest size (px) per class, whatever min_object_size says: a ring or a stick figure
# below these sizes is a blob, not an instance of its class.
_CLASS_SIZE_FLOOR: Dict[int, float] = {RING_CATEGORY_ID: 8.0, PERSON_CATEGORY_ID: 12.0}

_PERSON_MAX_TILT = 0.3  # rad; keeps the figure upright so left/right stay well defined
_PERSON_GAIT_SPEED = (0.3, 0.8)  # rad/frame, range of the limb-swing phase speed


def _reflect(x: float, low: float, high: float) -> float:
    """Fold x into [low, high] like a ball bouncing off the walls."""
    span = high - low
    if span <= 0:
        return low
    y = (x - low) % (2.0 * span)
    return low + (y if y <= span else 2.0 * span - y)


@dataclass
class Track:
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


def make_tracks(spec: SyntheticSpec, bg: Background, rng: np.random.Generator) -> List[Track]:
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
        tracks.append(Track(
            track_id=i + 1,
            category_id=cat,
            size0=size0,
            scale_rate=rng.uniform(-spec.max_scale_rate, spec.max_scale_rate),
            position0=(rng.uniform(0.0, spec.width), rng.uniform(0.0, spec.height)),
            velocity=(speed * math.cos(heading), speed * math.sin(heading)),
            angle0=angle0,
            angular_speed=angular_speed,
            base_color=base,
            texture_color=color_direction(rng),
            gait_phase0=rng.uniform(0.0, 2.0 * math.pi),
            gait_speed=rng.uniform(*_PERSON_GAIT_SPEED),
        ))
    return tracks


def track_state(track: Track, spec: SyntheticSpec, t: int) -> Tuple[float, float, float, float]:
    """(cx, cy, size, angle) at frame t: straight motion folded at the borders."""
    cx = _reflect(track.position0[0] + track.velocity[0] * t, 0.0, float(spec.width))
    cy = _reflect(track.position0[1] + track.velocity[1] * t, 0.0, float(spec.height))
    floor = min(_CLASS_SIZE_FLOOR.get(track.category_id, 0.0), float(spec.max_object_size))
    size = float(np.clip(track.size0 * math.exp(track.scale_rate * t),
                         max(float(spec.min_object_size), floor), float(spec.max_object_size)))
    angle = track.angle0 + track.angular_speed * t
    return cx, cy, size, angle
