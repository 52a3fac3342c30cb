"""CDRE as detectron2 components: backbone wrappers, CDRERCNN, CDREPredictor and the configs.

Checkpoint compatibility with plain detectors, bit-exact identity at init, identical
predictions from the original and from the side stream, per-video side streams (CDRERCNN and
VideoPredictor), rate reporting, training, freezing, the C4 variant and the error paths.
"""
import glob
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

from config_helpers import load_cfg
from vcm_d2.data.synthetic import KEYPOINT_OKS_SIGMAS
from vcm_d2.engine import VCMTrainer, VideoPredictor
from vcm_d2.modeling.cdre import (
    CDREDecoderSide,
    CDREPredictor,
    CDREResNet,
    CrossAttentionEmbedding,
    TokenDistortionDecoder,
    decode_side_stream,
    encode_side_stream,
    parse_side_stream_header,
    read_video_side_stream,
)
from vcm_d2.modeling.cdre.backbone import stage_input_shapes
from vcm_d2.modeling.cdre.embedding import AttentionFusion, CrossAttentionFusion
from vcm_d2.modeling.cdre.video_side_stream import VIDEO_MAGIC

# Tiny CPU models: one torch thread avoids thread contention (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
SLIM_PLAIN = os.path.join(CONFIGS, "synthetic", "faster_rcnn_R18_slim.yaml")
SLIM_OURS = os.path.join(CONFIGS, "synthetic", "cdre_faster_rcnn_R18_slim_ours.yaml")
# The Transformer version (eq. 7) in a tiny Swin Mask R-CNN, and its plain detector.
SWIN_PLAIN = os.path.join(CONFIGS, "synthetic", "cdre_mask_rcnn_swin_tiny_slim_direct.yaml")
SWIN_OURS = os.path.join(CONFIGS, "synthetic", "cdre_mask_rcnn_swin_tiny_slim_ours.yaml")
# (plain, CDRE) config pairs of the CNN and the Transformer version.
PAIRS = {"R18": (SLIM_PLAIN, SLIM_OURS), "swin": (SWIN_PLAIN, SWIN_OURS)}
# Parameter-name prefixes of the CDRE modules (FPN models; C4 models use "backbone.cdre").
CDRE_PREFIXES_FPN = ("cdre_encoder.", "backbone.bottom_up.cdre.")
CDRE_PREFIXES_C4 = ("cdre_encoder.", "backbone.cdre.")
SIZES = [(96, 128), (97, 131)]  # one multiple of 32 and one odd size
LATENT = 6
STRIDE = 32


def _cfg(path=SLIM_OURS, *opts):
    return load_cfg(path, *opts)


def _ceil(n, s=STRIDE):
    return -(-n // s)


def _is_cdre(name):
    return name.startswith(CDRE_PREFIXES_FPN + CDRE_PREFIXES_C4)


def _gt(cfg, h, w, g):
    boxes = torch.tensor([[8.0, 10.0, 60.0, 70.0], [40.0, 30.0, 90.0, 85.0]])
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([0, min(1, cfg.MODEL.ROI_HEADS.NUM_CLASSES - 1)])
    if cfg.MODEL.MASK_ON:
        masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
    if cfg.MODEL.KEYPOINT_ON:
        k = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        lo, hi = boxes[:, None, :2], boxes[:, None, 2:]
        xy = lo + torch.rand(len(boxes), k, 2, generator=g) * (hi - lo)
        inst.gt_keypoints = Keypoints(torch.cat([xy, torch.full((len(boxes), k, 1), 2.0)], dim=2))
    return inst


def _inputs(sizes=SIZES, seed=0, cfg=None, original=True):
    """Compressed-like "image" and its "original" (the image plus noise), CHW uint8 as
    PairDatasetMapper gives them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        orig = torch.randint(0, 256, (3, h, w), generator=g).float()
        img = (orig + 25 * torch.randn(3, h, w, generator=g)).clamp(0, 255).round().to(torch.uint8)
        orig = orig.to(torch.uint8)
        d = {"image": img, "height": h, "width": w}
        if original:
            d["original"] = orig
        if cfg is not None:
            d["instances"] = _gt(cfg, h, w, g)
        out.append(d)
    return out


def _activate_embedding(model, seed=0, std=0.05):
    """Give the zero-initialised fusion projections random weights, so y_hat changes outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AttentionFusion):
                m.proj.weight.copy_(torch.randn(m.proj.weight.shape, generator=g) * std)
            elif isinstance(m, CrossAttentionFusion):
                m.out.weight.copy_(torch.randn(m.out.weight.shape, generator=g) * std)
    return model


