"""``VideoPredictor``: detectron2's DefaultPredictor for a video, fed one frame at a time.

    predictor = VideoPredictor(cfg)           # builds the model, loads cfg.MODEL.WEIGHTS
    for frame in frames:                      # HxWx3 uint8 BGR, like cv2.imread gives
        out = predictor(frame)                # predictions of this frame + its bits
    predictor.reset()                         # before the next video

State kept between calls, per model:

* TransVFC: frames are coded as one stream (stream header and I-frame on the first call,
  P-frames within the GOP, an I-frame every GOP frames), so the reference feature and the
  temporal prior carry over; ``out["bits"]`` is each frame's share of that stream, and the
  bits of all calls add up to the bits of ``TransVFC.encode_video`` on the same frames.
* CDRE (``CDRERCNN``): each call takes the frame's side stream (``side_stream=`` bytes, the
  receiver) or the original frame (``original=``, which encodes it); ``out["side_bits"]``
  counts it. The sender gets each frame's bytes from ``encode_side_stream``. With
  ``SIDE_STREAM_PER_VIDEO`` the frames since ``reset()`` form one side stream (header with the
  first frame, then a record per frame), so sender calls and receiver calls each number their
  frames: ``encode_side_stream`` and ``__call__`` may run on one predictor or on two.
* The VIS model (``VideoInstanceSegmentor``): its per-frame network runs as above and its
  tracker links the frames; ``out["instances"]`` carry the track ``ID``; ``tracks()`` gives
  the video's tracks so far.
* Any other detectron2 model (a plain R-CNN behind a pixel codec) runs frame by frame; pass
  the pixel codec's bits of the frame as ``bits=`` to have them counted.

``total_bits`` / ``bpp`` add up every bit reported since ``reset()`` (codec + side streams)
over the frames' pixels at their original size.
"""
import itertools
from typing import Any, Dict, Optional

import numpy as np
import torch
from detectron2.engine import DefaultPredictor

from ..modeling.cdre.meta_arch import ORIGINAL_KEY, SIDE_STREAM_KEY
from ..modeling.vis import VideoInstanceSegmentor
from ..utils.images import bgr_to_model_input
from ..utils.rate import BITS, RATE_KEYS

__all__ = ["VideoPredictor"]

_video_keys = itertools.count()


class VideoPredictor(DefaultPredictor):
    """Frame-by-frame prediction with per-video state (module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.is_vis = isinstance(self.model, VideoInstanceSegmentor)
        self.network = self.model.detector if self.is_vis else self.model
        self.reset()

    def reset(self) -> None:
        """Start a new video: new stream (TransVFC), new track identities (VIS), rate at 0."""
        # A new key per video: TransVFC opens a new stream for it (header + I-frame).
        self.video_key = f"VideoPredictor-{next(_video_keys)}"
        self.frame_index = 0
        self.sender_frame_index = 0  # frames given to encode_side_stream
        self.total_bits = 0
        self.total_pixels = 0
        self._transform = None
        self._size = None
        self._tracks = self.model.start_video() if self.is_vis else None

    @property
    def bpp(self) -> float:
        """Bits per pixel of the frames since ``reset()`` (0 before the first frame)."""
        return self.total_bits / self.total_pixels if self.total_pixels else 0.0

    def _input(self, frame_bgr: np.ndarray, what: str) -> torch.Tensor:
        return bgr_to_model_input(frame_bgr, self.input_format, self._transform, what)

    def _inputs(self, frame_bgr: np.ndarray, original: Optional[np.ndarray],
                side_stream: Optional[bytes], frame_index: int) -> Dict[str, Any]:
        if not isinstance(frame_bgr, np.ndarray):
            raise ValueError(f"frame must be an HxWx3 BGR array, got {type(frame_bgr).__name__}")
        if self._transform is None:  # every frame of a video is resized alike
            self._transform = self.aug.get_transform(frame_bgr)
            self._size = frame_bgr.shape[:2]
        elif frame_bgr.shape[:2] != self._size:
            raise ValueError(f"frame {frame_index} is {frame_bgr.shape[:2]} (HxW), the video "
                             f"started at {self._size}; call reset() for a new video")
        inputs = {"image": self._input(frame_bgr, "frame"), "height": self._size[0],
                  "width": self._size[1], "video_id": self.video_key, "frame_idx": frame_index}
        if original is not None:
            if original.shape != frame_bgr.shape:
                raise ValueError(f"original {original.shape} and frame {frame_bgr.shape} differ")
            inputs[ORIGINAL_KEY] = self._input(original, "original frame")
        if side_stream is not None:
            inputs[SIDE_STREAM_KEY] = side_stream
        return inputs

    @torch.no_grad()
    def __call__(self, frame_bgr: np.ndarray, *, original: Optional[np.ndarray] = None,
                 side_stream: Optional[bytes] = None, bits: Optional[int] = None) -> Dict:
        """Predictions for the next frame of the video.

        Args:
            frame_bgr: the (decoded) frame, HxWx3 uint8 BGR.
            original: the uncompressed frame (CDRE sender side), same shape.
            side_stream: the frame's CDRE side stream (receiver side).
            bits: the pixel codec's bits of this frame, counted in ``total_bits``; a model
                that codes the frame itself (TransVFC) reports its own instead.

        Returns:
            the network's output dict ("instances", "sem_seg", ..., "bits" / "side_bits" as
            reported) with "instances" tracked (``ID``) for the VIS model.
        """
        inputs = self._inputs(frame_bgr, original, side_stream, self.frame_index)
        output = dict(self.network([inputs])[0])
        if bits is not None:
            if BITS in output:
                raise ValueError("the model codes the frame itself and reports its bits; a "
                                 "frame is coded once (do not pass bits=)")
            output[BITS] = int(bits)
        if self._tracks is not None:
            output = self._tracks.add(output)
        self.total_bits += sum(int(output[k]) for k in RATE_KEYS if k in output)
        self.total_pixels += self._size[0] * self._size[1]
        self.frame_index += 1
        return output

    def tracks(self) -> Dict[str, Any]:
        """The VIS model's tracks of the frames since ``reset()`` (``VideoTracks.result``)."""
        if self._tracks is None:
            raise ValueError(f"tracks() needs a VideoInstanceSegmentor, this model is "
                             f"{type(self.model).__name__}")
        return self._tracks.result()

    def encode_side_stream(self, original: np.ndarray, frame_bgr: np.ndarray) -> bytes:
        """CDRE sender side: the side-stream bytes of the next frame given to this method
        since ``reset()`` (the receiver's predictor takes them as ``side_stream=``)."""
        encode = getattr(self.network, "encode_side_streams", None)
        if encode is None:
            raise ValueError(f"{type(self.network).__name__} has no CDRE side stream")
        inputs = self._inputs(frame_bgr, original, None, self.sender_frame_index)
        with torch.no_grad():
            stream = encode([inputs])[0]
        self.sender_frame_index += 1
        return stream
