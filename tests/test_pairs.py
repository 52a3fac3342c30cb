"""vcm_d2.data.pairs (manifests, joins, registration) and vcm_d2.data.mapper.PairDatasetMapper."""
import json
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from vcm_d2.data.mapper import PairDatasetMapper
from vcm_d2.data.pairs import (
    load_manifest,
    load_pair_dicts,
    pair_dataset_name,
    register_pair_dataset,
    register_pair_datasets_from_dir,
)

H, W = 12, 16


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture
def registry():
    names = []

    def register(name_prefix, dicts, **meta):
        name = f"{name_prefix}_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
        MetadataCatalog.get(name).set(**meta)
        names.append(name)
        return name

    yield register, names
    for name in list(DatasetCatalog.list()):
        if any(name == n or name.startswith(n + "@") or name.startswith("pair_" + n) for n in names):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _manifest(path, frames, codec="fakec", quality=7, dataset="base"):
    for f in frames:
        f.setdefault("height", H)
        f.setdefault("width", W)
        f.setdefault("bpp", f["bits"] / (f["height"] * f["width"]))
        f.setdefault("sequence", "s")
        f.setdefault("frame_index", 0)
    total_bits = sum(f["bits"] for f in frames)
    total_pixels = sum(f["height"] * f["width"] for f in frames)
    manifest = {"version": 1, "dataset": dataset, "codec": codec, "quality": quality,
                "codec_options": {}, "frames": frames, "total_bits": total_bits,
                "total_pixels": total_pixels, "bpp": total_bits / total_pixels}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return str(path)


@pytest.fixture
def images(tmp_path, registry):
    """Base image dataset of 3 files and a manifest (frames listed in another order)."""
    register, _ = registry
    paths = [_write(tmp_path / "data" / f"im{i}.png", np.full((H, W, 3), i, np.uint8)) for i in range(3)]
    base = register("pairs_base", [{"file_name": p, "image_id": i, "height": H, "width": W}
                                   for i, p in enumerate(paths)],
                    thing_classes=["a"], json_file="instances.json", evaluator_type="coco")
    manifest = _manifest(tmp_path / "out" / "m" / "manifest.json", [
        {"original_file_name": paths[i], "original_relpath": f"im{i}.png",
         "file_name": f"frames/im{i}.png", "bits": 100 + i} for i in (2, 0, 1)
    ])
    return base, paths, manifest


