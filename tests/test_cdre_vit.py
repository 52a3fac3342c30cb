"""CDRE's Transformer version inside detectron2's ViT + SimpleFeaturePyramid (ViTDet, eq. 7).

The wrapper against the plain ViT-SFP backbone with the same weights (identity at init, then
y_hat-dependent), plain checkpoints loading with only CDRE missing, the pyramid's outputs and
padding, the embedding points, training a tiny CDRERCNN, and the sizes at ViT-B widths.
"""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from cdre_helpers import STRIDE, activate_cross_attention, ceil_div, num_params, random_batch
from config_helpers import load_cfg
from vcm_d2.engine import VCMTrainer
from vcm_d2.modeling.cdre import CDREDecoderSide, CDRESimpleFeaturePyramid, CDREViT
from vcm_d2.modeling.cdre.embedding import CrossAttentionFusion
from vcm_d2.modeling.cdre.vit_backbone import build_vit, build_vit_sfp_backbone, sfp_from_config, vit_stage_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TINY_DIRECT = os.path.join(CONFIGS, "synthetic", "cdre_mask_rcnn_vit_tiny_slim_direct.yaml")
TINY_OURS = os.path.join(CONFIGS, "synthetic", "cdre_mask_rcnn_vit_tiny_slim_ours.yaml")
VITDET_B_DIRECT = os.path.join(CONFIGS, "CDRE", "mask_rcnn_vitdet_B_direct.yaml")
VITDET_B_OURS = os.path.join(CONFIGS, "CDRE", "mask_rcnn_vitdet_B_ours.yaml")
CDRE_PREFIXES = ("cdre_encoder.", "backbone.net.cdre.")
LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _cfg(path=TINY_OURS, *opts):
    return load_cfg(path, *opts)


def _plain_and_cdre(seed=0):
    """(plain ViT-SFP, CDRE ViT-SFP holding the plain weights), eval; only net.cdre.* is new."""
    torch.manual_seed(seed)
    plain = build_vit_sfp_backbone(_cfg(TINY_DIRECT), ShapeSpec(channels=3)).eval()
    cdre = build_backbone(_cfg()).eval()
    missing, unexpected = cdre.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("net.cdre.") for k in missing)
    return plain, cdre


# ---------------------------------------------------------------------------- identity
@pytest.mark.parametrize("hw", [(96, 128), (97, 131)], ids=["x32", "odd"])
def test_wrapper_equals_plain_vit_sfp_at_init_then_depends_on_y_hat(hw):
    plain, cdre = _plain_and_cdre()
    assert isinstance(cdre, CDRESimpleFeaturePyramid) and isinstance(cdre.net, CDREViT)
    x, y_hat = random_batch(*hw)
    with torch.no_grad():
        ref, out = plain(x), cdre(x, y_hat=y_hat)
        assert list(out) == list(ref) == list(LEVELS)
        for k in ref:
            assert torch.equal(ref[k], out[k]), k  # bit-exact
        activate_cross_attention(cdre)
        active, other = cdre(x, y_hat=y_hat), cdre(x, y_hat=1 - y_hat)
    for k in ref:
        assert active[k].shape == ref[k].shape
        assert not torch.equal(active[k], ref[k]) and not torch.equal(active[k], other[k]), k


# ---------------------------------------------------------------------------- checkpoints
def test_plain_checkpoint_loads_with_only_cdre_missing(tmp_path):
    """The plain detector's checkpoint (DetectionCheckpointer) into CDRERCNN: every detector
    parameter keeps its name and value, the CDRE ones keep their init. detectron2's own
    SimpleFeaturePyramid (what ViTDet's checkpoints come from) has the same names."""
    torch.manual_seed(0)
    plain = VCMTrainer.build_model(_cfg(TINY_DIRECT))
    model = VCMTrainer.build_model(_cfg())
    plain_sd, model_sd = plain.state_dict(), model.state_dict()
    assert not set(plain_sd) - set(model_sd)
    cdre_keys = set(model_sd) - set(plain_sd)
    assert cdre_keys and all(k.startswith(CDRE_PREFIXES) for k in cdre_keys)
    assert any(k.startswith("backbone.net.cdre.") for k in cdre_keys)
    cfg = _cfg(TINY_DIRECT)
    detectron2_sfp = sfp_from_config(cfg, build_vit(cfg, ShapeSpec(channels=3)), SimpleFeaturePyramid)
    backbone_keys = {k for k in plain_sd if k.startswith("backbone.")}
    assert {"backbone." + k for k in detectron2_sfp.state_dict()} == backbone_keys
    cdre_before = {k: model_sd[k].clone() for k in cdre_keys}
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    DetectionCheckpointer(model).load(str(tmp_path / "plain.pth"))
    loaded = model.state_dict()
    for k, v in plain_sd.items():
        assert torch.equal(loaded[k], v), k
    for k, v in cdre_before.items():
        assert torch.equal(loaded[k], v), k


