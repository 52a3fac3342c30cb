"""Every shipped synthetic config runs through tools/train_net.py from nothing (its pair datasets
built on first use), and a missing pair of a real dataset fails with the command that makes it."""
import filecmp
import glob
import os
import shlex

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from catalog_helpers import catalog_aside, shortened
from tool_helpers import REPO, load_tool
from vcm_d2.data.pairs import load_manifest
from vcm_d2.engine import MissingDatasetError, get_vcm_cfg, prepare_datasets
from vcm_d2.engine.datasets import parse_degraded_name, parse_pair_name

SYNTHETIC_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "synthetic", "*.yaml")))
MAKE_IT = "Make it with: "


def test_name_parsing():
    assert parse_pair_name("vcm_synth_val@x264_q27") == ("vcm_synth_val", "x264", 27)
    assert parse_pair_name("a~noise@h264_intra_q0.5") == ("a~noise", "h264_intra", 0.5)
    assert parse_pair_name("coco_2017_val") is None
    assert parse_pair_name("a@x264_qhigh") is None  # not a number: not a pair name
    assert parse_pair_name("@x264_q27") is None
    assert parse_degraded_name("a~lowlight~noise") == ("a~lowlight", "noise")
    assert parse_degraded_name("vcm_synth_val") is None


@pytest.fixture
def real_dataset(tmp_path, monkeypatch):
    """A two-image dataset without the synthetic spec (a stand-in for real data), with
    $DETECTRON2_DATASETS pointing at an empty folder."""
    name = "vcm_test_real_images"
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(2):
        path = str(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(path)
        dicts.append({"file_name": path, "image_id": i, "height": 32, "width": 48,
                      "annotations": []})
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    with catalog_aside([name]):
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=["a"], evaluator_type="coco")
        yield name


def _command(error: Exception):
    message = str(error)
    assert "\n" not in message and MAKE_IT in message
    return shlex.split(message.split(MAKE_IT, 1)[1])


def test_missing_real_pair_names_the_command_that_makes_it(real_dataset):
    cfg = get_vcm_cfg()
    pair = f"{real_dataset}@jpeg_q50"
    with pytest.raises(MissingDatasetError, match="Pair dataset .*jpeg_q50.* not registered") as e:
        prepare_datasets(cfg, [pair])
    command = _command(e.value)
    assert command[:2] == ["python", "tools/compress_dataset.py"]
    assert pair not in DatasetCatalog.list()
    # the command as printed makes the pair, and the next run finds it
    assert load_tool("compress_dataset").main(command[2:] + ["--no-progress"]) == 0
    assert prepare_datasets(cfg, [pair]) == []
    assert MetadataCatalog.get(pair).get("quality") == 50
    assert len(DatasetCatalog.get(pair)) == 2


def test_missing_real_degraded_copy_and_unknown_source(real_dataset):
    cfg = get_vcm_cfg()
    with pytest.raises(MissingDatasetError) as e:
        prepare_datasets(cfg, [f"{real_dataset}~lowlight@x265_q32"])
    command = " ".join(_command(e.value))  # the pair's command degrades, then compresses
    for arg in (f"--dataset {real_dataset} ", "--codec x265 ", "--quality 32 ", "--degradation lowlight"):
        assert arg in command
    with pytest.raises(MissingDatasetError, match="nor is its source dataset 'no_such_set'"):
        prepare_datasets(cfg, ["no_such_set@x264_q27"])
    cfg.VCM.PAIRS.BUILD_SYNTHETIC = False  # synthetic pairs then behave like real ones
    with pytest.raises(MissingDatasetError, match="vcm_synth_val@x264_q1"):
        prepare_datasets(cfg, ["vcm_synth_val@x264_q1"])


def _manifest_without_paths(path):
    manifest = load_manifest(path)
    for frame in manifest["frames"]:  # absolute; the relative path stays compared
        frame.pop("original_file_name")
    return manifest


