"""CDRE's Transformer version inside detectron2's Swin Transformer (eq. 7).

The wrapper against detectron2's own ``SwinTransformer`` with the same weights (identity at init,
then y_hat-dependent), ImageNet Swin weights by name matching, the Swin config keys, the
stochastic depth without timm, and what the ablation switches change. Detector-level checks
(checkpoints of plain Swin detectors, predictions, side streams, training) are in
test_cdre_detectron2.py.
"""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.swin import SwinTransformer
from torchvision.ops import StochasticDepth

from cdre_helpers import LATENT, STRIDE, activate_cross_attention, ceil_div, num_params, random_batch
from config_helpers import load_cfg
from vcm_d2.engine import VCMTrainer
from vcm_d2.modeling.cdre import (
    CDREDecoderSide,
    CDREEncoderSide,
    CDRESwinTransformer,
    CrossAttentionEmbedding,
    DistortionDecoder,
    DistortionEmbedding,
    TokenDistortionDecoder,
)
from vcm_d2.modeling.cdre.swin_backbone import build_swin, swin_kwargs_from_config, swin_stage_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TINY_DIRECT = os.path.join(CONFIGS, "synthetic", "cdre_mask_rcnn_swin_tiny_slim_direct.yaml")
TINY_OURS = os.path.join(CONFIGS, "synthetic", "cdre_mask_rcnn_swin_tiny_slim_ours.yaml")
SWIN_T_OURS = os.path.join(CONFIGS, "CDRE", "mask_rcnn_swin_T_FPN_ours.yaml")
CDRE_PREFIXES = ("cdre_encoder.", "backbone.bottom_up.cdre.")
STAGES = ("p0", "p1", "p2", "p3")
PAPER_TRANSFORMER_PARAMS = 3.7e6  # Sec. III-C


def _cfg(path=TINY_OURS, *opts):
    return load_cfg(path, *opts)


def _wrapper_and_plain(cfg, seed=0):
    """(CDRESwinTransformer, detectron2 SwinTransformer with the wrapper's Swin weights), eval."""
    torch.manual_seed(seed)
    shapes = swin_stage_shapes(cfg.MODEL.VCM.SWIN.EMBED_DIM, len(cfg.MODEL.VCM.SWIN.DEPTHS))
    side = CDREDecoderSide(cfg, shapes, tokens=True)
    wrapped = build_swin(cfg, ShapeSpec(channels=3), CDRESwinTransformer, cdre=side).eval()
    plain = SwinTransformer(**swin_kwargs_from_config(cfg, ShapeSpec(channels=3))).eval()
    missing, unexpected = plain.load_state_dict(wrapped.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("cdre.") for k in unexpected)
    return wrapped, plain


# ---------------------------------------------------------------------------- identity
@pytest.mark.parametrize("hw", [(96, 128), (97, 131)], ids=["x32", "odd"])
def test_wrapper_equals_detectron2_swin_at_init_then_depends_on_y_hat(hw):
    wrapped, plain = _wrapper_and_plain(_cfg())
    x, y_hat = random_batch(*hw)
    with torch.no_grad():
        ref, out = plain(x), wrapped(x, y_hat=y_hat)
        assert set(out) == set(ref) == set(STAGES)
        for k in ref:
            assert torch.equal(ref[k], out[k]), k  # bit-exact (the task asks for 1e-6)
        activate_cross_attention(wrapped)
        active = wrapped(x, y_hat=y_hat)
        other = wrapped(x, y_hat=1 - y_hat)
    for k in ref:
        assert active[k].shape == ref[k].shape
        assert not torch.equal(active[k], ref[k]) and not torch.equal(active[k], other[k]), k


def test_wrapper_runs_inside_fpn_and_needs_y_hat():
    backbone = build_backbone(_cfg()).eval()
    x, y_hat = random_batch(96, 128)
    with torch.no_grad():
        out = backbone(x, y_hat=y_hat)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] and backbone.size_divisibility == STRIDE
    assert out["p2"].shape == (2, 64, 24, 32)
    with pytest.raises(ValueError, match="y_hat"):
        backbone(x)
    with pytest.raises(ValueError, match="y_hat has shape"):
        backbone(x, y_hat=y_hat[..., :-1])


