"""Rasterization of one object at one frame: its shape mask, its class texture (stripes,
checkers, dots, dashes) and, for the stick figure, its keypoints."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from .spec import CLASS_NAMES, KEYPOINT_CONNECTION_RULES, KEYPOINT_NAMES, SyntheticSpec
from .tracks import Track, track_state

__all__ = ["render_object"]

# Shape geometry, in units of half the object size (the object's "radius").
_SQUARE_HALF_SIDE = 0.8  # square side = 0.8 * size, so its area is close to the disc's
_TRIANGLE_INRADIUS = 0.55  # equilateral triangle with circumradius 1.1
_PERSON_HEAD_RADIUS = 0.2  # head disc radius (in half-sizes), at least spec.thin_width px
# Stick-figure skeleton (x to the figure's left = image right when upright, y down).
_PERSON_HEAD_Y = -0.75
_PERSON_NECK_Y = -0.5
_PERSON_HIP_Y = 0.1
_PERSON_ARM_LENGTH = 0.5
_PERSON_LEG_LENGTH = 0.85
_PERSON_ARM_ANGLE = (0.9, 0.5)  # rad from straight down: mean, swing amplitude
_PERSON_LEG_ANGLE = (0.35, 0.2)

_DOT_FILL = 0.25  # dots pattern value outside dots, keeps it roughly zero-mean


def _person_keypoints(track: Track, cx: float, cy: float, size: float, angle: float,
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


def render_object(track: Track, spec: SyntheticSpec, t: int
                  ) -> Optional[Tuple[Tuple[int, int, int, int], np.ndarray, np.ndarray,
                                      Optional[np.ndarray]]]:
    """Rasterize one object at frame t.

    Returns ((y0, y1, x0, x1) window, mask within window, colours within window (h, w, 3),
    keypoints (K, 2) or None), or None if the object is entirely outside the frame.
    """
    cx, cy, size, angle = track_state(track, spec, t)
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
