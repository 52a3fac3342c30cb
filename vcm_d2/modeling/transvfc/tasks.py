"""Downstream task tails of TransVFC and their registry.

A *task tail* is a frozen downstream network cut after its res2-like feature F^i_t: the FST of
the task maps the decoded feature F^_t to F^^i_t (eq. 4) and the tail finishes the task from
there. A tail declares the feature it needs (``feature_shape``), computes the original F^i_t
from images (``target_feature``, the D_mid target), its backbone's high-level outputs
(``high_features``, the D_high terms of eq. 8), its loss (L_task) and its predictions.

Tails plug in by config alone: ``MODEL.VCM.TRANSVFC.TASKS`` lists task nodes under
``MODEL.VCM.TRANSVFC.TASK``; each node's ``TAIL`` names a class registered in
``TRANSVFC_TASK_REGISTRY`` and its ``FST`` node overrides the FST keys (architecture, Table 2
loss weights). Adding a task (e.g. video instance segmentation) = registering a tail class and
adding a node; the codec and the meta-architecture do not change.

Registered tails:

* ``FasterRCNNTail`` ("instances"): RPN + box head of the upstream Faster R-CNN on FPN(res3-5)
  of the transferred feature. Its backbone part is the upstream network itself (shared with
  the perception network, not copied); a standard detectron2 checkpoint's
  ``proposal_generator.*`` / ``roi_heads.*`` load into it (``checkpoint_aliases``).
* ``MaskRCNNTail`` ("instances" with masks): a Mask R-CNN of its own (the per-frame network of
  video instance segmentation, ``vcm_d2.modeling.vis``) whose stem + res2 make F^i_t and whose
  res3-5 + FPN + heads run on the transferred feature. Weights from ``TASK.<NAME>.WEIGHTS``.
* ``DeepLabV3Tail`` ("sem_seg"): a DeepLab-v3 network (detectron2's DeepLab project: ResNet with
  dilated res5 + ASPP head) whose stem + res2 make F^i_t and whose res3..res5 + head run on the
  transferred feature. Weights from ``TASK.<NAME>.WEIGHTS``.

Tails receive images as the model's input (INPUT.FORMAT, 0..255) and normalize them as
their own network expects (the detection tail: MODEL.PIXEL_MEAN/STD; DeepLab: its node's).
"""
import contextlib
import logging
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from .layers import pad_to_multiple
from .perception import SPLIT_FEATURE, SplitBackbone

__all__ = [
    "TRANSVFC_TASK_REGISTRY",
    "TaskTail",
    "FasterRCNNTail",
    "MaskRCNNTail",
    "DeepLabV3Tail",
    "build_task_tail",
    "task_key",
    "frozen_statistics_training",
    "PixelNormalizer",
]

logger = logging.getLogger(__name__)

TRANSVFC_TASK_REGISTRY = Registry("TRANSVFC_TASK")
TRANSVFC_TASK_REGISTRY.__doc__ = """Task tails of TransVFC: ``TaskTail`` classes with
``from_task_config(cfg, node, upstream, key)``; node: ``cfg.MODEL.VCM.TRANSVFC.TASK.<NAME>``."""

IMAGE_CHANNELS = 3
# Prefix of the per-frame network in a video instance segmentation checkpoint: equal to
# vcm_d2.modeling.vis.DETECTOR_PREFIX (tested), not imported since the VIS model wraps this one.
VIS_DETECTOR_PREFIX = "detector."
RESNET_STAGES = ("res2", "res3", "res4", "res5")
# ResNet depths built with basic blocks (no dilation in detectron2): plain ResNet builder.
BASIC_BLOCK_DEPTHS = (18, 34)


