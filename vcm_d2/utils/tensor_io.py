"""Lists of tensors in files (``torch.save``), e.g. the features a codec reconstructs."""
import io
from typing import List

import torch

from .io import atomic_write_bytes

__all__ = ["save_tensors", "load_tensors"]


def save_tensors(path: str, tensors: List[torch.Tensor]) -> None:
    """Write ``tensors`` (moved to the CPU) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save([t.detach().cpu() for t in tensors], buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: str) -> List[torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
