"""The real-data loaders, tested by a round trip of the synthetic benchmark through the official
YouTube-VIS 2019, VSPW and COCO-2017 layouts.

vcm_d2.data.export writes the synthetic val split in each layout; the real-data registrations read
it back; training records (through detectron2's DatasetMapper) and evaluation results must equal
those of the synthetic registrations.
"""
import contextlib
import math

import numpy as np
import pytest
import torch
from catalog_helpers import catalog_aside
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools import mask as mask_util

from vcm_d2.data.datasets import builtin
from vcm_d2.data.datasets.vspw import VSPW_CLASSES
from vcm_d2.data.export import (
    coco_2017_paths,
    export_synthetic,
    export_video_name,
    ytvis_annotation_id,
)
from vcm_d2.data.synthetic import KEYPOINT_OKS_SIGMAS, VAL_SPEC
from vcm_d2.evaluation.rate_task import load_sem_seg

SPLIT = "val"  # the smaller split is enough to exercise every loader path
SYNTH_IMAGES = f"vcm_synth_{SPLIT}"
SYNTH_VIDEOS = f"vcm_synth_vis_{SPLIT}"
SYNTH_SEMSEG = f"vcm_synth_sem_{SPLIT}"
YTVIS_VIDEOS, YTVIS_FRAMES = "ytvis_2019_val", "ytvis_2019_val_frames"
VSPW_NAME = "vspw_val"
COCO_NAME = "test_roundtrip_coco_val"  # throwaway: the built-in coco_2017_* carry COCO's 80 classes
BUILTIN_YTVIS = ["ytvis_2019_train", "ytvis_2019_val", "ytvis_2019_train_frames",
                 "ytvis_2019_val_frames"]
BUILTIN_VSPW = ["vspw_train", "vspw_val", "vspw_test"]

# Fake predictions: ground truth, degraded so that AP is neither 0 nor 100.
SEED = 0
KEEP_PROBABILITY = 0.8  # chance that a ground-truth instance is detected
WRONG_CLASS_PROBABILITY = 0.1
BOX_JITTER_PX = 1.5  # std of the box corner noise
MAX_MASK_SHIFT_PX = 1  # masks are rolled by up to this many pixels per axis
KEYPOINT_JITTER_PX = 1.0
FALSE_POSITIVE_FRACTION = 0.25  # false-positive box side, as a fraction of the image side
SEMSEG_NOISE_FRACTION = 0.05  # pixels relabelled at random
# Mapping and per-pixel evaluation use every third frame: all videos, a third of the time.
FRAME_STRIDE = 3
COCO_TASKS = ("bbox", "segm", "keypoints")


# ---------------------------------------------------------------------------------------------
# Fixtures: export once per module, register under the real-data names, restore the catalog
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("real_format"))
    export_synthetic(root, splits=(SPLIT,))
    return root


@pytest.fixture(scope="module")
def ytvis(export_root):
    with catalog_aside(BUILTIN_YTVIS):
        # The synthetic classes are not YouTube-VIS 2019's: the json's classes, as for any
        # dataset of one's own in this layout.
        registered = builtin.register_all_ytvis_2019(export_root, metadata={})
        assert set(registered) == {YTVIS_VIDEOS, YTVIS_FRAMES}
        yield


@pytest.fixture(scope="module")
def vspw(export_root):
    with catalog_aside(BUILTIN_VSPW):
        assert VSPW_NAME in builtin.register_all_vspw(export_root)
        yield


@pytest.fixture(scope="module")
def coco(export_root):
    """The exported COCO json, registered as a user would (with the keypoint metadata copied)."""
    with catalog_aside([COCO_NAME]):
        register_coco_instances(COCO_NAME, {}, *coco_2017_paths(export_root, SPLIT))
        synth = MetadataCatalog.get(SYNTH_IMAGES)
        MetadataCatalog.get(COCO_NAME).set(keypoint_names=synth.keypoint_names,
                                           keypoint_flip_map=synth.keypoint_flip_map)
        # Loading sets thing_dataset_id_to_contiguous_id, which COCOEvaluator needs.
        DatasetCatalog.get(COCO_NAME)
        yield


@contextlib.contextmanager
def _restore_json_file(name):
    """COCOEvaluator converts a dataset without ``json_file`` into output_dir and records the path
    in its metadata for good; undo that so later tests do not read this test's temp folder."""
    meta = MetadataCatalog.get(name)
    had = "json_file" in meta.as_dict()
    try:
        yield
    finally:
        if not had and "json_file" in meta.as_dict():
            delattr(meta, "json_file")


