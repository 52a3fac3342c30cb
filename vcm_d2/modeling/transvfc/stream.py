"""``FeatureStreamCoder``: res2 features of videos <-> TransVFC bitstreams.

The video feature codec (``codec.py``) codes one frame given the previous reconstruction; this
module runs it over videos, with an I-frame every GOP frames and P-frames in between, and
writes / reads the container (``container.py``). It takes features, not images: the
meta-architecture (``meta_arch.py``) runs the head.

* ``encode`` / ``decode``: one video into one stream and back. Decoding refuses streams of
  another model (``model_hash``) and runs with the encoder's torch thread count, so it
  reproduces the encoder's reconstruction bit for bit on CPU.
* ``code_frame``: one frame at a time (evaluation). One open stream is kept per ``video_id``;
  a frame whose ``frame_idx`` follows the previous one of its video continues it (P-frame, or
  I-frame every GOP frames), ``frame_idx`` 0 starts a new stream, any other gap logs a warning
  and codes an I-frame. Frames without ``video_id`` / ``frame_idx`` are one-frame streams. A
  frame's bits are its container bytes (type, lengths, latents of I-frame / motion / residual /
  hyperpriors, CRC) plus, on the first frame of a stream, the stream header.
"""
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from .codec import TransVFCCodec
from .container import (
    BITS_PER_BYTE,
    MAX_MODEL_ID_BYTES,
    MAX_QUALITY_INDEX,
    MODEL_HASH_BYTES,
    ContainerError,
    ParsedStream,
    StreamHeader,
    encode_frame,
    header_num_bytes,
    read_stream,
    write_stream,
)
from .perception import SplitBackbone

__all__ = ["FeatureStreamCoder", "EncodedVideo", "DecodedFrame"]

logger = logging.getLogger(__name__)


@dataclass
class EncodedVideo:
    stream: bytes
    frame_bits: List[int]  # per frame, header charged to frame 0; sums to 8 * len(stream)
    frame_types: List[str]
    features: List[Tensor]  # encoder-side reconstructions F^_t (if requested)


@dataclass
class DecodedFrame:
    index: int
    frame_type: str
    bits: int
    feature: Tensor  # F^_t, 1 x C x h x w


@dataclass
class _OpenStream:
    next_idx: int
    gop_start: int
    reference: Tensor
    feature_shape: Tuple[int, ...]


