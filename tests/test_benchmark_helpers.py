"""TransVFC's pipeline steps (vcm_d2.pipeline.transvfc), benchmarks/seed_spread.py,
benchmarks/clean_seed_spread.py and benchmarks/cdre_table1.py --test-set on tiny inputs (the
benchmarks themselves are slow runs)."""
import json
import os

import pytest
import torch

from tool_helpers import REPO, load_tool
from vcm_d2.pipeline import transvfc as bench
from vcm_d2.pipeline.run import Run

CONFIG_DIR = os.path.join(REPO, "configs", "synthetic")


def _run(tmp_path):
    return Run(str(tmp_path), CONFIG_DIR, threads=torch.get_num_threads())


def _save_untrained(cfg) -> str:
    """cfg's model with seeded random weights as OUTPUT_DIR/model_final.pth (a run's folder
    without the training); returns the path."""
    from detectron2.checkpoint import DetectionCheckpointer

    from vcm_d2.engine import VCMTrainer

    torch.manual_seed(0)
    os.makedirs(cfg.OUTPUT_DIR)
    DetectionCheckpointer(VCMTrainer.build_model(cfg), save_dir=cfg.OUTPUT_DIR).save("model_final")
    return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")


def test_scaled_stage_ends_keep_table1_proportions():
    table1 = [167, 333, 667, 833, 1000]
    assert bench.scaled_stage_ends(table1, 1000) == table1
    assert bench.scaled_stage_ends(table1, 300) == [50, 100, 200, 250, 300]
    assert bench.scaled_stage_ends(table1, 5) == [1, 2, 3, 4, 5]  # one iteration per stage
    with pytest.raises(ValueError, match="at least 5 iterations"):
        bench.scaled_stage_ends(table1, 4)


def test_stage_configs_chain_and_keep_the_stream_identity(tmp_path):
    run = _run(tmp_path)
    s1 = bench.stage1_cfg(run, 4, 300, "prev.pth")
    assert (s1.SOLVER.MAX_ITER, list(s1.MODEL.VCM.TRANSVFC.STAGE_ENDS)) == (300, [50, 100, 200, 250, 300])
    assert s1.MODEL.WEIGHTS == "prev.pth" and s1.MODEL.VCM.TRANSVFC.LAMBDA_R == 4
    networks = {"semseg": "seg.pth", "vis": "vis.pth"}
    s2 = bench.stage2_cfg(run, "semseg", s1, 100, networks)
    T = s2.MODEL.VCM.TRANSVFC
    assert (T.MODEL_ID, T.QUALITY_INDEX, T.TRAIN_STAGE) == (s1.MODEL.VCM.TRANSVFC.MODEL_ID, 4, "fst")
    assert T.TASK.SEM_SEG.WEIGHTS == "seg.pth"
    assert s2.MODEL.WEIGHTS == os.path.join(s1.OUTPUT_DIR, "model_final.pth")
    # the stage-2 config's lr drop at 3/4 of its run, scaled to 100 iterations
    assert (s2.SOLVER.MAX_ITER, tuple(s2.SOLVER.STEPS)) == (100, (75,))
    pixels = bench.pixel_cfg(run, "detection", networks)
    assert pixels.MODEL.VCM.TRANSVFC.INFERENCE_INPUT == "pixels"
    # VIS: TransVFC inside the video model, the VIS network as its instance-segmentation tail
    vis = bench.stage2_cfg(run, "vis", s1, 100, networks)
    assert vis.MODEL.META_ARCHITECTURE == "VideoInstanceSegmentor"
    assert vis.MODEL.VCM.TRANSVFC.TASK.INSTANCE_SEG.WEIGHTS == "vis.pth"
    vis_pixels = bench.pixel_cfg(run, "vis", networks)
    assert vis_pixels.MODEL.VCM.VIS.DETECTOR == "TransVFC"
    assert vis_pixels.MODEL.VCM.TRANSVFC.INFERENCE_INPUT == "pixels"


