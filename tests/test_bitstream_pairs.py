"""Pair datasets stored as bitstreams (``compress_dataset(storage="bitstream")``, ``--store
bitstream``): the same frames, training records and evaluation results as PNG storage, each GOP
decoded once per process, and a corrupt stored bitstream fails naming its sequence."""
import copy
import json
import os
import random
import shutil
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.evaluation import inference_on_dataset

from vcm_d2.codecs.stored import StoredBitstreamError, bitstream_crc32
from vcm_d2.data.clip_mapper import ClipDatasetMapper, to_video_dicts
from vcm_d2.data.mapper import PairDatasetMapper
from vcm_d2.data.pairs import (
    BITSTREAM_FRAME,
    load_manifest,
    read_frame,
    register_pair_dataset,
)
from vcm_d2.data.synthetic import CLASS_NAMES, SyntheticSpec, load_synthetic_images
from vcm_d2.engine import get_vcm_cfg
from vcm_d2.engine.compress import compress_dataset
from vcm_d2.engine.trainer import VCMTrainer
from vcm_d2.evaluation.rate_task import build_task_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIM = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml")
SPEC = SyntheticSpec(num_videos=2, frames_per_video=5, height=48, width=64, max_object_size=16)
GOP = 2  # segments of 2 frames: frames 0-1, 2-3, 4 of each video
SEGMENTS = 2 * 3  # per dataset
QUALITY = 30
STORAGES = ("png", "bitstream")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The synthetic frames compressed with x264 in both storages: {storage: (pair name, qdir)}."""
    tmp = tmp_path_factory.mktemp("bitstream_pairs")
    base = f"test_bitstream_base_{uuid.uuid4().hex[:8]}"
    dicts = load_synthetic_images(SPEC, str(tmp / "synth"))
    DatasetCatalog.register(base, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(base).set(thing_classes=list(CLASS_NAMES), evaluator_type="coco")
    out = {}
    for storage in STORAGES:
        manifest = compress_dataset(base, "x264", [QUALITY], str(tmp / storage), progress=False,
                                    codec_options={"gop": GOP}, storage=storage)[QUALITY]
        name = f"{base}@{storage}"
        register_pair_dataset(name, manifest, base)
        out[storage] = (name, os.path.dirname(manifest))
    yield out
    for name in [base] + [n for n, _ in out.values()]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _without_storage(record, qdir):
    """A pair record with what differs between the storages taken out: the locator of the stored
    frame, and the output folder in the compressed frame's name."""
    record = {k: v for k, v in record.items() if k != BITSTREAM_FRAME}
    record["file_name"] = os.path.relpath(record["file_name"], qdir)
    return record


def test_layout_manifest_and_disk(pairs):
    (_, png_dir), (name, bit_dir) = pairs["png"], pairs["bitstream"]
    png, bit = load_manifest(os.path.join(png_dir, "manifest.json")), load_manifest(
        os.path.join(bit_dir, "manifest.json"))
    assert (png["version"], "storage" in png) == (1, False)  # older readers still read PNG storage
    assert (bit["version"], bit["storage"]) == (2, "bitstream")
    assert not os.path.exists(os.path.join(bit_dir, "frames"))
    assert [{k: v for k, v in f.items() if k != "offset"} for f in bit["frames"]] == png["frames"]
    for seq in bit["sequences"]:
        frames = [f for f in bit["frames"] if f["sequence"] == seq["sequence"]]
        offsets = np.cumsum([0] + [f["bits"] // 8 for f in frames])[:-1]
        assert [f["offset"] for f in frames] == offsets.tolist()
        assert os.path.getsize(os.path.join(bit_dir, seq["bitstream"])) * 8 == seq["bits"]
    assert MetadataCatalog.get(name).storage == "bitstream"
    sizes = {d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(d, sub))
                    for f in fs) for d, sub in ((png_dir, "frames"), (bit_dir, "bitstreams"))}
    assert sizes[bit_dir] * 8 == bit["total_bits"] and sizes[bit_dir] * 5 < sizes[png_dir]


def test_same_records_frames_and_training_inputs(pairs):
    (png_name, png_dir), (bit_name, bit_dir) = pairs["png"], pairs["bitstream"]
    png, bit = DatasetCatalog.get(png_name), DatasetCatalog.get(bit_name)
    assert [_without_storage(r, png_dir) for r in png] == [_without_storage(r, bit_dir) for r in bit]
    assert all(BITSTREAM_FRAME in r for r in bit) and not any(BITSTREAM_FRAME in r for r in png)

    augs = [T.ResizeShortestEdge([40, 56], max_size=100, sample_style="choice"), T.RandomFlip()]
    mappers = {s: PairDatasetMapper(is_train=True, augmentations=augs, image_format="BGR",
                                    load_original=True, use_instance_mask=True,
                                    instance_mask_format="bitmask") for s in STORAGES}
    for p, b in zip(png, bit):
        outputs = []
        for storage, record in (("png", p), ("bitstream", b)):
            np.random.seed(0), random.seed(0), torch.manual_seed(0)
            outputs.append(mappers[storage](record))
        op, ob = outputs
        assert torch.equal(op["image"], ob["image"]) and torch.equal(op["original"], ob["original"])
        for field in ("gt_boxes", "gt_classes", "gt_masks"):
            a, c = op["instances"].get(field), ob["instances"].get(field)
            assert torch.equal(getattr(a, "tensor", a), getattr(c, "tensor", c))
        rest = {k for k in op if k not in ("image", "original", "instances", "file_name")}
        assert rest == {k for k in ob if k not in ("image", "original", "instances", "file_name")}
        for key in rest:  # sem_seg, bits, bpp, ids, ...; no storage locator left
            assert torch.equal(op[key], ob[key]) if torch.is_tensor(op[key]) else op[key] == ob[key]
        assert np.array_equal(read_frame(p, "RGB"), read_frame(b, "RGB"))
    assert mappers["bitstream"].frame_cache.decodes == SEGMENTS  # each GOP decoded once


