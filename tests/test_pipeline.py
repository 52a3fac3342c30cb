"""The rate-task pipeline's library parts (vcm_d2.pipeline): resumable steps, method configs,
curves and report tables. The pipeline end to end is in tests/test_demo.py."""
import json
import os
import shutil

import pytest

from vcm_d2.evaluation.results import RateTaskCurve
from vcm_d2.pipeline import run as steps
from vcm_d2.pipeline.methods import SYNTHETIC_DETECTION
from vcm_d2.pipeline.report import (bd_table, curve_from, points_table, relative_loss,
                                    strongest_point_lines)
from vcm_d2.pipeline.run import RUN_RECORD_FILE, StepTimes

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                          "synthetic")
CLEAN_CONFIG = os.path.join(CONFIG_DIR, SYNTHETIC_DETECTION.clean)


def _result(ap, bpp, side=0.0):
    return {"bbox": {"AP": ap}, "rate": {"bpp": bpp, "side_bpp": side, "frames": 96}}


def _curve(results, codec, method, qualities, names, meta=None):
    return curve_from(results, codec, method, qualities, names, meta, task="detection",
                      result_key="bbox", metric="AP")


def _method_cfg(method, output_dir, **kwargs):
    return SYNTHETIC_DETECTION.method_cfg(method, CONFIG_DIR, output_dir, **kwargs)


def test_curve_from_takes_ap_bpp_and_side_bpp():
    results = {"a": _result(20.0, 0.5, 0.01), "b": _result(10.0, 0.2, 0.01)}
    curve = _curve(results, "x264", "ours", [17, 27], ["a", "b"], meta={"iters": 3})
    assert curve.name == "x264/ours" and curve.method == "ours" and curve.codec == "x264"
    assert [p["bpp"] for p in curve.points] == [0.5, 0.2]
    assert [p["metric"] for p in curve.points] == [20.0, 10.0]
    assert all(p["side_bpp"] == 0.01 for p in curve.points)
    assert curve.meta == {"iters": 3}


def test_curve_from_rejects_missing_rate_and_length_mismatch():
    with pytest.raises(ValueError, match="no bpp"):
        _curve({"a": {"bbox": {"AP": 1.0}, "rate": {"side_bpp": 0.0}}}, "x264", "direct", [17], ["a"])
    with pytest.raises(ValueError, match="qualities"):
        _curve({"a": _result(1.0, 0.1)}, "x264", "direct", [17, 22], ["a"])


def test_strongest_point_is_the_lowest_rate_of_the_anchor():
    res = {"a": _result(24.0, 0.6), "b": _result(12.0, 0.1)}
    curves = [_curve(res, "x264", "direct", [17, 32], ["a", "b"]),
              _curve(res, "x264", "ours", [17, 32], ["a", "b"])]
    lines = strongest_point_lines(curves, 30.0, "direct")
    assert len(lines) == 1  # only the anchor method
    assert "q32" in lines[0] and "60.0% relative AP loss" in lines[0]
    with pytest.raises(ValueError):
        relative_loss(0.0, 1.0)
    # an untrained network (uncompressed AP 0) still gets its report
    assert "no relative loss" in strongest_point_lines(curves, 0.0, "direct")[0]


def test_points_table_has_a_cell_per_quality():
    res = {"a": _result(24.0, 0.6, 0.013), "b": _result(12.0, 0.1)}
    curves = [_curve(res, "x265", "ours", [17, 32], ["a", "b"]),
              _curve({"a": res["a"]}, "x264", "direct", [17], ["a"])]
    table = points_table(curves).splitlines()
    assert table[0] == "| curve | q17 | q32 |"
    x264 = next(line for line in table if line.startswith("| x264/direct"))
    assert x264.endswith("| - |")  # no q32 point
    x265 = next(line for line in table if line.startswith("| x265/ours"))
    assert "24.0 @ 0.6000 (0.0130)" in x265 and "12.0 @ 0.1000 |" in x265


