"""Still-image codecs through Pillow: JPEG (libjpeg) and JPEG 2000 (OpenJPEG).

Each frame is coded on its own; the bitstream is the concatenation of the per-frame
files and ``frame_bits`` gives the split.
"""
import io
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import annexb
from .base import CODEC_REGISTRY, Codec, check_decode_args

__all__ = ["JpegCodec", "Jpeg2000Codec"]

JPEG_QUALITY_RANGE = (1, 100)
JPEG_SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")
# OpenJPEG's default number of wavelet resolutions; it needs min(H, W) >= 2**(n-1), so
# smaller images get fewer levels.
J2K_DEFAULT_RESOLUTIONS = 6
J2K_MIN_RATIO = 1.0


class _PillowCodec(Codec):
    """Encode each frame with Pillow and decode each per-frame stream back."""

    pil_format: str = ""

    def _save_kwargs(self, quality: float, height: int, width: int) -> Dict[str, object]:
        raise NotImplementedError

    def _encode_bitstream(
        self, frames: List[np.ndarray], quality: float
    ) -> Tuple[bytes, List[int]]:
        h, w = frames[0].shape[:2]
        kwargs = self._save_kwargs(quality, h, w)
        chunks = []
        for img in frames:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format=self.pil_format, **kwargs)
            chunks.append(buf.getvalue())
        return b"".join(chunks), [8 * len(c) for c in chunks]

    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        check_decode_args(frame_bits, height, width)
        height, width = int(height), int(width)
        out = []
        for i, chunk in enumerate(annexb.frame_chunks(bitstream, frame_bits)):
            try:
                with Image.open(io.BytesIO(chunk), formats=[self.pil_format]) as im:
                    im.load()
                    arr = np.asarray(im.convert("RGB"))
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                raise ValueError(
                    f"{self.name}: frame {i} cannot be decoded (corrupt bitstream): {exc}"
                ) from exc
            if arr.shape[:2] != (height, width):
                raise ValueError(
                    f"{self.name}: frame {i} decodes to {arr.shape[:2]}, expected {(height, width)}"
                )
            out.append(np.ascontiguousarray(arr))
        return out


@CODEC_REGISTRY.register()
class JpegCodec(_PillowCodec):
    """Baseline JPEG (Pillow / libjpeg), one JFIF file per frame."""

    name = "jpeg"
    pil_format = "JPEG"
    quality_help = "JPEG quality 1-100 (integer), higher = better quality / more bits"

    def __init__(self, subsampling: str = "4:2:0", optimize: bool = False):
        """
        Args:
            subsampling: chroma subsampling, "4:2:0" (libjpeg's default), "4:2:2" or "4:4:4".
            optimize: optimized Huffman tables (a few % fewer bits, slower).
        """
        if subsampling not in JPEG_SUBSAMPLINGS:
            raise ValueError(f"subsampling must be one of {JPEG_SUBSAMPLINGS}, got {subsampling!r}")
        self.subsampling = subsampling
        self.optimize = bool(optimize)

    def _save_kwargs(self, quality: float, height: int, width: int) -> Dict[str, object]:
        lo, hi = JPEG_QUALITY_RANGE
        if not (lo <= float(quality) <= hi and float(quality) == int(quality)):
            raise ValueError(f"jpeg: quality must be an integer in [{lo}, {hi}], got {quality}")
        return {"quality": int(quality), "subsampling": self.subsampling, "optimize": self.optimize}


@CODEC_REGISTRY.register()
class Jpeg2000Codec(_PillowCodec):
    """JPEG 2000 (Pillow / OpenJPEG), raw J2K codestream per frame (no JP2 boxes)."""

    name = "jpeg2000"
    pil_format = "JPEG2000"
    quality_help = (
        "compression ratio >= 1 relative to 24-bit RGB (OpenJPEG 'rates' mode), "
        "higher = more compression"
    )

    def __init__(self, irreversible: bool = True):
        """
        Args:
            irreversible: use the 9/7 float wavelet (the usual lossy JPEG 2000 setting);
                False uses the reversible 5/3 wavelet.
        """
        self.irreversible = bool(irreversible)

    def _save_kwargs(self, quality: float, height: int, width: int) -> Dict[str, object]:
        ratio = float(quality)
        if not ratio >= J2K_MIN_RATIO or not math.isfinite(ratio):
            raise ValueError(
                f"jpeg2000: quality (compression ratio) must be >= {J2K_MIN_RATIO}, got {quality}"
            )
        max_levels = int(math.floor(math.log2(min(height, width)))) + 1
        resolutions = min(J2K_DEFAULT_RESOLUTIONS, max_levels)
        return {
            "quality_mode": "rates",
            "quality_layers": [ratio],
            "irreversible": self.irreversible,
            "num_resolutions": resolutions,
            "no_jp2": True,
        }
