"""Context-adaptive binary arithmetic coding ("cabac") of CDRE's binary maps, shared by the
image side stream (``side_stream.py``) and the video side stream (``video_side_stream.py``).

An integer range coder (32-bit range, byte-wise renormalisation with carry propagation) codes
each bit with an adaptive probability per context; a context's probability is the
Krichevsky-Trofimov estimate (n_b + 1/2) / (n_0 + n_1 + 1) from its counts, halved when they
exceed ``COUNT_LIMIT`` so the model tracks changing statistics. Context = (channel, left bit,
top bit, reference bit) where the reference is the same position in the previous frame
(``prev`` for the first frame of a packet) or, in a first frame without ``prev``, the previous
channel of the same frame. Out-of-map neighbours count as 0. Bits are coded in C order over
(T, C, h, w). Everything is integer arithmetic, so encoder and decoder are bit-exact on every
platform.

The probabilities (``ContextModel``) start fresh in every packet unless the caller passes a
model, which the coder then updates in place (the video side stream carries one model from
frame to frame of a video).

Termination. The full end (``short_end=False``, the image side stream) writes the 4 bytes of
the final ``low``, so the decoder consumes exactly the payload. The short end (the video side
stream, whose records carry their length) first moves ``low`` to the value of the final
interval [low, low + range) with the most trailing zero bits, then drops the payload's trailing
zero bytes; the decoder reads zeros past the end. Since range >= 2^24 after renormalisation,
at most one byte of the final value remains (none when the value is 0 or 2^32 -- an all-zero
map codes to 0 bytes), against 4: a frame of 96 bits (6 x 4 x 4, 128-px frames) saves up to
24 bits.
"""
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "ContextModel",
    "cabac_encode",
    "cabac_decode",
    "max_coded_bits",
    "bit_frames",
    "bit_prev",
    "MAX_T",
    "MAX_C",
    "MAX_HW",
]

MAX_T, MAX_C, MAX_HW = 0xFFFF, 0xFF, 0xFFFF

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


def max_coded_bits(payload_bytes: int) -> int:
    """Upper bound of the bits a cabac payload of ``payload_bytes`` bytes can hold."""
    return _MAX_BITS_PER_PAYLOAD_BYTE * payload_bytes


# ------------------------------------------------------------------------- input checks
def _as_bits(y_hat: Union[torch.Tensor, np.ndarray], what: str) -> np.ndarray:
    a = y_hat.detach().cpu().numpy() if isinstance(y_hat, torch.Tensor) else np.asarray(y_hat)
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what} must contain only 0 and 1 (binarize() output)")
    return a.astype(np.uint8)


def bit_frames(y_hat) -> Tuple[np.ndarray, bool]:
    """(T, C, h, w) uint8 bits of a (T, C, h, w) or (C, h, w) 0/1 map, and whether it had T."""
    bits = _as_bits(y_hat, "y_hat")
    if bits.ndim == 3:
        bits, has_t = bits[None], False
    elif bits.ndim == 4:
        has_t = True
    else:
        raise ValueError(f"y_hat must be (T, C, h, w) or (C, h, w), got shape {bits.shape}")
    t, c, h, w = bits.shape
    for name, v, hi in (("T", t, MAX_T), ("C", c, MAX_C), ("h", h, MAX_HW), ("w", w, MAX_HW)):
        if not 1 <= v <= hi:
            raise ValueError(f"y_hat {name} = {v} outside the side-stream range [1, {hi}]")
    return bits, has_t


def bit_prev(prev, chw: Tuple[int, int, int]) -> Optional[np.ndarray]:
    """The previous frame's (C, h, w) bits (or None), checked against the frame shape ``chw``."""
    if prev is None:
        return None
    p = _as_bits(prev, "prev")
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    if p.shape != tuple(chw):
        raise ValueError(f"prev must have shape {tuple(chw)} (one frame), got {p.shape}")
    return p


# ------------------------------------------------------------------------- contexts
class ContextModel:
    """Adaptive counts of every context of a ``channels``-channel map (fresh: all equal)."""

    def __init__(self, channels: int):
        n = channels * _NUM_REF_STATES * 4
        self.channels = int(channels)
        self.c0 = [COUNT_INIT] * n
        self.c1 = [COUNT_INIT] * n

    def copy(self) -> "ContextModel":
        out = ContextModel.__new__(ContextModel)
        out.channels, out.c0, out.c1 = self.channels, list(self.c0), list(self.c1)
        return out