def _assert_same_predictions(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        ia, ib = x["instances"], y["instances"]
        assert len(ia) > 0
        assert torch.equal(ia.pred_boxes.tensor, ib.pred_boxes.tensor)
        assert torch.equal(ia.scores, ib.scores)
        assert torch.equal(ia.pred_classes, ib.pred_classes)
        assert ia.has("pred_masks") == ib.has("pred_masks")
        if ia.has("pred_masks"):
            assert torch.equal(ia.pred_masks, ib.pred_masks)


def _plain_and_cdre(plain_path, cdre_path, *opts):
    """(plain detector, CDRE detector with the plain weights), both in eval mode."""
    torch.manual_seed(0)
    plain = VCMTrainer.build_model(_cfg(plain_path)).eval()
    cdre = VCMTrainer.build_model(_cfg(cdre_path, *opts)).eval()
    missing, unexpected = cdre.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(_is_cdre(k) for k in missing)
    return plain, cdre


@pytest.fixture(scope="module")
def slim_pair():
    """The slim R18 pair, CDRE with OUTPUT_SIDE_STREAM."""
    return _plain_and_cdre(SLIM_PLAIN, SLIM_OURS, "MODEL.VCM.CDRE.OUTPUT_SIDE_STREAM", True)


# ---------------------------------------------------------------------------- checkpoints
# First parameter of each bottom-up network, as detectron2 names it.
BOTTOM_UP_FIRST = {"R_50": "backbone.bottom_up.stem.conv1.weight",
                   "swin_T": "backbone.bottom_up.patch_embed.proj.weight"}


@pytest.mark.parametrize("model_name", ["faster_rcnn_R_50", "keypoint_rcnn_R_50", "mask_rcnn_R_50", "mask_rcnn_swin_T"])
def test_coco_checkpoint_loads_with_only_cdre_missing(model_name, tmp_path):
    torch.manual_seed(0)
    plain = VCMTrainer.build_model(_cfg(os.path.join(CONFIGS, "CDRE", f"{model_name}_FPN_direct.yaml")))
    model = VCMTrainer.build_model(_cfg(os.path.join(CONFIGS, "CDRE", f"{model_name}_FPN_ours.yaml")))
    plain_sd, model_sd = plain.state_dict(), model.state_dict()
    first = BOTTOM_UP_FIRST[model_name.split("rcnn_")[1]]
    assert first in model_sd and "backbone.fpn_lateral2.weight" in model_sd
    assert not set(plain_sd) - set(model_sd)  # every detector parameter keeps its name
    cdre_keys = set(model_sd) - set(plain_sd)
    assert cdre_keys and all(k.startswith(CDRE_PREFIXES_FPN) for k in cdre_keys)
    cdre_before = {k: model_sd[k].clone() for k in cdre_keys}
    # A detectron2 model-zoo style pickle (numpy arrays, matching heuristics on) and a .pth.
    pkl = tmp_path / "model_zoo.pkl"
    with open(pkl, "wb") as f:
        zoo = {"model": {k: v.numpy() for k, v in plain_sd.items()}, "__author__": "Detectron2 Model Zoo"}
        pickle.dump(zoo, f)
    torch.save({"model": plain_sd}, tmp_path / "plain.pth")
    for path in (pkl, tmp_path / "plain.pth"):
        DetectionCheckpointer(model).load(str(path))
        loaded = model.state_dict()
        for k, v in plain_sd.items():
            assert torch.equal(loaded[k], v), k
        for k, v in cdre_before.items():  # nothing from the checkpoint went into CDRE modules
            assert torch.equal(loaded[k], v), k


# ---------------------------------------------------------------------------- identity
@pytest.mark.parametrize("version", sorted(PAIRS))
def test_identity_at_init_is_bit_exact(version):
    plain, cdre = _plain_and_cdre(*PAIRS[version])
    inputs = _inputs()
    with torch.no_grad():
        out_plain = plain([{k: v for k, v in d.items() if k != "original"} for d in inputs])
        out_cdre = cdre(inputs)
        images = plain.preprocess_image(inputs)
        f_plain = plain.backbone(images.tensor)
        y_hat, _, _ = cdre._side_information(inputs, images, use_streams=False)
        f_cdre = cdre.backbone(images.tensor, y_hat=y_hat)
    assert y_hat.abs().sum() > 0  # a real map went in, and still changed nothing
    for k in f_plain:
        assert torch.equal(f_plain[k], f_cdre[k]), k
    _assert_same_predictions(out_plain, out_cdre)


# ---------------------------------------------------------------------------- side streams
@pytest.fixture(scope="module", params=sorted(PAIRS))
def active_model(request):
    """A CDRE model of each version whose embedding changes the features."""
    torch.manual_seed(1)
    cfg = _cfg(PAIRS[request.param][1], "MODEL.VCM.CDRE.OUTPUT_SIDE_STREAM", True)
    return cfg, _activate_embedding(VCMTrainer.build_model(cfg).eval())


def test_original_path_equals_bitstream_path(active_model):
    _, model = active_model
    inputs = _inputs(seed=3)
    with torch.no_grad():
        from_original = model(inputs)
        streams = [o["cdre_bits"] for o in from_original]
        from_bits = model([{"image": d["image"], "height": d["height"], "width": d["width"], "cdre_bits": s}
                           for d, s in zip(inputs, streams)])
        # the side information matters: another valid map gives other predictions
        other = [encode_side_stream(torch.ones(LATENT, _ceil(h), _ceil(w))) for h, w in SIZES]
        from_other = model([{"image": d["image"], "cdre_bits": s} for d, s in zip(inputs, other)])
    _assert_same_predictions(from_original, from_bits)
    assert not torch.equal(from_original[0]["instances"].scores, from_other[0]["instances"].scores)
    for (h, w), out, stream in zip(SIZES, from_original, streams):
        assert isinstance(stream, bytes)
        assert out["side_bits"] == 8 * len(stream)
        assert parse_side_stream_header(stream).shape == (LATENT, _ceil(h), _ceil(w))
    for out, stream in zip(from_bits, streams):
        assert out["side_bits"] == 8 * len(stream) and out["cdre_bits"] == stream


def test_side_stream_depends_only_on_its_image(active_model):
    _, model = active_model
    inputs = _inputs(seed=4)
    batch = model.encode_side_streams(inputs)
    alone = [model.encode_side_streams([d])[0] for d in inputs]
    assert batch == alone
    assert len(set(batch)) == 2


def test_predictor_round_trip(active_model, tmp_path):
    cfg, model = active_model
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("cdre")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp_path / "cdre.pth")
    predictor = CDREPredictor(cfg)
    g = np.random.default_rng(0)
    original = g.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    decoded = np.clip(original + g.normal(0, 20, original.shape), 0, 255).astype(np.uint8)
    bits = predictor.encode(original, decoded)
    pred = predictor(decoded, bits)
    # reference: the model run with originals on the same resized frames
    tf = predictor.aug.get_transform(decoded)
    chw = lambda a: torch.as_tensor(tf.apply_image(a).astype("float32").transpose(2, 0, 1))  # noqa: E731
    resized = chw(decoded)
    assert min(resized.shape[1:]) == cfg.INPUT.MIN_SIZE_TEST  # the predictor really resizes
    with torch.no_grad():
        ref = predictor.model([{"image": resized, "original": chw(original), "height": 97, "width": 131}])
    _assert_same_predictions([pred], ref)
    assert ref[0]["cdre_bits"] == bits and pred["side_bits"] == 8 * len(bits)
    assert pred["instances"].image_size == (97, 131)
    with pytest.raises(ValueError, match="same shape"):
        predictor.encode(original[:64], decoded)