def test_clips_decode_each_segment_once(pairs):
    (png_name, _), (bit_name, _) = pairs["png"], pairs["bitstream"]
    videos = {s: to_video_dicts(DatasetCatalog.get(pairs[s][0])) for s in STORAGES}
    mappers = {s: ClipDatasetMapper(is_train=True, clip_length=3, augmentations=[T.RandomFlip()],
                                    image_format="RGB") for s in STORAGES}
    for step in range(8):  # random clips: frames of two segments each
        clips = []
        for storage in STORAGES:
            np.random.seed(step)
            clips.append(mappers[storage](videos[storage][step % 2]))
        a, b = clips
        assert a["frame_indices"] == b["frame_indices"] and a["bits"] == b["bits"]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a["frames"], b["frames"]))
    assert mappers["bitstream"].frame_cache.decodes <= SEGMENTS


def test_same_evaluation_results(pairs, tmp_path):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(SLIM)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
                         "INPUT.MIN_SIZE_TEST", "48", "TEST.DETECTIONS_PER_IMAGE", "20"])
    torch.manual_seed(0)
    model = VCMTrainer.build_model(cfg).eval()
    results = []
    for storage in STORAGES:
        name = pairs[storage][0]
        loader = build_detection_test_loader(dataset=DatasetCatalog.get(name),
                                             mapper=PairDatasetMapper(cfg, False))
        evaluator = build_task_evaluator(cfg, name, str(tmp_path / storage))
        results.append(inference_on_dataset(model, loader, evaluator))
    assert json.dumps(results[0], sort_keys=True) == json.dumps(results[1], sort_keys=True)  # NaN
    assert results[0]["rate"]["bpp"] == pytest.approx(MetadataCatalog.get(pairs["png"][0]).bpp)
    with open(tmp_path / "png" / "coco_instances_results.json") as a, \
            open(tmp_path / "bitstream" / "coco_instances_results.json") as b:
        detections = json.load(a)
        assert detections and detections == json.load(b)  # every detection, not only the AP


def test_corrupt_bitstream_fails_naming_the_sequence(pairs, tmp_path):
    name, qdir = pairs["bitstream"]
    copy_dir = str(tmp_path / "copy")
    shutil.copytree(qdir, copy_dir)
    record = dict(DatasetCatalog.get(name)[2])  # video 0, frame 2
    record[BITSTREAM_FRAME] = dict(record[BITSTREAM_FRAME],
                                   manifest=os.path.join(copy_dir, "manifest.json"))
    sequence = record[BITSTREAM_FRAME]["sequence"]
    path = os.path.join(copy_dir, "bitstreams", sequence + ".bin")
    with open(path, "rb") as f:
        data = f.read()

    def fails(content, pattern):
        with open(path, "wb") as f:
            f.write(content)
        with pytest.raises(StoredBitstreamError, match=pattern) as info:
            read_frame(record)
        assert repr(sequence) in str(info.value) and path in str(info.value)

    fails(data[:-5], "truncated")
    fails(data[:40] + bytes([data[40] ^ 0x10]) + data[41:], "CRC")
    os.remove(path)
    with pytest.raises(StoredBitstreamError, match=f"'{sequence}'.*cannot read"):
        read_frame(record)
    # every frame's first bytes (parameter sets, slice headers) zeroed, and a CRC that matches:
    # the decoder refuses the stream (never a wrong frame)
    manifest_path = os.path.join(copy_dir, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    frames = [f for f in manifest["frames"] if f["sequence"] == sequence]
    bad = b"".join(data[f["offset"]:f["offset"] + 4] + bytes(8)
                   + data[f["offset"] + 12:f["offset"] + f["bits"] // 8] for f in frames)
    for seq in manifest["sequences"]:
        if seq["sequence"] == sequence:
            seq["crc32"] = bitstream_crc32(bad)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    fails(bad, "cannot be decoded")


def test_recompress_a_bitstream_pair(pairs, tmp_path):
    """A bitstream-stored pair dataset as the source of another compression: its frames are
    decoded from the stored bitstreams, exactly as the PNGs of the PNG-stored pair read."""
    bits = {}
    for storage in STORAGES:
        name = pairs[storage][0]
        manifest = compress_dataset(name, "jpeg", [50], str(tmp_path / storage), progress=False,
                                    storage="bitstream")[50]
        bits[storage] = [f["bits"] for f in load_manifest(manifest)["frames"]]
    assert bits["png"] == bits["bitstream"]
