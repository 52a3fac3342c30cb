"""TransVFC feature space transform (FST, eq. 4) and its loss (eq. 7-8). CPU, tiny features."""
import inspect

import pytest
import torch
from detectron2.config import get_cfg

from vcm_d2.config import add_vcm_config
from vcm_d2.modeling.transvfc import (
    FST_TABLE2_WEIGHTS,
    FeatureSpaceTransform,
    FSTLossWeights,
    add_transvfc_config,
    fst_loss,
)

NARROW = dict(hidden_channels=16, image_channels=8, bottleneck_channels=8, num_res_blocks=2,
              global_channels=16, num_global_res_blocks=1)


def _fst(**kw):
    torch.manual_seed(0)
    return FeatureSpaceTransform(**{**NARROW, **kw})


def _cfg():
    cfg = get_cfg()
    add_vcm_config(cfg)
    add_transvfc_config(cfg)
    return cfg


def test_config_defaults_match_constructor_defaults():
    from_cfg = FeatureSpaceTransform.from_config(_cfg())
    params = inspect.signature(FeatureSpaceTransform.__init__).parameters
    for key, value in from_cfg.items():
        assert value == params[key].default, key
    assert FSTLossWeights.from_config(_cfg()) == FST_TABLE2_WEIGHTS["object_detection"]