def _model_for(model: Optional[ContextModel], channels: int) -> ContextModel:
    if model is None:
        return ContextModel(channels)
    if model.channels != channels:
        raise ValueError(f"context model of {model.channels} channels for a {channels}-channel map")
    return model


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


# ------------------------------------------------------------------------- range coder
def _short_end_value(low: int, rng: int) -> int:
    """The value in [low, low + rng) with the most trailing zero bits (multiples of a byte)."""
    for shift in (32, 24, 16, 8):
        x = -(-low >> shift) << shift  # low rounded up to a multiple of 2^shift
        if x < low + rng:
            return x
    return low


def _shift_low(low: int, cache: int, pending: int, out: bytearray) -> Tuple[int, int, int]:
    """Shift the top byte of ``low`` out, resolving a pending carry (LZMA-style cache and run
    of 0xFF bytes); returns the new (low, cache, pending)."""
    if low < 0xFF000000 or low > _LOW_MASK:
        carry = low >> 32
        out.append((cache + carry) & 0xFF)
        if pending:
            out.extend(bytes([(0xFF + carry) & 0xFF]) * pending)
            pending = 0
        cache = (low >> 24) & 0xFF
    else:
        pending += 1
    return (low & 0x00FFFFFF) << 8, cache, pending


def cabac_encode(
    bits: np.ndarray,
    prev: Optional[np.ndarray],
    model: Optional[ContextModel] = None,
    short_end: bool = False,
) -> bytes:
    """Payload of (T, C, h, w) uint8 ``bits``; ``prev``: (C, h, w) reference of the first frame
    or None; ``model``: the probabilities to start from (updated in place), None: fresh;
    ``short_end``: the short termination (module docstring)."""
    t, c, h, w = bits.shape
    model = _model_for(model, c)
    ref = _reference_states(bits, prev)
    top = np.zeros_like(ref)
    top[..., 1:, :] = bits[..., :-1, :]
    left = np.zeros_like(ref)
    left[..., :, 1:] = bits[..., :, :-1]
    chan = np.arange(c, dtype=np.int64)[None, :, None, None]
    ctx = (_context_base(chan, ref, top) + left).ravel().tolist()
    c0, c1 = model.c0, model.c1
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
            low, cache, pending = _shift_low(low, cache, pending, out)
    if short_end:
        low = _short_end_value(low, rng)
    for _ in range(_FLUSH_SHIFTS):
        low, cache, pending = _shift_low(low, cache, pending, out)
    if out[0] != 0:  # the interval never leaves [0, 2^32), so the first byte is always 0
        raise RuntimeError("range coder invariant violated: non-zero leading byte")
    out = bytes(out[1:])
    return out.rstrip(b"\0") if short_end else out


def cabac_decode(
    payload: bytes,
    shape: Tuple[int, int, int, int],
    prev: Optional[np.ndarray],
    model: Optional[ContextModel] = None,
    short_end: bool = False,
) -> np.ndarray:
    """Inverse of ``cabac_encode`` (same ``prev``, starting ``model`` and ``short_end``):
    (T, C, h, w) uint8. Raises ValueError when the payload is too short, has bytes left over or
    (short end) ends with a zero byte. Every loop is bounded by ``shape``: zeros read past the
    end of a short-end payload cannot make it run longer."""
    t, c, h, w = shape
    if short_end:
        if payload[-1:] == b"\0":
            raise ValueError("short-end cabac payload ends with a zero byte (the encoder drops those)")
    elif len(payload) < _CODE_BYTES:
        raise ValueError(f"cabac payload of {len(payload)} bytes is shorter than the {_CODE_BYTES}-byte minimum")
    model = _model_for(model, c)
    c0, c1 = model.c0, model.c1
    code = int.from_bytes(bytes(payload[:_CODE_BYTES]).ljust(_CODE_BYTES, b"\0"), "big")
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
                        rng <<= 8
                        if pos < end:
                            code = ((code << 8) | payload[pos]) & _LOW_MASK
                        elif short_end:  # zeros past the end
                            code = (code << 8) & _LOW_MASK
                        else:
                            raise ValueError("cabac payload is truncated (decoder ran out of bytes)")
                        pos += 1
                plane[r] = row
    if pos < end:
        raise ValueError(f"cabac payload has {end - pos} trailing byte(s): length mismatch")
    return decoded
