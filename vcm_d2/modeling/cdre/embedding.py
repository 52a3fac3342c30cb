"""Distortion representation embedding (CDRE paper, section II-D): eq. 6 for CNN backbones,
eq. 7 for Transformer backbones.

Both embeddings are progressive: the decoded distortion feature d_0 = F_d is transformed
stage by stage (d_i = T_i(d_{i-1})) and d_i is fused into the backbone feature f_i that enters
stage i. Usage by a backbone wrapper, for its stages in order::

    d = decoder(y_hat, output_size)            # d_0
    for name in embedding.stage_names:         # e.g. "res2".."res5"
        d = embedding.transform(name, d)       # d_i
        f = embedding.embed(name, f, d)        # f'_i, then f = stage(f)

The output of every fusion (a projection, or the gate scale gamma) is zero-initialised, so a
freshly built embedding returns f unchanged (bit-exactly) and a pretrained detector is
reproduced exactly before training.

Eq. 6 has two CNN fusions here (``MODEL.VCM.CDRE.EMBEDDING``), which differ only in how the
attended features CA(SA(f_i, d_i)) are brought back to f_i's channels:

* "attention_fusion" (``AttentionFusion``): a learned 1x1 projection of all channels of the
  attended concat(f_i, d_i) -- 15.7K of the embedding's 18.9K MACs/px at R50 widths, 720p;
* "gated" (``GatedFusion``): f_i's own channels of it, scaled per channel by gamma -- the
  projection is the identity on f_i's channels and zero on d_i's, so d_i acts only through
  the two attention maps and the fusion is a gate on f_i (3.5K MACs/px for the whole decoder
  side at R50 widths, 720p, against 19.3K; most of it in the d_i transform blocks).
"""
import math
from typing import Dict, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn
from torch.nn import functional as F

from .layers import ChannelAttention, SpatialAttention, build_norm, conv3x3, crop_to

__all__ = [
    "DistortionEmbedding",
    "CrossAttentionEmbedding",
    "AttentionFusion",
    "GatedFusion",
    "CrossAttentionFusion",
    "CNN_FUSIONS",
]


