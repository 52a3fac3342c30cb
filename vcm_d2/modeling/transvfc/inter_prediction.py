"""Scheme-based inter-prediction (Sec. 3.1, eq. 1, Fig. 4b), in the reduced feature domain.

    f~_t = MC(f_ref, D_m(round(E_m(ME(f_t, f_ref)))))                                  (1)

* ``MotionEstimation`` (ME): a small U-Net on concat(f_t, f_ref) with four sampling steps over
  three scales (1, 1/2, 1/4 of the feature) -> motion representation m_t. No optical flow.
* ``MotionEncoder`` (E_m) / ``MotionDecoder`` (D_m): GDN + residual blocks, strides 1, 2, 2 ->
  a latent at 1/4 of the feature (1/16 of the image), coded with a mean-scale hyperprior.
* ``SchemeCompensation`` (MC): depthwise-separable convs expand f_ref into C x NUM_SCHEMES
  candidate schemes; the decoded motion is mapped to as many channels, multiplied with the
  schemes ("selection"), and a 7x7 conv combines them into C channels (``SCHEME_COMBINE``
  "dense", as Fig. 4b reads; "separable": a depthwise 7x7 per selected scheme, then a 1x1 to
  C channels, ~1/28 of the dense conv's MACs, which are a third of a P-frame's).
* ``WarpingCompensation``: the Table 5 "Model 1" style ablation - the decoded motion gives a
  2-channel offset field and f_ref is bilinearly warped with ``grid_sample``.

``InterPrediction`` holds all of them; eq. (1) is its ``forward`` (training) and, split at
the quantizer, ``compress`` (encoder) / ``decompress`` (decoder), which share
``compensate`` = MC(f_ref, D_m(.)) so both sides run the same ops.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.layers import GDN, ResidualBlock, conv3x3
from torch import Tensor, nn

from .entropy import HYPER_DOWNSAMPLING, HyperpriorEntropyModel
from .layers import DOWN, DepthBlock, DepthConv, down_block, up_block

__all__ = [
    "SCHEME_COMBINE_MODES",
    "MotionEstimation",
    "MotionEncoder",
    "MotionDecoder",
    "SchemeCompensation",
    "WarpingCompensation",
    "InterPrediction",
]

ME_STEPS = 2  # stride-2 steps of the motion-estimation U-Net (3 scales)
MOTION_CODEC_STEPS = 2  # stride-2 steps of E_m (strides 1, 2, 2)
OFFSET_CHANNELS = 2  # (dx, dy) of the warping baseline
SCHEME_COMBINE_MODES = ("dense", "separable")


class MotionEstimation(nn.Module):
    """ME: U-Net on concat(f_t, f_ref) -> m_t (global trends + high-frequency details)."""

    downsampling = DOWN**ME_STEPS

    def __init__(self, feat_ch: int, width: int, motion_ch: int):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(2 * feat_ch, width), nn.LeakyReLU(inplace=True),
                                  ResidualBlock(width, width))
        self.downs = nn.ModuleList(
            nn.Sequential(down_block(width, width, gdn=False), ResidualBlock(width, width))
            for _ in range(ME_STEPS)
        )
        self.ups = nn.ModuleList(up_block(width, width, igdn=False) for _ in range(ME_STEPS))
        self.fuse = nn.ModuleList(
            nn.Sequential(conv3x3(2 * width, width), nn.LeakyReLU(inplace=True),
                          ResidualBlock(width, width))
            for _ in range(ME_STEPS)
        )
        self.head = conv3x3(width, motion_ch)

    def forward(self, f_t: Tensor, f_ref: Tensor) -> Tensor:
        x = self.stem(torch.cat([f_t, f_ref], dim=1))
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, fuse, skip in zip(self.ups, self.fuse, reversed(skips)):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class MotionEncoder(nn.Module):
    """E_m: m_t -> motion latent at 1/4 of the feature (strides 1, 2, 2)."""

    downsampling = DOWN**MOTION_CODEC_STEPS

    def __init__(self, motion_ch: int, width: int, latent_ch: int):
        super().__init__()
        layers = [conv3x3(motion_ch, width), GDN(width), ResidualBlock(width, width)]
        for i in range(MOTION_CODEC_STEPS):
            last = i == MOTION_CODEC_STEPS - 1
            if last:
                layers.append(conv3x3(width, latent_ch, stride=DOWN))
            else:
                layers += [down_block(width, width), ResidualBlock(width, width)]
        self.net = nn.Sequential(*layers)

    def forward(self, m: Tensor) -> Tensor:
        return self.net(m)


class MotionDecoder(nn.Module):
    """D_m: decoded motion latent -> motion representation m^_t (mirror of E_m)."""

    def __init__(self, latent_ch: int, width: int, motion_ch: int):
        super().__init__()
        layers = [conv3x3(latent_ch, width), ResidualBlock(width, width)]
        for _ in range(MOTION_CODEC_STEPS):
            layers += [up_block(width, width), ResidualBlock(width, width)]
        layers.append(conv3x3(width, motion_ch))
        self.net = nn.Sequential(*layers)

    def forward(self, latent_hat: Tensor) -> Tensor:
        return self.net(latent_hat)


class SchemeCompensation(nn.Module):
    """MC: generate C x S motion schemes from f_ref, select them with m^_t, combine to C.

    Args:
        feat_ch: channels C of f_ref and of the output.
        motion_ch: channels of m^_t.
        expansions: channel multipliers of the successive ``DepthConv`` layers; their product
            is the number of schemes per channel S (a ``DepthBlock`` refines between them).
        combine_kernel: kernel of the conv combining the C x S selected schemes.
        combine: "dense" (one conv from C x S to C channels) or "separable" (a depthwise conv
            of that kernel, then a 1x1 conv to C channels).
    """

    def __init__(self, feat_ch: int, motion_ch: int, expansions: Sequence[int],
                 combine_kernel: int, combine: str = "dense"):
        super().__init__()
        if not expansions or any(int(e) < 1 for e in expansions):
            raise ValueError(f"scheme expansions must be positive integers, got {expansions}")
        if combine not in SCHEME_COMBINE_MODES:
            raise ValueError(f"SCHEME_COMBINE must be one of {SCHEME_COMBINE_MODES}, got {combine!r}")
        # kept to build a variant of the same widths (benchmarks/transvfc_complexity.py)
        self.feat_ch, self.motion_ch, self.expansions = feat_ch, motion_ch, tuple(expansions)
        self.combine_kernel = combine_kernel
        layers, ch = [], feat_ch
        for i, mult in enumerate(expansions):
            layers.append(DepthConv(ch, int(mult)))
            ch *= int(mult)
            if i < len(expansions) - 1:
                layers.append(DepthBlock(ch))
        self.scheme_generator = nn.Sequential(*layers)
        self.num_schemes = ch // feat_ch
        self.motion_to_weights = conv3x3(motion_ch, ch)
        pad = combine_kernel // 2
        if combine == "dense":
            self.combine = nn.Conv2d(ch, feat_ch, combine_kernel, padding=pad)
        else:
            self.combine = nn.Sequential(
                nn.Conv2d(ch, ch, combine_kernel, padding=pad, groups=ch), nn.Conv2d(ch, feat_ch, 1))

    def forward(self, f_ref: Tensor, motion_hat: Tensor) -> Tensor:
        schemes = self.scheme_generator(f_ref)
        return self.combine(schemes * self.motion_to_weights(motion_hat))


class WarpingCompensation(nn.Module):
    """Ablation MC: m^_t -> offset field (feature pixels) -> bilinear warp of f_ref."""

    def __init__(self, motion_ch: int, width: int):
        super().__init__()
        self.offset = nn.Sequential(conv3x3(motion_ch, width), nn.LeakyReLU(inplace=True),
                                    conv3x3(width, OFFSET_CHANNELS))

    def forward(self, f_ref: Tensor, motion_hat: Tensor) -> Tensor:
        n, _, h, w = f_ref.shape
        offset = self.offset(motion_hat)
        ys = torch.arange(h, dtype=f_ref.dtype, device=f_ref.device)
        xs = torch.arange(w, dtype=f_ref.dtype, device=f_ref.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        x = gx + offset[:, 0]
        y = gy + offset[:, 1]
        # pixel coordinates -> [-1, 1] with align_corners=False (pixel centres at (i+0.5)/n)
        grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
        return F.grid_sample(f_ref, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)


class InterPrediction(nn.Module):
    """Eq. (1): ME, motion codec (E_m, hyperprior, D_m) and MC (scheme or warping)."""

    def __init__(self, *, feat_ch: int, me_width: int, motion_ch: int, latent_ch: int,
                 hyper_ch: int, width: int, use_schemes: bool, expansions: Sequence[int],
                 combine_kernel: int, combine: str = "dense"):
        super().__init__()
        self.motion_estimation = MotionEstimation(feat_ch, me_width, motion_ch)
        self.motion_encoder = MotionEncoder(motion_ch, width, latent_ch)
        self.motion_entropy = HyperpriorEntropyModel(latent_ch, hyper_ch)
        self.motion_decoder = MotionDecoder(latent_ch, width, motion_ch)
        if use_schemes:
            self.motion_compensation = SchemeCompensation(feat_ch, motion_ch, expansions,
                                                          combine_kernel, combine)
        else:
            self.motion_compensation = WarpingCompensation(motion_ch, width)
        self.latent_downsampling = MotionEncoder.downsampling

    @property
    def downsampling(self) -> int:
        """Total downsampling of the motion path at the feature level (latent x hyper)."""
        return math.lcm(MotionEstimation.downsampling,
                        self.latent_downsampling * HYPER_DOWNSAMPLING)

    def compensate(self, f_ref: Tensor, latent_hat: Tensor) -> Tensor:
        """Decoder half of eq. (1): MC(f_ref, D_m(latent_hat))."""
        return self.motion_compensation(f_ref, self.motion_decoder(latent_hat))

    def forward(self, f_t: Tensor, f_ref: Tensor,
                quantization: str) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Eq. (1) in training: returns (f~_t, {"y", "z"} motion likelihoods)."""
        latent = self.motion_encoder(self.motion_estimation(f_t, f_ref))
        latent_hat, likelihoods = self.motion_entropy(latent, quantization=quantization)
        return self.compensate(f_ref, latent_hat), likelihoods

    def compress(self, f_t: Tensor, f_ref: Tensor) -> Tuple[List[List[bytes]], Tensor]:
        """Encoder side: returns ([y_strings, z_strings], f~_t as the decoder will see it)."""
        latent = self.motion_encoder(self.motion_estimation(f_t, f_ref))
        strings, latent_hat = self.motion_entropy.compress(latent)
        return strings, self.compensate(f_ref, latent_hat)

    def decompress(self, strings: List[List[bytes]], f_ref: Tensor) -> Tensor:
        h, w = f_ref.shape[-2:]
        size = (h // self.latent_downsampling, w // self.latent_downsampling)
        return self.compensate(f_ref, self.motion_entropy.decompress(strings, size))
