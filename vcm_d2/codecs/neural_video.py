"""Learned video codec: CompressAI's scale-space flow model (``ssf2020``, Agustsson et al.,
CVPR 2020) in low-delay P order, with real range-coder strings and exact bits.

Frames 0, gop, 2*gop, ... are I-frames (``encode_keyframe``'s image autoencoder); every other
frame is a P-frame coded from the previous *decoded* frame (scale-space motion + residual). The
encoder forms each reconstruction with the decoder's own steps (``_decode_intra``, ``_predict``,
``_reconstruct``) from the strings it wrote, so decoding the bytes reproduces the encoder's
frames exactly on the same CPU type, torch build and ``threads`` (CPU convolutions split their
reductions by thread). The reference of a P-frame is the previous reconstruction clamped to
[0, 1], as in CompressAI's video evaluation.

Weights: one checkpoint per quality index, as for the image codecs of ``neural.py``
(``weights=DIR`` holding ``q<quality>.pth``, what ``tools/train_learned_codec.py`` writes); the
architecture is the same at every quality. ``allow_random=True`` (tests only) uses a seeded
random init.

Frame record, one per frame, format version 1 (integers little endian)::

    u8 version | u8 type ("I" / "P") | I-frames only: u8 quality | u16 padded H | u16 padded W |
    per string (I: image y, z; P: motion y, z, residual y, z): length (unsigned LEB128) + bytes |
    u16 CRC-16/CCITT (binascii.crc_hqx) of the record's bytes before it

A frame's bits are 8 x its record's bytes, headers and check included; there is no stream
header: an I-frame carries what decoding its GOP needs (quality, size), so decoding can start at
any I-frame (``random_access_points``). Frames are edge-padded at the bottom/right to a multiple
of 128 (the analysis transform downsamples by 16, the hyper-analysis by 8 more). A record that
fails its check, is cut short or has bytes left over, a P-frame without an I-frame before it, or
an I-frame of another size raises ValueError.
"""
import binascii
import functools
import struct
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..utils.bytestream import ByteReader, encode_varint
from . import annexb
from .base import CODEC_REGISTRY, CodedFrame, check_decode_args, padded_size
from .neural import MAX_DIM, LearnedCodec, image_to_tensor, tensor_to_image, torch_threads

__all__ = ["SSF2020Codec", "FORMAT_VERSION", "PAD_MULTIPLE", "DEFAULT_GOP"]

FORMAT_VERSION = 1
INTRA, INTER = ord("I"), ord("P")
# Range-coder strings of a frame type, in record order (CompressAI's hyperpriors write [y, z]).
STRINGS = {INTRA: ("image y", "image z"),
           INTER: ("motion y", "motion z", "residual y", "residual z")}
PAD_MULTIPLE = 128  # 2**4 (analysis) x 2**3 (hyper-analysis)
DEFAULT_GOP = 12  # I-frame period, as x264's default here
_PREFIX = struct.Struct("<BB")  # version, type
_SIZE = struct.Struct("<BHH")  # quality, padded H, padded W (I-frames)
_CHECK = struct.Struct("<H")


@dataclass(frozen=True)
class _Record:
    kind: int  # INTRA or INTER
    quality: int  # 0 for P-frames (they use their GOP's)
    padded: Tuple[int, int]  # (0, 0) for P-frames
    strings: List[bytes]


def _pack_record(kind: int, strings: Sequence[bytes], quality: int = 0,
                 padded: Tuple[int, int] = (0, 0)) -> bytes:
    body = bytearray(_PREFIX.pack(FORMAT_VERSION, kind))
    if kind == INTRA:
        body += _SIZE.pack(quality, *padded)
    for s in strings:
        body += encode_varint(len(s)) + s
    return bytes(body) + _CHECK.pack(binascii.crc_hqx(bytes(body), 0))


