"""H.264 / H.265 through PyAV's bundled libx264 / libx265, encoded and decoded in-process.

Frames stream through the encoder and the decoder one at a time (``Codec.encode_stream``).
Bits are the raw Annex-B packet bytes (no container). x264's encoder-info SEI is stripped
from the stream, x265 is told not to write it (``info=0``), so the counted bytes are the
ones a real low-delay decoder needs: parameter sets (in every IDR access unit, since no
global header is requested) plus slices.
"""
import collections
import functools
import itertools
from fractions import Fraction
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import av
import numpy as np

from . import annexb
from .base import CODEC_REGISTRY, Codec, CodedFrame, check_decode_args, pad_frame, padded_size
from .yuv import frame_to_rgb, rgb_to_yuv420p

__all__ = ["X264Codec", "X265Codec", "H264IntraCodec", "H265IntraCodec", "open_encoder_context"]

# Default nominal frame rate. It is not just metadata: x264/x265 CRF weighs complexity
# per unit of time, so the same frames at another rate get other bits (measured).
DEFAULT_FPS = 25.0
FPS_MAX_DENOMINATOR = 1001  # maps a float such as 30000/1001 back to that exact fraction
# 4:2:0 chroma needs even luma dimensions. x265 refuses to open for pictures smaller
# than 16 pixels in either dimension (measured with PyAV 18's libx265), so pad up to it.
YUV420_MULTIPLE = 2
X265_MIN_SIZE = 16
QUALITY_RANGE = (0.0, 51.0)  # CRF and QP range of 8-bit x264 / x265
RATE_CONTROLS = ("crf", "qp")
DEFAULT_PRESET = "medium"  # x264/x265 default: the usual anchor in VCM papers
PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow", "placebo",
)  # fmt: skip


@functools.lru_cache(maxsize=None)
def _available_encoders() -> Tuple[str, ...]:
    names = []
    for name in sorted(av.codecs_available):
        try:
            codec = av.Codec(name, "w")
        except Exception:  # not an encoder in this build
            continue
        if codec.type == "video":
            names.append(name)
    return tuple(names)


def open_encoder_context(encoder: str) -> "av.CodecContext":
    """Create a PyAV encoder context, or raise RuntimeError listing the available ones."""
    try:
        return av.CodecContext.create(encoder, "w")
    except (av.codec.codec.UnknownCodecError, ValueError) as exc:
        raise RuntimeError(
            f"video encoder {encoder!r} is not available in the installed PyAV "
            f"({av.__version__}); available video encoders: {', '.join(_available_encoders())}"
        ) from exc


def _params(pairs: Dict[str, object]) -> str:
    return ":".join(f"{k}={v}" for k, v in pairs.items())


