"""Cosine term of the CDRE loss (paper eq. 8): L = L_task + lambda * sum_i (1 + cos(F_i^o, F_i^c))."""
from typing import Dict, Sequence

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

__all__ = ["cdre_cosine_loss", "CDRECosineLoss", "COSINE_EPS"]

# Guards the cosine of all-zero feature vectors (possible after LeakyReLU of a flat region).
COSINE_EPS = 1e-8


def cdre_cosine_loss(feats_o: Sequence[torch.Tensor], feats_c: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over scales i of mean over (batch, pixels) of 1 + cos(F_i^o, F_i^c), unweighted.

    The cosine is taken over channels at each pixel (the feature vector of a location), then
    averaged so every scale contributes a value in [0, 2] regardless of its resolution:
    2 for identical features, 0 for opposite ones. Minimising it pushes the extractor's
    features of original and compressed images apart (compression sensitivity).
    """
    if len(feats_o) != len(feats_c) or not feats_o:
        raise ValueError(f"need the same non-zero number of scales, got {len(feats_o)} and {len(feats_c)}")
    total = feats_o[0].new_zeros(())
    for f_o, f_c in zip(feats_o, feats_c):
        if f_o.shape != f_c.shape:
            raise ValueError(f"feature shapes differ: {tuple(f_o.shape)} vs {tuple(f_c.shape)}")
        total = total + (1 + F.cosine_similarity(f_o, f_c, dim=1, eps=COSINE_EPS)).mean()
    return total


class CDRECosineLoss(nn.Module):
    """lambda * ``cdre_cosine_loss`` as a detectron2 loss dict (empty when disabled)."""

    LOSS_NAME = "loss_cdre_cosine"

    @configurable
    def __init__(self, *, weight: float = 0.1, enabled: bool = True):
        super().__init__()
        if weight < 0:
            raise ValueError(f"cosine loss weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.enabled = bool(enabled)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.VCM.CDRE
        return {"weight": c.COSINE_WEIGHT, "enabled": c.USE_COSINE}

    def forward(self, feats_o, feats_c) -> Dict[str, torch.Tensor]:
        if not self.enabled:
            return {}
        return {self.LOSS_NAME: self.weight * cdre_cosine_loss(feats_o, feats_c)}