def _parse_record(chunk: bytes, bad: Any) -> _Record:
    """One record's fields; ``bad(message)`` makes the error to raise."""
    if len(chunk) < _PREFIX.size + _CHECK.size:
        raise bad(f"{len(chunk)} bytes is shorter than a frame record (truncated)")
    end = len(chunk) - _CHECK.size
    if _CHECK.unpack_from(chunk, end)[0] != binascii.crc_hqx(chunk[:end], 0):
        raise bad("record check (CRC-16) mismatch")
    version, kind = _PREFIX.unpack_from(chunk)
    if version != FORMAT_VERSION:
        raise bad(f"format version {version}, this decoder reads {FORMAT_VERSION}")
    if kind not in STRINGS:
        raise bad(f"unknown frame type {kind}")
    pos, quality, padded = _PREFIX.size, 0, (0, 0)
    if kind == INTRA:
        if end < pos + _SIZE.size:
            raise bad("I-frame header cut short")
        quality, *size = _SIZE.unpack_from(chunk, pos)
        padded = (size[0], size[1])
        pos += _SIZE.size
    reader = ByteReader(chunk[pos:end], "record", bad)
    strings = [reader.take(reader.varint(f"the length of the {name} string"), f"the {name} string")
               for name in STRINGS[kind]]
    if reader.remaining:
        raise bad(f"{reader.remaining} bytes left over after the strings")
    return _Record(kind, quality, padded, strings)


# -- the decoder's steps, shared by the encoder (bit-exact reconstructions) -------------------
def _latent_shape(padded: Tuple[int, int]) -> Tuple[int, int]:
    return padded[0] // PAD_MULTIPLE, padded[1] // PAD_MULTIPLE


def _decode_intra(model: Any, strings: Sequence[bytes], shape: Tuple[int, int]) -> Any:
    return model.decode_keyframe([[s] for s in strings], shape).clamp(0, 1)


def _predict(model: Any, x_ref: Any, motion: Sequence[bytes], shape: Tuple[int, int]):
    """(motion latent, motion-compensated prediction of the frame) from the motion strings."""
    y_motion_hat = model.motion_hyperprior.decompress([[s] for s in motion], shape)
    return y_motion_hat, model.forward_prediction(x_ref, model.motion_decoder(y_motion_hat))


def _reconstruct(model: Any, x_pred: Any, y_motion_hat: Any, residual: Sequence[bytes],
                 shape: Tuple[int, int]) -> Any:
    import torch

    y_res_hat = model.res_hyperprior.decompress([[s] for s in residual], shape)
    x_res_hat = model.res_decoder(torch.cat((y_res_hat, y_motion_hat), dim=1))
    return (x_pred + x_res_hat).clamp(0, 1)


