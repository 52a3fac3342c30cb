"""Stored sequence bitstreams, decoded on demand.

A compressed dataset kept as bitstreams (``tools/compress_dataset.py --store bitstream``) holds
one bitstream file per coded sequence. A frame is read by decoding the *segment* that holds it:
from the random-access point at or before it (an IDR frame of a video codec, every frame of an
image codec; see ``Codec.random_access_points``) up to the next one. Decoding is deterministic,
so the frames equal the reconstruction the encoder produced (what PNG storage writes).
``DecodedFrameCache`` keeps recently decoded segments (LRU, bounded in bytes), so a clip sampler
reading neighbouring frames decodes each segment once per process.

Every read checks the file's size and CRC-32 against what was recorded when it was written: a
truncated, replaced or corrupt bitstream raises ``StoredBitstreamError`` naming the sequence and
the file, never a hang or a silently wrong frame.
"""
import bisect
import collections
import json
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .annexb import frame_chunks
from .base import Codec, cached_codec

__all__ = ["StoredSequence", "StoredBitstreamError", "DecodedFrameCache", "bitstream_crc32",
           "DEFAULT_DECODED_CACHE_MB"]

DEFAULT_DECODED_CACHE_MB = 256  # default budget of a DecodedFrameCache (VCM.PAIRS.DECODED_CACHE_MB)
MB = 1 << 20


def bitstream_crc32(data: bytes) -> int:
    """The checksum recorded for a stored bitstream (zlib's CRC-32, unsigned)."""
    return zlib.crc32(data) & 0xFFFFFFFF


class StoredBitstreamError(ValueError):
    """A stored bitstream is missing, truncated or corrupt (the message names the sequence)."""


@dataclass(frozen=True)
class StoredSequence:
    """Where one coded sequence is stored and how to decode it."""

    name: str  # sequence key (errors name it)
    path: str  # the bitstream file
    codec: str  # registered codec name
    codec_options: str  # constructor options as sorted JSON (hashable)
    frame_bits: Tuple[int, ...]  # bits of each frame, in coding order
    height: int
    width: int
    crc32: int  # bitstream_crc32 of the whole file

    @classmethod
    def create(cls, name: str, path: str, codec: str, codec_options: Mapping[str, Any],
               frame_bits: Sequence[int], height: int, width: int, crc32: int) -> "StoredSequence":
        return cls(name, path, codec, json.dumps(dict(codec_options), sort_keys=True),
                   tuple(int(b) for b in frame_bits), int(height), int(width), int(crc32))

    def _error(self, problem: str) -> StoredBitstreamError:
        return StoredBitstreamError(f"sequence {self.name!r}: {problem} ({self.path})")

    def codec_instance(self) -> Codec:
        return cached_codec(self.codec, json.loads(self.codec_options))

    def read_chunks(self) -> List[bytes]:
        """Each frame's bytes, after checking the file's size and CRC-32."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise self._error(f"cannot read the stored bitstream: {exc}") from exc
        expected = sum(self.frame_bits) // 8
        if len(data) != expected:
            raise self._error(f"the stored bitstream has {len(data)} bytes, its manifest lists "
                              f"{expected} (truncated or replaced file)")
        if bitstream_crc32(data) != self.crc32:
            raise self._error("the stored bitstream fails its CRC-32 check (corrupt file)")
        return frame_chunks(data, self.frame_bits)

    def decode_segment(self, index: int) -> Tuple[int, List[np.ndarray]]:
        """(first frame, decoded frames) of the random-access segment holding frame ``index``."""
        if not 0 <= index < len(self.frame_bits):
            raise IndexError(f"sequence {self.name!r} has {len(self.frame_bits)} frames, "
                             f"not {index + 1}")
        chunks = self.read_chunks()
        codec = self.codec_instance()
        points = codec.random_access_points(chunks)
        k = bisect.bisect_right(points, index) - 1
        start = points[k]
        end = points[k + 1] if k + 1 < len(points) else len(chunks)
        try:
            frames = codec.decode(b"".join(chunks[start:end]), self.frame_bits[start:end],
                                  self.height, self.width)
        except (ValueError, RuntimeError) as exc:
            raise self._error(f"frames {start}-{end - 1} cannot be decoded: {exc}") from exc
        return start, frames


class DecodedFrameCache:
    """Decoded frames of stored sequences, kept per process by segment (LRU, bounded in bytes).

    The most recently used segment is always kept, even when it alone exceeds the budget. A
    pickled cache (a data loader worker's copy of a mapper) arrives empty.
    """

    def __init__(self, max_mb: float = DEFAULT_DECODED_CACHE_MB):
        if not max_mb >= 0:
            raise ValueError(f"the decoded frame cache needs a budget >= 0 MB, got {max_mb}")
        self.max_bytes = int(max_mb * MB)
        self._segments: "collections.OrderedDict[Tuple[StoredSequence, int], List[np.ndarray]]" = (
            collections.OrderedDict())
        self._starts: Dict[StoredSequence, List[int]] = {}  # sorted starts of cached segments
        self.bytes = 0
        self.decodes = 0  # segments decoded so far (a measure of cache misses)

    def __getstate__(self) -> Dict[str, Any]:
        return {"max_mb": self.max_bytes / MB}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["max_mb"])

    def frame(self, sequence: StoredSequence, index: int) -> np.ndarray:
        """Frame ``index`` of ``sequence`` (RGB uint8, read-only), decoded on a miss."""
        starts = self._starts.get(sequence, [])
        k = bisect.bisect_right(starts, index) - 1
        if k >= 0:
            key = (sequence, starts[k])
            frames = self._segments[key]
            if index < starts[k] + len(frames):
                self._segments.move_to_end(key)
                return frames[index - starts[k]]
        start, frames = sequence.decode_segment(index)
        for f in frames:
            f.flags.writeable = False  # shared by every later read
        self._add(sequence, start, frames)
        self.decodes += 1
        return frames[index - start]

    def _add(self, sequence: StoredSequence, start: int, frames: List[np.ndarray]) -> None:
        self._segments[(sequence, start)] = frames
        bisect.insort(self._starts.setdefault(sequence, []), start)
        self.bytes += sum(f.nbytes for f in frames)
        while self.bytes > self.max_bytes and len(self._segments) > 1:
            (seq, old), dropped = self._segments.popitem(last=False)
            self.bytes -= sum(f.nbytes for f in dropped)
            self._starts[seq].remove(old)
            if not self._starts[seq]:
                del self._starts[seq]

