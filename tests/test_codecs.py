"""Tests of vcm_d2.codecs: real bitstreams, exact bit accounting, round trips, bad input."""
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.reformatter import Interpolation

from vcm_d2.codecs import CODEC_REGISTRY, Codec, CodedSequence, available_codecs, build_codec
from vcm_d2.codecs import annexb, vvc, yuv
from vcm_d2.codecs.pyav_codecs import open_encoder_context

H, W = 48, 64
# The codecs' RGB -> YUV conversion (vcm_d2/codecs/yuv.py), spelled out independently.
RGB_TO_YUV = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
ALL_CODECS = {
    "x264", "x265", "h264_intra", "h265_intra", "jpeg", "jpeg2000", "vvc",
    "cheng2020_anchor", "bmshj2018_hyperprior",
}  # fmt: skip
# name -> (constructor kwargs, high-quality setting, low-quality setting)
CLASSICAL = {
    "x264": ({"gop": 3}, 12, 40),
    "x265": ({"gop": 3}, 12, 40),
    "h264_intra": ({}, 12, 40),
    "h265_intra": ({}, 12, 40),
    "jpeg": ({}, 95, 10),
    "jpeg2000": ({}, 4, 80),
    "vvc": ({"gop": 3}, 12, 45),
}
PSNR_FLOOR_DB = 35.0  # at the high-quality setting, on the smooth synthetic frames


def _has_vvenc() -> bool:
    caps = vvc.ffmpeg_capabilities(vvc.ffmpeg_exe())  # a broken ffmpeg fails, not skips
    return vvc.VVC_ENCODER in caps["encoders"] and vvc.VVC_DECODER in caps["decoders"]


HAS_VVENC = _has_vvenc()
needs_vvenc = pytest.mark.skipif(
    not HAS_VVENC, reason="ffmpeg binary has no libvvenc encoder / vvc decoder"
)


def _params(name):
    marks = [needs_vvenc] if name == "vvc" else []
    return pytest.param(name, marks=marks, id=name)


