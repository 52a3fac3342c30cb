"""H.266 / VVC through the vvenc encoder and the native VVC decoder of imageio-ffmpeg's binary.

One ffmpeg process encodes the whole sequence (raw yuv420p on stdin, raw Annex-B VVC to a
temporary file) and one decodes it (VVC on stdin, rgb24 on stdout). The encoder does not
write to stdout because FFmpeg's libvvenc wrapper prints vvenc's warnings there (e.g.
"Configuration warning: ALFSpeed would disable ALF ..." with the "faster" preset), which
would end up appended to the bitstream. The yuv420p input is made by
PyAV/swscale exactly as for x264/x265 (see ``yuv.py``), so all video codecs see identical
pictures, and the decoder's YUV -> RGB conversion uses the same swscale flags.
Per-frame bits come from splitting the Annex-B stream into access units.
"""
import functools
import os
import re
import subprocess
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np

from . import annexb
from .base import CODEC_REGISTRY, Codec, check_decode_args, pad_frame, padded_size
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
            timeout: seconds allowed for each ffmpeg call.
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

    def _encode_bitstream(
        self, frames: List[np.ndarray], quality: float
    ) -> Tuple[bytes, List[int]]:
        qp = self._check_quality(quality)
        exe = self._exe(("encoders", VVC_ENCODER), ("muxers", VVC_MUXER))
        h, w = frames[0].shape[:2]
        ph, pw = padded_size(h, w, YUV420_MULTIPLE, VVC_MIN_SIZE)
        raw = bytearray()
        for img in frames:
            yuv = rgb_to_yuv420p(pad_frame(img, ph, pw), self.threads)
            raw += yuv.to_ndarray().tobytes()  # (3/2 * ph) x pw planar I420
        cmd = [
            exe, "-hide_banner", "-nostats", "-loglevel", "error",
            "-filter_threads", str(self.threads),
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{pw}x{ph}", "-r", str(DEFAULT_FPS),
            "-i", "pipe:0",
            "-fps_mode", "passthrough", "-sws_flags", FFMPEG_SWS_FLAGS,
            "-c:v", VVC_ENCODER, "-preset", self.preset, "-qp", str(qp), "-qpa", str(int(self.qpa)),
            "-g", str(self.gop), "-threads", str(self.threads),
            "-vvenc-params", self._vvenc_params(),
            "-f", VVC_MUXER,
        ]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="vcm_vvc_") as tmp:
            out_path = os.path.join(tmp, "stream.266")
            try:
                _run(cmd + [out_path], bytes(raw), self.timeout, "vvc encode")
            except RuntimeError as exc:
                if VVENC_FAILURE_MARK not in str(exc):
                    raise
                raise RuntimeError(
                    f"{exc}\nvvc: besides a bad vvenc parameter, FFmpeg's libvvenc wrapper fails "
                    f"when one coded frame needs more than width*height bytes ({pw}x{ph} here), "
                    f"e.g. noise-like content at a very low QP (QP {qp} here): use a higher QP"
                ) from exc
            with open(out_path, "rb") as f:
                bitstream = f.read()
        try:
            units = annexb.split_vvc_access_units(bitstream)
        except ValueError as exc:
            raise RuntimeError(f"vvc: encoder output is not a valid VVC stream: {exc}") from exc
        if len(units) != len(frames):
            raise RuntimeError(
                f"vvc: encoder produced {len(units)} access units for {len(frames)} frames"
            )
        return bitstream, [8 * len(u) for u in units]

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
        cmd = [
            exe, "-hide_banner", "-nostats", "-loglevel", "error", "-xerror",
            "-filter_threads", str(self.threads),
            "-err_detect", "explode", "-threads", str(self.threads),
            "-f", VVC_MUXER, "-i", "pipe:0",
            "-fps_mode", "passthrough", "-sws_flags", FFMPEG_SWS_FLAGS,
            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]  # fmt: skip
        raw = _run(cmd, bytes(bitstream), self.timeout, "vvc decode")
        frame_bytes = ph * pw * 3
        if len(raw) != frame_bytes * len(chunks):
            raise RuntimeError(
                f"vvc: decoder returned {len(raw)} bytes, expected {len(chunks)} frames of "
                f"{pw}x{ph} rgb24 ({frame_bytes * len(chunks)} bytes): corrupt bitstream"
            )
        video = np.frombuffer(raw, dtype=np.uint8).reshape(len(chunks), ph, pw, 3)
        return [np.ascontiguousarray(f[:height, :width]) for f in video]
