import pytest
import torch
from torch import nn

from vcm_d2.evaluation.complexity import ModuleComplexity, complexity_report, format_complexity

H = W = 16


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # params 8*3*3*3 + 8 = 224
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 4, 1))  # params 4*8 + 4 = 36

    def forward(self, x):
        return self.block(self.act(self.conv1(x)))


# MACs = output elements x (C_in x k x k): conv1 16*16*8 * 3*3*3, block.0 16*16*4 * 8.
CONV1_MACS = H * W * 8 * 3 * 3 * 3
CONV2_MACS = H * W * 4 * 8


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = TinyNet()
    model.block.requires_grad_(False)
    return model


def test_default_children(net):
    net.train()
    rep = complexity_report(net, (torch.rand(1, 3, H, W),), num_pixels=H * W, time_runs=2)
    total = rep["total"]
    assert isinstance(total, ModuleComplexity)
    assert (total.params, total.trainable_params, total.frozen_params) == (260, 224, 36)
    assert total.macs == CONV1_MACS + CONV2_MACS == 63488
    assert total.macs_per_pixel == pytest.approx(63488 / 256)
    mods = {m.name: m for m in rep["modules"]}
    assert list(mods) == ["conv1", "act", "block"]
    assert (mods["conv1"].params, mods["conv1"].macs) == (224, CONV1_MACS)
    assert mods["act"].macs == 0
    assert (mods["block"].params, mods["block"].trainable_params, mods["block"].macs) == \
        (36, 0, CONV2_MACS)
    assert rep["ms_per_call"] > 0 and rep["time_runs"] == 2
    assert net.training and net.conv1.training  # mode restored after eval-mode measurement


def test_selected_submodules_and_format(net):
    rep = complexity_report(net, (torch.rand(2, 3, H, W),), num_pixels=2 * H * W,
                            submodules=["block.0", "conv1"], time_runs=0)
    assert [m.name for m in rep["modules"]] == ["block.0", "conv1"]
    assert rep["modules"][0].macs == 2 * CONV2_MACS  # batch of 2
    assert rep["total"].macs_per_pixel == pytest.approx(248.0)  # per pixel: batch-independent
    assert rep["ms_per_call"] is None
    text = format_complexity(rep)
    assert "| conv1 | 224 | 224 | 0 | 111k | 216 |" in text
    assert "| total | 260 | 224 | 36 | 127k | 248 |" in text
    assert "multiply-add = 1 MAC" in text and "ms per call" not in text


def test_bad_arguments(net):
    x = (torch.rand(1, 3, H, W),)
    with pytest.raises(ValueError, match=r"unknown submodule name\(s\) \['conv9'\].*block\.0"):
        complexity_report(net, x, num_pixels=H * W, submodules=["conv9"])
    with pytest.raises(ValueError, match="num_pixels"):
        complexity_report(net, x, num_pixels=0)
    with pytest.raises(ValueError, match="tuple"):
        complexity_report(net, x[0], num_pixels=H * W)
