"""Video instance segmentation: tracking with detectron2's trackers, the VIS meta-architecture
(training on clips, whole-video inference, checkpoints of the per-frame network), its configs,
the TransVFC instance-segmentation tail, the VideoPredictor and the video data errors."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from pycocotools import mask as mask_util

from vcm_d2.data.clip_mapper import (
    ClipDatasetMapper,
    build_clip_train_loader,
    build_video_test_loader,
    is_video_dataset,
    to_video_dicts,
)
from vcm_d2.data.synthetic import VAL_SPEC, load_synthetic_videos, render_video
from vcm_d2.engine import VCMTrainer, VideoPredictor
from vcm_d2.modeling.transvfc import FST_TABLE2_WEIGHTS
from vcm_d2.modeling.transvfc.tasks import VIS_DETECTOR_PREFIX, MaskRCNNTail
from vcm_d2.modeling.vis import DETECTOR_PREFIX, VideoTracks

from catalog_helpers import shortened
from config_helpers import load_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(REPO, "configs", "synthetic")
VIS_SLIM = os.path.join(SYNTH, "vis_mask_rcnn_R18_slim.yaml")
VIS_CDRE = os.path.join(SYNTH, "vis_cdre_mask_rcnn_R18_slim_ours.yaml")
VIS_TRANSVFC = os.path.join(SYNTH, "transvfc_stage2_slim_vis.yaml")
VIS_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "VIS", "*.yaml"))
                     + glob.glob(os.path.join(SYNTH, "vis_*.yaml")))
TRACKER_ARGS = {"track_iou_threshold": 0.5, "max_lost_frame_count": 0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(path, *opts, seed=0):
    torch.manual_seed(seed)
    return VCMTrainer.build_model(load_cfg(path, *opts))


def _frame_output(objs, size, scores=None):
    """A per-frame network's output that repeats the ground truth of a frame."""
    inst = Instances(size)
    masks = [mask_util.decode(o["segmentation"]).astype(bool) for o in objs]
    inst.pred_boxes = Boxes(torch.tensor([o["bbox"] for o in objs], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores if scores is not None else [0.9] * len(objs))
    inst.pred_classes = torch.tensor([o["category_id"] for o in objs], dtype=torch.int64)
    inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, *size), dtype=torch.bool)
    return {"instances": inst}


# ------------------------------------------------------------------ tracking
def test_tracker_ids_stable_through_synthetic_videos():
    """Objects that move little between frames keep one identity for the whole video, and
    the tracks reproduce the ground-truth masks and classes."""
    videos = load_synthetic_videos(VAL_SPEC)
    checked = 0
    for video in videos[:4]:
        size = (video["height"], video["width"])
        tracks = VideoTracks("BBoxIOUTracker", TRACKER_ARGS)
        ids = []  # per frame: {gt track id: tracker ID}
        for objs in video["annotations"]:
            out = tracks.add(_frame_output(objs, size))
            ids.append(dict(zip([o["id"] for o in objs], out["instances"].ID)))
        for t in range(1, len(ids)):
            prev = {o["id"]: o["bbox"] for o in video["annotations"][t - 1]}
            for obj in video["annotations"][t]:
                if obj["id"] not in prev:
                    continue
                iou = pairwise_iou(Boxes(torch.tensor([obj["bbox"]])),
                                   Boxes(torch.tensor([prev[obj["id"]]])))[0, 0]
                if iou >= 0.6:  # clearly the same object: the identity must carry over
                    assert ids[t][obj["id"]] == ids[t - 1][obj["id"]], (video["video_id"], t)
                    checked += 1
        result = tracks.result()["tracks"]
        by_id = {tr["track_id"]: tr for tr in result}
        for t, objs in enumerate(video["annotations"]):
            for obj in objs:
                track = by_id[ids[t][obj["id"]]]
                assert track["category_id"] == obj["category_id"]
                np.testing.assert_array_equal(mask_util.decode(track["segmentations"][t]),
                                              mask_util.decode(obj["segmentation"]))
    assert checked > 50  # the check above ran on many object steps