def test_method_cfg_applies_schedule_data_and_weights(tmp_path):
    cfg = _method_cfg("ours", str(tmp_path), iters=40, weights="clean.pth",
                          train_sets=["a@x264_q17", "a@x265_q17"])
    assert cfg.MODEL.META_ARCHITECTURE == "CDRERCNN"
    assert cfg.VCM.PAIRS.LOAD_ORIGINAL
    assert cfg.SOLVER.MAX_ITER == 40 and tuple(cfg.SOLVER.STEPS) == (30,)
    assert tuple(cfg.DATASETS.TRAIN) == ("a@x264_q17", "a@x265_q17")
    assert cfg.MODEL.WEIGHTS == "clean.pth" and cfg.OUTPUT_DIR == str(tmp_path)
    fd = _method_cfg("ours_fd", str(tmp_path), iters=40, weights="w", train_sets=["a"])
    assert list(fd.MODEL.VCM.TRAINABLE) == ["cdre_encoder", "backbone.bottom_up.cdre"]
    head = _method_cfg("head_ft", str(tmp_path), iters=40, weights="w", train_sets=["a"])
    assert list(head.MODEL.VCM.FREEZE) == ["backbone"] and head.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    with pytest.raises(ValueError, match="unknown method"):
        _method_cfg("nope", str(tmp_path), iters=1, weights="w", train_sets=["a"])
    with pytest.raises(ValueError, match="iterations"):
        _method_cfg("ours", str(tmp_path), iters=0, weights="w", train_sets=["a"])
    with pytest.raises(ValueError, match="no training sets"):
        _method_cfg("ours", str(tmp_path), iters=1, weights="w", train_sets=[])


def test_evaluate_returns_cached_results_without_building_a_model(tmp_path):
    cache = tmp_path / "eval.json"
    cache.write_text(json.dumps({"a": _result(5.0, 0.1), "b": _result(6.0, 0.2)}))
    # cfg None would fail if a model were built: everything must come from the cache
    out = steps.evaluate(None, "missing.pth", ["b", "a"], str(cache))
    assert list(out) == ["b", "a"] and out["a"]["bbox"]["AP"] == 5.0


def test_train_skips_a_finished_run(tmp_path):
    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path))
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert steps.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    assert not (tmp_path / "metrics.json").exists()  # no trainer was run


def test_train_refuses_a_finished_run_made_with_other_settings(tmp_path):
    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 5])
    (tmp_path / "model_final.pth").write_bytes(b"")
    record = {"max_iter": 5, "weights": "", "train_sets": list(cfg.DATASETS.TRAIN), "seed": cfg.SEED}
    (tmp_path / RUN_RECORD_FILE).write_text(json.dumps(record))
    assert steps.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    other = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 7])
    with pytest.raises(ValueError, match="delete that folder"):
        steps.train(other)


def test_step_times_keep_the_time_of_the_run_that_did_the_step(tmp_path):
    path = str(tmp_path / "timings.json")
    times = StepTimes(path)
    with times.step("train", done_before=False):
        pass
    assert "train" in times.times
    with open(path) as f:
        stored = json.load(f)
    stored["train"] = 123.0
    with open(path, "w") as f:
        json.dump(stored, f)
    resumed = StepTimes(path)
    with resumed.step("train", done_before=True):  # skipped: keeps 123 s
        pass
    with resumed.step("eval", done_before=True):  # never timed: not listed
        pass
    assert resumed.times == {"train": 123.0}
    assert resumed.line().startswith("Timings (s): train 123, total 123 (")


def test_is_evaluated_and_is_trained(tmp_path):
    cache = tmp_path / "eval.json"
    assert not steps.is_evaluated(["a"], str(cache))
    cache.write_text(json.dumps({"a": _result(1.0, 0.1)}))
    assert steps.is_evaluated(["a"], str(cache)) and not steps.is_evaluated(["a", "b"], str(cache))
    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path))
    assert not steps.is_trained(cfg)
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert steps.is_trained(cfg)


