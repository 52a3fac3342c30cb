"""Small building blocks shared by the CDRE modules (attention, norms, conv blocks).

Odd sizes: every stride-2 conv here has kernel 3 and padding 1, so an input of size n gives
ceil(n / 2) -- the same rounding as detectron2's ResNet stem and stages, so feature maps of the
CDRE modules line up with the backbone's at every stride without padding the image.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SpatialAttention",
    "ChannelAttention",
    "conv3x3",
    "build_norm",
    "crop_to",
    "NORM_CHOICES",
]

NORM_CHOICES = ("IN", "BN", "none")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 conv, padding 1: output size ceil(n / stride)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def build_norm(norm: str, channels: int) -> nn.Module:
    """Normalization layer by name: "IN" (affine InstanceNorm), "BN" or "none"."""
    if norm == "IN":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {norm!r}; expected one of {NORM_CHOICES}")


class SpatialAttention(nn.Module):
    """x * sigmoid(Conv_k([mean_c(x), max_c(x)])): one weight per pixel, shared by all channels."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"spatial attention kernel must be odd and positive, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def weights(self, stats: torch.Tensor) -> torch.Tensor:
        """The (B, 1, H, W) weights from the (B, 2, H, W) channel [mean, max] of the input."""
        return torch.sigmoid(self.conv(stats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.weights(stats)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(FC(ReLU(FC(avgpool(x))))), hidden = C // reduction."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"channel attention reduction must be >= 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(w)


def crop_to(x: torch.Tensor, size: Tuple[int, int], what: str = "feature") -> torch.Tensor:
    """Crop the bottom/right of NCHW ``x`` to ``size``.

    All CDRE maps are top-left aligned with the image (convs pad at the bottom/right and
    upsampling repeats from the top-left), so a map that came out larger than its target --
    e.g. 1/32 -> x8 upsampling of an odd-sized latent -- is cropped, never resized. A map
    smaller than the target is a real mismatch (wrong stride) and raises ValueError.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(
            f"{what} of spatial size {tuple(x.shape[-2:])} is smaller than the target {(h, w)}: "
            "strides of the distortion feature and the backbone feature do not match"
        )
    return x[..., :h, :w]
