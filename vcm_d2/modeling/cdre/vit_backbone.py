"""CDRE decoder side inside detectron2's plain ViT (ViTDet; paper section II-D, eq. 7), and the
plain ViT + SimpleFeaturePyramid backbone of the ViT baselines.

detectron2 ships ``ViT`` and ``SimpleFeaturePyramid`` (``detectron2.modeling.backbone.vit``) but
builds them from LazyConfigs only. ``build_vit_sfp_backbone`` builds them from
``cfg.MODEL.VCM.VIT`` as ViTDet does: one stride-16 map from the last block, resampled to p2..p5
by the pyramid, plus a max-pooled p6 (parameters ``backbone.net.*`` and ``backbone.simfp_*``, as
in ViTDet's checkpoints).

``build_cdre_vit_sfp_backbone`` builds the same modules under the same names, the ViT as a
``CDREViT`` whose one extra child ``cdre`` (``backbone.net.cdre.*``) is the Transformer decoder
side of the Swin version (``swin_backbone``): ``TokenDistortionDecoder`` (y_hat -> distortion
tokens at 1/32) and ``CrossAttentionEmbedding`` (eq. 7): before every embedded block the
distortion tokens go through an MLP to the ViT width and the ViT's tokens (at 1/16) attend to
them, added through a zero-initialised output projection. A checkpoint of the plain ViT-SFP
detector therefore loads with only the CDRE parameters missing, and the wrapped model
reproduces it exactly before training.

Embedding points. A ViT has no stages: "b<i>" is the input of block i, and
``MODEL.VCM.CDRE.EMBED_STAGES`` lists some of them in order. The configs embed at the input of
each of ViTDet's block groups -- a group is a run of window-attention blocks closed by a global
one (ViT-B: blocks 0-2, 3-5, 6-8, 9-11, so "b0", "b3", "b6", "b9"). These are the counterparts
of the Swin version's stage inputs: the first is the patch embedding, as Swin's "p0"; four of
them match Table III's best count; and each group's window blocks refine the embedded tokens
locally before its global block spreads them over the image.
"""
from functools import partial
from typing import Dict, Optional

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.utils import get_abs_pos
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid, ViT
from torch import nn

from .backbone import CDREDecoderSide, CDREHost, DistortionAwareNeck

__all__ = [
    "CDREViT",
    "PaddedSimpleFeaturePyramid",
    "CDRESimpleFeaturePyramid",
    "vit_kwargs_from_config",
    "vit_stage_shapes",
    "build_vit",
    "sfp_from_config",
    "build_vit_sfp_backbone",
    "build_cdre_vit_sfp_backbone",
]

# Name of the ViT's one output (detectron2's default, what ViTDet's pyramid reads).
OUT_FEATURE = "last_feat"


def _block_name(i: int) -> str:
    return f"b{i}"


def vit_stage_shapes(cfg) -> Dict[str, ShapeSpec]:
    """Embedding point name -> ShapeSpec(channels, stride) of the tokens entering each block:
    all of them EMBED_DIM wide at stride PATCH_SIZE (ViT-B: 768 at 16)."""
    v = cfg.MODEL.VCM.VIT
    return {_block_name(i): ShapeSpec(channels=v.EMBED_DIM, stride=v.PATCH_SIZE) for i in range(v.DEPTH)}


def vit_kwargs_from_config(cfg, input_shape: ShapeSpec) -> Dict:
    """Keyword arguments of detectron2's ``ViT`` from ``cfg.MODEL.VCM.VIT``."""
    v = cfg.MODEL.VCM.VIT
    if v.EMBED_DIM % v.NUM_HEADS != 0:
        raise ValueError(f"MODEL.VCM.VIT: EMBED_DIM {v.EMBED_DIM} is not divisible by NUM_HEADS {v.NUM_HEADS}")
    for key in ("WINDOW_BLOCK_INDEXES", "RESIDUAL_BLOCK_INDEXES"):
        outside = [i for i in v[key] if not 0 <= i < v.DEPTH]
        if outside:
            raise ValueError(f"MODEL.VCM.VIT.{key} {outside} are no blocks of a ViT of DEPTH {v.DEPTH}")
    return {
        "img_size": v.IMG_SIZE,
        "patch_size": v.PATCH_SIZE,
        "in_chans": input_shape.channels,
        "embed_dim": v.EMBED_DIM,
        "depth": v.DEPTH,
        "num_heads": v.NUM_HEADS,
        "mlp_ratio": v.MLP_RATIO,
        "qkv_bias": v.QKV_BIAS,
        "drop_path_rate": v.DROP_PATH_RATE,
        "norm_layer": partial(nn.LayerNorm, eps=v.LAYER_NORM_EPS),
        "use_abs_pos": v.USE_ABS_POS,
        "use_rel_pos": v.USE_REL_POS,
        "window_size": v.WINDOW_SIZE,
        "window_block_indexes": tuple(v.WINDOW_BLOCK_INDEXES),
        "residual_block_indexes": tuple(v.RESIDUAL_BLOCK_INDEXES),
        "pretrain_img_size": v.PRETRAIN_IMG_SIZE,
        "pretrain_use_cls_token": v.PRETRAIN_USE_CLS_TOKEN,
        "out_feature": OUT_FEATURE,
    }