def test_train_records_what_it_trained(tmp_path):
    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), [
        "SOLVER.MAX_ITER", 1, "SOLVER.IMS_PER_BATCH", 1, "SOLVER.CHECKPOINT_PERIOD", 10])
    assert steps.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    record = json.loads((tmp_path / RUN_RECORD_FILE).read_text())
    config = record.pop("config")
    assert record == {"max_iter": 1, "weights": "", "train_sets": list(cfg.DATASETS.TRAIN),
                      "seed": cfg.SEED}
    assert config["MODEL.ROI_HEADS.NUM_CLASSES"] == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert "OUTPUT_DIR" not in config and "DATALOADER.NUM_WORKERS" not in config
    assert steps.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")  # reused
    runtime = cfg.clone()  # where and how often it runs does not change the model
    runtime.DATALOADER.NUM_WORKERS = 3
    runtime.SOLVER.CHECKPOINT_PERIOD = 7
    assert steps.train(runtime) == os.path.join(str(tmp_path), "model_final.pth")


def test_train_drops_the_periodic_checkpoints_of_a_finished_run(tmp_path):
    """Periodic checkpoints only serve resuming a killed run: once it has finished, only
    model_final.pth is left (and last_checkpoint names it)."""
    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), [
        "SOLVER.MAX_ITER", 3, "SOLVER.IMS_PER_BATCH", 1, "SOLVER.CHECKPOINT_PERIOD", 1])
    assert steps.train(cfg) == str(tmp_path / "model_final.pth")
    assert (tmp_path / "model_final.pth").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("model_0")]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    (tmp_path / "model_0000001.pth").write_bytes(b"")  # only detectron2's naming is matched
    (tmp_path / "model_best.pth").write_bytes(b"")
    assert steps.drop_intermediate_checkpoints(str(tmp_path)) == ["model_0000001.pth"]
    assert (tmp_path / "model_best.pth").exists()


def test_stage1_keeps_the_config_checkpoint_period(tmp_path):
    """Long stage-1 runs checkpoint every SOLVER.CHECKPOINT_PERIOD of their config (resumable);
    a run shorter than that checkpoints at its end only."""
    from vcm_d2.pipeline import Run
    from vcm_d2.pipeline.transvfc import stage1_cfg

    run = Run(str(tmp_path), CONFIG_DIR, threads=1)
    period = run.cfg("transvfc_stage1_slim_lambda4.yaml", "", run.extra).SOLVER.CHECKPOINT_PERIOD
    assert stage1_cfg(run, 4, 4 * period, "").SOLVER.CHECKPOINT_PERIOD == period
    assert stage1_cfg(run, 4, period // 2, "").SOLVER.CHECKPOINT_PERIOD == period // 2


def test_train_refuses_a_finished_run_made_with_another_config(tmp_path):
    """A config change that keeps the output folder (e.g. wider latents) must not silently
    reuse the model trained before it; a key the old record lacks is not a conflict."""
    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 5])
    (tmp_path / "model_final.pth").write_bytes(b"")
    record = steps._portable(steps._run_record(cfg), cfg.OUTPUT_DIR)
    del record["config"]["MODEL.ROI_HEADS.NMS_THRESH_TEST"]  # written before that key existed
    (tmp_path / RUN_RECORD_FILE).write_text(json.dumps(record))
    assert steps.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    other = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 5,
                                                          "SOLVER.BASE_LR", 0.123])
    with pytest.raises(ValueError, match=r"SOLVER.BASE_LR: .* != 0.123.*delete that folder"):
        steps.train(other)




def test_step_times_of_two_runs_sharing_a_folder_are_merged(tmp_path):
    path = str(tmp_path / "timings.json")
    a, b = StepTimes(path), StepTimes(path)  # both loaded the empty file
    with a.step("train", False):
        pass
    with b.step("stage1", False):
        pass
    with a.step("eval", False):
        pass
    assert set(json.loads(open(path).read())) == {"train", "stage1", "eval"}
    assert "stage1" in a.line() and "eval" in b.line()


def test_points_table_of_curves_on_different_quality_scales():
    res = {"a": _result(24.0, 0.6), "b": _result(12.0, 0.1), "c": _result(20.0, 0.05, 0.01)}
    curves = [_curve(res, "x264", "direct", [17, 32], ["a", "b"]),
              _curve(res, "transvfc", "fst", [256, 32], ["c", "b"])]
    table = points_table(curves, by_quality=False).splitlines()
    assert table[0] == "| task | curve | quality: metric @ bpp |"
    row = next(line for line in table if "transvfc/fst" in line)
    assert row.endswith("| 256: 20.0 @ 0.0500 (0.0100); 32: 12.0 @ 0.1000 |")  # rate order