def bench_args(argv):
    """The options of ``add_stage1_arguments`` parsed from ``argv``."""
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_stage1_arguments(parser)
    return parser.parse_args(argv)


def test_stage1_chain_takes_iterations_per_lambda(tmp_path, monkeypatch):
    """--lambda-iters: a longer schedule for some lambda_R of the chain; each model still starts
    from the previous one. Bad specs and lambda_R outside the chain are refused before any work."""
    assert bench.parse_lambda_iters(["0.25=2000", "1e-1=7"]) == {0.25: 2000, 0.1: 7}
    for bad in (["0.25"], ["x=3"], ["0.25=0"], ["0.25=1.5"], ["1=3", "1.0=4"]):
        with pytest.raises(ValueError, match="LAMBDA=ITERS|twice"):
            bench.parse_lambda_iters(bad)
    lambdas = [256, 4, 0.25]
    assert bench.stage1_iterations(lambdas, 1000, 300) == [1000, 300, 300]
    assert bench.stage1_iterations(lambdas, 1000, 300, {0.25: 2000, 256: 50}) == [50, 300, 2000]
    with pytest.raises(ValueError, match="lambda_R 0.5, which the chain 256, 4, 0.25 lacks"):
        bench.stage1_iterations(lambdas, 1000, 300, {0.5: 10})

    run = _run(tmp_path)
    trained = []

    def fake_train(cfg, step):
        trained.append((step, cfg.SOLVER.MAX_ITER, cfg.MODEL.WEIGHTS))
        return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")

    monkeypatch.setattr(run, "train", fake_train)
    cfgs = bench.train_stage1(run, lambdas, [10, 5, 20], "detector.pth")
    assert [t[:2] for t in trained] == [("stage1_lambda256", 10), ("stage1_lambda4", 5),
                                        ("stage1_lambda0.25", 20)]
    assert [t[2] for t in trained] == ["detector.pth"] + [
        os.path.join(c.OUTPUT_DIR, "model_final.pth") for c in cfgs[:2]]
    assert os.path.basename(cfgs[2].OUTPUT_DIR) == "lambda0.25_20it"
    with pytest.raises(ValueError, match="2 iteration counts for 3 lambda_R"):
        bench.train_stage1(run, lambdas, [10, 5], "detector.pth")
    args = bench_args(["--stage1-iters", "9", "--lambda-iters", "0.25=2000"])
    assert bench.stage1_schedule(args, lambdas) == ([9, 300, 2000], {
        "stage1_iters": 9, "finetune_iters": 300, "lambda_iters": {"0.25": 2000}})
    for tool in ("transvfc_rate_task", "vis_rate_task"):
        with pytest.raises(ValueError, match="which the chain"):  # before compressing anything
            load_tool(tool, "benchmarks").main(["--output", str(tmp_path / "bad"), "--lambdas",
                                                "4", "1", "--lambda-iters", "2=100"])
        assert not (tmp_path / "bad").exists()


