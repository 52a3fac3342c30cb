"""The restoration network R of the "restore, then analyse" baseline and its pixel loss.

R is a small DnCNN / ARCNN-like residual CNN on one decoded frame in pixel space:

    R(x) = x + 255 * f(x / 255),   f = conv3x3 -> ReLU -> (conv3x3 -> ReLU) x (DEPTH - 2) -> conv3x3

with f's last convolution zero-initialised, so R is exactly the identity at init. Frames are
CHW float tensors in the detector's channel order and 0..255 range (what detectron2's mappers
give); f sees them scaled to [0, 1] so its weights do not depend on the detector's PIXEL_STD.
"""
import torch
from torch import nn

from .config import RESTORATION_LOSSES

__all__ = ["ArtifactRemovalCNN", "restoration_loss"]

# 8-bit frames: the range of the pixel values R reads and writes.
PIXEL_MAX = 255.0


class ArtifactRemovalCNN(nn.Module):
    """Residual artifact-removal CNN on (N, C, H, W) frames in 0..255 (see the module doc).

    In eval mode the output is clamped to the valid pixel range (what a receiver would hand the
    detector); in training it is not, so that overshooting pixels still get a gradient.
    """

    def __init__(self, *, width: int = 64, depth: int = 8, channels: int = 3):
        """
        Args:
            width: channels of the hidden layers.
            depth: number of 3x3 conv layers (>= 2).
            channels: channels of the frames (3: RGB or BGR).
        """
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"ArtifactRemovalCNN needs depth >= 2 and width >= 1, got {depth}, {width}")
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.body[-1].weight)  # residual 0: R is the identity at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        restored = x + PIXEL_MAX * self.body(x / PIXEL_MAX)
        return restored if self.training else restored.clamp(0.0, PIXEL_MAX)


def restoration_loss(restored: torch.Tensor, original: torch.Tensor, kind: str = "L1") -> torch.Tensor:
    """Mean L1 or squared error between ``restored`` and ``original`` (0..255 frames of one
    shape), in [0, 1] pixel units."""
    if kind not in RESTORATION_LOSSES:
        raise ValueError(f"restoration loss must be one of {RESTORATION_LOSSES}, got {kind!r}")
    diff = (restored - original.to(restored.dtype)) / PIXEL_MAX
    return diff.abs().mean() if kind == "L1" else diff.square().mean()