def task_key(name: str) -> str:
    """Module key of a task node name ("SEM_SEG" -> "sem_seg"; parameters ``fst.sem_seg.*``)."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"task names must be letters, digits and '_', got {name!r}")
    return name.lower()


@contextlib.contextmanager
def frozen_statistics_training(module: nn.Module):
    """Run ``module`` in training mode (detectron2 heads only compute losses then) while its
    normalization and dropout layers stay in eval mode, so a frozen network stays frozen."""
    previous = [(m, m.training) for m in module.modules()]
    module.train()
    for m in module.modules():
        if isinstance(m, (_BatchNorm, _DropoutNd)):
            m.eval()
    try:
        yield
    finally:
        for m, mode in previous:
            m.training = mode


class PixelNormalizer(nn.Module):
    """(x - mean) / std per channel, optionally after reversing the channel order."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], flip_channels: bool = False):
        super().__init__()
        if len(mean) != IMAGE_CHANNELS or len(std) != IMAGE_CHANNELS:
            raise ValueError(f"pixel mean/std need {IMAGE_CHANNELS} values, got {list(mean)} "
                             f"and {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), False)
        self.flip_channels = bool(flip_channels)

    def forward(self, images: Tensor) -> Tensor:
        if self.flip_channels:
            images = images.flip(-3)
        return (images - self.mean) / self.std


class TaskTail(nn.Module):
    """Interface of a task tail (see the module docstring). ``output_key`` names the
    prediction in the model's output dict."""

    output_key: str = ""

    def feature_shape(self) -> ShapeSpec:
        """Channels and stride of F^i_t (what the task's FST must output)."""
        raise NotImplementedError

    def target_feature(self, images: Tensor) -> Tensor:
        """F^i_t of images (N x 3 x H x W, INPUT.FORMAT, 0..255, a padded batch)."""
        raise NotImplementedError

    def high_features(self, feature: Tensor) -> Dict[str, Tensor]:
        """High-level outputs of the task backbone from F^i_t (input of the task head)."""
        raise NotImplementedError

    def losses(self, high: Mapping[str, Tensor], frames: Sequence[dict],
               image_sizes: Sequence[Tuple[int, int]]) -> Dict[str, Tensor]:
        """L_task for ``frames`` (mapped dataset dicts with the task's ground truth)."""
        raise NotImplementedError

    def inference(self, high: Mapping[str, Tensor], image_sizes: Sequence[Tuple[int, int]],
                  output_sizes: Sequence[Tuple[int, int]]) -> List[dict]:
        """Per-image outputs ``{output_key: ...}`` at ``output_sizes``."""
        raise NotImplementedError

    def checkpoint_aliases(self) -> Dict[str, str]:
        """{prefix in standard checkpoints: prefix inside this tail} for parameters that a
        non-TransVFC checkpoint stores under other names (default: none)."""
        return {}

    def load_weights(self, path: str, prefixes: Sequence[str] = ()) -> None:
        """Load this tail's network from a checkpoint of the network itself, or from the keys
        under the first of ``prefixes`` found (its part of a TransVFC checkpoint,
        ``tasks.<key>.``, or of a wrapper's). Every parameter must be found: a frozen network
        with random parts would silently ruin the task."""
        checkpointer = _PrefixCheckpointer(self, prefixes)
        checkpointer.load(path, checkpointables=[])
        missing = [k for k in checkpointer.incompatible.missing_keys
                   if "num_batches_tracked" not in k]
        if missing:
            raise ValueError(f"{path} does not hold the network of {type(self).__name__}: "
                             f"{len(missing)} parameters missing, e.g. {missing[:3]}")
        logger.info("Loaded %s from %s", type(self).__name__, path)


# ------------------------------------------------------------------------------ detection
@TRANSVFC_TASK_REGISTRY.register()
class FasterRCNNTail(TaskTail):
    """Object detection with the upstream Faster R-CNN's RPN and box head (MODEL.RPN,
    MODEL.ROI_HEADS, ... of the global config)."""

    output_key = "instances"

    def __init__(self, *, upstream: SplitBackbone, proposal_generator: nn.Module,
                 roi_heads: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        # Shared with the meta-architecture (which owns and registers it): a plain attribute.
        self._upstream = upstream
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.normalizer = PixelNormalizer(pixel_mean, pixel_std)

    @classmethod
    def from_task_config(cls, cfg, node, upstream: SplitBackbone, key: str):
        shape = upstream.output_shape
        return cls(upstream=upstream, proposal_generator=build_proposal_generator(cfg, shape),
                   roi_heads=build_roi_heads(cfg, shape), pixel_mean=cfg.MODEL.PIXEL_MEAN,
                   pixel_std=cfg.MODEL.PIXEL_STD)

    def feature_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._upstream.feature_channels,
                         stride=self._upstream.feature_stride)

    def target_feature(self, images: Tensor) -> Tensor:
        return self._upstream.head(self.normalizer(images))

    def high_features(self, feature: Tensor) -> Dict[str, Tensor]:
        return self._upstream.rest(pad_to_multiple(feature, self._upstream.feature_divisibility))

    @staticmethod
    def _images(high: Mapping[str, Tensor], image_sizes) -> ImageList:
        # detectron2's RPN and ROI heads read only ``image_sizes`` of the ImageList.
        return ImageList(next(iter(high.values())), [tuple(s) for s in image_sizes])

    def losses(self, high, frames, image_sizes):
        if any("instances" not in f for f in frames):
            raise ValueError("detection losses need 'instances' in every frame dict "
                             "(a training mapper with annotations)")
        device = next(iter(high.values())).device
        gt = [f["instances"].to(device) for f in frames]
        images = self._images(high, image_sizes)
        with frozen_statistics_training(self):
            proposals, rpn_losses = self.proposal_generator(images, high, gt)
            _, det_losses = self.roi_heads(images, high, proposals, gt)
        return {**rpn_losses, **det_losses}

    def inference(self, high, image_sizes, output_sizes):
        images = self._images(high, image_sizes)
        proposals, _ = self.proposal_generator(images, high, None)
        results, _ = self.roi_heads(images, high, proposals, None)
        return [{self.output_key: detector_postprocess(r, h, w)}
                for r, (h, w) in zip(results, output_sizes)]

    def checkpoint_aliases(self) -> Dict[str, str]:
        return {"proposal_generator.": "proposal_generator.", "roi_heads.": "roi_heads."}


@TRANSVFC_TASK_REGISTRY.register()
class MaskRCNNTail(FasterRCNNTail):
    """Instance segmentation (the per-frame network of video instance segmentation) with a
    Mask R-CNN of its own, as the paper's CrossVIS is a network apart from the upstream one:
    its stem + res2 make F^i_t; its res3-5 + FPN, RPN, box and mask heads run on the transferred
    feature. Built like the upstream network (the global MODEL.RESNETS / FPN / RPN / ROI_*
    keys) with MASK_ON and the node's NUM_CLASSES; weights from the node's WEIGHTS."""

    def __init__(self, *, backbone: nn.Module, proposal_generator: nn.Module,
                 roi_heads: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        if not getattr(roi_heads, "mask_on", False):
            raise ValueError("MaskRCNNTail needs ROI heads with a mask head")
        super().__init__(upstream=SplitBackbone(backbone), proposal_generator=proposal_generator,
                         roi_heads=roi_heads, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.backbone = backbone  # its own network: registered here, unlike the upstream

    @classmethod
    def from_task_config(cls, cfg, node, upstream: SplitBackbone, key: str):
        sub = cfg.clone()
        sub.defrost()
        sub.MODEL.MASK_ON = True
        if node.NUM_CLASSES > 0:
            sub.MODEL.ROI_HEADS.NUM_CLASSES = node.NUM_CLASSES
        backbone = build_backbone(sub)
        shape = backbone.output_shape()
        tail = cls(backbone=backbone, proposal_generator=build_proposal_generator(sub, shape),
                   roi_heads=build_roi_heads(sub, shape),
                   pixel_mean=node.PIXEL_MEAN or cfg.MODEL.PIXEL_MEAN,
                   pixel_std=node.PIXEL_STD or cfg.MODEL.PIXEL_STD)
        if node.WEIGHTS:  # a Mask R-CNN, a VIS model (detector.*) or a TransVFC checkpoint
            tail.load_weights(node.WEIGHTS, prefixes=(f"tasks.{key}.", VIS_DETECTOR_PREFIX))
        return tail

    def checkpoint_aliases(self) -> Dict[str, str]:
        return {}  # MODEL.WEIGHTS' heads are the upstream detector's, not this network's


# ------------------------------------------------------------------------------ segmentation
def _deeplab_subconfig(node):
    """A detectron2 config for the DeepLab-v3 network of a task node (its own namespace)."""
    try:
        from detectron2.projects.deeplab import add_deeplab_config
    except ImportError as e:  # pragma: no cover - depends on how detectron2 was installed
        raise ImportError(
            "DeepLabV3Tail needs detectron2's DeepLab project (detectron2.projects.deeplab), "
            "which detectron2 installs with its sources; reinstall detectron2 with its projects"
        ) from e
    sub = get_cfg()
    add_deeplab_config(sub)
    sub.MODEL.BACKBONE.FREEZE_AT = 0
    sub.MODEL.RESNETS.OUT_FEATURES = list(RESNET_STAGES)
    sub.MODEL.RESNETS.merge_from_other_cfg(node.RESNETS)
    head = sub.MODEL.SEM_SEG_HEAD
    head.NAME = "DeepLabV3Head"
    head.IN_FEATURES = [RESNET_STAGES[-1]]
    head.NUM_CLASSES = node.NUM_CLASSES
    head.IGNORE_VALUE = node.IGNORE_VALUE
    head.merge_from_other_cfg(node.HEAD)
    # No fixed training crop: the ASPP image pooling is a global average at any size.
    sub.INPUT.CROP.ENABLED = False
    return sub


class _PrefixCheckpointer(DetectionCheckpointer):
    """Loads the keys under the first of ``prefixes`` the checkpoint has (with it stripped),
    else the checkpoint as is; keeps the incompatible keys for the caller."""

    def __init__(self, model: nn.Module, prefixes: Sequence[str]):
        super().__init__(model)
        self.prefixes = [p for p in prefixes if p]
        self.incompatible = None

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        for prefix in self.prefixes:
            if any(k.startswith(prefix) for k in state):
                checkpoint["model"] = {k[len(prefix):]: v for k, v in state.items()
                                       if k.startswith(prefix)}
                break
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


@TRANSVFC_TASK_REGISTRY.register()
class DeepLabV3Tail(TaskTail):
    """Semantic segmentation with a DeepLab-v3 network (module names as in detectron2's
    ``SemanticSegmentor``: ``backbone.*``, ``sem_seg_head.*``)."""

    output_key = "sem_seg"

    def __init__(self, *, backbone: nn.Module, sem_seg_head: nn.Module, ignore_value: int,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 flip_channels: bool = False):
        """
        Args:
            backbone, sem_seg_head: the DeepLab network.
            ignore_value: label ignored by the loss.
            pixel_mean, pixel_std: the network's input normalization.
            flip_channels: reverse the channel order first (network trained on RGB, model input
                BGR or the reverse).
        """
        super().__init__()
        for attr in ("loss", "loss_weight", "common_stride", "in_features"):
            if not hasattr(sem_seg_head, attr):
                raise ValueError(f"sem_seg_head {type(sem_seg_head).__name__} lacks {attr!r} "
                                 "(a DeepLab head is expected)")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.ignore_value = int(ignore_value)
        self.normalizer = PixelNormalizer(pixel_mean, pixel_std, flip_channels)
        self._split = SplitBackbone(backbone)

    @classmethod
    def from_task_config(cls, cfg, node, upstream: SplitBackbone, key: str):
        from detectron2.projects.deeplab import DeepLabV3Head, build_resnet_deeplab_backbone

        sub = _deeplab_subconfig(node)
        image = ShapeSpec(channels=IMAGE_CHANNELS)
        if sub.MODEL.RESNETS.DEPTH in BASIC_BLOCK_DEPTHS:
            backbone = build_resnet_backbone(sub, image)
        else:
            backbone = build_resnet_deeplab_backbone(sub, image)
        shapes = backbone.output_shape()
        in_features = list(sub.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        if len(in_features) != 1 or in_features[0] not in shapes:
            raise ValueError(f"TASK.{key.upper()}.HEAD.IN_FEATURES must name one stage of its "
                             f"ResNet {sorted(shapes)} (RESNETS.OUT_FEATURES), got {in_features}")
        sub.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = shapes[in_features[0]].stride
        input_format = node.FORMAT or cfg.INPUT.FORMAT
        if sorted({input_format, cfg.INPUT.FORMAT}) not in (["BGR"], ["RGB"], ["BGR", "RGB"]):
            raise ValueError(f"TASK.{key.upper()}.FORMAT / INPUT.FORMAT must be RGB or BGR, got "
                             f"{input_format!r} / {cfg.INPUT.FORMAT!r}")
        tail = cls(backbone=backbone, sem_seg_head=DeepLabV3Head(sub, shapes),
                   ignore_value=node.IGNORE_VALUE,
                   pixel_mean=node.PIXEL_MEAN or cfg.MODEL.PIXEL_MEAN,
                   pixel_std=node.PIXEL_STD or cfg.MODEL.PIXEL_STD,
                   flip_channels=input_format != cfg.INPUT.FORMAT)
        if node.WEIGHTS:
            tail.load_weights(node.WEIGHTS, prefixes=(f"tasks.{key}.",))
        return tail

    def feature_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._split.feature_channels, stride=self._split.feature_stride)

    def target_feature(self, images: Tensor) -> Tensor:
        return self._split.head(self.normalizer(images))

    def high_features(self, feature: Tensor) -> Dict[str, Tensor]:
        feature = pad_to_multiple(feature, self._split.feature_divisibility)
        stages = self._split.resnet_stages(feature)
        return {k: v for k, v in stages.items() if k != SPLIT_FEATURE}

    def _logits(self, high) -> Tensor:
        """Class logits upsampled to the padded image (head in eval mode)."""
        logits, _ = self.sem_seg_head(high)
        return logits

    def _targets(self, frames, size) -> Tensor:
        if any("sem_seg" not in f for f in frames):
            raise ValueError("segmentation losses need 'sem_seg' in every frame dict")
        out = []
        for f in frames:
            t = f["sem_seg"][: size[0], : size[1]]
            pad = (0, size[1] - t.shape[1], 0, size[0] - t.shape[0])
            out.append(F.pad(t, pad, value=self.ignore_value))
        return torch.stack(out)

    def losses(self, high, frames, image_sizes):
        res5 = high[self.sem_seg_head.in_features[0]]
        stride = self.sem_seg_head.common_stride
        size = (res5.shape[-2] * stride, res5.shape[-1] * stride)
        targets = self._targets(frames, size).to(res5.device)
        if self.sem_seg_head.training:  # training the task network itself ("task" stage)
            _, losses = self.sem_seg_head(high, targets)
            return losses
        loss = self.sem_seg_head.loss(self._logits(high), targets)
        return {"loss_sem_seg": loss * self.sem_seg_head.loss_weight}

    def inference(self, high, image_sizes, output_sizes):
        logits = self._logits(high)
        return [{self.output_key: sem_seg_postprocess(x, tuple(s), h, w)}
                for x, s, (h, w) in zip(logits, image_sizes, output_sizes)]


def build_task_tail(cfg, name: str, upstream: SplitBackbone) -> TaskTail:
    """The tail of task node ``cfg.MODEL.VCM.TRANSVFC.TASK.<name>``."""
    nodes = cfg.MODEL.VCM.TRANSVFC.TASK
    if name not in nodes:
        raise ValueError(f"MODEL.VCM.TRANSVFC.TASKS lists {name!r} but MODEL.VCM.TRANSVFC.TASK "
                         f"has no such node (known: {sorted(nodes)})")
    node = nodes[name]
    if "TAIL" not in node:
        raise ValueError(f"MODEL.VCM.TRANSVFC.TASK.{name} needs a TAIL (one of "
                         f"{sorted(k for k, _ in TRANSVFC_TASK_REGISTRY)})")
    tail = TRANSVFC_TASK_REGISTRY.get(node.TAIL).from_task_config(cfg, node, upstream,
                                                                  task_key(name))
    if not isinstance(tail, TaskTail) or not tail.output_key:
        raise ValueError(f"{node.TAIL} must build a TaskTail with an output_key")
    return tail
