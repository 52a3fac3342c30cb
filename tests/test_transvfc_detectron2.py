"""TransVFC as detectron2 components: the split upstream network, the meta-architecture
(checkpoint compatibility, odd sizes, GOP state in evaluation, exact rate accounting,
bit-exact bitstreams, refusal of foreign streams), task tails and their registry, the clip
mapper, training of every config, the Table 1 schedule and the command-line tools."""
import glob
import importlib.util
import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode as CN
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

from vcm_d2.data.clip_mapper import ClipDatasetMapper, build_clip_train_loader, to_video_dicts
from vcm_d2.data.synthetic import SyntheticSpec, render_video
from vcm_d2.engine import VCMTrainer
from vcm_d2.modeling.transvfc import (
    CODEC_STAGES,
    TRANSVFC_TASK_REGISTRY,
    ContainerError,
    SplitBackbone,
    TaskTail,
    TransVFC,
    TransVFCCodecStages,
    read_stream,
)
from vcm_d2.modeling.vis import VideoInstanceSegmentor
from vcm_d2.utils.tensor_io import load_tensors
from vcm_d2.utils.video import iter_video_frames

from config_helpers import load_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
SLIM = os.path.join(CONFIGS, "synthetic", "transvfc_base_slim.yaml")
SLIM_DETECTOR = os.path.join(CONFIGS, "synthetic", "faster_rcnn_R18_slim.yaml")
TRANSVFC_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "TransVFC", "*.yaml"))
                          + glob.glob(os.path.join(CONFIGS, "synthetic", "transvfc_*.yaml")))
BOTH_TASKS = ["DETECTION", "SEM_SEG"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(path=SLIM, *opts):
    return load_cfg(path, *opts)


def _model(path=SLIM, *opts, seed=0, train=False):
    torch.manual_seed(seed)
    model = VCMTrainer.build_model(_cfg(path, *opts))
    return model.train(train)


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _video(n, h, w, seed=0):
    """Frames of a slowly drifting random image (P-frames have something to predict)."""
    base = _image(h, w, seed).float()
    g = torch.Generator().manual_seed(seed + 1)
    return [(base + 6 * t * torch.randn(3, h, w, generator=g)).clamp(0, 255).round()
            for t in range(n)]


def _clip_batch(cfg, num_clips=2, size=(64, 64), seed=0):
    """Clips as ClipDatasetMapper makes them, with a box and a label map per frame."""
    g = torch.Generator().manual_seed(seed)
    length = cfg.VCM.CLIP.LENGTH
    classes = cfg.MODEL.VCM.TRANSVFC.TASK.SEM_SEG.NUM_CLASSES
    clips = []
    for c in range(num_clips):
        frames = []
        for t in range(length):
            inst = Instances(size)
            inst.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 40.0, 44.0]]))
            inst.gt_classes = torch.tensor([1])
            if cfg.MODEL.MASK_ON:  # the instance-segmentation task
                mask = torch.zeros((1, *size), dtype=torch.bool)
                mask[:, 10:44, 8:40] = True
                inst.gt_masks = BitMasks(mask)
            frames.append({"image": torch.randint(0, 256, (3, *size), generator=g,
                                                  dtype=torch.uint8),
                           "height": size[0], "width": size[1], "instances": inst,
                           "sem_seg": torch.randint(0, classes, size, generator=g),
                           "video_id": c, "frame_idx": t})
        clips.append({"frames": frames})
    return clips


# ------------------------------------------------------------------ split upstream network
def test_split_backbone_reproduces_the_fpn():
    torch.manual_seed(0)
    detector = build_model(_cfg(SLIM_DETECTOR)).eval()
    split = SplitBackbone(detector.backbone)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = detector.backbone(x)
        got = split.rest(split.head(x))
    assert list(got) == list(expected) == ["p2", "p3", "p4", "p5", "p6"]
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert (split.feature_channels, split.feature_stride, split.feature_divisibility) == (64, 4, 8)
    with pytest.raises(ValueError, match="ResNet"):
        SplitBackbone(nn.Conv2d(3, 3, 1))


