"""CDRE decoder side inside detectron2's Swin Transformer (paper section II-D, eq. 7), and the
plain Swin-FPN backbone of the Transformer baselines.

detectron2 ships ``SwinTransformer`` (``detectron2.modeling.backbone.swin``) but registers no
builder for it (its projects build it from LazyConfigs). ``build_swin_fpn_backbone`` builds it
from ``cfg.MODEL.VCM.SWIN`` with detectron2's ``FPN`` on top, as ViTDet's Swin configs do:
bottom-up outputs p0..p3 (stage i at stride 2^(i+2)), FPN outputs p2..p6.

``build_cdre_swin_fpn_backbone`` builds the same modules under the same names, the Swin as a
``CDRESwinTransformer`` whose one extra child ``cdre`` (``backbone.bottom_up.cdre.*``) is the
Transformer decoder side: ``TokenDistortionDecoder`` (y_hat -> distortion tokens at 1/32) and
``CrossAttentionEmbedding`` (eq. 7, in ``embedding``): before every embedded stage the
distortion tokens go through an MLP to the stage width and the stage's tokens attend to them
(Q = stage tokens, K = V = distortion tokens), added residually through a zero-initialised
output projection. A checkpoint of the plain Swin-FPN detector therefore loads with only the
CDRE parameters missing, and the wrapped model reproduces it exactly before training.

Stage names are the Swin's own feature names: "p<i>" is stage i, and CDRE embeds into the
tokens that *enter* it (for i > 0 the output of stage i-1's patch merging), so
``MODEL.VCM.CDRE.EMBED_STAGES`` lists e.g. ["p0", "p1", "p2", "p3"].
"""
from typing import Dict, Optional

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.swin import SwinTransformer
from torch.nn import functional as F
from torchvision.ops import StochasticDepth

from .backbone import CDREDecoderSide, CDREFPN, CDREHost, fpn_from_config

__all__ = [
    "CDRESwinTransformer",
    "swin_kwargs_from_config",
    "swin_stage_shapes",
    "build_swin",
    "build_swin_fpn_backbone",
    "build_cdre_swin_fpn_backbone",
]

# Patch size of detectron2's Swin detectors (stage i at stride 2^(i+2)).
PATCH_SIZE = 4


def _stage_name(i: int) -> str:
    return f"p{i}"


def swin_stage_shapes(embed_dim: int, num_stages: int) -> Dict[str, ShapeSpec]:
    """Stage name -> ShapeSpec(channels, stride) of the tokens entering each Swin stage (a Swin
    stage keeps its width and stride, so also of its output). Swin-T: 96/192/384/768 channels
    at strides 4/8/16/32."""
    return {
        _stage_name(i): ShapeSpec(channels=embed_dim * 2**i, stride=PATCH_SIZE * 2**i)
        for i in range(num_stages)
    }


def swin_kwargs_from_config(cfg, input_shape: ShapeSpec) -> Dict:
    """Keyword arguments of detectron2's ``SwinTransformer`` from ``cfg.MODEL.VCM.SWIN``, with
    ``drop_path_rate`` 0: ``build_swin`` adds the stochastic depth (see there)."""
    s = cfg.MODEL.VCM.SWIN
    if len(s.DEPTHS) != len(s.NUM_HEADS):
        raise ValueError(f"MODEL.VCM.SWIN: DEPTHS {list(s.DEPTHS)} and NUM_HEADS {list(s.NUM_HEADS)} "
                         "need one entry per stage")
    names = [_stage_name(i) for i in range(len(s.DEPTHS))]
    unknown = [f for f in s.OUT_FEATURES if f not in names]
    if unknown or not s.OUT_FEATURES:
        raise ValueError(f"MODEL.VCM.SWIN.OUT_FEATURES {list(s.OUT_FEATURES)} must name stages of {names}")
    return {
        "patch_size": PATCH_SIZE,
        "in_chans": input_shape.channels,
        "embed_dim": s.EMBED_DIM,
        "depths": tuple(s.DEPTHS),
        "num_heads": tuple(s.NUM_HEADS),
        "window_size": s.WINDOW_SIZE,
        "mlp_ratio": s.MLP_RATIO,
        "drop_path_rate": 0.0,
        "out_indices": tuple(sorted(names.index(f) for f in s.OUT_FEATURES)),
    }


