"""Losses of TransVFC (Sec. 3.4) and the codec's 5-stage training schedule (Table 1).

Codec (eq. 5-6):
    L_codec = lambda_R (R_r + R_m + R_i) + lambda_f D_f + lambda_c D_c + lambda_p D_p
    D_p     = 1/N sum_j MSE(PN_j(F_t), PN_j(F^_t)),  j over the N = 5 levels p2..p6
Rates are in bits per image pixel (averaged over the frames of the GOP, i.e. the sequence
bpp). Deviation from eq. (5): the I-frame rate R_i is included, because this project codes
and counts I-frames (the paper passes them uncoded).

FST (eq. 7-8):
    L_FST = lambda_task L_task + lambda_x D_x + lambda_mid D_mid + lambda_high D_high
    D_high = 1/N sum_j MSE(TASK_j(F^i_t), TASK_j(F^^i_t))

Both loss functions return ``(losses, stats)``: ``losses`` holds only weighted terms whose keys
start with ``loss_`` (sum them, as detectron2 does), ``stats`` detached unweighted values.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .codec import LIKELIHOOD_KEYS, PERCEPTION_LEVELS
from .layers import crop_to, pad_to_multiple

__all__ = [
    "CodecLossWeights",
    "FSTLossWeights",
    "FST_TABLE2_WEIGHTS",
    "TrainingStage",
    "CODEC_STAGES",
    "stage_for_iter",
    "latent_bpp",
    "codec_loss",
    "fst_loss",
]


# ---------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class TrainingStage:
    """One row of Table 1.

    Attributes:
        index: stage number (1-based, as in the paper).
        rate_scale: factor on lambda_R (1/2 in stages 1-2).
        rate_latents: latents whose rate is in the loss: ("y",) or ("y", "z").
        base_lr: learning rate of the stage.
        frozen_modules: codec submodules frozen in the stage (Table 1 freezes none; kept as
            data so a schedule that does can be expressed the same way).
    """

    index: int
    rate_scale: float
    rate_latents: Tuple[str, ...]
    base_lr: float
    frozen_modules: Tuple[str, ...] = ()


# All loss terms (rate, D_f, D_c, D_p) are active in every stage of Table 1.
CODEC_STAGES: Tuple[TrainingStage, ...] = (
    TrainingStage(1, 0.5, ("y",), 1e-4),
    TrainingStage(2, 0.5, ("y", "z"), 1e-4),
    TrainingStage(3, 1.0, ("y", "z"), 1e-4),
    TrainingStage(4, 1.0, ("y", "z"), 5e-5),
    TrainingStage(5, 1.0, ("y", "z"), 1e-5),
)


def stage_for_iter(iteration: int, stage_ends: Sequence[int],
                   stages: Sequence[TrainingStage] = CODEC_STAGES) -> TrainingStage:
    """Stage active at ``iteration`` (0-based); ``stage_ends[i]`` is the first iteration after
    stage i (cfg ``STAGE_ENDS``). Iterations past the last end stay in the last stage."""
    ends = [int(e) for e in stage_ends]
    if len(ends) != len(stages):
        raise ValueError(f"need {len(stages)} stage ends, got {len(ends)}: {ends}")
    if any(b <= a for a, b in zip([0] + ends, ends)):
        raise ValueError(f"stage ends must be positive and strictly increasing: {ends}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    for stage, end in zip(stages, ends):
        if iteration < end:
            return stage
    return stages[-1]


# ---------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class CodecLossWeights:
    lambda_r: float
    lambda_f: float
    lambda_c: float
    lambda_p: float
    use_perception_loss: bool = True

    @classmethod
    def from_config(cls, cfg) -> "CodecLossWeights":
        T = cfg.MODEL.VCM.TRANSVFC
        return cls(lambda_r=T.LAMBDA_R, lambda_f=T.LAMBDA_F,
                   lambda_c=T.LAMBDA_C_RATIO * T.LAMBDA_F, lambda_p=T.LAMBDA_P,
                   use_perception_loss=T.USE_PERCEPTION_LOSS)


@dataclass(frozen=True)
class FSTLossWeights:
    lambda_task: float
    lambda_x: float
    lambda_mid: float
    lambda_high: float

    @classmethod
    def from_config(cls, cfg) -> "FSTLossWeights":
        T = cfg.MODEL.VCM.TRANSVFC.FST
        return cls(lambda_task=T.LAMBDA_TASK, lambda_x=T.LAMBDA_X, lambda_mid=T.LAMBDA_MID,
                   lambda_high=T.LAMBDA_HIGH)


# Table 2 of the paper.
FST_TABLE2_WEIGHTS: Dict[str, FSTLossWeights] = {
    "object_detection": FSTLossWeights(lambda_task=10, lambda_x=1024, lambda_mid=16,
                                       lambda_high=4),
    "instance_segmentation": FSTLossWeights(lambda_task=1, lambda_x=1024, lambda_mid=8,
                                            lambda_high=64),
    "semantic_segmentation": FSTLossWeights(lambda_task=10, lambda_x=1024, lambda_mid=16,
                                            lambda_high=64),
}


# ---------------------------------------------------------------------------- codec loss
def latent_bpp(output: Mapping) -> Dict[str, Tensor]:
    """Bits per image pixel of each latent (``LIKELIHOOD_KEYS``), averaged over the frames of
    ``output`` (a ``TransVFCCodec.forward`` result) and the batch."""
    num_frames = len(output["f_hat"])
    batch = output["f_hat"][0].shape[0]
    denom = num_frames * batch * output["num_pixels"]
    ref = output["f_hat"][0]
    out = {}
    for key in LIKELIHOOD_KEYS:
        liks = output["likelihoods"][key]
        bits = sum((torch.log(lik).sum() for lik in liks), ref.new_zeros(()))
        out[key] = bits / (-math.log(2) * denom)
    return out


def _pyramid_mse(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum(F.mse_loss(a[k], b[k]) for k in PERCEPTION_LEVELS) / len(PERCEPTION_LEVELS)


def codec_loss(output: Mapping, targets: Sequence[Tensor], weights: CodecLossWeights, *,
               perception: Optional[Callable[[Tensor], Mapping[str, Tensor]]] = None,
               stage: Optional[TrainingStage] = None,
               pad_multiple: int = 1) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Eq. (5)-(6) with the stage's rate terms (Table 1; default: the last stage).

    Args:
        output: ``TransVFCCodec.forward`` result for the GOP.
        targets: the original res2 features F_t (same list/shapes as the codec input).
        perception: the frozen perception network, needed when D_p is on (lambda_p > 0 and
            ``use_perception_loss``). Its target pass runs without gradient.
        pad_multiple: features are replicate-padded to this multiple before ``perception``
            (pass ``codec.pad_multiple``: a detectron2 FPN needs a size divisible by its
            strides).
    """
    if len(targets) != len(output["f_hat"]):
        raise ValueError(f"{len(targets)} targets for {len(output['f_hat'])} coded frames")
    stage = CODEC_STAGES[-1] if stage is None else stage
    bpp = latent_bpp(output)
    rate = sum(v for k, v in bpp.items() if k.split("_")[1] in stage.rate_latents)
    d_f = sum(F.mse_loss(x, t) for x, t in zip(output["f_hat"], targets)) / len(targets)
    comp = [(c, t) for c, t in zip(output["compensated"], targets) if c is not None]
    d_c = (sum(F.mse_loss(c, t) for c, t in comp) / len(comp)) if comp else d_f.new_zeros(())
    losses = {
        "loss_rate": weights.lambda_r * stage.rate_scale * rate,
        "loss_feature": weights.lambda_f * d_f,
        "loss_compensation": weights.lambda_c * d_c,
    }
    stats = {"bpp": sum(bpp.values()).detach(), "d_f": d_f.detach(), "d_c": d_c.detach()}
    stats.update({f"bpp_{k}": v.detach() for k, v in bpp.items()})
    if weights.use_perception_loss and weights.lambda_p > 0:
        if perception is None:
            raise ValueError("the perception loss D_p needs the perception callable")
        d_p = 0.0
        for x, t in zip(output["f_hat"], targets):
            with torch.no_grad():
                target_pyr = perception(pad_to_multiple(t, pad_multiple))
            d_p = d_p + _pyramid_mse(perception(pad_to_multiple(x, pad_multiple)), target_pyr)
        d_p = d_p / len(targets)
        losses["loss_perception"] = weights.lambda_p * d_p
        stats["d_p"] = d_p.detach()
    return losses, stats


