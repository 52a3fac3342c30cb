"""Tests of the synthetic video benchmark (tiny specs, CPU, seconds)."""
import dataclasses
import os
import time

import numpy as np
import pytest
from PIL import Image

from vcm_d2.data.synthetic import (
    SPLIT_SPECS,
    CLASS_NAMES,
    IGNORE_LABEL,
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    PERSON_CATEGORY_ID,
    STUFF_CLASSES,
    TRAIN_SPEC,
    VAL_SPEC,
    SyntheticSpec,
    dataset_dir,
    load_synthetic_images,
    load_synthetic_semseg,
    load_synthetic_videos,
    materialize,
    register_synthetic,
    render_video,
)

TINY = SyntheticSpec(num_videos=2, frames_per_video=4, height=64, width=64, max_objects=6,
                     max_object_size=24, seed=3)
SPLIT_NAMES = [f"vcm_synth{kind}_{split}" for kind in ("", "_vis", "_sem")
               for split in ("train", "val", "test", "holdout")]


@pytest.fixture(scope="module")
def tiny_videos():
    return [render_video(TINY, i) for i in range(TINY.num_videos)]


def test_determinism_and_seed():
    a, b = render_video(TINY, 1), render_video(TINY, 1)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.semantic.tobytes() == b.semantic.tobytes()
    c = render_video(dataclasses.replace(TINY, seed=TINY.seed + 1), 1)
    assert a.frames.tobytes() != c.frames.tobytes()
    # Videos of one spec differ from each other.
    assert render_video(TINY, 0).frames.tobytes() != a.frames.tobytes()


def test_video_independent_of_spec_size():
    """Video i depends only on (seed, i) and the rendering params, not on num_videos."""
    bigger = dataclasses.replace(TINY, num_videos=5)
    assert render_video(bigger, 1).frames.tobytes() == render_video(TINY, 1).frames.tobytes()


def test_shapes_and_dtypes(tiny_videos):
    v = tiny_videos[0]
    T, H, W = TINY.frames_per_video, TINY.height, TINY.width
    assert v.frames.shape == (T, H, W, 3) and v.frames.dtype == np.uint8
    assert v.semantic.shape == (T, H, W) and v.semantic.dtype == np.uint8
    assert len(v.instances) == T
    # Frames move: consecutive frames differ (objects and background pan).
    assert all(not np.array_equal(v.frames[t], v.frames[t + 1]) for t in range(T - 1))


def test_annotation_consistency(tiny_videos):
    for v in tiny_videos:
        for t, instances in enumerate(v.instances):
            assert instances, "every tiny frame should contain objects"
            union = np.zeros((TINY.height, TINY.width), dtype=bool)
            expected_sem = np.zeros((TINY.height, TINY.width), dtype=np.int32)
            for inst in instances:
                mask = inst["mask"]
                assert mask.dtype == bool and mask.sum() >= TINY.min_visible_pixels
                ys, xs = np.nonzero(mask)
                assert inst["bbox"] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert not (union & mask).any(), "visible masks must not overlap"
                union |= mask
                expected_sem[mask] = inst["category_id"] + 1
            sem = v.semantic[t].astype(np.int32)
            assert np.array_equal(sem[union], expected_sem[union])
            # Outside annotated instances: background, or ignore for tiny fragments.
            assert set(np.unique(sem[~union])) <= {0, IGNORE_LABEL}


def test_keypoints():
    spec = dataclasses.replace(TINY, num_videos=12)
    seen_visible = seen_occluded = 0
    for i in range(spec.num_videos):
        v = render_video(spec, i)
        for instances in v.instances:
            for inst in instances:
                kps = inst["keypoints"]
                if inst["category_id"] != PERSON_CATEGORY_ID:
                    assert kps is None
                    continue
                assert kps.shape == (len(KEYPOINT_NAMES), 3)
                labeled = kps[:, 2] > 0
                assert np.all(kps[~labeled] == 0)
                x, y = kps[labeled, 0], kps[labeled, 1]
                assert np.all((x >= 0) & (x < spec.width) & (y >= 0) & (y < spec.height))
                x0, y0, x1, y1 = inst["bbox"]
                vis = kps[:, 2] == 2
                seen_visible += int(vis.sum())
                seen_occluded += int((kps[:, 2] == 1).sum())
                assert np.all((kps[vis, 0] >= x0) & (kps[vis, 0] <= x1))
                assert np.all((kps[vis, 1] >= y0) & (kps[vis, 1] <= y1))
                # A visible keypoint lies on the instance's visible mask.
                for kx, ky in kps[vis, :2]:
                    assert inst["mask"][int(ky), int(kx)]
                # An occluded keypoint is not on the visible mask.
                for kx, ky in kps[kps[:, 2] == 1, :2]:
                    assert not inst["mask"][int(ky), int(kx)]
    assert seen_visible > 0 and seen_occluded > 0