def test_track_category_vote_score_and_rates():
    size = (20, 20)

    def out(cls, score, box, bits):
        inst = Instances(size)
        inst.pred_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
        inst.scores = torch.tensor([score])
        inst.pred_classes = torch.tensor([cls])
        m = torch.zeros((1, *size), dtype=torch.bool)
        m[:, box[1]:box[3], box[0]:box[2]] = True
        inst.pred_masks = m
        return {"instances": inst, "bits": bits, "side_bits": 3}

    tracks = VideoTracks("BBoxIOUTracker", TRACKER_ARGS, min_score=0.2)
    for cls, score in ((1, 0.9), (2, 0.3), (1, 0.8)):  # one object, class 2 once
        tracks.add(out(cls, score, [2, 2, 12, 12], 100))
    tracks.add(out(1, 0.1, [2, 2, 12, 12], 50))  # below min_score: not tracked
    res = tracks.result()
    assert len(res["tracks"]) == 1
    track = res["tracks"][0]
    assert track["category_id"] == 1  # summed score 1.7 vs 0.3
    assert track["score"] == pytest.approx((0.9 + 0.3 + 0.8) / 3)
    assert [s is None for s in track["segmentations"]] == [False, False, False, True]
    assert res["bits"] == [100, 100, 100, 50] and res["side_bits"] == [3] * 4

    partial = VideoTracks("BBoxIOUTracker", TRACKER_ARGS)
    partial.add(out(1, 0.9, [2, 2, 12, 12], 1))
    partial.add({"instances": out(1, 0.9, [2, 2, 12, 12], 1)["instances"]})
    with pytest.raises(ValueError, match="1 of 2 frames reported 'bits'"):
        partial.result()
    with pytest.raises(ValueError, match="started at"):
        o = out(1, 0.9, [2, 2, 12, 12], 1)
        o["instances"] = Instances((30, 30), **o["instances"].get_fields())
        partial.add(o)
    no_masks = out(1, 0.9, [2, 2, 12, 12], 1)
    no_masks["instances"].remove("pred_masks")
    with pytest.raises(ValueError, match="MASK_ON"):
        VideoTracks("BBoxIOUTracker", TRACKER_ARGS).add(no_masks)
    with pytest.raises(ValueError, match="not a detectron2 tracker"):
        VideoTracks("NoSuchTracker", {}).add(out(1, 0.9, [2, 2, 12, 12], 1))


# ------------------------------------------------------------------ the meta-architecture
def test_vis_model_trains_on_clips_and_segments_whole_videos():
    cfg = load_cfg(VIS_SLIM, "SOLVER.IMS_PER_BATCH", "2")
    model = _model(VIS_SLIM).train()
    batch = next(iter(build_clip_train_loader(cfg)))
    assert [len(c["frames"]) for c in batch] == [2, 2]
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_cls", "loss_mask", "loss_rpn_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())

    model.eval()
    assert is_video_dataset("vcm_synth_vis_val") and not is_video_dataset("vcm_synth_val")
    video = next(iter(build_video_test_loader(cfg, "vcm_synth_vis_val")))
    assert len(video[0]["frames"]) == len(video[0]["file_names"]) == 12
    with torch.no_grad():
        out = model(video)[0]
    assert out["tracks"] and "bits" not in out
    for track in out["tracks"]:
        assert len(track["segmentations"]) == 12
        rles = [r for r in track["segmentations"] if r is not None]
        assert rles and all(list(r["size"]) == [128, 128] for r in rles)
    assert [t["score"] for t in out["tracks"]] == sorted((t["score"] for t in out["tracks"]),
                                                         reverse=True)
    with pytest.raises(ValueError, match="whole videos"):
        model([video[0]["frames"][0]])


