"""Helpers of tools/demo.py (also used by the benchmarks), and the demo itself in miniature."""
import json
import os

import pytest
from PIL import Image

from catalog_helpers import catalog_aside
from tool_helpers import load_tool


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


def _result(ap, bpp, side=0.0):
    return {"bbox": {"AP": ap}, "rate": {"bpp": bpp, "side_bpp": side, "frames": 96}}


def test_parse_args_defaults_and_overrides(demo):
    args = demo.parse_args([])
    assert args.qualities == list(demo.DEFAULT_QUALITIES)
    assert args.codecs == ["x264", "x265"]
    assert args.finetune_iters > 0 and args.cdre_iters > 0
    args = demo.parse_args(["--cdre-iters", "0", "--qualities", "20", "30"])
    assert args.cdre_iters == 0 and args.qualities == [20.0, 30.0]


def test_curve_from_takes_ap_bpp_and_side_bpp(demo):
    results = {"a": _result(20.0, 0.5, 0.01), "b": _result(10.0, 0.2, 0.01)}
    curve = demo.curve_from(results, "x264", "ours", [17, 27], ["a", "b"], meta={"iters": 3})
    assert curve.name == "x264/ours" and curve.method == "ours" and curve.codec == "x264"
    assert [p["bpp"] for p in curve.points] == [0.5, 0.2]
    assert [p["metric"] for p in curve.points] == [20.0, 10.0]
    assert all(p["side_bpp"] == 0.01 for p in curve.points)
    assert curve.meta == {"iters": 3}


def test_curve_from_rejects_missing_rate_and_length_mismatch(demo):
    with pytest.raises(ValueError, match="no bpp"):
        demo.curve_from({"a": {"bbox": {"AP": 1.0}, "rate": {"side_bpp": 0.0}}}, "x264", "direct", [17], ["a"])
    with pytest.raises(ValueError, match="qualities"):
        demo.curve_from({"a": _result(1.0, 0.1)}, "x264", "direct", [17, 22], ["a"])


def test_strongest_point_is_the_lowest_rate_of_the_anchor(demo):
    res = {"a": _result(24.0, 0.6), "b": _result(12.0, 0.1)}
    curves = [demo.curve_from(res, "x264", "direct", [17, 32], ["a", "b"]),
              demo.curve_from(res, "x264", "ours", [17, 32], ["a", "b"])]
    lines = demo.strongest_point_lines(curves, clean_metric=30.0)
    assert len(lines) == 1  # only the anchor method
    assert "q32" in lines[0] and "60.0% relative AP loss" in lines[0]
    with pytest.raises(ValueError):
        demo.relative_loss(0.0, 1.0)
    # an untrained network (uncompressed AP 0) still gets its report
    assert "no relative loss" in demo.strongest_point_lines(curves, clean_metric=0.0)[0]


def test_points_table_has_a_cell_per_quality(demo):
    res = {"a": _result(24.0, 0.6, 0.013), "b": _result(12.0, 0.1)}
    curves = [demo.curve_from(res, "x265", "ours", [17, 32], ["a", "b"]),
              demo.curve_from({"a": res["a"]}, "x264", "direct", [17], ["a"])]
    table = demo.points_table(curves).splitlines()
    assert table[0] == "| curve | q17 | q32 |"
    x264 = next(line for line in table if line.startswith("| x264/direct"))
    assert x264.endswith("| - |")  # no q32 point
    x265 = next(line for line in table if line.startswith("| x265/ours"))
    assert "24.0 @ 0.6000 (0.0130)" in x265 and "12.0 @ 0.1000 |" in x265


def test_method_cfg_applies_schedule_data_and_weights(demo, tmp_path):
    cfg = demo.method_cfg("ours", str(tmp_path), iters=40, weights="clean.pth",
                          train_sets=["a@x264_q17", "a@x265_q17"])
    assert cfg.MODEL.META_ARCHITECTURE == "CDRERCNN"
    assert cfg.VCM.PAIRS.LOAD_ORIGINAL
    assert cfg.SOLVER.MAX_ITER == 40 and tuple(cfg.SOLVER.STEPS) == (30,)
    assert tuple(cfg.DATASETS.TRAIN) == ("a@x264_q17", "a@x265_q17")
    assert cfg.MODEL.WEIGHTS == "clean.pth" and cfg.OUTPUT_DIR == str(tmp_path)
    fd = demo.method_cfg("ours_fd", str(tmp_path), iters=40, weights="w", train_sets=["a"])
    assert list(fd.MODEL.VCM.TRAINABLE) == ["cdre_encoder", "backbone.bottom_up.cdre"]
    head = demo.method_cfg("head_ft", str(tmp_path), iters=40, weights="w", train_sets=["a"])
    assert list(head.MODEL.VCM.FREEZE) == ["backbone"] and head.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    with pytest.raises(ValueError, match="unknown method"):
        demo.method_cfg("nope", str(tmp_path), iters=1, weights="w", train_sets=["a"])
    with pytest.raises(ValueError, match="iterations"):
        demo.method_cfg("ours", str(tmp_path), iters=0, weights="w", train_sets=["a"])
    with pytest.raises(ValueError, match="no training sets"):
        demo.method_cfg("ours", str(tmp_path), iters=1, weights="w", train_sets=[])


