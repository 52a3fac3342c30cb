"""Freezing, per-module learning rates, the optimizer choice and the learning-rate schedule
by name of VCMTrainer."""
import os

import pytest
import torch
from detectron2.solver import build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ConstantParamScheduler

from vcm_d2.engine import VCMTrainer, build_vcm_optimizer, freeze_parameters
from vcm_d2.engine.trainer import lr_factor_func, train_only
from vcm_d2.solver import LR_SCHEDULER_REGISTRY

from config_helpers import load_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIM = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml")


def _cfg(*opts):
    return load_cfg(SLIM, *opts)


def test_freeze_backbone_only():
    model = VCMTrainer.build_model(_cfg("MODEL.VCM.FREEZE", ["backbone"]))
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith("backbone.")), name


def test_trainable_freezes_everything_else():
    model = VCMTrainer.build_model(_cfg("MODEL.VCM.TRAINABLE", ["roi_heads.box_predictor"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("roi_heads.box_predictor.") for n in trainable)
    with pytest.raises(ValueError, match="TRAINABLE prefixes match no parameter"):
        train_only(torch.nn.Linear(2, 2), ["nothing"])


def test_freeze_unknown_prefix_raises():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="match no parameter"):
        freeze_parameters(model, ["backbon"])
    # "0" must not match a hypothetical "01" module: prefixes end at a dot
    assert freeze_parameters(model, ["0"]) == 2


def test_lr_multipliers_and_adamw():
    cfg = _cfg("MODEL.VCM.LR_MULTIPLIERS", [["backbone.bottom_up", 0.1]],
               "VCM.SOLVER.OPTIMIZER", "ADAMW", "SOLVER.BASE_LR", 0.01)
    model = VCMTrainer.build_model(cfg)
    opt = build_vcm_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    for name, p in model.named_parameters():
        expected = 0.001 if name.startswith("backbone.bottom_up.") else 0.01
        if name.endswith(".bias") and cfg.SOLVER.BIAS_LR_FACTOR != 1.0:
            expected *= cfg.SOLVER.BIAS_LR_FACTOR
        assert lr_of[id(p)] == pytest.approx(expected), name


def test_frozen_params_not_in_optimizer():
    cfg = _cfg("MODEL.VCM.FREEZE", ["backbone"], "VCM.SOLVER.OPTIMIZER", "SGD")
    model = VCMTrainer.build_model(cfg)
    opt = build_vcm_optimizer(cfg, model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert isinstance(opt, torch.optim.SGD)
    for name, p in model.named_parameters():
        assert (id(p) in in_opt) == p.requires_grad, name


def test_bad_optimizer_name():
    cfg = _cfg("VCM.SOLVER.OPTIMIZER", "LBFGS")
    with pytest.raises(ValueError, match="SGD or ADAMW"):
        build_vcm_optimizer(cfg, VCMTrainer.build_model(cfg))


def test_lr_factor_first_match_wins():
    f = lr_factor_func([["a.b", 0.5], ["a", 2.0]])
    assert f("a.b.weight") == 0.5 and f("a.c") == 2.0 and f("ab.c") == 1.0


def _lrs(cfg, build=VCMTrainer.build_lr_scheduler, iters=6):
    """Learning rate of each of the first ``iters`` iterations."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build(cfg, optimizer)
    lrs = []
    for _ in range(iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_scheduler_by_name():
    def _HalfLR(cfg, optimizer):
        return LRMultiplier(optimizer, ConstantParamScheduler(0.5), cfg.SOLVER.MAX_ITER)

    LR_SCHEDULER_REGISTRY.register(_HalfLR)
    try:  # a registered name is built from the registry ...
        cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "_HalfLR", "SOLVER.BASE_LR", 0.01)
        assert _lrs(cfg) == [pytest.approx(0.005)] * 6
    finally:
        LR_SCHEDULER_REGISTRY._obj_map.pop("_HalfLR")
    # ... detectron2's names by detectron2, as before ...
    assert "TransVFCCodecStages" in LR_SCHEDULER_REGISTRY  # (registered by vcm_d2.modeling)
    for name in ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR"):
        cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.MAX_ITER", 8, "SOLVER.STEPS", (3,),
                   "SOLVER.WARMUP_ITERS", 2)
        assert _lrs(cfg) == _lrs(cfg, build_lr_scheduler), name
        assert len(set(_lrs(cfg))) > 1, name
    # ... and a name nobody knows fails as detectron2 fails.
    with pytest.raises(ValueError, match="Unknown LR scheduler"):
        _lrs(_cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLr"))