# ---------------------------------------------------------------------------- pyramid
def test_outputs_strides_padding_and_y_hat_required():
    backbone = build_backbone(_cfg()).eval()
    shapes = backbone.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == LEVELS and {s.channels for s in shapes.values()} == {64}
    x, y_hat = random_batch(96, 128)
    with torch.no_grad():
        out = backbone(x, y_hat=y_hat)
    for k, s in LEVELS.items():
        assert out[k].shape == (2, 64, ceil_div(96, s), ceil_div(128, s)), k
    with pytest.raises(ValueError, match="y_hat"):
        backbone(x)
    with pytest.raises(ValueError, match="y_hat has shape"):
        backbone(x, y_hat=y_hat[..., :-1])
    # batches are padded to p5's stride (detectron2's own pyramid would not pad without SQUARE_PAD)
    assert backbone.size_divisibility == STRIDE
    images = ImageList.from_tensors([torch.zeros(3, 97, 131)], backbone.size_divisibility,
                                    padding_constraints=backbone.padding_constraints)
    assert images.tensor.shape[-2:] == (128, 160)


def test_vitdet_b_square_padding_and_inputs_that_do_not_fit():
    backbone = build_vit_sfp_backbone(_cfg(VITDET_B_DIRECT), ShapeSpec(channels=3))
    images = ImageList.from_tensors([torch.zeros(3, 97, 131)], backbone.size_divisibility,
                                    padding_constraints=backbone.padding_constraints)
    assert images.tensor.shape[-2:] == (1024, 1024)
    with pytest.raises(ValueError, match="SQUARE_PAD 1024"):
        build_vit_sfp_backbone(_cfg(VITDET_B_DIRECT, "INPUT.MAX_SIZE_TEST", 1333), ShapeSpec(channels=3))


# ---------------------------------------------------------------------------- embedding points
def test_embedding_points_are_validated():
    with pytest.raises(ValueError, match=r"\['p0'\] not in the backbone stages \['b0', 'b1', 'b2', 'b3'\]"):
        build_backbone(_cfg(TINY_OURS, "MODEL.VCM.CDRE.EMBED_STAGES", ["b0", "p0"]))
    with pytest.raises(ValueError, match="backbone order"):
        build_backbone(_cfg(TINY_OURS, "MODEL.VCM.CDRE.EMBED_STAGES", ["b2", "b0"]))
    with pytest.raises(ValueError, match="WINDOW_BLOCK_INDEXES"):
        build_backbone(_cfg(TINY_OURS, "MODEL.VCM.VIT.WINDOW_BLOCK_INDEXES", [0, 4]))
    with pytest.raises(ValueError, match="distortion-aware net"):
        sfp_from_config(_cfg(), build_vit(_cfg(), ShapeSpec(channels=3)), CDRESimpleFeaturePyramid)