class FeatureStreamCoder:
    """GOP structure, open streams and the container around a ``TransVFCCodec``.

    Not an ``nn.Module``: it codes with modules its owner registers (the codec and the
    backbone whose rest is the perception network), whose parameter names stay the owner's.
    """

    def __init__(self, codec: TransVFCCodec, split: SplitBackbone, *, model_id: str,
                 quality_index: int, max_open_videos: int):
        """
        Args:
            codec: the video feature codec.
            split: the upstream backbone; ``split.rest`` is the codec's perception network.
            model_id, quality_index: written into stream headers.
            max_open_videos: open streams of ``code_frame`` kept (least recently used closed
                first).
        """
        self.codec = codec
        self.split = split
        self.model_id = str(model_id)
        if len(self.model_id.encode("utf-8")) > MAX_MODEL_ID_BYTES:
            raise ValueError(f"MODEL_ID must fit in {MAX_MODEL_ID_BYTES} UTF-8 bytes")
        self.quality_index = int(quality_index)
        if not 0 <= self.quality_index <= MAX_QUALITY_INDEX:
            raise ValueError(f"QUALITY_INDEX must be in [0, {MAX_QUALITY_INDEX}], got "
                             f"{quality_index}")
        self.max_open_videos = int(max_open_videos)
        if self.max_open_videos < 1:
            raise ValueError("EVAL_MAX_OPEN_VIDEOS must be >= 1")
        self._streams: "OrderedDict[Hashable, _OpenStream]" = OrderedDict()
        self._ready = False

    def reset(self) -> None:
        """Close every open stream and recompute the CDF tables before the next coding (the
        weights may have changed)."""
        self._streams.clear()
        self._ready = False

    def prepare(self) -> None:
        """Compute the entropy coders' CDF tables from the current weights (once after each
        ``reset``)."""
        if not self._ready:
            self.codec.update(force=True)
            self._ready = True

    def model_hash(self) -> bytes:
        """Identity of everything the decoder runs: codec (incl. its CDF tables) and the
        upstream backbone (perception network). Call after ``prepare``."""
        digest = hashlib.sha256()
        for prefix, module in (("codec", self.codec), ("backbone", self.split.backbone)):
            for name, t in sorted(module.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                digest.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)};".encode())
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.digest()[:MODEL_HASH_BYTES]

    # ------------------------------------------------------------------ frame by frame
    @torch.no_grad()
    def code_frame(self, feature: Tensor, video_id: Optional[Hashable] = None,
                   frame_idx: Optional[int] = None) -> Tuple[Tensor, dict, int]:
        """Code one res2 feature within its video's stream (module docstring); returns
        (F^_t, the codec record, the frame's bits)."""
        self.prepare()
        header_bits = BITS_PER_BYTE * header_num_bytes(self.model_id)
        if video_id is None or frame_idx is None:  # a lone image: a one-frame stream
            record, decoded, _ = self.codec.compress_frame(feature, self.split.rest, None)
            return decoded, record, header_bits + BITS_PER_BYTE * len(encode_frame(record))
        idx = int(frame_idx)
        state = self._streams.pop(video_id, None)
        new_stream = state is None or idx == 0
        if state is not None and not new_stream and (
                idx != state.next_idx or tuple(feature.shape) != state.feature_shape):
            logger.warning("TransVFC: frame_idx %d of video %r does not follow frame %d (or its "
                           "size changed); coding an I-frame", idx, video_id, state.next_idx - 1)
            state = None
        elif state is None and idx != 0:
            logger.warning("TransVFC: video %r starts at frame_idx %d (not 0) or its stream was "
                           "closed; opening a stream with an I-frame", video_id, idx)
        if new_stream or state is None:
            gop_start, reference = idx, None
        else:
            gop_start = state.gop_start
            reference = None if self.codec.frame_type(idx - gop_start) == "I" else state.reference
        record, decoded, new_reference = self.codec.compress_frame(feature, self.split.rest,
                                                                   reference)
        self._streams[video_id] = _OpenStream(next_idx=idx + 1, gop_start=gop_start,
                                              reference=new_reference,
                                              feature_shape=tuple(feature.shape))
        while len(self._streams) > self.max_open_videos:
            self._streams.popitem(last=False)
        bits = BITS_PER_BYTE * len(encode_frame(record)) + (header_bits if new_stream else 0)
        return decoded, record, bits

    # ------------------------------------------------------------------ whole videos
    @torch.no_grad()
    def encode(self, features: Iterable[Tensor], image_size: Tuple[int, int],
               original_size: Optional[Tuple[int, int]] = None,
               return_features: bool = False) -> EncodedVideo:
        """Code the res2 features of a video's frames, all of one size, into one stream.
        ``image_size``: (H, W) of the frames they come from; ``original_size``: of the source
        video (default: ``image_size``)."""
        self.prepare()
        records, decoded, reference = [], [], None
        for t, feature in enumerate(features):
            ref = None if self.codec.frame_type(t) == "I" else reference
            record, feature_hat, reference = self.codec.compress_frame(
                feature, self.split.rest, ref, restore=return_features)
            records.append(record)
            if return_features:
                decoded.append(feature_hat)
        if not records:
            raise ValueError("no frames to encode")
        header = StreamHeader(
            image_size=tuple(image_size), original_size=tuple(original_size or image_size),
            feature_size=tuple(records[0]["shape"]), gop=self.codec.gop,
            num_frames=len(records), quality_index=self.quality_index,
            threads=torch.get_num_threads(), model_hash=self.model_hash(),
            model_id=self.model_id)
        stream = write_stream(header, records)
        parsed = read_stream(stream)
        return EncodedVideo(stream=stream, frame_bits=parsed.frame_bits(),
                            frame_types=[r["type"] for r in records], features=decoded)

    def read_header(self, stream: bytes) -> ParsedStream:
        """Parse ``stream`` and check it was made by this model (ContainerError otherwise)."""
        parsed = read_stream(stream)
        self.prepare()
        header, expected = parsed.header, self.model_hash()
        if header.model_hash != expected:
            raise ContainerError(
                f"stream was encoded by model {header.model_id!r} (hash "
                f"{header.model_hash.hex()}), this model is {self.model_id!r} (hash "
                f"{expected.hex()}): decoding would not reproduce the encoder's features")
        return parsed

    @torch.no_grad()
    def decode(self, parsed: ParsedStream) -> Iterator[DecodedFrame]:
        """Decode a stream checked by ``read_header`` frame by frame, with the encoder's torch
        thread count (restored afterwards)."""
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(parsed.header.threads)
        try:
            reference = None
            for i, (record, bits) in enumerate(zip(parsed.records, parsed.frame_bits())):
                feature, reference = self.codec.decompress_frame(
                    record, self.split.rest, reference)
                yield DecodedFrame(index=i, frame_type=record["type"], bits=bits,
                                   feature=feature)
        finally:
            torch.set_num_threads(previous_threads)
