"""Learned image codecs from CompressAI (cheng2020-anchor, bmshj2018-hyperprior).

Bits are the real range-coder strings of ``model.compress`` plus a small per-frame header
(all counted). The architecture comes from ``compressai.zoo`` with ``pretrained=False``
(nothing is downloaded); weights come from a user checkpoint, or a seeded random init
when ``allow_random=True`` (for tests and smoke runs: such a codec is not meaningful).

Per-frame stream layout (little endian)::

    u8 quality | u16 padded H | u16 padded W | u8 n | n x u32 string length | n strings

``LearnedCodec`` (weights per quality, seeded random init, torch threads) is shared with the
learned video codec of ``neural_video.py``.
"""
import contextlib
import os
import struct
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import annexb
from .base import CODEC_REGISTRY, Codec, check_decode_args, pad_frame, padded_size

__all__ = ["LearnedCodec", "Cheng2020AnchorCodec", "Bmshj2018HyperpriorCodec",
           "load_state_dict_file", "checkpoint_path", "torch_threads", "image_to_tensor",
           "tensor_to_image", "CHECKPOINT_NAME", "learned_codec_options", "file_sha256"]

FRAME_HEADER = struct.Struct("<BHHB")
STRING_LENGTH = struct.Struct("<I")
MAX_DIM = 0xFFFF  # largest padded size the u16 header fields can hold
MAX_STRINGS = 8  # sanity bound when parsing a header (these models write 2)
# Both architectures downsample by 16 (analysis) x 4 (hyper-analysis).
PAD_MULTIPLE = 64
RANDOM_INIT_SEED = 0  # same random model in every process, so any instance can decode
CHECKPOINT_KEYS = ("state_dict", "model")  # wrappers of a state_dict in common checkpoints
DATA_PARALLEL_PREFIX = "module."
# A quality's checkpoint inside a weights directory (what tools/train_learned_codec.py writes).
CHECKPOINT_NAME = "q{quality}.pth"
CHECKSUM_CHUNK = 1 << 20  # bytes read at a time when hashing a checkpoint


def checkpoint_path(weights: str, quality: int) -> str:
    """The checkpoint of ``quality``: ``<weights>/q<quality>.pth`` if ``weights`` is a directory,
    else ``weights`` with "{quality}" formatted."""
    if os.path.isdir(weights):
        return os.path.join(weights, CHECKPOINT_NAME.format(quality=quality))
    return weights.format(quality=quality)


def learned_codec_options(spec: str, qualities: Sequence[int],
                          shared: Mapping[str, Any] = ()) -> Tuple[str, Dict[str, Any]]:
    """(codec name, options) from ``"NAME=WEIGHTS"``: a registered learned codec and its trained
    checkpoints (absolute path, as pair manifests record it); every quality's checkpoint must
    exist. ``shared`` options (e.g. ``gop``) are kept where the codec's constructor takes them.
    The options hold each checkpoint's sha256 (``checksums``), so a pair manifest identifies the
    weights, not just their path."""
    import inspect

    name, sep, weights = spec.partition("=")
    if not sep or not weights:
        raise ValueError(f"expected NAME=WEIGHTS (a learned codec and its checkpoints), got {spec!r}")
    if name not in CODEC_REGISTRY or not issubclass(CODEC_REGISTRY.get(name), LearnedCodec):
        learned = sorted(n for n, c in CODEC_REGISTRY if issubclass(c, LearnedCodec))
        raise ValueError(f"{name!r} is not a learned codec; learned codecs: {', '.join(learned)}")
    weights = os.path.abspath(weights)
    missing = [p for p in (checkpoint_path(weights, q) for q in qualities) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{name}: no checkpoint {', '.join(missing)} (train them with "
                                "tools/train_learned_codec.py)")
    accepted = inspect.signature(CODEC_REGISTRY.get(name)).parameters
    checksums = {str(q): file_sha256(checkpoint_path(weights, q)) for q in qualities}
    return name, {**{k: v for k, v in dict(shared).items() if k in accepted}, "weights": weights,
                  "checksums": checksums}


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHECKSUM_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"codec checkpoint not found: {path}") from exc
    return digest.hexdigest()