def test_both_benchmarks_take_the_same_pixel_and_learned_codecs(tmp_path):
    """--learned adds trained learned codecs after the classic ones, with their own qualities
    and options (weights + checksums); a missing checkpoint stops either benchmark before any
    work."""
    from vcm_d2.codecs.neural import file_sha256
    from vcm_d2.pipeline.transvfc import PixelCodecs

    weights = tmp_path / "ckpt" / "ssf2020"
    weights.mkdir(parents=True)
    for q in (1, 2):
        (weights / f"q{q}.pth").write_bytes(b"weights of q%d" % q)
    argv = ["--codecs", "x264", "vvc", "--qualities", "30", "40", "--vvc-qualities", "35",
            "--gop", "6", "--learned", f"ssf2020={weights}", "--learned-qualities", "1", "2"]
    for tool in ("transvfc_rate_task", "vis_rate_task"):
        pixel = PixelCodecs.from_args(load_tool(tool, "benchmarks").parse_args(argv))
        assert pixel.codecs == ("x264", "vvc", "ssf2020")
        assert [pixel.qualities_of(c) for c in pixel.codecs] == [(30, 40), (35,), (1, 2)]
        assert pixel.options_of("x264") == {"gop": 6}
        assert pixel.options_of("ssf2020") == {
            "gop": 6, "weights": str(weights),
            "checksums": {str(q): file_sha256(str(weights / f"q{q}.pth")) for q in (1, 2)}}
        assert pixel.describe() == ("Pixel codecs: x264, vvc (x264/x265 CRF 30, 40, vvc QP 35; "
                                    "GOP 6); ssf2020 qualities 1, 2 from ssf2020")
        with pytest.raises(FileNotFoundError, match="q3.pth"):
            load_tool(tool, "benchmarks").main(["--output", str(tmp_path / "out"), "--learned",
                                                f"ssf2020={weights}", "--learned-qualities", "3"])
        assert not (tmp_path / "out").exists()


def test_vis_direct_report_lists_every_codec_against_x265(tmp_path):
    """A VIS run without TransVFC and conditions (e.g. learned codecs, direct test only) still
    writes a report: every codec's direct curve, BD-rate against x265's."""
    from vcm_d2.evaluation.results import RateTaskCurve

    vis = load_tool("vis_rate_task", "benchmarks")
    rates, metrics = [0.1, 0.2, 0.4, 0.8], [2.0, 5.0, 9.0, 12.0]
    curves = [RateTaskCurve(f"{codec}/direct", "vis", "AP", codec, "direct",
                            [{"quality": q, "bpp": r * factor, "metric": m}
                             for q, (r, m) in enumerate(zip(rates, metrics))])
              for codec, factor in (("x264", 1.0), ("x265", 0.5), ("ssf2020", 2.0))]
    path = vis.direct_report(str(tmp_path / "direct"), curves, ("x264", "x265", "ssf2020"),
                             ["preamble line"])
    text = open(path).read()
    assert "preamble line" in text and "direct test of each pixel codec" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and "/direct" in line.split("|")[1]}
    assert set(rows) == {"x264/direct", "x265/direct", "ssf2020/direct"}
    assert "+100.00" in rows["x264/direct"] and "+300.00" in rows["ssf2020/direct"]
    assert "(anchor)" in rows["x265/direct"]


def test_seed_spread_on_hand_made_curves(tmp_path):
    """A method that needs 0.5x / 0.8x the anchor's rate for the same metric in two runs has
    BD-rate -50 / -20 %: mean -35, sample sd 21.2; intervals of two methods are compared."""
    spread = load_tool("seed_spread", "benchmarks")
    from vcm_d2.evaluation.results import RateTaskCurve, save_curve

    rates, metrics = [0.1, 0.2, 0.4, 0.8], [10.0, 20.0, 28.0, 33.0]
    runs = []
    for run, (a, b) in enumerate(((0.5, 0.9), (0.8, 0.95))):
        folder = tmp_path / f"seed{run}"
        for method, factor in (("direct", 1.0), ("ours", a), ("full_ft", b)):
            points = [{"quality": q, "bpp": r * factor, "metric": m}
                      for q, (r, m) in enumerate(zip(rates, metrics))]
            save_curve(RateTaskCurve(f"x264/{method}", "vis", "AP", "x264", method, points),
                       folder / "curves" / f"{method}.json")
        runs.append(str(folder))
    lines = spread.main(runs)
    row = next(line for line in lines if "| ours |" in line)
    assert "-35.0 ± 21.2" in row and "-50.0, -20.0" in row
    assert "- vis x264: BD-rate of full_ft and ours do not overlap (mean ± sd)" in lines