# ---------------------------------------------------------------------------------------------
# Training records
# ---------------------------------------------------------------------------------------------
def _mapper(dataset_name, keypoints=False):
    """DatasetMapper in training mode, deterministic: native size, no flip, bitmasks."""
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (dataset_name,)  # the keypoint flip indices come from its metadata
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN = (VAL_SPEC.height,)
    cfg.INPUT.MAX_SIZE_TRAIN = max(VAL_SPEC.height, VAL_SPEC.width)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.KEYPOINT_ON = keypoints
    return DatasetMapper(cfg, is_train=True)


def _assert_same_training_record(a, b, keypoints=False):
    assert torch.equal(a["image"], b["image"])
    ia, ib = a["instances"], b["instances"]
    assert len(ia) == len(ib)
    assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor)
    assert torch.equal(ia.gt_classes, ib.gt_classes)
    assert torch.equal(ia.gt_masks.tensor, ib.gt_masks.tensor)
    if keypoints:
        assert torch.equal(ia.gt_keypoints.tensor, ib.gt_keypoints.tensor)


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _by_track(objs, video_id=None):
    """Frame objects keyed by track id (the synthetic ids mapped to the exported YTVIS ones)."""
    return {(o["id"] if video_id is None else ytvis_annotation_id(video_id, o["id"])): o
            for o in objs}


def test_ytvis_videos_match_synthetic(ytvis):
    exported, synth = DatasetCatalog.get(YTVIS_VIDEOS), DatasetCatalog.get(SYNTH_VIDEOS)
    assert [v["video_id"] for v in exported] == [v["video_id"] for v in synth]
    num_objects = 0
    for ev, sv in zip(exported, synth):
        h, w = sv["height"], sv["width"]
        assert (ev["height"], ev["width"], ev["length"]) == (h, w, sv["length"])
        assert len(ev["file_names"]) == len(sv["file_names"])
        for fe, fs in zip(ev["file_names"], sv["file_names"]):
            np.testing.assert_array_equal(_read(fe), _read(fs))
        for objs_e, objs_s in zip(ev["annotations"], sv["annotations"], strict=True):
            e, s = _by_track(objs_e), _by_track(objs_s, sv["video_id"])
            assert sorted(e) == sorted(s)
            for track, obj in s.items():
                assert e[track]["category_id"] == obj["category_id"]
                assert e[track]["bbox"] == list(obj["bbox"])
                np.testing.assert_array_equal(mask_util.decode(e[track]["segmentation"]),
                                              mask_util.decode(obj["segmentation"]))
            num_objects += len(s)
    assert num_objects > 0


def test_ytvis_frames_map_like_synthetic(ytvis):
    exported, synth = DatasetCatalog.get(YTVIS_FRAMES), DatasetCatalog.get(SYNTH_IMAGES)
    assert [(d["video_id"], d["frame_idx"]) for d in exported] == [
        (d["video_id"], d["frame_idx"]) for d in synth]
    map_e, map_s = _mapper(YTVIS_FRAMES), _mapper(SYNTH_IMAGES)
    for de, ds in zip(exported[::FRAME_STRIDE], synth[::FRAME_STRIDE]):
        _assert_same_training_record(map_e(de), map_s(ds))


def test_coco_maps_like_synthetic(coco):
    exported = {d["image_id"]: d for d in DatasetCatalog.get(COCO_NAME)}
    synth = DatasetCatalog.get(SYNTH_IMAGES)
    assert sorted(exported) == sorted(d["image_id"] for d in synth)
    map_e, map_s = _mapper(COCO_NAME, keypoints=True), _mapper(SYNTH_IMAGES, keypoints=True)
    visible_keypoints = 0
    for ds in synth[::FRAME_STRIDE]:
        a, b = map_e(exported[ds["image_id"]]), map_s(ds)
        _assert_same_training_record(a, b, keypoints=True)
        visible_keypoints += int((b["instances"].gt_keypoints.tensor[..., 2] > 0).sum())
    assert visible_keypoints > 0  # the keypoint comparison is not vacuous


def test_vspw_maps_like_synthetic(vspw):
    exported, synth = DatasetCatalog.get(VSPW_NAME), DatasetCatalog.get(SYNTH_SEMSEG)
    assert [(d["video_id"], d["frame_idx"]) for d in exported] == [
        (export_video_name(SPLIT, d["video_id"]), d["frame_idx"]) for d in synth]
    map_e, map_s = _mapper(VSPW_NAME), _mapper(SYNTH_SEMSEG)
    for de, ds in zip(exported[::FRAME_STRIDE], synth[::FRAME_STRIDE]):
        a, b = map_e(de), map_s(ds)
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["sem_seg"], b["sem_seg"])


def test_ytvis_official_registration_refuses_other_classes(export_root):
    """The default registration means the official 40 classes: a json with others is refused
    with a message that names the way to load it."""
    with catalog_aside(BUILTIN_YTVIS):
        builtin.register_all_ytvis_2019(export_root)
        with pytest.raises(ValueError, match=r"metadata=\{\}"):
            DatasetCatalog.get(YTVIS_VIDEOS)


