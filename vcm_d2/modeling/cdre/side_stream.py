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
* cabac: lossless context-adaptive binary arithmetic coding. An integer range coder (32-bit
  range, byte-wise renormalisation with carry propagation) codes each bit with an adaptive
  probability per context; a context's probability is the Krichevsky-Trofimov estimate
  (n_b + 1/2) / (n_0 + n_1 + 1) from its counts, halved when they exceed ``COUNT_LIMIT`` so
  the model tracks changing statistics. Context = (channel, left bit, top bit, reference
  bit) where the reference is the same position in the previous frame (``prev`` for the
  first frame of a packet) or, in a first frame without ``prev``, the previous channel of
  the same frame. Out-of-map neighbours count as 0. Everything is integer arithmetic, so
  encoder and decoder are bit-exact on every platform.

Decoding validates magic, version, flags, sizes, CRC and the exact payload length, and
raises ValueError on any mismatch; every loop is bounded by the header's sizes, which are
themselves bounded by the payload length, so corrupt input can never hang the decoder.
Probabilities restart in every packet (a packet decodes on its own given ``prev``).
"""
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

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
_MAX_T, _MAX_C, _MAX_HW = 0xFFFF, 0xFF, 0xFFFF

# Range coder: 32-bit range, renormalise one byte at a time when it drops below 2^24.
_RANGE_INIT = 0xFFFFFFFF
_RANGE_TOP = 1 << 24
_LOW_MASK = 0xFFFFFFFF
_CODE_BYTES = 4  # bytes the decoder preloads (the encoder's always-zero first byte is dropped)
_FLUSH_SHIFTS = 5  # shifts that push out the pending cache byte and the 4 bytes of `low`
# Adaptive model: counts are 2*n + 1 (Krichevsky-Trofimov in integers), halved above the
# limit. total <= COUNT_LIMIT << 2^24 (the minimum range) keeps range // total >= 2^16, so
# both symbols always get a non-empty interval and rounding loses a negligible fraction.
COUNT_INIT = 1
COUNT_STEP = 2
COUNT_LIMIT = 1024
# A coded bit costs at least log2(total / (total - 1)) > 1 / total output bits, so a payload of
# L bytes holds fewer than 8 * L * COUNT_LIMIT bits: the bound that rejects absurd headers.
_MAX_BITS_PER_PAYLOAD_BYTE = 8 * (COUNT_LIMIT + COUNT_STEP)
# Reference states of the context: none, previous channel (0/1), previous frame (0/1).
_REF_NONE, _REF_CHANNEL, _REF_FRAME = 0, 1, 3
_NUM_REF_STATES = 5


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


# ------------------------------------------------------------------------- input checks
def _as_bits(y_hat: Union[torch.Tensor, np.ndarray], what: str) -> np.ndarray:
    a = y_hat.detach().cpu().numpy() if isinstance(y_hat, torch.Tensor) else np.asarray(y_hat)
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what} must contain only 0 and 1 (binarize() output)")
    return a.astype(np.uint8)


def _frames_of(y_hat) -> Tuple[np.ndarray, bool]:
    bits = _as_bits(y_hat, "y_hat")
    if bits.ndim == 3:
        bits, has_t = bits[None], False
    elif bits.ndim == 4:
        has_t = True
    else:
        raise ValueError(f"y_hat must be (T, C, h, w) or (C, h, w), got shape {bits.shape}")
    t, c, h, w = bits.shape
    for name, v, hi in (("T", t, _MAX_T), ("C", c, _MAX_C), ("h", h, _MAX_HW), ("w", w, _MAX_HW)):
        if not 1 <= v <= hi:
            raise ValueError(f"y_hat {name} = {v} outside the side-stream range [1, {hi}]")
    return bits, has_t


def _prev_of(prev, chw: Tuple[int, int, int]) -> Optional[np.ndarray]:
    if prev is None:
        return None
    p = _as_bits(prev, "prev")
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    if p.shape != tuple(chw):
        raise ValueError(f"prev must have shape {tuple(chw)} (one frame), got {p.shape}")
    return p


# ------------------------------------------------------------------------- contexts
def _context_base(c: int, ref: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Context index without the left bit (added in the coding loop): ((c*5 + ref)*2 + top)*2."""
    return ((c * _NUM_REF_STATES + ref) * 2 + top) * 2


def _reference_states(bits: np.ndarray, prev: Optional[np.ndarray]) -> np.ndarray:
    """Reference state per position of (T, C, h, w) ``bits`` (vectorised; encoder side)."""
    ref = np.empty(bits.shape, dtype=np.int64)
    if bits.shape[0] > 1:
        ref[1:] = _REF_FRAME + bits[:-1]
    if prev is not None:
        ref[0] = _REF_FRAME + prev
    else:
        ref[0, 0] = _REF_NONE
        ref[0, 1:] = _REF_CHANNEL + bits[0, :-1]
    return ref


def _frame_reference(t: int, c: int, decoded: np.ndarray, prev: Optional[np.ndarray]) -> np.ndarray:
    """Reference state of frame t, channel c from already decoded data (decoder side)."""
    if t > 0:
        return _REF_FRAME + decoded[t - 1, c].astype(np.int64)
    if prev is not None:
        return _REF_FRAME + prev[c].astype(np.int64)
    if c > 0:
        return _REF_CHANNEL + decoded[0, c - 1].astype(np.int64)
    return np.full(decoded.shape[-2:], _REF_NONE, dtype=np.int64)


def _num_contexts(channels: int) -> int:
    return channels * _NUM_REF_STATES * 4