def build_swin(cfg, input_shape: ShapeSpec, swin_class=SwinTransformer, **extra) -> SwinTransformer:
    """``swin_class`` (``SwinTransformer`` or ``CDRESwinTransformer``, ``extra``: its other
    arguments) from ``cfg.MODEL.VCM.SWIN``.

    Stochastic depth: detectron2's Swin takes ``DropPath`` from timm, which is no dependency
    here, so the Swin is built without it and each block with a rate > 0 gets torchvision's
    ``StochasticDepth(rate, "row")`` -- the same operation (rows dropped with probability
    rate, kept rows scaled by 1 / (1 - rate), identity in eval) with the same linear rates
    0..DROP_PATH_RATE over the blocks, and no parameters.
    """
    swin = swin_class(**swin_kwargs_from_config(cfg, input_shape), **extra)
    blocks = [blk for layer in swin.layers for blk in layer.blocks]
    for blk, rate in zip(blocks, torch.linspace(0, cfg.MODEL.VCM.SWIN.DROP_PATH_RATE, len(blocks)).tolist()):
        if rate > 0.0:
            blk.drop_path = StochasticDepth(rate, "row")
    return swin


class CDRESwinTransformer(CDREHost, SwinTransformer):
    """detectron2 ``SwinTransformer`` (same modules, parameter names and outputs) with the CDRE
    decoder side: before every stage in ``cdre.stage_names``, tokens = embedding(stage, tokens, d).

    Built as ``CDRESwinTransformer(cdre=..., **SwinTransformer's arguments)``; ``cdre`` is the
    Transformer pair (``CDREDecoderSide(cfg, ..., tokens=True)``) and its stages must be stages
    of this Swin ("p0", "p1", ...), in order.
    """

    backbone_name = "Swin Transformer"

    @property
    def stage_names(self):
        return tuple(_stage_name(i) for i in range(self.num_layers))

    def forward(self, x, y_hat: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``SwinTransformer.forward`` with the embedding before the embedded stages.

        Args:
            x: (N, C, H, W) image batch, or a ``DistortionAwareInput`` carrying both tensors.
            y_hat: (N, latent_channels, ceil(H/s), ceil(W/s)) binary map; required.
        """
        x, d = self._image_and_distortion(x, y_hat)
        embedded = set(self.cdre.stage_names)
        x = self.patch_embed(x)
        wh, ww = x.size(2), x.size(3)
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(wh, ww), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))  # (N, wh*ww, C) tokens
        outs = {}
        for i, (name, layer) in enumerate(zip(self.stage_names, self.layers)):
            if name in embedded:
                x, d = self.cdre(name, x, d)
            x_out, h, w, x, wh, ww = layer(x, wh, ww)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs[name] = x_out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
        return outs


@BACKBONE_REGISTRY.register()
def build_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's ``SwinTransformer`` (``cfg.MODEL.VCM.SWIN``) + ``FPN`` (``cfg.MODEL.FPN``,
    IN_FEATURES e.g. ["p0", "p1", "p2", "p3"]): the plain detector of the Transformer rows."""
    return fpn_from_config(cfg, build_swin(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_cdre_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> CDREFPN:
    """Swin-FPN + CDRE (Transformer version): the modules of ``build_swin_fpn_backbone`` plus
    ``bottom_up.cdre`` (``TokenDistortionDecoder`` + ``CrossAttentionEmbedding``)."""
    s = cfg.MODEL.VCM.SWIN
    cdre = CDREDecoderSide(cfg, swin_stage_shapes(s.EMBED_DIM, len(s.DEPTHS)), tokens=True)
    return fpn_from_config(cfg, build_swin(cfg, input_shape, CDRESwinTransformer, cdre=cdre), CDREFPN)
