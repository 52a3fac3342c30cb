"""tools/compress_dataset.py and vcm_d2.engine.compress: layout, bits, resume, shards, failures."""
import importlib.util
import os
import subprocess
import sys
import time
import uuid
import zlib

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from vcm_d2.codecs import CODEC_REGISTRY, build_codec
from vcm_d2.codecs.base import Codec, check_decode_args
from vcm_d2.data.mapper import PairDatasetMapper
from vcm_d2.data.pairs import load_manifest, pair_dataset_name, register_pair_datasets_from_dir
from vcm_d2.engine.compress import (
    CompressionError,
    assemble_manifests,
    build_sequences,
    compress_dataset,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = "test_compress_fake_codec"
SYNTHETIC_VAL = "vcm_synth_val"  # 8 videos of 12 frames of 128 x 128
PROCESS_TIMEOUT = 600  # seconds


class FakeCodec(Codec):
    """Lossy and deterministic: quantizes to steps of ``quality * scale``; zlib per frame."""

    name = FAKE
    is_video = True
    calls = []  # (number of frames, quality) per encode, to count recomputation

    def __init__(self, scale: int = 1):
        self.scale = int(scale)

    def _encode_bitstream(self, frames, quality):
        FakeCodec.calls.append((len(frames), quality))
        step = int(quality) * self.scale
        chunks = [zlib.compress(((f // step) * step).tobytes()) for f in frames]
        return b"".join(chunks), [8 * len(c) for c in chunks]

    def decode(self, bitstream, frame_bits, height, width):
        check_decode_args(frame_bits, height, width)
        out, pos = [], 0
        for bits in frame_bits:
            chunk = bitstream[pos:pos + bits // 8]
            pos += bits // 8
            out.append(np.frombuffer(zlib.decompress(chunk), np.uint8).reshape(height, width, 3).copy())
        return out


if FAKE not in CODEC_REGISTRY:
    CODEC_REGISTRY.register(FakeCodec)


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def registered():
    names = []

    def register(dicts, name=None):
        name = name or f"test_compress_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
        MetadataCatalog.get(name).set(thing_classes=["a", "b"], evaluator_type="coco")
        names.append(name)
        return name

    yield register
    for name in names + [n for n in DatasetCatalog.list() if any(n.startswith(b + "@") for b in names)]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def tiny(tmp_path, registered):
    """Two videos (3 and 2 frames, 16x12) as shuffled image dicts, plus one still image."""
    rng = np.random.default_rng(0)
    dicts = []
    for vid, n in ((7, 3), (9, 2)):
        for t in range(n):
            path = str(tmp_path / "data" / f"vid{vid}" / f"{t:03d}.png")
            _write(path, rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            dicts.append({"file_name": path, "height": 12, "width": 16, "image_id": vid * 100 + t,
                          "video_id": vid, "frame_idx": t})
    still = str(tmp_path / "data" / "still" / "img.png")
    _write(still, rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    dicts.append({"file_name": still, "height": 10, "width": 14, "image_id": 5})
    order = [1, 3, 5, 0, 2, 4]
    return registered([dicts[i] for i in order])


def _files(root):
    """{path relative to ``root``: bytes} of every file under it, hidden ones included (glob's
    ``*`` skips the dot-prefixed temp files of atomic writes)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                files[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return files


def _no_temp_files(root):
    return [p for p in _files(root) if p.endswith(".tmp")]


def _cli():
    spec = importlib.util.spec_from_file_location(
        "compress_cli", os.path.join(REPO, "tools", "compress_dataset.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_build_sequences_groups_orders_and_names(tmp_path):
    dicts = [
        {"file_name": str(tmp_path / "v" / "b.jpg"), "video_id": "x/y", "frame_idx": 1},
        {"file_name": str(tmp_path / "v" / "a.jpg"), "video_id": "x/y", "frame_idx": 0},
        {"file_name": str(tmp_path / "s" / "a.jpg"), "image_id": 3},
        {"file_name": str(tmp_path / "s" / "a.png"), "image_id": 4},
    ]
    seqs = build_sequences(dicts)
    assert [len(s.frames) for s in seqs] == [2, 1, 1]
    assert [f.original_file_name for f in seqs[0].frames] == [dicts[1]["file_name"], dicts[0]["file_name"]]
    assert "/" not in seqs[0].key and seqs[0].key.startswith("video-x_y-")
    names = [f.file_name for s in seqs for f in s.frames]
    assert names == ["frames/v/a.png", "frames/v/b.png", "frames/s/a.jpg.png", "frames/s/a.png.png"]
    with pytest.raises(ValueError, match="duplicate frame_idx"):
        build_sequences([dict(dicts[0]), dict(dicts[1], frame_idx=1)])
    with pytest.raises(ValueError, match="image_id 3"):
        build_sequences([dicts[2], dict(dicts[3], image_id=3)])
    with pytest.raises(ValueError, match="mixes video dicts"):
        build_sequences([dicts[2], {"file_names": [dicts[3]["file_name"]]}])


def test_manifest_bits_and_frames(tiny, tmp_path):
    out = str(tmp_path / "out")
    manifests = compress_dataset(tiny, FAKE, [4, 16], out, progress=False)
    assert sorted(manifests) == [4, 16]
    assert manifests[16] == os.path.join(out, tiny, FAKE, "q16", "manifest.json")
    m = load_manifest(manifests[16])
    assert (m["dataset"], m["codec"], m["quality"], m["codec_options"]) == (tiny, FAKE, 16, {})
    assert len(m["frames"]) == 6 and m["num_sequences"] == 3
    # dataset order of sequences, frame order inside: video 7 first (its frame 1 comes first).
    assert [(f["sequence"], f["frame_index"]) for f in m["frames"]][:4] == [
        ("video-7", 0), ("video-7", 1), ("video-7", 2), ("video-9", 0)]

    codec = build_codec(FAKE)
    for seq_key in ("video-7", "video-9", "image-5"):
        frames = [f for f in m["frames"] if f["sequence"] == seq_key]
        originals = [np.asarray(Image.open(f["original_file_name"]).convert("RGB")) for f in frames]
        coded = codec.encode(originals, 16)
        assert [f["bits"] for f in frames] == coded.frame_bits
        for f, decoded in zip(frames, coded.frames):
            h, w = decoded.shape[:2]
            assert (f["height"], f["width"]) == (h, w)
            assert f["bpp"] == pytest.approx(f["bits"] / (h * w))
            png = np.asarray(Image.open(os.path.join(os.path.dirname(manifests[16]), f["file_name"])))
            np.testing.assert_array_equal(png, decoded)
    assert {f["image_id"] for f in m["frames"]} == {700, 701, 702, 900, 901, 5}
    total_pixels = 5 * 12 * 16 + 10 * 14
    assert m["total_pixels"] == total_pixels
    assert m["total_bits"] == sum(f["bits"] for f in m["frames"])
    assert m["bpp"] == pytest.approx(m["total_bits"] / total_pixels)
    # coarser quantization compresses better
    assert load_manifest(manifests[4])["bpp"] > m["bpp"]
    assert _no_temp_files(out) == []


def test_resume_recomputes_only_missing_sequence(tiny, tmp_path):
    out = str(tmp_path / "out")
    manifests = compress_dataset(tiny, FAKE, [4, 16], out, progress=False)
    before = {q: open(p, "rb").read() for q, p in manifests.items()}

    FakeCodec.calls.clear()
    compress_dataset(tiny, FAKE, [4, 16], out, progress=False)
    assert FakeCodec.calls == []  # everything was done

    qdir = os.path.dirname(manifests[16])
    os.remove(os.path.join(qdir, "records", "video-9.json"))
    os.remove(os.path.join(qdir, "frames", "vid7", "001.png"))  # a PNG of another sequence
    manifests2 = compress_dataset(tiny, FAKE, [4, 16], out, progress=False)
    assert sorted(FakeCodec.calls) == [(2, 16), (3, 16)]  # video-9 and video-7, at q16 only
    assert {q: open(p, "rb").read() for q, p in manifests2.items()} == before
    assert _no_temp_files(out) == []


def test_shards_give_the_same_manifest(tiny, tmp_path):
    single = compress_dataset(tiny, FAKE, [8], str(tmp_path / "a"), progress=False)
    out = str(tmp_path / "b")
    assert compress_dataset(tiny, FAKE, [8], out, shard=(0, 2), progress=False) == {}
    with pytest.raises(RuntimeError, match="without a record"):
        assemble_manifests(tiny, FAKE, [8], out)
    sharded = compress_dataset(tiny, FAKE, [8], out, shard=(1, 2), progress=False)
    assert load_manifest(sharded[8]) == load_manifest(single[8])
    os.remove(sharded[8])
    merged = assemble_manifests(tiny, FAKE, [8], out)
    assert load_manifest(merged[8]) == load_manifest(single[8])


def test_concurrent_shard_processes_equal_one_run(tmp_path):
    """`tools/compress_dataset.py --shard i/2` as two processes at the same time write the files
    of one in-process run, byte for byte (manifest, records, frames, bitstreams)."""
    single = compress_dataset(SYNTHETIC_VAL, "x264", [35], str(tmp_path / "single"), progress=False,
                              save_bitstreams=True)[35]
    out = str(tmp_path / "sharded")
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "compress_dataset.py"), "--dataset", SYNTHETIC_VAL,
         "--codec", "x264", "--quality", "35", "--save-bitstreams", "--output", out,
         "--shard", f"{shard}/2", "--no-progress"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for shard in range(2)]
    for shard, proc in enumerate(procs):
        log = proc.communicate(timeout=PROCESS_TIMEOUT)[0]
        assert proc.returncode == 0, log
        assert f"4 sequences in shard {shard}/2, 4 to compress" in log  # half of the 8 videos each
    assert _files(os.path.join(out, SYNTHETIC_VAL, "x264", "q35")) == _files(os.path.dirname(single))


def _plant(path, age):
    """A temp file as a killed (``age`` > 0 seconds ago) or live (``age`` < 0) writer leaves it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"partial")
    mtime = time.time() - age
    os.utime(path, (mtime, mtime))


def test_resume_removes_orphan_temp_files_but_not_other_shards(tiny, tmp_path):
    """A killed run's temp files go at the next run of the same shard; the other shard's stay,
    and so does a manifest temp file newer than the run (a live writer's)."""
    clean = compress_dataset(tiny, FAKE, [8], str(tmp_path / "clean"), progress=False)[8]
    out = str(tmp_path / "out")
    qdir = os.path.join(out, tiny, FAKE, "q8")
    compress_dataset(tiny, FAKE, [8], out, progress=False)
    # killed while writing frame 1 of video-9 (shard 1/2; so no record), the record of image-5
    # (shard 0/2) and the manifest; vid7's orphan is from an earlier kill (video-7 redone since)
    for name in ("frames/vid9/001.png", "records/video-9.json", "records/image-5.json", "manifest.json"):
        os.remove(os.path.join(qdir, name))
    orphans = {shard: [os.path.join(qdir, name) for name in names] for shard, names in {
        0: ["records/.image-5.json.abc123.tmp", "frames/vid7/.000.png.abc123.tmp"],
        1: ["frames/vid9/.001.png.abc123.tmp", "records/.video-9.json.abc123.tmp"],
    }.items()}
    manifest_orphan = os.path.join(qdir, ".manifest.json.abc123.tmp")
    live = os.path.join(qdir, ".manifest.json.live99.tmp")
    for path in orphans[0] + orphans[1] + [manifest_orphan]:
        _plant(path, age=3600)
    _plant(live, age=-3600)

    assert compress_dataset(tiny, FAKE, [8], out, shard=(0, 2), progress=False) == {}
    left = {os.path.join(qdir, p) for p in _no_temp_files(qdir)}
    assert left == set(orphans[1]) | {live}
    manifest = compress_dataset(tiny, FAKE, [8], out, shard=(1, 2), progress=False)[8]
    assert {os.path.join(qdir, p) for p in _no_temp_files(qdir)} == {live}
    os.remove(live)
    assert _files(os.path.dirname(manifest)) == _files(os.path.dirname(clean))


def test_process_pool_matches_in_process(tiny, tmp_path):
    a = compress_dataset(tiny, FAKE, [8], str(tmp_path / "a"), progress=False)
    b = compress_dataset(tiny, FAKE, [8], str(tmp_path / "b"), workers=2, progress=False)
    assert load_manifest(a[8]) == load_manifest(b[8])


def test_failure_is_reported_and_others_finish(tmp_path, registered):
    good = str(tmp_path / "good.png")
    _write(good, np.zeros((8, 8, 3), np.uint8))
    name = registered([
        {"file_name": str(tmp_path / "missing.png"), "image_id": 1},
        {"file_name": good, "image_id": 2},
    ])
    out = str(tmp_path / "out")
    with pytest.raises(CompressionError, match="image-1") as info:
        compress_dataset(name, FAKE, [2], out, progress=False)
    assert list(info.value.failures) == ["image-1"]
    qdir = os.path.join(out, name, FAKE, "q2")
    assert os.path.isfile(os.path.join(qdir, "records", "image-2.json"))
    assert not os.path.exists(os.path.join(qdir, "manifest.json"))
    _write(str(tmp_path / "missing.png"), np.zeros((8, 8, 3), np.uint8))
    assert os.path.isfile(compress_dataset(name, FAKE, [2], out, progress=False)[2])


def test_codec_options_are_recorded_and_checked(tiny, tmp_path):
    out = str(tmp_path / "out")
    m = compress_dataset(tiny, FAKE, [4], out, codec_options={"scale": 2}, progress=False)
    manifest = load_manifest(m[4])
    assert manifest["codec_options"] == {"scale": 2}
    with pytest.raises(ValueError, match="codec options"):
        compress_dataset(tiny, FAKE, [4], out, codec_options={"scale": 3}, progress=False)


def test_cli_compress_merge_and_exit_status(tiny, tmp_path, registered):
    cli = _cli()
    out = str(tmp_path / "out")
    args = ["--dataset", tiny, "--codec", FAKE, "--quality", "4", "8.0", "--output", out, "--no-progress",
            "--codec-opt", "scale=2"]
    assert cli.main(args + ["--shard", "0/2"]) == 0
    assert cli.main(args + ["--merge"]) == 1  # shard 1 missing
    assert cli.main(args + ["--shard", "1/2"]) == 0
    for q in ("q4", "q8"):
        manifest = load_manifest(os.path.join(out, tiny, FAKE, q, "manifest.json"))
        assert manifest["codec_options"] == {"scale": 2}
    assert cli.main(args + ["--merge"]) == 0
    broken = registered([{"file_name": str(tmp_path / "nope.png")}])
    assert cli.main(["--dataset", broken, "--codec", FAKE, "--quality", "2", "--output", out,
                     "--no-progress"]) == 1
    assert cli.main(["--dataset", "no_such_dataset", "--codec", FAKE, "--quality", "2",
                     "--output", out]) == 2


def test_x264_and_jpeg_end_to_end(tmp_path, registered):
    from vcm_d2.data.synthetic import SyntheticSpec, load_synthetic_images

    spec = SyntheticSpec(num_videos=2, frames_per_video=3, height=48, width=64, max_object_size=16)
    root = str(tmp_path / "synth")
    name = registered(load_synthetic_images(spec, root))
    out = str(tmp_path / "out")
    m264 = compress_dataset(name, "x264", [30], out, progress=False, save_bitstreams=True)[30]
    mjpg = compress_dataset(name, "jpeg", [50], out, progress=False)[50]
    for path, codec_name, quality in ((m264, "x264", 30), (mjpg, "jpeg", 50)):
        manifest = load_manifest(path)
        assert len(manifest["frames"]) == 6 and manifest["num_sequences"] == 2
        seq = [f for f in manifest["frames"] if f["sequence"] == manifest["frames"][0]["sequence"]]
        originals = [np.asarray(Image.open(f["original_file_name"]).convert("RGB")) for f in seq]
        coded = build_codec(codec_name).encode(originals, quality)
        assert [f["bits"] for f in seq] == coded.frame_bits
        assert all(f["bpp"] == pytest.approx(f["bits"] / (48 * 64)) for f in seq)
    manifest = load_manifest(m264)
    # P-frames of a low-delay video codec cost less than the I-frame.
    assert manifest["frames"][1]["bits"] < manifest["frames"][0]["bits"]
    bitstream = os.path.join(os.path.dirname(m264), manifest["sequences"][0]["bitstream"])
    assert os.path.getsize(bitstream) * 8 == manifest["sequences"][0]["bits"]

    names = register_pair_datasets_from_dir(out, name)
    assert names == [pair_dataset_name(name, "jpeg", 50), pair_dataset_name(name, "x264", 30)]
    pairs = DatasetCatalog.get(names[1])
    assert MetadataCatalog.get(names[1]).bpp == pytest.approx(manifest["bpp"])
    mapper = PairDatasetMapper(is_train=False, augmentations=[], image_format="RGB", load_original=True)
    item = mapper(pairs[0])
    assert item["bits"] == manifest["frames"][0]["bits"]
    err = (item["image"].float() - item["original"].float()).pow(2).mean().item()
    psnr = 10 * np.log10(255.0 ** 2 / err)
    assert 25 < psnr < 60


def test_bitstream_storage_resumes_shards_and_keeps_one_storage(tiny, tmp_path):
    """--store bitstream: no PNG, the frames of PNG storage; resume redoes exactly the sequences
    whose bitstream is missing or truncated; shards and --merge give the manifest of one run;
    a folder holds one storage."""
    out = str(tmp_path / "out")
    path = compress_dataset(tiny, FAKE, [8], out, progress=False, storage="bitstream")[8]
    qdir = os.path.dirname(path)
    manifest = load_manifest(path)
    assert manifest["storage"] == "bitstream" and not os.path.exists(os.path.join(qdir, "frames"))
    png = load_manifest(compress_dataset(tiny, FAKE, [8], str(tmp_path / "png"), progress=False)[8])
    assert [{k: v for k, v in f.items() if k != "offset"} for f in manifest["frames"]] == png["frames"]

    FakeCodec.calls.clear()
    compress_dataset(tiny, FAKE, [8], out, progress=False, storage="bitstream")
    assert FakeCodec.calls == []
    os.remove(os.path.join(qdir, "bitstreams", "video-9.bin"))
    with open(os.path.join(qdir, "bitstreams", "image-5.bin"), "r+b") as f:
        f.truncate(3)
    again = compress_dataset(tiny, FAKE, [8], out, progress=False, storage="bitstream")[8]
    assert sorted(FakeCodec.calls) == [(1, 8), (2, 8)]  # image-5 and video-9 only
    assert load_manifest(again) == manifest
    with pytest.raises(ValueError, match="stored as bitstream, not png"):
        compress_dataset(tiny, FAKE, [8], out, progress=False)

    cli = _cli()
    args = ["--dataset", tiny, "--codec", FAKE, "--quality", "8", "--output", str(tmp_path / "sh"),
            "--no-progress", "--store", "bitstream"]
    assert cli.main(args + ["--shard", "0/2"]) == 0 and cli.main(args + ["--shard", "1/2"]) == 0
    sharded = os.path.join(str(tmp_path / "sh"), tiny, FAKE, "q8", "manifest.json")
    assert load_manifest(sharded) == manifest
    os.remove(sharded)
    assert cli.main(args[:-2] + ["--merge"]) == 0  # the storage the records say
    assert load_manifest(sharded) == manifest
