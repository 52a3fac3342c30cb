import importlib.util
import json
import os

import pytest
from PIL import Image

from vcm_d2.evaluation.bdrate import bd_metric, bd_rate
from vcm_d2.evaluation.report import BD_METRIC_FMT, BD_RATE_FMT, bd_cells, write_report
from vcm_d2.evaluation.results import RateTaskCurve, load_curve, load_curves, save_curve

BPP = [0.05, 0.1, 0.2, 0.4]


def _curve(codec, method, bpp, ap, task="detection"):
    points = [{"quality": q, "bpp": b, "metric": m, "side_bpp": 0.0}
              for q, b, m in zip([51, 45, 39, 33], bpp, ap)]
    return RateTaskCurve(name=f"{codec}/{method}", task=task, metric="AP", codec=codec,
                         method=method, points=points, meta={"note": "fake"})


@pytest.fixture
def curves():
    return [
        _curve("x264", "direct", BPP, [20.0, 28.0, 34.0, 38.0]),
        _curve("x264", "finetune", BPP, [24.0, 31.0, 36.0, 39.0]),
        # x265 needs 70% of x264's bits for the same AP: BD-rate vs x264/direct = -30 %.
        _curve("x265", "direct", [b * 0.7 for b in BPP], [20.0, 28.0, 34.0, 38.0]),
        # non-monotonic: the 0.14 bpp point scores below the 0.07 bpp one.
        _curve("x265", "finetune", [b * 0.7 for b in BPP], [22.0, 30.0, 29.0, 37.0]),
    ]


def _by_name(curves, name):
    return next(c for c in curves if c.name == name)


def _row(md, name):
    return next(line for line in md.splitlines() if line.startswith(f"| {name} |"))


def test_curve_roundtrip_and_validation(tmp_path):
    c = _curve("x264", "direct", [0.4, 0.05, 0.2, 0.1], [38.0, 20.0, 34.0, 28.0])
    assert c.rates() == [0.05, 0.1, 0.2, 0.4] and c.metrics() == [20.0, 28.0, 34.0, 38.0]
    path = save_curve(c, tmp_path / "sub" / "x264_direct.json")
    assert os.listdir(tmp_path / "sub") == ["x264_direct.json"]  # no temp file left
    assert load_curve(path) == c
    with pytest.raises(ValueError, match="'bpp' must be > 0"):
        _curve("x264", "direct", [0.0, 0.1, 0.2, 0.4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="finite"):
        _curve("x264", "direct", BPP, [1, float("nan"), 3, 4])
    with pytest.raises(ValueError, match="missing field"):
        RateTaskCurve("a", "t", "AP", "c", "m", [{"bpp": 0.1, "metric": 3}])
    with pytest.raises(ValueError, match="side_bpp"):
        RateTaskCurve("a", "t", "AP", "c", "m",
                      [{"quality": 1, "bpp": 0.1, "metric": 3, "side_bpp": 0.2}])


def test_load_curves_dirs_skips_and_errors(tmp_path, curves):
    for c in curves[:2]:
        save_curve(c, tmp_path / (c.name.replace("/", "_") + ".json"))
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1}))
    with pytest.warns(UserWarning, match="config.json: not a rate-task result"):
        loaded = load_curves([tmp_path, tmp_path / "x264_direct.json"])  # duplicate ignored
    assert sorted(c.name for c in loaded) == ["x264/direct", "x264/finetune"]
    (tmp_path / "broken.json").write_text(json.dumps({"name": "x", "points": []}))
    with pytest.raises(ValueError, match="broken.json: invalid result file"):
        load_curves([tmp_path])
    with pytest.raises(FileNotFoundError):
        load_curves([tmp_path / "missing"])


def _check_png(path):
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        im.verify()


def test_write_report_per_codec_anchor(tmp_path, curves):
    report = write_report(curves, anchor_per_codec="direct", output_dir=tmp_path / "out")
    md = report.read_text()
    for name, anchor in [("x264/finetune", "x264/direct"), ("x265/finetune", "x265/direct")]:
        c, a = _by_name(curves, name), _by_name(curves, anchor)
        expected_rate = BD_RATE_FMT.format(bd_rate(a.rates(), a.metrics(),
                                                   c.rates(), c.metrics()).value)
        expected_ap = BD_METRIC_FMT.format(bd_metric(a.rates(), a.metrics(),
                                                     c.rates(), c.metrics()).value)
        row = _row(md, name)
        assert f"| {anchor} | {expected_rate} | {expected_ap} |" in row
    assert "(anchor)" in _row(md, "x264/direct") and "(anchor)" in _row(md, "x265/direct")
    # The dropped non-monotonic point is reported as a numbered note.
    assert "[1]" in _row(md, "x265/finetune")
    assert "dropped 1 non-monotonic point(s)" in md and "(0.14, 29.0)" in md
    assert "| 0.035-0.28 | 22-37 |" in _row(md, "x265/finetune")
    for codec in ("x264", "x265"):
        assert f"(curve_detection_{codec}.png)" in md
        _check_png(tmp_path / "out" / f"curve_detection_{codec}.png")
    assert sorted(os.listdir(tmp_path / "out")) == [
        "curve_detection_x264.png", "curve_detection_x265.png", "report.md"]


