"""H.266 / VVC through the vvenc encoder and the native VVC decoder of imageio-ffmpeg's binary.

One ffmpeg process encodes the whole sequence (raw yuv420p on stdin, raw Annex-B VVC to an
extra pipe) and one decodes it (VVC on stdin, rgb24 on stdout); frames stream through both
(``Codec.encode_stream``), so memory does not grow with the sequence. The encoder does not
write to stdout because FFmpeg's libvvenc wrapper prints vvenc's warnings there (e.g.
"Configuration warning: ALFSpeed would disable ALF ..." with the "faster" preset), which
would end up appended to the bitstream. The yuv420p input is made by
PyAV/swscale exactly as for x264/x265 (see ``yuv.py``), so all video codecs see identical
pictures, and the decoder's YUV -> RGB conversion uses the same swscale flags.
Per-frame bits come from splitting the Annex-B stream into access units.
"""
import collections
import contextlib
import functools
import itertools
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import annexb
from .base import CODEC_REGISTRY, Codec, CodedFrame, check_decode_args, pad_frame, padded_size
from .yuv import FFMPEG_SWS_FLAGS, rgb_to_yuv420p

__all__ = ["VvcCodec", "ffmpeg_exe", "ffmpeg_capabilities", "require_ffmpeg_encoder"]

VVC_ENCODER = "libvvenc"
VVC_DECODER = "vvc"  # FFmpeg's native decoder
VVC_MUXER = "vvc"  # raw H.266 Annex-B muxer / demuxer
DEFAULT_FPS = 25  # nominal frame rate given to vvenc (IntraPeriod is set in frames)
QP_RANGE = (0, 63)  # vvenc's QP range (10-bit internal coding)
VVENC_PRESETS = ("faster", "fast", "medium", "slow", "slower")
# vvenc's GOP auto-configuration accepts GOP sizes 1, 8, 16, 32, but its low-delay
# (no picture reordering) structure only works with 8.
VVENC_LOW_DELAY_GOP_SIZE = 8
YUV420_MULTIPLE = 2
# FFmpeg's libvvenc wrapper allocates width*height bytes for each coded access unit, so
# a tiny picture cannot even hold the parameter sets; pad small pictures up to this size.
VVC_MIN_SIZE = 32
VVENC_FAILURE_MARK = "Generic error in an external library"  # how that failure shows in stderr
DEFAULT_TIMEOUT_S = 600.0
CAPABILITY_TIMEOUT_S = 60.0  # listing encoders/decoders/muxers
STDERR_TAIL_CHARS = 2000
DECODER_PROBE_BYTES = 32  # ffmpeg's smallest probe size: decode from the first access unit
RELAY_CHUNK_BYTES = 1 << 16  # encoder output is copied to the decoder in chunks of up to this
WATCHDOG_PERIOD_S = 1.0  # how often a streaming encode checks that its processes make progress


