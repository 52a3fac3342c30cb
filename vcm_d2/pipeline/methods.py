"""Configs of a rate-task run: which config file trains which method, and the overrides that
start every method from the same clean model with the same schedule.

The config folder is always an argument (``configs/synthetic`` of this repository for the demo,
``configs/CDRE`` for real data, or a user's own), never a path computed here.
"""
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .run import model_cfg

__all__ = [
    "ANCHOR_METHOD", "LR_DROP_FRACTION", "METHOD_TABLES", "MethodTable", "SYNTHETIC_DETECTION",
    "SYNTHETIC_SWIN", "SYNTHETIC_VIS", "scale_schedule",
]

# The method every other one is compared with: the clean model on decoded frames (Table I row 1).
ANCHOR_METHOD = "direct"
# Fine-tunes drop their lr 10x after this fraction of the iterations (as the configs do).
LR_DROP_FRACTION = 0.75


def scale_schedule(cfg, iters: int, checkpoint_at_end: bool = True) -> None:
    """Run ``cfg`` for ``iters`` iterations with its SOLVER.STEPS at the same fractions
    (``checkpoint_at_end``: one checkpoint, at the end; else the config's period is kept)."""
    steps = {int(s * iters / cfg.SOLVER.MAX_ITER) for s in cfg.SOLVER.STEPS}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < iters))
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, iters // 2)
    if checkpoint_at_end:
        cfg.SOLVER.CHECKPOINT_PERIOD = iters


@dataclass(frozen=True)
class MethodTable:
    """The config file of the clean model and of each trained method (Table I rows), relative to
    a config folder given at use."""

    clean: str
    methods: Mapping[str, str] = field(default_factory=dict)

    def with_overrides(self, clean: str = None, methods: Mapping[str, str] = ()) -> "MethodTable":
        """This table with another clean config and/or some methods' configs replaced or added."""
        return MethodTable(clean or self.clean, {**self.methods, **dict(methods)})

    def clean_cfg(self, config_dir: str, output_dir: str, extra: Sequence = (), iters: int = 0):
        """Config of the clean model; ``iters`` > 0: trained that long with the config's LR
        steps at the same fractions of it (a longer run keeps its schedule's shape; issue 9's
        clean seed spread was measured so)."""
        cfg = model_cfg(os.path.join(config_dir, self.clean), output_dir, extra)
        if iters > 0:
            scale_schedule(cfg, int(iters), checkpoint_at_end=False)
        return cfg

    def method_cfg(self, method: str, config_dir: str, output_dir: str, *, iters: int,
                   weights: str, train_sets: Sequence[str], extra: Sequence = ()):
        """Config of ``method`` fine-tuned from ``weights`` for ``iters`` iterations on
        ``train_sets`` (lr drop at ``LR_DROP_FRACTION``)."""
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; known: {sorted(self.methods)}")
        if iters <= 0:
            raise ValueError(f"{method}: iterations must be > 0, got {iters}")
        if not train_sets:
            raise ValueError(f"{method}: no training sets")
        return model_cfg(os.path.join(config_dir, self.methods[method]), output_dir, [
            "SOLVER.MAX_ITER", int(iters),
            "SOLVER.STEPS", (max(1, int(iters * LR_DROP_FRACTION)),),
            "MODEL.WEIGHTS", weights,
            "DATASETS.TRAIN", tuple(train_sets),
        ] + list(extra))


# The slim detection models of configs/synthetic (the demo's and CDRE Table I's rows; "restore":
# the restoration network in front of the frozen clean detector, the papers' competitors).
SYNTHETIC_DETECTION = MethodTable(
    clean="faster_rcnn_R18_slim.yaml",
    methods={
        "head_ft": "faster_rcnn_R18_slim_head_finetune.yaml",
        "full_ft": "faster_rcnn_R18_slim_finetune.yaml",
        "restore": "restore_faster_rcnn_R18_slim.yaml",
        "ours_fd": "cdre_faster_rcnn_R18_slim_ours_fd.yaml",
        "ours": "cdre_faster_rcnn_R18_slim_ours.yaml",
        "ours_gated": "cdre_faster_rcnn_R18_slim_ours_gated.yaml",
    })
# The slim video instance segmentation models of configs/synthetic (the VIS benchmark's rows).
SYNTHETIC_VIS = MethodTable(
    clean="vis_mask_rcnn_R18_slim.yaml",
    methods={
        "full_ft": "vis_mask_rcnn_R18_slim_finetune.yaml",
        "ours": "vis_cdre_mask_rcnn_R18_slim_ours.yaml",
        "ours_fd": "vis_cdre_mask_rcnn_R18_slim_ours_fd.yaml",
    })
# CDRE's Transformer version (eq. 7) in a tiny Swin Mask R-CNN of configs/synthetic: its own
# clean model (the R18 detector's weights do not fit a Swin).
SYNTHETIC_SWIN = MethodTable(
    clean="cdre_mask_rcnn_swin_tiny_slim_direct.yaml",
    methods={"ours": "cdre_mask_rcnn_swin_tiny_slim_ours.yaml"})
# Faster R-CNN R50-FPN in the modes of CDRE Table I (configs/CDRE, real data, e.g. COCO).
CDRE_FASTER_RCNN_R50_FPN = MethodTable(
    clean="faster_rcnn_R_50_FPN_direct.yaml",
    methods={m: f"faster_rcnn_R_50_FPN_{m}.yaml"
             for m in ("head_ft", "full_ft", "restore", "ours_fd", "ours", "ours_gated")})
# Mask R-CNN Swin-T in the modes of CDRE Table I (configs/CDRE, real data).
CDRE_MASK_RCNN_SWIN_T_FPN = MethodTable(
    clean="mask_rcnn_swin_T_FPN_direct.yaml",
    methods={m: f"mask_rcnn_swin_T_FPN_{m}.yaml" for m in ("full_ft", "ours_fd", "ours")})
# The tables by name (tools/rate_task.py --methods-table).
METHOD_TABLES = {"synthetic_detection": SYNTHETIC_DETECTION, "synthetic_vis": SYNTHETIC_VIS,
                 "synthetic_swin": SYNTHETIC_SWIN,
                 "cdre_faster_rcnn_R50_FPN": CDRE_FASTER_RCNN_R50_FPN,
                 "cdre_mask_rcnn_swin_T_FPN": CDRE_MASK_RCNN_SWIN_T_FPN}
