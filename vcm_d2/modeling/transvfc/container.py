"""Versioned bitstream container of TransVFC (one video, batch size 1).

Layout (integers big-endian)::

    header   magic "TVFC" | version u8 | image H, W u16 | original H, W u16 |
             feature h, w u16 | GOP u16 | frames u32 | quality index u8 | torch threads u8 |
             model hash 16 bytes | model-id length u8 | model id (UTF-8) | CRC-32 u32
    frame    type u8 ("I" / "P") | per latent of the type (``RECORD_STRINGS``):
             length (unsigned LEB128) + bytes | CRC-32 u32 of the frame's preceding bytes

The header CRC covers every header byte before it. ``read_stream`` refuses, with a
``ContainerError`` naming the problem, anything that is not exactly a well-formed stream:
wrong magic or version, a header or frame whose CRC does not match (corruption), a stream that
ends early (truncation) or has bytes after the last frame.

Rate accounting: a frame costs its own bytes (type, lengths, latents, CRC); the header is
charged to the first frame (a decoder cannot decode frame 0 without it). ``frame_bits`` sums
exactly to ``8 * len(stream)``.

Bit-exact decoding needs the encoder's model (checked by the caller with ``model_hash``) and
its torch thread count (``threads``): CPU convolutions split their reductions by thread.
"""
import struct
import zlib
from dataclasses import dataclass
from typing import List, Mapping, Sequence, Tuple

from ...utils.bytestream import ByteReader, encode_varint
from ...utils.io import atomic_write_bytes
from .codec import RECORD_STRINGS, check_record_strings

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MODEL_HASH_BYTES",
    "MAX_MODEL_ID_BYTES",
    "MAX_QUALITY_INDEX",
    "ContainerError",
    "StreamHeader",
    "ParsedStream",
    "encode_header",
    "header_num_bytes",
    "encode_frame",
    "write_stream",
    "read_stream",
    "frame_bits",
    "save_stream",
    "load_stream",
]

MAGIC = b"TVFC"
FORMAT_VERSION = 1
MODEL_HASH_BYTES = 16
MAX_MODEL_ID_BYTES = 0xFF  # its length is one byte
MAX_QUALITY_INDEX = 0xFF
BITS_PER_BYTE = 8
_PREFIX = struct.Struct(">4sB")  # magic, version
_FIELDS = struct.Struct(">HHHHHHHIBB16sB")  # sizes, GOP, frames, quality, threads, hash, id len
_CRC = struct.Struct(">I")
_U8_MAX, _U16_MAX, _U32_MAX = 0xFF, 0xFFFF, 0xFFFFFFFF
_FRAME_TYPES = {ord(t): t for t in RECORD_STRINGS}


class ContainerError(ValueError):
    """A stream that cannot be decoded: not TransVFC, wrong version, corrupted or truncated."""


@dataclass(frozen=True)
class StreamHeader:
    """What a decoder needs before the first frame.

    Attributes:
        image_size: (H, W) of the coded frames (after the encoder's resize).
        original_size: (H, W) of the source video (predictions are mapped back to it).
        feature_size: (h, w) of the coded res2 feature.
        gop: frames per GOP used by the encoder (I-frame period).
        num_frames: number of frame records that follow.
        quality_index: rate point of the model (e.g. 0..3 for lambda_R 16..256).
        threads: torch CPU threads of the encoder; decode with the same number.
        model_hash: first ``MODEL_HASH_BYTES`` bytes of the SHA-256 of the decoding model.
        model_id: human-readable model name.
    """

    image_size: Tuple[int, int]
    original_size: Tuple[int, int]
    feature_size: Tuple[int, int]
    gop: int
    num_frames: int
    quality_index: int
    threads: int
    model_hash: bytes
    model_id: str


@dataclass(frozen=True)
class ParsedStream:
    header: StreamHeader
    records: List[dict]  # codec records: {"type", "strings": [[bytes]] per latent, "shape"}
    header_bytes: int
    frame_bytes: List[int]

    def frame_bits(self) -> List[int]:
        return _apportion(self.header_bytes, self.frame_bytes)


def _check_range(name: str, value: int, high: int, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"stream header field {name}={value!r} outside [{low}, {high}]")
    return value


def encode_header(header: StreamHeader) -> bytes:
    model_id = header.model_id.encode("utf-8")
    _check_range("model_id length", len(model_id), MAX_MODEL_ID_BYTES)
    if not isinstance(header.model_hash, bytes) or len(header.model_hash) != MODEL_HASH_BYTES:
        raise ValueError(f"model_hash must be {MODEL_HASH_BYTES} bytes")
    sizes = [*header.image_size, *header.original_size, *header.feature_size]
    if len(sizes) != 6:
        raise ValueError("image_size, original_size and feature_size must be (H, W) pairs")
    for name, v in zip(("image H", "image W", "original H", "original W", "feature h",
                        "feature w"), sizes):
        _check_range(name, int(v), _U16_MAX, low=1)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION) + _FIELDS.pack(
        *(int(v) for v in sizes),
        _check_range("gop", header.gop, _U16_MAX, low=1),
        _check_range("num_frames", header.num_frames, _U32_MAX),
        _check_range("quality_index", header.quality_index, MAX_QUALITY_INDEX),
        _check_range("threads", header.threads, _U8_MAX, low=1),
        header.model_hash, len(model_id)) + model_id
    return body + _CRC.pack(zlib.crc32(body))


