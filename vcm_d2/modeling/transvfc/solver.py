"""Learning-rate schedule of TransVFC's stage 1 (codec training, paper Table 1).

Table 1 changes the learning rate per stage (1e-4, 1e-4, 1e-4, 5e-5, 1e-5) at the stage ends
``MODEL.VCM.TRANSVFC.STAGE_ENDS``; detectron2's multi-step schedule has a single GAMMA and
cannot express it. The stage learning rates are applied relative to SOLVER.BASE_LR (stage s
runs at ``BASE_LR * lr_s / lr_1``), so a config that scales BASE_LR keeps Table 1's ratios;
detectron2's warmup (SOLVER.WARMUP_*) applies on top.
"""
import logging

from detectron2.solver import build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .losses import CODEC_STAGES

__all__ = ["build_transvfc_lr_scheduler", "uses_codec_schedule"]

logger = logging.getLogger(__name__)

META_ARCHITECTURE = "TransVFC"


def uses_codec_schedule(cfg) -> bool:
    return (cfg.MODEL.META_ARCHITECTURE == META_ARCHITECTURE
            and cfg.MODEL.VCM.TRANSVFC.TRAIN_STAGE == "codec")


def build_transvfc_lr_scheduler(cfg, optimizer):
    """Table 1 schedule for a TransVFC stage-1 config; detectron2's scheduler otherwise."""
    if not uses_codec_schedule(cfg):
        return build_lr_scheduler(cfg, optimizer)
    ends = [int(e) for e in cfg.MODEL.VCM.TRANSVFC.STAGE_ENDS]
    max_iter = cfg.SOLVER.MAX_ITER
    if len(ends) != len(CODEC_STAGES) or any(b <= a for a, b in zip([0] + ends, ends)):
        raise ValueError(f"STAGE_ENDS must hold {len(CODEC_STAGES)} increasing iterations, "
                         f"got {ends}")
    # Like detectron2 with SOLVER.STEPS: stages starting at or after MAX_ITER are not reached.
    milestones = [e for e in ends[:-1] if e < max_iter]
    if len(milestones) < len(ends) - 1:
        logger.warning("SOLVER.MAX_ITER=%d ends before Table 1 stage %d (STAGE_ENDS %s)",
                       max_iter, len(milestones) + 2, ends)
    first = CODEC_STAGES[0].base_lr
    values = [s.base_lr / first for s in CODEC_STAGES[:len(milestones) + 1]]
    sched = MultiStepParamScheduler(values=values, milestones=milestones, num_updates=max_iter)
    sched = WarmupParamScheduler(sched, cfg.SOLVER.WARMUP_FACTOR,
                                 min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
                                 cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.RESCALE_INTERVAL)
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)
