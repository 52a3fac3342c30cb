"""Side bitstream carrying CDRE's binary distortion representation y_hat (real bytes).

Layout (big-endian)::

    magic "CD" | version u8 | flags u8 | T u16 | C u8 | h u16 | w u16 | crc32 u32 | payload

``flags``: bits 0-1 coding mode (0 raw, 1 cabac); bit 2 "fallback" (cabac was requested but
raw was smaller, so raw is stored); bit 3 the first frame used ``prev`` as context; bit 4 the
map had no time axis ((C, h, w) instead of (T, C, h, w)). The CRC32 covers every byte of the
stream except itself (header fields and payload).

Payloads (bits in C order over (T, C, h, w)):

* raw: ``numpy.packbits``, ceil(T*C*h*w / 8) bytes -- 6 bits per 32x32 block with the
  default 6-channel latent (720p30: 6*23*40*30/8 = 20.7 KB/s, the paper's "about 20KBps").
* cabac: lossless context-adaptive binary arithmetic coding (``binary_coder.py``), the first
  frame with ``prev`` (the previous frame) as context when the encoder was given one.

Decoding validates magic, version, flags, sizes, CRC and the exact payload length, and
raises ValueError on any mismatch; every loop is bounded by the header's sizes, which are
themselves bounded by the payload length, so corrupt input can never hang the decoder.
Probabilities restart in every packet (a packet decodes on its own given ``prev``).

This is the self-contained stream of one image (or of a packet of frames); the frames of a
video evaluated in order share one header instead (``video_side_stream.py``).
"""
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .binary_coder import bit_frames, bit_prev, cabac_decode, cabac_encode, max_coded_bits

__all__ = [
    "encode_side_stream",
    "decode_side_stream",
    "parse_side_stream_header",
    "side_stream_bits",
    "SideStreamHeader",
    "SIDE_STREAM_MODES",
    "HEADER_BYTES",
]

MAGIC = b"CD"
VERSION = 1
SIDE_STREAM_MODES = ("raw", "cabac")
_MODE_CODES = {"raw": 0, "cabac": 1}
_FLAG_MODE_MASK = 0x03
_FLAG_FALLBACK = 0x04
_FLAG_USES_PREV = 0x08
_FLAG_NO_TIME_AXIS = 0x10
_FLAG_KNOWN = _FLAG_MODE_MASK | _FLAG_FALLBACK | _FLAG_USES_PREV | _FLAG_NO_TIME_AXIS

_HEADER = struct.Struct(">2sBBHBHHI")
HEADER_BYTES = _HEADER.size  # 15
_CRC_OFFSET = HEADER_BYTES - 4


@dataclass(frozen=True)
class SideStreamHeader:
    version: int
    mode: str  # coding actually used for the payload: "raw" or "cabac"
    fallback: bool  # cabac was requested but raw was stored because it was not larger
    uses_prev: bool  # the first frame was coded with the previous frame as context
    has_time_axis: bool  # the map was (T, C, h, w); False: (C, h, w) with T == 1
    frames: int
    channels: int
    height: int
    width: int
    crc32: int

    @property
    def shape(self) -> Tuple[int, ...]:
        full = (self.frames, self.channels, self.height, self.width)
        return full if self.has_time_axis else full[1:]

    @property
    def num_bits(self) -> int:
        return self.frames * self.channels * self.height * self.width


def side_stream_bits(data: bytes) -> int:
    """Bits of a side stream as transmitted, header included."""
    return 8 * len(data)