def test_transvfc_eval_sets_of_a_split_are_registered_for_every_task():
    """--split picks the frames of every task's curve; the three task sets of a split share
    their frames (one compression serves them all)."""
    from detectron2.data import DatasetCatalog

    from vcm_d2.pipeline.transvfc import EVAL_SPLIT, TASKS, eval_set

    tvfc = load_tool("transvfc_rate_task", "benchmarks")
    assert eval_set("detection") == "vcm_synth_val" and EVAL_SPLIT == "val"
    names = [eval_set(task, "holdout") for task in TASKS]
    assert names == ["vcm_synth_holdout", "vcm_synth_sem_holdout", "vcm_synth_vis_holdout"]
    assert set(names) <= set(DatasetCatalog.list())
    assert tvfc.parse_args(["--split", "holdout"]).split == "holdout"
    with pytest.raises(SystemExit):  # never the training frames
        tvfc.parse_args(["--split", "train"])


def test_transvfc_rate_task_seeds_give_the_spread_against_each_pixel_codec(tmp_path, monkeypatch):
    """--seeds: one run per seed in OUTPUT/seed<k>/ sharing OUTPUT/compressed, then BD values of
    TransVFC against each pixel codec as mean ± sd (0.5x / 0.8x x264's rate: -50 / -20 %)."""
    from vcm_d2.evaluation.results import RateTaskCurve

    tvfc = load_tool("transvfc_rate_task", "benchmarks")
    rates, metrics = [0.1, 0.2, 0.4, 0.8], [10.0, 20.0, 28.0, 33.0]
    calls = []

    def fake_run_seed(args, seed, output, compressed_root, pixel):
        calls.append((seed, output, compressed_root, list(pixel.codecs)))
        curves = []
        for codec, factor in (("x264", 1.0), ("x265", 0.5), ("transvfc", {0: 0.5, 1: 0.8}[seed])):
            points = [{"quality": q, "bpp": r * factor, "metric": m}
                      for q, (r, m) in enumerate(zip(rates, metrics))]
            curves.append(RateTaskCurve(f"{codec}/m", "detection", "AP", codec, "m", points))
        return os.path.join(output, "report.md"), curves, {"detection": 34.0 - seed}

    monkeypatch.setattr(tvfc, "run_seed", fake_run_seed)
    report = tvfc.main(["--output", str(tmp_path), "--seeds", "0", "1", "--codecs", "x264",
                        "x265"])
    assert [c[0] for c in calls] == [0, 1]
    assert [c[1] for c in calls] == [str(tmp_path / "seed0"), str(tmp_path / "seed1")]
    assert {c[2] for c in calls} == {str(tmp_path / "compressed")}
    text = open(report).read()
    x264 = next(line for line in text.splitlines() if "| detection | x264 | transvfc |" in line)
    assert "-35.0 ± 21.2" in x264 and "-50.0, -20.0" in x264
    x265 = next(line for line in text.splitlines() if "| detection | x265 | transvfc |" in line)
    assert "+30.0 ± 42.4" in x265 and "+0.0, +60.0" in x265
    # the top of each seed's curve (33.0 @ 0.8 x its rate factor) against its clean detector
    lines = text.splitlines()
    assert "| detection | 0 | AP 34.00 | 33.00 @ 0.400 bpp | 1.00 |" in lines
    assert "| detection | 1 | AP 33.00 | 33.00 @ 0.640 bpp | 0.00 |" in lines
    assert "| detection | mean ± sd | | | 0.50 ± 0.71 |" in lines
    # the same AP range (BD-rate: all of it); log-rate ranges 0.1-0.8 vs 0.05-0.4 and 0.08-0.64
    assert "| detection | x264 | 100%–100% | 50%–81% |" in lines
    spread = json.loads((tmp_path / "seed_spread.json").read_text())
    assert spread["seeds"] == [0, 1] and len(spread["values"]) == 2
    # one seed: the run itself in OUTPUT, no spread
    calls.clear()
    tvfc.main(["--output", str(tmp_path / "one"), "--codecs", "x264"])
    assert calls == [(0, str(tmp_path / "one"), "", ["x264"])]