def test_only_blocks_after_the_first_embedding_point_move():
    """Embedding at b2 only: blocks 0-1 see the plain tokens, so a hook on block 1's output
    sees no difference while the output does."""
    torch.manual_seed(0)
    late = build_backbone(_cfg(TINY_OURS, "MODEL.VCM.CDRE.EMBED_STAGES", ["b2"])).eval()
    plain, _ = _plain_and_cdre()
    late.load_state_dict(plain.state_dict(), strict=False)
    assert late.net.cdre.stage_names == ("b2",) and sum(isinstance(m, CrossAttentionFusion) for m in late.modules()) == 1
    activate_cross_attention(late)
    seen = {}
    for name, net in (("plain", plain.net), ("late", late.net)):
        net.blocks[1].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    x, y_hat = random_batch(96, 128)
    with torch.no_grad():
        ref, out = plain(x), late(x, y_hat=y_hat)
    assert torch.equal(seen["plain"], seen["late"])
    assert not torch.equal(ref["p4"], out["p4"])


# ---------------------------------------------------------------------------- training
def _training_input(h=96, w=128):
    g = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    image = (original + 20 * torch.randn(3, h, w, generator=g)).clamp(0, 255).to(torch.uint8)
    boxes = torch.tensor([[8.0, 10.0, 60.0, 70.0], [40.0, 30.0, 90.0, 85.0]])
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 1]), gt_masks=BitMasks(masks))
    return {"image": image, "original": original, "height": h, "width": w, "instances": inst}


def _cdre_grads(model, inputs):
    model.zero_grad()
    with EventStorage():
        losses = model(inputs)
    assert {"loss_mask", "loss_cdre_cosine"} <= set(losses)
    sum(losses.values()).backward()
    return {n: p.grad for n, p in model.named_parameters() if n.startswith(CDRE_PREFIXES)}


def test_tiny_cdre_rcnn_trains_the_cdre_parameters():
    """At init only the zero-initialised output projections receive gradient from the task
    (everything behind them is multiplied by zero); once they moved, every decoder-side
    parameter does. The encoder side is always reached (cosine loss and y_hat's straight-through
    gradient)."""
    torch.manual_seed(0)
    model = VCMTrainer.build_model(_cfg()).train()
    inputs = [_training_input()]
    grads = _cdre_grads(model, inputs)
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    outs = {n: g for n, g in grads.items() if ".fusions." in n and ".out." in n}
    assert outs and all(g.abs().sum() > 0 for g in outs.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("cdre_encoder."))
    activate_cross_attention(model)
    grads = _cdre_grads(model, inputs)
    side = {n: g for n, g in grads.items() if n.startswith("backbone.net.cdre.")}
    assert all(g.abs().sum() > 0 for g in side.values()), [n for n, g in side.items() if not g.abs().sum() > 0]


# ---------------------------------------------------------------------------- ViT-B sizes
def test_vitdet_b_layout_and_cdre_size():
    """ViTDet-B's parameter names and shapes (what its checkpoint needs), and what CDRE adds at
    ViT-B width: 768 at every embedding point, so each costs a 768x768 MLP and cross-attention."""
    cfg = _cfg(VITDET_B_OURS)
    backbone = build_backbone(cfg)
    sd = backbone.state_dict()
    assert sd["net.pos_embed"].shape == (1, 14 * 14 + 1, 768)  # 224-px pretraining, class token
    assert sd["net.blocks.2.attn.rel_pos_h"].shape == (2 * 64 - 1, 64)  # global: 1024 / 16 tokens
    assert sd["net.blocks.0.attn.rel_pos_h"].shape == (2 * 14 - 1, 64)  # window of 14
    assert sd["simfp_2.0.weight"].shape == (768, 384, 2, 2) and "simfp_5.1.norm.weight" in sd
    assert [b.window_size for b in backbone.net.blocks] == [14, 14, 0] * 4
    side = backbone.cdre_decoder_side
    assert side.stage_names == ("b0", "b3", "b6", "b9")
    c, t = 768, cfg.MODEL.VCM.CDRE.TOKEN_CHANNELS
    linear = lambda i, o: i * o + o  # noqa: E731
    fusion = 4 * linear(c, c) + 2 * 2 * c  # q, k, v, out and two LayerNorms
    mlps = linear(t, c) + linear(c, c) + 3 * 2 * linear(c, c)
    assert num_params(side.embedding) == 4 * fusion + mlps
    assert num_params(side) == num_params(CDREDecoderSide(cfg, vit_stage_shapes(cfg), tokens=True))
    assert num_params(side.decoder) == 337440  # the Swin-T row's token decoder