# ------------------------------------------------------------------------- public API
def encode_side_stream(
    y_hat: Union[torch.Tensor, np.ndarray],
    mode: str = "cabac",
    prev: Optional[Union[torch.Tensor, np.ndarray]] = None,
) -> bytes:
    """Code a binary map (T, C, h, w) or (C, h, w) of 0/1 into a self-contained byte string.

    mode: "raw" (packed bits) or "cabac" (context-adaptive arithmetic coding; stored as raw
    with the fallback flag when that is not larger). prev: the previous frame's map (C, h, w),
    used by cabac as context for the first frame; the decoder must get the same ``prev``.
    """
    if mode not in _MODE_CODES:
        raise ValueError(f"unknown side-stream mode {mode!r}; expected one of {SIDE_STREAM_MODES}")
    bits, has_t = bit_frames(y_hat)
    t, c, h, w = bits.shape
    prev_bits = bit_prev(prev, (c, h, w))
    raw = np.packbits(bits.ravel()).tobytes()
    flags = 0 if has_t else _FLAG_NO_TIME_AXIS
    payload = raw
    if mode == "cabac":
        coded = cabac_encode(bits, prev_bits)
        if len(coded) < len(raw):
            payload = coded
            flags |= _MODE_CODES["cabac"]
            if prev_bits is not None:
                flags |= _FLAG_USES_PREV
        else:
            flags |= _FLAG_FALLBACK
    head = _HEADER.pack(MAGIC, VERSION, flags, t, c, h, w, 0)[:_CRC_OFFSET]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack(">I", crc) + payload


def parse_side_stream_header(data: bytes) -> SideStreamHeader:
    """Parse and validate the header (not the CRC, which needs the payload: see decode)."""
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise ValueError(f"side stream of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    magic, version, flags, t, c, h, w, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}: not a CDRE side stream (expected {MAGIC!r})")
    if version != VERSION:
        raise ValueError(f"unsupported side-stream version {version} (this decoder reads {VERSION})")
    if flags & ~_FLAG_KNOWN:
        raise ValueError(f"unknown side-stream flags 0x{flags:02x}")
    mode_code = flags & _FLAG_MODE_MASK
    modes = {v: k for k, v in _MODE_CODES.items()}
    if mode_code not in modes:
        raise ValueError(f"unknown side-stream coding mode {mode_code}")
    if min(t, c, h, w) < 1:
        raise ValueError(f"side-stream header has an empty dimension (T, C, h, w) = {(t, c, h, w)}")
    has_t = not flags & _FLAG_NO_TIME_AXIS
    if not has_t and t != 1:
        raise ValueError(f"side-stream header without time axis has T = {t}")
    return SideStreamHeader(
        version=version,
        mode=modes[mode_code],
        fallback=bool(flags & _FLAG_FALLBACK),
        uses_prev=bool(flags & _FLAG_USES_PREV),
        has_time_axis=has_t,
        frames=t,
        channels=c,
        height=h,
        width=w,
        crc32=crc,
    )


def decode_side_stream(
    data: bytes,
    prev: Optional[Union[torch.Tensor, np.ndarray]] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of ``encode_side_stream``: the exact 0/1 map, shaped as it was encoded.

    prev: the same previous-frame map the encoder got (required iff the header says so;
    ignored otherwise). Raises ValueError on any corrupt, truncated or inconsistent input.
    """
    data = bytes(data)
    header = parse_side_stream_header(data)
    payload = data[HEADER_BYTES:]
    crc = zlib.crc32(payload, zlib.crc32(data[:_CRC_OFFSET]))
    if crc != header.crc32:
        raise ValueError(
            f"side-stream CRC mismatch (stored 0x{header.crc32:08x}, computed 0x{crc:08x}): "
            "corrupt or truncated data"
        )
    shape4 = (header.frames, header.channels, header.height, header.width)
    n = header.num_bits
    if header.mode == "raw":
        expected = (n + 7) // 8
        if len(payload) != expected:
            raise ValueError(f"raw payload has {len(payload)} bytes, header needs {expected}: length mismatch")
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        if bits[n:].any():
            raise ValueError("raw payload has non-zero padding bits")
        bits = bits[:n].reshape(shape4)
    else:
        if n > max_coded_bits(len(payload)):
            raise ValueError(
                f"header claims {n} bits but a cabac payload of {len(payload)} bytes holds at most "
                f"{max_coded_bits(len(payload))}"
            )
        if header.uses_prev and prev is None:
            raise ValueError("this side stream was coded with the previous frame as context: pass prev")
        prev_bits = bit_prev(prev, shape4[1:]) if header.uses_prev else None
        bits = cabac_decode(payload, shape4, prev_bits)
    out = torch.from_numpy(np.ascontiguousarray(bits)).to(dtype)
    return out if header.has_time_axis else out[0]
