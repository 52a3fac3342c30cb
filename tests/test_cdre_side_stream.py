"""CDRE side bitstream: exact round trips, header, sizes, compression and error handling."""
import struct
import zlib

import numpy as np
import pytest
import torch

from vcm_d2.modeling.cdre import binarize
from vcm_d2.modeling.cdre.side_stream import (
    HEADER_BYTES,
    decode_side_stream,
    encode_side_stream,
    parse_side_stream_header,
    side_stream_bits,
)


def _correlated_maps(t, c, h, w, seed=0, rho=0.95, smooth=5):
    """0/1 maps from thresholding a spatially smooth, temporally AR(1) random field."""
    rs = np.random.RandomState(seed)
    k = np.ones(smooth) / smooth

    def smooth_noise():
        n = rs.randn(c, h + smooth, w + smooth)
        n = np.apply_along_axis(np.convolve, 1, n, k, mode="valid")
        n = np.apply_along_axis(np.convolve, 2, n, k, mode="valid")
        return n[:, :h, :w]

    f, frames = smooth_noise(), []
    for _ in range(t):
        frames.append(f > 0)
        f = rho * f + np.sqrt(1 - rho**2) * smooth_noise()
    return np.stack(frames).astype(np.uint8)


def _recrc(data: bytes) -> bytes:
    """Recompute the CRC of a (tampered) stream so the decoder's deeper checks are reached."""
    crc = zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[: HEADER_BYTES - 4]))
    return data[: HEADER_BYTES - 4] + struct.pack(">I", crc) + data[HEADER_BYTES:]


@pytest.mark.parametrize("mode", ["raw", "cabac"])
@pytest.mark.parametrize("shape", [(3, 6, 5, 7), (1, 1, 1, 1), (2, 6, 3, 2)])
def test_round_trip_multi_frame(mode, shape):
    bits = _correlated_maps(*shape, seed=1)
    data = encode_side_stream(bits, mode)
    out = decode_side_stream(data)
    assert out.dtype == torch.float32 and tuple(out.shape) == shape
    assert np.array_equal(out.numpy().astype(np.uint8), bits)


@pytest.mark.parametrize("mode", ["raw", "cabac"])
def test_round_trip_single_frame_tensor_from_binarize(mode):
    y_hat = binarize(torch.randn(6, 4, 9))
    data = encode_side_stream(y_hat, mode)
    header = parse_side_stream_header(data)
    assert header.shape == (6, 4, 9) and not header.has_time_axis and header.frames == 1
    assert torch.equal(decode_side_stream(data), y_hat)


@pytest.mark.parametrize("fill", [0, 1])
def test_constant_maps_compress_to_almost_nothing(fill):
    bits = np.full((4, 6, 23, 40), fill, dtype=np.uint8)
    data = encode_side_stream(bits, "cabac")
    assert parse_side_stream_header(data).mode == "cabac"
    raw_payload = bits.size // 8
    assert len(data) - HEADER_BYTES < 0.02 * raw_payload
    assert np.array_equal(decode_side_stream(data).numpy(), bits)


def test_header_fields():
    bits = _correlated_maps(3, 6, 23, 40)
    h = parse_side_stream_header(encode_side_stream(bits, "cabac"))
    assert (h.version, h.mode, h.fallback, h.uses_prev, h.has_time_axis) == (1, "cabac", False, False, True)
    assert (h.frames, h.channels, h.height, h.width) == (3, 6, 23, 40) and h.num_bits == 3 * 6 * 23 * 40
    h = parse_side_stream_header(encode_side_stream(bits, "raw"))
    assert (h.mode, h.fallback) == ("raw", False)