def test_checkpoint_of_the_per_frame_network_loads(tmp_path, caplog):
    plain_cfg = load_cfg(VIS_SLIM, "MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    torch.manual_seed(1)
    plain = VCMTrainer.build_model(plain_cfg).eval()
    path = str(tmp_path / "mask_rcnn.pth")
    torch.save({"model": plain.state_dict()}, path)
    vis = _model(VIS_SLIM).eval()
    DetectionCheckpointer(vis).load(path)
    for name, value in plain.state_dict().items():
        assert torch.equal(vis.state_dict()[DETECTOR_PREFIX + name], value), name
    # the same per-frame predictions
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    frame = {"image": image, "height": 96, "width": 128}
    with torch.no_grad():
        a, b = plain([frame])[0]["instances"], vis.detector([frame])[0]["instances"]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)
    # another number of classes: the predictors are skipped, the rest loads
    other = _model(VIS_SLIM, "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    with caplog.at_level("WARNING"):
        DetectionCheckpointer(other).load(path)
    assert "roi_heads.box_predictor.cls_score.weight" in caplog.text
    key = DETECTOR_PREFIX + "backbone.bottom_up.stem.conv1.weight"
    assert torch.equal(other.state_dict()[key], vis.state_dict()[key])
    with pytest.raises(ValueError, match="per-frame network"):
        _model(VIS_SLIM, "MODEL.VCM.VIS.DETECTOR", "VideoInstanceSegmentor")


def _fake_clip(cfg, size=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = []
    for t in range(max(1, cfg.VCM.CLIP.LENGTH)):
        inst = Instances(size, gt_boxes=Boxes(torch.tensor([[8.0, 10.0, 40.0, 44.0]])),
                         gt_classes=torch.tensor([1]))
        mask = torch.zeros((1, *size), dtype=torch.bool)
        mask[:, 10:44, 8:40] = True
        inst.gt_masks = BitMasks(mask)
        image = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
        frame = {"image": image, "height": size[0], "width": size[1], "instances": inst,
                 "video_id": 0, "frame_idx": t}
        if cfg.VCM.PAIRS.LOAD_ORIGINAL:
            frame["original"] = (image.float() + 8 * torch.randn(image.shape, generator=g)).clamp(0, 255)
        frames.append(frame)
    return {"frames": frames}


@pytest.mark.parametrize("path", VIS_CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_vis_config_trains_one_iteration_and_segments_a_video(path):
    cfg = load_cfg(path)
    model = _model(path).train()
    optimizer = VCMTrainer.build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with EventStorage(0):
        losses = model([_fake_clip(cfg), _fake_clip(cfg, seed=1)])
        total = sum(losses.values())
        assert "loss_mask" in losses and torch.isfinite(total)
        total.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed
    if cfg.MODEL.VCM.TRAINABLE:  # Ours-FD: only the CDRE modules move
        assert all(any(n.startswith(p) for p in cfg.MODEL.VCM.TRAINABLE) for n in changed)
    model.eval()
    clip = _fake_clip(cfg)
    for f in clip["frames"]:
        f.pop("instances")
    with torch.no_grad():
        out = model([dict(clip, video_id=0, height=64, width=64)])[0]
    assert all(len(t["segmentations"]) == len(clip["frames"]) for t in out["tracks"])
    if cfg.MODEL.VCM.VIS.DETECTOR == "CDRERCNN":
        assert len(out["side_bits"]) == len(clip["frames"]) and min(out["side_bits"]) > 0


# ------------------------------------------------------------------ TransVFC's instance tail
def test_transvfc_instance_tail_is_the_mask_rcnn(tmp_path):
    assert VIS_DETECTOR_PREFIX == DETECTOR_PREFIX
    torch.manual_seed(2)
    vis = VCMTrainer.build_model(load_cfg(VIS_SLIM)).eval()
    path = str(tmp_path / "vis.pth")
    torch.save({"model": vis.state_dict()}, path)  # keys under "detector."
    opts = ["MODEL.VCM.TRANSVFC.TASK.INSTANCE_SEG.WEIGHTS", path]
    model = _model(VIS_TRANSVFC, *opts).eval()
    transvfc = model.detector
    tail = transvfc.tasks["instance_seg"]
    assert isinstance(tail, MaskRCNNTail)
    expected = FST_TABLE2_WEIGHTS["instance_segmentation"]
    assert transvfc.fst_weights["instance_seg"] == expected
    for name, value in vis.detector.state_dict().items():
        assert torch.equal(tail.state_dict()[name], value), name
    # on uncoded pixels the tail gives exactly the Mask R-CNN's predictions
    transvfc.inference_input = "pixels"
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    frame = {"image": image, "height": 96, "width": 128}
    with torch.no_grad():
        a = vis.detector([frame])[0]["instances"]
        b = transvfc([frame])[0]["instances"]
    assert len(a) > 0 and torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)
    bad = str(tmp_path / "bad.pth")
    torch.save({"model": {"something.else": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="does not hold the network of MaskRCNNTail"):
        _model(VIS_TRANSVFC, "MODEL.VCM.TRANSVFC.TASK.INSTANCE_SEG.WEIGHTS", bad)


# ------------------------------------------------------------------ streaming prediction
def _bgr_frames(n, video_index=0):
    video = render_video(VAL_SPEC, video_index)
    return [np.ascontiguousarray(f[:, :, ::-1]) for f in video.frames[:n]]


def test_video_predictor_transvfc_bits_equal_a_whole_stream_encode():
    cfg = load_cfg(os.path.join(SYNTH, "transvfc_stage2_slim_detection.yaml"),
                   "MODEL.VCM.TRANSVFC.GOP", "3")
    torch.manual_seed(0)
    predictor = VideoPredictor(cfg)
    frames = _bgr_frames(5)
    outs = [predictor(f) for f in frames]
    assert [o["frame_type"] for o in outs] == ["I", "P", "P", "I", "P"]
    images = [torch.as_tensor(f.astype("float32").transpose(2, 0, 1)) for f in frames]
    encoded = predictor.model.encode_video(images)
    assert [o["bits"] for o in outs] == encoded.frame_bits
    assert predictor.total_bits == 8 * len(encoded.stream)
    assert predictor.bpp == pytest.approx(8 * len(encoded.stream) / (5 * 128 * 128))
    predictor.reset()  # a new video: a new stream with its header and an I-frame
    assert predictor(frames[0])["bits"] == outs[0]["bits"]
    with pytest.raises(ValueError, match="a frame is coded once"):
        predictor(frames[1], bits=100)
    with pytest.raises(ValueError, match="call reset"):
        predictor(np.zeros((64, 64, 3), np.uint8))


def test_video_predictor_cdre_sender_and_receiver_agree():
    cfg = load_cfg(os.path.join(SYNTH, "cdre_mask_rcnn_R18_slim_ours.yaml"))
    torch.manual_seed(0)
    sender = VideoPredictor(cfg)
    receiver = VideoPredictor(cfg)
    receiver.model.load_state_dict(sender.model.state_dict())  # the same (random) weights
    originals = _bgr_frames(2)
    rng = np.random.default_rng(0)
    decoded = [np.clip(f + rng.normal(0, 10, f.shape), 0, 255).astype(np.uint8) for f in originals]
    side = 0
    for original, frame in zip(originals, decoded):
        stream = sender.encode_side_stream(original, frame)
        a = sender(frame, original=original, bits=1000)
        b = receiver(frame, side_stream=stream, bits=1000)
        assert a["side_bits"] == b["side_bits"] == 8 * len(stream)
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        side += a["side_bits"]  # the video's side stream: its header on the first frame only
    assert sender.total_bits == receiver.total_bits == 2 * 1000 + side


def test_video_predictor_tracks_equal_whole_video_inference():
    cfg = load_cfg(VIS_SLIM)
    torch.manual_seed(3)
    predictor = VideoPredictor(cfg)
    video = next(iter(build_video_test_loader(cfg, "vcm_synth_vis_val")))[0]
    frames = _bgr_frames(12, video_index=0)
    for frame, mapped in zip(frames, video["frames"]):  # the loader reads the same pixels
        assert np.array_equal(frame.transpose(2, 0, 1), mapped["image"].numpy())
    per_frame = [predictor(f) for f in frames]
    assert all(len(o["instances"].ID) == len(o["instances"]) for o in per_frame)
    with torch.no_grad():
        whole = predictor.model([video])[0]
    assert predictor.tracks() == whole
    with pytest.raises(ValueError, match="VideoInstanceSegmentor"):
        VideoPredictor(load_cfg(os.path.join(SYNTH, "faster_rcnn_R18_slim.yaml"))).tracks()


# ------------------------------------------------------------------ video data errors
def test_video_data_errors_name_the_video(tmp_path):
    cfg = load_cfg(VIS_SLIM)
    videos = load_synthetic_videos(VAL_SPEC)[:1]
    video = dict(videos[0], video_id=77)
    with pytest.raises(ValueError, match="video 77: annotations has 11 entries for 12 frames"):
        to_video_dicts([dict(video, annotations=video["annotations"][:11])])
    mapper = ClipDatasetMapper(cfg, True)
    missing = dict(video, file_names=[str(tmp_path / "gone.png")] + video["file_names"][1:])
    mapper.clip_length, mapper.frame_stride = 12, 1
    with pytest.raises(FileNotFoundError, match="video 77 frame 0"):
        mapper(to_video_dicts([missing])[0])
    wrong = json.loads(json.dumps(video))
    wrong["annotations"][3][0]["segmentation"]["size"] = [64, 64]
    with pytest.raises(ValueError, match=r"video 77 frame 3: the mask of object .* is \(64, 64\)"):
        mapper(to_video_dicts([wrong])[0])
    small = dict(video, height=100)
    with pytest.raises(ValueError, match="video 77 frame 0"):
        mapper(to_video_dicts([small])[0])


# ------------------------------------------------------------------ through tools/train_net.py
def _train_net():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_net_trains_and_evaluates_vis_with_rate(tmp_path):
    """2 iterations on clips, then YouTube-VIS AP and bpp on a compressed VIS pair dataset
    (bits of the manifest) and on TransVFC streams (bits of the model), on the first two
    validation videos."""
    with shortened({"vcm_synth_vis_val": 2}):
        _train_and_evaluate_vis(tmp_path)


def _train_and_evaluate_vis(tmp_path):
    from vcm_d2.engine.compress import compress_dataset

    manifests = compress_dataset("vcm_synth_vis_val", "x264", [40], str(tmp_path / "comp"),
                                 codec_options={"gop": 12}, progress=False)
    with open(manifests[40]) as f:
        manifest_bpp = json.load(f)["bpp"]
    train_net = _train_net()
    # few detections per frame: random weights would give 100 low-score tracks per video
    common = ["DATALOADER.NUM_WORKERS", "0", "VCM.PAIRS.ROOTS", f"('{tmp_path / 'comp'}',)",
              "DATASETS.TEST", "('vcm_synth_vis_val@x264_q40',)", "TEST.DETECTIONS_PER_IMAGE", "5"]
    train_net.main(train_net.default_argument_parser().parse_args([
        "--config-file", VIS_SLIM, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(tmp_path / "out"), *common]))
    final = tmp_path / "out" / "model_final.pth"
    res = train_net.main(train_net.default_argument_parser().parse_args([
        "--config-file", VIS_SLIM, "--eval-only", "MODEL.WEIGHTS", str(final),
        "OUTPUT_DIR", str(tmp_path / "eval"), *common]))
    assert 0.0 <= res["segm"]["AP"] <= 100.0 and "AR10" in res["segm"]
    assert res["rate"]["frames"] == 24
    assert res["rate"]["bpp"] == pytest.approx(manifest_bpp, rel=1e-9)
    written = tmp_path / "eval" / "inference" / "vcm_synth_vis_val@x264_q40" / "results.json"
    assert json.loads(written.read_text())  # the official submission format

    res = train_net.main(train_net.default_argument_parser().parse_args([
        "--config-file", VIS_TRANSVFC, "--eval-only", "OUTPUT_DIR", str(tmp_path / "tvfc"),
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "('vcm_synth_vis_val',)",
        "TEST.DETECTIONS_PER_IMAGE", "5"]))
    assert res["rate"]["frames"] == 24 and res["rate"]["bpp"] > 0 and res["rate"]["side_bpp"] == 0
    assert "AP" in res["segm"]


def test_video_test_loader_splits_whole_videos_across_ranks_and_workers(monkeypatch):
    """Each rank gets whole videos (never part of one), together every video exactly once; loader
    worker processes map the same videos."""
    from detectron2.utils import comm

    cfg = load_cfg(VIS_SLIM, "DATALOADER.NUM_WORKERS", "2")
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        videos = [v for batch in build_video_test_loader(cfg, "vcm_synth_vis_val") for v in batch]
        assert all([f["frame_idx"] for f in v["frames"]] == list(range(12)) for v in videos)
        seen.append([v["video_id"] for v in videos])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [v["video_id"] for v in load_synthetic_videos(VAL_SPEC)]
