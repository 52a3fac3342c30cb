"""CDRE side bitstreams (image and video formats): exact round trips, headers, sizes and
per-frame bits, compression, error handling, and the per-video sessions of an evaluation."""
import struct
import zlib

import numpy as np
import pytest
import torch

from vcm_d2.modeling.cdre import binarize
from vcm_d2.modeling.cdre.binary_coder import ContextModel, cabac_decode, cabac_encode
from vcm_d2.modeling.cdre.side_stream import (
    HEADER_BYTES,
    decode_side_stream,
    encode_side_stream,
    parse_side_stream_header,
    side_stream_bits,
)
from vcm_d2.modeling.cdre.video_side_stream import (
    RECORD_CHECK_BYTES,
    VIDEO_HEADER_BYTES,
    VIDEO_MAGIC,
    SideStreamSessions,
    VideoSideStreamDecoder,
    VideoSideStreamEncoder,
    encode_video_side_stream,
    read_video_side_stream,
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


# ---------------------------------------------------------------------------- image format frozen
# Streams written by the first version of side_stream.py: the image format stays readable and
# byte-identical (the video stream is a separate format).
GOLDEN_BITS = (np.arange(120).reshape(2, 3, 4, 5) * 7 % 5 < 2).astype(np.uint8)
GOLDEN_PREV = (np.arange(60).reshape(3, 4, 5) % 3 == 0).astype(np.uint8)
GOLDEN_STREAMS = [
    ((GOLDEN_BITS, "raw"), "43440100000203000400052123d89b94a5294a5294a5294a5294a5294a52"),
    ((GOLDEN_BITS, "cabac"), "434401010002030004000527b81d368b6fca506c2536edf642"),
    ((GOLDEN_BITS[1], "cabac"), "4344011100010300040005322e78348b6fca40e067bf"),
    ((GOLDEN_BITS[1:], "cabac", GOLDEN_PREV), "4344010400010300040005f3d6d58c94a5294a5294a520"),
]


@pytest.mark.parametrize("args, stream", GOLDEN_STREAMS, ids=["raw", "cabac", "cabac_chw", "cabac_prev"])
def test_image_stream_format_is_unchanged(args, stream):
    data = bytes.fromhex(stream)
    assert encode_side_stream(*args) == data
    prev = args[2] if len(args) > 2 else None
    assert np.array_equal(decode_side_stream(data, prev=prev).numpy(), args[0])


# ---------------------------------------------------------------------------- video side stream
def _frame_records(data: bytes, frame_bits):
    ends = np.cumsum([b // 8 for b in frame_bits])
    return [data[s:e] for s, e in zip([0, *ends[:-1]], ends)]


@pytest.mark.parametrize("mode", ["raw", "cabac"])
@pytest.mark.parametrize("shape", [(12, 6, 4, 4), (3, 6, 23, 40), (1, 1, 1, 1), (4, 2, 3, 5)])
def test_video_stream_round_trip_and_exact_frame_bits(mode, shape):
    maps = _correlated_maps(*shape, seed=2)
    data = encode_video_side_stream(maps, mode)
    parsed = read_video_side_stream(data, num_frames=shape[0])
    assert parsed.header.mode == mode and parsed.header.frame_shape == shape[1:]
    assert np.array_equal(parsed.maps.numpy().astype(np.uint8), maps)
    assert sum(parsed.frame_bits) == 8 * len(data)
    # frame by frame: the frames' bytes are the stream's, the header travels with frame 0
    encoder, decoder = VideoSideStreamEncoder(mode), VideoSideStreamDecoder()
    chunks = [encoder.encode(torch.from_numpy(m).float()) for m in maps]
    assert b"".join(chunks) == data and [8 * len(c) for c in chunks] == parsed.frame_bits
    assert chunks[0][:2] == VIDEO_MAGIC
    for chunk, m in zip(chunks, maps):
        assert np.array_equal(decoder.decode(chunk).numpy(), m)


def test_video_stream_sizes_at_128px():
    """6 x 4 x 4 maps (128-px frames): raw records are the 12 payload bytes plus the check, and
    the 13-byte header is paid once, by frame 0 (an image stream pays 15 bytes every frame)."""
    maps = np.random.RandomState(0).randint(0, 2, (12, 6, 4, 4)).astype(np.uint8)
    raw = read_video_side_stream(encode_video_side_stream(maps, "raw"))
    record = 12 + RECORD_CHECK_BYTES
    assert raw.frame_bits == [8 * (VIDEO_HEADER_BYTES + record)] + [8 * record] * 11
    image = [side_stream_bits(encode_side_stream(m, "raw")) for m in maps]
    assert image == [8 * (HEADER_BYTES + 12)] * 12 and sum(raw.frame_bits) < 0.6 * sum(image)
    # i.i.d. bits: cabac stores every frame raw, behind a one-byte length field
    cabac = read_video_side_stream(encode_video_side_stream(maps, "cabac"))
    assert cabac.frame_bits == [b + 8 for b in raw.frame_bits]


def test_video_cabac_uses_the_previous_frame_and_the_stream_so_far():
    maps = _correlated_maps(12, 6, 4, 4, rho=0.99, seed=4)
    video = len(encode_video_side_stream(maps, "cabac"))
    image = sum(len(encode_side_stream(m, "cabac")) for m in maps)
    raw = len(encode_video_side_stream(maps, "raw"))
    assert video < raw and video < 0.45 * image
    constant = np.zeros((5, 6, 23, 40), dtype=np.uint8)  # an all-zero map codes to 0 bytes
    parsed = read_video_side_stream(encode_video_side_stream(constant, "cabac"))
    assert parsed.frame_bits[1:] == [8 * (1 + RECORD_CHECK_BYTES)] * 4
    assert not parsed.maps.any()


def test_short_end_cabac_round_trips_with_a_carried_model():
    rs = np.random.RandomState(5)
    for _ in range(200):
        c, h, w = rs.randint(1, 7, size=3)
        bits = (rs.rand(1, c, h, w) < rs.choice([0.0, 0.05, 0.5, 0.97, 1.0])).astype(np.uint8)
        prev = (rs.rand(c, h, w) < 0.5).astype(np.uint8) if rs.rand() < 0.5 else None
        model = ContextModel(c)
        model.c0 = list(2 * rs.randint(0, 200, len(model.c0)) + 1)
        enc, dec = model.copy(), model.copy()
        data = cabac_encode(bits, prev, enc, short_end=True)
        assert not data.endswith(b"\0")
        assert np.array_equal(cabac_decode(data, bits.shape, prev, dec, short_end=True), bits)
        assert (enc.c0, enc.c1) == (dec.c0, dec.c1)


@pytest.mark.parametrize("mode", ["raw", "cabac"])
def test_video_stream_every_corrupt_byte_raises(mode):
    data = encode_video_side_stream(_correlated_maps(3, 6, 3, 4, seed=6), mode)
    for pos in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= flip
            with pytest.raises(ValueError):
                read_video_side_stream(bytes(bad), num_frames=3)


@pytest.mark.parametrize("mode", ["raw", "cabac"])
def test_video_stream_truncation_and_record_order(mode):
    maps = _correlated_maps(3, 6, 3, 4, seed=7)
    data = encode_video_side_stream(maps, mode)
    bits = read_video_side_stream(data).frame_bits
    boundaries = set(np.cumsum([b // 8 for b in bits]).tolist())
    for n in range(len(data)):
        if n in boundaries:  # a shorter valid stream: only a known count tells
            with pytest.raises(ValueError, match="expected 3"):
                read_video_side_stream(data[:n], num_frames=3)
        else:
            with pytest.raises(ValueError, match="truncated|check mismatch|header"):
                read_video_side_stream(data[:n])
    head, r0, r1, r2 = data[:VIDEO_HEADER_BYTES], *_frame_records(data, bits)
    r0 = r0[VIDEO_HEADER_BYTES:]
    for order in ([r0, r2, r1], [r0, r2], [r1, r0, r2], [r0, r0, r1]):
        with pytest.raises(ValueError, match="check mismatch"):
            read_video_side_stream(head + b"".join(order))
    decoder = VideoSideStreamDecoder()
    with pytest.raises(ValueError, match="length mismatch"):
        decoder.decode(head + r0 + b"\0")


def test_video_stream_header_errors():
    data = encode_video_side_stream(_correlated_maps(2, 6, 3, 4), "cabac")
    with pytest.raises(ValueError, match="image side stream"):
        VideoSideStreamDecoder().decode(encode_side_stream(_correlated_maps(1, 6, 3, 4)[0]))
    with pytest.raises(ValueError, match="unsupported video side-stream version"):
        read_video_side_stream(data[:2] + bytes([9]) + data[3:])
    with pytest.raises(ValueError, match="shorter than its 13-byte header"):
        read_video_side_stream(data[:5])
    with pytest.raises(ValueError, match="exceeds"):
        encode_video_side_stream(np.zeros((1, 255, 129, 129), dtype=np.uint8))
    encoder = VideoSideStreamEncoder("raw")
    encoder.encode(np.zeros((6, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="start a new stream"):
        encoder.encode(np.zeros((6, 3, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown side-stream mode"):
        VideoSideStreamEncoder("zip")


# ---------------------------------------------------------------------------- sessions
def _session_run(sessions, frames):
    return [sessions.encode(m, vid, idx) for vid, idx, m in frames]


def test_sessions_open_a_stream_per_video_and_both_ends_agree(caplog):
    maps = _correlated_maps(5, 6, 3, 4, seed=8)
    frames = [("a", 0, maps[0]), ("b", 0, maps[1]), ("a", 1, maps[2]), ("b", 3, maps[3]),
              ("a", 1, maps[4]), ("c", None, maps[0]), (None, 2, maps[1])]
    sender, receiver = SideStreamSessions("cabac"), SideStreamSessions("cabac")
    with caplog.at_level("WARNING"):
        chunks = _session_run(sender, frames)
    # new streams: each video's first frame, and video a again after a repeated frame_idx
    starts = [c[:2] == VIDEO_MAGIC for c in chunks[:5]]
    assert starts == [True, True, False, False, True] and "follows frame_idx 1" in caplog.text
    # frames without video_id or frame_idx keep self-contained image streams
    assert all(parse_side_stream_header(c).shape == (6, 3, 4) for c in chunks[5:])
    for (vid, idx, m), chunk in zip(frames, chunks):
        assert np.array_equal(receiver.decode(chunk, m.shape, vid, idx).numpy(), m)
    # per-image sessions code every frame alone
    per_image = _session_run(SideStreamSessions("cabac", per_video=False), frames)
    assert per_image == [encode_side_stream(m, "cabac") for _, _, m in frames]


def test_sessions_close_the_least_recently_used_stream():
    maps = _correlated_maps(3, 6, 3, 4, seed=9)
    sessions = SideStreamSessions("raw", max_open=1)
    chunks = _session_run(sessions, [("a", 0, maps[0]), ("b", 0, maps[1]), ("a", 1, maps[2])])
    assert all(c[:2] == VIDEO_MAGIC for c in chunks)  # a was closed by b: it restarts
    sessions.reset()
    assert sessions.encode(maps[0], "b", 1)[:2] == VIDEO_MAGIC


def test_receiver_session_rejects_a_broken_stream_and_recovers():
    maps = _correlated_maps(3, 6, 3, 4, seed=10)
    chunks = _session_run(SideStreamSessions("cabac"), [("v", i, m) for i, m in enumerate(maps)])
    receiver = SideStreamSessions("cabac")
    receiver.decode(chunks[0], maps[0].shape, "v", 0)
    with pytest.raises(ValueError, match="check mismatch"):
        receiver.decode(chunks[2], maps[2].shape, "v", 2)  # frame 1 was lost
    with pytest.raises(ValueError, match="bad magic"):  # the broken stream is closed
        receiver.decode(chunks[2], maps[2].shape, "v", 3)