def load_state_dict_file(path: str) -> Dict[str, Any]:
    """Load a state_dict from ``path`` (raw, or under "state_dict"/"model"), weights only."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"codec checkpoint not found: {path}") from exc
    for key in CHECKPOINT_KEYS:
        if isinstance(ckpt, Mapping) and isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, Mapping) or not ckpt:
        raise ValueError(f"{path}: expected a state_dict (or a dict with one of {CHECKPOINT_KEYS})")
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in ckpt):
        ckpt = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in ckpt.items()}
    return dict(ckpt)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads (0: leave as is), restoring it afterwards.

    torch's thread count is process-wide; the codec only changes it for the duration of
    a call. Small latents gain nothing from more threads, and in a process pool of N
    workers the default (all cores per worker) oversubscribes the machine.
    """
    import torch

    previous = torch.get_num_threads()
    if threads <= 0 or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def image_to_tensor(image: np.ndarray, height: int, width: int) -> Any:
    """RGB uint8 HxWx3 -> float 1x3xHxW in [0, 1], edge-padded to (height, width)."""
    import torch

    # a copy (torch.tensor): the frame may be a read-only array, which from_numpy warns about
    frame = torch.tensor(pad_frame(image, height, width), dtype=torch.float32)
    return frame.permute(2, 0, 1)[None] / 255.0


def tensor_to_image(x_hat: Any, height: int, width: int) -> np.ndarray:
    """A model's 1x3xHxW output -> RGB uint8 (clamped, rounded), cropped to height x width."""
    import torch

    img = (x_hat[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0)
    return np.ascontiguousarray(img.numpy()[:height, :width])


class LearnedCodec(Codec):
    """A codec built on a CompressAI zoo architecture, with user weights per quality index.

    Holds configuration only: each process builds the models it needs on first use (the cache
    is dropped when the codec is pickled). Subclasses name the zoo model and quality range.
    """

    zoo_name: str = ""  # function name in compressai.zoo
    quality_range: Tuple[int, int] = (1, 1)
    pad_multiple: int = 1  # frame sizes the architecture codes: multiples of this

    def __init__(self, weights: str = "", allow_random: bool = False, threads: int = 1,
                 checksums: Optional[Mapping[str, str]] = None):
        """
        Args:
            weights: the checkpoints, one per quality index: a directory holding
                ``q<quality>.pth`` (what tools/train_learned_codec.py writes), or a path that
                may contain "{quality}" (formatted with the quality index). Loaded with
                ``torch.load(weights_only=True)``.
            allow_random: with no weights, use a seeded random init instead of failing.
            threads: torch intra-op threads during encode/decode (0 = torch's setting).
            checksums: {str(quality): sha256 hex of its checkpoint file} (see
                ``learned_codec_options``). A checkpoint that no longer matches is refused, so
                streams and pair datasets made with older weights are never decoded or reused
                with retrained ones at the same path.
        """
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        checksums = dict(checksums or {})
        if checksums and not weights:
            raise ValueError(f"{self.name}: checksums are given without weights")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()):
            raise ValueError(f"{self.name}: checksums must map quality strings to hex digests, "
                             f"got {checksums!r}")
        self.checksums = checksums
        if not weights and not allow_random:
            raise ValueError(
                f"{self.name}: no weights given; pass weights='DIR' (holding q<quality>.pth) or "
                "weights='path/to/ckpt_q{quality}.pth' (pretrained CompressAI weights cannot be "
                "downloaded here) or allow_random=True"
            )
        self.weights = weights
        self.allow_random = bool(allow_random)
        self.threads = int(threads)
        self._models: Dict[int, Any] = {}  # quality index -> model (cache)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_models"] = {}  # rebuild models in the receiving process
        return state

    def _check_quality(self, quality: float) -> int:
        lo, hi = self.quality_range
        q = float(quality)
        if not (lo <= q <= hi and q == int(q)):
            raise ValueError(
                f"{self.name}: quality must be an integer in [{lo}, {hi}], got {quality}"
            )
        return int(q)

    def _model(self, quality: int) -> Any:
        if quality not in self._models:
            with torch_threads(self.threads):
                self._models[quality] = self._build_model(quality)
        return self._models[quality]

    def _build_model(self, quality: int) -> Any:
        import torch
        from compressai import zoo

        build = getattr(zoo, self.zoo_name)
        if self.weights:
            model = build(quality=quality, pretrained=False)
            path = checkpoint_path(self.weights, quality)
            expected = self.checksums.get(str(quality))
            if expected is not None and file_sha256(path) != expected:
                raise ValueError(
                    f"{self.name}: checkpoint {path} changed since these options were made "
                    f"(sha256 {expected[:12]}...): data coded with the old weights cannot be "
                    "decoded or reused with it; compress again into another folder")
            try:
                model.load_state_dict(load_state_dict_file(path))
            except RuntimeError as exc:
                raise ValueError(
                    f"{self.name}: checkpoint {path} does not fit the quality-{quality} "
                    f"architecture: {exc}"
                ) from exc
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = build(quality=quality, pretrained=False)
        model = model.to("cpu").eval()
        model.update(force=True)  # build the CDF tables the range coder needs
        return model