@CODEC_REGISTRY.register()
class SSF2020Codec(LearnedCodec):
    """Scale-space flow (ssf2020) in low-delay P order: an I-frame every ``gop`` frames."""

    name = "ssf2020"
    is_video = True
    zoo_name = "ssf2020"
    pad_multiple = PAD_MULTIPLE
    quality_range = (1, 9)  # compressai.zoo.ssf2020's; one architecture, one checkpoint each
    quality_help = ("checkpoint index 1-9 (q<quality>.pth of weights; "
                    "tools/train_learned_codec.py trains one per lambda), higher = more bits")

    def __init__(self, weights: str = "", allow_random: bool = False, threads: int = 1,
                 gop: int = DEFAULT_GOP, checksums: Optional[Mapping[str, str]] = None):
        """
        Args:
            weights, allow_random, threads, checksums: see ``LearnedCodec``.
            gop: I-frame period: frames 0, gop, 2*gop, ... are I-frames.
        """
        super().__init__(weights=weights, allow_random=allow_random, threads=threads,
                         checksums=checksums)
        if int(gop) < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        self.gop = int(gop)

    # -- encode ---------------------------------------------------------------------------
    def _stream(self, frames: Iterator[np.ndarray], quality: float) -> Iterator[CodedFrame]:
        """One frame in, its record and reconstruction out (the reference is the only state)."""
        import torch

        q = self._check_quality(quality)
        model = self._model(q)
        x_ref = None
        for i, img in enumerate(frames):
            if i == 0:
                h, w = img.shape[:2]
                padded = padded_size(h, w, PAD_MULTIPLE)
                if max(padded) > MAX_DIM:
                    raise ValueError(f"{self.name}: frames up to {MAX_DIM} pixels per side, "
                                     f"got {h}x{w}")
            with torch.no_grad(), torch_threads(self.threads):  # per frame: not across yields
                x = image_to_tensor(img, *padded)
                if i % self.gop == 0:
                    data, x_ref = self._encode_intra(model, x, q, padded)
                else:
                    data, x_ref = self._encode_inter(model, x, x_ref, padded)
                image = tensor_to_image(x_ref, h, w)
            yield CodedFrame(image=image, data=data)

    @staticmethod
    def _encode_intra(model: Any, x: Any, quality: int, padded: Tuple[int, int]):
        _, out = model.img_hyperprior.compress(model.img_encoder(x))
        strings = [s[0] for s in out["strings"]]
        shape = _latent_shape(padded)
        return _pack_record(INTRA, strings, quality, padded), _decode_intra(model, strings, shape)

    @staticmethod
    def _encode_inter(model: Any, x: Any, x_ref: Any, padded: Tuple[int, int]):
        import torch

        shape = _latent_shape(padded)
        y_motion = model.motion_encoder(torch.cat((x, x_ref), dim=1))
        _, out = model.motion_hyperprior.compress(y_motion)
        motion = [s[0] for s in out["strings"]]
        y_motion_hat, x_pred = _predict(model, x_ref, motion, shape)
        _, out = model.res_hyperprior.compress(model.res_encoder(x - x_pred))
        residual = [s[0] for s in out["strings"]]
        x_rec = _reconstruct(model, x_pred, y_motion_hat, residual, shape)
        return _pack_record(INTER, motion + residual), x_rec

    # -- decode ---------------------------------------------------------------------------
    def decode(
        self, bitstream: bytes, frame_bits: Sequence[int], height: int, width: int
    ) -> List[np.ndarray]:
        import torch

        check_decode_args(frame_bits, height, width)
        height, width = int(height), int(width)
        padded = padded_size(height, width, PAD_MULTIPLE)
        shape = _latent_shape(padded)
        model, x_ref, out = None, None, []
        for i, chunk in enumerate(annexb.frame_chunks(bitstream, frame_bits)):
            bad = functools.partial(self._corrupt, i)
            record = _parse_record(chunk, bad)
            if record.kind == INTRA:
                lo, hi = self.quality_range
                if not lo <= record.quality <= hi:
                    raise bad(f"quality index {record.quality} outside [{lo}, {hi}]")
                if record.padded != padded:
                    raise bad(f"padded size {record.padded[0]}x{record.padded[1]} does not match "
                              f"a {height}x{width} frame")
                model = self._model(record.quality)
            elif model is None:
                raise bad("a P-frame without an I-frame before it: decoding starts at an I-frame")
            with torch.no_grad(), torch_threads(self.threads):
                try:
                    if record.kind == INTRA:
                        x_ref = _decode_intra(model, record.strings, shape)
                    else:
                        y_motion_hat, x_pred = _predict(model, x_ref, record.strings[:2], shape)
                        x_ref = _reconstruct(model, x_pred, y_motion_hat, record.strings[2:], shape)
                except (RuntimeError, ValueError, IndexError) as exc:
                    raise bad(f"cannot be decoded: {exc}") from exc
                out.append(tensor_to_image(x_ref, height, width))
        return out

    def _corrupt(self, index: int, message: str) -> ValueError:
        return ValueError(f"{self.name}: frame {index}: {message} (corrupt bitstream)")

    def random_access_points(self, chunks: Sequence[bytes]) -> List[int]:
        """Frame 0 and every I-frame."""
        return [i for i, c in enumerate(chunks)
                if i == 0 or (len(c) >= _PREFIX.size and c[1] == INTRA)]