def test_evaluate_returns_cached_results_without_building_a_model(demo, tmp_path):
    cache = tmp_path / "eval.json"
    cache.write_text(json.dumps({"a": _result(5.0, 0.1), "b": _result(6.0, 0.2)}))
    # cfg None would fail if a model were built: everything must come from the cache
    out = demo.evaluate(None, "missing.pth", ["b", "a"], str(cache))
    assert list(out) == ["b", "a"] and out["a"]["bbox"]["AP"] == 5.0


def test_train_skips_a_finished_run(demo, tmp_path):
    cfg = demo.model_cfg(demo.CLEAN_CONFIG, str(tmp_path))
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert demo.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    assert not (tmp_path / "metrics.json").exists()  # no trainer was run


def test_train_refuses_a_finished_run_made_with_other_settings(demo, tmp_path):
    cfg = demo.model_cfg(demo.CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 5])
    (tmp_path / "model_final.pth").write_bytes(b"")
    record = {"max_iter": 5, "weights": "", "train_sets": list(cfg.DATASETS.TRAIN), "seed": cfg.SEED}
    (tmp_path / demo.RUN_RECORD_FILE).write_text(json.dumps(record))
    assert demo.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    other = demo.model_cfg(demo.CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 7])
    with pytest.raises(ValueError, match="delete that folder"):
        demo.train(other)


def test_step_times_keep_the_time_of_the_run_that_did_the_step(demo, tmp_path):
    path = str(tmp_path / "timings.json")
    times = demo.StepTimes(path)
    with times.step("train", done_before=False):
        pass
    assert "train" in times.times
    with open(path) as f:
        stored = json.load(f)
    stored["train"] = 123.0
    with open(path, "w") as f:
        json.dump(stored, f)
    resumed = demo.StepTimes(path)
    with resumed.step("train", done_before=True):  # skipped: keeps 123 s
        pass
    with resumed.step("eval", done_before=True):  # never timed: not listed
        pass
    assert resumed.times == {"train": 123.0}
    assert resumed.line() == "Timings (s): train 123, total 123"


def test_is_evaluated_and_is_trained(demo, tmp_path):
    cache = tmp_path / "eval.json"
    assert not demo.is_evaluated(["a"], str(cache))
    cache.write_text(json.dumps({"a": _result(1.0, 0.1)}))
    assert demo.is_evaluated(["a"], str(cache)) and not demo.is_evaluated(["a", "b"], str(cache))
    cfg = demo.model_cfg(demo.CLEAN_CONFIG, str(tmp_path))
    assert not demo.is_trained(cfg)
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert demo.is_trained(cfg)


def test_train_records_what_it_trained(demo, tmp_path):
    cfg = demo.model_cfg(demo.CLEAN_CONFIG, str(tmp_path), [
        "SOLVER.MAX_ITER", 1, "SOLVER.IMS_PER_BATCH", 1, "SOLVER.CHECKPOINT_PERIOD", 10])
    assert demo.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    record = json.loads((tmp_path / demo.RUN_RECORD_FILE).read_text())
    assert record == {"max_iter": 1, "weights": "", "train_sets": list(cfg.DATASETS.TRAIN),
                      "seed": cfg.SEED}
    assert demo.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")  # reused


def test_miniature_demo_writes_report_with_linked_figures(demo, tmp_path, one_torch_thread):
    """The main job end to end: one codec, two qualities (not used by other tests, whose pair
    datasets of the same name hold other manifests), every method including CDRE, a few
    iterations; then a rerun resumes every step."""
    qualities = ("39", "44")
    names = [f"{s}@x264_q{q}" for s in ("vcm_synth_train", "vcm_synth_val") for q in qualities]
    argv = ["--output", str(tmp_path), "--codecs", "x264", "--qualities", *qualities,
            "--train-iters", "2", "--finetune-iters", "2", "--cdre-iters", "2", "--workers", "1",
            "--opts", "SOLVER.IMS_PER_BATCH", "2"]
    with catalog_aside(names):
        demo.main(argv)
        report = (tmp_path / "report.md").read_text()
        for method in ("x264/direct", "x264/full_ft", "x264/ours", "x264/ours_fd"):
            assert method in report
        assert "![x264](predictions_x264.png)" in report
        with Image.open(tmp_path / "predictions_x264.png") as im:
            width, height = im.size
        # 2 frames; ground truth + uncompressed + 2 points x 4 methods = 10 rows
        assert width % 2 == 0 and height % 10 == 0 and height // 10 > width // 2
        record = json.loads((tmp_path / "predictions_x264.json").read_text())
        assert [r["label"] for r in record["rows"]][:3] == [
            "uncompressed, direct", "x264 q39, direct", "x264 q39, full_ft"]
        times = json.loads((tmp_path / "timings.json").read_text())
        mtime = os.stat(tmp_path / "predictions_x264.png").st_mtime_ns
        demo.main(argv)  # resumed: nothing retrained, re-evaluated or redrawn
        assert json.loads((tmp_path / "timings.json").read_text()) == times
        assert os.stat(tmp_path / "predictions_x264.png").st_mtime_ns == mtime


def test_step_times_of_two_runs_sharing_a_folder_are_merged(demo, tmp_path):
    path = str(tmp_path / "timings.json")
    a, b = demo.StepTimes(path), demo.StepTimes(path)  # both loaded the empty file
    with a.step("train", False):
        pass
    with b.step("stage1", False):
        pass
    with a.step("eval", False):
        pass
    assert set(json.loads(open(path).read())) == {"train", "stage1", "eval"}
    assert "stage1" in a.line() and "eval" in b.line()
