"""Freezing, per-module learning rates and the optimizer choice of VCMTrainer."""
import os

import pytest
import torch

from vcm_d2.engine import VCMTrainer, build_vcm_optimizer, freeze_parameters, get_vcm_cfg
from vcm_d2.engine.trainer import lr_factor_func, train_only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIM = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml")


def _cfg(*opts):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(SLIM)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


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