def make_frames(n=6, h=H, w=W):
    """Smooth gradients plus a moving bright block: compressible, with real motion.

    Colour varies smoothly (the block changes luma only), so 4:2:0 chroma subsampling does
    not by itself cap the RGB PSNR.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = []
    for t in range(n):
        r = 128 + 100 * np.sin((xx + 2 * t) / 7.0)
        g = 128 + 100 * np.cos((yy - t) / 5.0)
        b = 128 + 90 * np.sin((xx + yy + 3 * t) / 9.0)
        img = np.stack([r, g, b], axis=-1)
        y0, x0 = (3 + 2 * t) % max(h - 8, 1), (5 + 3 * t) % max(w - 8, 1)
        img[y0 : y0 + 8, x0 : x0 + 8] += 60
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def mean_psnr(xs, ys):
    return float(np.mean([psnr(x, y) for x, y in zip(xs, ys)]))


# -- Annex-B helpers written independently of vcm_d2.codecs.annexb ------------------------
def nal_spans(data: bytes):
    """(nal_header_offset, begin, end) of each NAL, spans including their start code."""
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\x00\x00\x01"]
    spans = []
    for k, s in enumerate(starts):
        begin = s - 1 if s > 0 and data[s - 1] == 0 else s
        end = len(data)
        if k + 1 < len(starts):
            nxt = starts[k + 1]
            end = nxt - 1 if data[nxt - 1] == 0 else nxt
        spans.append((s + 3, begin, end))
    return spans


def h264_udu_sei_bytes(packet: bytes) -> int:
    """Bytes of H.264 SEI NAL units whose first message is user_data_unregistered."""
    return sum(
        end - begin
        for hdr, begin, end in nal_spans(packet)
        if packet[hdr] & 0x1F == 6 and packet[hdr + 1] == 5
    )


def chunks_of(cs: CodedSequence):
    out, pos = [], 0
    for b in cs.frame_bits:
        out.append(cs.bitstream[pos : pos + b // 8])
        pos += b // 8
    return out


# -- registry / interface ---------------------------------------------------------------
def test_registry_names_and_build():
    assert ALL_CODECS <= set(available_codecs())
    for name in ALL_CODECS:
        cls = CODEC_REGISTRY.get(name)
        assert issubclass(cls, Codec) and cls.name == name and cls.quality_help
    assert CODEC_REGISTRY.get("x264").is_video and CODEC_REGISTRY.get("vvc").is_video
    assert not CODEC_REGISTRY.get("h264_intra").is_video and not CODEC_REGISTRY.get("jpeg").is_video
    assert isinstance(build_codec("x264", gop=5, preset="fast"), Codec)
    with pytest.raises(KeyError, match="x264"):
        build_codec("no_such_codec")


def test_coded_sequence_bpp():
    frames = [np.zeros((4, 5, 3), np.uint8)] * 2
    cs = CodedSequence(frames=frames, bitstream=b"\x00" * 5, frame_bits=[16, 24])
    assert cs.total_bits == 40
    assert cs.bpp() == [16 / 20, 24 / 20]


def test_yuv420_conversion_interpolates_chroma():
    frames = make_frames(2)
    ours = [yuv.frame_to_rgb(yuv.rgb_to_yuv420p(f)) for f in frames]
    plain = []  # swscale defaults: chroma repeated, not interpolated
    for f in frames:
        frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
        plain.append(frame.to_ndarray(format="rgb24"))
    assert mean_psnr(frames, ours) > 45 > mean_psnr(frames, plain) + 5


# -- round trips of the classical codecs ------------------------------------------------
@pytest.mark.parametrize("name", [_params(n) for n in CLASSICAL])
def test_round_trip_quality_and_bits(name):
    kwargs, q_high, q_low = CLASSICAL[name]
    codec = build_codec(name, **kwargs)
    frames = make_frames(4)
    hi = codec.encode(frames, q_high)
    lo = codec.encode(frames, q_low)
    for cs in (hi, lo):
        assert len(cs.frames) == len(frames) and len(cs.frame_bits) == len(frames)
        assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in cs.frames)
        assert sum(cs.frame_bits) == 8 * len(cs.bitstream) == cs.total_bits
        assert all(b > 0 and b % 8 == 0 for b in cs.frame_bits)
    assert mean_psnr(frames, hi.frames) > PSNR_FLOOR_DB
    assert mean_psnr(frames, lo.frames) < mean_psnr(frames, hi.frames) - 3
    assert lo.total_bits < hi.total_bits
    # decode() of the bytes alone reproduces the encoder's reconstruction exactly
    again = codec.decode(hi.bitstream, hi.frame_bits, H, W)
    assert all(np.array_equal(a, b) for a, b in zip(again, hi.frames))


@pytest.mark.parametrize("name", [_params(n) for n in CLASSICAL])
def test_odd_size_grayscale_rgba(name):
    kwargs, q_high, _ = CLASSICAL[name]
    codec = build_codec(name, **kwargs)
    rgb = [f[:17, :33] for f in make_frames(2)]
    ref = codec.encode(rgb, q_high)
    assert [f.shape for f in ref.frames] == [(17, 33, 3)] * 2
    assert mean_psnr(rgb, ref.frames) > PSNR_FLOOR_DB - 5
    rgba = [np.concatenate([f, np.full(f.shape[:2] + (1,), 77, np.uint8)], axis=2) for f in rgb]
    assert codec.encode(rgba, q_high).bitstream == ref.bitstream  # alpha is dropped
    gray = [f[:, :, 1] for f in rgb]
    cs_gray = codec.encode(gray, q_high)
    assert [f.shape for f in cs_gray.frames] == [(17, 33, 3)] * 2
    expected = [np.repeat(g[:, :, None], 3, axis=2) for g in gray]
    assert codec.encode([g[:, :, None] for g in gray], q_high).bitstream == cs_gray.bitstream
    assert mean_psnr(expected, cs_gray.frames) > PSNR_FLOOR_DB - 5
    tiny = codec.encode([np.full((1, 1, 3), 90, np.uint8)] * 2, q_high)
    assert [f.shape for f in tiny.frames] == [(1, 1, 3)] * 2


# -- exact bits of x264 / x265 against an independent PyAV encode -----------------------
def _pyav_packets(encoder, options, frames):
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = W, H, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 25), Fraction(25, 1)
    ctx.gop_size, ctx.max_b_frames, ctx.thread_count = 3, 0, 1
    ctx.options = options
    packets = []
    for i, img in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
            format="yuv420p", interpolation=RGB_TO_YUV, threads=1
        )
        frame.pts = i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


def test_x264_bits_are_packet_bytes_minus_encoder_sei():
    frames = make_frames(5)
    options = {
        "preset": "medium", "tune": "zerolatency", "crf": "28",
        "x264-params": "keyint=3:min-keyint=3:scenecut=0:bframes=0",
    }  # fmt: skip
    packets = _pyav_packets("libx264", options, frames)
    assert b"x264 - core" in packets[0]  # the SEI exists before stripping ...
    cs = build_codec("x264", gop=3).encode(frames, 28)
    expected = [8 * (len(p) - h264_udu_sei_bytes(p)) for p in packets]
    assert cs.frame_bits == expected
    assert expected[0] < 8 * len(packets[0])  # ... and was removed from the counted bits
    assert b"x264 - core" not in cs.bitstream
    for _hdr, begin, end in nal_spans(cs.bitstream):
        assert not (cs.bitstream[_hdr] & 0x1F == 6 and cs.bitstream[_hdr + 1] == 5)


def test_x265_bits_are_packet_bytes_without_info_sei():
    frames = make_frames(5)
    params = (
        "keyint=3:min-keyint=3:scenecut=0:bframes=0:open-gop=0:info=0:log-level=error:"
        "pools=1:frame-threads=1"
    )
    options = {"preset": "medium", "tune": "zerolatency", "crf": "28", "x265-params": params}
    packets = _pyav_packets("libx265", options, frames)
    cs = build_codec("x265", gop=3).encode(frames, 28)
    assert cs.frame_bits == [8 * len(p) for p in packets]
    assert cs.bitstream == b"".join(packets)
    assert b"x265 (build" not in cs.bitstream


def _nal_types_per_frame(cs, type_of):
    return [{type_of(data, hdr) for hdr, _b, _e in nal_spans(data)} for data in chunks_of(cs)]


def test_gop_places_idr_frames():
    frames = make_frames(7)
    cs = build_codec("x264", gop=3).encode(frames, 30)
    types = _nal_types_per_frame(cs, lambda d, h: d[h] & 0x1F)
    idr = [i for i, t in enumerate(types) if 5 in t]  # 5 = IDR slice, 1 = non-IDR slice
    assert idr == [0, 3, 6]
    assert all(1 in types[i] for i in range(7) if i not in idr)
    assert all(7 in types[i] and 8 in types[i] for i in idr)  # SPS/PPS counted in IDR frames
    # the decoder agrees: key frames exactly at 0, 3, 6
    ctx = av.CodecContext.create("h264", "r")
    decoded = [f for chunk in chunks_of(cs) for f in ctx.decode(av.Packet(chunk))]
    decoded += ctx.decode(None)
    assert [i for i, f in enumerate(decoded) if f.key_frame] == [0, 3, 6]

    cs = build_codec("x265", gop=3).encode(frames, 30)
    types = _nal_types_per_frame(cs, lambda d, h: (d[h] >> 1) & 0x3F)
    assert [i for i, t in enumerate(types) if t & {19, 20}] == [0, 3, 6]  # IDR_W_RADL / IDR_N_LP

    cs = build_codec("h264_intra").encode(frames[:3], 30)
    assert all(5 in t for t in _nal_types_per_frame(cs, lambda d, h: d[h] & 0x1F))


# -- bad input ----------------------------------------------------------------------------
def test_invalid_frames_raise():
    codec = build_codec("jpeg")
    with pytest.raises(ValueError, match="empty"):
        codec.encode([], 50)
    with pytest.raises(ValueError, match="size"):
        codec.encode([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], 50)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode([np.zeros((8, 8, 3), np.float32)], 50)
    with pytest.raises(ValueError, match="shape"):
        codec.encode([np.zeros((8, 8, 2), np.uint8)], 50)
    with pytest.raises(ValueError):
        codec.encode([np.zeros((8, 8, 3), np.uint8)], 0)
    with pytest.raises(ValueError):
        build_codec("x264").encode(make_frames(1), 60)
    with pytest.raises(ValueError):
        build_codec("x264", rate_control="qp").encode(make_frames(1), 22.5)
    with pytest.raises(ValueError):
        build_codec("x264", rate_control="abr")


@pytest.mark.parametrize("name", [_params(n) for n in CLASSICAL])
def test_corrupt_or_truncated_bitstream_raises(name):
    kwargs, q_high, _ = CLASSICAL[name]
    codec = build_codec(name, **kwargs)
    cs = codec.encode(make_frames(3), q_high)
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(cs.bitstream[:-7], cs.frame_bits, H, W)
    garbage = np.random.default_rng(0).integers(0, 256, len(cs.bitstream), dtype=np.uint8).tobytes()
    with pytest.raises((ValueError, RuntimeError)):
        codec.decode(garbage, cs.frame_bits, H, W)
    # damage each frame's first bytes (headers / parameter sets)
    damaged = b"".join(c[:2] + bytes(5) + c[7:] for c in chunks_of(cs))
    with pytest.raises((ValueError, RuntimeError)):
        codec.decode(damaged, cs.frame_bits, H, W)
    with pytest.raises(ValueError):
        codec.decode(cs.bitstream, [], H, W)


def test_missing_encoder_lists_available():
    with pytest.raises(RuntimeError, match="libnosuchenc.*libx264"):
        open_encoder_context("libnosuchenc")
    if HAS_VVENC:
        with pytest.raises(RuntimeError, match="libnosuchenc.*libx264"):
            vvc.require_ffmpeg_encoder(vvc.ffmpeg_exe(), "libnosuchenc")


def test_codecs_pickle_for_process_pools():
    codec = pickle.loads(pickle.dumps(build_codec("x265", gop=4, threads=1)))
    assert codec.gop == 4 and len(codec.encode(make_frames(2), 30).frames) == 2


# -- Annex-B parsing ----------------------------------------------------------------------
def test_annexb_split_and_emulation_prevention():
    data = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\xcc\x00\x00\x01\x65\x00\x00\x03\x01"
    units = annexb.split_nal_units(data)
    assert b"".join(u.raw for u in units) == data
    assert [annexb.h264_nal_type(u) for u in units] == [7, 8, 5]
    rbsp = b"\x00\x00\x00\x00\x00\x01\x00\x00\x03\x00"
    assert annexb.remove_emulation_prevention(annexb.add_emulation_prevention(rbsp)) == rbsp
    assert b"\x00\x00\x00" not in annexb.add_emulation_prevention(rbsp)
    with pytest.raises(ValueError):
        annexb.split_nal_units(b"\x12\x34\x00\x00\x01\x65")


def test_strip_sei_keeps_other_messages():
    udu = bytes([5, 17]) + bytes(16) + b"\x01"  # user_data_unregistered: UUID + 1 byte
    recovery = bytes([6, 1, 0x84])  # recovery_point message
    mixed = b"\x00\x00\x01\x06" + annexb.add_emulation_prevention(udu + recovery + b"\x80")
    only_udu = b"\x00\x00\x01\x06" + annexb.add_emulation_prevention(udu + b"\x80")
    slice_nal = b"\x00\x00\x01\x65\x88\x80"
    out = annexb.strip_user_data_unregistered_sei(only_udu + mixed + slice_nal, annexb.CODEC_H264)
    assert out == b"\x00\x00\x01\x06" + recovery + b"\x80" + slice_nal


def test_vvc_access_unit_split():
    def nal(t, first_bit=None, body=b"\x11\x22"):
        payload = bytes([0x00, (t << 3) | 1])
        if first_bit is not None:
            payload += bytes([0x80 if first_bit else 0x00])
        return b"\x00\x00\x00\x01" + payload + body

    sps, pps, sei, suffix = nal(15), nal(16), nal(23), nal(24)
    pic0 = sps + pps + nal(8, 1)  # IDR, picture header in slice header
    pic1 = sei + nal(19) + nal(0, 0) + nal(0, 0) + suffix  # PH NAL + two slices + suffix SEI
    pic2 = nal(20) + nal(0, 1)  # AUD starts the access unit
    assert annexb.split_vvc_access_units(pic0 + pic1 + pic2) == [pic0, pic1, pic2]
    with pytest.raises(ValueError):
        annexb.split_vvc_access_units(sps + pps)


# -- VVC --------------------------------------------------------------------------------
@needs_vvenc
def test_vvc_low_delay_structure():
    frames = make_frames(7)
    cs = build_codec("vvc", gop=3).encode(frames, 32)
    types = _nal_types_per_frame(cs, lambda d, h: d[h + 1] >> 3)
    assert [i for i, t in enumerate(types) if t & {7, 8}] == [0, 3, 6]  # IDR pictures
    assert all(20 not in t for t in types)  # no access unit delimiters counted
    assert mean_psnr(frames, cs.frames) > 30


@pytest.mark.parametrize("name", [_params(n) for n in ("x264", "x265", "vvc")])
def test_low_delay_is_causal(name):
    """A frame's bits never depend on later frames: no lookahead, reordering or future MCTF."""
    frames = make_frames(7)
    codec = build_codec(name, gop=3)
    full, prefix = codec.encode(frames, 30), codec.encode(frames[:4], 30)
    assert chunks_of(full)[:4] == chunks_of(prefix)


