"""CDRE decoder side inside detectron2 backbones (paper section II-D, Fig. 4).

The wrappers keep detectron2's ResNet / FPN modules unchanged, so every parameter of the
plain detector keeps its name (``backbone.bottom_up.stem.conv1.weight``,
``backbone.bottom_up.res2.0.conv1.weight``, ``backbone.fpn_lateral2.weight``, ...) and a
standard COCO Faster / Keypoint / Mask R-CNN checkpoint loads with only the CDRE parameters
missing. The CDRE decoder side (distortion decoder + progressive embedding) is one extra
child, ``cdre`` (``backbone.bottom_up.cdre.*`` for FPN, ``backbone.cdre.*`` for C4).

The decoded binary map y_hat reaches the backbone as an explicit argument,
``backbone(x, y_hat=...)``: detectron2's ``FPN.forward`` hands its input unchanged to
``bottom_up``, so ``CDREFPN`` passes the pair as one ``DistortionAwareInput`` and the ResNet
unpacks it -- no hidden state, and FPN's own forward is reused as is. A backbone called
without y_hat raises ValueError.

Transformer backbones (Swin, ``swin_backbone``; ViT, ``vit_backbone``) use the same
``CDREDecoderSide`` with the Transformer pair (``TokenDistortionDecoder`` +
``CrossAttentionEmbedding``, eq. 7) and the same ``DistortionAwareBackbone`` input handling;
``CDREFPN`` takes a ResNet or Swin as its bottom-up network, ``CDRESimpleFeaturePyramid``
(``vit_backbone``) a ViT, both through ``DistortionAwareNeck``.
"""
import abc
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from .distortion_codec import DistortionDecoder, DistortionDecoderBase, TokenDistortionDecoder
from .embedding import CrossAttentionEmbedding, DistortionEmbedding, _ProgressiveEmbedding

__all__ = [
    "DistortionAwareInput",
    "DistortionAwareBackbone",
    "CDREDecoderSide",
    "CDREResNet",
    "DistortionAwareNeck",
    "CDREHost",
    "CDREFPN",
    "stage_input_shapes",
    "check_embedded_stages",
    "fpn_from_config",
    "build_cdre_resnet_backbone",
    "build_cdre_resnet_fpn_backbone",
]


def _ceil_div(n: int, d: int) -> int:
    return -(-int(n) // int(d))


class DistortionAwareInput(NamedTuple):
    """Image batch plus the binary distortion map that belongs to it (see module docstring)."""

    image: torch.Tensor  # (B, 3, H, W), normalized and padded
    y_hat: Optional[torch.Tensor]  # (B, latent_channels, ceil(H/s), ceil(W/s)), 0/1


class CDREDecoderSide(nn.Module):
    """Decoder side of CDRE: y_hat -> d_0 (distortion decoder), then per embedded stage
    (f_i, d_{i-1}) -> (f'_i, d_i) (progressive embedding, eq. 6 or 7).

    Works with the CNN pair (``DistortionDecoder`` + ``DistortionEmbedding``, eq. 6) and with
    the Transformer pair (``TokenDistortionDecoder`` + ``CrossAttentionEmbedding``, eq. 7);
    from a config, ``tokens`` chooses between them.
    """

    @configurable
    def __init__(
        self,
        *,
        decoder: DistortionDecoderBase,
        embedding: _ProgressiveEmbedding,
        latent_channels: int,
        latent_stride: int,
    ):
        """
        Args:
            decoder: y_hat -> d_0.
            embedding: stage-wise transform + fusion; its ``stage_names`` are the embedded stages.
            latent_channels: channels of y_hat (the encoder side's LATENT_CHANNELS).
            latent_stride: stride of y_hat w.r.t. the (padded) image.
        """
        super().__init__()
        self.decoder = decoder
        self.embedding = embedding
        self.latent_channels = int(latent_channels)
        self.latent_stride = int(latent_stride)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], tokens: bool = False):
        """``input_shape``: stage name -> ShapeSpec of the stage's *input* (see
        ``stage_input_shapes``); ``tokens``: the Transformer pair (backbones of tokens, e.g.
        Swin) instead of the CNN pair."""
        c = cfg.MODEL.VCM.CDRE
        if tokens:
            decoder, embedding = TokenDistortionDecoder(cfg), CrossAttentionEmbedding(cfg, input_shape)
        else:
            decoder, embedding = DistortionDecoder(cfg), DistortionEmbedding(cfg, input_shape)
        return {
            "decoder": decoder,
            "embedding": embedding,
            "latent_channels": c.LATENT_CHANNELS,
            "latent_stride": 2 ** (c.ENCODER_BLOCKS + 1),
        }

    @property
    def stage_names(self):
        return self.embedding.stage_names

    def check_latent(self, y_hat: Optional[torch.Tensor], image: torch.Tensor) -> None:
        """Raise ValueError unless y_hat is the latent map of ``image`` (B, 3, H, W)."""
        if y_hat is None:
            raise ValueError(
                "this CDRE backbone needs the decoded distortion map: call backbone(x, y_hat=...) "
                "(CDRERCNN does this; a plain GeneralizedRCNN cannot drive a CDRE backbone)"
            )
        b, _, h, w = image.shape
        s = self.latent_stride
        expected = (b, self.latent_channels, _ceil_div(h, s), _ceil_div(w, s))
        if tuple(y_hat.shape) != expected:
            raise ValueError(
                f"y_hat has shape {tuple(y_hat.shape)} but an image batch {tuple(image.shape)} needs "
                f"{expected} (latent stride {self.latent_stride})"
            )

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """d_0 = D(y_hat)."""
        return self.decoder(y_hat)

    def forward(self, name: str, f: torch.Tensor, d_prev: torch.Tensor):
        """(f'_i, d_i) for stage ``name``."""
        return self.embedding(name, f, d_prev)


