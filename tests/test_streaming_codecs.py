"""Codec.encode_stream: the same bytes and frames as the list-based encode, frames pulled and
coded frames handed out as they go (bounded memory over a 200-frame clip), errors at the frame
that causes them, no process or thread left behind; random access into stored bitstreams."""
import threading
import tracemalloc

import numpy as np
import pytest

from vcm_d2.codecs import annexb, build_codec
from vcm_d2.codecs.base import CodedFrame
from vcm_d2.codecs.sample_video import sample_video
from vcm_d2.codecs.stored import (
    DecodedFrameCache,
    StoredBitstreamError,
    StoredSequence,
    bitstream_crc32,
)

from test_codecs import CLASSICAL, H, W, _params, make_frames, needs_vvenc

# codecs whose frames come out at most this many frames after they went in
PYAV_MAX_LAG = 1
# Long clips of the memory test: (frames, height, width); VVC is slow, so shorter and smaller.
LONG_CLIPS = {"x264": (200, 96, 128), "vvc": (80, 64, 96)}
SHORT_CLIP_FRAMES = 20
# More frames than the ffmpeg processes' delay (~40 frames), so a stream can be stopped midway.
VVC_EARLY_STOP_FRAMES = 80
# Growth of the traced peak from the short to the long clip allowed, in frames: the list-based
# path grows by 2 frames (input and reconstruction) per frame.
MAX_GROWTH_FRAMES = 8


class Source:
    """An iterator over frames that counts how many were pulled."""

    def __init__(self, frames):
        self.frames, self.pulled = frames, 0

    def __iter__(self):
        for frame in self.frames:
            self.pulled += 1
            yield frame


@pytest.mark.parametrize("name", [_params(n) for n in CLASSICAL] + ["bmshj2018_hyperprior"])
def test_stream_equals_list_encode(name):
    kwargs, quality, _ = CLASSICAL.get(name, ({"allow_random": True}, 2, None))
    codec = build_codec(name, **kwargs)
    frames = make_frames(7)
    listed = codec.encode(frames, quality)
    source = Source(frames)
    lags = []
    streamed = []
    for coded in codec.encode_stream(source, quality):
        assert isinstance(coded, CodedFrame)
        streamed.append(coded)
        lags.append(source.pulled - len(streamed))
    assert [c.data for c in streamed] == annexb.frame_chunks(listed.bitstream, listed.frame_bits)
    assert [c.bits for c in streamed] == listed.frame_bits
    assert all(np.array_equal(c.image, f) for c, f in zip(streamed, listed.frames))
    decoded = codec.decode(listed.bitstream, listed.frame_bits, H, W)
    assert all(np.array_equal(c.image, f) for c, f in zip(streamed, decoded))
    if name in ("x264", "x265", "h264_intra", "h265_intra", "jpeg", "jpeg2000"):
        assert max(lags) <= PYAV_MAX_LAG  # each frame is out right after it went in


@needs_vvenc
def test_vvc_access_units_split_as_they_arrive():
    """Taking VVC access units from a stream that arrives in small pieces gives the units of the
    whole stream."""
    stream = build_codec("vvc", gop=3).encode(make_frames(5), 32).bitstream
    units, rest = [], b""
    for i in range(0, len(stream), 7):
        done, rest = annexb.take_vvc_access_units(rest + stream[i:i + 7], end_of_stream=False)
        units += done
    units += annexb.take_vvc_access_units(rest, end_of_stream=True)[0]
    assert units == annexb.split_vvc_access_units(stream) and len(units) == 5


def _traced_peak(codec, frames):
    tracemalloc.start()
    try:
        count = sum(1 for _ in codec.encode_stream(frames, 37))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", [_params(n) for n in LONG_CLIPS])
def test_long_clip_streams_in_bounded_memory(name):
    """A long clip through the encoder and decoder: Python's traced peak (numpy's buffers
    included) grows by a few frames at most from a 20-frame clip, not by two per frame."""
    codec = build_codec(name, gop=12, preset="ultrafast" if name == "x264" else "faster")
    n, height, width = LONG_CLIPS[name]
    short = _traced_peak(codec, sample_video(SHORT_CLIP_FRAMES, height, width))
    long = _traced_peak(codec, sample_video(n, height, width))
    assert (short[0], long[0]) == (SHORT_CLIP_FRAMES, n)
    growth = (long[1] - short[1]) / (height * width * 3)
    assert growth < MAX_GROWTH_FRAMES, f"the traced peak grew by {growth:.1f} frames"