def test_several_seeds_share_compression_and_report_mean_and_sd(tmp_path, monkeypatch):
    """run_rate_task with 2 seeds: each seed's pipeline in OUTPUT/seed<k>/ with the compressed
    sets in OUTPUT/compressed, then BD values as mean ± sd with the per-seed values."""
    from vcm_d2.pipeline import rate_task

    calls = []
    rates, metrics = [0.1, 0.2, 0.4, 0.8], [10.0, 20.0, 28.0, 33.0]

    def fake_run_seed(spec, seed, output, compressed_root):
        calls.append((seed, output, compressed_root))
        factor = {0: 0.5, 1: 0.8}[seed]  # ours needs 0.5x / 0.8x the rate: BD-rate -50 / -20 %
        curves = [RateTaskCurve(f"x264/{m}", "detection", "AP", "x264", m,
                                [{"quality": q, "bpp": r * f, "metric": v}
                                 for q, (r, v) in enumerate(zip(rates, metrics))])
                  for m, f in (("direct", 1.0), ("ours", factor))]
        report = os.path.join(output, "report.md")
        return report, curves

    monkeypatch.setattr(rate_task, "_run_seed", fake_run_seed)
    spec = rate_task.RateTaskSpec(output=str(tmp_path), config_dir=CONFIG_DIR, seeds=(0, 1),
                                  methods={"ours": 1})
    report = rate_task.run_rate_task(spec)
    shared = os.path.join(str(tmp_path), "compressed")
    assert calls == [(0, os.path.join(str(tmp_path), "seed0"), shared),
                     (1, os.path.join(str(tmp_path), "seed1"), shared)]
    text = open(report).read()
    row = next(line for line in text.splitlines() if "| ours |" in line)
    assert "-35.0 ± 21.2" in row and "-50.0, -20.0" in row
    assert "[seed 1](seed1/report.md)" in text
    spread = json.loads((tmp_path / "seed_spread.json").read_text())
    assert spread["seeds"] == [0, 1]
    entry = spread["values"][0]
    assert entry["method"] == "ours" and entry["bd_rate"] == pytest.approx([-50.0, -20.0])
    with pytest.raises(ValueError, match="distinct"):
        rate_task.run_rate_task(rate_task.RateTaskSpec(output=str(tmp_path), config_dir=CONFIG_DIR,
                                                       seeds=(1, 1)))


def test_clean_cfg_scales_the_lr_steps_with_the_iterations(tmp_path):
    own = SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, str(tmp_path))
    same = SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, str(tmp_path), iters=own.SOLVER.MAX_ITER)
    assert tuple(same.SOLVER.STEPS) == tuple(own.SOLVER.STEPS)  # the demo's schedule unchanged
    longer = SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, str(tmp_path), ["SEED", 3],
                                           iters=2 * own.SOLVER.MAX_ITER)
    assert longer.SOLVER.MAX_ITER == 2 * own.SOLVER.MAX_ITER and longer.SEED == 3
    assert tuple(longer.SOLVER.STEPS) == tuple(2 * s for s in own.SOLVER.STEPS)
    assert longer.SOLVER.CHECKPOINT_PERIOD == own.SOLVER.CHECKPOINT_PERIOD  # still resumable


