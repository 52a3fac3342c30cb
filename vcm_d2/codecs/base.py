"""Codec interface, registry and the frame preparation shared by all codecs."""
import abc
import math
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

import numpy as np
from fvcore.common.registry import Registry

__all__ = [
    "CODEC_REGISTRY",
    "CodedSequence",
    "Codec",
    "build_codec",
    "available_codecs",
    "prepare_frames",
    "pad_frame",
]


class _CodecRegistry(Registry):
    """fvcore Registry that registers a codec class under its ``name`` attribute.

    fvcore registers objects under ``__name__``; codec names such as ``x264`` are not
    valid class names in our style, so ``@CODEC_REGISTRY.register()`` uses ``cls.name``.
    """

    def register(self, obj: Any = None) -> Any:
        def deco(cls: Any) -> Any:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"{cls.__name__} needs a non-empty string attribute `name`")
            self._do_register(name, cls)
            return cls

        return deco if obj is None else deco(obj)


CODEC_REGISTRY = _CodecRegistry("VCM_CODEC")
CODEC_REGISTRY.__doc__ = """Registry of codecs: name -> Codec subclass (see ``build_codec``)."""


@dataclass
class CodedSequence:
    """Result of ``Codec.encode``: reconstruction decoded from the exact bitstream."""

    frames: List[np.ndarray]  # decoded frames, RGB uint8 HxWx3, same H, W as the input
    bitstream: bytes  # every byte that is counted
    frame_bits: List[int]  # bits per frame; sum(frame_bits) == 8 * len(bitstream)

    @property
    def total_bits(self) -> int:
        return int(sum(self.frame_bits))

    def bpp(self) -> List[float]:
        """Per-frame bits per pixel (bits / (H * W) of the original frame size)."""
        h, w = self.frames[0].shape[:2]
        return [b / float(h * w) for b in self.frame_bits]


def _to_rgb(frame: Any, index: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected dtype uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # RGBA: drop alpha (codecs here code colour only)
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ValueError(
            f"frame {index}: expected HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"frame {index}: empty frame of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def prepare_frames(frames: Sequence[np.ndarray]) -> Tuple[List[np.ndarray], int, int]:
    """Validate frames and convert them to contiguous RGB uint8; return (frames, H, W).

    Raises ValueError on an empty sequence, a wrong dtype/shape or differing frame sizes.
    """
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and frames.dtype == np.uint8:
        raise ValueError("frames must be a sequence of images, not a single image array")
    frames = list(frames)
    if not frames:
        raise ValueError("cannot encode an empty frame sequence")
    rgb = [_to_rgb(f, i) for i, f in enumerate(frames)]
    h, w = rgb[0].shape[:2]
    for i, f in enumerate(rgb):
        if f.shape[:2] != (h, w):
            raise ValueError(f"frame {i} has size {f.shape[:2]}, frame 0 has {(h, w)}")
    return rgb, h, w


def padded_size(height: int, width: int, multiple: int, minimum: int = 1) -> Tuple[int, int]:
    """Smallest (H, W) >= (height, width) and >= minimum that are multiples of ``multiple``."""

    def up(n: int) -> int:
        return int(math.ceil(max(n, minimum) / multiple)) * multiple

    return up(height), up(width)


def pad_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Edge-replicate ``frame`` (HxWxC) at the bottom/right up to (height, width)."""
    ph, pw = height - frame.shape[0], width - frame.shape[1]
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {frame.shape[:2]} down to {(height, width)}")
    if ph == 0 and pw == 0:
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")


def check_decode_args(frame_bits: Sequence[int], height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if len(frame_bits) == 0:
        raise ValueError("frame_bits is empty: nothing to decode")


class Codec(abc.ABC):
    """A codec that encodes RGB frames to a bitstream and decodes it back.

    Subclasses implement ``_encode_bitstream`` (returning the bytes and per-frame bits)
    and ``decode``; ``encode`` always decodes the real bytes, so a reconstruction can
    never diverge from what the bitstream carries.
    """

    name: str = ""
    is_video: bool = False
    quality_help: str = ""

    def encode(self, frames: Sequence[np.ndarray], quality: float) -> CodedSequence:
        """Encode ``frames`` at ``quality`` (see ``quality_help``) and decode the bytes back."""
        rgb, h, w = prepare_frames(frames)
        bitstream, frame_bits = self._encode_bitstream(rgb, quality)
        frame_bits = [int(b) for b in frame_bits]
        if len(frame_bits) != len(rgb) or sum(frame_bits) != 8 * len(bitstream):
            raise RuntimeError(
                f"{self.name}: encoder produced {len(frame_bits)} frame sizes summing to "
                f"{sum(frame_bits)} bits for {len(rgb)} frames and {len(bitstream)} bytes"
            )
        decoded = self.decode(bitstream, frame_bits, h, w)
        return CodedSequence(frames=decoded, bitstream=bytes(bitstream), frame_bits=frame_bits)

    @abc.abstractmethod
    def _encode_bitstream(
        self, frames: List[np.ndarray], quality: float
    ) -> Tuple[bytes, List[int]]:
        """Encode validated RGB uint8 frames; return (bitstream, bits per frame)."""

    @abc.abstractmethod
    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        """Decode ``bitstream`` into ``len(frame_bits)`` RGB uint8 frames of size height x width.

        Raises ValueError/RuntimeError on a corrupt or truncated bitstream.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def build_codec(name: str, **kwargs: Any) -> Codec:
    """Instantiate the registered codec ``name``; ``kwargs`` go to its constructor."""
    if name not in CODEC_REGISTRY:
        raise KeyError(f"unknown codec {name!r}; available codecs: {', '.join(available_codecs())}")
    return CODEC_REGISTRY.get(name)(**kwargs)


def available_codecs() -> List[str]:
    """Sorted names of all registered codecs."""
    return sorted(name for name, _ in CODEC_REGISTRY)