def test_invalid_frames_raise_at_the_frame():
    codec = build_codec("x264", gop=3)
    frames = make_frames(3) + [np.zeros((8, 8, 3), np.uint8)]
    stream = codec.encode_stream(iter(frames), 30)
    assert len([next(stream) for _ in range(2)]) == 2  # frames before the bad one come out
    with pytest.raises(ValueError, match="frame 3 has size"):
        list(stream)
    with pytest.raises(ValueError, match="empty"):
        list(codec.encode_stream(iter([]), 30))
    with pytest.raises(ValueError, match="single image"):
        list(codec.encode_stream(make_frames(1)[0], 30))


@needs_vvenc
def test_vvc_stream_stopped_early_leaves_nothing_running():
    threads = threading.active_count()
    codec = build_codec("vvc")
    source = Source(make_frames(VVC_EARLY_STOP_FRAMES))
    stream = codec.encode_stream(source, 32)
    next(stream)
    assert source.pulled < VVC_EARLY_STOP_FRAMES  # stopped while frames are still coming
    stream.close()  # the consumer stops: processes killed, threads joined
    assert threading.active_count() == threads
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    with pytest.raises(RuntimeError, match="(?s)vvc encode: ffmpeg exited.*use a higher QP"):
        list(codec.encode_stream(noise, 0))  # the failure FFmpeg's libvvenc wrapper has
    assert threading.active_count() == threads


@pytest.mark.parametrize("name", [_params(n) for n in ("x264", "x265", "vvc", "jpeg")])
def test_random_access_segments_decode_like_the_whole_stream(name, tmp_path):
    kwargs = {} if name == "jpeg" else {"gop": 3}
    codec = build_codec(name, **kwargs)
    quality = CLASSICAL[name][1]
    coded = codec.encode(make_frames(7), quality)
    chunks = annexb.frame_chunks(coded.bitstream, coded.frame_bits)
    points = codec.random_access_points(chunks)
    assert points == ([0, 3, 6] if name != "jpeg" else list(range(7)))

    path = tmp_path / "seq.bin"
    path.write_bytes(coded.bitstream)
    seq = StoredSequence.create("video-7", str(path), name, kwargs, coded.frame_bits, H, W,
                                bitstream_crc32(coded.bitstream))
    cache = DecodedFrameCache()
    for i in (4, 3, 5, 0, 6, 1):  # out of order: each segment is decoded once
        assert np.array_equal(cache.frame(seq, i), coded.frames[i])
    assert cache.decodes == len(points if name != "jpeg" else {4, 3, 5, 0, 6, 1})
    with pytest.raises(ValueError, match="read-only"):
        cache.frame(seq, 4)[0, 0, 0] = 1


def test_cache_keeps_its_budget_and_arrives_empty_in_workers(tmp_path):
    import pickle

    codec = build_codec("x264", gop=2)
    coded = codec.encode(make_frames(6), 30)
    path = tmp_path / "seq.bin"
    path.write_bytes(coded.bitstream)
    seq = StoredSequence.create("s", str(path), "x264", {"gop": 2}, coded.frame_bits, H, W,
                                bitstream_crc32(coded.bitstream))
    segment_mb = 2 * H * W * 3 / 2**20
    cache = DecodedFrameCache(max_mb=2 * segment_mb)  # two segments of 2 frames
    for i in (0, 2, 4, 0):
        cache.frame(seq, i)
    assert cache.decodes == 4 and cache.bytes <= cache.max_bytes  # segment 0 was dropped
    cache.frame(seq, 5)
    assert cache.decodes == 4  # segment 4-5 is kept
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.max_bytes == cache.max_bytes and copy.bytes == 0
    with pytest.raises(StoredBitstreamError, match="'s'"):
        StoredSequence.create("s", str(path), "x264", {}, coded.frame_bits[:-1], H, W,
                              0).read_chunks()