class _CompressAICodec(LearnedCodec):
    """Shared CompressAI image path; subclasses name the zoo model and its quality range."""

    pad_multiple = PAD_MULTIPLE

    def _encode_bitstream(
        self, frames: List[np.ndarray], quality: float
    ) -> Tuple[bytes, List[int]]:
        import torch

        q = self._check_quality(quality)
        h, w = frames[0].shape[:2]
        ph, pw = padded_size(h, w, PAD_MULTIPLE)
        if max(ph, pw) > MAX_DIM:
            raise ValueError(f"{self.name}: frames up to {MAX_DIM} pixels per side, got {h}x{w}")
        model = self._model(q)
        chunks = []
        with torch.no_grad(), torch_threads(self.threads):
            for img in frames:
                out = model.compress(image_to_tensor(img, ph, pw))
                if tuple(out["shape"]) != (ph // PAD_MULTIPLE, pw // PAD_MULTIPLE):
                    raise RuntimeError(
                        f"{self.name}: unexpected latent shape {tuple(out['shape'])}"
                    )
                strings = [s[0] for s in out["strings"]]
                header = FRAME_HEADER.pack(q, ph, pw, len(strings))
                header += b"".join(STRING_LENGTH.pack(len(s)) for s in strings)
                chunks.append(header + b"".join(strings))
        return b"".join(chunks), [8 * len(c) for c in chunks]

    def _parse_frame(
        self, chunk: bytes, index: int, height: int, width: int
    ) -> Tuple[int, List[bytes]]:
        """Validate one frame's header against the expected size; return (quality, strings)."""

        def bad(msg: str) -> ValueError:
            return ValueError(f"{self.name}: frame {index}: {msg} (corrupt bitstream)")

        if len(chunk) < FRAME_HEADER.size:
            raise bad(f"{len(chunk)} bytes is shorter than the frame header")
        q, ph, pw, n = FRAME_HEADER.unpack_from(chunk)
        lo, hi = self.quality_range
        if not lo <= q <= hi:
            raise bad(f"quality index {q} outside [{lo}, {hi}]")
        if (ph, pw) != padded_size(height, width, PAD_MULTIPLE):
            raise bad(f"padded size {ph}x{pw} does not match a {height}x{width} frame")
        if not 1 <= n <= MAX_STRINGS:
            raise bad(f"{n} strings")
        pos = FRAME_HEADER.size
        if len(chunk) < pos + n * STRING_LENGTH.size:
            raise bad("truncated string lengths")
        lengths = [
            STRING_LENGTH.unpack_from(chunk, pos + i * STRING_LENGTH.size)[0] for i in range(n)
        ]
        pos += n * STRING_LENGTH.size
        if pos + sum(lengths) != len(chunk):
            raise bad(
                f"string lengths add up to {pos + sum(lengths)} bytes, frame has {len(chunk)}"
            )
        strings = []
        for length in lengths:
            strings.append(chunk[pos : pos + length])
            pos += length
        return q, strings

    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        import torch

        check_decode_args(frame_bits, height, width)
        height, width = int(height), int(width)
        out = []
        with torch.no_grad(), torch_threads(self.threads):
            for i, chunk in enumerate(annexb.frame_chunks(bitstream, frame_bits)):
                q, strings = self._parse_frame(chunk, i, height, width)
                ph, pw = padded_size(height, width, PAD_MULTIPLE)
                shape = [ph // PAD_MULTIPLE, pw // PAD_MULTIPLE]
                try:
                    x_hat = self._model(q).decompress([[s] for s in strings], shape)["x_hat"]
                except (RuntimeError, ValueError, IndexError) as exc:
                    raise ValueError(f"{self.name}: frame {i} cannot be decoded: {exc}") from exc
                out.append(tensor_to_image(x_hat, height, width))
        return out


_NEURAL_HELP = (
    "CompressAI zoo quality index {lo}-{hi} (integer; picks the architecture and the checkpoint "
    "of weights), higher = more bits"
)


@CODEC_REGISTRY.register()
class Cheng2020AnchorCodec(_CompressAICodec):
    """Cheng et al. 2020 anchor (residual blocks, attention-free, autoregressive context)."""

    name = "cheng2020_anchor"
    zoo_name = "cheng2020_anchor"
    quality_range = (1, 6)
    quality_help = _NEURAL_HELP.format(lo=1, hi=6)


@CODEC_REGISTRY.register()
class Bmshj2018HyperpriorCodec(_CompressAICodec):
    """Ballé et al. 2018 scale hyperprior."""

    name = "bmshj2018_hyperprior"
    zoo_name = "bmshj2018_hyperprior"
    quality_range = (1, 8)
    quality_help = _NEURAL_HELP.format(lo=1, hi=8)