def test_person_left_right_consistent():
    """Left limbs lie on the figure's left (image right when nearly upright): flip-safe."""
    spec = dataclasses.replace(TINY, num_videos=8)
    idx = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    checked = 0
    for i in range(spec.num_videos):
        for instances in render_video(spec, i).instances:
            for inst in instances:
                kps = inst["keypoints"]
                if kps is None:
                    continue
                for left, right in KEYPOINT_FLIP_MAP:
                    a, b = kps[idx[left]], kps[idx[right]]
                    if a[2] > 0 and b[2] > 0:
                        assert a[0] > b[0]
                        checked += 1
    assert checked > 0


def test_tracks_and_sizes(tiny_videos):
    smallest = np.inf
    for v in tiny_videos:
        track_class = {}
        for instances in v.instances:
            ids = [inst["track_id"] for inst in instances]
            assert len(ids) == len(set(ids))
            for inst in instances:
                # A track keeps its class through the video.
                assert track_class.setdefault(inst["track_id"], inst["category_id"]) == \
                    inst["category_id"]
                x0, y0, x1, y1 = inst["bbox"]
                smallest = min(smallest, max(x1 - x0, y1 - y0))
        # Tracks persist across frames (objects move smoothly, most stay visible).
        per_frame = [{inst["track_id"] for inst in f} for f in v.instances]
        assert len(set.intersection(*per_frame)) >= 1
    assert smallest <= TINY.min_object_size + 1
    classes = {inst["category_id"] for v in tiny_videos for f in v.instances for inst in f}
    assert classes <= set(range(len(CLASS_NAMES)))
    assert len(classes) >= 3


def test_spec_validation():
    with pytest.raises(ValueError, match="min_object_size"):
        SyntheticSpec(min_object_size=10, max_object_size=5)
    with pytest.raises(ValueError, match="max_object_size"):
        SyntheticSpec(height=32, width=32, max_object_size=40)
    with pytest.raises(ValueError, match="num_videos"):
        SyntheticSpec(num_videos=0)
    with pytest.raises(ValueError, match="video_index"):
        render_video(TINY, TINY.num_videos)


def test_materialize_idempotent_and_atomic(tmp_path):
    root = str(tmp_path)
    out = materialize(TINY, root)
    assert out == dataset_dir(TINY, root)
    assert os.path.isfile(os.path.join(out, "DONE"))
    # Nothing but the final directory is left in root (the temp dir was renamed).
    assert os.listdir(root) == [os.path.basename(out)]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs)
    assert sum(f.endswith(".png") for f in files) == 2 * TINY.num_videos * TINY.frames_per_video
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    assert materialize(TINY, root) == out
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes
    # PNGs hold exactly the rendered pixels and semantic labels.
    video = render_video(TINY, 1)
    frame = np.asarray(Image.open(os.path.join(out, "images/v0001/f0002.png")))
    sem = np.asarray(Image.open(os.path.join(out, "semseg/v0001/f0002.png")))
    assert np.array_equal(frame, video.frames[2])
    assert np.array_equal(sem, video.semantic[2])
    # A directory that materialize() did not finish is refused, not silently reused.
    other = dataclasses.replace(TINY, seed=99)
    os.makedirs(dataset_dir(other, root))
    with pytest.raises(RuntimeError, match="DONE"):
        materialize(other, root)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
def test_loaders(tmp_path):
    from pycocotools import mask as mask_util

    root = str(tmp_path)
    images = load_synthetic_images(TINY, root)
    assert len(images) == TINY.num_videos * TINY.frames_per_video
    assert len({d["image_id"] for d in images}) == len(images)
    video = render_video(TINY, 0)
    d = next(d for d in images if d["video_id"] == 1 and d["frame_idx"] == 1)
    assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
    assert (d["height"], d["width"]) == (TINY.height, TINY.width)
    assert len(d["annotations"]) == len(video.instances[1])
    for anno, inst in zip(d["annotations"], video.instances[1]):
        assert np.array_equal(mask_util.decode(anno["segmentation"]).astype(bool), inst["mask"])
        assert anno["bbox"] == list(inst["bbox"]) and anno["iscrowd"] == 0
        assert anno["track_id"] == inst["track_id"]
        assert len(anno["keypoints"]) == 3 * len(KEYPOINT_NAMES)
        if inst["keypoints"] is None:
            assert not any(anno["keypoints"])

    videos = load_synthetic_videos(TINY, root)
    assert [v["video_id"] for v in videos] == [1, 2]
    v = videos[0]
    assert v["length"] == len(v["file_names"]) == len(v["annotations"]) == TINY.frames_per_video
    assert [o["id"] for o in v["annotations"][1]] == [i["track_id"] for i in video.instances[1]]

    sem = load_synthetic_semseg(TINY, root)
    assert [s["file_name"] for s in sem] == [d["file_name"] for d in images]
    labels = np.asarray(Image.open(sem[0]["sem_seg_file_name"]))
    assert labels.max() < len(STUFF_CLASSES) or labels.max() == IGNORE_LABEL