def ffmpeg_exe(path: str = "") -> str:
    """``path`` if given, else imageio-ffmpeg's bundled binary (honours IMAGEIO_FFMPEG_EXE)."""
    if path:
        return path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(cmd: List[str], stdin: bytes, timeout: float, what: str) -> bytes:
    """Run ``cmd`` feeding ``stdin``; return stdout or raise RuntimeError with stderr's tail."""
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what}: ffmpeg did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise RuntimeError(f"{what}: cannot run ffmpeg {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
        raise RuntimeError(f"{what}: ffmpeg exited with code {proc.returncode}:\n{tail}")
    return proc.stdout


@functools.lru_cache(maxsize=None)
def ffmpeg_capabilities(exe: str) -> Dict[str, Tuple[str, ...]]:
    """Video encoders, video decoders and muxers of the ffmpeg binary ``exe``."""
    caps = {}
    for kind, flag in (("encoders", "-encoders"), ("decoders", "-decoders"), ("muxers", "-muxers")):
        out = _run([exe, "-hide_banner", flag], b"", CAPABILITY_TIMEOUT_S, f"ffmpeg {flag}")
        out = out.decode("utf-8", "replace")
        names = []
        for line in out.splitlines():
            # codec lines: " V....D name  description"; muxer lines: "  E name  description"
            m = re.match(r"^\s*([VASDEFXBI.\s]{2,6})\s+(\S+)\s", line)
            if not m or "=" in line:
                continue
            flags, name = m.group(1).strip(), m.group(2)
            if kind == "muxers" or flags.startswith("V"):
                names.append(name)
        caps[kind] = tuple(names)
    return caps


def require_ffmpeg_encoder(exe: str, encoder: str) -> None:
    """Raise RuntimeError naming ``encoder`` and listing the available video encoders."""
    encoders = ffmpeg_capabilities(exe)["encoders"]
    if encoder not in encoders:
        raise RuntimeError(
            f"video encoder {encoder!r} is not available in ffmpeg {exe!r}; available video "
            f"encoders: {', '.join(encoders)}"
        )


def _require(exe: str, kind: str, name: str) -> None:
    if kind == "encoders":
        return require_ffmpeg_encoder(exe, name)
    available = ffmpeg_capabilities(exe)[kind]
    if name not in available:
        raise RuntimeError(
            f"{kind[:-1]} {name!r} is not available in ffmpeg {exe!r}; "
            f"available: {', '.join(available)}"
        )


class _CodingPipeline:
    """An ffmpeg encoder feeding an ffmpeg decoder, for one sequence, frame by frame.

    The caller writes raw frames to the encoder (``write``) and takes (access unit, decoded
    RGB frame) pairs as they come out (``ready``), then the last ones from ``finish``. A relay
    thread copies the encoder's output, which goes through an extra pipe since FFmpeg's
    libvvenc wrapper prints vvenc's warnings on stdout, to the decoder and keeps it until it is
    split into access units; a reader thread collects the decoded frames. A watchdog kills both
    processes when they make no progress for ``timeout`` seconds while the caller waits on
    them, so a stuck ffmpeg cannot hang us.
    """

    def __init__(self, encode_cmd: List[str], decode_cmd: List[str], height: int, width: int,
                 timeout: float):
        self.shape = (height, width, 3)
        self.timeout = timeout
        self._stderr = {what: tempfile.TemporaryFile() for what in ("vvc encode", "vvc decode")}
        self._lock = threading.Lock()
        self._coded = bytearray()  # encoder output not yet split into access units
        self._coded_ended = False
        self._units: Deque[bytes] = collections.deque()
        self._frames: "queue.Queue[Optional[np.ndarray]]" = queue.Queue()  # None: decoder's end
        self._decoded: Deque[np.ndarray] = collections.deque()
        self._written = self._paired = 0
        self._partial_frame = 0  # bytes of a truncated last frame from the decoder
        self._progress = time.monotonic()
        self._busy_since: Optional[float] = None  # set while the caller waits on ffmpeg
        self._timed_out = False
        self._closed = threading.Event()
        read_fd, write_fd = os.pipe()
        try:
            self.encoder = self._start(encode_cmd + [f"pipe:{write_fd}"], "vvc encode",
                                       stdout=subprocess.DEVNULL, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            self.decoder = self._start(decode_cmd, "vvc decode", stdout=subprocess.PIPE)
        except BaseException:
            os.close(read_fd)
            self.encoder.kill()
            raise
        self._threads = [threading.Thread(target=target, args=args, daemon=True) for target, args in
                         ((self._relay, (read_fd,)), (self._read_frames, ()), (self._watch, ()))]
        for thread in self._threads:
            thread.start()

    def _start(self, cmd: List[str], what: str, **kwargs: Any) -> subprocess.Popen:
        try:
            return subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._stderr[what], **kwargs)
        except OSError as exc:
            raise RuntimeError(f"{what}: cannot run ffmpeg {cmd[0]!r}: {exc}") from exc

    def _moved(self) -> None:
        self._progress = time.monotonic()

    # -- threads -----------------------------------------------------------------------------
    def _relay(self, read_fd: int) -> None:
        forward = True
        with os.fdopen(read_fd, "rb", buffering=0) as coded:
            while True:
                data = coded.read(RELAY_CHUNK_BYTES)
                if not data:
                    break
                with self._lock:  # kept before the decoder sees it (see ready())
                    self._coded += data
                self._moved()
                if forward:
                    try:
                        self.decoder.stdin.write(data)
                        self.decoder.stdin.flush()
                    except OSError:  # the decoder died: finish() reports it; keep draining
                        forward = False
        with self._lock:
            self._coded_ended = True
        try:
            self.decoder.stdin.close()
        except OSError:
            pass

    def _read_frames(self) -> None:
        size = int(np.prod(self.shape))
        while True:
            data = self.decoder.stdout.read(size)
            if len(data) < size:
                self._partial_frame = len(data)
                break
            self._frames.put(np.frombuffer(data, np.uint8).reshape(self.shape))
            self._moved()
        self._frames.put(None)

    def _watch(self) -> None:
        while not self._closed.wait(WATCHDOG_PERIOD_S):
            since = self._busy_since
            if since is not None and time.monotonic() - max(since, self._progress) > self.timeout:
                self._timed_out = True
                self._kill()
                return

    # -- caller side -------------------------------------------------------------------------
    def _failure(self, what: str, proc: subprocess.Popen) -> RuntimeError:
        if self._timed_out:
            return RuntimeError(f"{what}: ffmpeg made no progress for {self.timeout:g} s")
        err = self._stderr[what]
        err.seek(0)
        tail = err.read().decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
        return RuntimeError(f"{what}: ffmpeg exited with code {proc.returncode}:\n{tail}")

    def write(self, raw: bytes) -> None:
        """Send one raw frame to the encoder (blocks while the encoder is busy)."""
        try:
            with self._busy():
                self.encoder.stdin.write(raw)
                self.encoder.stdin.flush()
        except OSError:  # the encoder died (or the watchdog killed it)
            self.encoder.wait()
            raise self._failure("vvc encode", self.encoder) from None
        self._written += 1
        self._moved()

    def ready(self) -> Iterator[Tuple[bytes, np.ndarray]]:
        """The (access unit, decoded frame) pairs that are complete now, in order."""
        while True:
            try:
                frame = self._frames.get_nowait()
            except queue.Empty:
                break
            if frame is not None:
                self._decoded.append(frame)
        return self._pairs()

    def _pairs(self) -> Iterator[Tuple[bytes, np.ndarray]]:
        with self._lock:
            coded, ended = bytes(self._coded), self._coded_ended
        try:
            units, rest = annexb.take_vvc_access_units(coded, ended)
        except ValueError as exc:
            raise RuntimeError(f"vvc: encoder output is not a valid VVC stream: {exc}") from exc
        with self._lock:
            del self._coded[: len(coded) - len(rest)]
        self._units.extend(units)
        while self._units and self._decoded:
            self._paired += 1
            yield self._units.popleft(), self._decoded.popleft()

    def finish(self) -> Iterator[Tuple[bytes, np.ndarray]]:
        """Close the encoder's input and yield the remaining pairs as they come out (one decoded
        frame held at a time); RuntimeError if a process failed or if frames in, access units
        and decoded frames do not all agree."""
        try:
            self.encoder.stdin.close()
        except OSError:
            pass
        while True:
            with self._busy():  # the watchdog ends a stuck process, and so this wait
                frame = self._frames.get()
            if frame is None:  # the decoder is done
                break
            self._decoded.append(frame)
            yield from self._pairs()
        with self._busy():
            for what, proc in (("vvc encode", self.encoder), ("vvc decode", self.decoder)):
                proc.wait()
                if proc.returncode != 0 or self._timed_out:
                    raise self._failure(what, proc)
        for thread in self._threads[:2]:
            thread.join()
        yield from self._pairs()  # the last access unit is complete at the end of the stream
        self._check_counts()

    def _check_counts(self) -> None:
        """RuntimeError unless every frame in came out as one access unit and one frame."""
        units, frames = self._paired + len(self._units), self._paired + len(self._decoded)
        if not self._written == units == frames or self._partial_frame:
            raise RuntimeError(
                f"vvc: {self._written} frames in, {units} access units and {frames} decoded frames "
                f"out (+{self._partial_frame} bytes of a truncated frame)"
            )

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Mark a wait on ffmpeg: only then does the watchdog count time without progress (the
        caller may take its time between frames)."""
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def _kill(self) -> None:
        for proc in (self.encoder, self.decoder):
            if proc.poll() is None:
                proc.kill()

    def __enter__(self) -> "_CodingPipeline":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._closed.set()
        self._kill()  # no-op after finish(); ends the threads after an error
        for thread in self._threads:
            thread.join()
        for proc in (self.encoder, self.decoder):
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        for err in self._stderr.values():
            err.close()


@CODEC_REGISTRY.register()
class VvcCodec(Codec):
    """H.266/VVC low-delay (vvenc, no picture reordering, IDR every ``gop`` frames).

    vvenc's low-delay GOP codes inter frames as forward-only B slices (low-delay B, the
    VTM low-delay configuration); there is no reordering, so decode order = display order.
    """

    name = "vvc"
    is_video = True
    quality_help = "vvenc QP 0-63 (integer), higher = more compression"

    def __init__(
        self,
        gop: int = 12,
        preset: str = "faster",
        qpa: bool = False,
        threads: int = 1,
        timeout: float = DEFAULT_TIMEOUT_S,
        ffmpeg: str = "",
    ):
        """
        Args:
            gop: IDR period in frames (vvenc IntraPeriod); 1 = all intra.
            preset: vvenc preset; "faster" (the default here) keeps sweeps over many
                sequences affordable on CPU, "medium" is vvenc's own default.
            qpa: vvenc's perceptual QP adaptation; off so the QP is constant, as for the
                other codecs (it targets human viewers, not machine analysis).
            threads: encoder threads (1 keeps a process pool from oversubscribing).
            timeout: seconds an ffmpeg process may go without progress (encoding: no frame
                in or out; decoding: the whole call) before it is killed.
            ffmpeg: ffmpeg binary; default: imageio-ffmpeg's.
        """
        if int(gop) < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        if preset not in VVENC_PRESETS:
            raise ValueError(f"preset must be one of {VVENC_PRESETS}, got {preset!r}")
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if not float(timeout) > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.gop = int(gop)
        self.preset = preset
        self.qpa = bool(qpa)
        self.threads = int(threads)
        self.timeout = float(timeout)
        self.ffmpeg = ffmpeg

    def _exe(self, *needs: Tuple[str, str]) -> str:
        exe = ffmpeg_exe(self.ffmpeg)
        if not os.path.isfile(exe):
            raise RuntimeError(f"vvc: ffmpeg binary {exe!r} not found")
        for kind, name in needs:
            _require(exe, kind, name)
        return exe

    def _vvenc_params(self) -> str:
        params = {"AccessUnitDelimiter": 0}  # AUDs carry no picture data; x264/x265 omit them too
        if self.gop > 1:
            params.update(
                PicReordering=0,  # low delay
                # vvenc's only choice for low delay; its I-frames are still IDR pictures
                DecodingRefreshType="none",
                GOPSize=VVENC_LOW_DELAY_GOP_SIZE,
                IntraPeriod=self.gop,
                # vvenc's temporal pre-filter would otherwise look at future frames, so a
                # frame's bits would depend on frames after it
                MCTFFutureReference=0,
            )
        return ":".join(f"{k}={v}" for k, v in params.items())

    def _check_quality(self, quality: float) -> int:
        q = float(quality)
        lo, hi = QP_RANGE
        if not (lo <= q <= hi and q == int(q)):
            raise ValueError(f"vvc: quality (QP) must be an integer in [{lo}, {hi}], got {quality}")
        return int(q)

    def _encode_cmd(self, exe: str, qp: int, height: int, width: int) -> List[str]:
        """Raw yuv420p frames on stdin -> raw VVC; the output URL is appended by the caller."""
        return [
            exe, "-hide_banner", "-nostats", "-loglevel", "error",
            "-filter_threads", str(self.threads),
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-r", str(DEFAULT_FPS),
            "-i", "pipe:0",
            "-fps_mode", "passthrough", "-sws_flags", FFMPEG_SWS_FLAGS,
            "-c:v", VVC_ENCODER, "-preset", self.preset, "-qp", str(qp), "-qpa", str(int(self.qpa)),
            "-g", str(self.gop), "-threads", str(self.threads),
            "-vvenc-params", self._vvenc_params(),
            "-flush_packets", "1", "-f", VVC_MUXER,
        ]  # fmt: skip

    def _decode_cmd(self, exe: str) -> List[str]:
        """Raw VVC on stdin -> rgb24 frames on stdout, each written as soon as it is decoded."""
        return [
            exe, "-hide_banner", "-nostats", "-loglevel", "error", "-xerror",
            "-filter_threads", str(self.threads),
            "-err_detect", "explode", "-threads", str(self.threads),
            # start decoding at the first access unit instead of probing ~5 MB of stream first
            "-probesize", str(DECODER_PROBE_BYTES), "-analyzeduration", "0",
            "-f", VVC_MUXER, "-i", "pipe:0",
            # mapped explicitly: a short probe may not have seen the picture size yet, and ffmpeg
            # maps only streams of a known size by itself
            "-map", "0:v:0",
            "-fps_mode", "passthrough", "-sws_flags", FFMPEG_SWS_FLAGS,
            "-flush_packets", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]  # fmt: skip

    def _stream(self, frames: Iterator[np.ndarray], quality: float) -> Iterator[CodedFrame]:
        """One encoder process and one decoder process run for the whole sequence: each frame
        is written to the encoder as it comes, and each decoded frame is yielded with its access
        unit as soon as both are out, so memory stays bounded by the processes' delay."""
        qp = self._check_quality(quality)
        exe = self._exe(("encoders", VVC_ENCODER), ("muxers", VVC_MUXER), ("decoders", VVC_DECODER))
        first = next(frames)
        h, w = first.shape[:2]
        ph, pw = padded_size(h, w, YUV420_MULTIPLE, VVC_MIN_SIZE)
        with _CodingPipeline(self._encode_cmd(exe, qp, ph, pw), self._decode_cmd(exe),
                             ph, pw, self.timeout) as pipeline:
            try:
                for img in itertools.chain([first], frames):
                    yuv = rgb_to_yuv420p(pad_frame(img, ph, pw), self.threads)
                    pipeline.write(yuv.to_ndarray().tobytes())  # (3/2 * ph) x pw planar I420
                    for unit, rgb in pipeline.ready():
                        yield CodedFrame(image=np.ascontiguousarray(rgb[:h, :w]), data=unit)
                for unit, rgb in pipeline.finish():
                    yield CodedFrame(image=np.ascontiguousarray(rgb[:h, :w]), data=unit)
            except RuntimeError as exc:
                if VVENC_FAILURE_MARK not in str(exc):
                    raise
                raise RuntimeError(
                    f"{exc}\nvvc: besides a bad vvenc parameter, FFmpeg's libvvenc wrapper fails "
                    f"when one coded frame needs more than width*height bytes ({pw}x{ph} here), "
                    f"e.g. noise-like content at a very low QP (QP {qp} here): use a higher QP"
                ) from exc

    def random_access_points(self, chunks: Sequence[bytes]) -> List[int]:
        """Frame 0 and every IDR picture (vvenc repeats SPS and PPS in each)."""
        return [i for i, c in enumerate(chunks)
                if i == 0 or annexb.is_random_access_unit(c, annexb.CODEC_VVC)]

    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        check_decode_args(frame_bits, height, width)
        height, width = int(height), int(width)
        chunks = annexb.frame_chunks(bitstream, frame_bits)
        try:
            units = annexb.split_vvc_access_units(bitstream)
        except ValueError as exc:
            raise ValueError(f"vvc: corrupt bitstream: {exc}") from exc
        if [len(u) for u in units] != [len(c) for c in chunks]:
            raise ValueError(
                f"vvc: the bitstream holds {len(units)} access units that do not match frame_bits "
                f"({len(chunks)} frames): corrupt or mismatched bitstream"
            )
        exe = self._exe(("decoders", VVC_DECODER))
        ph, pw = padded_size(height, width, YUV420_MULTIPLE, VVC_MIN_SIZE)
        cmd = self._decode_cmd(exe)
        raw = _run(cmd, bytes(bitstream), self.timeout, "vvc decode")
        frame_bytes = ph * pw * 3
        if len(raw) != frame_bytes * len(chunks):
            raise RuntimeError(
                f"vvc: decoder returned {len(raw)} bytes, expected {len(chunks)} frames of "
                f"{pw}x{ph} rgb24 ({frame_bytes * len(chunks)} bytes): corrupt bitstream"
            )
        video = np.frombuffer(raw, dtype=np.uint8).reshape(len(chunks), ph, pw, 3)
        return [np.ascontiguousarray(f[:height, :width]) for f in video]