# ---------------------------------------------------------------------------- video side streams
def _video_frames(n, seed, video_id="v"):
    """Frames of one video as the test loader feeds them: per-frame dicts with ids, in order."""
    return [dict(d, video_id=video_id, frame_idx=i) for i, d in enumerate(_inputs(sizes=[(96, 128)] * n, seed=seed))]


def test_frames_of_a_video_share_one_side_stream(active_model):
    cfg, model = active_model
    model.eval()  # a new evaluation: no stream is open
    frames = _video_frames(4, seed=6)
    with torch.no_grad():
        from_original = [model([d])[0] for d in frames]  # batch 1, dataset order
        chunks = [o["cdre_bits"] for o in from_original]
        receiver = [{k: d[k] for k in ("image", "height", "width", "video_id", "frame_idx")} for d in frames]
        from_bits = [model([dict(d, cdre_bits=c)])[0] for d, c in zip(receiver, chunks)]
        alone = model.encode_side_streams([{k: v for k, v in d.items() if k != "video_id"} for d in frames])
    parsed = read_video_side_stream(b"".join(chunks), num_frames=4)
    assert [o["side_bits"] for o in from_original] == parsed.frame_bits == [8 * len(c) for c in chunks]
    assert [o["side_bits"] for o in from_bits] == parsed.frame_bits
    assert chunks[0][:2] == VIDEO_MAGIC and parsed.header.frame_shape == (LATENT, _ceil(96), _ceil(128))
    for m, image_stream in zip(parsed.maps, alone):  # the same maps as per-image streams
        assert torch.equal(m, decode_side_stream(image_stream))
    _assert_same_predictions(from_original, from_bits)
    assert model.encode_side_streams(frames) == chunks  # the sender's own session, same bytes
    model.eval()  # streams close with every train() / eval()
    with pytest.raises(ValueError, match="not the start of a CDRE video side stream"):
        model([dict(receiver[1], cdre_bits=chunks[1])])


