"""TransVFC video feature codec: shapes, rates vs bitstreams, bit-exact decoding, gradients,
ablations, losses and the Table 1 schedule. CPU, tiny features."""
import inspect
import math

import pytest
import torch
from detectron2.config import get_cfg

from vcm_d2.config import add_vcm_config
from vcm_d2.modeling.transvfc import (
    CODEC_STAGES,
    LIKELIHOOD_KEYS,
    RECORD_STRINGS,
    CodecLossWeights,
    TransVFCCodec,
    add_transvfc_config,
    codec_loss,
    latent_bpp,
    record_num_bits,
    stage_for_iter,
)
from vcm_d2.modeling.transvfc.entropy import HyperpriorEntropyModel
from vcm_d2.modeling.transvfc.inter_prediction import SchemeCompensation, WarpingCompensation

from transvfc_helpers import TinyPerception

PERCEPTION_CH = 16
# Narrow widths so most tests run in well under a second per call.
NARROW = dict(
    reduced_channels=16, reduction_res_blocks=1, motion_estimation_channels=16,
    motion_channels=16, motion_latent_channels=16, hyper_channels=16, hidden_channels=32,
    residual_latent_channels=24, intra_latent_channels=24, condition_channels=8,
    perception_channels=PERCEPTION_CH, temporal_prior_channels=32,
    entropy_parameter_channels=32,
)
WEIGHTS = CodecLossWeights(lambda_r=32.0, lambda_f=16.0, lambda_c=1.6, lambda_p=4.0)


def _features(n, h, w, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 256, h, w, generator=g)
    # a slowly drifting sequence, so P-frames have something to predict
    return [base + 0.1 * t * torch.randn(batch, 256, h, w, generator=g) for t in range(n)]


def _codec(**overrides):
    torch.manual_seed(0)
    return TransVFCCodec(**{**NARROW, **overrides})


@pytest.fixture(scope="module")
def perception():
    torch.manual_seed(1)
    return TinyPerception(256, PERCEPTION_CH)


# ------------------------------------------------------------------------------ config
def test_config_defaults_match_constructor_defaults():
    cfg = get_cfg()
    add_vcm_config(cfg)
    add_transvfc_config(cfg)
    add_transvfc_config(cfg)  # idempotent
    from_cfg = TransVFCCodec.from_config(cfg)
    params = inspect.signature(TransVFCCodec.__init__).parameters
    for key, value in from_cfg.items():
        default = params[key].default
        assert (tuple(value) if isinstance(value, (list, tuple)) else value) == \
               (tuple(default) if isinstance(default, (list, tuple)) else default), key
    assert cfg.MODEL.VCM.TRANSVFC.NUM_SCHEMES * cfg.MODEL.VCM.TRANSVFC.REDUCED_CHANNELS == 1024
    w = CodecLossWeights.from_config(cfg)
    assert w.lambda_c == pytest.approx(0.1 * w.lambda_f) and w.lambda_p == 4.0


def test_config_needs_vcm_node():
    with pytest.raises(ValueError, match="MODEL.VCM"):
        add_transvfc_config(get_cfg())