def build_vit(cfg, input_shape: ShapeSpec, vit_class=ViT, **extra) -> ViT:
    """``vit_class`` (``ViT`` or ``CDREViT``, ``extra``: its other arguments) from
    ``cfg.MODEL.VCM.VIT``."""
    return vit_class(**vit_kwargs_from_config(cfg, input_shape), **extra)


class CDREViT(CDREHost, ViT):
    """detectron2 ``ViT`` (same modules, parameter names and output) with the CDRE decoder side:
    before every block in ``cdre.stage_names``, tokens = embedding(block, tokens, d).

    Built as ``CDREViT(cdre=..., **ViT's arguments)``; ``cdre`` is the Transformer pair
    (``CDREDecoderSide(cfg, ..., tokens=True)``) and its stages must be blocks of this ViT
    ("b0", "b1", ...), in order.
    """

    backbone_name = "ViT"

    @property
    def stage_names(self):
        return tuple(_block_name(i) for i in range(len(self.blocks)))

    def _embed(self, name: str, x: torch.Tensor, d: torch.Tensor):
        # The ViT keeps its tokens as a (N, h, w, C) map; the embedding takes (N, h*w, C).
        n, h, w, c = x.shape
        f, d = self.cdre(name, x.reshape(n, h * w, c), d)
        return f.view(n, h, w, c), d

    def forward(self, x, y_hat: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``ViT.forward`` with the embedding before the embedded blocks; ``x`` is the image
        batch (or a ``DistortionAwareInput``), ``y_hat`` its binary map (required)."""
        x, d = self._image_and_distortion(x, y_hat)
        embedded = set(self.cdre.stage_names)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        for name, blk in zip(self.stage_names, self.blocks):
            if name in embedded:
                x, d = self._embed(name, x, d)
            x = blk(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


class PaddedSimpleFeaturePyramid(SimpleFeaturePyramid):
    """detectron2's ``SimpleFeaturePyramid`` (same modules and outputs) that pads batches to its
    coarsest stride, as FPN does.

    detectron2's version spells its padding key "size_divisiblity", which
    ``ImageList.from_tensors`` does not read; ViTDet never notices (it always square-pads to
    1024), but without square padding batches would not be padded at all and the pixels of a
    partial last patch would be dropped.
    """

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}


class CDRESimpleFeaturePyramid(DistortionAwareNeck, PaddedSimpleFeaturePyramid):
    """The pyramid over a ``CDREViT``; ``forward(x, y_hat)`` reuses SimpleFeaturePyramid.forward."""

    network_arg = "net"


def sfp_from_config(cfg, net: ViT, sfp_class=PaddedSimpleFeaturePyramid) -> SimpleFeaturePyramid:
    """``sfp_class`` (``PaddedSimpleFeaturePyramid`` or ``CDRESimpleFeaturePyramid``) over
    ``net`` from ``cfg.MODEL.VCM.VIT.SFP``, with ViTDet's max-pooled top level."""
    p = cfg.MODEL.VCM.VIT.SFP
    largest = max(cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TEST)
    if p.SQUARE_PAD and largest > p.SQUARE_PAD:
        # ImageList would "pad" a larger image to the square by cropping it, silently.
        raise ValueError(
            f"MODEL.VCM.VIT.SFP.SQUARE_PAD {p.SQUARE_PAD} is smaller than the largest input side "
            f"{largest} (INPUT.MAX_SIZE_TRAIN / MAX_SIZE_TEST): lower those or set SQUARE_PAD 0"
        )
    return sfp_class(
        net=net,
        in_feature=OUT_FEATURE,
        out_channels=p.OUT_CHANNELS,
        scale_factors=tuple(p.SCALE_FACTORS),
        top_block=LastLevelMaxPool(),
        norm=p.NORM,
        square_pad=p.SQUARE_PAD,
    )


@BACKBONE_REGISTRY.register()
def build_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> PaddedSimpleFeaturePyramid:
    """detectron2's ``ViT`` + ``SimpleFeaturePyramid`` (``cfg.MODEL.VCM.VIT``): the plain
    detector of the ViT rows, outputs p2..p6."""
    return sfp_from_config(cfg, build_vit(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_cdre_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> CDRESimpleFeaturePyramid:
    """ViT-SFP + CDRE (Transformer version): the modules of ``build_vit_sfp_backbone`` plus
    ``net.cdre`` (``TokenDistortionDecoder`` + ``CrossAttentionEmbedding``)."""
    cdre = CDREDecoderSide(cfg, vit_stage_shapes(cfg), tokens=True)
    return sfp_from_config(cfg, build_vit(cfg, input_shape, CDREViT, cdre=cdre), CDRESimpleFeaturePyramid)