class DistortionAwareBackbone(abc.ABC):
    """Mixin marking a detectron2 ``Backbone`` whose forward is ``forward(x, y_hat=None)``
    (y_hat required) and that exposes its ``CDREDecoderSide`` as ``cdre_decoder_side``.
    ``CDRERCNN`` accepts exactly these backbones."""

    @property
    @abc.abstractmethod
    def cdre_decoder_side(self) -> CDREDecoderSide:
        ...

    def _image_and_distortion(self, x, y_hat: Optional[torch.Tensor]):
        """(image batch, d_0) from ``forward``'s arguments: ``x`` is the (N, C, H, W) batch or a
        ``DistortionAwareInput`` carrying both tensors (how ``CDREFPN`` passes y_hat through
        detectron2's FPN.forward); y_hat is required and checked against the batch."""
        if isinstance(x, DistortionAwareInput):
            if y_hat is not None:
                raise ValueError("y_hat given twice: inside DistortionAwareInput and as an argument")
            x, y_hat = x
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        side = self.cdre_decoder_side
        side.check_latent(y_hat, x)
        return x, side.decode(y_hat)


def check_embedded_stages(cdre: CDREDecoderSide, stage_names: Sequence[str], backbone: str) -> None:
    """Raise ValueError unless the stages ``cdre`` embeds are stages of ``backbone`` (named
    ``stage_names``), in backbone order."""
    embedded = list(cdre.stage_names)
    in_order = [n for n in stage_names if n in embedded]
    if in_order != embedded:
        missing = [n for n in embedded if n not in stage_names]
        raise ValueError(
            f"CDRE EMBED_STAGES {embedded} must be stages of this {backbone} {list(stage_names)} "
            f"in backbone order" + (f" ({missing} not built here)" if missing else "")
        )


class CDREHost(DistortionAwareBackbone):
    """Mixin for a detectron2 backbone that hosts the decoder side as its one extra child
    ``cdre``, embedding before the points its ``stage_names`` property names:
    ``__init__(cdre=..., **the backbone's own arguments)``.

    ``cdre`` joins after the backbone's own ``__init__``, which may re-initialise its modules
    (detectron2's ViT does, every Linear): the zero-initialised fusion outputs stay zero.
    """

    backbone_name: str  # for error messages

    def __init__(self, *, cdre: CDREDecoderSide, **kwargs):
        super().__init__(**kwargs)
        check_embedded_stages(cdre, self.stage_names, self.backbone_name)
        self.cdre = cdre

    @property
    def cdre_decoder_side(self) -> CDREDecoderSide:
        return self.cdre


def stage_input_shapes(stem: nn.Module, stage_names: Sequence[str], stages: Sequence[Sequence[nn.Module]]):
    """Stage name -> ShapeSpec(channels, stride) of the feature that *enters* the stage.

    detectron2's R50: res2..res5 inputs are 64/256/512/1024 channels at strides 4/4/8/16;
    R18: 64/64/128/256 at the same strides.
    """
    shapes, stride = {}, stem.stride
    for name, blocks in zip(stage_names, stages):
        shapes[name] = ShapeSpec(channels=blocks[0].in_channels, stride=stride)
        stride = int(stride * np.prod([b.stride for b in blocks]))
    return shapes