def header_num_bytes(model_id: str) -> int:
    """Size of a header whose model id is ``model_id`` (the header has no other variable part)."""
    return _PREFIX.size + _FIELDS.size + len(model_id.encode("utf-8")) + _CRC.size


def encode_frame(record: Mapping) -> bytes:
    """Serialize one codec record (``TransVFCCodec.compress_frame``) of a batch of one."""
    ftype, strings = check_record_strings(record)
    out = bytearray([ord(ftype)])
    for latent in strings:
        if len(latent) != 1:
            raise ValueError(f"the container holds one video (batch size 1); a latent has "
                             f"{len(latent)} strings")
        data = bytes(latent[0])
        out += encode_varint(len(data)) + data
    return bytes(out) + _CRC.pack(zlib.crc32(out))


def write_stream(header: StreamHeader, records: Sequence[Mapping]) -> bytes:
    if header.num_frames != len(records):
        raise ValueError(f"header announces {header.num_frames} frames, got {len(records)} records")
    if records and records[0]["type"] != "I":
        raise ValueError("the first frame of a stream must be an I-frame")
    for i, record in enumerate(records):
        if tuple(record["shape"]) != tuple(header.feature_size):
            raise ValueError(f"record {i} codes a {tuple(record['shape'])} feature, the header "
                             f"says {tuple(header.feature_size)}")
    return encode_header(header) + b"".join(encode_frame(r) for r in records)


def _read_header(reader: ByteReader) -> StreamHeader:
    magic, version = _PREFIX.unpack(reader.take(_PREFIX.size, "the header"))
    if magic != MAGIC:
        raise ContainerError(f"not a TransVFC stream (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise ContainerError(f"unsupported TransVFC container version {version} (this decoder "
                             f"reads version {FORMAT_VERSION})")
    fields = _FIELDS.unpack(reader.take(_FIELDS.size, "the header"))
    model_id = reader.take(fields[-1], "the header's model id")
    end = reader.pos
    (crc,) = _CRC.unpack(reader.take(_CRC.size, "the header CRC"))
    if crc != zlib.crc32(reader.data[:end]):
        raise ContainerError("corrupted stream: header CRC mismatch")
    ih, iw, oh, ow, fh, fw, gop, frames, quality, threads, model_hash, _ = fields
    return StreamHeader(image_size=(ih, iw), original_size=(oh, ow), feature_size=(fh, fw),
                        gop=gop, num_frames=frames, quality_index=quality, threads=threads,
                        model_hash=model_hash, model_id=model_id.decode("utf-8", "replace"))


def _read_frame(reader: ByteReader, index: int, feature_size) -> dict:
    start = reader.pos
    what = f"frame {index}"
    code = reader.take(1, what)[0]
    if code not in _FRAME_TYPES:
        raise ContainerError(f"corrupted stream: frame {index} has unknown type byte {code}")
    ftype = _FRAME_TYPES[code]
    strings = []
    for name in RECORD_STRINGS[ftype]:
        n = reader.varint(f"{what} ({name} length)")
        strings.append([reader.take(n, f"{what} ({name})")])
    end = reader.pos
    (crc,) = _CRC.unpack(reader.take(_CRC.size, f"{what} CRC"))
    if crc != zlib.crc32(reader.data[start:end]):
        raise ContainerError(f"corrupted stream: CRC mismatch in frame {index}")
    return {"type": ftype, "strings": strings, "shape": tuple(feature_size)}


def read_stream(data: bytes) -> ParsedStream:
    """Parse and verify a whole stream (see the module docstring for what is refused)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the stream's bytes, got {type(data).__name__}")
    reader = ByteReader(data, "stream", ContainerError)
    header = _read_header(reader)
    header_bytes = reader.pos
    records, sizes = [], []
    for i in range(header.num_frames):
        start = reader.pos
        records.append(_read_frame(reader, i, header.feature_size))
        sizes.append(reader.pos - start)
    if records and records[0]["type"] != "I":
        raise ContainerError("corrupted stream: the first frame is not an I-frame")
    if reader.pos != len(reader.data):
        raise ContainerError(f"corrupted stream: {len(reader.data) - reader.pos} bytes after "
                             f"the last of {header.num_frames} frames")
    return ParsedStream(header=header, records=records, header_bytes=header_bytes,
                        frame_bytes=sizes)


def _apportion(header_bytes: int, frame_bytes: Sequence[int]) -> List[int]:
    bits = [BITS_PER_BYTE * n for n in frame_bytes]
    if bits:
        bits[0] += BITS_PER_BYTE * header_bytes
    return bits


def frame_bits(data: bytes) -> List[int]:
    """Bits charged to each frame of a stream (frame bytes; the header goes to frame 0)."""
    return read_stream(data).frame_bits()


def save_stream(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""
    atomic_write_bytes(path, data)


def load_stream(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