def test_load_manifest_validates(tmp_path, images):
    _, _, manifest = images
    assert len(load_manifest(manifest)["frames"]) == 3
    good = json.load(open(manifest))

    def broken(change):
        data = json.loads(json.dumps(good))
        change(data)
        path = str(tmp_path / f"bad_{uuid.uuid4().hex[:6]}.json")
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    with pytest.raises(ValueError, match="version"):
        load_manifest(broken(lambda d: d.update(version=3)))
    with pytest.raises(ValueError, match="storage"):  # version 2 says how frames are stored
        load_manifest(broken(lambda d: d.update(version=2)))
    assert load_manifest(broken(lambda d: d.update(version=2, storage="png")))["frames"] == good["frames"]
    with pytest.raises(ValueError, match="missing field.*codec"):
        load_manifest(broken(lambda d: d.pop("codec")))
    with pytest.raises(ValueError, match=r"frames\[1\].*bits"):
        load_manifest(broken(lambda d: d["frames"][1].update(bits="many")))
    with pytest.raises(ValueError, match="relative"):
        load_manifest(broken(lambda d: d["frames"][0].update(file_name=os.path.abspath("x.png"))))
    with pytest.raises(ValueError, match="total_bits"):
        load_manifest(broken(lambda d: d.update(total_bits=1)))
    with pytest.raises(FileNotFoundError):
        load_manifest(str(tmp_path / "nothing.json"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(str(bad_json))


def test_pair_dicts_join_by_original_name(images):
    base, paths, manifest = images
    dicts = load_pair_dicts(manifest, base)
    out_dir = os.path.dirname(manifest)
    assert [d["image_id"] for d in dicts] == [0, 1, 2]  # base order
    for i, d in enumerate(dicts):
        assert d["original_file_name"] == paths[i]
        assert d["file_name"] == os.path.join(out_dir, "frames", f"im{i}.png")
        assert d["bits"] == 100 + i and d["bpp"] == pytest.approx((100 + i) / (H * W))
        assert (d["codec"], d["quality"]) == ("fakec", 7)
    # the base dataset itself is not modified
    assert DatasetCatalog.get(base)[0]["file_name"] == paths[0]


def test_pair_dicts_missing_records_and_partial(tmp_path, images):
    base, paths, manifest = images
    data = json.load(open(manifest))
    data["frames"] = [f for f in data["frames"] if f["original_file_name"] != paths[1]]
    partial = _manifest(tmp_path / "p" / "manifest.json", data["frames"])
    with pytest.raises(ValueError, match="im1.png"):
        load_pair_dicts(partial, base)
    assert [d["image_id"] for d in load_pair_dicts(partial, base, allow_partial=True)] == [0, 2]


def test_pair_dicts_join_by_relative_path_after_relocation(tmp_path, images):
    base, paths, _ = images
    moved = _manifest(tmp_path / "q" / "manifest.json", [
        {"original_file_name": f"/another/machine/data/im{i}.png", "original_relpath": f"im{i}.png",
         "file_name": f"frames/im{i}.png", "bits": 10 + i} for i in range(3)
    ])
    assert [d["bits"] for d in load_pair_dicts(moved, base)] == [10, 11, 12]


def test_pair_dicts_size_mismatch(tmp_path, images):
    base, paths, _ = images
    wrong = _manifest(tmp_path / "w" / "manifest.json", [
        {"original_file_name": p, "file_name": f"frames/{i}.png", "bits": 1, "height": H + 2}
        for i, p in enumerate(paths)
    ])
    with pytest.raises(ValueError, match="height"):
        load_pair_dicts(wrong, base)


def test_pair_dicts_videos(tmp_path, registry):
    register, _ = registry
    paths = [_write(tmp_path / "v" / f"{t}.png", np.zeros((H, W, 3), np.uint8)) for t in range(3)]
    base = register("pairs_vbase", [{"video_id": 1, "file_names": paths, "length": 3}])
    manifest = _manifest(tmp_path / "o" / "manifest.json", [
        {"original_file_name": p, "file_name": f"frames/{t}.png", "bits": 8 * (t + 1),
         "frame_index": t} for t, p in enumerate(paths)
    ])
    (video,) = load_pair_dicts(manifest, base)
    assert video["original_file_names"] == paths
    assert video["file_names"] == [os.path.join(tmp_path, "o", "frames", f"{t}.png") for t in range(3)]
    assert video["bits"] == [8, 16, 24] and len(video["bpp"]) == 3


def test_register_pair_dataset_copies_metadata(images):
    base, _, manifest = images
    name = "pair_" + base
    register_pair_dataset(name, manifest, base, note="x")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["a"] and meta.json_file == "instances.json"
    assert meta.evaluator_type == "coco" and meta.note == "x"
    assert (meta.codec, meta.quality, meta.base_dataset) == ("fakec", 7, base)
    assert meta.bpp == pytest.approx(load_manifest(manifest)["bpp"])
    assert meta.manifest == os.path.abspath(manifest)
    assert len(DatasetCatalog.get(name)) == 3
    register_pair_dataset(name, manifest, base)  # same manifest again: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_pair_dataset(name, manifest + ".other", base)
    with pytest.raises(KeyError, match="not registered"):
        register_pair_dataset("pair_x", manifest, "no_such_base_dataset")


def test_register_pair_datasets_from_dir_sorted(tmp_path, images):
    base, paths, _ = images
    root = tmp_path / "compressed"
    for codec, quality in (("zz", 4), ("aa", 16), ("aa", 4), ("aa", 0.5)):
        qtag = int(quality) if float(quality).is_integer() else quality
        _manifest(root / base / codec / f"q{qtag}" / "manifest.json", [
            {"original_file_name": p, "file_name": f"frames/{i}.png", "bits": 1}
            for i, p in enumerate(paths)], codec=codec, quality=quality)
    names = register_pair_datasets_from_dir(str(root), base)
    assert names == [pair_dataset_name(base, "aa", 0.5), pair_dataset_name(base, "aa", 4),
                     pair_dataset_name(base, "aa", 16), pair_dataset_name(base, "zz", 4)]
    assert names[1] == f"{base}@aa_q4"
    assert register_pair_datasets_from_dir(str(root), base) == names  # idempotent


# ----------------------------------------------------------------------------- mapper
def _pair_record(tmp_path, compressed, original, **extra):
    record = {
        "file_name": _write(tmp_path / f"c_{uuid.uuid4().hex[:6]}.png", compressed),
        "original_file_name": _write(tmp_path / f"o_{uuid.uuid4().hex[:6]}.png", original),
        "height": compressed.shape[0], "width": compressed.shape[1], "bits": 1234, "bpp": 0.5,
    }
    record.update(extra)
    return record


AUGS = [T.RandomFlip(prob=0.5), T.ResizeShortestEdge(short_edge_length=(20, 36), max_size=100)]


def _mapper(**kwargs):
    args = dict(is_train=True, augmentations=AUGS, image_format="RGB", load_original=True)
    args.update(kwargs)
    return PairDatasetMapper(**args)


def test_mapper_same_geometry_for_identical_images(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    record = _pair_record(tmp_path, img, img)
    mapper = _mapper()
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(record)
        assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
        assert torch.equal(out["image"], out["original"])
        assert out["bits"] == 1234 and out["bpp"] == 0.5


def test_mapper_shifted_pattern_stays_aligned(tmp_path):
    """compressed = 255 - original: any misalignment (unflipped / differently resized original)
    breaks image + original == 255 on a random pattern."""
    original = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    record = _pair_record(tmp_path, 255 - original, original)
    mapper = _mapper()
    sizes = set()
    for seed in range(8):
        np.random.seed(seed)
        out = mapper(record)
        total = out["image"].int() + out["original"].int()
        err = (total - 255).abs()
        assert err.max().item() <= 2 and err.float().mean().item() < 0.5  # resize rounding only
        sizes.add(tuple(out["image"].shape))
    assert len(sizes) > 1  # the random resize really varied
    # the plain DatasetMapper behaviour is kept for annotations
    record["annotations"] = [{"bbox": [2, 2, 10, 10], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}]
    np.random.seed(0)
    out = mapper(record)
    assert len(out["instances"]) == 1 and "annotations" not in out


def test_mapper_flip_detected_by_pattern(tmp_path):
    """A left-right ramp: after a forced flip both tensors are mirrored the same way."""
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (24, 1, 3))
    record = _pair_record(tmp_path, ramp, ramp)
    mapper = _mapper(augmentations=[T.RandomFlip(prob=1.0)])
    out = mapper(record)
    assert out["image"][0, 0, 0] > out["image"][0, 0, -1]  # flipped
    assert torch.equal(out["image"], out["original"])


def test_mapper_sem_seg_and_eval_mode(tmp_path):
    img = np.zeros((24, 32, 3), np.uint8)
    sem = np.zeros((24, 32), np.uint8)
    sem[:, :4] = 3
    record = _pair_record(tmp_path, img, img, sem_seg_file_name=_write(tmp_path / "sem.png", sem))
    out = _mapper(augmentations=[T.RandomFlip(prob=1.0)])(record)
    assert out["sem_seg"].shape == out["image"].shape[1:]
    assert out["sem_seg"][0, -1].item() == 3 and out["sem_seg"][0, 0].item() == 0
    out = _mapper(is_train=False, augmentations=[])(dict(record, annotations=[]))
    assert "annotations" not in out and "original" in out


def test_mapper_errors_and_compressed_only(tmp_path):
    record = _pair_record(tmp_path, np.zeros((24, 32, 3), np.uint8), np.zeros((24, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot be aligned"):
        _mapper()(record)
    # compressed-only: the original is never read (it may not even exist)
    out = _mapper(load_original=False)(dict(record, original_file_name=str(tmp_path / "absent.png")))
    assert "original" not in out and out["bits"] == 1234
    plain = {k: v for k, v in record.items() if k != "original_file_name"}
    with pytest.raises(KeyError, match="original_file_name"):
        _mapper()(plain)


def test_mapper_from_config():
    from vcm_d2.engine import get_vcm_cfg

    cfg = get_vcm_cfg()
    cfg.INPUT.FORMAT = "BGR"
    assert PairDatasetMapper(cfg, is_train=False).load_original is cfg.VCM.PAIRS.LOAD_ORIGINAL
    cfg.VCM.PAIRS.LOAD_ORIGINAL = True
    mapper = PairDatasetMapper(cfg, is_train=True)
    assert mapper.load_original and mapper.image_format == "BGR"
    assert PairDatasetMapper(cfg, is_train=True, load_original=False).load_original is False


def test_bitstream_manifest_validates_and_joins(tmp_path, images):
    """Version 2, storage "bitstream": sequences with bitstream and CRC, frames numbered 0..n-1
    with byte offsets that follow their bits; records locate their frame in the bitstream."""
    base, paths, _ = images
    frames = [{"original_file_name": p, "original_relpath": f"im{i}.png", "file_name": f"frames/im{i}.png",
               "bits": 8 * (10 + i), "sequence": "s", "frame_index": i, "offset": [0, 10, 21][i]}
              for i, p in enumerate(paths)]
    path = _manifest(tmp_path / "bit" / "manifest.json", frames)
    good = json.load(open(path))
    good.update(version=2, storage="bitstream", sequences=[
        {"sequence": "s", "num_frames": 3, "bits": 8 * 33, "bitstream": "bitstreams/s.bin", "crc32": 1}])

    def write(change):
        data = json.loads(json.dumps(good))
        change(data)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    for change, message in (
        (lambda d: d["frames"][2].update(offset=20), "byte offsets"),
        (lambda d: d["frames"][1].update(frame_index=2), "frame indices"),
        (lambda d: d["sequences"][0].update(bitstream="/abs/s.bin"), "relative"),
        (lambda d: d["sequences"].append(dict(d["sequences"][0])), "listed twice"),
        (lambda d: d.pop("sequences"), "sequences"),
        (lambda d: d["frames"][0].update(sequence="t"), "'t'"),
        (lambda d: d["frames"][0].pop("offset"), "offset"),
    ):
        with pytest.raises(ValueError, match=message):
            load_manifest(write(change))
    write(lambda d: None)
    records = load_pair_dicts(path, base)
    assert [r["bitstream_frame"] for r in records] == [
        {"manifest": os.path.abspath(path), "sequence": "s", "index": i} for i in range(3)]
    assert [r["file_name"] for r in records] == [str(tmp_path / "bit" / "frames" / f"im{i}.png")
                                                 for i in range(3)]