class _PyAVCodec(Codec):
    """Shared PyAV encode/decode path; subclasses fix the encoder and its parameters."""

    encoder: str = ""  # PyAV encoder name
    decoder: str = ""  # PyAV decoder name (== annexb codec id)
    params_option: str = ""  # encoder option taking "key=value:..." library parameters
    min_size: int = YUV420_MULTIPLE

    def __init__(
        self,
        gop: int = 12,
        rate_control: str = "crf",
        preset: str = DEFAULT_PRESET,
        threads: int = 1,
        fps: float = DEFAULT_FPS,
    ):
        """
        Args:
            gop: distance between I-frames (keyint); scene-cut detection is off so
                I-frames fall exactly on frames 0, gop, 2*gop, ...
            rate_control: "crf" (constant rate factor) or "qp" (constant QP).
            preset: x264/x265 speed preset; "medium" is the libraries' default.
            threads: encoder/decoder/colour-conversion threads; 1 keeps a process pool
                from oversubscribing.
            fps: nominal frame rate of the sequence (CRF depends on it).
        """
        if int(gop) < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        if rate_control not in RATE_CONTROLS:
            raise ValueError(f"rate_control must be one of {RATE_CONTROLS}, got {rate_control!r}")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if not float(fps) > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
        self.gop = int(gop)
        self.rate_control = rate_control
        self.preset = preset
        self.threads = int(threads)

    # -- encoder parameters -------------------------------------------------------------
    def _check_quality(self, quality: float) -> str:
        q = float(quality)
        lo, hi = QUALITY_RANGE
        if not lo <= q <= hi:
            raise ValueError(
                f"{self.name}: quality ({self.rate_control}) must be in [{lo}, {hi}], got {quality}"
            )
        if self.rate_control == "qp":
            if q != int(q):
                raise ValueError(f"{self.name}: QP must be an integer, got {quality}")
            return str(int(q))
        return f"{q:g}"

    def _codec_params(self) -> Dict[str, object]:
        """Library-specific parameters (x264-params / x265-params)."""
        raise NotImplementedError

    def _options(self, quality: float) -> Dict[str, str]:
        return {
            "preset": self.preset,
            "tune": "zerolatency",
            self.rate_control: self._check_quality(quality),
            self.params_option: _params(self._codec_params()),
        }

    # -- encode / decode ------------------------------------------------------------------
    def _open_encoder(self, height: int, width: int, options: Dict[str, str]) -> "av.CodecContext":
        ctx = open_encoder_context(self.encoder)
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / self.fps
        ctx.framerate = self.fps
        ctx.gop_size = self.gop
        ctx.max_b_frames = 0
        ctx.thread_count = self.threads
        ctx.options = options
        return ctx

    def _stream(self, frames: Iterator[np.ndarray], quality: float) -> Iterator[CodedFrame]:
        """Each frame goes through the encoder, its packet (encoder-info SEI stripped) through
        the decoder, and out as soon as both are done: x264/x265 with tune=zerolatency hold no
        frame back, so memory does not grow with the sequence."""
        options = self._options(quality)
        first = next(frames)
        h, w = first.shape[:2]
        ph, pw = padded_size(h, w, YUV420_MULTIPLE, self.min_size)
        encoder = self._open_encoder(ph, pw, options)
        decoder = _Decoder(self, h, w)
        chunks: Deque[bytes] = collections.deque()
        images: Deque[np.ndarray] = collections.deque()
        packets = 0

        def code(frame: Optional["av.VideoFrame"]) -> None:
            nonlocal packets
            try:
                out = encoder.encode(frame)
            except av.FFmpegError as exc:
                raise RuntimeError(
                    f"{self.name}: {self.encoder} failed ({pw}x{ph}, options {options}): {exc}"
                ) from exc
            for pkt in out:
                if pkt.pts != packets:  # no B-frames: decode order must equal display order
                    raise RuntimeError(
                        f"{self.name}: packet {packets} has pts {pkt.pts}; frames were reordered"
                    )
                packets += 1
                chunk = annexb.strip_user_data_unregistered_sei(bytes(pkt), self.decoder)
                chunks.append(chunk)
                images.extend(decoder.push(chunk))

        for i, img in enumerate(itertools.chain([first], frames)):
            frame = rgb_to_yuv420p(pad_frame(img, ph, pw), self.threads)
            frame.pts = i
            code(frame)
            while chunks and images:
                yield CodedFrame(image=images.popleft(), data=chunks.popleft())
        code(None)
        images.extend(decoder.push(None))
        if len(chunks) != len(images):
            raise RuntimeError(
                f"{self.name}: the decoder returned {len(images)} frames for {len(chunks)} packets"
            )
        while chunks:
            yield CodedFrame(image=images.popleft(), data=chunks.popleft())

    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        check_decode_args(frame_bits, height, width)
        chunks = annexb.frame_chunks(bitstream, frame_bits)
        decoder = _Decoder(self, height, width)
        out = [image for chunk in chunks for image in decoder.push(chunk)]
        out += decoder.push(None)
        if len(out) != len(chunks):
            raise RuntimeError(
                f"{self.name}: decoded {len(out)} frames but frame_bits lists {len(chunks)} "
                "(corrupt or truncated bitstream)"
            )
        return out

    def random_access_points(self, chunks: Sequence[bytes]) -> List[int]:
        """Frame 0 and every IDR frame (each carries its parameter sets: no global header)."""
        return [i for i, c in enumerate(chunks)
                if i == 0 or annexb.is_random_access_unit(c, self.decoder)]