@pytest.mark.parametrize("shape", [(1, 3, 3, 3), (2, 6, 23, 40), (1, 6, 1, 1)])
def test_raw_size_is_header_plus_packed_bits(shape):
    data = encode_side_stream(np.ones(shape, dtype=np.uint8), "raw")
    assert len(data) == HEADER_BYTES + -(-int(np.prod(shape)) // 8)
    assert side_stream_bits(data) == 8 * len(data)


def test_cabac_beats_raw_on_correlated_maps():
    bits = _correlated_maps(8, 6, 23, 40)
    raw = encode_side_stream(bits, "raw")
    cabac = encode_side_stream(bits, "cabac")
    assert len(cabac) <= 0.6 * len(raw)
    single = _correlated_maps(1, 6, 23, 40)
    assert len(encode_side_stream(single, "cabac")) <= 0.75 * len(encode_side_stream(single, "raw"))


def test_iid_bits_fall_back_to_raw():
    bits = np.random.RandomState(3).randint(0, 2, (2, 6, 23, 40)).astype(np.uint8)
    raw = encode_side_stream(bits, "raw")
    data = encode_side_stream(bits, "cabac")
    h = parse_side_stream_header(data)
    assert (h.mode, h.fallback) == ("raw", True)
    assert len(data) == len(raw)
    assert np.array_equal(decode_side_stream(data).numpy(), bits)


def test_previous_frame_context():
    maps = _correlated_maps(2, 6, 23, 40, rho=0.99)
    prev, cur = maps[0], maps[1:]
    with_prev = encode_side_stream(cur, "cabac", prev=prev)
    without = encode_side_stream(cur, "cabac")
    assert parse_side_stream_header(with_prev).uses_prev
    assert len(with_prev) < len(without)
    assert np.array_equal(decode_side_stream(with_prev, prev=torch.from_numpy(prev)).numpy(), cur)
    with pytest.raises(ValueError, match="pass prev"):
        decode_side_stream(with_prev)
    with pytest.raises(ValueError, match="prev must have shape"):
        decode_side_stream(with_prev, prev=prev[:, :-1])
    # a stream that did not use prev ignores one given to the decoder
    assert np.array_equal(decode_side_stream(without, prev=prev).numpy(), cur)


@pytest.mark.parametrize("mode", ["raw", "cabac"])
def test_corrupted_payload_byte_raises(mode):
    data = bytearray(encode_side_stream(_correlated_maps(2, 6, 8, 10), mode))
    for pos in (HEADER_BYTES, len(data) // 2 + HEADER_BYTES // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(ValueError, match="CRC mismatch"):
            decode_side_stream(bytes(bad))


@pytest.mark.parametrize("mode", ["raw", "cabac"])
def test_truncation_raises(mode):
    data = encode_side_stream(_correlated_maps(2, 6, 8, 10), mode)
    for n in (0, 1, HEADER_BYTES - 1, HEADER_BYTES, len(data) - 1):
        with pytest.raises(ValueError):
            decode_side_stream(data[:n])


def test_header_errors():
    data = encode_side_stream(_correlated_maps(1, 6, 8, 10), "cabac")
    with pytest.raises(ValueError, match="bad magic"):
        decode_side_stream(b"XX" + data[2:])
    with pytest.raises(ValueError, match="unsupported side-stream version"):
        decode_side_stream(data[:2] + bytes([9]) + data[3:])
    with pytest.raises(ValueError, match="unknown side-stream flags"):
        decode_side_stream(_recrc(data[:3] + bytes([data[3] | 0x80]) + data[4:]))
    tampered_height = data[:9] + struct.pack(">H", 9) + data[11:]
    with pytest.raises(ValueError, match="CRC mismatch"):
        decode_side_stream(tampered_height)


def test_length_mismatch_behind_a_valid_crc():
    raw = encode_side_stream(_correlated_maps(1, 6, 8, 10), "raw")
    with pytest.raises(ValueError, match="length mismatch"):
        decode_side_stream(_recrc(raw + b"\x00"))
    cabac = encode_side_stream(_correlated_maps(1, 6, 8, 10), "cabac")
    assert parse_side_stream_header(cabac).mode == "cabac"
    with pytest.raises(ValueError, match="length mismatch"):
        decode_side_stream(_recrc(cabac + b"\x00"))
    with pytest.raises(ValueError, match="truncated"):
        decode_side_stream(_recrc(cabac[:-2]))
    # a header claiming a huge map over a tiny payload is rejected before any decoding loop
    huge = cabac[:4] + struct.pack(">HBHH", 0xFFFF, 255, 0xFFFF, 0xFFFF) + cabac[11:]
    with pytest.raises(ValueError, match="holds at most"):
        decode_side_stream(_recrc(huge))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="only 0 and 1"):
        encode_side_stream(torch.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match=r"\(T, C, h, w\)"):
        encode_side_stream(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="outside the side-stream range"):
        encode_side_stream(np.zeros((1, 256, 1, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown side-stream mode"):
        encode_side_stream(np.zeros((1, 1, 1), dtype=np.uint8), "zip")
