"""Images as predictors receive them (HxWx3 BGR arrays, like ``cv2.imread``) -> model inputs."""
import numpy as np
import torch

__all__ = ["bgr_to_model_input"]


def bgr_to_model_input(image_bgr: np.ndarray, input_format: str, transform, what: str = "image"):
    """CHW float tensor of ``image_bgr`` in ``input_format`` ("BGR" or "RGB") after
    ``transform`` (a detectron2 Transform, e.g. ResizeShortestEdge's). ValueError naming
    ``what`` for anything but an HxWx3 array."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        shape = getattr(image_bgr, "shape", type(image_bgr).__name__)
        raise ValueError(f"{what} must be an HxWx3 BGR array, got {shape}")
    image = image_bgr[:, :, ::-1] if input_format == "RGB" else image_bgr
    resized = transform.apply_image(image)
    return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