class _Decoder:
    """A PyAV decoder of one codec's frames: packets in, RGB frames of the coded size out."""

    def __init__(self, codec: _PyAVCodec, height: int, width: int):
        self.name = codec.name
        self.threads = codec.threads
        self.height, self.width = int(height), int(width)
        self.padded = padded_size(self.height, self.width, YUV420_MULTIPLE, codec.min_size)
        self.ctx = av.CodecContext.create(codec.decoder, "r")
        self.ctx.thread_count = codec.threads
        # "explode": fail on any detected bitstream error instead of concealing it.
        self.ctx.options = {"err_detect": "crccheck+bitstream+buffer+explode"}

    def push(self, chunk: Optional[bytes]) -> List[np.ndarray]:
        """Decode one frame's bytes (None: flush); return the frames that came out."""
        try:
            frames = self.ctx.decode(None if chunk is None else av.Packet(chunk))
        except av.FFmpegError as exc:
            raise RuntimeError(f"{self.name}: corrupt bitstream: {exc}") from exc
        out = []
        for frame in frames:
            if (frame.height, frame.width) != self.padded:
                raise RuntimeError(
                    f"{self.name}: decoded frame is {frame.height}x{frame.width}, "
                    f"expected {self.padded[0]}x{self.padded[1]}"
                )
            rgb = frame_to_rgb(frame, self.threads)
            out.append(np.ascontiguousarray(rgb[: self.height, : self.width]))
        return out


class _X264Base(_PyAVCodec):
    """x264 with tune=zerolatency: no lookahead, no B-frames, one packet out per frame in."""

    encoder = "libx264"
    decoder = annexb.CODEC_H264
    params_option = "x264-params"

    def _codec_params(self) -> Dict[str, object]:
        # min-keyint is clamped by x264 to keyint/2+1; with scenecut off that still
        # leaves I-frames only every `gop` frames.
        return {"keyint": self.gop, "min-keyint": self.gop, "scenecut": 0, "bframes": 0}


class _X265Base(_PyAVCodec):
    encoder = "libx265"
    decoder = annexb.CODEC_HEVC
    params_option = "x265-params"
    min_size = X265_MIN_SIZE

    def _codec_params(self) -> Dict[str, object]:
        return {
            "keyint": self.gop,
            "min-keyint": self.gop,
            "scenecut": 0,
            "bframes": 0,
            "open-gop": 0,  # I-frames are IDR, as in x264
            "info": 0,  # no encoder-info SEI (~2.3 KB)
            "log-level": "error",
            "pools": self.threads,
            "frame-threads": self.threads,
        }


_LOW_DELAY_HELP = "{rc} 0-51 (rate_control kwarg: 'crf' default or 'qp'), higher = more compression"


@CODEC_REGISTRY.register()
class X264Codec(_X264Base):
    """H.264 low-delay P (x264, tune=zerolatency, no B-frames, I-frame every ``gop``)."""

    name = "x264"
    is_video = True
    quality_help = _LOW_DELAY_HELP.format(rc="CRF/QP")


@CODEC_REGISTRY.register()
class X265Codec(_X265Base):
    """H.265 low-delay P (x265, tune=zerolatency, no B-frames, I-frame every ``gop``)."""

    name = "x265"
    is_video = True
    quality_help = _LOW_DELAY_HELP.format(rc="CRF/QP")


class _IntraMixin:
    """All-intra variant: the same constructor without ``gop`` (fixed to 1)."""

    def __init__(
        self,
        rate_control: str = "crf",
        preset: str = DEFAULT_PRESET,
        threads: int = 1,
        fps: float = DEFAULT_FPS,
    ):
        super().__init__(gop=1, rate_control=rate_control, preset=preset, threads=threads, fps=fps)


@CODEC_REGISTRY.register()
class H264IntraCodec(_IntraMixin, _X264Base):
    """H.264 all-intra (x264 with gop=1): every frame an IDR frame."""

    name = "h264_intra"
    is_video = False
    quality_help = _LOW_DELAY_HELP.format(rc="CRF/QP")


@CODEC_REGISTRY.register()
class H265IntraCodec(_IntraMixin, _X265Base):
    """H.265 all-intra (x265 with gop=1): every frame an IDR frame."""

    name = "h265_intra"
    is_video = False
    quality_help = _LOW_DELAY_HELP.format(rc="CRF/QP")