def test_side_stream_per_image_when_configured():
    cfg = _cfg(SLIM_OURS, "MODEL.VCM.CDRE.SIDE_STREAM_PER_VIDEO", False, "MODEL.VCM.CDRE.OUTPUT_SIDE_STREAM", True)
    model = VCMTrainer.build_model(cfg).eval()
    with torch.no_grad():
        outs = [model([d])[0] for d in _video_frames(2, seed=7)]
    for o in outs:  # self-contained image streams, as for frames without video ids
        assert o["side_bits"] == 8 * len(o["cdre_bits"])
        assert parse_side_stream_header(o["cdre_bits"]).shape == (LATENT, _ceil(96), _ceil(128))


def test_video_predictor_sender_and_receiver_code_one_stream(active_model, tmp_path):
    cfg, model = active_model
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("cdre")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp_path / "cdre.pth")
    sender, receiver = VideoPredictor(cfg), VideoPredictor(cfg)
    g = np.random.default_rng(1)
    originals = [g.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    decoded = [np.clip(o + g.normal(0, 20, o.shape), 0, 255).astype(np.uint8) for o in originals]
    chunks = [sender.encode_side_stream(o, d) for o, d in zip(originals, decoded)]
    outs = [receiver(d, side_stream=c) for d, c in zip(decoded, chunks)]
    stream = b"".join(chunks)
    assert [o["side_bits"] for o in outs] == read_video_side_stream(stream, num_frames=3).frame_bits
    assert receiver.total_bits == 8 * len(stream)
    receiver.reset()  # a new video: a new stream, whose first frame carries the header
    with pytest.raises(ValueError, match="not the start of a CDRE video side stream"):
        receiver(decoded[1], side_stream=chunks[1])


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("version", sorted(PAIRS))
def test_training_iteration_cosine_loss_and_gradients(version):
    torch.manual_seed(2)
    cfg = _cfg(PAIRS[version][1])
    model = VCMTrainer.build_model(cfg).train()
    extractor_conv = model.cdre_encoder.extractor.blocks[0][0].weight
    encoder_conv = model.cdre_encoder.encoder.blocks[0][0].weight
    with EventStorage():
        losses = model(_inputs(cfg=cfg))
        assert "loss_cdre_cosine" in losses and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    assert extractor_conv.grad is not None and extractor_conv.grad.abs().sum() > 0
    # Identity at init: the zero projections block the task gradient to the distortion encoder.
    assert encoder_conv.grad is None or encoder_conv.grad.abs().sum() == 0
    _activate_embedding(model)
    model.zero_grad()
    with EventStorage():
        sum(model(_inputs(cfg=cfg)).values()).backward()
    # ... once they are non-zero, it flows through the binary map (straight-through).
    assert encoder_conv.grad.abs().sum() > 0


def _training_losses(*opts):
    torch.manual_seed(2)
    cfg = _cfg(SLIM_OURS, *opts)
    model = VCMTrainer.build_model(cfg).train()
    with EventStorage():
        losses = model(_inputs(sizes=[(96, 128)], cfg=cfg))
    return {n: tuple(p.shape) for n, p in model.named_parameters()}, losses


def test_ablation_switches_change_what_they_name():
    """Table II switches in a whole detector: USE_COSINE drops exactly the eq. 8 term,
    USE_MODULATION swaps the encoder's modulation (eq. 4) for concatenation, MULTI_SCALE keeps
    the last extractor scale only; no detector parameter changes."""
    params, losses = _training_losses()
    no_cos_params, no_cos = _training_losses("MODEL.VCM.CDRE.USE_COSINE", False)
    assert no_cos_params == params and set(losses) - set(no_cos) == {"loss_cdre_cosine"}
    for k, v in no_cos.items():  # same weights, same data: the task losses are untouched
        assert torch.equal(v, losses[k]), k
    concat_params, _ = _training_losses("MODEL.VCM.CDRE.USE_MODULATION", False)
    single_params, single = _training_losses("MODEL.VCM.CDRE.MULTI_SCALE", False)
    for other in (concat_params, single_params):
        changed = set(params.items()) ^ set(other.items())
        assert changed and all(n.startswith("cdre_encoder.encoder.conditioning.") for n, _ in changed)
    assert sum(map(np.prod, concat_params.values())) < sum(map(np.prod, params.values()))
    assert not any(".alpha." in n for n in concat_params) and any(".fuse." in n for n in concat_params)
    assert {n.split(".")[3] for n in single_params if ".conditioning." in n} == {"2"}
    # one scale of 1 + cos in [0, 2] instead of three
    lam = _cfg(SLIM_OURS).MODEL.VCM.CDRE.COSINE_WEIGHT
    assert single["loss_cdre_cosine"] <= 2 * lam < losses["loss_cdre_cosine"]


def _cdre_configs():
    paths = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
    # Base-* files are covered by the configs that inherit them unchanged.
    return [p for p in paths if _cfg(p).MODEL.META_ARCHITECTURE == "CDRERCNN"
            and not os.path.basename(p).startswith("Base-")]


@pytest.mark.parametrize("path", _cdre_configs(), ids=lambda p: os.path.relpath(p, CONFIGS))
def test_cdre_config_trains_one_iteration(path):
    # Fewer proposals / RoIs only to keep the R50 iterations short on CPU.
    # ViTDet: the 96 x 128 frames without a 1024 x 1024 canvas (test_configs runs it with its pad).
    cfg = _cfg(path, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
               "MODEL.VCM.VIT.SFP.SQUARE_PAD", 0)
    assert cfg.VCM.PAIRS.LOAD_ORIGINAL
    torch.manual_seed(0)
    model = VCMTrainer.build_model(cfg).train()
    names = [n for n, _ in model.named_parameters()]
    cdre = {n for n in names if _is_cdre(n)}
    assert cdre
    if cfg.MODEL.VCM.TRAINABLE:  # Ours-FD: exactly the detector is frozen
        assert {n for n, p in model.named_parameters() if p.requires_grad} == cdre
    with EventStorage():
        losses = model(_inputs(sizes=[(96, 128)], cfg=cfg))
        assert "loss_cdre_cosine" in losses
        sum(losses.values()).backward()
    assert model.cdre_encoder.extractor.blocks[0][0].weight.grad.abs().sum() > 0


def test_synthetic_keypoint_config_matches_dataset():
    cfg = _cfg(os.path.join(CONFIGS, "synthetic", "cdre_keypoint_rcnn_R18_slim_ours.yaml"))
    assert list(cfg.TEST.KEYPOINT_OKS_SIGMAS) == list(KEYPOINT_OKS_SIGMAS)
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == len(KEYPOINT_OKS_SIGMAS)


# ---------------------------------------------------------------------------- C4, transformer hook
C4_OPTS = [
    "MODEL.BACKBONE.NAME", "build_cdre_resnet_backbone",
    "MODEL.RESNETS.OUT_FEATURES", ["res4"],
    "MODEL.RPN.IN_FEATURES", ["res4"],
    "MODEL.ROI_HEADS.NAME", "Res5ROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES", ["res4"],
    "MODEL.ANCHOR_GENERATOR.SIZES", [[16, 32, 64]],
    "MODEL.VCM.CDRE.EMBED_STAGES", ["res2", "res3", "res4"],
    "MODEL.VCM.CDRE.STAGE_CHANNELS", [16, 16, 32],
    "MODEL.VCM.TRAINABLE", ["cdre_encoder", "backbone.cdre"],
]


def test_c4_variant_builds_trains_and_runs():
    torch.manual_seed(0)
    cfg = _cfg(SLIM_OURS, *C4_OPTS)
    model = VCMTrainer.build_model(cfg)
    assert isinstance(model.backbone, CDREResNet) and model.backbone.size_divisibility == 0
    assert model.backbone.cdre.stage_names == ("res2", "res3", "res4")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith(CDRE_PREFIXES_C4)
    }
    with EventStorage():
        sum(model(_inputs(sizes=[(97, 131)], cfg=cfg)).values()).backward()
    model.eval()
    _activate_embedding(model)
    inputs = _inputs(seed=5)
    with torch.no_grad():
        a = model(inputs)
        b = model([{"image": d["image"], "cdre_bits": s}
                   for d, s in zip(inputs, model.encode_side_streams(inputs))])
    _assert_same_predictions(a, b)
    # res5 is in the ROI head of a C4 model: embedding it is a clear config error
    keep = [i for i in range(0, len(C4_OPTS), 2) if "EMBED_STAGES" not in C4_OPTS[i]
            and "STAGE_CHANNELS" not in C4_OPTS[i] and "TRAINABLE" not in C4_OPTS[i]]
    opts = [x for i in keep for x in C4_OPTS[i:i + 2]]
    with pytest.raises(ValueError, match="res5"):
        VCMTrainer.build_model(_cfg(SLIM_OURS, *opts))