def test_write_report_named_anchor(tmp_path, curves):
    md = write_report(curves, anchor="x264/direct", output_dir=tmp_path, log_x=True,
                      preamble="Clean AP: **40.0**").read_text()
    assert "Clean AP: **40.0**" in md
    assert "| x264/direct | -30.00 |" in _row(md, "x265/direct")
    with pytest.raises(ValueError, match="anchor 'x265/nope' not found in task 'detection'"):
        write_report(curves, anchor="x265/nope", output_dir=tmp_path)
    with pytest.raises(ValueError, match="no anchor given for task 'detection'"):
        write_report(curves, anchor={"segmentation": "x264/direct"}, output_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown BD interpolation method 'spline'"):
        write_report(curves, anchor="x264/direct", output_dir=tmp_path, method="spline")
    with pytest.raises(ValueError, match="'keep' is cubic only"):
        write_report(curves, anchor="x264/direct", output_dir=tmp_path, on_non_monotonic="keep")
    with pytest.raises(ValueError, match="exactly one of"):
        write_report(curves, output_dir=tmp_path)


def test_write_report_one_plot_per_task(tmp_path, curves):
    md = write_report(curves, anchor="x264/direct", output_dir=tmp_path, plot_by="task").read_text()
    assert "curve_detection_all.png" in md and "curve_detection_x264.png" not in md
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["curve_detection_all.png"]
    with Image.open(tmp_path / "curve_detection_all.png") as im:
        assert im.size[0] > 0
    with pytest.raises(ValueError, match="plot_by must be one of"):
        write_report(curves, anchor="x264/direct", output_dir=tmp_path, plot_by="method")


def test_write_report_missing_codec_anchor_and_mixed_metrics(tmp_path, curves):
    md = write_report(curves + [_curve("vvc", "finetune", BPP, [21.0, 29.0, 35.0, 39.0])],
                      anchor_per_codec="direct", output_dir=tmp_path).read_text()
    assert "| n/a | n/a |" in _row(md, "vvc/finetune")
    assert "no 'direct' curve for codec 'vvc'" in md
    twin = _curve("x264", "direct", BPP, [1.0, 2.0, 3.0, 4.0])
    twin.name = "x264/direct-copy"
    with pytest.raises(ValueError, match="several 'direct' curves"):
        write_report(curves + [twin], anchor_per_codec="direct", output_dir=tmp_path)
    other = _curve("x264", "other", BPP, [1.0, 2.0, 3.0, 4.0])
    other.metric = "AP50"
    with pytest.raises(ValueError, match="mixes metrics"):
        write_report(curves + [other], anchor="x264/direct", output_dir=tmp_path)


def _load_tool():
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "rate_task_report.py")
    spec = importlib.util.spec_from_file_location("rate_task_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, curves, capsys):
    tool = _load_tool()
    for c in curves:
        save_curve(c, tmp_path / "res" / (c.name.replace("/", "_") + ".json"))
    tool.main([str(tmp_path / "res"), "--anchor", "detection=x264/direct",
               "--output", str(tmp_path / "out"), "--method", "akima"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.md")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "`akima`" in md and "| x264/direct | -30.00 |" in _row(md, "x265/direct")
    assert tool.anchors_by_task(["a", "seg=b"], {"det", "seg"}) == {"det": "a", "seg": "b"}
    with pytest.raises(ValueError, match="no anchor for task"):
        tool.anchors_by_task(["seg=b"], {"det", "seg"})
    with pytest.raises(ValueError, match="no task 'depth'"):
        tool.anchors_by_task(["depth=b"], {"det"})


def test_bd_cells_format_values_and_explain_what_is_undefined(curves):
    x264, x265 = _by_name(curves, "x264/direct"), _by_name(curves, "x265/direct")
    (rate, metric), notes = bd_cells(x264, x265)
    assert rate == BD_RATE_FMT.format(-30.0) and float(metric) > 0 and notes == []
    # disjoint rate and metric ranges: both values undefined, each with its reason
    far = _curve("vvc", "direct", [b * 100 for b in BPP], [50.0, 58.0, 64.0, 68.0])
    (rate, metric), notes = bd_cells(x264, far)
    assert (rate, metric) == ("n/a", "n/a")
    assert [n.split(":")[0] for n in notes] == ["bd_rate", "bd_metric"]