# ------------------------------------------------------------------------- range coder
def _cabac_encode(bits: np.ndarray, prev: Optional[np.ndarray]) -> bytes:
    t, c, h, w = bits.shape
    ref = _reference_states(bits, prev)
    top = np.zeros_like(ref)
    top[..., 1:, :] = bits[..., :-1, :]
    left = np.zeros_like(ref)
    left[..., :, 1:] = bits[..., :, :-1]
    chan = np.arange(c, dtype=np.int64)[None, :, None, None]
    ctx = (_context_base(chan, ref, top) + left).ravel().tolist()
    n_ctx = _num_contexts(c)
    c0, c1 = [COUNT_INIT] * n_ctx, [COUNT_INIT] * n_ctx
    low, rng, cache, pending = 0, _RANGE_INIT, 0, 0
    out = bytearray()
    for bit, k in zip(bits.ravel().tolist(), ctx):
        a, b = c0[k], c1[k]
        bound = (rng // (a + b)) * a
        if bit:
            low += bound
            rng -= bound
            b += COUNT_STEP
        else:
            rng = bound
            a += COUNT_STEP
        if a + b > COUNT_LIMIT:
            a, b = (a + 1) >> 1, (b + 1) >> 1
        c0[k], c1[k] = a, b
        while rng < _RANGE_TOP:
            rng <<= 8
            # shift one byte of `low` out, resolving a pending carry (LZMA-style cache)
            if low < 0xFF000000 or low > _LOW_MASK:
                carry = low >> 32
                out.append((cache + carry) & 0xFF)
                if pending:
                    out.extend(bytes([(0xFF + carry) & 0xFF]) * pending)
                    pending = 0
                cache = (low >> 24) & 0xFF
            else:
                pending += 1
            low = (low & 0x00FFFFFF) << 8
    for _ in range(_FLUSH_SHIFTS):
        if low < 0xFF000000 or low > _LOW_MASK:
            carry = low >> 32
            out.append((cache + carry) & 0xFF)
            if pending:
                out.extend(bytes([(0xFF + carry) & 0xFF]) * pending)
                pending = 0
            cache = (low >> 24) & 0xFF
        else:
            pending += 1
        low = (low & 0x00FFFFFF) << 8
    if out[0] != 0:  # the interval never leaves [0, 2^32), so the first byte is always 0
        raise RuntimeError("range coder invariant violated: non-zero leading byte")
    return bytes(out[1:])


def _cabac_decode(payload: bytes, shape: Tuple[int, int, int, int], prev: Optional[np.ndarray]) -> np.ndarray:
    t, c, h, w = shape
    if len(payload) < _CODE_BYTES:
        raise ValueError(f"cabac payload of {len(payload)} bytes is shorter than the {_CODE_BYTES}-byte minimum")
    n_ctx = _num_contexts(c)
    c0, c1 = [COUNT_INIT] * n_ctx, [COUNT_INIT] * n_ctx
    code = int.from_bytes(payload[:_CODE_BYTES], "big")
    pos, end = _CODE_BYTES, len(payload)
    rng = _RANGE_INIT
    decoded = np.zeros(shape, dtype=np.uint8)
    zeros_row = np.zeros(w, dtype=np.int64)
    for ti in range(t):
        for ci in range(c):
            ref = _frame_reference(ti, ci, decoded, prev)
            plane = decoded[ti, ci]
            for r in range(h):
                top = plane[r - 1].astype(np.int64) if r else zeros_row
                base = _context_base(ci, ref[r], top).tolist()
                row = [0] * w
                left = 0
                for j in range(w):
                    k = base[j] + left
                    a, b = c0[k], c1[k]
                    bound = (rng // (a + b)) * a
                    if code < bound:
                        rng = bound
                        a += COUNT_STEP
                        left = 0
                    else:
                        code -= bound
                        rng -= bound
                        b += COUNT_STEP
                        left = 1
                    if a + b > COUNT_LIMIT:
                        a, b = (a + 1) >> 1, (b + 1) >> 1
                    c0[k], c1[k] = a, b
                    row[j] = left
                    while rng < _RANGE_TOP:
                        if pos >= end:
                            raise ValueError("cabac payload is truncated (decoder ran out of bytes)")
                        rng <<= 8
                        code = ((code << 8) | payload[pos]) & _LOW_MASK
                        pos += 1
                plane[r] = row
    if pos != end:
        raise ValueError(f"cabac payload has {end - pos} trailing byte(s): length mismatch")
    return decoded


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
    bits, has_t = _frames_of(y_hat)
    t, c, h, w = bits.shape
    prev_bits = _prev_of(prev, (c, h, w))
    raw = np.packbits(bits.ravel()).tobytes()
    flags = 0 if has_t else _FLAG_NO_TIME_AXIS
    payload = raw
    if mode == "cabac":
        coded = _cabac_encode(bits, prev_bits)
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
        if n > _MAX_BITS_PER_PAYLOAD_BYTE * len(payload):
            raise ValueError(
                f"header claims {n} bits but a cabac payload of {len(payload)} bytes holds at most "
                f"{_MAX_BITS_PER_PAYLOAD_BYTE * len(payload)}"
            )
        if header.uses_prev and prev is None:
            raise ValueError("this side stream was coded with the previous frame as context: pass prev")
        prev_bits = _prev_of(prev, shape4[1:]) if header.uses_prev else None
        bits = _cabac_decode(payload, shape4, prev_bits)
    out = torch.from_numpy(np.ascontiguousarray(bits)).to(dtype)
    return out if header.has_time_axis else out[0]
