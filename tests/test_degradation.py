"""vcm_d2.data.degradation: low light and noise (TransVFC §4.4.6), degraded datasets and their
compression."""
import importlib.util
import json
import os

import numpy as np
import pytest
from catalog_helpers import catalog_aside
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from vcm_d2.data.datasets import builtin
from vcm_d2.data.degradation import (
    DEGRADATIONS,
    DEGRADED_NAME_SEPARATOR,
    LOW_LIGHT_FACTOR,
    NOISE_SIGMA,
    degrade_dataset,
    degrade_image,
    degraded_dataset_name,
    frame_rng,
    gaussian_noise,
    low_light,
    register_degraded_dataset,
    register_degraded_datasets_from_dir,
)
from vcm_d2.data.pairs import (
    load_manifest,
    pair_dataset_name,
    register_pair_datasets_from_dir,
)
from vcm_d2.engine import register_pair_roots
from vcm_d2.engine.compress import compress_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES, VIDEOS = "vcm_synth_val", "vcm_synth_vis_val"
SUBSET = "test_degradation_subset"
SUBSET_VIDEOS = 2  # videos of vcm_synth_val in SUBSET: keeps compression fast


def _ycbcr(image):
    """BT.601 full range, written out independently of the module under test."""
    r, g, b = (image[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return y, cb, cr


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _paths(record):
    return record["file_names"] if "file_names" in record else [record["file_name"]]


def _mtimes(folder):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture
def catalog():
    """Set aside degraded datasets registered at import; drop whatever a test registers."""
    with catalog_aside([n for n in DatasetCatalog.list() if DEGRADED_NAME_SEPARATOR in n]):
        yield


@pytest.fixture
def subset(catalog):
    """The first videos of vcm_synth_val as a dataset of its own (same metadata)."""
    video_ids = sorted({d["video_id"] for d in DatasetCatalog.get(IMAGES)})[:SUBSET_VIDEOS]
    DatasetCatalog.register(
        SUBSET, lambda: [d for d in DatasetCatalog.get(IMAGES) if d["video_id"] in video_ids])
    meta = MetadataCatalog.get(IMAGES).as_dict()
    meta.pop("name")
    MetadataCatalog.get(SUBSET).set(**meta)
    return SUBSET


# ----------------------------------------------------------------------------- pixel functions
def test_low_light_scales_luma_and_keeps_chroma():
    rng = np.random.default_rng(0)
    # Grey-ish colours: every channel stays above 0.7 * Y, so nothing is clipped.
    grey = rng.integers(100, 220, (32, 32, 1))
    image = np.clip(grey + rng.integers(-12, 13, (32, 32, 3)), 0, 255).astype(np.uint8)
    out = low_light(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    y0, cb0, cr0 = _ycbcr(image)
    y1, cb1, cr1 = _ycbcr(out)
    # Rounding each channel by <= 0.5 moves Y by <= 0.5 and Cb, Cr by <= 0.5 (weights sum to 1).
    assert np.abs(y1 - LOW_LIGHT_FACTOR * y0).max() <= 1
    assert np.abs(cb1 - cb0).max() <= 1 and np.abs(cr1 - cr0).max() <= 1
    assert y1.mean() < 0.35 * y0.mean()

    np.testing.assert_array_equal(low_light(image, factor=1.0), image)
    full = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(low_light(full, factor=1.0), full)
    # Saturated blue: R and G would go to -0.7 * Y = -20.3; they are clipped, never wrapped.
    blue = np.array([[[0, 0, 255]]], np.uint8)
    np.testing.assert_array_equal(low_light(blue), [[[0, 0, 235]]])
    with pytest.raises(ValueError, match="uint8"):
        low_light(full.astype(np.float32))


def test_low_light_agrees_with_pillow_ycbcr():
    """Same colour space as Pillow/JPEG. Pillow stores YCbCr as uint8 and converts in fixed
    point (its own RGB round trip is off by up to 3), hence the tolerance; another matrix (e.g.
    BT.709 luma weights) would be off by tens of levels on saturated colours."""
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ycbcr = np.asarray(Image.fromarray(image).convert("YCbCr")).astype(np.float64)
    ycbcr[..., 0] = np.rint(ycbcr[..., 0] * LOW_LIGHT_FACTOR)
    pillow = np.asarray(Image.fromarray(ycbcr.astype(np.uint8), "YCbCr").convert("RGB"))
    diff = np.abs(low_light(image).astype(int) - pillow)
    assert diff.max() <= 3 and diff.mean() < 1


def test_gaussian_noise_statistics_and_determinism():
    grey = np.full((256, 256, 3), 128, np.uint8)
    noisy = gaussian_noise(grey, rng=frame_rng(0, "v0000/f0000.png"))
    assert noisy.dtype == np.uint8
    diff = noisy.astype(np.float64) - 128
    # 196608 samples: the standard error of the mean is 25 / sqrt(n) = 0.056 and of the std
    # about 25 / sqrt(2n) = 0.04; rounding adds 1/12 to the variance and clipping is > 5 sigma
    # away. 0.3 is > 5 standard errors, so these bounds fail only if the noise is wrong.
    assert abs(diff.mean()) < 0.3
    assert diff.std() == pytest.approx(NOISE_SIGMA, abs=0.3)

    again = degrade_image(grey, "noise", seed=0, relpath="v0000/f0000.png")
    np.testing.assert_array_equal(again, noisy)
    other_path = degrade_image(grey, "noise", seed=0, relpath="v0000/f0001.png")
    other_seed = degrade_image(grey, "noise", seed=1, relpath="v0000/f0000.png")
    assert (other_path != noisy).mean() > 0.9 and (other_seed != noisy).mean() > 0.9
    with pytest.raises(ValueError, match="seed"):
        frame_rng(-1, "a.png")


def test_noise_is_the_same_in_every_process():
    """Pinned values: a salted hash() or another path hash would change the benchmark input."""
    row = degrade_image(np.full((1, 4, 3), 128, np.uint8), "noise", seed=0, relpath="v0000/f0000.png")
    assert row.reshape(-1).tolist() == [146, 118, 126, 134, 129, 166, 123, 110, 111, 106, 170, 152]


def test_unknown_kind_lists_known_ones(tmp_path, catalog):
    assert sorted(DEGRADATIONS) == ["lowlight", "noise"]
    with pytest.raises(ValueError, match="lowlight, noise"):
        degrade_image(np.zeros((4, 4, 3), np.uint8), "fog")
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        degrade_dataset(IMAGES, "fog", str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before writing anything


# ----------------------------------------------------------------------------- datasets
def test_degrade_image_dataset(tmp_path, catalog):
    root = str(tmp_path)
    name = degrade_dataset(IMAGES, "noise", root, seed=3, progress=False)
    assert name == degraded_dataset_name(IMAGES, "noise") == "vcm_synth_val~noise"
    base, degraded = DatasetCatalog.get(IMAGES), DatasetCatalog.get(name)
    assert len(degraded) == len(base)
    for b, d in zip(base, degraded):
        assert {k: v for k, v in d.items() if k != "file_name"} == \
            {k: v for k, v in b.items() if k != "file_name"}
        assert d["file_name"].startswith(os.path.join(root, name, "frames") + os.sep)
    # Pixels: the function applied to the originals, keyed by the path relative to the
    # common folder of the base frames (images/ of the synthetic dataset).
    for b, d in list(zip(base, degraded))[::17]:
        rel = os.path.relpath(b["file_name"], os.path.dirname(os.path.dirname(b["file_name"])))
        expected = gaussian_noise(_read(b["file_name"]), rng=frame_rng(3, rel.replace(os.sep, "/")))
        np.testing.assert_array_equal(_read(d["file_name"]), expected)

    meta = MetadataCatalog.get(name)
    assert meta.degradation == {"kind": "noise", "params": {"sigma": NOISE_SIGMA}, "seed": 3}
    assert meta.base_dataset == IMAGES
    assert meta.thing_classes == MetadataCatalog.get(IMAGES).thing_classes
    assert meta.evaluator_type == "coco"

    # A second run writes nothing; registering again for the same folder is a no-op.
    before = _mtimes(os.path.join(root, name))
    assert degrade_dataset(IMAGES, "noise", root, seed=3, progress=False) == name
    assert _mtimes(os.path.join(root, name)) == before
    register_degraded_dataset(IMAGES, "noise", root)
    with pytest.raises(ValueError, match="already registered"):
        register_degraded_dataset(IMAGES, "noise", str(tmp_path / "elsewhere"))


def test_degrade_video_dataset_matches_image_frames(tmp_path, catalog):
    root = str(tmp_path)
    name = degrade_dataset(VIDEOS, "lowlight", root, progress=False, workers=2)
    base, degraded = DatasetCatalog.get(VIDEOS), DatasetCatalog.get(name)
    assert [{k: v for k, v in d.items() if k != "file_names"} for d in degraded] == \
        [{k: v for k, v in b.items() if k != "file_names"} for b in base]
    b, d = base[1], degraded[1]
    assert len(d["file_names"]) == len(b["file_names"])
    for original, copy in list(zip(b["file_names"], d["file_names"]))[::5]:
        np.testing.assert_array_equal(_read(copy), low_light(_read(original)))
    # The image-level dataset lists the same frames: same relative names, same noise.
    images = degrade_dataset(IMAGES, "noise", root, progress=False)
    videos = degrade_dataset(VIDEOS, "noise", root, progress=False)
    frame = DatasetCatalog.get(videos)[0]["file_names"][0]
    same = next(d["file_name"] for d in DatasetCatalog.get(images)
                if os.path.basename(os.path.dirname(d["file_name"])) == "v0000"
                and os.path.basename(d["file_name"]) == os.path.basename(frame))
    np.testing.assert_array_equal(_read(frame), _read(same))


def test_other_settings_in_the_same_folder_are_refused(tmp_path, catalog, subset):
    root = str(tmp_path)
    name = degrade_dataset(subset, "noise", root, seed=0, progress=False)
    with pytest.raises(ValueError, match="seed.: 1"):
        degrade_dataset(subset, "noise", root, seed=1, progress=False)
    # A folder holding another kind (e.g. renamed by hand) is refused too.
    os.rename(os.path.join(root, name), os.path.join(root, subset + "~lowlight"))
    with pytest.raises(ValueError, match="other settings"):
        degrade_dataset(subset, "lowlight", root, progress=False)


def test_resume_and_missing_frame_error(tmp_path, catalog, subset):
    root = str(tmp_path)
    name = degrade_dataset(subset, "lowlight", root, progress=False)
    folder = os.path.join(root, name)
    frames = sorted(d["file_name"] for d in DatasetCatalog.get(name))
    os.remove(frames[3])
    with pytest.raises(FileNotFoundError, match=r"f0003\.png.*degrade_dataset"):
        DatasetCatalog.get(name)
    before = _mtimes(folder)
    degrade_dataset(subset, "lowlight", root, progress=False)
    after = _mtimes(folder)
    rewritten = sorted(p for p in after if before.get(p) != after[p])
    assert rewritten == sorted([frames[3], os.path.join(folder, "DONE.json")])
    assert len(DatasetCatalog.get(name)) == len(frames)


# ----------------------------------------------------------------------------- compression
def test_compress_degraded_dataset_end_to_end(tmp_path, catalog, subset):
    droot, out = str(tmp_path / "degraded"), str(tmp_path / "compressed")
    name = degrade_dataset(subset, "lowlight", droot, progress=False)
    manifest_path = compress_dataset(name, "jpeg", [50], out, progress=False)[50]
    manifest = load_manifest(manifest_path)
    assert manifest["dataset"] == name
    pairs = register_pair_datasets_from_dir(out, name)
    assert pairs == [pair_dataset_name(name, "jpeg", 50)] == [name + "@jpeg_q50"]
    records = DatasetCatalog.get(pairs[0])
    degraded = DatasetCatalog.get(name)
    assert [r["original_file_name"] for r in records] == [d["file_name"] for d in degraded]
    assert records[0]["annotations"] == DatasetCatalog.get(subset)[0]["annotations"]
    assert MetadataCatalog.get(pairs[0]).degradation["kind"] == "lowlight"
    # The decoded frames are dark: the codec saw the degraded input.
    dark, clean = _read(records[0]["file_name"]), _read(DatasetCatalog.get(subset)[0]["file_name"])
    assert dark.mean() < 0.5 * clean.mean()


def test_registration_from_roots(tmp_path, catalog, subset):
    """builtin (vcm_degraded/ + vcm_compressed/) and VCM.PAIRS.ROOTS (one folder for both)."""
    root = str(tmp_path)
    degraded_root = os.path.join(root, builtin.DEGRADED_DIRNAME)
    name = degrade_dataset(subset, "lowlight", degraded_root, progress=False)
    compressed_root = os.path.join(root, builtin.COMPRESSED_DIRNAME)
    compress_dataset(name, "jpeg", [50], compressed_root, progress=False)
    broken = os.path.join(degraded_root, subset + "~noise")
    os.makedirs(broken)
    with open(os.path.join(broken, "DONE.json"), "w") as f:
        f.write("{not json")
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    # The broken folder is skipped with a warning; the pair of the degraded dataset is found.
    assert builtin.register_all(root) == [name, name + "@jpeg_q50"]
    with pytest.raises(ValueError, match="not valid JSON"):
        register_degraded_datasets_from_dir(degraded_root)

    shared = str(tmp_path / "shared")
    other = degrade_dataset(subset, "noise", shared, progress=False)
    compress_dataset(other, "jpeg", [30], shared, progress=False)
    DatasetCatalog.remove(other)
    MetadataCatalog.remove(other)
    assert register_pair_roots([shared]) == [other, other + "@jpeg_q30"]
    assert len(DatasetCatalog.get(other + "@jpeg_q30")) == len(DatasetCatalog.get(subset))


def test_cli_degradation(tmp_path, catalog, subset, capsys):
    spec = importlib.util.spec_from_file_location(
        "compress_cli", os.path.join(REPO, "tools", "compress_dataset.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    droot, out = str(tmp_path / "degraded"), str(tmp_path / "out")
    args = ["--dataset", subset, "--codec", "jpeg", "--quality", "50", "--output", out,
            "--no-progress", "--degradation", "lowlight", "--degradation-root", droot]
    assert cli.main(args) == 0
    name = subset + "~lowlight"
    assert f"{name} jpeg q50" in capsys.readouterr().out
    manifest = load_manifest(os.path.join(out, name, "jpeg", "q50", "manifest.json"))
    folder = os.path.join(droot, name)
    assert all(f["original_file_name"].startswith(folder) for f in manifest["frames"])
    with open(os.path.join(droot, name, "DONE.json")) as f:
        assert json.load(f)["num_frames"] == len(manifest["frames"])
    # The seed is recorded for noise only: another seed is refused before any compression.
    degrade_dataset(subset, "noise", droot, seed=0, progress=False)
    noisy = args[:-4] + ["--degradation", "noise", "--degradation-root", droot]
    assert cli.main(noisy + ["--degradation-seed", "5"]) == 2
    assert "'seed': 5" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, subset + "~noise"))
    assert cli.main(args + ["--degradation-seed", "5"]) == 0  # low light ignores the seed
