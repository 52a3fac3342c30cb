"""The "restore, then analyse" baseline (vcm_d2.modeling.restoration): R is the identity at init,
a clean detector checkpoint loads with only R missing, training moves R only and lowers its
loss. tests/test_configs.py and tests/test_config_runs.py build and train its configs."""
import os
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vcm_d2.engine import VCMTrainer
from vcm_d2.modeling.restoration import (
    RESTORATION_PREFIX,
    ArtifactRemovalCNN,
    restoration_loss,
)
from vcm_d2.pipeline.methods import CDRE_FASTER_RCNN_R50_FPN, SYNTHETIC_DETECTION

from config_helpers import load_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC, CDRE = os.path.join(REPO, "configs", "synthetic"), os.path.join(REPO, "configs", "CDRE")


def _clean_and_restore_paths(table, folder):
    return os.path.join(folder, table.clean), os.path.join(folder, table.methods["restore"])


# (clean detector, the same detector with R in front) per method table.
PAIRS = {"R18_slim": _clean_and_restore_paths(SYNTHETIC_DETECTION, SYNTHETIC),
         "R50_FPN": _clean_and_restore_paths(CDRE_FASTER_RCNN_R50_FPN, CDRE)}
SIZES = [(96, 128), (97, 131)]  # one multiple of 32 and one odd size


def _is_restoration(name):
    return name.startswith(RESTORATION_PREFIX + ".")


