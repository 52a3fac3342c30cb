"""The background of a synthetic video: a few oriented sinusoidal gratings (one always fine)
plus smooth value noise, panning slowly; textured so that an object's mean colour alone does not
set it apart."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .spec import SyntheticSpec

__all__ = ["Background", "color_direction", "make_background", "render_background"]

_BG_NUM_GRATINGS = 3
_BG_FINE_PERIOD = (3.0, 6.0)  # px, period range of the always-present fine grating
_BG_COARSE_PERIOD = (6.0, 24.0)  # px, period range of the other gratings
_BG_NOISE_CELL = 6.0  # px, lattice spacing of the value noise
_BG_MEAN_RANGE = (70.0, 185.0)  # per-channel range of the background mean colour
_COLOR_JITTER = 0.35  # chroma spread of texture colour directions (0 = grey-level only)


def color_direction(rng: np.random.Generator) -> np.ndarray:
    """A mostly-luminance colour direction with some chroma, mean 1 per channel."""
    direction = 1.0 + _COLOR_JITTER * rng.standard_normal(3)
    return direction * (math.sqrt(3.0) / np.linalg.norm(direction))


@dataclass
class Background:
    mean: np.ndarray  # (3,)
    gratings: List[Tuple[float, float, float, float, np.ndarray]]  # kx, ky, phase, amp, colour
    noise: np.ndarray  # (gh, gw) lattice values in [-1, 1]
    noise_color: np.ndarray  # (3,)
    noise_amp: float
    pan_velocity: Tuple[float, float]  # px/frame (x, y)
    pan_origin: Tuple[float, float]


def make_background(spec: SyntheticSpec, rng: np.random.Generator) -> Background:
    mean = rng.uniform(*_BG_MEAN_RANGE, size=3)
    gratings = []
    for i in range(_BG_NUM_GRATINGS):
        period = rng.uniform(*(_BG_FINE_PERIOD if i == 0 else _BG_COARSE_PERIOD))
        theta = rng.uniform(0.0, math.pi)
        k = 2.0 * math.pi / period
        gratings.append((k * math.cos(theta), k * math.sin(theta), rng.uniform(0, 2 * math.pi),
                         spec.background_amplitude, color_direction(rng)))
    pan = tuple(rng.uniform(-spec.max_pan_speed, spec.max_pan_speed, size=2))
    max_shift = spec.max_pan_speed * spec.frames_per_video
    origin = (rng.uniform(0.0, _BG_NOISE_CELL), rng.uniform(0.0, _BG_NOISE_CELL))
    gh = int(math.ceil((spec.height + 2 * max_shift + 2 * _BG_NOISE_CELL) / _BG_NOISE_CELL)) + 2
    gw = int(math.ceil((spec.width + 2 * max_shift + 2 * _BG_NOISE_CELL) / _BG_NOISE_CELL)) + 2
    noise = rng.uniform(-1.0, 1.0, size=(gh, gw))
    return Background(mean, gratings, noise, color_direction(rng), spec.background_amplitude,
                      pan, (origin[0] + max_shift + _BG_NOISE_CELL,
                            origin[1] + max_shift + _BG_NOISE_CELL))


def render_background(bg: Background, spec: SyntheticSpec, t: int) -> np.ndarray:
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