def test_stochastic_depth_without_timm_matches_detectron2_rates():
    cfg = _cfg()
    swin = build_swin(cfg, ShapeSpec(channels=3))
    drops = [b.drop_path for layer in swin.layers for b in layer.blocks]
    rates = [d.p if isinstance(d, StochasticDepth) else 0.0 for d in drops]
    # detectron2's rule: linspace(0, DROP_PATH_RATE) over the blocks, identity where 0
    assert rates == torch.linspace(0, cfg.MODEL.VCM.SWIN.DROP_PATH_RATE, len(drops)).tolist()
    assert isinstance(drops[0], torch.nn.Identity) and {d.mode for d in drops[1:]} == {"row"}
    swin.train()
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    a = swin(x)["p3"]
    torch.manual_seed(1)
    assert not torch.equal(a, swin(x)["p3"])  # stochastic in training
    swin.eval()
    with torch.no_grad():
        assert torch.equal(swin(x)["p3"], swin(x)["p3"])


def test_swin_config_errors():
    with pytest.raises(ValueError, match="one entry per stage"):
        build_backbone(_cfg(TINY_OURS, "MODEL.VCM.SWIN.NUM_HEADS", [1, 2, 4]))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(_cfg(TINY_DIRECT, "MODEL.VCM.SWIN.OUT_FEATURES", ["res2"]))
    # ResNet stage names (the CDRE default) are no Swin stages
    with pytest.raises(ValueError, match="not in the backbone stages"):
        build_backbone(_cfg(TINY_OURS, "MODEL.VCM.CDRE.EMBED_STAGES", ["res2", "res3", "res4", "res5"]))
    cfg = _cfg()
    reversed_side = CDREDecoderSide(
        decoder=TokenDistortionDecoder(cfg),
        embedding=CrossAttentionEmbedding(stage_names=["p1", "p0"], stage_channels=[64, 32], token_channels=32),
        latent_channels=LATENT,
        latent_stride=STRIDE,
    )
    with pytest.raises(ValueError, match="backbone order"):
        build_swin(cfg, ShapeSpec(channels=3), CDRESwinTransformer, cdre=reversed_side)


# ---------------------------------------------------------------------------- checkpoints
def test_imagenet_swin_weights_load_by_name_matching(tmp_path):
    """Bare ImageNet-style names (patch_embed.*, layers.*, a classifier head.* and norm.*) load
    into the CDRE detector's Swin with `?matching_heuristics=True`; no CDRE parameter is hit
    (the decoder's head.* only shares the suffix, never the shape)."""
    torch.manual_seed(0)
    model = VCMTrainer.build_model(_cfg())
    swin = build_swin(_cfg(), ShapeSpec(channels=3))
    imagenet = {k: v for k, v in swin.state_dict().items() if not k.startswith("norm")}
    width = swin.num_features[-1]
    imagenet.update({"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width),
                     "head.weight": torch.randn(1000, width), "head.bias": torch.zeros(1000)})
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(CDRE_PREFIXES)}
    torch.save({"model": imagenet}, tmp_path / "swin_imagenet.pth")
    DetectionCheckpointer(model).load(str(tmp_path / "swin_imagenet.pth") + "?matching_heuristics=True")
    loaded = model.state_dict()
    for k, v in imagenet.items():
        if not k.startswith(("norm.", "head.")):
            assert torch.equal(loaded["backbone.bottom_up." + k], v), k
    for k, v in before.items():
        assert torch.equal(loaded[k], v), k


