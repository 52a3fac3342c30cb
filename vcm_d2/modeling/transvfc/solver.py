"""Learning-rate schedule of TransVFC's stage 1 (codec training, paper Table 1).

Table 1 changes the learning rate per stage (1e-4, 1e-4, 1e-4, 5e-5, 1e-5) at the stage ends
``MODEL.VCM.TRANSVFC.STAGE_ENDS``; detectron2's multi-step schedule has a single GAMMA and
cannot express it. The stage learning rates are applied relative to SOLVER.BASE_LR (stage s
runs at ``BASE_LR * lr_s / lr_1``), so a config that scales BASE_LR keeps Table 1's ratios;
detectron2's warmup (SOLVER.WARMUP_*) applies on top.

Stage-1 configs select it with ``SOLVER.LR_SCHEDULER_NAME: "TransVFCCodecStages"``
(``vcm_d2.solver.LR_SCHEDULER_REGISTRY``).
"""
import logging
from typing import Sequence

from detectron2.config import configurable
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ...solver import LR_SCHEDULER_REGISTRY
from .losses import CODEC_STAGES

__all__ = ["TransVFCCodecStages"]

logger = logging.getLogger(__name__)


@LR_SCHEDULER_REGISTRY.register()
class TransVFCCodecStages(LRMultiplier):
    """Table 1 learning rates (module docstring) after detectron2's warmup."""

    @configurable
    def __init__(self, optimizer, *, stage_ends: Sequence[int], max_iter: int,
                 warmup_factor: float, warmup_iters: int, warmup_method: str,
                 rescale_interval: bool):
        """
        Args:
            optimizer: its param groups' learning rates are the stage-1 rates.
            stage_ends: Table 1 stage boundaries (iterations, MODEL.VCM.TRANSVFC.STAGE_ENDS).
            max_iter, warmup_*, rescale_interval: SOLVER.MAX_ITER / WARMUP_* /
                RESCALE_INTERVAL, as detectron2's schedulers use them.
        """
        ends = [int(e) for e in stage_ends]
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
        sched = WarmupParamScheduler(sched, warmup_factor, min(warmup_iters / max_iter, 1.0),
                                     warmup_method, rescale_interval)
        super().__init__(optimizer, multiplier=sched, max_iter=max_iter)

    @classmethod
    def from_config(cls, cfg, optimizer):
        return {
            "optimizer": optimizer,
            "stage_ends": cfg.MODEL.VCM.TRANSVFC.STAGE_ENDS,
            "max_iter": cfg.SOLVER.MAX_ITER,
            "warmup_factor": cfg.SOLVER.WARMUP_FACTOR,
            "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
            "warmup_method": cfg.SOLVER.WARMUP_METHOD,
            "rescale_interval": cfg.SOLVER.RESCALE_INTERVAL,
        }