def test_checkpoint_of_a_plain_detector_supplies_head_perception_and_tail(tmp_path):
    torch.manual_seed(0)
    detector = build_model(_cfg(SLIM_DETECTOR)).eval()
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    model = _model(seed=1)
    DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
    own = model.state_dict()
    for k, v in detector.state_dict().items():
        name = k if k.startswith("backbone.") else f"tasks.detection.{k}"
        assert torch.equal(own[name], v), k
    # Without coding, head -> perception network -> detection tail is the detector itself.
    img = _image(96, 128)
    with torch.no_grad():
        expected = detector([{"image": img}])[0]["instances"]
        tail = model.tasks["detection"]
        got = tail.inference(tail.high_features(model.image_to_feature(img)), [(96, 128)],
                             [(96, 128)])[0]["instances"]
    assert len(got) == len(expected) > 0
    assert torch.allclose(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-4)
    assert torch.allclose(got.scores, expected.scores, atol=1e-6)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_pixel_inference_is_each_task_network_on_the_frame(tmp_path):
    """INFERENCE_INPUT "pixels" (the pixel-codec anchor) = the detector / segmentation network
    on the input frame, no coding, no bits."""
    torch.manual_seed(0)
    detector = build_model(_cfg(SLIM_DETECTOR)).eval()
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS),
                   "MODEL.VCM.TRANSVFC.INFERENCE_INPUT", "pixels", seed=1)
    DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
    model.eval()
    frames = [{"image": _image(96, 128, seed=s), "height": 192, "width": 256, "video_id": 0,
               "frame_idx": s} for s in range(2)]
    with torch.no_grad():
        expected = detector([dict(f) for f in frames])
        got = model(frames)
        seg = model.tasks["sem_seg"]
        logits = seg._logits(seg.high_features(seg.target_feature(frames[1]["image"][None].float())))
    assert sum(len(e["instances"]) for e in expected) > 0
    for g, e in zip(got, expected):
        assert "bits" not in g
        assert torch.allclose(g["instances"].pred_boxes.tensor, e["instances"].pred_boxes.tensor,
                              atol=1e-4)
        assert torch.equal(g["instances"].pred_classes, e["instances"].pred_classes)
    expected_seg = sem_seg_postprocess(logits[0], (96, 128), 192, 256)
    assert got[1]["sem_seg"].shape == (6, 192, 256)
    assert torch.allclose(got[1]["sem_seg"], expected_seg, atol=1e-5)


def test_uncoded_feature_inference_skips_only_the_codec(tmp_path):
    """INFERENCE_INPUT "uncoded_features": res2 -> FST -> tail without coding, no bits. With a
    residual FST at its init (the identity) that is the detector itself; a plain FST changes it."""
    torch.manual_seed(0)
    detector = build_model(_cfg(SLIM_DETECTOR)).eval()
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    frames = [{"image": _image(96, 128, seed=s), "height": 96, "width": 128, "video_id": 0,
               "frame_idx": s} for s in range(2)]
    with torch.no_grad():
        expected = detector([dict(f) for f in frames])
    assert sum(len(e["instances"]) for e in expected) > 0
    for residual in (True, False):
        model = _model(SLIM, "MODEL.VCM.TRANSVFC.INFERENCE_INPUT", "uncoded_features",
                       "MODEL.VCM.TRANSVFC.FST.RESIDUAL", residual, seed=1)
        DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
        model.eval()
        with torch.no_grad():
            got = model([dict(f) for f in frames])
        same = all(len(g["instances"]) == len(e["instances"]) and torch.allclose(
            g["instances"].pred_boxes.tensor, e["instances"].pred_boxes.tensor, atol=1e-4)
            for g, e in zip(got, expected))
        assert same == residual
        assert all("bits" not in g for g in got)
        assert not model.stream_coder._streams  # the codec never ran


def test_checkpoint_shape_mismatch_is_skipped_with_a_warning(tmp_path, caplog):
    torch.manual_seed(0)
    detector = build_model(_cfg(SLIM_DETECTOR, "MODEL.ROI_HEADS.NUM_CLASSES", "3"))
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    model = _model(seed=1)
    before = model.tasks["detection"].roi_heads.box_predictor.cls_score.weight.clone()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
    assert "Skip loading roi_heads.box_predictor.cls_score.weight" in caplog.text
    assert torch.equal(model.tasks["detection"].roi_heads.box_predictor.cls_score.weight, before)
    assert torch.equal(model.tasks["detection"].roi_heads.box_head.fc1.weight,
                       detector.roi_heads.box_head.fc1.weight)


