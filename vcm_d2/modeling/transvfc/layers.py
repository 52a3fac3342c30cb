"""Small building blocks shared by the TransVFC modules.

Convolutions, GDN and residual blocks come from CompressAI (``compressai.layers``); this file
only adds what CompressAI does not have: depthwise-separable convolutions (``DepthConv``,
``DepthBlock`` of Fig. 4b), the ResNet bottleneck block of the FST, straight-through rounding
and the pad/crop helpers used to code features whose size is not a multiple of the codec's
total downsampling.
"""
import math
from typing import Iterable, Tuple

import torch
import torch.nn.functional as F
from compressai.layers import GDN, ResidualBlock, conv1x1, conv3x3, subpel_conv3x3
from torch import Tensor, nn

__all__ = [
    "DepthConv",
    "DepthBlock",
    "BottleneckBlock",
    "down_block",
    "up_block",
    "res_stack",
    "ste_round",
    "pad_to_multiple",
    "crop_to",
    "padded_size",
    "lcm_all",
    "log2_exact",
]

KERNEL = 3  # spatial kernel of every conv unless a module says otherwise
DOWN = 2  # stride of one downsampling / factor of one upsampling step


def log2_exact(value: int, what: str) -> int:
    """``log2(value)`` for a positive power of two, else ValueError naming ``what``."""
    if value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a positive power of two, got {value}")
    return int(math.log2(value))


def lcm_all(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out = math.lcm(out, int(v))
    return out


class DepthConv(nn.Module):
    """Depthwise-separable conv multiplying the channels by ``multiplier`` (``DepthConv(n)``).

    A depthwise 3x3 conv (``groups=in_ch``) creates ``multiplier`` spatial variants of each
    channel; a pointwise 1x1 conv then mixes them (Xception-style separable conv)."""

    def __init__(self, in_ch: int, multiplier: int = 1, out_ch: int = None):
        super().__init__()
        mid = in_ch * multiplier
        out_ch = mid if out_ch is None else out_ch
        self.depthwise = nn.Conv2d(in_ch, mid, KERNEL, padding=KERNEL // 2, groups=in_ch)
        self.act = nn.LeakyReLU(inplace=True)
        self.pointwise = conv1x1(mid, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.act(self.depthwise(x)))


class DepthBlock(nn.Module):
    """Residual block whose two convs are depthwise-separable (``DepthBlock`` of Fig. 4b)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = DepthConv(ch)
        self.act = nn.LeakyReLU(inplace=True)
        self.conv2 = DepthConv(ch)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class BottleneckBlock(nn.Module):
    """ResNet bottleneck residual block (1x1 reduce, 3x3, 1x1 expand) used by the FST."""

    def __init__(self, ch: int, bottleneck_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            conv1x1(ch, bottleneck_ch),
            nn.ReLU(inplace=True),
            conv3x3(bottleneck_ch, bottleneck_ch),
            nn.ReLU(inplace=True),
            conv1x1(bottleneck_ch, ch),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def res_stack(ch: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` CompressAI residual blocks at constant width (empty: identity)."""
    return nn.Sequential(*[ResidualBlock(ch, ch) for _ in range(num_blocks)])


def down_block(in_ch: int, out_ch: int, gdn: bool = True) -> nn.Sequential:
    """Stride-2 3x3 conv followed by GDN (analysis transforms) or LeakyReLU."""
    act = GDN(out_ch) if gdn else nn.LeakyReLU(inplace=True)
    return nn.Sequential(conv3x3(in_ch, out_ch, stride=DOWN), act)


def up_block(in_ch: int, out_ch: int, igdn: bool = True) -> nn.Sequential:
    """x2 sub-pixel conv followed by inverse GDN (synthesis transforms) or LeakyReLU."""
    act = GDN(out_ch, inverse=True) if igdn else nn.LeakyReLU(inplace=True)
    return nn.Sequential(subpel_conv3x3(in_ch, out_ch, DOWN), act)


def ste_round(x: Tensor) -> Tensor:
    """Round with a straight-through (identity) gradient."""
    return x + (torch.round(x) - x).detach()


def padded_size(h: int, w: int, multiple: int) -> Tuple[int, int]:
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom/right of an NCHW tensor to a multiple of ``multiple``.

    Replicate (not zero) padding keeps the padded border statistically close to the content,
    so it costs few bits; the decoder crops it away with ``crop_to``."""
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, multiple)
    if (ph, pw) == (h, w):
        return x
    return F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")


def crop_to(x: Tensor, size: Tuple[int, int]) -> Tensor:
    return x[..., : size[0], : size[1]]
