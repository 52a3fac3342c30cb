"""A deterministic synthetic video for codec measurements (benchmarks, tests): moving gradients
and a moving block plus Gaussian noise, which makes the encoder work. Frames are made one at a
time, so a long video at any size costs the memory of one frame."""
from typing import Iterator

import numpy as np

__all__ = ["sample_video"]

NOISE_STD = 12.0  # sensor-like noise on top of the gradients
BLOCK = 40  # side of the moving block, pixels


def sample_video(num_frames: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``num_frames`` RGB uint8 frames of ``height`` x ``width``, the same for the same seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(num_frames):
        r = 128 + 90 * np.sin((xx + 3 * t) / 37.0)
        g = 128 + 90 * np.cos((yy - 2 * t) / 23.0)
        b = 128 + 80 * np.sin((xx + yy + 5 * t) / 51.0)
        img = np.stack([r, g, b], axis=-1)
        y0, x0 = (7 * t) % max(height - BLOCK, 1), (11 * t) % max(width - BLOCK, 1)
        img[y0 : y0 + BLOCK, x0 : x0 + BLOCK] += 50
        img += rng.normal(0.0, NOISE_STD, img.shape).astype(np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8)