# ---------------------------------------------------------------------------- FST loss
HighFeatures = Union[Mapping[str, Tensor], Sequence[Tensor]]


def _as_list(x: HighFeatures):
    return [x[k] for k in sorted(x)] if isinstance(x, Mapping) else list(x)


def fst_loss(weights: FSTLossWeights, *, task_loss: Tensor, feature_hat: Tensor,
             feature: Tensor, high_hat: HighFeatures, high: HighFeatures,
             image_hat: Optional[Tensor] = None,
             image: Optional[Tensor] = None) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Eq. (7)-(8).

    Args:
        task_loss: L_task of the frozen downstream network run on the transferred feature.
        feature_hat / feature: transferred F^^i_t and original F^i_t task features (D_mid).
        high_hat / high: the task backbone's high-level outputs on them (D_high); dicts are
            matched by key, sequences by position.
        image_hat / image: the FST's coarse image and the original frame in the same units
            (D_x); ``image_hat`` is cropped to ``image``'s size. Omitted when the up-then-down
            branch is disabled.
    """
    d_mid = F.mse_loss(feature_hat, feature)
    hh, h = _as_list(high_hat), _as_list(high)
    if isinstance(high_hat, Mapping) and isinstance(high, Mapping) and set(high_hat) != set(high):
        raise ValueError(f"high-level feature keys differ: {sorted(high_hat)} vs {sorted(high)}")
    if len(hh) != len(h) or not h:
        raise ValueError(f"need matching non-empty high-level features, got {len(hh)} and {len(h)}")
    d_high = sum(F.mse_loss(a, b) for a, b in zip(hh, h)) / len(h)
    losses = {
        "loss_task": weights.lambda_task * task_loss,
        "loss_mid": weights.lambda_mid * d_mid,
        "loss_high": weights.lambda_high * d_high,
    }
    stats = {"d_mid": d_mid.detach(), "d_high": d_high.detach(),
             "task": task_loss.detach()}
    if (image_hat is None) != (image is None):
        raise ValueError("give both image_hat and image for D_x, or neither")
    if image_hat is not None:
        if image_hat.shape[:2] != image.shape[:2] or any(
                a < b for a, b in zip(image_hat.shape[-2:], image.shape[-2:])):
            raise ValueError(f"coarse image {tuple(image_hat.shape)} cannot be cropped to "
                             f"the frame {tuple(image.shape)}")
        d_x = F.mse_loss(crop_to(image_hat, image.shape[-2:]), image)
        losses["loss_image"] = weights.lambda_x * d_x
        stats["d_x"] = d_x.detach()
    return losses, stats