class _ProgressiveEmbedding(nn.Module):
    """Stage-name API shared by both embeddings; subclasses fill ``transforms`` and ``fusions``."""

    stage_names: Tuple[str, ...]
    transforms: nn.ModuleDict
    fusions: nn.ModuleDict

    def _check_stage(self, name: str) -> None:
        if name not in self.fusions:
            raise KeyError(f"stage {name!r} is not embedded; embedded stages: {self.stage_names}")

    def transform(self, name: str, d_prev: torch.Tensor) -> torch.Tensor:
        """d_i for stage ``name`` from d_{i-1} (the previous embedded stage's d, or F_d)."""
        self._check_stage(name)
        return self.transforms[name](d_prev)

    def embed(self, name: str, f: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """f'_i = f_i + fusion(f_i, d_i) for stage ``name``."""
        self._check_stage(name)
        return self.fusions[name](f, d)

    def forward(self, name: str, f: torch.Tensor, d_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(f'_i, d_i): transform then embed, for one stage."""
        d = self.transform(name, d_prev)
        return self.embed(name, f, d), d


def _stage_specs(cfg, input_shape: Dict[str, ShapeSpec]) -> Tuple[Tuple[str, ...], Dict[str, ShapeSpec]]:
    names = tuple(cfg.MODEL.VCM.CDRE.EMBED_STAGES)
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(f"EMBED_STAGES {missing} not in the backbone stages {list(input_shape)}")
    return names, {n: input_shape[n] for n in names}


class AttentionFusion(nn.Module):
    """f + Proj(CA(SA(concat(f, d)))) -- the embedding of eq. 6 with the projection back to f's
    channels that the concatenation needs. Proj (1x1 conv) starts at zero: identity at init."""

    def __init__(self, channels: int, distortion_channels: int, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        both = channels + distortion_channels
        self.spatial_attention = SpatialAttention(spatial_kernel)
        self.channel_attention = ChannelAttention(both, reduction)
        self.proj = nn.Conv2d(both, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, f: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        d = crop_to(d, f.shape[-2:], "distortion feature d_i")
        z = self.channel_attention(self.spatial_attention(torch.cat([f, d], dim=1)))
        return f + self.proj(z)


class GatedFusion(nn.Module):
    """f + gamma * [CA(SA(concat(f, d)))]_f = f * (1 + gamma * a * s) -- eq. 6 without projection.

    SA and CA are ``AttentionFusion``'s: s = sigmoid(Conv_k([mean_c, max_c] of concat(f, d)))
    is one weight per pixel, a = sigmoid(FC(ReLU(FC(avgpool(concat(f, d) * s))))) one per
    channel. Read literally, eq. 6 adds CA(SA(f_i, d_i)) to f_i, which needs an output with
    f_i's channels: here that is the f_i part of the attended concatenation (channel attention
    only computes those channels), weighted by a per-channel gamma (zero at init: identity,
    the role of LayerScale / ReZero). d_i thus modulates f_i through s and a instead of being
    projected into it; nothing runs at full resolution but the channel statistics, a k x k
    conv with one output channel and the gating product. The concatenation is never built:
    its channel mean / max and its pooled channels come from f and d separately.
    """

    def __init__(self, channels: int, distortion_channels: int, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        both = channels + distortion_channels
        self.spatial_attention = SpatialAttention(spatial_kernel)
        hidden = max(1, both // reduction)
        self.fc1 = nn.Conv2d(both, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, f: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        d = crop_to(d, f.shape[-2:], "distortion feature d_i")
        n = f.shape[1] + d.shape[1]
        mean = (f.sum(dim=1, keepdim=True) + d.sum(dim=1, keepdim=True)) / n
        peak = torch.maximum(f.amax(dim=1, keepdim=True), d.amax(dim=1, keepdim=True))
        s = self.spatial_attention.weights(torch.cat([mean, peak], dim=1))  # (B, 1, H, W)
        z = f * s  # SA(concat(f, d)), f's channels: the only full-size temporary
        pooled = torch.cat([z.mean(dim=(2, 3)), (d * s).mean(dim=(2, 3))], dim=1)
        a = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled[:, :, None, None]))))  # (B, C_f, 1, 1)
        return z.mul_(self.gamma * a).add_(f)  # in place on the temporary (autograd-safe)


# Fusions of the CNN embedding by ``MODEL.VCM.CDRE.EMBEDDING`` (module docstring).
CNN_FUSIONS = {"attention_fusion": AttentionFusion, "gated": GatedFusion}


class DistortionEmbedding(_ProgressiveEmbedding):
    """CNN embedding (eq. 6): d_i = ReLU(Norm(Conv3x3(d_{i-1}))), f'_i = f_i + CA(SA(f_i, d_i)).

    The transform's stride is the ratio of the strides of consecutive embedded stages (1 or
    2; the first stage's ratio is taken w.r.t. the decoder's ``input_stride``), so d_i always
    has f_i's stride. For detectron2's R50 the stage inputs res2..res5 are 64/256/512/1024
    channels at strides 4/4/8/16 (R18: 64/64/128/256), giving transform strides 1, 1, 2, 2.
    A d_i that comes out larger than f_i (odd image sizes) is cropped at the bottom/right.
    ``fusion`` chooses the second line's fusion (``CNN_FUSIONS``); the transforms and their
    widths are the same for every fusion.
    """

    @configurable
    def __init__(
        self,
        *,
        stage_names: Sequence[str],
        stage_channels: Sequence[int],
        stage_strides: Sequence[int],
        distortion_channels: Sequence[int],
        input_channels: int = 16,
        input_stride: int = 4,
        norm: str = "IN",
        reduction: int = 16,
        spatial_kernel: int = 7,
        fusion: str = "attention_fusion",
    ):
        """
        Args:
            stage_names: embedded stages in backbone order.
            stage_channels: channels of each stage's input feature f_i.
            stage_strides: stride of each f_i w.r.t. the image.
            distortion_channels: output channels of each transform (channels of d_i).
            input_channels, input_stride: channels and stride of d_0 (the decoder output).
            norm: normalization of the transform blocks ("IN", "BN", "none").
            reduction: SE reduction of the channel attention.
            spatial_kernel: kernel of the spatial attention.
            fusion: "attention_fusion" or "gated" (``CNN_FUSIONS``).
        """
        super().__init__()
        if fusion not in CNN_FUSIONS:
            raise ValueError(f"unknown CDRE EMBEDDING {fusion!r}; expected one of {sorted(CNN_FUSIONS)}")
        n = len(stage_names)
        if not n or len(set(stage_names)) != n:
            raise ValueError(f"stage_names must be non-empty and unique, got {list(stage_names)}")
        for what, seq in (("stage_channels", stage_channels), ("stage_strides", stage_strides),
                          ("distortion_channels", distortion_channels)):
            if len(seq) != n:
                raise ValueError(f"{what} has {len(seq)} entries for {n} stages {list(stage_names)}")
        self.stage_names = tuple(stage_names)
        self.transforms, self.fusions = nn.ModuleDict(), nn.ModuleDict()
        prev_c, prev_s = input_channels, input_stride
        for name, c, s, dc in zip(stage_names, stage_channels, stage_strides, distortion_channels):
            if s % prev_s != 0 or s // prev_s not in (1, 2):
                raise ValueError(
                    f"stage {name!r} has stride {s} after stride {prev_s}: transform blocks "
                    "support stride ratios 1 and 2 only (embed consecutive stages)"
                )
            self.transforms[name] = nn.Sequential(
                conv3x3(prev_c, dc, stride=s // prev_s), build_norm(norm, dc), nn.ReLU()
            )
            self.fusions[name] = CNN_FUSIONS[fusion](c, dc, reduction, spatial_kernel)
            prev_c, prev_s = dc, s

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """``input_shape``: stage name -> ShapeSpec(channels, stride) of the stage's *input*."""
        c = cfg.MODEL.VCM.CDRE
        names, specs = _stage_specs(cfg, input_shape)
        if len(c.STAGE_CHANNELS) != len(names):
            raise ValueError(
                f"STAGE_CHANNELS {list(c.STAGE_CHANNELS)} needs one width per EMBED_STAGES entry {list(names)}"
            )
        return {
            "stage_names": names,
            "stage_channels": [specs[n].channels for n in names],
            "stage_strides": [specs[n].stride for n in names],
            "distortion_channels": list(c.STAGE_CHANNELS),
            "input_channels": c.DECODER_CHANNELS,
            "input_stride": 2 ** (c.ENCODER_BLOCKS + 1 - c.DECODER_UPSAMPLES),
            "norm": c.TRANSFORM_NORM,
            "reduction": c.ATTENTION_REDUCTION,
            "spatial_kernel": c.SPATIAL_KERNEL,
            "fusion": c.EMBEDDING,
        }


class CrossAttentionFusion(nn.Module):
    """f' = f + W^O Softmax(Q K^T / sqrt(d)) V with Q = f W^Q, K = d W^K, V = d W^V (eq. 7).

    LayerNorm is applied to f and d before the projections (pre-norm, for stable logits on
    unnormalised backbone features); W^O is zero-initialised so the fusion starts as the
    identity. ``f``: (B, N, C) tokens or (B, C, H, W) maps (returned in the same layout);
    ``d``: (B, M, C) tokens. No positional encoding is added (the paper specifies none).
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_f = nn.LayerNorm(channels)
        self.norm_d = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, f: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if f.dim() == 4:
            b, c, h, w = f.shape
            return self.forward(f.flatten(2).transpose(1, 2), d).transpose(1, 2).reshape(b, c, h, w)
        if f.dim() != 3 or d.dim() != 3 or f.shape[-1] != d.shape[-1]:
            raise ValueError(
                f"cross-attention needs f (B, N, C) or (B, C, H, W) and d (B, M, C) with equal C; "
                f"got {tuple(f.shape)} and {tuple(d.shape)}"
            )
        q = self._heads(self.q(self.norm_f(f)))
        dn = self.norm_d(d)
        k, v = self._heads(self.k(dn)), self._heads(self.v(dn))
        # Softmax(Q K^T / sqrt(d_head)) V; scaled_dot_product_attention uses exactly this scale.
        att = F.scaled_dot_product_attention(q, k, v)
        att = att.transpose(1, 2).reshape(f.shape)
        return f + self.out(att)


class CrossAttentionEmbedding(_ProgressiveEmbedding):
    """Transformer embedding (eq. 7): d_i = MLP(d_{i-1}), f'_i = f_i + CrossAttention(f_i, d_i).

    d_0 are the ``TokenDistortionDecoder`` tokens (B, M, token_channels); each MLP (one
    hidden layer, GELU) maps to the stage width (Swin-T: 96/192/384/768). Tokens keep the
    latent resolution; only their width changes.
    """

    @configurable
    def __init__(
        self,
        *,
        stage_names: Sequence[str],
        stage_channels: Sequence[int],
        token_channels: int = 96,
        num_heads: int = 1,
        mlp_ratio: float = 1.0,
    ):
        super().__init__()
        n = len(stage_names)
        if not n or len(set(stage_names)) != n or len(stage_channels) != n:
            raise ValueError(
                f"need unique stage_names with one width each, got {list(stage_names)} / {list(stage_channels)}"
            )
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.stage_names = tuple(stage_names)
        self.transforms, self.fusions = nn.ModuleDict(), nn.ModuleDict()
        prev = token_channels
        for name, c in zip(stage_names, stage_channels):
            hidden = max(1, int(math.ceil(mlp_ratio * c)))
            self.transforms[name] = nn.Sequential(nn.Linear(prev, hidden), nn.GELU(), nn.Linear(hidden, c))
            self.fusions[name] = CrossAttentionFusion(c, num_heads)
            prev = c

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """``input_shape``: stage name -> ShapeSpec(channels=...) of the features f_i."""
        c = cfg.MODEL.VCM.CDRE
        names, specs = _stage_specs(cfg, input_shape)
        return {
            "stage_names": names,
            "stage_channels": [specs[n].channels for n in names],
            "token_channels": c.TOKEN_CHANNELS,
            "num_heads": c.CROSS_ATTENTION_HEADS,
            "mlp_ratio": c.MLP_RATIO,
        }
