"""``CDREPredictor``: detectron2's DefaultPredictor for a ``CDRERCNN``, split into the two
ends of the transmission.

Sender (has the original):   ``bits = predictor.encode(original_bgr, decoded_bgr)``
Receiver (decoded frame only): ``predictions = predictor(decoded_bgr, bits)``

Both ends resize with the same ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)`` transform
the model sees (computed from the decoded frame, applied to both frames), so the side stream
matches the receiver's input exactly.
"""
from typing import Dict, Tuple

import numpy as np
import torch
from detectron2.engine import DefaultPredictor

from ...utils.images import bgr_to_model_input
from .meta_arch import ORIGINAL_KEY, SIDE_STREAM_KEY, CDRERCNN

__all__ = ["CDREPredictor"]


class CDREPredictor(DefaultPredictor):
    """Build a CDRERCNN from ``cfg``, load ``cfg.MODEL.WEIGHTS``, run single images.

    Images are HxWx3 uint8 arrays in BGR order (as ``cv2.imread`` gives), like
    DefaultPredictor; the model's ``INPUT.FORMAT`` conversion is applied here.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        if not isinstance(self.model, CDRERCNN):
            raise ValueError(
                f"CDREPredictor needs MODEL.META_ARCHITECTURE CDRERCNN, got {type(self.model).__name__}"
            )

    def _prepare(self, image_bgr: np.ndarray, what: str, transform=None):
        if transform is None:
            if not isinstance(image_bgr, np.ndarray):
                raise ValueError(f"{what} must be an HxWx3 BGR array, got "
                                 f"{type(image_bgr).__name__}")
            transform = self.aug.get_transform(image_bgr)
        return bgr_to_model_input(image_bgr, self.input_format, transform, what), transform

    def _inputs(self, decoded_bgr: np.ndarray) -> Tuple[Dict, object]:
        image, transform = self._prepare(decoded_bgr, "decoded image")
        height, width = decoded_bgr.shape[:2]
        return {"image": image, "height": height, "width": width}, transform

    def encode(self, original_bgr: np.ndarray, decoded_bgr: np.ndarray) -> bytes:
        """Side stream of one frame (encoder side), coded with the model's SIDE_STREAM_MODE."""
        if getattr(original_bgr, "shape", None) != getattr(decoded_bgr, "shape", None):
            raise ValueError(
                f"original {getattr(original_bgr, 'shape', None)} and decoded "
                f"{getattr(decoded_bgr, 'shape', None)} images must have the same shape"
            )
        inputs, transform = self._inputs(decoded_bgr)
        inputs[ORIGINAL_KEY], _ = self._prepare(original_bgr, "original image", transform)
        with torch.no_grad():
            return self.model.encode_side_streams([inputs])[0]

    def __call__(self, decoded_bgr: np.ndarray, side_bits: bytes) -> Dict:
        """Predictions for one decoded frame given its side stream (decoder side).

        The output dict is the model's: "instances" (at the frame's original size),
        "side_bits" = 8 * len(side_bits).
        """
        inputs, _ = self._inputs(decoded_bgr)
        inputs[SIDE_STREAM_KEY] = side_bits
        with torch.no_grad():
            return self.model([inputs])[0]