def test_build_from_config_with_ablation():
    cfg = get_cfg()
    add_vcm_config(cfg)
    add_transvfc_config(cfg)
    cfg.MODEL.VCM.TRANSVFC.USE_SCHEME_PREDICTION = False
    codec = TransVFCCodec(cfg)
    assert isinstance(codec.inter_prediction.motion_compensation, WarpingCompensation)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="SCHEME_EXPANSIONS"):
        _codec(num_schemes=16, scheme_expansions=(4, 2))
    with pytest.raises(ValueError, match="TRAIN_QUANTIZATION"):
        _codec(train_quantization="round")
    with pytest.raises(ValueError, match="GOP"):
        _codec(gop=0)


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("size", [(16, 24), (15, 21), (1, 3)])
def test_latent_shapes_and_forward_shapes(size, perception):
    codec = _codec()
    h, w = size
    assert codec.pad_multiple == 16  # latent stride 4 x hyper-latent stride 4
    shapes = codec.latent_shapes(h, w)
    ph, pw = math.ceil(h / 16) * 16, math.ceil(w / 16) * 16
    assert shapes["r_y"] == (ph // 4, pw // 4) and shapes["m_z"] == (ph // 16, pw // 16)
    feats = _features(3, h, w)
    out = codec(feats, perception)
    assert out["frame_types"] == ["I", "P", "P"]
    assert out["num_pixels"] == h * 4 * w * 4
    assert [tuple(f.shape) for f in out["f_hat"]] == [(1, 256, h, w)] * 3
    counts = {"i": 1, "m": 2, "r": 2}
    channels = {"i_y": 24, "m_y": 16, "r_y": 24, "i_z": 16, "m_z": 16, "r_z": 16}
    for key in LIKELIHOOD_KEYS:
        liks = out["likelihoods"][key]
        assert len(liks) == counts[key[0]]
        for lik in liks:
            assert tuple(lik.shape) == (1, channels[key], *shapes[key])
            assert bool(((lik > 0) & (lik <= 1)).all())
    assert out["compensated"][0] is None and out["compensated"][1].shape == (1, 256, h, w)
    assert set(out["conditions"][1]) == {"enc", "dec"}


def test_gop_structure():
    codec = _codec(gop=2, use_perception_condition=False)
    assert [codec.frame_type(t) for t in range(5)] == ["I", "P", "I", "P", "I"]
    out = codec(_features(4, 8, 8))
    assert out["frame_types"] == ["I", "P", "I", "P"]
    assert len(out["likelihoods"]["i_y"]) == 2 and len(out["likelihoods"]["r_y"]) == 2


def test_default_widths_forward_backward(perception):
    """Default (paper) widths: shapes, and every trainable module receives a gradient."""
    torch.manual_seed(0)
    codec = TransVFCCodec(perception_channels=PERCEPTION_CH)
    assert codec.inter_prediction.motion_compensation.num_schemes == 16
    feats = _features(3, 16, 24)
    out = codec(feats, perception)
    assert tuple(out["likelihoods"]["r_y"][0].shape) == (1, 96, 4, 8)
    assert tuple(out["likelihoods"]["m_y"][0].shape) == (1, 64, 4, 8)
    assert tuple(out["likelihoods"]["r_z"][0].shape) == (1, 64, 1, 2)
    losses, stats = codec_loss(out, feats, WEIGHTS, perception=perception,
                               pad_multiple=codec.pad_multiple)
    sum(losses.values()).backward()
    _assert_all_gradients(codec)
    codec.aux_loss().backward()
    assert all(p.grad is not None for n, p in codec.named_parameters() if n.endswith("quantiles"))


def _assert_all_gradients(codec):
    missing = [n for n, p in codec.named_parameters()
               if not n.endswith("quantiles")  # EntropyBottleneck quantiles: aux loss only
               and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert not missing, f"no gradient reaches: {missing}"


# ------------------------------------------------------------------------------ coding
@pytest.mark.parametrize("size", [(15, 21), (16, 24)])
def test_compress_decompress_bit_exact(size, perception):
    codec = _codec().eval()
    codec.update(force=True)
    feats = _features(3, *size)
    records, encoded = codec.compress(feats, perception)
    assert [r["type"] for r in records] == ["I", "P", "P"]
    assert all(tuple(r["shape"]) == size for r in records)
    for r in records:
        assert len(r["strings"]) == len(RECORD_STRINGS[r["type"]])
        assert all(isinstance(s, bytes) for latent in r["strings"] for s in latent)
    decoded = codec.decompress(records, perception)
    for enc, dec in zip(encoded, decoded):
        assert enc.shape == (1, 256, *size)
        assert torch.equal(enc, dec)
    # eval-mode forward (rounding) reconstructs exactly what the bitstream does
    with torch.no_grad():
        est = codec(feats, perception)
    for a, b in zip(est["f_hat"], decoded):
        assert torch.equal(a, b)
    # the P chain depends on the decoded reference: a wrong one gives another feature
    _, ref_i = codec.decompress_frame(records[0], perception)
    good, ref_p = codec.decompress_frame(records[1], perception, ref_i)
    assert torch.equal(good, decoded[1])
    wrong, _ = codec.decompress_frame(records[2], perception, ref_i)
    assert not torch.equal(wrong, decoded[2])
    right, _ = codec.decompress_frame(records[2], perception, ref_p)
    assert torch.equal(right, decoded[2])


def test_encoder_without_restoration_writes_the_same_stream(perception):
    """``restore=False`` (an encoder that only writes the stream) skips R^-1 of the decoded
    feature: identical records and references, no decoded feature."""
    codec = _codec().eval()
    codec.update(force=True)
    feats = _features(3, 16, 24)
    records, _ = codec.compress(feats, perception)
    reference = None
    for t, feature in enumerate(feats):
        record, decoded, reference = codec.compress_frame(
            feature, perception, None if t == 0 else reference, restore=False)
        assert decoded is None and record == records[t]


def test_compress_batch_of_two(perception):
    codec = _codec().eval()
    codec.update(force=True)
    feats = _features(2, 8, 12, batch=2)
    records, encoded = codec.compress(feats, perception)
    assert all(len(latent) == 2 for r in records for latent in r["strings"])
    decoded = codec.decompress(records, perception)
    assert all(torch.equal(a, b) for a, b in zip(encoded, decoded))


def test_state_dict_round_trip_decodes(tmp_path, perception):
    """Entropy-coder tables (CompressAI buffers) survive save/load: a fresh codec decodes."""
    codec = _codec().eval()
    codec.update(force=True)
    feats = _features(2, 8, 12)
    records, encoded = codec.compress(feats, perception)
    path = tmp_path / "codec.pth"
    torch.save(codec.state_dict(), path)
    fresh = TransVFCCodec(**NARROW).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    decoded = fresh.decompress(records, perception)
    assert all(torch.equal(a, b) for a, b in zip(encoded, decoded))


def _calibrate_scales(codec, scale):
    """Random-init hyper synthesis predicts scales ~0 (clipped to the 0.11 bound, where the
    discrete tables and the continuous likelihood differ most); set them to ``scale``."""
    with torch.no_grad():
        for m in codec.modules():
            if isinstance(m, HyperpriorEntropyModel):
                last = (m.entropy_parameters or m.hyper_synthesis)[-1]
                last.weight[: m.latent_ch].zero_()
                last.bias[: m.latent_ch].fill_(scale)


def test_rate_estimate_matches_bitstream(perception):
    codec = _codec().eval()
    _calibrate_scales(codec, 3.0)
    codec.update(force=True)
    feats = _features(3, 64, 96)
    records, _ = codec.compress(feats, perception)
    with torch.no_grad():
        out = codec(feats, perception)
    bpp = latent_bpp(out)
    actual = dict.fromkeys(LIKELIHOOD_KEYS, 0)
    for r in records:
        for key, latent in zip(RECORD_STRINGS[r["type"]], r["strings"]):
            actual[key] += 8 * sum(len(s) for s in latent)
    frames_pixels = len(feats) * out["num_pixels"]
    for key in LIKELIHOOD_KEYS:
        estimated = float(bpp[key]) * frames_pixels
        assert estimated > 500, key  # enough symbols for the per-string overhead to be small
        assert actual[key] == pytest.approx(estimated, rel=0.03), key
    total = sum(record_num_bits(r) for r in records)
    assert total == sum(actual.values())
    assert float(sum(bpp.values())) * frames_pixels == pytest.approx(total, rel=0.03)


def test_record_and_reference_errors(perception):
    codec = _codec().eval()
    codec.update(force=True)
    feats = _features(2, 8, 8)
    records, _ = codec.compress(feats, perception)
    with pytest.raises(ValueError, match="reference"):
        codec.decompress_frame(records[1], perception)
    with pytest.raises(ValueError, match="type"):
        codec.decompress_frame({**records[0], "type": "B"}, perception)
    with pytest.raises(ValueError, match="string lists"):
        codec.decompress_frame({**records[1], "strings": records[1]["strings"][:2]},
                               perception, torch.zeros(1, 16, 16, 16))
    with pytest.raises(ValueError, match="reference size"):
        codec.decompress_frame(records[1], perception, torch.zeros(1, 16, 32, 32))
    with pytest.raises(ValueError, match="256"):
        codec.compress([torch.zeros(1, 64, 8, 8)], perception)
    with pytest.raises(ValueError, match="one shape"):
        codec([torch.zeros(1, 256, 8, 8), torch.zeros(1, 256, 8, 16)], perception)
    with pytest.raises(ValueError, match="perception callable"):
        codec(feats, None)
    with pytest.raises(ValueError, match="lacks levels"):
        codec(feats, lambda x: {"p2": perception(x)["p2"]})


# ------------------------------------------------------------------------------ ablations
@pytest.mark.parametrize("scheme,condition", [(False, True), (True, False), (False, False)])
def test_ablations_train_and_code(scheme, condition, perception):
    codec = _codec(use_scheme_prediction=scheme, use_perception_condition=condition)
    feats = _features(3, 15, 21)
    pn = perception if condition else None
    out = codec(feats, pn)
    if not condition:
        assert out["conditions"][1] is None
        assert codec.conditional_coding.condition_enc is None
    weights = CodecLossWeights(32.0, 16.0, 1.6, 4.0, use_perception_loss=False)
    losses, stats = codec_loss(out, feats, weights)
    assert "loss_perception" not in losses and "d_p" not in stats
    sum(losses.values()).backward()
    _assert_all_gradients(codec)
    codec.eval().update(force=True)
    records, encoded = codec.compress(feats, pn)
    decoded = codec.decompress(records, pn)
    assert all(torch.equal(a, b) for a, b in zip(encoded, decoded))


def test_warping_with_zero_offsets_is_identity():
    warp = WarpingCompensation(motion_ch=4, width=8)
    with torch.no_grad():
        warp.offset[-1].weight.zero_()
        warp.offset[-1].bias.zero_()
    f_ref = torch.randn(2, 5, 7, 9)
    out = warp(f_ref, torch.randn(2, 4, 7, 9))
    assert torch.allclose(out, f_ref, atol=1e-5)
    with torch.no_grad():
        warp.offset[-1].bias.copy_(torch.tensor([1.0, 0.0]))  # shift by one pixel in x
    out = warp(f_ref, torch.randn(2, 4, 7, 9))
    assert torch.allclose(out[..., :-1], f_ref[..., 1:], atol=1e-5)


def test_scheme_compensation_builds_all_schemes():
    mc = SchemeCompensation(feat_ch=4, motion_ch=3, expansions=(2, 4), combine_kernel=7)
    assert mc.num_schemes == 8
    assert mc.motion_to_weights.out_channels == 32 and mc.combine.kernel_size == (7, 7)
    out = mc(torch.randn(1, 4, 6, 6), torch.randn(1, 3, 6, 6))
    assert out.shape == (1, 4, 6, 6)
    # motion that selects no scheme (all weights 0) leaves only the combine bias
    with torch.no_grad():
        mc.motion_to_weights.bias.zero_()
    out0 = mc(torch.randn(1, 4, 6, 6), torch.zeros(1, 3, 6, 6))
    assert torch.allclose(out0, mc.combine.bias.view(1, -1, 1, 1).expand_as(out0))


def test_scheme_compensation_separable_combine():
    """"separable": depthwise k x k per selected scheme, then 1x1 to C: far fewer weights."""
    dense = SchemeCompensation(feat_ch=64, motion_ch=8, expansions=(4, 4), combine_kernel=7)
    sep = SchemeCompensation(feat_ch=64, motion_ch=8, expansions=(4, 4), combine_kernel=7,
                             combine="separable")
    n_dense = sum(p.numel() for p in dense.combine.parameters())
    n_sep = sum(p.numel() for p in sep.combine.parameters())
    assert n_dense == 1024 * 64 * 49 + 64 and n_sep == 1024 * 49 + 1024 + 1024 * 64 + 64
    assert sep(torch.randn(1, 64, 6, 6), torch.randn(1, 8, 6, 6)).shape == (1, 64, 6, 6)
    with pytest.raises(ValueError, match="SCHEME_COMBINE"):
        SchemeCompensation(feat_ch=4, motion_ch=3, expansions=(2,), combine_kernel=7, combine="x")


def test_separable_combine_codes_bit_exactly(perception):
    codec = _codec(scheme_combine="separable").eval()
    codec.update(force=True)
    feats = _features(3, 15, 21)
    records, encoded = codec.compress(feats, perception)
    decoded = codec.decompress(records, perception)
    assert all(torch.equal(a, b) for a, b in zip(encoded, decoded))


# ------------------------------------------------------------------------------ losses
def test_stage_schedule_table1():
    ends = [10, 20, 30, 40, 50]
    assert [stage_for_iter(i, ends).index for i in (0, 9, 10, 29, 45, 49, 50, 999)] == \
           [1, 1, 2, 3, 5, 5, 5, 5]
    assert stage_for_iter(0, ends).rate_latents == ("y",)
    assert [s.rate_scale for s in CODEC_STAGES] == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert [s.base_lr for s in CODEC_STAGES] == [1e-4, 1e-4, 1e-4, 5e-5, 1e-5]
    with pytest.raises(ValueError, match="increasing"):
        stage_for_iter(0, [10, 10, 30, 40, 50])
    with pytest.raises(ValueError, match="5 stage ends"):
        stage_for_iter(0, [10, 20])


def test_codec_loss_terms_follow_the_stage(perception):
    codec = _codec()
    feats = _features(2, 8, 8)
    torch.set_grad_enabled(False)  # values only; restored below
    try:
        _check_codec_loss_terms(codec, feats, perception)
    finally:
        torch.set_grad_enabled(True)


def _check_codec_loss_terms(codec, feats, perception):
    out = codec(feats, perception)
    bpp = latent_bpp(out)
    kw = dict(perception=perception, pad_multiple=codec.pad_multiple)
    l1, s1 = codec_loss(out, feats, WEIGHTS, stage=CODEC_STAGES[0], **kw)
    l2, _ = codec_loss(out, feats, WEIGHTS, stage=CODEC_STAGES[1], **kw)
    l5, s5 = codec_loss(out, feats, WEIGHTS, **kw)
    y_rate = float(bpp["i_y"] + bpp["m_y"] + bpp["r_y"])
    all_rate = float(sum(bpp.values()))
    assert float(l1["loss_rate"]) == pytest.approx(0.5 * 32.0 * y_rate, rel=1e-5)
    assert float(l2["loss_rate"]) == pytest.approx(0.5 * 32.0 * all_rate, rel=1e-5)
    assert float(l5["loss_rate"]) == pytest.approx(32.0 * all_rate, rel=1e-5)
    assert float(s5["bpp"]) == pytest.approx(all_rate, rel=1e-5)
    d_f = sum(torch.mean((a - b) ** 2) for a, b in zip(out["f_hat"], feats)) / 2
    assert float(l5["loss_feature"]) == pytest.approx(16.0 * float(d_f), rel=1e-5)
    d_c = torch.mean((out["compensated"][1] - feats[1]) ** 2)
    assert float(l5["loss_compensation"]) == pytest.approx(1.6 * float(d_c), rel=1e-5)
    assert float(l5["loss_perception"]) > 0 and set(l1) == set(l5)
    # a perfect reconstruction has no feature / perception distortion
    perfect = {**out, "f_hat": [f.clone() for f in feats]}
    l0, _ = codec_loss(perfect, feats, WEIGHTS, **kw)
    assert float(l0["loss_feature"]) == 0 and float(l0["loss_perception"]) == 0
    with pytest.raises(ValueError, match="perception callable"):
        codec_loss(out, feats, WEIGHTS)
