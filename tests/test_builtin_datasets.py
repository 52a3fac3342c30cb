"""Registration of real datasets (YouTube-VIS 2019, VSPW, compressed pairs) from tiny fake trees."""
import json
import os

import numpy as np
import pytest
from catalog_helpers import catalog_aside
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util

from vcm_d2.data.datasets import builtin
from vcm_d2.data.datasets.vspw import VSPW_CLASSES, convert_vspw_masks, vspw_label_lut
from vcm_d2.data.datasets.ytvis import (
    YTVIS_2019_CATEGORIES,
    YTVIS_FRAME_ID_STRIDE,
    load_ytvis_json,
)
from vcm_d2.data.pairs import load_pair_dicts
from vcm_d2.engine.compress import compress_dataset

H, W = 20, 24
BUILTIN_NAMES = ["ytvis_2019_train", "ytvis_2019_val", "ytvis_2019_train_frames", "ytvis_2019_val_frames",
                 "vspw_train", "vspw_val", "vspw_test"]


@pytest.fixture
def clean_catalog():
    """Set the built-in names aside (they may hold real data) and drop whatever a test adds."""
    with catalog_aside(BUILTIN_NAMES):
        yield


def _jpeg(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def _uncompressed_rle(mask):
    """YTVIS stores masks as uncompressed RLE: counts is a list, column-major runs from 0."""
    flat = np.asfortranarray(mask).reshape(-1, order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": [int(c) for c in counts], "size": [H, W]}


def make_ytvis(root):
    base = os.path.join(root, "ytvis_2019")
    videos, annotations = [], []
    mask = np.zeros((H, W), np.uint8)
    mask[2:8, 3:10] = 1
    for vid, name in ((1, "aaa"), (2, "bbb")):
        files = [f"{name}/{t:05d}.jpg" for t in range(3)]
        for split in ("train", "valid"):
            for t, f in enumerate(files):
                _jpeg(os.path.join(base, split, "JPEGImages", f), vid * 10 + t)
        videos.append({"id": vid, "width": W, "height": H, "length": 3, "file_names": files})
    annotations.append({
        "id": 11, "video_id": 1, "category_id": 8, "iscrowd": 0,
        "bboxes": [[3, 2, 7, 6], None, [1, 1, 4, 4]],
        "segmentations": [_uncompressed_rle(mask), None, [[1, 1, 5, 1, 5, 5, 1, 5]]],
        "areas": [42, None, 16],
    })
    annotations.append({
        "id": 12, "video_id": 2, "category_id": 1, "iscrowd": 0,
        "bboxes": [[0, 0, 2, 2]] * 3, "segmentations": [[[0, 0, 2, 0, 2, 2, 0, 2]]] * 3, "areas": [4] * 3,
    })
    categories = [{"id": cid, "name": name} for cid, name in YTVIS_2019_CATEGORIES]
    with open(os.path.join(base, "train.json"), "w") as f:
        json.dump({"videos": videos, "annotations": annotations, "categories": categories}, f)
    with open(os.path.join(base, "valid.json"), "w") as f:
        json.dump({"videos": videos, "categories": categories}, f)
    return mask


def make_vspw(root):
    base = os.path.join(root, "VSPW")
    raw = np.zeros((H, W), np.uint8)
    raw[:5] = 1
    raw[5:10] = 124
    raw[10:15] = 255
    os.makedirs(base)
    for split, videos in (("train", ["v_a", "v_b"]), ("val", ["v_c"]), ("test", ["v_d"])):
        with open(os.path.join(base, f"{split}.txt"), "w") as f:
            f.write("\n".join(videos) + "\n")
        for i, video in enumerate(videos):
            for t in range(2):
                _jpeg(os.path.join(base, "data", video, "origin", f"{t:08d}.jpg"), i + t)
                if split != "test":
                    os.makedirs(os.path.join(base, "data", video, "mask"), exist_ok=True)
                    im = Image.fromarray(raw)
                    if t == 1:  # the release ships palette PNGs: the indices are the labels
                        im = Image.frombytes("P", (W, H), raw.tobytes())
                        im.putpalette(list(range(256)) * 3)
                    im.save(os.path.join(base, "data", video, "mask", f"{t:08d}.png"))
    return base


def test_nothing_registered_without_data(tmp_path, clean_catalog):
    assert builtin.register_all(str(tmp_path)) == []
    assert not set(BUILTIN_NAMES) & set(DatasetCatalog.list())


def test_ytvis_2019(tmp_path, clean_catalog):
    mask = make_ytvis(str(tmp_path))
    names = builtin.register_all(str(tmp_path))
    assert sorted(names) == sorted(BUILTIN_NAMES[:4])
    meta = MetadataCatalog.get("ytvis_2019_train")
    assert len(meta.thing_classes) == 40 and meta.thing_classes[38] == "earless_seal"
    assert meta.evaluator_type == "ytvis"

    videos = DatasetCatalog.get("ytvis_2019_train")
    assert [v["video_id"] for v in videos] == [1, 2]
    v = videos[0]
    assert v["length"] == 3 and (v["height"], v["width"]) == (H, W)
    assert all(os.path.isfile(f) for f in v["file_names"])
    assert v["image_ids"] == [YTVIS_FRAME_ID_STRIDE + t for t in range(3)]
    per_frame = v["annotations"]
    assert [len(objs) for objs in per_frame] == [1, 0, 1]  # absent in frame 1
    obj = per_frame[0][0]
    assert obj["id"] == 11 and obj["category_id"] == 7  # "dog" (id 8) -> contiguous 7
    assert obj["bbox"] == [3, 2, 10, 8] and obj["bbox_mode"] == BoxMode.XYXY_ABS
    np.testing.assert_array_equal(mask_util.decode(obj["segmentation"]), mask)
    assert isinstance(per_frame[2][0]["segmentation"], list)
    assert videos[1]["annotations"][0][0]["category_id"] == 0  # person

    val = DatasetCatalog.get("ytvis_2019_val")
    assert len(val) == 2 and "annotations" not in val[0]

    frames = DatasetCatalog.get("ytvis_2019_train_frames")
    assert len(frames) == 6 and MetadataCatalog.get("ytvis_2019_train_frames").evaluator_type == "coco"
    f1 = frames[1]
    assert (f1["video_id"], f1["frame_idx"], f1["image_id"]) == (1, 1, YTVIS_FRAME_ID_STRIDE + 1)
    assert f1["annotations"] == [] and frames[2]["annotations"][0]["track_id"] == 11
    assert len({f["image_id"] for f in frames}) == 6


def test_ytvis_class_mismatch(tmp_path, clean_catalog):
    make_ytvis(str(tmp_path))
    json_file = os.path.join(tmp_path, "ytvis_2019", "train.json")
    MetadataCatalog.get("tmp_ytvis_check").set(thing_classes=["only", "two"])
    with pytest.raises(ValueError, match="registered with"):
        load_ytvis_json(json_file, str(tmp_path), "tmp_ytvis_check")
    MetadataCatalog.remove("tmp_ytvis_check")


def test_vspw(tmp_path, clean_catalog):
    base = make_vspw(str(tmp_path))
    names = builtin.register_all(str(tmp_path))
    assert sorted(names) == ["vspw_test", "vspw_train", "vspw_val"]
    meta = MetadataCatalog.get("vspw_val")
    assert len(meta.stuff_classes) == 124 == len(VSPW_CLASSES) and meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg"
    with pytest.raises(FileNotFoundError, match="convert the VSPW masks"):
        DatasetCatalog.get("vspw_train")

    assert convert_vspw_masks(base) == 6
    assert convert_vspw_masks(base) == 0  # idempotent
    train = DatasetCatalog.get("vspw_train")
    assert [(d["video_id"], d["frame_idx"]) for d in train] == [
        ("v_a", 0), ("v_a", 1), ("v_b", 0), ("v_b", 1)]
    for d in train:
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        assert label[0, 0] == 0 and label[6, 0] == 123 and label[12, 0] == 255 and label[-1, 0] == 255
    test = DatasetCatalog.get("vspw_test")
    assert len(test) == 2 and "sem_seg_file_name" not in test[0]
    lut = vspw_label_lut()
    assert (lut[0], lut[1], lut[124], lut[125], lut[255]) == (255, 0, 123, 255, 255)


def test_compressed_pairs_registered_from_root(tmp_path, clean_catalog):
    make_ytvis(str(tmp_path))
    builtin.register_all(str(tmp_path))
    out = os.path.join(tmp_path, builtin.COMPRESSED_DIRNAME)
    compress_dataset("ytvis_2019_train_frames", "jpeg", [50], out, progress=False)
    assert builtin.register_all_compressed_pairs(str(tmp_path)) == ["ytvis_2019_train_frames@jpeg_q50"]
    pairs = DatasetCatalog.get("ytvis_2019_train_frames@jpeg_q50")
    assert len(pairs) == 6 and all(os.path.isfile(p["file_name"]) for p in pairs)
    assert pairs[0]["annotations"] == DatasetCatalog.get("ytvis_2019_train_frames")[0]["annotations"]
    assert MetadataCatalog.get("ytvis_2019_train_frames@jpeg_q50").thing_classes[0] == "person"
    # frames compressed per frame-level dataset also join the video-level dataset
    manifest = os.path.join(out, "ytvis_2019_train_frames", "jpeg", "q50", "manifest.json")
    (v1, v2) = load_pair_dicts(manifest, "ytvis_2019_train")
    assert len(v1["file_names"]) == 3 and len(v1["bits"]) == 3
    assert v1["original_file_names"][0].endswith("00000.jpg")
