"""Compression-sensitive extractor (CDRE paper, section II-B, eq. 2)."""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from .layers import conv3x3

__all__ = ["CompressionSensitiveExtractor", "used_scales_from_config"]


def used_scales_from_config(cfg) -> Tuple[int, ...]:
    """Indices (0-based, scale i has stride 2^(i+1)) of the extractor scales used for the
    encoder's modulation and the cosine loss: all with MULTI_SCALE, else only the last."""
    num = cfg.MODEL.VCM.CDRE.EXTRACTOR_BLOCKS
    return tuple(range(num)) if cfg.MODEL.VCM.CDRE.MULTI_SCALE else (num - 1,)


class CompressionSensitiveExtractor(nn.Module):
    """F_i = LeakyReLU(InstanceNorm(Conv3x3_s2(F_{i-1}))), F_0 = image (eq. 2).

    The same weights process the original x (giving F^o) and the compressed x_hat (giving
    F^c). Block i outputs stride 2^(i+1): 1/2, 1/4, 1/8 with the default 3 blocks; an image
    side of n pixels gives ceil(n / 2^(i+1)).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: int = 16,
        num_blocks: int = 3,
        used_scales: Optional[Sequence[int]] = None,
        leaky_slope: float = 0.01,
    ):
        """
        Args:
            in_channels: image channels.
            channels: width of every block (F_i has ``channels`` channels).
            num_blocks: number of stride-2 blocks (scales).
            used_scales: block indices returned by ``forward`` (default: all). The
                single-scale ablation (Table II) passes only the last index.
            leaky_slope: negative slope of the LeakyReLU.
        """
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        used = tuple(range(num_blocks)) if used_scales is None else tuple(int(i) for i in used_scales)
        if not used or any(i < 0 or i >= num_blocks for i in used) or list(used) != sorted(set(used)):
            raise ValueError(f"used_scales must be increasing indices in [0, {num_blocks}), got {used}")
        self.used_scales = used
        self.channels = channels
        blocks = []
        for i in range(num_blocks):
            blocks.append(
                nn.Sequential(
                    conv3x3(in_channels if i == 0 else channels, channels, stride=2),
                    nn.InstanceNorm2d(channels, affine=True),
                    nn.LeakyReLU(leaky_slope),
                )
            )
        self.blocks = nn.ModuleList(blocks)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.VCM.CDRE
        return {
            "channels": c.EXTRACTOR_CHANNELS,
            "num_blocks": c.EXTRACTOR_BLOCKS,
            "used_scales": used_scales_from_config(cfg),
            "leaky_slope": c.LEAKY_RELU_SLOPE,
        }

    @property
    def used_strides(self) -> Tuple[int, ...]:
        """Strides of the features returned by ``forward``."""
        return tuple(2 ** (i + 1) for i in self.used_scales)

    def extract(self, image: torch.Tensor) -> List[torch.Tensor]:
        """All scales F_1..F_n of one (batch of) image(s), eq. 2."""
        feats, f = [], image
        for block in self.blocks:
            f = block(f)
            feats.append(f)
        return feats

    def forward(
        self, x: torch.Tensor, x_hat: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Return (F^o, F^c): lists over ``used_scales`` of (B, channels, h_i, w_i) features.

        x, x_hat: (B, in_channels, H, W) original and compressed images, same shape and
        normalization. Both go through the shared weights in one batch (InstanceNorm is
        per sample, so this equals two separate passes).
        """
        if x.shape != x_hat.shape:
            raise ValueError(f"original {tuple(x.shape)} and compressed {tuple(x_hat.shape)} differ")
        feats = self.extract(torch.cat([x, x_hat], dim=0))
        b = x.shape[0]
        used = [feats[i] for i in self.used_scales]
        return [f[:b] for f in used], [f[b:] for f in used]
