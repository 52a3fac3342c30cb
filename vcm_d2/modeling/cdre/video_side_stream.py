"""Video side stream of CDRE: the header once per video, then one record per frame.

Layout (format version 1, integers big-endian)::

    header  magic "CV" | version u8 | mode u8 | C u8 | h u16 | w u16 | CRC-32 u32     (13 bytes)
    record  [n (unsigned LEB128), cabac streams only] | payload | check u16

* header: what the image stream (``side_stream.py``, 15 bytes per frame) repeats in every
  frame and a video does not change: the coding ``mode`` (0 raw, 1 cabac, as requested) and
  the map shape (C, h, w). The CRC-32 covers the 9 bytes before it.
* payload, raw streams: ceil(C*h*w / 8) bytes, ``numpy.packbits`` of the frame's bits in C
  order, zero padding. cabac streams: n = 0 -- the frame is stored raw as above (cabac would
  not be smaller); n >= 1 -- n - 1 bytes of context-adaptive arithmetic coding
  (``binary_coder``, short end): the first frame is coded like an image (no reference), every
  later one with the previous frame of the stream as reference and the adaptive probabilities
  as the last cabac-coded frame left them (a raw-stored frame leaves them unchanged).
* check: CRC-16/CCITT (``binascii.crc_hqx``) of the record's bytes before it, started from the
  previous record's check (the first record: from the low 16 bits of the header CRC). A
  record therefore decodes only at its place in its stream: a lost, repeated or reordered
  record, or one of another stream, fails the check (as any corruption does, except with
  probability 2^-16).

Rate accounting: a frame costs its record; the header is charged to the first frame (no frame
of the video decodes without it), so the frames' bits add up exactly to 8 * len(stream) --
the rule of the TransVFC container. There is no frame count or end marker: a sender does not
know which frame is the last when it sends one. A stream cut at a record boundary is a shorter
valid stream; ``read_video_side_stream(..., num_frames=)`` checks a known count.

Decoding raises ValueError on a wrong magic or version, a header or record check mismatch, a
truncated record or bytes after one, and on payloads that no encoder writes; every loop is
bounded by the header's sizes, which are bounded by ``MAX_FRAME_BITS``, so corrupt input can
never hang the decoder.

``SideStreamSessions`` decides, for the frames an evaluation feeds one at a time, which frames
continue which video's stream (``video_id`` / ``frame_idx``), the same way at both ends.
"""
import binascii
import logging
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, List, Optional, Tuple

import numpy as np
import torch

from ...utils.bytestream import ByteReader, encode_varint
from .binary_coder import ContextModel, bit_frames, cabac_decode, cabac_encode
from .side_stream import SIDE_STREAM_MODES, decode_side_stream, encode_side_stream

__all__ = [
    "VIDEO_MAGIC",
    "VIDEO_VERSION",
    "VIDEO_HEADER_BYTES",
    "RECORD_CHECK_BYTES",
    "MAX_FRAME_BITS",
    "VideoSideStreamHeader",
    "VideoSideStreamEncoder",
    "VideoSideStreamDecoder",
    "VideoSideStream",
    "encode_video_side_stream",
    "read_video_side_stream",
    "SideStreamSessions",
]

logger = logging.getLogger(__name__)

VIDEO_MAGIC = b"CV"
VIDEO_VERSION = 1
_MODE_CODES = {"raw": 0, "cabac": 1}
_HEADER_FIELDS = struct.Struct(">2sBBBHH")
_CRC32 = struct.Struct(">I")
VIDEO_HEADER_BYTES = _HEADER_FIELDS.size + _CRC32.size  # 13
_CHECK = struct.Struct(">H")
RECORD_CHECK_BYTES = _CHECK.size
# Largest map of one frame (C*h*w bits): 6 channels of 700K 32x32 blocks, a 27K x 27K image.
# It bounds the decoder's work on a forged header (a short-end cabac payload has no length bound).
MAX_FRAME_BITS = 1 << 22
_STORED_RAW = 0  # record length field of a cabac stream: the frame is stored raw
_MAX_VARINT_BYTES = 4  # lengths are <= MAX_FRAME_BITS / 8 + 1 < 2^21


