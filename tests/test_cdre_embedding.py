"""CNN embedding options (MODEL.VCM.CDRE.EMBEDDING, eq. 6): the gated fusion is the attention
fusion with its projection replaced by a per-channel gate scale; identity at init (alone and in a
whole detector), the same transform blocks, plain checkpoints load, and its size and MACs."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch.nn import functional as F

from vcm_d2.config import add_vcm_config
from vcm_d2.engine import VCMTrainer, get_vcm_cfg
from vcm_d2.evaluation.complexity import complexity_report
from vcm_d2.modeling.cdre import CDREEncoderSide, DistortionDecoder, DistortionEmbedding, add_cdre_config, binarize
from vcm_d2.modeling.cdre.embedding import CNN_FUSIONS, AttentionFusion, GatedFusion

# Tiny CPU models: one torch thread avoids thread contention (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIM_PLAIN = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml")
SLIM_OURS = os.path.join(REPO, "configs", "synthetic", "cdre_faster_rcnn_R18_slim_ours.yaml")
# Inputs of res2..res5 in detectron2's ResNet-50: (channels, stride).
R50_INPUTS = {"res2": (64, 4), "res3": (256, 4), "res4": (512, 8), "res5": (1024, 16)}
PAPER_TOTAL_PARAMS = 1.9e6


def _cfg(embedding="gated"):
    cfg = get_cfg()
    add_vcm_config(cfg)
    add_cdre_config(cfg)
    cfg.MODEL.VCM.CDRE.EMBEDDING = embedding
    return cfg


def _r50_embedding(embedding):
    shapes = {k: ShapeSpec(channels=c, stride=s) for k, (c, s) in R50_INPUTS.items()}
    return DistortionEmbedding(_cfg(embedding), shapes)


def _params(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def test_gated_fusion_is_eq6_attention_on_the_concatenation_without_projection():
    torch.manual_seed(0)
    gated = GatedFusion(32, 8, reduction=4, spatial_kernel=7)
    f, d = torch.randn(2, 32, 9, 11), torch.randn(2, 8, 10, 12)  # d cropped to f's size
    assert torch.equal(gated(f, d), f)  # gamma = 0: bit-exact identity
    with torch.no_grad():
        gated.gamma.normal_()
    z = gated.spatial_attention(torch.cat([f, d[..., :9, :11]], dim=1))  # SA(concat(f, d))
    a = torch.sigmoid(gated.fc2(F.relu(gated.fc1(F.adaptive_avg_pool2d(z, 1)))))  # CA's f weights
    torch.testing.assert_close(gated(f, d), f + gated.gamma * z[:, :32] * a)


def test_gated_fusion_trains_from_identity():
    gated = GatedFusion(16, 4, reduction=2)
    f, d = torch.randn(1, 16, 6, 7), torch.randn(1, 4, 6, 7)
    gated(f, d).square().sum().backward()
    assert gated.gamma.grad.abs().sum() > 0  # the gate opens first, then SA and CA learn
    # the in-place gating product has exact gradients for f, d and every parameter
    gated = GatedFusion(6, 3, reduction=2, spatial_kernel=3).double()
    with torch.no_grad():
        gated.gamma.normal_()
    params = dict(gated.named_parameters())

    def fusion(f, d, *values):
        return torch.func.functional_call(gated, dict(zip(params, values)), (f, d))

    inputs = (torch.randn(2, 6, 4, 5, dtype=torch.double), torch.randn(2, 3, 4, 5, dtype=torch.double))
    assert torch.autograd.gradcheck(fusion, tuple(t.requires_grad_() for t in (*inputs, *params.values())))


def test_options_share_the_transform_blocks_and_differ_in_the_fusion():
    attention, gated = _r50_embedding("attention_fusion"), _r50_embedding("gated")
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(attention.transforms) == shapes(gated.transforms)
    assert all(isinstance(f, AttentionFusion) for f in attention.fusions.values())
    assert all(isinstance(f, GatedFusion) for f in gated.fusions.values())
    with pytest.raises(ValueError, match="unknown CDRE EMBEDDING"):
        _r50_embedding("concat")
    assert set(CNN_FUSIONS) == {"attention_fusion", "gated"}
    assert _cfg().MODEL.VCM.CDRE.EMBEDDING == "gated" and get_vcm_cfg().MODEL.VCM.CDRE.EMBEDDING == "attention_fusion"


def test_sizes_and_macs_vs_the_paper():
    """CNN version at R50 widths: attention fusion 2.42M params (paper 1.9M), gated 0.67M; the
    gated fusions cost a tiny fraction of the attention fusions' MACs per pixel (the transform
    blocks, the same in both, then dominate)."""
    cfg = _cfg()
    fixed = _params(CDREEncoderSide(cfg), DistortionDecoder(cfg))
    attention, gated = _r50_embedding("attention_fusion"), _r50_embedding("gated")
    assert 2.3e6 < fixed + _params(attention) < 2.5e6
    assert 0.6e6 < fixed + _params(gated) < 0.75e6 < 0.5 * PAPER_TOTAL_PARAMS
    h, w = 64, 96
    g = torch.Generator().manual_seed(0)
    macs = {}
    for name, emb in (("attention", attention), ("gated", gated)):
        macs[name] = 0.0
        for stage, (c, s) in R50_INPUTS.items():
            f = torch.randn(1, c, -(-h // s), -(-w // s), generator=g)
            d = torch.randn(1, emb.transforms[stage][0].out_channels, *f.shape[-2:], generator=g)
            report = complexity_report(emb.fusions[stage], (f, d), num_pixels=h * w, time_runs=0)
            macs[name] += report["total"].macs_per_pixel
    assert 15e3 < macs["attention"] < 16.5e3  # the projection back to f's channels
    assert macs["gated"] < 0.01 * macs["attention"]


def _slim(path, *opts):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_gated_detector_equals_the_plain_detector_at_init_and_loads_its_checkpoint():
    torch.manual_seed(0)
    plain = VCMTrainer.build_model(_slim(SLIM_PLAIN)).eval()
    cdre = VCMTrainer.build_model(_slim(SLIM_OURS, "MODEL.VCM.CDRE.EMBEDDING", "gated")).eval()
    missing, unexpected = cdre.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    assert all(k.startswith(("cdre_encoder.", "backbone.bottom_up.cdre.")) for k in missing)
    assert any(k.endswith(".gamma") for k in missing)
    g = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (3, 97, 131), generator=g).float()
    image = (original + 25 * torch.randn(3, 97, 131, generator=g)).clamp(0, 255).round()
    with torch.no_grad():
        images = plain.preprocess_image([{"image": image}])
        y_hat = binarize(torch.randn(1, 6, 4, 5, generator=g))
        ref = plain.backbone(images.tensor)
        out = cdre.backbone(images.tensor, y_hat=y_hat)
        assert all(torch.equal(ref[k], out[k]) for k in ref)  # bit-exact identity at init
        for m in cdre.modules():
            if isinstance(m, GatedFusion):
                m.gamma.normal_(std=0.1)
        moved = cdre.backbone(images.tensor, y_hat=y_hat)
    assert not torch.equal(moved["p2"], ref["p2"])