def test_transvfc_diagnose_evaluates_each_step_of_a_run_once(tmp_path, monkeypatch):
    """transvfc_diagnose.py on a run's folder (models saved untrained): the uncoded path, each
    stage-1 model's decoded feature (also I-frames only), the stage-2 models that exist; errors
    for a missing stage-1 model; a rerun is served from the caches."""
    from catalog_helpers import shortened

    from vcm_d2.engine import VCMTrainer
    from vcm_d2.pipeline.methods import SYNTHETIC_DETECTION

    diag = load_tool("transvfc_diagnose", "benchmarks")
    run = _run(tmp_path)
    save = _save_untrained
    save(SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, str(tmp_path / "clean"), iters=600))
    argv = ["--output", str(tmp_path), "--lambdas", "4", "--stage1-iters", "6",
            "--finetune-iters", "5", "--stage2-iters", "5", "--split", "test",
            "--intra-only", "--threads", str(torch.get_num_threads()),
            "MODEL.RPN.PRE_NMS_TOPK_TEST", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]  # fast tail
    first = bench.stage1_cfg(run, 4, 6, "")
    save(first)
    with pytest.raises(FileNotFoundError, match="no stage-1 model"):  # lambda_R 1 missing
        diag.main(argv[:3] + ["1"] + argv[3:])
    save(bench.stage2_cfg(run, "detection", first, 5, {}))
    with shortened({"vcm_synth_test": 1}):
        lines = diag.main(argv)
        rows = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line][1:]
        assert [(r[0][2:], r[1]) for r in rows] == [
            ("uncoded", "-"), ("decoded", "4"), ("decoded, I", "4"), ("decoded + FST", "4")]
        assert rows[0][3] == "-" and min(float(r[3]) for r in rows[1:]) > 0  # no bits uncoded
        monkeypatch.setattr(VCMTrainer, "test", lambda *a, **k: pytest.fail("evaluated again"))
        assert diag.main(argv) == lines
        # lambda_R 4 trained with another schedule: its rows are evaluated, not the cache's
        save(bench.stage1_cfg(run, 4, 7, ""))
        with pytest.raises(pytest.fail.Exception, match="evaluated again"):
            diag.main(["--lambda-iters", "4=7"] + argv)
    report = tmp_path / "diagnose" / "vcm_synth_test" / "report.md"
    assert report.read_text().splitlines() == lines


def test_clean_seed_spread_trains_each_length_and_seed_once(tmp_path, capsys):
    from catalog_helpers import shortened

    spread = load_tool("clean_seed_spread", "benchmarks")
    argv = ["--output", str(tmp_path), "--iters", "8", "--seeds", "0", "1",
            "--datasets", "vcm_synth_val", "--threads", str(torch.get_num_threads()),
            "SOLVER.IMS_PER_BATCH", "2", "TEST.DETECTIONS_PER_IMAGE", "5"]
    with shortened({"vcm_synth_val": 1}):
        assert spread.main(argv) == 0
        result = json.loads((tmp_path / "spread.json").read_text())
        assert list(result["values"]) == ["8"] and len(result["values"]["8"]["vcm_synth_val"]) == 2
        for seed in (0, 1):
            record = json.loads((tmp_path / "it8" / f"seed{seed}" / "vcm_run.json").read_text())
            assert (record["max_iter"], record["seed"]) == (8, seed)
        times = (tmp_path / "timings.json").read_text()
        assert spread.main(argv) == 0  # resumed: nothing trained or evaluated again
        assert (tmp_path / "timings.json").read_text() == times
    assert "| 8 | " in capsys.readouterr().out


