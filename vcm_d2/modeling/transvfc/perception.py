"""A detectron2 ResNet(-FPN) split at res2: the frozen upstream head and the rest.

TransVFC codes the res2 feature of the Faster R-CNN's ResNet-50 (Sec. 3): the *head* (stem +
res2) runs on the sender, and the rest of the same network -- res3..res5 and the FPN, whose
outputs p2..p6 are the *perception network* of eq. (2)-(3) and (6) -- runs on whatever res2
feature it is given (the original, a compensated or a decoded one). The modules stay where
detectron2 built them (``backbone.bottom_up.stem``, ``backbone.fpn_lateral2``, ...), so a
standard checkpoint loads unchanged; :class:`SplitBackbone` only routes tensors through them.
"""
from typing import Dict, List

import torch.nn.functional as F
from detectron2.modeling.backbone import FPN, Backbone, ResNet
from torch import Tensor

__all__ = ["SPLIT_FEATURE", "SplitBackbone", "resnet_of"]

# The coded feature (the paper's split point).
SPLIT_FEATURE = "res2"
# detectron2's FPN top-down path upsamples by this factor with "nearest" (its forward).
_TOP_DOWN_SCALE = 2.0


def resnet_of(backbone: Backbone) -> ResNet:
    """The ResNet of a ResNet or ResNet-FPN backbone (ValueError for anything else)."""
    resnet = backbone.bottom_up if isinstance(backbone, FPN) else backbone
    if not isinstance(resnet, ResNet):
        raise ValueError(f"TransVFC needs a detectron2 ResNet or ResNet-FPN backbone, got "
                         f"{type(backbone).__name__} over {type(resnet).__name__}")
    if not resnet.stage_names or resnet.stage_names[0] != SPLIT_FEATURE:
        raise ValueError(f"the ResNet's first stage must be {SPLIT_FEATURE!r}, got "
                         f"{resnet.stage_names}")
    return resnet


class SplitBackbone:
    """Views of ``backbone`` (a ResNet or ResNet-FPN) split after res2.

    Not an ``nn.Module``: it holds no parameters of its own, so several owners (the
    meta-architecture, a task tail) can use the same backbone without registering it twice.

    * ``head(images)``: stem + res2 of normalized images (N x 3 x H x W) -> res2 feature;
    * ``rest(res2)``: the backbone's outputs computed from a res2 feature: FPN levels (p2..p6)
      for an FPN, else the ResNet's out_features after res2 (res3..res5).
    """

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.resnet = resnet_of(backbone)
        shapes = self.resnet.output_shape()
        if SPLIT_FEATURE not in shapes:
            raise ValueError(f"the ResNet must output {SPLIT_FEATURE!r} "
                             f"(RESNETS.OUT_FEATURES), got {sorted(shapes)}")
        self.feature_channels = shapes[SPLIT_FEATURE].channels
        self.feature_stride = shapes[SPLIT_FEATURE].stride

    @property
    def output_shape(self):
        return self.backbone.output_shape()

    @property
    def output_stride(self) -> int:
        """Largest stride among the outputs of ``rest`` (inputs must divide by it)."""
        return max(s.stride for s in self.output_shape.values())

    @property
    def feature_divisibility(self) -> int:
        """``rest`` needs res2 sizes divisible by this (feature pixels): the backbone's
        ``size_divisibility`` (FPN: the res5 stride) or else its largest output stride, in
        feature pixels. Padding to exactly this keeps the outputs equal to the backbone's on
        an image padded the way detectron2 pads it."""
        image_divisibility = self.backbone.size_divisibility or self.output_stride
        return max(1, image_divisibility // self.feature_stride)

    def head(self, images: Tensor) -> Tensor:
        return self.resnet.stages[0](self.resnet.stem(images))

    def resnet_stages(self, res2: Tensor) -> Dict[str, Tensor]:
        """res2 plus every later stage's output (res3..res5 as far as the ResNet goes)."""
        out = {SPLIT_FEATURE: res2}
        x = res2
        for name, stage in zip(self.resnet.stage_names[1:], self.resnet.stages[1:]):
            x = stage(x)
            out[name] = x
        return out

    def rest(self, res2: Tensor) -> Dict[str, Tensor]:
        bottom_up = self.resnet_stages(res2)
        if not isinstance(self.backbone, FPN):
            return {k: bottom_up[k] for k in self.resnet.output_shape() if k != SPLIT_FEATURE}
        return _fpn_top_down(self.backbone, bottom_up)

    __call__ = rest


def _fpn_top_down(fpn: FPN, bottom_up: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """detectron2's FPN forward after its bottom-up pass, from given bottom-up features.

    Same modules and order of operations as ``FPN.forward`` (lateral 1x1 convs, nearest x2
    top-down path, optional averaging, 3x3 output convs, top block), so p2..p6 equal what the
    FPN computes on the image whose res2 this is."""
    levels: List[Tensor] = []
    prev = fpn.lateral_convs[0](bottom_up[fpn.in_features[-1]])
    levels.append(fpn.output_convs[0](prev))
    for idx in range(1, len(fpn.lateral_convs)):
        lateral = fpn.lateral_convs[idx](bottom_up[fpn.in_features[-idx - 1]])
        prev = lateral + F.interpolate(prev, scale_factor=_TOP_DOWN_SCALE, mode="nearest")
        if fpn._fuse_type == "avg":
            prev = prev / 2
        levels.insert(0, fpn.output_convs[idx](prev))
    if fpn.top_block is not None:
        name = fpn.top_block.in_feature
        source = bottom_up[name] if name in bottom_up else levels[fpn._out_features.index(name)]
        levels.extend(fpn.top_block(source))
    return dict(zip(fpn._out_features, levels))
