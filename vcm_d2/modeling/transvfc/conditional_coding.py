"""Perception-guided conditional coding (Sec. 3.2, eq. 2-3, Fig. 4c), reduced feature domain.

    f^_t = D_c(round(E_c(f_t | C_enc, f~_t)) | C_dec, f~_t)                             (3)

* Perception conditions: the perception network (frozen FPN, supplied by the caller) maps a
  256-ch res2 feature to p2..p6. C_enc comes from the current feature, C_dec from the
  (restored) compensated feature, so the decoder can compute it. ``PerceptionCondition``
  reduces each level to ``cond_ch`` channels with a 1x1 conv and resamples it to its stage:
  p2 -> 1/4 of the image (the feature resolution), p3 -> 1/8, p4/p5/p6 -> 1/16 (p5, p6
  upsampled).
* ``ContextualEncoder`` concatenates the conditions at its 1/4, 1/8 and 1/16 stages and outputs
  the residual latent y (1/16 of the image); ``ContextualDecoder`` mirrors it with C_dec and
  f~_t.
* Entropy model of y: hyperprior + DCVC-TCM-style temporal prior (``TemporalPrior``: a conv net
  taking f~_t down to y's resolution). No autoregressive context.

``ConditionalCoding.forward`` is eq. (3) in training; ``compress``/``decompress`` are its
encoder/decoder halves and share ``reconstruct`` (= D_c(. | C_dec, f~_t)).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.layers import ResidualBlock, conv1x1, conv3x3
from torch import Tensor, nn

from .entropy import HYPER_DOWNSAMPLING, HyperpriorEntropyModel
from .layers import DOWN, down_block, up_block

__all__ = [
    "CONDITION_LEVELS",
    "PerceptionCondition",
    "ContextualEncoder",
    "ContextualDecoder",
    "TemporalPrior",
    "ConditionalCoding",
]

# Perception levels concatenated at each contextual-coding stage; stage i is at 1/2**i of the
# feature (1/4, 1/8, 1/16 of the image).
CONDITION_LEVELS: Tuple[Tuple[str, ...], ...] = (("p2",), ("p3",), ("p4", "p5", "p6"))
CONTEXT_STEPS = len(CONDITION_LEVELS) - 1  # stride-2 steps of E_c
TEMPORAL_PRIOR_STEPS = CONTEXT_STEPS
UPSAMPLE_MODE = "bilinear"  # resampling of conditions whose size differs from their stage


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=UPSAMPLE_MODE, align_corners=False)


class PerceptionCondition(nn.Module):
    """p2..p6 (``perception_ch`` each) -> one condition tensor per contextual-coding stage."""

    def __init__(self, perception_ch: int, cond_ch: int):
        super().__init__()
        levels = [name for stage in CONDITION_LEVELS for name in stage]
        self.reduce = nn.ModuleDict({name: conv1x1(perception_ch, cond_ch) for name in levels})
        self.stage_channels = [cond_ch * len(stage) for stage in CONDITION_LEVELS]

    def forward(self, pyramid: Mapping[str, Tensor], feature_size: Sequence[int]) -> List[Tensor]:
        missing = [n for n in self.reduce if n not in pyramid]
        if missing:
            raise ValueError(f"perception output lacks levels {missing}; got {sorted(pyramid)}")
        h, w = feature_size
        out = []
        for i, names in enumerate(CONDITION_LEVELS):
            size = (h // DOWN**i, w // DOWN**i)
            out.append(torch.cat([_resize(self.reduce[n](pyramid[n]), size) for n in names], 1))
        return out


class ContextualEncoder(nn.Module):
    """E_c: (f_t, f~_t, C_enc stages) -> residual latent y at 1/4 of the feature."""

    def __init__(self, feat_ch: int, width: int, latent_ch: int, cond_channels: Sequence[int]):
        super().__init__()
        c = list(cond_channels)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i in range(len(CONDITION_LEVELS)):
            in_ch = (2 * feat_ch if i == 0 else width) + c[i]
            self.stages.append(nn.Sequential(conv3x3(in_ch, width), nn.LeakyReLU(inplace=True),
                                             ResidualBlock(width, width)))
            if i < CONTEXT_STEPS:
                self.downs.append(down_block(width, width))
        self.head = conv3x3(width, latent_ch)

    def forward(self, f_t: Tensor, f_tilde: Tensor, conditions: Optional[List[Tensor]]) -> Tensor:
        x = torch.cat([f_t, f_tilde], dim=1)
        for i, stage in enumerate(self.stages):
            if conditions is not None:
                x = torch.cat([x, conditions[i]], dim=1)
            x = stage(x)
            if i < CONTEXT_STEPS:
                x = self.downs[i](x)
        return self.head(x)


class ContextualDecoder(nn.Module):
    """D_c: (y^, C_dec stages, f~_t) -> reconstructed reduced feature f^_t."""

    def __init__(self, feat_ch: int, width: int, latent_ch: int, cond_channels: Sequence[int]):
        super().__init__()
        c = list(cond_channels)
        n = len(CONDITION_LEVELS)
        self.stages = nn.ModuleList()  # coarsest first
        self.ups = nn.ModuleList()
        for k, i in enumerate(reversed(range(n))):
            in_ch = (latent_ch if k == 0 else width) + c[i] + (feat_ch if i == 0 else 0)
            self.stages.append(nn.Sequential(conv3x3(in_ch, width), nn.LeakyReLU(inplace=True),
                                             ResidualBlock(width, width)))
            if i > 0:
                self.ups.append(up_block(width, width))
        self.head = conv3x3(width, feat_ch)

    def forward(self, y_hat: Tensor, f_tilde: Tensor, conditions: Optional[List[Tensor]]) -> Tensor:
        x = y_hat
        n = len(CONDITION_LEVELS)
        for k, i in enumerate(reversed(range(n))):
            parts = [x]
            if conditions is not None:
                parts.append(conditions[i])
            if i == 0:
                parts.append(f_tilde)
            x = self.stages[k](torch.cat(parts, dim=1))
            if i > 0:
                x = self.ups[k](x)
        return self.head(x)


class TemporalPrior(nn.Module):
    """f~_t -> prior features at y's resolution for the residual entropy model."""

    def __init__(self, feat_ch: int, width: int, prior_ch: int):
        super().__init__()
        layers, ch = [], feat_ch
        for _ in range(TEMPORAL_PRIOR_STEPS):
            layers += [conv3x3(ch, width, stride=DOWN), nn.LeakyReLU(inplace=True)]
            ch = width
        layers.append(conv3x3(width, prior_ch))
        self.net = nn.Sequential(*layers)

    def forward(self, f_tilde: Tensor) -> Tensor:
        return self.net(f_tilde)