@dataclass(frozen=True)
class VideoSideStreamHeader:
    version: int
    mode: str  # requested coding: "raw" (every record raw) or "cabac" (each record cabac or raw)
    channels: int
    height: int
    width: int
    crc32: int

    @property
    def frame_shape(self) -> Tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def raw_bytes(self) -> int:
        """Bytes of a frame's raw payload."""
        return -(-self.channels * self.height * self.width // 8)


def _check_shape(shape: Tuple[int, int, int]) -> None:
    if int(np.prod(shape)) > MAX_FRAME_BITS:
        raise ValueError(f"a side-stream frame of shape {tuple(shape)} exceeds {MAX_FRAME_BITS} bits")


def _encode_header(mode: str, shape: Tuple[int, int, int]) -> bytes:
    _check_shape(shape)
    body = _HEADER_FIELDS.pack(VIDEO_MAGIC, VIDEO_VERSION, _MODE_CODES[mode], *shape)
    return body + _CRC32.pack(zlib.crc32(body))


def _parse_header(data: bytes) -> VideoSideStreamHeader:
    """The header at the start of ``data`` (the magic is checked first, even in a short input)."""
    magic = bytes(data[:len(VIDEO_MAGIC)])
    if len(magic) == len(VIDEO_MAGIC) and magic != VIDEO_MAGIC:
        hint = " (a self-contained image side stream)" if magic == b"CD" else ""
        raise ValueError(f"bad magic {magic!r}{hint}: not the start of a CDRE video side stream "
                         f"(expected {VIDEO_MAGIC!r})")
    if len(data) < VIDEO_HEADER_BYTES:
        raise ValueError(f"video side stream of {len(data)} bytes is shorter than its "
                         f"{VIDEO_HEADER_BYTES}-byte header (truncated)")
    _, version, mode, c, h, w = _HEADER_FIELDS.unpack_from(data)
    if version != VIDEO_VERSION:
        raise ValueError(f"unsupported video side-stream version {version} (this decoder reads {VIDEO_VERSION})")
    (crc,) = _CRC32.unpack_from(data, _HEADER_FIELDS.size)
    if crc != zlib.crc32(data[:_HEADER_FIELDS.size]):
        raise ValueError("video side-stream header CRC mismatch: corrupt data")
    modes = {v: k for k, v in _MODE_CODES.items()}
    if mode not in modes or min(c, h, w) < 1:
        raise ValueError(f"invalid video side-stream header (mode {mode}, shape {(c, h, w)})")
    _check_shape((c, h, w))
    return VideoSideStreamHeader(version, modes[mode], c, h, w, crc)


def _reader(data: bytes) -> ByteReader:
    return ByteReader(data, "video side stream", max_varint_bytes=_MAX_VARINT_BYTES)


class _StreamState:
    """What both ends carry from frame to frame: header, chained check, reference frame and
    adaptive probabilities."""

    def __init__(self, header: VideoSideStreamHeader):
        self.header = header
        self.frames = 0
        self.check = header.crc32 & 0xFFFF
        self.prev: Optional[np.ndarray] = None
        self.model = ContextModel(header.channels)

    def advance(self, bits: np.ndarray, record_body: bytes, model: Optional[ContextModel]) -> int:
        """Accept a frame; returns its check. ``model``: the probabilities after a cabac frame."""
        self.check = binascii.crc_hqx(record_body, self.check)
        self.prev = bits
        if model is not None:
            self.model = model
        self.frames += 1
        return self.check


class VideoSideStreamEncoder:
    """One video's stream, a frame at a time: ``encode(y_hat)`` gives the frame's bytes (header
    + record for the first frame, the record after); their concatenation is the stream."""

    def __init__(self, mode: str = "cabac"):
        if mode not in _MODE_CODES:
            raise ValueError(f"unknown side-stream mode {mode!r}; expected one of {SIDE_STREAM_MODES}")
        self.mode = mode
        self.state: Optional[_StreamState] = None

    @property
    def frame_shape(self) -> Optional[Tuple[int, int, int]]:
        return None if self.state is None else self.state.header.frame_shape

    def encode(self, y_hat) -> bytes:
        """Bytes of the next frame; ``y_hat``: its (C, h, w) 0/1 map (same shape every frame)."""
        bits, has_t = bit_frames(y_hat)
        if has_t:
            raise ValueError(f"a video side-stream frame is one (C, h, w) map, got shape {tuple(bits.shape)}")
        bits = bits[0]
        head = b""
        if self.state is None:
            head = _encode_header(self.mode, bits.shape)
            self.state = _StreamState(_parse_header(head))
        elif bits.shape != self.frame_shape:
            raise ValueError(f"frame map {bits.shape} differs from the stream's {self.frame_shape}: "
                             "start a new stream for another frame size")
        body, model = self._body(bits)
        check = self.state.advance(bits, body, model)
        return head + body + _CHECK.pack(check)

    def _body(self, bits: np.ndarray) -> Tuple[bytes, Optional[ContextModel]]:
        raw = np.packbits(bits.ravel()).tobytes()
        if self.mode == "raw":
            return raw, None
        model = self.state.model.copy()
        coded = cabac_encode(bits[None], self.state.prev, model, short_end=True)
        if len(coded) < len(raw):
            return encode_varint(len(coded) + 1) + coded, model
        return encode_varint(_STORED_RAW) + raw, None


class VideoSideStreamDecoder:
    """Inverse of ``VideoSideStreamEncoder``: ``decode(frame_bytes)`` gives the frame's (C, h, w)
    map; the first call needs the header in front of the record."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.state: Optional[_StreamState] = None

    @property
    def header(self) -> Optional[VideoSideStreamHeader]:
        return None if self.state is None else self.state.header

    @property
    def frame_shape(self) -> Optional[Tuple[int, int, int]]:
        return None if self.state is None else self.state.header.frame_shape

    def decode(self, data: bytes) -> torch.Tensor:
        """The next frame's map from exactly its bytes (raises on anything left over)."""
        reader = _reader(data)
        bits = self.read(reader)
        if reader.pos != len(reader.data):
            raise ValueError(f"{len(reader.data) - reader.pos} byte(s) after the record of frame "
                             f"{self.state.frames - 1}: length mismatch")
        return torch.from_numpy(bits.astype(np.float32)).to(self.dtype)

    def read(self, reader: ByteReader) -> np.ndarray:
        """Read the header (first frame) and the next record from ``reader``: (C, h, w) uint8."""
        if self.state is None:
            self.state = _StreamState(_parse_header(reader.data[reader.pos:reader.pos + VIDEO_HEADER_BYTES]))
            reader.pos += VIDEO_HEADER_BYTES
        state, header = self.state, self.state.header
        what = f"frame {state.frames}"
        start = reader.pos
        stored = _STORED_RAW if header.mode == "raw" else reader.varint(f"{what} length")
        if stored == _STORED_RAW:
            payload = reader.take(header.raw_bytes, f"{what} raw payload")
        elif stored - 1 >= header.raw_bytes:
            raise ValueError(f"corrupt video side stream: {what} claims a cabac payload of {stored - 1} "
                             f"bytes, not smaller than its raw {header.raw_bytes}")
        else:
            payload = reader.take(stored - 1, f"{what} cabac payload")
        body = reader.data[start:reader.pos]
        (check,) = _CHECK.unpack(reader.take(RECORD_CHECK_BYTES, f"{what} check"))
        if check != binascii.crc_hqx(body, state.check):
            raise ValueError(f"video side-stream check mismatch at {what}: corrupt data, or not the "
                             "next record of this stream (lost, repeated or reordered)")
        model = None
        shape = header.frame_shape
        if stored == _STORED_RAW:
            n = int(np.prod(shape))
            flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
            if flat[n:].any():
                raise ValueError(f"{what}: raw payload has non-zero padding bits")
            bits = flat[:n].reshape(shape)
        else:
            model = state.model.copy()
            bits = cabac_decode(payload, (1,) + shape, state.prev, model, short_end=True)[0]
        state.advance(bits, body, model)
        return bits


# ------------------------------------------------------------------------- whole streams
@dataclass(frozen=True)
class VideoSideStream:
    header: VideoSideStreamHeader
    maps: torch.Tensor  # (T, C, h, w) 0/1
    frame_bits: List[int]  # per frame; the header is charged to frame 0; sums to 8 * len(stream)


def encode_video_side_stream(maps, mode: str = "cabac") -> bytes:
    """One stream of a video's (T, C, h, w) 0/1 maps (the frames' bytes concatenated)."""
    bits, has_t = bit_frames(maps)
    if not has_t:
        raise ValueError(f"a video side stream codes (T, C, h, w) maps, got shape {tuple(bits.shape)}")
    encoder = VideoSideStreamEncoder(mode)
    return b"".join(encoder.encode(frame) for frame in bits)


def read_video_side_stream(data: bytes, num_frames: Optional[int] = None,
                           dtype: torch.dtype = torch.float32) -> VideoSideStream:
    """Parse and decode a whole stream; ``num_frames``: the frame count it must hold."""
    reader, decoder = _reader(data), VideoSideStreamDecoder(dtype)
    frames, ends = [], []
    while not frames or reader.pos < len(reader.data):
        frames.append(decoder.read(reader))
        ends.append(reader.pos)
    if num_frames is not None and len(frames) != num_frames:
        raise ValueError(f"video side stream holds {len(frames)} frames, expected {num_frames} (truncated?)")
    frame_bits = [8 * (e - s) for s, e in zip([0] + ends[:-1], ends)]
    maps = torch.from_numpy(np.stack(frames).astype(np.float32)).to(dtype)
    return VideoSideStream(decoder.header, maps, frame_bits)


# ------------------------------------------------------------------------- evaluation sessions
class SideStreamSessions:
    """The side streams of one end of an evaluation (sender or receiver), a frame at a time.

    With ``per_video``, a frame that carries ``video_id`` and ``frame_idx`` continues its video's
    open stream when its frame_idx is larger than the last one coded there and its map has the
    stream's shape; otherwise it opens a new stream (header again): at frame_idx 0, after a
    backwards or repeated index, a size change, or when the stream was closed (at most
    ``max_open`` stay open, the least recently used is closed first; a distributed evaluation
    whose shard starts inside a video opens one there too). Both ends apply this rule to the
    same (video_id, frame_idx, shape), so they agree on where every stream starts. Other frames
    (and every frame without ``per_video``) get self-contained image streams.
    """

    def __init__(self, mode: str = "cabac", per_video: bool = True, max_open: int = 64):
        if mode not in _MODE_CODES:
            raise ValueError(f"unknown side-stream mode {mode!r}; expected one of {SIDE_STREAM_MODES}")
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.mode, self.per_video, self.max_open = mode, bool(per_video), int(max_open)
        self._open: "OrderedDict[Hashable, Tuple[int, object]]" = OrderedDict()

    def reset(self) -> None:
        """Close every open stream."""
        self._open.clear()

    def _coder(self, video_id, frame_idx, shape, make):
        """The open coder this frame continues, or a new one from ``make()`` (class docstring)."""
        key, idx = video_id, int(frame_idx)
        last, coder = self._open.pop(key, (None, None))
        if coder is not None and (idx <= last or tuple(shape) != coder.frame_shape):
            if idx <= last and idx != 0:
                logger.warning("CDRE side stream: frame_idx %d of video %r follows frame_idx %d; "
                               "starting a new stream", idx, key, last)
            coder = None
        coder = coder or make()
        self._open[key] = (idx, coder)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return coder

    def _per_video(self, video_id, frame_idx) -> bool:
        return self.per_video and video_id is not None and frame_idx is not None

    def encode(self, y_hat, video_id: Optional[Hashable] = None, frame_idx: Optional[int] = None) -> bytes:
        """Bytes of this frame's side stream (its record, with the header if it opens a stream)."""
        if not self._per_video(video_id, frame_idx):
            return encode_side_stream(y_hat, self.mode)
        shape = tuple(y_hat.shape)
        return self._coder(video_id, frame_idx, shape, lambda: VideoSideStreamEncoder(self.mode)).encode(y_hat)

    def decode(self, data: bytes, shape: Tuple[int, int, int], video_id: Optional[Hashable] = None,
               frame_idx: Optional[int] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """This frame's map from its bytes; ``shape``: the (C, h, w) map its image size implies."""
        if not self._per_video(video_id, frame_idx):
            return decode_side_stream(data, dtype=dtype)
        decoder = self._coder(video_id, frame_idx, shape, lambda: VideoSideStreamDecoder(dtype))
        try:
            return decoder.decode(data)
        except ValueError:
            self._open.pop(video_id, None)  # a broken stream is closed, not continued
            raise