def test_cdre_table1_draws_every_curve_on_the_chosen_test_set(tmp_path):
    """--test-set: the direct test, the trained rows, the report and its figures use the frames of
    the set named (the test split for seed studies), not the validation split."""
    from catalog_helpers import catalog_aside, shortened

    table1 = load_tool("cdre_table1", "benchmarks")
    qualities = ("40", "45")
    names = [f"{s}@x264_q{q}" for s in ("vcm_synth_train", "vcm_synth_test") for q in qualities]
    argv = ["--output", str(tmp_path), "--codecs", "x264", "--qualities", *qualities,
            "--train-iters", "2", "--iters", "2", "--methods", "ours", "--ablations", "constant",
            "--transfer-codecs",
            "--swin-methods", "--seeds", "0", "--test-set", "vcm_synth_test", "--workers", "1",
            "--threads", str(torch.get_num_threads()), "--figure-frames", "0:3", "1:3",
            "--opts", "SOLVER.IMS_PER_BATCH", "2", "TEST.DETECTIONS_PER_IMAGE", "5"]
    with catalog_aside(names), shortened({"vcm_synth_train": (1, 4), "vcm_synth_test": (2, 4)}):
        assert table1.main(argv) == 0
    direct = json.loads((tmp_path / "clean" / "eval.json").read_text())
    assert set(direct) == {"vcm_synth_test", *names[2:]}
    assert all(r["rate"]["frames"] == 8 for r in direct.values())  # 2 videos of 4 frames
    report = (tmp_path / "table1" / "report.md").read_text()
    assert "on the uncompressed vcm_synth_test" in report and "x264/ours" in report
    figure = json.loads((tmp_path / "table1" / "predictions_x264.json").read_text())
    assert "vcm_synth_test" in json.dumps(figure) and figure["picks"] == [[0, 3], [1, 3]]
    # the ablation row: Ours' schedule with its switch, next to ours, in its own report
    ablation = (tmp_path / "ablation" / "report.md").read_text()
    assert "x264/ours-constant" in ablation and "x264/ours" in ablation
    models = tmp_path / "models"
    side = {m: json.loads((models / f"{m}_x264_2it" / "eval.json").read_text())[names[2]]["rate"]["side_bpp"]
            for m in ("ours", "ours-constant")}
    assert 0 < side["ours-constant"] < side["ours"]  # all-zero maps: only the stream's framing


def test_transvfc_diagnose_splits_the_segmentation_loss_into_mapping_and_coding(tmp_path):
    """--task semseg: the segmentation network on uncompressed frames, then each stage-2 FST on
    the uncoded feature (no bits) and on the decoded one (the benchmark's point)."""
    from catalog_helpers import shortened

    from vcm_d2.pipeline.methods import SYNTHETIC_DETECTION
    from vcm_d2.pipeline.transvfc import TASK_NETWORK_CONFIG

    diag = load_tool("transvfc_diagnose", "benchmarks")
    run = _run(tmp_path)
    save = _save_untrained
    save(SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, str(tmp_path / "clean"), iters=600))
    config, sub = TASK_NETWORK_CONFIG["semseg"]
    argv = ["--output", str(tmp_path), "--task", "semseg", "--lambdas", "4", "--stage1-iters",
            "6", "--stage2-iters", "5", "--threads", str(torch.get_num_threads())]
    with pytest.raises(FileNotFoundError, match="--tasks semseg"):  # no segmentation network
        diag.main(argv)
    network = save(run.cfg(config, str(tmp_path / sub)))
    first = bench.stage1_cfg(run, 4, 6, "")
    save(first)
    save(bench.stage2_cfg(run, "semseg", first, 5, {"semseg": network}))
    with shortened({"vcm_synth_sem_test": 1}):
        lines = diag.main(argv)
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [(r[0][2:], r[1]) for r in rows] == [
        ("uncoded", "-"), ("uncoded + FST", "4"), ("decoded + FST", "4")]
    assert rows[0][3] == rows[1][3] == "-" and float(rows[2][3]) > 0  # bits only when coded
    assert "mIoU on vcm_synth_sem_test" in lines[0]