# -- learned codecs -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bmshj2018_hyperprior", "cheng2020_anchor"])
def test_neural_round_trip_and_checkpoint(name, tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="weights"):
        build_codec(name)
    codec = build_codec(name, allow_random=True)
    frames = [f[:17, :33] for f in make_frames(2)]
    torch_threads = torch.get_num_threads()
    cs = codec.encode(frames, 1)
    assert torch.get_num_threads() == torch_threads  # threads=1 only inside the call
    assert [f.shape for f in cs.frames] == [(17, 33, 3)] * 2 and cs.frames[0].dtype == np.uint8
    assert sum(cs.frame_bits) == 8 * len(cs.bitstream)
    # header (9 bytes + 4 per string) + real range-coder strings
    assert all(b // 8 > 9 + 2 * 4 for b in cs.frame_bits)
    # a fresh instance (other process) decodes the same pixels from the bytes alone
    other = pickle.loads(pickle.dumps(codec))
    assert not other._models
    decoded = other.decode(cs.bitstream, cs.frame_bits, 17, 33)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, cs.frames))

    state = codec._model(1).state_dict()
    torch.save({"state_dict": state}, tmp_path / "wrapped_q1.pth")
    torch.save(state, tmp_path / "raw_q1.pth")
    for pattern in ("wrapped_q{quality}.pth", "raw_q{quality}.pth"):
        loaded = build_codec(name, weights=str(tmp_path / pattern))
        assert loaded.encode(frames[:1], 1).bitstream == chunks_of(cs)[0]  # frames are independent
    with pytest.raises(FileNotFoundError):
        build_codec(name, weights=str(tmp_path / "missing.pth")).encode(frames[:1], 1)
    with pytest.raises(ValueError, match="quality"):
        codec.encode(frames, 99)

    with pytest.raises(ValueError, match="truncated"):
        codec.decode(cs.bitstream[:-3], cs.frame_bits, 17, 33)
    with pytest.raises(ValueError, match="corrupt"):
        codec.decode(cs.bitstream, cs.frame_bits, 170, 33)  # header size disagrees
    garbage = bytes(len(cs.bitstream))
    with pytest.raises(ValueError, match="corrupt"):
        codec.decode(garbage, cs.frame_bits, 17, 33)
