"""Codec interface, registry and the frame preparation shared by all codecs."""
import abc
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
from fvcore.common.registry import Registry

from .annexb import frame_chunks

__all__ = [
    "CODEC_REGISTRY",
    "CodedFrame",
    "CodedSequence",
    "Codec",
    "build_codec",
    "cached_codec",
    "available_codecs",
    "iter_frames",
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
class CodedFrame:
    """One frame out of ``Codec.encode_stream``: its reconstruction and its exact bytes."""

    image: np.ndarray  # decoded frame, RGB uint8 HxWx3, same H, W as the input
    data: bytes  # this frame's part of the bitstream (every byte that is counted)

    @property
    def bits(self) -> int:
        return 8 * len(self.data)


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


def iter_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Validate frames one at a time and convert each to contiguous RGB uint8.

    Raises ValueError at the first frame of a wrong dtype/shape or of another size than frame
    0, and at the end of an empty sequence.
    """
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and frames.dtype == np.uint8:
        raise ValueError("frames must be a sequence of images, not a single image array")
    size = None
    for i, frame in enumerate(frames):
        rgb = _to_rgb(frame, i)
        if size is None:
            size = rgb.shape[:2]
        elif rgb.shape[:2] != size:
            raise ValueError(f"frame {i} has size {rgb.shape[:2]}, frame 0 has {size}")
        yield rgb
    if size is None:
        raise ValueError("cannot encode an empty frame sequence")


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


class _FrameSource:
    """Iterator over validated input frames that counts them and remembers their size."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self._frames = iter_frames(frames)
        self.count = 0
        self.shape: Tuple[int, ...] = ()

    def __iter__(self) -> "_FrameSource":
        return self

    def __next__(self) -> np.ndarray:
        frame = next(self._frames)
        self.count += 1
        self.shape = frame.shape
        return frame


class Codec(abc.ABC):
    """A codec that encodes RGB frames to a bitstream and decodes it back.

    ``encode_stream`` is the interface: frames in, one ``CodedFrame`` (reconstruction decoded
    from the real bytes, and the bytes) out per frame, in order, with memory bounded by the
    codec's delay, not by the number of frames. ``encode`` collects it into a
    ``CodedSequence``. Subclasses implement ``decode`` and either ``_stream`` (a streaming
    encoder, e.g. x264 through PyAV) or ``_encode_bitstream`` (the whole input at once; the
    default ``_stream`` then codes one frame at a time for image codecs and the whole sequence
    for video codecs).
    """

    name: str = ""
    is_video: bool = False
    quality_help: str = ""

    def encode_stream(self, frames: Iterable[np.ndarray], quality: float) -> Iterator[CodedFrame]:
        """Encode ``frames`` (any iterable, pulled as needed) at ``quality`` (see
        ``quality_help``); yield each frame's ``CodedFrame`` in order as soon as it is decoded.

        Raises ValueError on invalid frames (see ``iter_frames``) or quality, RuntimeError if
        the encoder fails.
        """
        source = _FrameSource(frames)
        produced = 0
        for coded in self._stream(source, quality):
            if produced >= source.count:  # frame i can only come out after frame i went in
                raise RuntimeError(f"{self.name}: more coded frames than the {source.count} given")
            image = coded.image
            if image.shape != source.shape or image.dtype != np.uint8:
                raise RuntimeError(
                    f"{self.name}: frame {produced} decodes to {image.shape} {image.dtype}, "
                    f"expected {source.shape} uint8"
                )
            produced += 1
            yield coded
        if produced != source.count:
            raise RuntimeError(
                f"{self.name}: {produced} coded frames for {source.count} input frames")

    def encode(self, frames: Sequence[np.ndarray], quality: float) -> CodedSequence:
        """``encode_stream`` collected: every decoded frame, the bitstream and bits per frame."""
        coded = list(self.encode_stream(frames, quality))
        return CodedSequence(frames=[c.image for c in coded],
                             bitstream=b"".join(c.data for c in coded),
                             frame_bits=[c.bits for c in coded])

    def _stream(self, frames: Iterator[np.ndarray], quality: float) -> Iterator[CodedFrame]:
        """Code validated RGB uint8 frames with ``_encode_bitstream`` and ``decode``: one frame
        at a time for image codecs (frames are independent), the whole sequence at once for
        video codecs. Streaming codecs override this."""
        batches = ([f] for f in frames) if not self.is_video else [list(frames)]
        for batch in batches:
            height, width = batch[0].shape[:2]
            bitstream, frame_bits = self._encode_bitstream(batch, quality)
            frame_bits = [int(b) for b in frame_bits]
            if len(frame_bits) != len(batch) or sum(frame_bits) != 8 * len(bitstream):
                raise RuntimeError(
                    f"{self.name}: encoder produced {len(frame_bits)} frame sizes summing to "
                    f"{sum(frame_bits)} bits for {len(batch)} frames and {len(bitstream)} bytes"
                )
            decoded = self.decode(bitstream, frame_bits, height, width)
            for image, data in zip(decoded, frame_chunks(bitstream, frame_bits)):
                yield CodedFrame(image=image, data=data)

    def _encode_bitstream(
        self, frames: List[np.ndarray], quality: float
    ) -> Tuple[bytes, List[int]]:
        """Encode validated RGB uint8 frames; return (bitstream, bits per frame)."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither _stream nor _encode_bitstream")

    @abc.abstractmethod
    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        """Decode ``bitstream`` into ``len(frame_bits)`` RGB uint8 frames of size height x width.

        Raises ValueError/RuntimeError on a corrupt or truncated bitstream.
        """

    def random_access_points(self, chunks: Sequence[bytes]) -> List[int]:
        """Indices of the frames (given each frame's bytes) that decoding can start from: frame
        i and every later frame decode from the bytes of frames i, i+1, ... alone. Always
        includes 0. Image codecs: every frame; video codecs: frame 0 unless they say more."""
        return list(range(len(chunks))) if not self.is_video else [0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def build_codec(name: str, **kwargs: Any) -> Codec:
    """Instantiate the registered codec ``name``; ``kwargs`` go to its constructor."""
    if name not in CODEC_REGISTRY:
        raise KeyError(f"unknown codec {name!r}; available codecs: {', '.join(available_codecs())}")
    return CODEC_REGISTRY.get(name)(**kwargs)


_CODEC_CACHE: Dict[str, Codec] = {}


def cached_codec(name: str, options: Mapping[str, Any]) -> Codec:
    """``build_codec(name, **options)``, built once per process and configuration (learned
    codecs are slow to build; codecs hold configuration only, so sharing one is safe)."""
    key = json.dumps([name, dict(options)], sort_keys=True)
    if key not in _CODEC_CACHE:
        _CODEC_CACHE[key] = build_codec(name, **options)
    return _CODEC_CACHE[key]


def available_codecs() -> List[str]:
    """Sorted names of all registered codecs."""
    return sorted(name for name, _ in CODEC_REGISTRY)