def test_on_demand_pairs_equal_compress_dataset_output(tmp_path):
    name = "vcm_synth_val~noise@x264_q42"
    cfg = get_vcm_cfg()
    cfg.VCM.PAIRS.BUILD_ROOT = str(tmp_path / "built")
    with catalog_aside([name, "vcm_synth_val~noise"]):
        assert prepare_datasets(cfg, [name]) == ["vcm_synth_val~noise", name]
        assert len(DatasetCatalog.get(name)) == 96  # the validation videos' frames, as pairs
        built = MetadataCatalog.get(name).manifest
    cli = str(tmp_path / "cli")
    with catalog_aside(["vcm_synth_val~noise"]):
        assert load_tool("compress_dataset").main([
            "--dataset", "vcm_synth_val", "--degradation", "noise", "--degradation-root",
            os.path.join(cli, "vcm_degraded"), "--codec", "x264", "--quality", "42",
            "--output", os.path.join(cli, "vcm_compressed"), "--no-progress"]) == 0
    made = os.path.join(cli, "vcm_compressed", "vcm_synth_val~noise", "x264", "q42", "manifest.json")
    assert _manifest_without_paths(built) == _manifest_without_paths(made)
    frames = sorted(os.path.relpath(p, os.path.dirname(made))
                    for p in glob.glob(os.path.join(os.path.dirname(made), "frames", "**", "*.png"),
                                       recursive=True))
    assert frames
    match, mismatch, errors = filecmp.cmpfiles(os.path.dirname(built), os.path.dirname(made),
                                               frames, shallow=False)
    assert not mismatch and not errors and len(match) == len(frames)


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    """One folder of on-demand pairs for every config of the walk (built once, then reused)."""
    return str(tmp_path_factory.mktemp("vcm_pairs"))


def _per_dataset(results, names):
    return results if len(names) > 1 else {names[0]: results}


# (videos, frames) of each base set the walk compresses, trains and evaluates on: the path is the
# same for half a video (a GOP's I-frame and P-frames) as for all 8 (and compressing and
# evaluating them was most of the walk's time).
WALK_VIDEOS = (1, 6)


def _base(name: str) -> str:
    """The synthetic set a (degraded / compressed) dataset name comes from."""
    pair = parse_pair_name(name)
    name = pair[0] if pair else name
    degraded = parse_degraded_name(name)
    return _base(degraded[0]) if degraded else name


@pytest.mark.parametrize("config", SYNTHETIC_CONFIGS, ids=os.path.basename)
def test_every_synthetic_config_trains_and_evaluates(config, build_root, tmp_path):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(config)
    tests = list(cfg.DATASETS.TEST)
    train_net = load_tool("train_net")
    args = train_net.default_argument_parser().parse_args([
        "--config-file", config, "SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", "",
        "OUTPUT_DIR", str(tmp_path), "VCM.PAIRS.BUILD_ROOT", build_root, "MODEL.DEVICE", "cpu",
        # an untrained network's 100 detections per frame would make evaluation the slow part
        "TEST.DETECTIONS_PER_IMAGE", "5"])
    # The pairs built from the shortened sets stay in build_root; their registrations end with
    # the config, so other tests in this process see the full sets.
    names = list(cfg.DATASETS.TRAIN) + tests
    built = [n for n in names if n != _base(n)]
    with catalog_aside(built), shortened({_base(n): WALK_VIDEOS for n in names}):
        results = train_net.main(args)
    assert os.path.isfile(tmp_path / "model_final.pth")
    for dataset, res in _per_dataset(results, tests).items():
        tasks = set(res) - {"rate"}
        assert tasks, f"{dataset}: no task metric in {sorted(res)}"
        if cfg.MODEL.KEYPOINT_ON:  # keypoint R-CNN inference ran through evaluation
            assert "keypoints" in tasks
        if "@" in dataset:  # every pair's bits reach the results
            assert res["rate"]["bpp"] > 0