class CDREResNet(CDREHost, ResNet):
    """detectron2 ``ResNet`` (same stem, stages and parameter names) with the CDRE decoder
    side: before every stage in ``cdre.stage_names``, f = embedding(stage, f, d)."""

    backbone_name = "ResNet"

    def __init__(self, stem, stages, *, cdre: CDREDecoderSide, out_features=None, freeze_at=0):
        """
        Args:
            stem, stages, out_features, freeze_at: as for detectron2's ``ResNet`` (no
                classification head: ``num_classes`` is always None in a detector backbone).
            cdre: the decoder side; its stages must be stages of this ResNet, in order.
        """
        super().__init__(cdre=cdre, stem=stem, stages=stages, num_classes=None, out_features=out_features,
                         freeze_at=freeze_at)

    def forward(self, x, y_hat: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W) image batch, or a ``DistortionAwareInput`` carrying both tensors
                (how ``CDREFPN`` passes y_hat through detectron2's FPN.forward).
            y_hat: (N, latent_channels, ceil(H/s), ceil(W/s)) binary map; required.
        """
        x, d = self._image_and_distortion(x, y_hat)
        embedded = set(self.cdre.stage_names)
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            if name in embedded:
                x, d = self.cdre(name, x, d)
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


class DistortionAwareNeck(DistortionAwareBackbone):
    """Mixin for a detectron2 feature pyramid over a distortion-aware network: ``CDREFPN``
    (FPN, network ``bottom_up``) and ``CDRESimpleFeaturePyramid`` (ViTDet's pyramid, network
    ``net``). Both pyramids' forward hands its input unchanged to the network, so
    ``forward(x, y_hat)`` passes the pair as one ``DistortionAwareInput`` and reuses it."""

    network_arg: str  # the pyramid's constructor argument (and attribute) holding the network

    def __init__(self, **kwargs):
        network = kwargs.get(self.network_arg)
        if not isinstance(network, DistortionAwareBackbone):
            raise ValueError(
                f"{type(self).__name__} needs a distortion-aware {self.network_arg} network, "
                f"got {type(network).__name__}"
            )
        super().__init__(**kwargs)

    @property
    def cdre_decoder_side(self) -> CDREDecoderSide:
        return getattr(self, self.network_arg).cdre_decoder_side

    def forward(self, x, y_hat: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return super().forward(DistortionAwareInput(x, y_hat))


class CDREFPN(DistortionAwareNeck, FPN):
    """detectron2 ``FPN`` over a distortion-aware bottom-up network (``CDREResNet``,
    ``CDRESwinTransformer``); ``forward(x, y_hat)`` reuses FPN.forward."""

    network_arg = "bottom_up"


def _build_cdre_resnet(cfg, input_shape: ShapeSpec) -> CDREResNet:
    # Build the plain ResNet exactly as detectron2 does, then re-host its stem and stages.
    plain = build_resnet_backbone(cfg, input_shape)
    stages: List[List[nn.Module]] = [list(stage) for stage in plain.stages]
    cdre = CDREDecoderSide(cfg, stage_input_shapes(plain.stem, plain.stage_names, stages))
    return CDREResNet(
        plain.stem,
        stages,
        cdre=cdre,
        out_features=list(plain.output_shape()),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_cdre_resnet_backbone(cfg, input_shape: ShapeSpec) -> CDREResNet:
    """ResNet + CDRE (C4 and other single-ResNet detectors).

    In C4 detectors res5 is part of the ROI head (``Res5ROIHeads``), not of the backbone, so
    only res2..res4 can be embedded: set ``MODEL.VCM.CDRE.EMBED_STAGES`` to
    ``["res2", "res3", "res4"]`` (and three ``STAGE_CHANNELS``), see
    configs/CDRE/Base-CDRE-RCNN-C4.yaml.
    """
    return _build_cdre_resnet(cfg, input_shape)


def fpn_from_config(cfg, bottom_up, fpn_class=FPN) -> FPN:
    """``fpn_class`` (detectron2's ``FPN`` or ``CDREFPN``) over ``bottom_up`` from
    ``cfg.MODEL.FPN``, with the same modules as detectron2's ``build_resnet_fpn_backbone``."""
    return fpn_class(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_cdre_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> CDREFPN:
    """ResNet-FPN + CDRE: the same modules as detectron2's ``build_resnet_fpn_backbone``."""
    return fpn_from_config(cfg, _build_cdre_resnet(cfg, input_shape), CDREFPN)
