"""`make demo` in miniature: tools/demo.py end to end (vcm_d2.pipeline.run_rate_task)."""
import json
import os

import pytest

from PIL import Image

from catalog_helpers import catalog_aside, shortened
from tool_helpers import load_tool


def test_demo_arguments_become_the_pipeline_spec():
    demo = load_tool("demo")
    spec = demo.spec_from_args(demo.parse_args(["--cdre-iters", "0", "--qualities", "20", "30",
                                                "--seeds", "0", "1", "2"]))
    assert spec.methods == {"full_ft": 150, "ours": 0, "ours_fd": 0}
    assert list(spec.seeds) == [0, 1, 2]
    assert list(spec.qualities) == [20.0, 30.0] and list(spec.codecs) == ["x264", "x265"]
    assert os.path.isfile(os.path.join(spec.config_dir, spec.table.clean))
    assert spec.figure_picks == ((0, 6), (4, 6))  # the default frames of the figures
    spec = demo.spec_from_args(demo.parse_args(["--figure-frames", "0:6", "1:3"]))
    assert spec.figure_picks == ((0, 6), (1, 3))
    for bad in ("1-3", "0:x", "-1:2"):
        with pytest.raises(SystemExit):
            demo.parse_args(["--figure-frames", bad])


def test_miniature_demo_writes_report_with_linked_figures(tmp_path, one_torch_thread):
    """The main job end to end: one codec, two qualities (not used by other tests, whose pair
    datasets of the same name hold other manifests), every method including CDRE, a few
    iterations, on the first frames of the first videos of each split (validation: the first 4
    frames of 2 videos, figures at frame 3 of both); then a rerun resumes every step."""
    demo = load_tool("demo")
    qualities = ("39", "44")
    names = [f"{s}@x264_q{q}" for s in ("vcm_synth_train", "vcm_synth_val") for q in qualities]
    argv = ["--output", str(tmp_path), "--codecs", "x264", "--qualities", *qualities,
            "--train-iters", "2", "--finetune-iters", "2", "--cdre-iters", "2", "--workers", "1",
            "--figure-frames", "0:3", "1:3",
            "--opts", "SOLVER.IMS_PER_BATCH", "2",
            # an untrained network's 100 detections per frame would make evaluation the slow part
            "TEST.DETECTIONS_PER_IMAGE", "5"]
    with catalog_aside(names), shortened({"vcm_synth_train": (2, 4), "vcm_synth_val": (2, 4)}):
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