@pytest.mark.parametrize("size", [(16, 24), (15, 21)])
@pytest.mark.parametrize("out_stride,out_ch", [(4, 256), (8, 512), (16, 64)])
def test_output_shapes(size, out_stride, out_ch):
    fst = _fst(out_stride=out_stride, out_channels=out_ch)
    h, w = size
    out = fst(torch.randn(2, 256, h, w))
    r = out_stride // 4
    assert out["feature"].shape == (2, out_ch, -(-h // r), -(-w // r))
    assert out["coarse_image"].shape == (2, 3, 4 * h, 4 * w)


def test_branch_ablations():
    full = _fst()
    n_full = sum(p.numel() for p in full.parameters())
    for kw in (dict(use_up_down=False), dict(use_down_up=False),
               dict(use_up_down=False, use_down_up=False)):
        fst = _fst(**kw)
        out = fst(torch.randn(1, 256, 15, 21))
        assert out["feature"].shape == (1, 256, 15, 21)
        assert (out["coarse_image"] is None) == (not kw.get("use_up_down", True))
        assert sum(p.numel() for p in fst.parameters()) < n_full


def test_residual_fst_starts_as_identity_and_learns():
    fst = _fst(residual=True)
    x = torch.randn(1, 256, 15, 21)  # odd size: the padded input is cropped back
    out = fst(x)
    assert torch.equal(out["feature"], x)
    assert out["coarse_image"].shape == (1, 3, 60, 84)
    target = torch.randn_like(x)
    torch.optim.SGD(fst.parameters(), lr=0.1).zero_grad()
    loss = (out["feature"] - target).pow(2).mean()
    loss.backward()
    assert fst.correction.weight.grad.abs().sum() > 0  # zero-initialized, not frozen
    with torch.no_grad():
        for p in fst.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
        assert float((fst(x)["feature"] - target).pow(2).mean()) < loss.item()


def test_residual_fst_loads_a_plain_checkpoint_at_identity():
    plain = _fst()
    residual = _fst(residual=True)
    result = residual.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["correction.bias", "correction.weight"]
    assert all(k.startswith("head.") for k in result.unexpected_keys) and result.unexpected_keys
    x = torch.randn(2, 256, 8, 8)
    assert torch.equal(residual(x)["feature"], x)
    for k, v in plain.state_dict().items():  # every shared layer took the checkpoint's values
        if k in residual.state_dict():
            assert torch.equal(residual.state_dict()[k], v), k


@pytest.mark.parametrize("kw", [dict(out_stride=8), dict(out_channels=128)])
def test_residual_fst_needs_the_input_shape(kw):
    with pytest.raises(ValueError, match="residual FST needs the input's shape"):
        _fst(residual=True, **kw)


def test_invalid_strides():
    with pytest.raises(ValueError, match="multiple"):
        _fst(out_stride=6)
    with pytest.raises(ValueError, match="power of two"):
        _fst(out_stride=12)
    with pytest.raises(ValueError, match="NCHW"):
        _fst()(torch.randn(256, 8, 8))


def test_gradient_reaches_every_parameter():
    fst = _fst(out_stride=8)
    x = torch.randn(1, 256, 12, 12)
    out = fst(x)
    losses, _ = fst_loss(FST_TABLE2_WEIGHTS["instance_segmentation"],
                         task_loss=out["feature"].pow(2).mean(),
                         feature_hat=out["feature"], feature=torch.zeros_like(out["feature"]),
                         high_hat=[out["feature"].mean(1)], high=[torch.ones(1, 6, 6)],
                         image_hat=out["coarse_image"], image=torch.rand(1, 3, 48, 48))
    sum(losses.values()).backward()
    missing = [n for n, p in fst.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing


def test_default_widths_size_matches_paper():
    """Paper: about 4.3M parameters (Sec. 4.4.2, Table 7)."""
    fst = FeatureSpaceTransform()
    params = sum(p.numel() for p in fst.parameters())
    assert 3.9e6 < params < 4.7e6
    out = fst(torch.randn(1, 256, 8, 12))
    assert out["feature"].shape == (1, 256, 8, 12)


def test_fst_loss_terms():
    w = FSTLossWeights(lambda_task=2.0, lambda_x=10.0, lambda_mid=3.0, lambda_high=5.0)
    f = torch.zeros(1, 4, 5, 5)
    high = {"res4": torch.zeros(1, 2, 3, 3), "res5": torch.zeros(1, 2, 2, 2)}
    high_hat = {"res4": torch.ones(1, 2, 3, 3), "res5": torch.full((1, 2, 2, 2), 3.0)}
    image = torch.zeros(1, 3, 20, 20)
    image_hat = torch.full((1, 3, 24, 24), 2.0)  # padded coarse image: cropped to the frame
    losses, stats = fst_loss(w, task_loss=torch.tensor(0.5), feature_hat=f + 1, feature=f,
                             high_hat=high_hat, high=high, image_hat=image_hat, image=image)
    assert float(losses["loss_task"]) == pytest.approx(1.0)
    assert float(losses["loss_mid"]) == pytest.approx(3.0)
    assert float(losses["loss_high"]) == pytest.approx(5.0 * (1 + 9) / 2)  # eq. 8 mean
    assert float(losses["loss_image"]) == pytest.approx(40.0)
    assert float(stats["d_x"]) == pytest.approx(4.0)
    no_image, _ = fst_loss(w, task_loss=torch.tensor(0.5), feature_hat=f, feature=f,
                           high_hat=[f], high=[f])
    assert "loss_image" not in no_image
    with pytest.raises(ValueError, match="keys differ"):
        fst_loss(w, task_loss=torch.tensor(0.0), feature_hat=f, feature=f,
                 high_hat={"a": f}, high={"b": f})
    with pytest.raises(ValueError, match="both"):
        fst_loss(w, task_loss=torch.tensor(0.0), feature_hat=f, feature=f, high_hat=[f],
                 high=[f], image=image)
    with pytest.raises(ValueError, match="cropped"):
        fst_loss(w, task_loss=torch.tensor(0.0), feature_hat=f, feature=f, high_hat=[f],
                 high=[f], image_hat=torch.zeros(1, 3, 8, 8), image=image)


def test_table2_weights():
    assert FST_TABLE2_WEIGHTS["instance_segmentation"] == FSTLossWeights(1, 1024, 8, 64)
    assert FST_TABLE2_WEIGHTS["semantic_segmentation"].lambda_high == 64