def test_backbone_accepts_transformer_decoder_side():
    """The hook for Transformer backbones: token decoder + cross-attention embedding run in
    the same stage loop (identity at init, y_hat-dependent once the output weights move)."""
    cfg = _cfg(SLIM_OURS)
    torch.manual_seed(0)
    plain = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    stages = [list(s) for s in plain.stages]
    shapes = stage_input_shapes(plain.stem, plain.stage_names, stages)
    side = CDREDecoderSide(
        decoder=TokenDistortionDecoder(cfg),
        embedding=CrossAttentionEmbedding(cfg, shapes),
        latent_channels=LATENT,
        latent_stride=STRIDE,
    )
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = plain(x)
        model = CDREResNet(plain.stem, stages, cdre=side, out_features=list(plain.output_shape())).eval()
        y_hat = (torch.rand(1, LATENT, 3, 4) > 0.5).float()
        out = model(x, y_hat=y_hat)
        assert all(torch.equal(ref[k], out[k]) for k in ref)
        _activate_embedding(model)
        assert not torch.equal(model(x, y_hat=y_hat)["res5"], ref["res5"])


# ---------------------------------------------------------------------------- errors
def test_missing_side_information_raises(slim_pair):
    _, model = slim_pair
    image = _inputs(original=False)
    with pytest.raises(ValueError, match="needs side information"):
        model(image)
    with pytest.raises(ValueError, match="y_hat"):
        model.backbone(torch.zeros(1, 3, 96, 128))
    with pytest.raises(ValueError, match="y_hat has shape"):
        model.backbone(torch.zeros(1, 3, 96, 128), y_hat=torch.zeros(1, LATENT, 2, 4))
    with pytest.raises(ValueError, match="shaped like 'image'"):
        model([{"image": torch.zeros(3, 96, 128), "original": torch.zeros(3, 64, 128)}])
    cfg = _cfg(SLIM_OURS)
    model_t = VCMTrainer.build_model(cfg).train()
    bits = encode_side_stream(torch.zeros(LATENT, 3, 4))
    with EventStorage(), pytest.raises(ValueError, match="training CDRERCNN needs the original"):
        model_t([dict(d, cdre_bits=bits) for d in _inputs(sizes=[(96, 128)], cfg=cfg, original=False)])
    with pytest.raises(ValueError, match="CDRE backbone"):
        VCMTrainer.build_model(_cfg(SLIM_OURS, "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"))