def test_mean_sd_of_seeds():
    import math

    from vcm_d2.pipeline.seeds import mean_sd

    assert mean_sd([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert mean_sd([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_sd([1.0, math.nan]))  # a run without detections


def test_paired_differences_cancel_the_shared_start():
    """Ours minus full_ft seed by seed: two seeds where both move together give a tight
    difference although each method's own spread is wide."""
    from vcm_d2.pipeline.seeds import SeedSpread

    key = ("detection", "x264")
    runs = [{(*key, "ours"): (-50.0, 2.0), (*key, "full_ft"): (-40.0, 1.5)},
            {(*key, "ours"): (-20.0, 1.0), (*key, "full_ft"): (-12.0, 0.5)}]
    lines = SeedSpread([0, 1], runs).paired_lines("full_ft")
    assert lines == ["- detection x264: BD-rate of ours minus full_ft, paired by seed: -9.0 ± 1.4 "
                     "points (-10.0, -8.0)"]
    assert SeedSpread([0, 1], runs).paired_lines("head_ft") == []  # no such method


def test_folder_lock_is_exclusive_and_released(tmp_path):
    folder = str(tmp_path / "seed0")
    import subprocess
    import sys

    # The lock is an flock on the folder's lock file: another process's non-blocking flock on it
    # (plain Python, no vcm_d2 import to pay for) fails while it is held.
    probe = ("import fcntl, sys\n"
             "f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print(True)\n"
             "except BlockingIOError:\n    print(False)")

    def other_process_gets_it():
        out = subprocess.run([sys.executable, "-c", probe, os.path.join(folder, steps.LOCK_FILE)],
                             capture_output=True, text=True, timeout=120, check=True).stdout.split()
        return out[-1] == "True"

    with steps.folder_lock(folder) as held:
        assert held
        assert not other_process_gets_it()
        with steps.folder_lock(folder, blocking=False) as again:  # nested in this process
            assert again
        assert not other_process_gets_it()  # the outer hold remains
    assert other_process_gets_it()


def test_run_each_locked_leaves_a_busy_folder_for_last(tmp_path):
    """A folder another process holds is taken after the free ones, once that process lets go;
    results come back in the items' order."""
    import subprocess
    import sys

    folder = lambda k: str(tmp_path / f"seed{k}")  # noqa: E731
    os.makedirs(folder(0))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.0)",
         os.path.join(folder(0), steps.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        order = []
        results = steps.run_each_locked([0, 1, 2], folder, lambda k: order.append(k) or k * 10)
    finally:
        holder.wait(timeout=30)
    assert order == [1, 2, 0] and results == [0, 10, 20]


def test_a_copied_output_folder_still_resumes(tmp_path):
    """Run records keep local weights relative to the model's folder: a folder that was moved
    or copied together with the model it started from is reused, not refused."""
    first = tmp_path / "a"
    cfg = steps.model_cfg(CLEAN_CONFIG, str(first / "full_ft"),
                          ["SOLVER.MAX_ITER", 5, "MODEL.WEIGHTS", str(first / "clean" / "model_final.pth")])
    (first / "full_ft").mkdir(parents=True)
    (first / "full_ft" / "model_final.pth").write_bytes(b"")
    record = steps._portable(steps._run_record(cfg), cfg.OUTPUT_DIR)
    assert record["weights"] == os.path.join("..", "clean", "model_final.pth")
    (first / "full_ft" / RUN_RECORD_FILE).write_text(json.dumps(record))
    shutil.copytree(first, tmp_path / "b")
    copied = steps.model_cfg(CLEAN_CONFIG, str(tmp_path / "b" / "full_ft"), [
        "SOLVER.MAX_ITER", 5, "MODEL.WEIGHTS", str(tmp_path / "b" / "clean" / "model_final.pth")])
    assert steps.train(copied) == str(tmp_path / "b" / "full_ft" / "model_final.pth")
    other = copied.clone()
    other.MODEL.WEIGHTS = str(tmp_path / "elsewhere.pth")
    with pytest.raises(ValueError, match="delete that folder"):
        steps.train(other)


def test_transvfc_stage2_models_are_split_between_processes(tmp_path, monkeypatch):
    """Stage-2 models are independent: one whose folder another process holds is trained after
    the others; the models come back in lambda_R order."""
    import subprocess
    import sys

    from vcm_d2.pipeline import Run
    from vcm_d2.pipeline.transvfc import stage1_cfg, stage2_cfg, train_stage2

    run = Run(str(tmp_path), CONFIG_DIR, threads=1)
    stage1 = [stage1_cfg(run, lam, 10, "") for lam in (256, 32, 4)]
    trained = []
    monkeypatch.setattr(run, "train", lambda cfg, step: trained.append(step) or step)
    held = stage2_cfg(run, "detection", stage1[0], 10, {}).OUTPUT_DIR  # lambda_R 256's FST
    os.makedirs(held)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.0)",
         os.path.join(held, steps.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        models = train_stage2(run, "detection", stage1, 10, {})
    finally:
        holder.wait(timeout=30)
    assert trained == [f"stage2_detection_lambda{lam}" for lam in (32, 4, 256)]
    assert [w for _, w in models] == [f"stage2_detection_lambda{lam}" for lam in (256, 32, 4)]


def test_train_waits_for_another_process_training_the_same_model(tmp_path):
    """Two processes asking for one model (e.g. a second benchmark process reaching a stage-1
    model the first is training): the second waits for the lock, then reuses the model instead
    of training it again in the same folder."""
    import subprocess
    import sys

    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 5])
    record = json.dumps(steps._portable(steps._run_record(cfg), cfg.OUTPUT_DIR))
    trainer = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; d = sys.argv[1]; "
         "f = open(os.path.join(d, '.vcm_lock'), 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('training', flush=True); time.sleep(1.0); "
         "open(os.path.join(d, 'vcm_run.json'), 'w').write(sys.argv[2]); "
         "open(os.path.join(d, 'model_final.pth'), 'wb').close()", str(tmp_path), record],
        stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "training"
        assert steps.train(cfg) == os.path.join(str(tmp_path), "model_final.pth")
    finally:
        trainer.wait(timeout=30)
    assert not (tmp_path / "metrics.json").exists()  # no trainer ran here