# ---------------------------------------------------------------------------- ablation switches
def test_embed_stages_change_parameters_and_which_outputs_move():
    full, _ = _wrapper_and_plain(_cfg())
    late, plain = _wrapper_and_plain(_cfg(TINY_OURS, "MODEL.VCM.CDRE.EMBED_STAGES", ["p2", "p3"]))
    assert late.cdre.stage_names == ("p2", "p3") and set(late.cdre.embedding.fusions) == {"p2", "p3"}
    assert num_params(late.cdre) < num_params(full.cdre)
    # exactly the parameters of the p0/p1 MLPs and cross-attentions are gone; p2's MLP now
    # starts from the decoder tokens instead of p1's width
    dropped = sum(num_params(full.cdre.embedding.fusions[n]) for n in ("p0", "p1"))
    mlp = lambda e, n: num_params(e.transforms[n])  # noqa: E731
    assert num_params(full.cdre) - num_params(late.cdre) == dropped \
        + sum(mlp(full.cdre.embedding, n) for n in STAGES) - sum(mlp(late.cdre.embedding, n) for n in ("p2", "p3"))
    activate_cross_attention(late)
    x, y_hat = random_batch(96, 128)
    with torch.no_grad():
        ref, out = plain(x), late(x, y_hat=y_hat)
    assert torch.equal(out["p0"], ref["p0"]) and torch.equal(out["p1"], ref["p1"])
    assert not torch.equal(out["p2"], ref["p2"]) and not torch.equal(out["p3"], ref["p3"])


def test_decoder_kind_follows_the_backbone():
    """CNN vs token decoder is no config key: ResNet builders take the CNN pair (eq. 6), Swin
    builders the Transformer pair (eq. 7), through ``CDREDecoderSide.from_config(tokens=...)``."""
    swin = build_backbone(_cfg()).cdre_decoder_side
    resnet = build_backbone(_cfg(os.path.join(CONFIGS, "synthetic", "cdre_faster_rcnn_R18_slim_ours.yaml")))
    resnet = resnet.cdre_decoder_side
    assert isinstance(swin.decoder, TokenDistortionDecoder) and isinstance(swin.embedding, CrossAttentionEmbedding)
    assert isinstance(resnet.decoder, DistortionDecoder) and isinstance(resnet.embedding, DistortionEmbedding)
    y_hat = torch.ones(1, LATENT, 3, 4)
    assert swin.decode(y_hat).shape == (1, 12, 32)  # tokens at 1/32, TOKEN_CHANNELS wide
    assert resnet.decode(y_hat).shape == (1, 16, 24, 32)  # a map at 1/4


def test_token_width_changes_parameters():
    small = build_backbone(_cfg(TINY_OURS, "MODEL.VCM.CDRE.TOKEN_CHANNELS", 16)).cdre_decoder_side
    wide = build_backbone(_cfg()).cdre_decoder_side
    assert num_params(small.decoder) < num_params(wide.decoder)
    assert small.decode(torch.ones(1, LATENT, 2, 2)).shape == (1, 4, 16)


def test_transformer_version_size_vs_paper():
    """Swin-T widths: the paper's 3.7M; ours (two-layer MLP of MLP_RATIO 1.0, pre-norm
    cross-attention) is 4.7M. The token decoder matches the paper's 0.33K MACs/px."""
    cfg = _cfg(SWIN_T_OURS)
    backbone = build_backbone(cfg)
    swin, side = backbone.bottom_up, backbone.cdre_decoder_side
    # Swin-T: widths 96/192/384/768, depths 2/2/6/2, heads 3/6/12/24, windows of 7
    assert swin.num_features == [96, 192, 384, 768] and [len(layer.blocks) for layer in swin.layers] == [2, 2, 6, 2]
    assert [layer.blocks[0].attn.num_heads for layer in swin.layers] == [3, 6, 12, 24]
    assert swin.layers[0].blocks[0].attn.relative_position_bias_table.shape == (13 * 13, 3)
    total = num_params(side) + num_params(CDREEncoderSide(cfg))
    assert 0.8 * PAPER_TRANSFORMER_PARAMS < total < 1.35 * PAPER_TRANSFORMER_PARAMS
    c = cfg.MODEL.VCM.CDRE.TOKEN_CHANNELS
    per_latent_position = LATENT * c * 9 + 2 * cfg.MODEL.VCM.CDRE.TOKEN_DECODER_BLOCKS * c * c * 9
    assert round(per_latent_position / STRIDE**2) == 329  # paper: 0.33K MACs/px
    widths = [side.embedding.fusions[n].q.in_features for n in STAGES]
    assert widths == [96, 192, 384, 768]