# ------------------------------------------------------------------ inference, odd sizes
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 47)])
def test_odd_sizes_latent_shapes_and_outputs(size):
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS))
    assert isinstance(model, TransVFC)
    h, w = size
    res2 = model.image_to_feature(_image(h, w))
    fh, fw = -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2)  # stem conv s2, max-pool s2
    assert tuple(res2.shape) == (1, 64, fh, fw)
    shapes = model.codec.latent_shapes(fh, fw)
    ph, pw = -(-fh // 16) * 16, -(-fw // 16) * 16
    assert shapes["r_y"] == shapes["m_y"] == shapes["i_y"] == (ph // 4, pw // 4)
    assert shapes["r_z"] == (ph // 16, pw // 16)
    with torch.no_grad():
        out = model([{"image": _image(h, w), "height": 2 * h, "width": 2 * w}])[0]
    assert out["frame_type"] == "I" and out["bits"] > 0
    assert out["instances"].image_size == (2 * h, 2 * w)
    assert tuple(out["sem_seg"].shape) == (6, 2 * h, 2 * w)


def test_evaluation_gop_state_and_bits_match_the_container():
    gop = 3
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.GOP", str(gop))
    frames = _video(5, 64, 80)
    with torch.no_grad():
        outs = model([{"image": f, "height": 64, "width": 80, "video_id": "v", "frame_idx": t}
                      for t, f in enumerate(frames)])
        encoded = model.encode_video(frames, return_features=True)
    assert [o["frame_type"] for o in outs] == encoded.frame_types == ["I", "P", "P", "I", "P"]
    # Evaluation counts exactly the container's bits (header charged to frame 0).
    assert [o["bits"] for o in outs] == encoded.frame_bits
    assert sum(encoded.frame_bits) == 8 * len(encoded.stream)


def test_evaluation_stream_restarts(caplog):
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.EVAL_MAX_OPEN_VIDEOS", "1")
    img = _video(1, 64, 64)[0]
    stream_bits = 8 * len(model.encode_video([img]).stream)  # header + this I-frame

    def code(video_id=None, frame_idx=None):
        inp = {"image": img, "height": 64, "width": 64}
        if video_id is not None:
            inp.update(video_id=video_id, frame_idx=frame_idx)
        with torch.no_grad():
            return model([inp])[0]

    first = code("a", 0)
    assert first["frame_type"] == "I" and first["bits"] == stream_bits
    assert code("a", 1)["frame_type"] == "P"
    with caplog.at_level(logging.WARNING):
        gap = code("a", 5)  # frames 2..4 missing: I-frame inside the same stream
    assert gap["frame_type"] == "I" and "does not follow frame 1" in caplog.text
    assert gap["bits"] < first["bits"]  # no second header
    assert code("a", 6)["frame_type"] == "P"
    assert code("a", 0)["bits"] == stream_bits  # a new pass: new stream, new header
    code("b", 0)  # with one open stream, video "a" is closed ...
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert code("a", 1)["frame_type"] == "I"  # ... and reopens with an I-frame
    assert "opening a stream" in caplog.text
    lone = code()
    assert lone["frame_type"] == "I" and lone["bits"] == stream_bits


# ------------------------------------------------------------------ bitstreams
def test_encode_decode_bit_exact_and_threads():
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.GOP", "3")
    frames = _video(4, 48, 72)
    encoded = model.encode_video(frames, original_size=(96, 144), return_features=True)
    header = read_stream(encoded.stream).header
    assert header.image_size == (48, 72) and header.original_size == (96, 144)
    assert header.threads == 1 and header.model_id == "transvfc-synthetic-slim"
    torch.set_num_threads(2)
    try:
        seen_threads, decoded = set(), []
        for frame in model.decode_frames(encoded.stream):
            seen_threads.add(torch.get_num_threads())
            decoded.append(frame)
        assert seen_threads == {1}  # decoded with the encoder's thread count ...
        assert torch.get_num_threads() == 2  # ... and restored afterwards
    finally:
        torch.set_num_threads(1)
    assert [f.frame_type for f in decoded] == ["I", "P", "P", "I"]
    assert [f.bits for f in decoded] == encoded.frame_bits
    for f, expected in zip(decoded, encoded.features):
        assert torch.equal(f.feature, expected)


def test_stream_coder_codes_features():
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.GOP", "3")
    frames = _video(4, 48, 72)
    with torch.no_grad():
        features = [model.image_to_feature(f) for f in frames]
    coded = model.stream_coder.encode(features, image_size=(48, 72))
    assert coded.stream == model.encode_video(frames).stream  # the meta-architecture = head + it
    assert [f.frame_type for f in model.stream_coder.decode(read_stream(coded.stream))] == \
        coded.frame_types == ["I", "P", "P", "I"]


def test_foreign_corrupted_and_truncated_streams_are_refused():
    model = _model()
    stream = model.encode_video(_video(2, 48, 48)).stream
    other = _model(seed=5)
    with pytest.raises(ContainerError, match="encoded by model"):
        other.decode_frames(stream)
    corrupted = bytearray(stream)
    corrupted[-10] ^= 0x10
    with pytest.raises(ContainerError, match="CRC"):
        model.decode_frames(bytes(corrupted))
    with pytest.raises(ContainerError, match="truncated"):
        model.decode_frames(stream[:-3])
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.encode_video(_video(1, 48, 48))


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("path", TRANSVFC_CONFIGS, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_trains_one_iteration(path):
    cfg = _cfg(path)
    stage = cfg.MODEL.VCM.TRANSVFC.TRAIN_STAGE
    torch.manual_seed(0)
    model = VCMTrainer.build_model(cfg).train()
    optimizer = VCMTrainer.build_optimizer(cfg, model)
    # TransVFC itself, or inside the video instance segmentation model (under "detector.")
    wrapped = isinstance(model, VideoInstanceSegmentor)
    trained = ("detector." if wrapped else "") + {"codec": "codec.", "fst": "fst.",
                                                  "task": "tasks."}[stage]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert before and all(p.requires_grad == n.startswith(trained)
                          for n, p in model.named_parameters())
    with EventStorage(0):
        losses = model(_clip_batch(cfg))
        total = sum(losses.values())
        assert losses and torch.isfinite(total)
        total.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(trained) for n in changed)
    # frozen modules stayed in eval mode (codec in stage 2: rounding = the decoded features)
    net = model.detector if wrapped else model
    assert not net.backbone.training
    assert net.codec.training == (stage == "codec")


def test_stage_losses_and_batch_errors():
    cfg = _cfg(SLIM, "MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS))
    model = _model(SLIM, "MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS), train=True)
    with EventStorage(0) as storage:
        losses = model(_clip_batch(cfg))
        assert {"loss_rate", "loss_feature", "loss_compensation", "loss_perception",
                "loss_aux"} == set(losses)
        assert storage.latest()["transvfc_stage"][0] == 1
    fst = _model(SLIM, "MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS),
                 "MODEL.VCM.TRANSVFC.TRAIN_STAGE", "fst", train=True)
    with EventStorage(0):
        losses = fst(_clip_batch(cfg))
    assert {f"loss_{t}_{k}" for t in ("detection", "sem_seg")
            for k in ("task", "mid", "high", "image")} == set(losses)
    batch = _clip_batch(cfg)
    batch[1]["frames"] = batch[1]["frames"][:1]
    with EventStorage(0), pytest.raises(ValueError, match="same number of frames"):
        model(batch)
    batch = _clip_batch(cfg)
    for f in batch[0]["frames"]:
        del f["sem_seg"]
    with EventStorage(0), pytest.raises(ValueError, match="sem_seg"):
        fst(batch)


def test_codec_lr_schedule_follows_table1(caplog):
    cfg = _cfg(os.path.join(CONFIGS, "synthetic", "transvfc_stage1_slim_lambda32.yaml"),
               "SOLVER.WARMUP_ITERS", "0")
    ends = cfg.MODEL.VCM.TRANSVFC.STAGE_ENDS
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    # the stage-1 config names the schedule, the trainer builds it by that name
    scheduler = VCMTrainer.build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, TransVFCCodecStages)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for stage, start in zip(CODEC_STAGES, [0] + list(ends[:-1])):
        expected = cfg.SOLVER.BASE_LR * stage.base_lr / CODEC_STAGES[0].base_lr
        assert lrs[start] == pytest.approx(expected) == lrs[min(start + 5, len(lrs) - 1)]
    # Other stages keep detectron2's schedule (SOLVER.STEPS / GAMMA).
    fst_cfg = _cfg(os.path.join(CONFIGS, "synthetic", "transvfc_stage2_slim_detection.yaml"),
                   "SOLVER.WARMUP_ITERS", "0")
    optimizer = torch.optim.SGD([param], lr=fst_cfg.SOLVER.BASE_LR)
    scheduler = VCMTrainer.build_lr_scheduler(fst_cfg, optimizer)
    for _ in range(fst_cfg.SOLVER.STEPS[0]):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        fst_cfg.SOLVER.BASE_LR * fst_cfg.SOLVER.GAMMA)
    # A stage-1 model with another schedule is built, with a warning.
    with caplog.at_level(logging.WARNING):
        VCMTrainer.build_model(_cfg(SLIM, "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"))
    assert "the paper trains the codec with the Table 1 learning rates" in caplog.text


# ------------------------------------------------------------------ clips from datasets
@pytest.mark.parametrize("dataset", ["vcm_synth_train", "vcm_synth_vis_train",
                                     "vcm_synth_sem_train"])
def test_clip_loader_gives_aligned_consecutive_frames(dataset):
    cfg = _cfg(SLIM, "DATASETS.TRAIN", f"('{dataset}',)", "SOLVER.IMS_PER_BATCH", "2",
               "INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.RANDOM_FLIP", "horizontal")
    batch = next(iter(build_clip_train_loader(cfg)))
    assert len(batch) == 2
    for clip in batch:
        idx = clip["frame_indices"]
        assert len(clip["frames"]) == 3 and idx == list(range(idx[0], idx[0] + 3))
        sizes = {tuple(f["image"].shape) for f in clip["frames"]}
        assert len(sizes) == 1  # one augmentation for the whole clip
        if dataset != "vcm_synth_sem_train":
            assert all("instances" in f for f in clip["frames"])
        if dataset != "vcm_synth_vis_train":
            assert all(f["sem_seg"].shape == f["image"].shape[-2:] for f in clip["frames"])


def test_clip_mapper_errors_and_video_grouping():
    dicts = [{"file_name": f"v{v}_{t}.png", "video_id": v, "frame_idx": t}
             for v in (1, 2) for t in (2, 0, 1)] + [{"file_name": "lone.png"}]
    videos = to_video_dicts(dicts)
    assert [len(v["frames"]) for v in videos] == [3, 3, 1]
    assert [f["frame_idx"] for f in videos[0]["frames"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="distinct 'frame_idx'"):
        to_video_dicts([{"file_name": "a", "video_id": 1, "frame_idx": 0}] * 2)
    cfg = _cfg(SLIM, "VCM.CLIP.LENGTH", "13")
    with pytest.raises(ValueError, match="13 frames a clip needs"):
        build_clip_train_loader(cfg)
    mapper = ClipDatasetMapper(_cfg(SLIM), True)
    with pytest.raises(ValueError, match="needs 3"):
        mapper(videos[2])


def test_one_iteration_from_the_real_loader():
    cfg = _cfg(os.path.join(CONFIGS, "synthetic", "transvfc_stage1_slim_lambda16.yaml"),
               "SOLVER.IMS_PER_BATCH", "2")
    model = _model(os.path.join(CONFIGS, "synthetic", "transvfc_stage1_slim_lambda16.yaml"),
                   train=True)
    with EventStorage(0):
        losses = model(next(iter(build_clip_train_loader(cfg))))
    assert torch.isfinite(sum(losses.values()))


# ------------------------------------------------------------------ task registry
def test_a_new_task_plugs_in_by_config_alone():
    class _ToyTail(TaskTail):
        """Per-image mean of a 1x1 projection: the smallest possible task."""

        output_key = "toy"

        def __init__(self, channels):
            super().__init__()
            self.proj = nn.Conv2d(channels, 2, 1)

        @classmethod
        def from_task_config(cls, cfg, node, upstream, key):
            return cls(node.CHANNELS)

        def feature_shape(self):
            from detectron2.layers import ShapeSpec
            return ShapeSpec(channels=self.proj.in_channels, stride=8)

        def target_feature(self, images):
            return torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True).expand(
                -1, self.proj.in_channels, -1, -1), 8)

        def high_features(self, feature):
            return {"out": self.proj(feature)}

        def losses(self, high, frames, image_sizes):
            return {"loss_toy": high["out"].square().mean()}

        def inference(self, high, image_sizes, output_sizes):
            return [{"toy": x.mean((1, 2))} for x in high["out"]]

    TRANSVFC_TASK_REGISTRY.register(_ToyTail)
    try:
        cfg = _cfg(SLIM, "MODEL.VCM.TRANSVFC.TRAIN_STAGE", "fst")
        cfg.MODEL.VCM.TRANSVFC.TASK.TOY = CN({"TAIL": "_ToyTail", "CHANNELS": 5,
                                              "FST": CN({"LAMBDA_HIGH": 2.0})})
        cfg.MODEL.VCM.TRANSVFC.TASKS = ["DETECTION", "TOY"]
        torch.manual_seed(0)
        model = VCMTrainer.build_model(cfg)
        assert model.fst["toy"].head[-1].out_channels == 5  # FST shaped by the tail
        assert model.fst_weights["toy"].lambda_high == 2.0
        assert model.fst_weights["detection"].lambda_high == 4.0
        with EventStorage(0):
            losses = model.train()(_clip_batch(cfg))
        assert "loss_toy_task" in losses and "loss_detection_task" in losses
        with torch.no_grad():
            out = model.eval()([{"image": _image(64, 64), "height": 64, "width": 64}])[0]
        assert out["toy"].shape == (2,) and "instances" in out
    finally:
        TRANSVFC_TASK_REGISTRY._obj_map.pop("_ToyTail")


def test_config_errors():
    with pytest.raises(ValueError, match="IN_CHANNELS"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.IN_CHANNELS", "256")
    with pytest.raises(ValueError, match="PERCEPTION_CHANNELS"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.PERCEPTION_CHANNELS", "256")
    with pytest.raises(ValueError, match="no such node"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.TASKS", "['DEPTH']")
    with pytest.raises(ValueError, match="TRAIN_STAGE"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.TRAIN_STAGE", "joint")
    with pytest.raises(ValueError, match="INFERENCE_INPUT"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.INFERENCE_INPUT", "decoded_pixels")
    with pytest.raises(ValueError, match="QUALITY_INDEX"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.QUALITY_INDEX", "256")
    with pytest.raises(ValueError, match="MODEL_ID"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.MODEL_ID", "m" * 256)
    with pytest.raises(ValueError, match="duplicates"):
        _model(SLIM, "MODEL.VCM.TRANSVFC.TASKS", "['DETECTION', 'detection']")
    cfg = _cfg(SLIM)
    cfg.MODEL.VCM.TRANSVFC.TASK.DETECTION.FST.LAMBDA_TYPO = 1.0
    with pytest.raises(ValueError, match="not FST keys"):
        VCMTrainer.build_model(cfg)


def test_segmentation_weights_from_a_task_checkpoint(tmp_path):
    task_cfg = os.path.join(CONFIGS, "synthetic", "transvfc_task_slim_semseg.yaml")
    trained = _model(task_cfg, seed=3)
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("task")
    stage2 = os.path.join(CONFIGS, "synthetic", "transvfc_stage2_slim_semseg.yaml")
    model = _model(stage2, "MODEL.VCM.TRANSVFC.TASK.SEM_SEG.WEIGHTS", str(tmp_path / "task.pth"))
    for k, v in trained.tasks["sem_seg"].state_dict().items():
        assert torch.equal(model.tasks["sem_seg"].state_dict()[k], v), k
    torch.save({"model": {"unrelated.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not hold the network of DeepLabV3Tail"):
        _model(stage2, "MODEL.VCM.TRANSVFC.TASK.SEM_SEG.WEIGHTS", str(tmp_path / "bad.pth"))


# ------------------------------------------------------------------ command-line tools
def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfc_cli")
    torch.manual_seed(0)
    cfg = _cfg(SLIM, "MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS))
    DetectionCheckpointer(VCMTrainer.build_model(cfg), save_dir=str(root)).save("model")
    torch.manual_seed(1)
    DetectionCheckpointer(VCMTrainer.build_model(cfg), save_dir=str(root)).save("other")
    spec = SyntheticSpec(num_videos=1, frames_per_video=4, height=56, width=72,
                         max_object_size=24)
    frames_dir = root / "frames"
    frames_dir.mkdir()
    for t, frame in enumerate(render_video(spec, 0).frames):
        Image.fromarray(frame).save(frames_dir / f"{t:03d}.png")
    opts = ["MODEL.VCM.TRANSVFC.TASKS", str(BOTH_TASKS), "MODEL.VCM.TRANSVFC.GOP", "3",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
    return root, frames_dir, opts


def test_cli_encode_decode_end_to_end(cli_setup):
    root, frames_dir, opts = cli_setup
    weights = ["MODEL.WEIGHTS", str(root / "model.pth")]
    stream = root / "clip.tvfc"
    summary = _tool("vfc_encode").main([
        str(frames_dir), "-o", str(stream), "--config-file", SLIM,
        "--save-features", str(root / "enc.pt"), *opts, *weights])
    assert summary["frames"] == 4 and summary["frame_types"] == "IPPI"
    assert summary["original_size"] == [56, 72] and summary["coded_size"] == [64, 82]
    assert summary["bytes"] == os.path.getsize(stream)
    decode = _tool("vfc_decode")
    det = decode.main([str(stream), "--task", "detection", "--visualize", "--config-file", SLIM,
                       "--frames", str(frames_dir), "--save-features", str(root / "dec.pt"),
                       *opts, *weights])
    for a, b in zip(load_tensors(str(root / "enc.pt")), load_tensors(str(root / "dec.pt"))):
        assert torch.equal(a, b)  # bit-exact across two processes' worth of model building
    with open(os.path.join(det["output_dir"], "predictions.json")) as f:
        predictions = json.load(f)
    assert sum(r["bits"] for r in predictions["frames"]) == 8 * summary["bytes"] == det["bits"]
    assert [r["type"] for r in predictions["frames"]] == list("IPPI")
    assert all(len(r["boxes"]) == len(r["scores"]) for r in predictions["frames"])
    assert sorted(os.listdir(os.path.join(det["output_dir"], "vis"))) == \
        [f"f{t:05d}.png" for t in range(4)]
    vis = np.asarray(Image.open(os.path.join(det["output_dir"], "vis", "f00000.png")))
    assert vis.shape == (56, 72, 3)
    seg = decode.main([str(stream), "--task", "sem_seg", "--visualize", "--config-file", SLIM,
                       "--output-dir", str(root / "seg"), *opts, *weights])
    labels = np.asarray(Image.open(root / "seg" / "sem_seg" / "f00003.png"))
    assert labels.shape == (56, 72) and labels.max() < 6
    assert seg["bpp"] == pytest.approx(det["bpp"])


def test_cli_refuses_foreign_and_corrupted_streams(cli_setup):
    root, frames_dir, opts = cli_setup
    stream = root / "refuse.tvfc"
    _tool("vfc_encode").main([str(frames_dir), "-o", str(stream), "--config-file", SLIM,
                              "--max-frames", "2", *opts, "MODEL.WEIGHTS",
                              str(root / "model.pth")])
    decode = _tool("vfc_decode")
    with pytest.raises(SystemExit, match="encoded by model"):
        decode.main([str(stream), "--task", "detection", "--config-file", SLIM, *opts,
                     "MODEL.WEIGHTS", str(root / "other.pth")])
    data = bytearray(stream.read_bytes())
    data[len(data) // 2] ^= 0x01
    (root / "bad.tvfc").write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="CRC"):
        decode.main([str(root / "bad.tvfc"), "--config-file", SLIM, *opts, "MODEL.WEIGHTS",
                     str(root / "model.pth")])
    (root / "short.tvfc").write_bytes(stream.read_bytes()[:-1])
    with pytest.raises(SystemExit, match="truncated"):
        decode.main([str(root / "short.tvfc"), "--config-file", SLIM, *opts, "MODEL.WEIGHTS",
                     str(root / "model.pth")])
    with pytest.raises(SystemExit, match="not in this config's TASKS"):
        decode.main([str(stream), "--task", "keypoints", "--config-file", SLIM, *opts,
                     "MODEL.WEIGHTS", str(root / "model.pth")])


def test_cli_reads_an_mp4(cli_setup, tmp_path):
    av = pytest.importorskip("av")
    root, _, opts = cli_setup
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for t in range(3):
            frame = np.full((48, 64, 3), 40 * t, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert [f.shape for f in iter_video_frames(str(path))] == [(48, 64, 3)] * 3
    summary = _tool("vfc_encode").main([str(path), "-o", str(tmp_path / "mp4.tvfc"),
                                        "--config-file", SLIM, *opts, "MODEL.WEIGHTS",
                                        str(root / "model.pth")])
    assert summary["frames"] == 3 and summary["original_size"] == [48, 64]