def test_evaluate_waits_for_another_process_evaluating_the_same_model(tmp_path, monkeypatch):
    """Two benchmark processes reaching one evaluation: the second waits for the model folder's
    lock, then reads the first one's cached results instead of evaluating again."""
    import subprocess
    import sys

    import torch

    from vcm_d2.engine import VCMTrainer

    cfg = steps.model_cfg(CLEAN_CONFIG, str(tmp_path), ["SOLVER.MAX_ITER", 5])
    result = {"vcm_synth_val": {"bbox": {"AP": 12.5}}}
    evaluator = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; d = sys.argv[1]; "
         "f = open(os.path.join(d, '.vcm_lock'), 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('evaluating', flush=True); time.sleep(1.0); "
         "open(os.path.join(d, 'eval.json'), 'w').write(sys.argv[2])", str(tmp_path),
         json.dumps(result)], stdout=subprocess.PIPE, text=True)
    monkeypatch.setattr(VCMTrainer, "test", lambda *a, **k: pytest.fail("evaluated again"))
    run = steps.Run(str(tmp_path / "run"), "", threads=torch.get_num_threads())
    try:
        assert evaluator.stdout.readline().strip() == "evaluating"
        assert run.evaluate(cfg, "w.pth", ["vcm_synth_val"], "eval") == result
    finally:
        evaluator.wait(timeout=30)


def test_bd_table_gives_the_overlap_each_bd_value_averages_over():
    """BD-rate averages over the common metric range, BD-metric over the common log-rate range;
    the TransVFC tables show both shares so the issue's ≥ 80 % rule can be checked."""
    def curve(codec, rates, metrics):
        return RateTaskCurve(f"{codec}/m", "detection", "AP", codec, "m",
                             [{"quality": i, "bpp": r, "metric": m}
                              for i, (r, m) in enumerate(zip(rates, metrics))])

    anchor = curve("x264", [0.1, 0.2, 0.4, 0.8], [10.0, 20.0, 25.0, 30.0])
    test = curve("transvfc", [0.05, 0.1, 0.15, 0.2], [20.0, 25.0, 28.0, 30.0])
    header, _, row = bd_table([anchor, test], "transvfc", ["x264", "vvc"])
    assert "overlap: metric / log-rate" in header
    cells = [c.strip() for c in row.split("|")]
    assert cells[1:3] == ["detection", "x264"] and float(cells[3]) < 0  # fewer bits
    assert cells[5] == "50% / 25%"  # [20, 30] of [10, 30]; log2 range 1 of 4