@pytest.fixture
def clean_catalog():
    """Unregister the synthetic names for the test and restore them afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n)) for n in SPLIT_NAMES
             if n in DatasetCatalog}
    for n in SPLIT_NAMES:
        if n in DatasetCatalog:
            DatasetCatalog.remove(n)
        if n in MetadataCatalog:
            MetadataCatalog.remove(n)
    yield
    for n in SPLIT_NAMES:
        if n in DatasetCatalog:
            DatasetCatalog.remove(n)
        if n in MetadataCatalog:
            MetadataCatalog.remove(n)
    for n, (func, meta) in saved.items():
        DatasetCatalog.register(n, func)
        MetadataCatalog[n] = meta


def test_register_and_coco_conversion(tmp_path, clean_catalog):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.coco import convert_to_coco_dict

    root = str(tmp_path)
    register_synthetic(root)
    register_synthetic(root)  # second call is a no-op
    assert set(SPLIT_NAMES) <= set(DatasetCatalog.list())
    assert not os.listdir(root), "registration must be lazy"
    meta = MetadataCatalog.get("vcm_synth_val")
    assert meta.thing_classes == CLASS_NAMES and meta.evaluator_type == "coco"
    assert meta.keypoint_names == KEYPOINT_NAMES and meta.video_key == "video_id"
    assert meta.spec == dataclasses.asdict(VAL_SPEC)
    assert MetadataCatalog.get("vcm_synth_vis_val").evaluator_type == "ytvis"
    sem_meta = MetadataCatalog.get("vcm_synth_sem_val")
    assert sem_meta.stuff_classes == STUFF_CLASSES and sem_meta.ignore_label == IGNORE_LABEL
    assert sem_meta.evaluator_type == "sem_seg"
    assert MetadataCatalog.get("vcm_synth_train").spec == dataclasses.asdict(TRAIN_SPEC)

    dicts = DatasetCatalog.get("vcm_synth_val")
    assert len(dicts) == VAL_SPEC.num_videos * VAL_SPEC.frames_per_video
    assert os.path.isdir(dataset_dir(VAL_SPEC, root))
    assert len(DatasetCatalog.get("vcm_synth_vis_val")) == VAL_SPEC.num_videos
    assert len(DatasetCatalog.get("vcm_synth_sem_val")) == len(dicts)

    coco = convert_to_coco_dict("vcm_synth_val")
    assert len(coco["images"]) == len(dicts)
    assert len(coco["annotations"]) == sum(len(d["annotations"]) for d in dicts)
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES
    persons = [a for a in coco["annotations"] if a["category_id"] == PERSON_CATEGORY_ID]
    assert persons and any(a["num_keypoints"] > 0 for a in persons)


def test_train_and_val_disjoint():
    assert TRAIN_SPEC.seed != VAL_SPEC.seed
    a = render_video(TRAIN_SPEC, 0).frames
    b = render_video(VAL_SPEC, 0).frames
    assert a.tobytes() != b.tobytes()


def test_holdout_split_is_new_frames_of_the_test_splits_size():
    """Final figures are reported on frames no choice was made on: the holdout split has its
    own seed (other videos than every other split) and the test split's size."""
    specs = list(SPLIT_SPECS.values())
    assert len({s.seed for s in specs}) == len(specs)
    holdout, test = SPLIT_SPECS["holdout"], SPLIT_SPECS["test"]
    assert dataclasses.replace(holdout, seed=test.seed) == test
    assert render_video(holdout, 0).frames.tobytes() != render_video(test, 0).frames.tobytes()


def test_generation_speed():
    start = time.perf_counter()
    for i in range(TRAIN_SPEC.num_videos):
        render_video(TRAIN_SPEC, i)
    assert time.perf_counter() - start < 30.0