class ConditionalCoding(nn.Module):
    """Eq. (3): contextual encoder/decoder, perception conditions and residual entropy model.

    With ``use_conditions=False`` (Table 5 ablation) no condition is used or needed."""

    latent_downsampling = DOWN**CONTEXT_STEPS
    # total downsampling (feature level): y's stride x z's stride (the temporal prior and the
    # conditions need only y's stride)
    downsampling = latent_downsampling * HYPER_DOWNSAMPLING

    def __init__(self, *, feat_ch: int, width: int, latent_ch: int, hyper_ch: int,
                 perception_ch: int, cond_ch: int, prior_ch: int, param_ch: int,
                 use_conditions: bool):
        super().__init__()
        self.use_conditions = use_conditions
        if use_conditions:
            self.condition_enc = PerceptionCondition(perception_ch, cond_ch)
            self.condition_dec = PerceptionCondition(perception_ch, cond_ch)
            cond_channels = self.condition_enc.stage_channels
        else:
            self.condition_enc = self.condition_dec = None
            cond_channels = [0] * len(CONDITION_LEVELS)
        self.contextual_encoder = ContextualEncoder(feat_ch, width, latent_ch, cond_channels)
        self.contextual_decoder = ContextualDecoder(feat_ch, width, latent_ch, cond_channels)
        self.temporal_prior = TemporalPrior(feat_ch, width, prior_ch)
        self.residual_entropy = HyperpriorEntropyModel(latent_ch, hyper_ch, prior_ch, param_ch)

    def _conditions(self, module: Optional[PerceptionCondition],
                    pyramid: Optional[Mapping[str, Tensor]], size) -> Optional[List[Tensor]]:
        if module is None:
            return None
        if pyramid is None:
            raise ValueError("perception conditions are enabled but no perception output given")
        return module(pyramid, size)

    def reconstruct(self, y_hat: Tensor, f_tilde: Tensor,
                    pyramid_dec: Optional[Mapping[str, Tensor]]) -> Tensor:
        """Decoder half of eq. (3): D_c(y^ | C_dec, f~_t)."""
        cond = self._conditions(self.condition_dec, pyramid_dec, f_tilde.shape[-2:])
        return self.contextual_decoder(y_hat, f_tilde, cond)

    def _encode(self, f_t, f_tilde, pyramid_enc):
        cond = self._conditions(self.condition_enc, pyramid_enc, f_t.shape[-2:])
        return self.contextual_encoder(f_t, f_tilde, cond), self.temporal_prior(f_tilde)

    def forward(self, f_t: Tensor, f_tilde: Tensor, pyramid_enc, pyramid_dec,
                quantization: str) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Eq. (3) in training: returns (f^_t, {"y", "z"} residual likelihoods)."""
        y, prior = self._encode(f_t, f_tilde, pyramid_enc)
        y_hat, likelihoods = self.residual_entropy(y, prior, quantization=quantization)
        return self.reconstruct(y_hat, f_tilde, pyramid_dec), likelihoods

    def compress(self, f_t: Tensor, f_tilde: Tensor, pyramid_enc,
                 pyramid_dec) -> Tuple[List[List[bytes]], Tensor]:
        y, prior = self._encode(f_t, f_tilde, pyramid_enc)
        strings, y_hat = self.residual_entropy.compress(y, prior)
        return strings, self.reconstruct(y_hat, f_tilde, pyramid_dec)

    def decompress(self, strings: List[List[bytes]], f_tilde: Tensor, pyramid_dec) -> Tensor:
        h, w = f_tilde.shape[-2:]
        size = (h // self.latent_downsampling, w // self.latent_downsampling)
        y_hat = self.residual_entropy.decompress(strings, size, self.temporal_prior(f_tilde))
        return self.reconstruct(y_hat, f_tilde, pyramid_dec)