def test_corrupt_side_stream_raises(slim_pair):
    _, model = slim_pair
    (h, w), image = SIZES[0], _inputs(sizes=SIZES[:1], original=False)[0]["image"]
    good = encode_side_stream(torch.randint(0, 2, (LATENT, _ceil(h), _ceil(w))).float())
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    wrong_size = encode_side_stream(torch.zeros(LATENT, _ceil(h) + 1, _ceil(w)))
    cases = [
        (bytes(flipped), "corrupt or invalid CDRE side stream"),
        (good[:-1], "corrupt or invalid CDRE side stream"),
        (b"", "corrupt or invalid CDRE side stream"),
        (wrong_size, "another image size"),
        ("not bytes", "must be bytes"),
    ]
    with torch.no_grad():
        model([{"image": image, "cdre_bits": good}])  # the intact stream decodes
        for data, message in cases:
            with pytest.raises(ValueError, match=message):
                model([{"image": image, "cdre_bits": data}])


def test_build_backbone_names_match_plain_detector():
    cfg_plain, cfg_cdre = _cfg(SLIM_PLAIN), _cfg(SLIM_OURS)
    plain = {n for n, _ in build_backbone(cfg_plain).named_parameters()}
    wrapped = {n for n, _ in build_backbone(cfg_cdre).named_parameters()}
    assert plain < wrapped and all(n.startswith("bottom_up.cdre.") for n in wrapped - plain)
