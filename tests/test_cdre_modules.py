"""CDRE modules: shapes at odd sizes, straight-through binarization, identity at init of the
embeddings, the cosine loss, config-driven ablations and size budgets."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from vcm_d2.config import add_vcm_config
from vcm_d2.modeling.cdre import (
    CDRECosineLoss,
    CDREEncoderSide,
    CompressionSensitiveExtractor,
    CrossAttentionEmbedding,
    DistortionDecoder,
    DistortionEmbedding,
    DistortionEncoder,
    TokenDistortionDecoder,
    add_cdre_config,
    binarize,
    cdre_cosine_loss,
)
from vcm_d2.modeling.cdre.distortion_codec import ConcatFusion, LinearModulation

# Inputs of res2..res5 in detectron2's ResNets: (channels, stride).
R50_INPUTS = {"res2": (64, 4), "res3": (256, 4), "res4": (512, 8), "res5": (1024, 16)}
R18_INPUTS = {"res2": (64, 4), "res3": (64, 4), "res4": (128, 8), "res5": (256, 16)}
SWIN_T = {"res2": 96, "res3": 192, "res4": 384, "res5": 768}


def _cfg(**cdre):
    cfg = get_cfg()
    add_vcm_config(cfg)
    add_cdre_config(cfg)
    for k, v in cdre.items():
        setattr(cfg.MODEL.VCM.CDRE, k, v)
    return cfg


def _shapes(inputs):
    return {k: ShapeSpec(channels=c, stride=s) for k, (c, s) in inputs.items()}


def _images(h, w, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, h, w, generator=g)
    return x, x + 0.3 * torch.randn(b, 3, h, w, generator=g)


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _ceil(n, s):
    return -(-n // s)


def test_config_defaults_and_idempotence():
    cfg = _cfg()
    c = cfg.MODEL.VCM.CDRE
    assert (c.LATENT_CHANNELS, c.EXTRACTOR_CHANNELS, c.ENCODER_CHANNELS, c.DECODER_CHANNELS) == (6, 16, 4, 16)
    assert list(c.EMBED_STAGES) == ["res2", "res3", "res4", "res5"]
    assert list(c.STAGE_CHANNELS) == [16, 64, 128, 256]
    assert c.COSINE_WEIGHT == 0.1 and c.SIDE_STREAM_MODE == "cabac"
    assert c.EMBEDDING == "attention_fusion"  # the gated option is opt-in (tests/test_cdre_embedding.py)
    assert c.SIDE_STREAM_PER_VIDEO and c.SIDE_STREAM_MAX_OPEN_VIDEOS == 64
    c.LATENT_CHANNELS = 3
    add_cdre_config(cfg)  # second call keeps user values
    assert cfg.MODEL.VCM.CDRE.LATENT_CHANNELS == 3
    with pytest.raises(ValueError, match="add_vcm_config"):
        add_cdre_config(get_cfg())


@pytest.mark.parametrize("hw", [(64, 96), (70, 50), (33, 31)])
def test_encoder_side_shapes_and_binary_latent(hw):
    h, w = hw
    side = CDREEncoderSide(_cfg())
    out = side(*_images(h, w, b=2))
    assert [tuple(f.shape) for f in out.feats_o] == [(2, 16, _ceil(h, s), _ceil(w, s)) for s in (2, 4, 8)]
    assert [f.shape for f in out.feats_c] == [f.shape for f in out.feats_o]
    assert out.y.shape == (2, 6, _ceil(h, 32), _ceil(w, 32)) and side.latent_stride == 32
    assert set(out.y_hat.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.y_hat, (torch.sigmoid(out.y) > 0.5).float())


def test_binarize_forward_exact_and_straight_through_gradient():
    y = torch.tensor([-3.0, -0.2, 0.0, 0.2, 5.0], requires_grad=True)
    y_hat = binarize(y)
    assert y_hat.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    weights = torch.arange(1.0, 6.0)
    (y_hat * weights).sum().backward()
    s = torch.sigmoid(y.detach())
    assert torch.allclose(y.grad, weights * s * (1 - s))


def test_gradient_reaches_encoder_and_extractor_through_binary_latent():
    side = CDREEncoderSide(_cfg()).train()
    out = side(*_images(64, 96))
    target = torch.randn_like(out.y_hat)
    ((out.y_hat - target) ** 2).sum().backward()
    first_enc = side.encoder.blocks[0][0].weight.grad
    first_ext = side.extractor.blocks[0][0].weight.grad
    assert first_enc is not None and first_enc.abs().sum() > 0
    assert first_ext is not None and first_ext.abs().sum() > 0  # via the modulation (eq. 4)


def test_extractor_shares_weights_between_original_and_compressed():
    ext = CompressionSensitiveExtractor(_cfg())
    x, _ = _images(40, 56)
    f_o, f_c = ext(x, x.clone())
    assert all(torch.allclose(a, b) for a, b in zip(f_o, f_c))
    alone = ext.extract(x)
    # batch of 2 vs 1: CPU convolutions may round differently (seen up to 2.4e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(f_o, alone))
    with pytest.raises(ValueError, match="differ"):
        ext(x, x[..., :-1])


@pytest.mark.parametrize("hw", [(64, 96), (70, 50)])
def test_cnn_decoder_shapes(hw):
    h, w = hw
    dec = DistortionDecoder(_cfg())
    y_hat = binarize(torch.randn(2, 6, _ceil(h, 32), _ceil(w, 32)))
    assert dec.output_stride == 4 and dec.out_channels == 16
    full = dec(y_hat)
    assert full.shape == (2, 16, 8 * _ceil(h, 32), 8 * _ceil(w, 32))
    size = (_ceil(h, 4), _ceil(w, 4))
    cropped = dec(y_hat, size)
    assert cropped.shape == (2, 16, *size) and torch.equal(cropped, full[..., : size[0], : size[1]])
    with pytest.raises(ValueError, match="smaller than the target"):
        dec(y_hat, (full.shape[-2] + 1, full.shape[-1]))


def test_token_decoder_shape():
    dec = TokenDistortionDecoder(_cfg())
    y_hat = binarize(torch.randn(2, 6, 3, 2))
    assert dec(y_hat).shape == (2, 6, 96)
    with pytest.raises(ValueError, match="does not resize"):
        dec(y_hat, (4, 4))


def _backbone_features(inputs, h, w, b=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, c, _ceil(h, s), _ceil(w, s), generator=g) for k, (c, s) in inputs.items()}


def _run_cnn_embedding(emb, dec, y_hat, feats, h, w):
    d = dec(y_hat, (_ceil(h, 4), _ceil(w, 4)))
    outs = {}
    for name in emb.stage_names:
        d = emb.transform(name, d)
        assert d.shape[-2:] == feats[name].shape[-2:], name
        outs[name] = emb.embed(name, feats[name], d)
    return outs


@pytest.mark.parametrize("inputs", [R50_INPUTS, R18_INPUTS], ids=["R50", "R18"])
@pytest.mark.parametrize("hw", [(64, 96), (70, 50)])
def test_cnn_embedding_identity_at_init_then_not(inputs, hw):
    h, w = hw
    cfg = _cfg()
    emb, dec = DistortionEmbedding(cfg, _shapes(inputs)), DistortionDecoder(cfg)
    y_hat = binarize(torch.randn(1, 6, _ceil(h, 32), _ceil(w, 32)))
    feats = _backbone_features(inputs, h, w)
    outs = _run_cnn_embedding(emb, dec, y_hat, feats, h, w)
    assert all(torch.equal(outs[n], feats[n]) for n in feats)  # bit-exact identity
    with torch.no_grad():
        for fusion in emb.fusions.values():
            fusion.proj.weight.normal_(std=0.1)
    outs = _run_cnn_embedding(emb, dec, y_hat, feats, h, w)
    assert all(outs[n].shape == feats[n].shape and not torch.equal(outs[n], feats[n]) for n in feats)


def test_cnn_embedding_transform_strides_follow_backbone():
    emb = DistortionEmbedding(_cfg(), _shapes(R50_INPUTS))
    strides = [emb.transforms[n][0].stride[0] for n in emb.stage_names]
    assert strides == [1, 1, 2, 2]
    out_channels = [emb.transforms[n][0].out_channels for n in emb.stage_names]
    assert out_channels == [16, 64, 128, 256]
    with pytest.raises(KeyError, match="not embedded"):
        emb.transform("res6", torch.zeros(1, 16, 4, 4))


def test_cnn_embedding_trains_from_identity():
    h, w = 64, 96
    cfg = _cfg()
    emb, dec = DistortionEmbedding(cfg, _shapes(R18_INPUTS)), DistortionDecoder(cfg)
    feats = _backbone_features(R18_INPUTS, h, w)
    outs = _run_cnn_embedding(emb, dec, binarize(torch.randn(1, 6, 2, 3)), feats, h, w)
    sum(o.square().mean() for o in outs.values()).backward()
    assert all(f.proj.weight.grad.abs().sum() > 0 for f in emb.fusions.values())


@pytest.mark.parametrize("layout", ["tokens", "nchw"])
def test_cross_attention_embedding_identity_at_init_then_not(layout):
    shapes = {k: ShapeSpec(channels=c) for k, c in SWIN_T.items()}
    emb = CrossAttentionEmbedding(_cfg(), shapes)
    tokens = TokenDistortionDecoder(_cfg())(binarize(torch.randn(2, 6, 3, 2)))
    g = torch.Generator().manual_seed(0)
    feats = {}
    for i, (name, c) in enumerate(SWIN_T.items()):
        hh, ww = 12 // 2**i, 8 // 2**i
        shape = (2, hh * ww, c) if layout == "tokens" else (2, c, hh, ww)
        feats[name] = torch.randn(*shape, generator=g)

    def run():
        d, outs = tokens, {}
        for name in emb.stage_names:
            outs[name], d = emb(name, feats[name], d)
            assert d.shape == (2, 6, SWIN_T[name])
        return outs

    outs = run()
    assert all(torch.equal(outs[n], feats[n]) for n in feats)
    with torch.no_grad():
        for fusion in emb.fusions.values():
            fusion.out.weight.normal_(std=0.1)
    outs = run()
    assert all(outs[n].shape == feats[n].shape and not torch.equal(outs[n], feats[n]) for n in feats)


def test_cosine_loss_values():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(2, 16, 5, 7, generator=g), torch.randn(2, 16, 3, 4, generator=g)]
    assert torch.allclose(cdre_cosine_loss(a, a), torch.tensor(4.0))  # 2 per scale
    assert torch.allclose(cdre_cosine_loss(a, [-t for t in a]), torch.tensor(0.0), atol=1e-6)
    e0, e1 = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    e0[:, 0], e1[:, 1] = 1.0, 1.0
    assert torch.allclose(cdre_cosine_loss([e0], [e1]), torch.tensor(1.0))  # orthogonal
    weighted = CDRECosineLoss(_cfg(COSINE_WEIGHT=0.5))(a, a)
    assert list(weighted) == ["loss_cdre_cosine"] and torch.allclose(weighted["loss_cdre_cosine"], torch.tensor(2.0))
    assert CDRECosineLoss(_cfg(USE_COSINE=False))(a, a) == {}
    with pytest.raises(ValueError):
        cdre_cosine_loss(a, a[:1])


def test_cosine_loss_trains_extractor():
    cfg = _cfg()
    side = CDREEncoderSide(cfg)
    out = side(*_images(32, 48))
    loss = CDRECosineLoss(cfg)(out.feats_o, out.feats_c)["loss_cdre_cosine"]
    loss.backward()
    assert side.extractor.blocks[0][0].weight.grad.abs().sum() > 0


def test_ablation_modulation_vs_concatenation():
    with_mod = DistortionEncoder(_cfg())
    kinds = {type(m) for m in with_mod.conditioning.values()}
    assert kinds == {LinearModulation} and len(with_mod.conditioning) == 3
    concat = DistortionEncoder(_cfg(USE_MODULATION=False))
    assert not any(isinstance(m, LinearModulation) for m in concat.modules())
    assert {type(m) for m in concat.conditioning.values()} == {ConcatFusion}
    side = CDREEncoderSide(_cfg(USE_MODULATION=False))
    assert side(*_images(64, 64)).y.shape == (1, 6, 2, 2)
    # per modulated block: alpha and beta convs (2 x (2*16 -> 4)) vs one conv (4 + 2*16 -> 4)
    assert _params(with_mod) - _params(concat) == 3 * (2 * (32 * 4 + 4) - (36 * 4 + 4))


def test_ablation_constant_representation_sends_no_information():
    """Same modules and cosine loss, but y_hat is all zeros whatever the frames."""
    side = CDREEncoderSide(_cfg(CONSTANT_REPRESENTATION=True))
    assert _params(side) == _params(CDREEncoderSide(_cfg()))
    out = side(*_images(64, 96))
    assert out.y.abs().sum() > 0 and out.y_hat.shape == out.y.shape
    assert torch.count_nonzero(out.y_hat) == 0
    loss = CDRECosineLoss(_cfg())(out.feats_o, out.feats_c)["loss_cdre_cosine"]
    loss.backward()  # the extractor still trains through eq. 8
    assert side.extractor.blocks[0][0].weight.grad.abs().sum() > 0


def test_ablation_single_scale():
    cfg = _cfg(MULTI_SCALE=False)
    side = CDREEncoderSide(cfg)
    out = side(*_images(64, 96))
    assert len(out.feats_o) == 1 and out.feats_o[0].shape[-2:] == (8, 12)  # last scale, 1/8
    assert list(side.encoder.conditioning) == ["2"]
    assert side.extractor.used_strides == (8,)
    full = CDREEncoderSide(_cfg())
    assert _params(side) < _params(full)


def test_ablation_number_of_embedded_stages():
    cfg = _cfg(EMBED_STAGES=["res2", "res3"], STAGE_CHANNELS=[16, 64])
    emb = DistortionEmbedding(cfg, _shapes(R50_INPUTS))
    assert emb.stage_names == ("res2", "res3") and set(emb.fusions) == {"res2", "res3"}
    full = DistortionEmbedding(_cfg(), _shapes(R50_INPUTS))
    kept = sum(_params(full.transforms[n]) + _params(full.fusions[n]) for n in ("res2", "res3"))
    assert _params(emb) == kept < _params(full)  # exactly the res4/res5 blocks are gone
    with pytest.raises(ValueError, match="one width per EMBED_STAGES"):
        DistortionEmbedding(_cfg(EMBED_STAGES=["res2"]), _shapes(R50_INPUTS))
    with pytest.raises(ValueError, match="not in the backbone"):
        DistortionEmbedding(_cfg(), _shapes({"res2": (64, 4)}))
    with pytest.raises(ValueError, match="stride ratios"):
        DistortionEmbedding(
            _cfg(EMBED_STAGES=["res2", "res5"], STAGE_CHANNELS=[16, 256]), _shapes(R50_INPUTS)
        )


def test_encoder_rejects_mismatched_features():
    enc = DistortionEncoder(_cfg())
    x, xh = _images(64, 64)
    f = [torch.zeros(1, 16, 32, 32)] * 2
    with pytest.raises(ValueError, match="expected 3 extractor features"):
        enc(x, xh, f, f)
    with pytest.raises(ValueError, match="do not match"):
        enc(x, xh, [torch.zeros(1, 16, 5, 5)] * 3, [torch.zeros(1, 16, 5, 5)] * 3)


def test_size_budgets():
    """Lightweight encoder side (paper: 18K params) and a CNN version of the paper's order (1.9M)."""
    cfg = _cfg()
    side = CDREEncoderSide(cfg)
    assert 5_000 < _params(side) < 25_000
    total = _params(side) + _params(DistortionDecoder(cfg)) + _params(DistortionEmbedding(cfg, _shapes(R50_INPUTS)))
    assert 1.5e6 < total < 3.0e6
    assert math.isclose(_params(side.extractor), 3 * 16 * 9 + 16 + 2 * (16 * 16 * 9 + 16) + 3 * 2 * 16)