def _inputs(sizes=SIZES, seed=0, noise=25.0, instances=True):
    """Decoded-like "image" (original + noise, uint8) with its smooth "original" and two boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        coarse = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g) * 255
        orig = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        img = (orig + noise * torch.randn(3, h, w, generator=g)).clamp(0, 255).round().to(torch.uint8)
        d = {"image": img, "original": orig.round().to(torch.uint8), "height": h, "width": w}
        if instances:
            d["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor([[8.0, 10.0, 60.0, 70.0],
                                                                            [40.0, 30.0, 90.0, 85.0]])),
                                       gt_classes=torch.tensor([0, 1]))
        out.append(d)
    return out


def _clean_and_restore(*opts):
    """(slim clean detector, RestoreThenDetect with its weights), both in eval mode."""
    torch.manual_seed(0)
    clean_path, restore_path = PAIRS["R18_slim"]
    clean = VCMTrainer.build_model(load_cfg(clean_path)).eval()
    model = VCMTrainer.build_model(load_cfg(restore_path, *opts)).eval()
    missing, unexpected = model.load_state_dict(clean.state_dict(), strict=False)
    assert not unexpected and missing and all(_is_restoration(k) for k in missing)
    return clean, model


# ---------------------------------------------------------------------------- the network
def test_network_is_identity_at_init_and_clamps_in_eval():
    net = ArtifactRemovalCNN(width=8, depth=3)
    x = torch.rand(2, 3, 17, 23) * 255
    with torch.no_grad():
        assert torch.equal(net.eval()(x), x)
        net.body[-1].bias.fill_(300.0)  # far outside the pixel range
        assert net.eval()(x).max() == 255.0 and net.train()(x).min() > 255.0
    assert sum(p.numel() for p in ArtifactRemovalCNN(width=8, depth=3).parameters()) == (
        3 * 8 * 9 + 8 + 8 * 8 * 9 + 8 + 8 * 3 * 9 + 3)
    with pytest.raises(ValueError, match="depth >= 2"):
        ArtifactRemovalCNN(width=8, depth=1)
    with pytest.raises(ValueError, match="L1"):
        restoration_loss(x, x, "SSIM")
    assert restoration_loss(x, x + 51.0, "L1").item() == pytest.approx(0.2)
    assert restoration_loss(x, x + 51.0, "MSE").item() == pytest.approx(0.04)


def test_config_and_method_tables(tmp_path):
    cfg = SYNTHETIC_DETECTION.method_cfg("restore", SYNTHETIC, str(tmp_path), iters=10, weights="clean.pth",
                                         train_sets=["a@x264_q17"])
    assert cfg.MODEL.META_ARCHITECTURE == "RestoreThenDetect" and cfg.VCM.PAIRS.LOAD_ORIGINAL
    assert list(cfg.MODEL.VCM.TRAINABLE) == [RESTORATION_PREFIX]
    real = load_cfg(PAIRS["R50_FPN"][1])
    assert (real.MODEL.VCM.RESTORATION.WIDTH, real.MODEL.VCM.RESTORATION.DEPTH) == (64, 8)  # the defaults
    assert real.MODEL.VCM.RESTORATION.TASK_LOSS_WEIGHT == 0.0
    with pytest.raises(ValueError, match="LOSS must be one of"):
        VCMTrainer.build_model(load_cfg(PAIRS["R18_slim"][1], "MODEL.VCM.RESTORATION.LOSS", "SSIM"))
    with pytest.raises(ValueError, match="not both 0"):
        VCMTrainer.build_model(load_cfg(PAIRS["R18_slim"][1], "MODEL.VCM.RESTORATION.LOSS_WEIGHT", 0.0))


# ---------------------------------------------------------------------------- checkpoints / identity
@pytest.mark.parametrize("version", sorted(PAIRS))
def test_clean_checkpoint_loads_with_only_restoration_missing(version, tmp_path):
    torch.manual_seed(0)
    clean = VCMTrainer.build_model(load_cfg(PAIRS[version][0]))
    model = VCMTrainer.build_model(load_cfg(PAIRS[version][1]))
    clean_sd, model_sd = clean.state_dict(), model.state_dict()
    assert not set(clean_sd) - set(model_sd)  # every detector parameter keeps its name
    new = set(model_sd) - set(clean_sd)
    assert new and all(_is_restoration(k) for k in new)
    before = {k: model_sd[k].clone() for k in new}
    pkl = tmp_path / "model_zoo.pkl"  # a detectron2 model-zoo pickle (matching heuristics on)
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in clean_sd.items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    torch.save({"model": clean_sd}, tmp_path / "clean.pth")
    for path in (pkl, tmp_path / "clean.pth"):
        DetectionCheckpointer(model).load(str(path))
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in clean_sd.items())
        assert all(torch.equal(loaded[k], v) for k, v in before.items())  # R untouched
    # the detector is frozen, R trains
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if _is_restoration(n)}


def test_identity_at_init_gives_the_clean_detections():
    clean, model = _clean_and_restore()
    inputs = _inputs(instances=False)
    with torch.no_grad():
        out_clean = clean([{k: v for k, v in d.items() if k != "original"} for d in inputs])
        out_model = model([{k: v for k, v in d.items() if k != "original"} for d in inputs])
        a, b = clean.preprocess_image(inputs), model.preprocess_image(inputs)
    assert torch.equal(a.tensor, b.tensor) and a.image_sizes == b.image_sizes
    for x, y in zip(out_clean, out_model):
        ia, ib = x["instances"], y["instances"]
        assert len(ia) > 0 and set(x) == set(y) == {"instances"}  # no side stream
        assert torch.equal(ia.pred_boxes.tensor, ib.pred_boxes.tensor)
        assert torch.equal(ia.scores, ib.scores) and torch.equal(ia.pred_classes, ib.pred_classes)


def test_inference_ignores_the_original_and_training_needs_it():
    _, model = _clean_and_restore()
    with torch.no_grad():
        model.restoration.body[-1].weight.normal_(0.0, 0.01)  # R now changes the frame
        inputs = _inputs(instances=False)
        with_original = model(inputs)
        other = model([dict(d, original=torch.zeros_like(d["original"])) for d in inputs])
        without = model([{k: v for k, v in d.items() if k != "original"} for d in inputs])
    for a, b in ((with_original, other), (with_original, without)):
        for x, y in zip(a, b):
            assert torch.equal(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)
    model.train()
    with EventStorage(), pytest.raises(ValueError, match="LOAD_ORIGINAL"):
        model([{k: v for k, v in d.items() if k != "original"} for d in _inputs()])
    with EventStorage(), pytest.raises(ValueError, match="shaped like 'image'"):
        model([dict(d, original=d["original"][:, :-1]) for d in _inputs()])


# ---------------------------------------------------------------------------- training
def _trainer_parts(*opts):
    cfg = load_cfg(PAIRS["R18_slim"][1], *opts)
    torch.manual_seed(0)
    model = VCMTrainer.build_model(cfg).train()
    return model, VCMTrainer.build_optimizer(cfg, model)


def test_training_step_changes_only_restoration():
    model, optimizer = _trainer_parts()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EventStorage():
        losses = model(_inputs())
    assert set(losses) == {"loss_restoration"}  # pure restoration: the detector is not run
    assert torch.isfinite(losses["loss_restoration"]) and losses["loss_restoration"] > 0
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(_is_restoration(n) for n in changed)
    assert model.restoration.body[-1].weight.grad.abs().sum() > 0  # the residual layer learns


def test_task_loss_reaches_restoration_through_the_frozen_detector():
    clean, model = _clean_and_restore("MODEL.VCM.RESTORATION.TASK_LOSS_WEIGHT", 0.5)
    clean.train(), model.train()
    inputs = _inputs()
    with EventStorage():
        torch.manual_seed(3)  # the same proposal / RoI sampling in both models
        clean_losses = clean(inputs)
        torch.manual_seed(3)
        losses = model(inputs)
    assert set(losses) == set(clean_losses) | {"loss_restoration"}
    for k, v in clean_losses.items():  # R is the identity at init: the clean losses, weighted
        assert torch.allclose(losses[k], 0.5 * v), k
    sum(v for k, v in losses.items() if k != "loss_restoration").backward()
    assert model.restoration.body[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not _is_restoration(n))


def test_restoration_loss_decreases_on_a_fixed_batch():
    model, optimizer = _trainer_parts("SOLVER.BASE_LR", 0.0005, "SOLVER.CLIP_GRADIENTS.ENABLED", False)
    inputs = _inputs(sizes=[(64, 64), (64, 80)], instances=False)
    history = []
    with EventStorage():
        for _ in range(60):
            loss = model(inputs)["loss_restoration"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    assert history[-1] < 0.75 * history[0], history  # ~0.5x after 60 steps
