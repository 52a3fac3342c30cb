"""Intra (I-frame) feature codec: mean-scale hyperprior on the reduced 64-ch feature.

The paper passes the first feature of each GOP uncoded and does not count it; this project
codes it and counts its bits (see method notes). Analysis g_a: 3x3 conv + GDN + residual
blocks, strides 1, 2, 2 -> latent at 1/4 of the feature (1/16 of the image); synthesis g_s
mirrors it.
"""
from typing import Dict, List, Tuple

from compressai.layers import GDN, ResidualBlock, conv3x3
from torch import Tensor, nn

from .entropy import HYPER_DOWNSAMPLING, HyperpriorEntropyModel
from .layers import DOWN, down_block, up_block

__all__ = ["IntraCodec"]

INTRA_STEPS = 2  # stride-2 steps of g_a


class IntraCodec(nn.Module):
    latent_downsampling = DOWN**INTRA_STEPS
    downsampling = latent_downsampling * HYPER_DOWNSAMPLING

    def __init__(self, feat_ch: int, width: int, latent_ch: int, hyper_ch: int):
        super().__init__()
        layers = [conv3x3(feat_ch, width), GDN(width), ResidualBlock(width, width)]
        for i in range(INTRA_STEPS):
            if i == INTRA_STEPS - 1:
                layers.append(conv3x3(width, latent_ch, stride=DOWN))
            else:
                layers += [down_block(width, width), ResidualBlock(width, width)]
        self.g_a = nn.Sequential(*layers)
        layers = [conv3x3(latent_ch, width), ResidualBlock(width, width)]
        for _ in range(INTRA_STEPS):
            layers += [up_block(width, width), ResidualBlock(width, width)]
        layers.append(conv3x3(width, feat_ch))
        self.g_s = nn.Sequential(*layers)
        self.entropy = HyperpriorEntropyModel(latent_ch, hyper_ch)

    def forward(self, f: Tensor, quantization: str) -> Tuple[Tensor, Dict[str, Tensor]]:
        y_hat, likelihoods = self.entropy(self.g_a(f), quantization=quantization)
        return self.g_s(y_hat), likelihoods

    def compress(self, f: Tensor) -> Tuple[List[List[bytes]], Tensor]:
        strings, y_hat = self.entropy.compress(self.g_a(f))
        return strings, self.g_s(y_hat)

    def decompress(self, strings: List[List[bytes]], feature_size) -> Tensor:
        h, w = feature_size
        size = (h // self.latent_downsampling, w // self.latent_downsampling)
        return self.g_s(self.entropy.decompress(strings, size))