# ---------------------------------------------------------------------------------------------
# Evaluation results
# ---------------------------------------------------------------------------------------------
def _shifted(mask, rng):
    dy, dx = rng.integers(-MAX_MASK_SHIFT_PX, MAX_MASK_SHIFT_PX + 1, size=2)
    return np.roll(mask, (int(dy), int(dx)), axis=(0, 1))


def _predicted_class(category_id, num_classes, rng):
    if rng.random() < WRONG_CLASS_PROBABILITY:
        return int(rng.integers(num_classes))
    return int(category_id)


def _false_positive_mask(height, width, rng):
    side_h, side_w = int(height * FALSE_POSITIVE_FRACTION), int(width * FALSE_POSITIVE_FRACTION)
    y0, x0 = int(rng.integers(height - side_h)), int(rng.integers(width - side_w))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y0 + side_h, x0:x0 + side_w] = True
    return mask


def _fake_instances(record, num_classes, num_keypoints, rng):
    """Detections of one image: most GT instances, jittered, plus one false positive."""
    h, w = record["height"], record["width"]
    boxes, classes, masks, keypoints = [], [], [], []
    for obj in record["annotations"]:
        if rng.random() >= KEEP_PROBABILITY:
            continue
        boxes.append(np.asarray(obj["bbox"], dtype=np.float64) + rng.normal(0, BOX_JITTER_PX, 4))
        classes.append(_predicted_class(obj["category_id"], num_classes, rng))
        masks.append(_shifted(mask_util.decode(obj["segmentation"]).astype(bool), rng))
        kps = np.asarray(obj["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)
        kps[:, :2] += rng.normal(0, KEYPOINT_JITTER_PX, (num_keypoints, 2))
        keypoints.append(kps)
    fp = _false_positive_mask(h, w, rng)
    rows, cols = np.flatnonzero(fp.any(1)), np.flatnonzero(fp.any(0))
    boxes.append(np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64))
    classes.append(int(rng.integers(num_classes)))
    masks.append(fp)
    keypoints.append(np.column_stack([rng.uniform(0, w, num_keypoints),
                                      rng.uniform(0, h, num_keypoints), np.full(num_keypoints, 2.0)]))
    instances = Instances((h, w))
    instances.pred_boxes = Boxes(torch.tensor(np.stack(boxes), dtype=torch.float32))
    instances.scores = torch.tensor(rng.uniform(size=len(boxes)), dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.pred_masks = torch.from_numpy(np.stack(masks))
    instances.pred_keypoints = torch.tensor(np.stack(keypoints), dtype=torch.float32)
    return instances


def _assert_same_metrics(a, b, keys=None):
    """Equal metrics (of ``keys`` if given); NaN equals NaN (undefined on both sides)."""
    if keys is not None:
        a, b = {k: a[k] for k in keys}, {k: b[k] for k in keys}
    np.testing.assert_equal(a, b)
    return a


def _check_nontrivial_ap(metrics):
    ap = metrics["AP"]
    assert not math.isnan(ap) and 0 < ap < 100, metrics


def test_coco_evaluation_identical(coco, tmp_path):
    synth = DatasetCatalog.get(SYNTH_IMAGES)
    meta = MetadataCatalog.get(SYNTH_IMAGES)
    results = {}
    with _restore_json_file(SYNTH_IMAGES):
        for name in (COCO_NAME, SYNTH_IMAGES):
            # Fresh predictions per evaluator: detectron2's instances_to_coco_json shifts
            # pred_keypoints in place.
            rng = np.random.default_rng(SEED)
            outputs = {d["image_id"]: {"instances": _fake_instances(
                d, len(meta.thing_classes), len(meta.keypoint_names), rng)} for d in synth}
            evaluator = COCOEvaluator(name, tasks=COCO_TASKS, distributed=False,
                                      output_dir=str(tmp_path / name),
                                      kpt_oks_sigmas=KEYPOINT_OKS_SIGMAS)
            evaluator.reset()
            for d in DatasetCatalog.get(name):
                evaluator.process([{"image_id": d["image_id"]}], [outputs[d["image_id"]]])
            results[name] = evaluator.evaluate()
    assert set(results[SYNTH_IMAGES]) == set(COCO_TASKS)
    _assert_same_metrics(results[COCO_NAME], results[SYNTH_IMAGES])
    for task in COCO_TASKS:
        _check_nontrivial_ap(results[SYNTH_IMAGES][task])


def _fake_label_map(label_file, num_classes, ignore_label, rng):
    """A prediction from the ground truth: shifted, ignored pixels guessed, some pixels noisy."""
    labels = load_sem_seg(label_file).copy()
    ignored = labels == ignore_label
    labels[ignored] = rng.integers(num_classes, size=int(ignored.sum()))
    labels = _shifted(labels, rng)
    noisy = rng.random(labels.shape) < SEMSEG_NOISE_FRACTION
    labels[noisy] = rng.integers(num_classes, size=int(noisy.sum()))
    return torch.from_numpy(labels)


def test_semseg_evaluation_identical(vspw):
    synth = DatasetCatalog.get(SYNTH_SEMSEG)[::FRAME_STRIDE]
    exported = DatasetCatalog.get(VSPW_NAME)[::FRAME_STRIDE]
    synth_classes = MetadataCatalog.get(SYNTH_SEMSEG).stuff_classes
    rng = np.random.default_rng(SEED)
    predictions = [_fake_label_map(d["sem_seg_file_name"], len(synth_classes),
                                   MetadataCatalog.get(SYNTH_SEMSEG).ignore_label, rng) for d in synth]
    results = {}
    for name, records in ((VSPW_NAME, exported), (SYNTH_SEMSEG, synth)):
        num_classes = len(MetadataCatalog.get(name).stuff_classes)
        evaluator = SemSegEvaluator(name, distributed=False, sem_seg_loading_fn=load_sem_seg)
        evaluator.reset()
        for record, labels in zip(records, predictions, strict=True):
            # One-hot scores over the dataset's classes: VSPW's extra 118 never win the argmax.
            scores = torch.zeros((num_classes,) + labels.shape).scatter_(0, labels[None], 1.0)
            evaluator.process([{"file_name": record["file_name"]}], [{"sem_seg": scores}])
        results[name] = evaluator.evaluate()["sem_seg"]
    # Classes absent from the ground truth (VSPW's extra 118) are left out of every mean, so the
    # summary metrics and the per-class numbers of the synthetic classes must agree.
    per_class = [(f"{kind}-{v}", f"{kind}-{s}") for kind in ("IoU", "ACC")
                 for v, s in zip(VSPW_CLASSES, synth_classes)]
    np.testing.assert_equal([results[VSPW_NAME][v] for v, _ in per_class],
                            [results[SYNTH_SEMSEG][s] for _, s in per_class])
    summary = _assert_same_metrics(results[VSPW_NAME], results[SYNTH_SEMSEG],
                                   keys=("mIoU", "fwIoU", "mACC", "pACC"))
    assert 0 < summary["mIoU"] < 100


def _fake_tracks(video, num_classes, rng):
    """Tracks of one video: most GT tracks (masks shifted, some frames dropped) plus a false
    positive present in every frame."""
    h, w = video["height"], video["width"]
    frames = len(video["file_names"])
    gt = {}
    for t, objs in enumerate(video["annotations"]):
        for obj in objs:
            gt.setdefault(obj["id"], (obj["category_id"], [None] * frames))[1][t] = obj["segmentation"]
    tracks = []
    for track_id, (category_id, segms) in sorted(gt.items()):
        if rng.random() >= KEEP_PROBABILITY:
            continue
        masks = [None if s is None or rng.random() >= KEEP_PROBABILITY else mask_util.encode(
            np.asfortranarray(_shifted(mask_util.decode(s), rng))) for s in segms]
        tracks.append({"track_id": track_id,
                       "category_id": _predicted_class(category_id, num_classes, rng),
                       "score": float(rng.uniform()), "segmentations": masks})
    fp = mask_util.encode(np.asfortranarray(_false_positive_mask(h, w, rng).astype(np.uint8)))
    tracks.append({"track_id": max(gt, default=0) + 1, "category_id": int(rng.integers(num_classes)),
                   "score": float(rng.uniform()), "segmentations": [fp] * frames})
    return {"tracks": tracks}


def test_ytvis_evaluation_identical(ytvis):
    # Imported here: the evaluator is developed separately, so a problem in it fails this test only.
    from vcm_d2.evaluation.ytvis_evaluation import YTVISEvaluator

    synth, exported = DatasetCatalog.get(SYNTH_VIDEOS), DatasetCatalog.get(YTVIS_VIDEOS)
    num_classes = len(MetadataCatalog.get(SYNTH_VIDEOS).thing_classes)
    rng = np.random.default_rng(SEED)
    outputs = {v["video_id"]: _fake_tracks(v, num_classes, rng) for v in synth}
    results = {}
    for name, videos in ((YTVIS_VIDEOS, exported), (SYNTH_VIDEOS, synth)):
        evaluator = YTVISEvaluator(name, distributed=False)
        evaluator.reset()
        for v in videos:
            inputs = {k: v[k] for k in ("video_id", "height", "width", "file_names")}
            evaluator.process([inputs], [outputs[v["video_id"]]])
        results[name] = evaluator.evaluate()["segm"]
    _assert_same_metrics(results[YTVIS_VIDEOS], results[SYNTH_VIDEOS])
    _check_nontrivial_ap(results[SYNTH_VIDEOS])
