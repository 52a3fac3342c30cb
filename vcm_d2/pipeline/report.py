"""Report pieces of a rate-task run: curves from evaluation results, the lines and tables above
``write_report``'s BD tables, and the prediction figures."""
import argparse
import os
from typing import List, Mapping, Sequence, Tuple

from ..engine.figures import FigureRow, is_figure_current, write_prediction_figure
from ..evaluation.report import bd_results, cells_of, overlaps_of
from ..evaluation.results import RateTaskCurve
from .run import StepTimes

__all__ = [
    "FIGURE_PICKS", "add_figure_argument", "bd_table", "curve_from", "figure_points", "figure_rows",
    "parse_figure_frame", "point_cell", "points_table", "relative_loss", "strongest_point_lines",
    "write_figures",
]

# Frames of the prediction figures: (video, frame) of the validation set (frame 6 is a P-frame
# half-way through a GOP of 12).
FIGURE_PICKS = ((0, 6), (4, 6))


def parse_figure_frame(text: str) -> Tuple[int, int]:
    """``VIDEO:FRAME`` (indexes from 0 in the test set's order) -> (video, frame)."""
    try:
        video, frame = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VIDEO:FRAME (two indexes), got {text!r}")
    if video < 0 or frame < 0:
        raise argparse.ArgumentTypeError(f"indexes start at 0, got {text!r}")
    return video, frame


def add_figure_argument(parser: argparse.ArgumentParser) -> None:
    """``--figure-frames``: the frames each prediction figure shows (a tool's ``figure_picks``)."""
    parser.add_argument(
        "--figure-frames", nargs="+", type=parse_figure_frame, default=list(FIGURE_PICKS),
        metavar="VIDEO:FRAME",
        help="frames of the prediction figures, VIDEO:FRAME indexes from 0 (default: "
             + " ".join(f"{v}:{t}" for v, t in FIGURE_PICKS) + ")")


def curve_from(results: Mapping, codec: str, method: str, qualities: Sequence[float],
               names: Sequence[str], meta: Mapping = None, *, task: str, result_key: str,
               metric: str) -> RateTaskCurve:
    """Rate-task curve of one (codec, method) from ``evaluate`` results of its datasets
    (``metric`` read from ``results[name][result_key]``, e.g. "bbox" / "AP", "sem_seg" /
    "mIoU")."""
    if len(qualities) != len(names):
        raise ValueError(f"{len(qualities)} qualities but {len(names)} datasets")
    points = []
    for q, name in zip(qualities, names):
        r = results[name]
        if "bpp" not in r.get("rate", {}):
            raise ValueError(f"{name}: no bpp in the evaluation results (records without bits?)")
        points.append({"quality": q, "bpp": r["rate"]["bpp"], "metric": r[result_key][metric],
                       "side_bpp": r["rate"].get("side_bpp", 0.0)})
    return RateTaskCurve(name=f"{codec}/{method}", task=task, metric=metric, codec=codec,
                         method=method, points=points, meta=dict(meta or {}))


def relative_loss(clean: float, value: float) -> float:
    """Relative metric loss in percent (100 * (clean - value) / clean)."""
    if clean <= 0:
        raise ValueError(f"clean metric must be > 0 to compute a relative loss, got {clean}")
    return 100.0 * (clean - value) / clean


def strongest_point_lines(curves: Sequence[RateTaskCurve], clean_metric: float,
                          method: str) -> List[str]:
    """One line per ``method`` curve: metric and relative loss at its lowest-rate point."""
    lines = []
    for c in curves:
        if c.method != method:
            continue
        p = min(c.points, key=lambda p: p["bpp"])
        loss = (f"{relative_loss(clean_metric, p['metric']):.1f}% relative {c.metric} loss"
                if clean_metric > 0 else f"no relative loss (uncompressed {c.metric} 0)")
        lines.append(f"- {c.codec} q{p['quality']:g} ({p['bpp']:.3f} bpp): {c.metric} "
                     f"{p['metric']:.1f}, {loss} ({method})")
    return lines


def point_cell(point: Mapping) -> str:
    """"metric @ bpp" of one point, its side-stream bpp in brackets when it has one."""
    side = f" ({point['side_bpp']:.4f})" if point.get("side_bpp") else ""
    return f"{point['metric']:.1f} @ {point['bpp']:.4f}{side}"


def points_table(curves: Sequence[RateTaskCurve], by_quality: bool = True) -> str:
    """Markdown table of every curve's points.

    ``by_quality``: curves on one quality scale (the CRFs of x264 / x265) get a column per
    quality ("-" where a curve has no point); otherwise (CRF, QP and lambda_R side by side) a
    row per curve with "quality: point" cells in rate order, so that no column mixes scales."""
    if by_quality:
        columns = sorted({p["quality"] for c in curves for p in c.points})
        lines = ["| curve | " + " | ".join(f"q{q:g}" for q in columns) + " |",
                 "|---|" + "---|" * len(columns)]
        for c in sorted(curves, key=lambda c: (c.codec, c.method)):
            by_q = {p["quality"]: p for p in c.points}
            cells = [point_cell(by_q[q]) if q in by_q else "-" for q in columns]
            lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    lines = ["| task | curve | quality: metric @ bpp |", "|---|---|---|"]
    for c in sorted(curves, key=lambda c: (c.task, c.name)):
        cells = "; ".join(f"{p['quality']:g}: {point_cell(p)}"
                          for p in sorted(c.points, key=lambda p: p["bpp"]))
        lines.append(f"| {c.task} | {c.name} | {cells} |")
    return "\n".join(lines)


def bd_table(curves: Sequence[RateTaskCurve], test_codec: str, anchor_codecs: Sequence[str]
             ) -> List[str]:
    """Markdown: BD-rate / BD-metric of the ``test_codec`` curve of each task against the curve
    of each of ``anchor_codecs`` (e.g. TransVFC against every pixel codec), with the overlap
    each averages over (the share of the union of both curves' metric / log-rate ranges)."""
    lines = [f"| task | anchor | BD-rate of {test_codec} (%) | BD-metric | overlap: metric / "
             "log-rate | notes |", "|---|---|---|---|---|---|"]
    by_name = {(c.task, c.codec): c for c in curves}
    for task in sorted({c.task for c in curves}):
        test = by_name.get((task, test_codec))
        for codec in anchor_codecs:
            anchor = by_name.get((task, codec))
            if test is None or anchor is None:
                continue
            results = bd_results(anchor, test)
            (bdr, bdm), notes = cells_of(results)
            overlap = " / ".join("n/a" if o is None else f"{o:.0%}" for o in overlaps_of(results))
            lines.append(f"| {task} | {codec} | {bdr} | {bdm} | {overlap} | "
                         f"{'; '.join(notes).replace('|', '/')} |")
    return lines


# ----------------------------------------------------------------------------- figures
def figure_points(anchor: RateTaskCurve) -> List[float]:
    """Qualities of a middle and the strongest (lowest-rate) point of ``anchor``."""
    by_rate = sorted(anchor.points, key=lambda p: -p["bpp"])
    picked = [by_rate[(len(by_rate) - 1) // 2]["quality"], by_rate[-1]["quality"]]
    return picked[1:] if picked[0] == picked[1] else picked  # one point: shown once


def figure_rows(codec: str, models: Mapping[str, Tuple], anchor: RateTaskCurve,
                names: Sequence[str], clean_set: str) -> List[FigureRow]:
    """Rows of ``codec``'s figure: the anchor model on ``clean_set``, then every model of
    ``models`` ({method: (cfg, weights)}) at ``figure_points(anchor)``; ``names`` are the pair
    datasets in the order of ``anchor``'s points."""
    by_quality = {p["quality"]: n for p, n in zip(anchor.points, names)}
    rows = [FigureRow(f"uncompressed, {anchor.method}", *models[anchor.method], clean_set)]
    for q in figure_points(anchor):
        rows += [FigureRow(f"{codec} q{q:g}, {method}", cfg, weights, by_quality[q])
                 for method, (cfg, weights) in models.items()]
    return rows


def write_figures(out: str, rows_by_codec: Mapping[str, Sequence[FigureRow]], reference: str,
                  times: StepTimes, picks: Sequence = FIGURE_PICKS, step: str = "figures",
                  prefix: str = "predictions") -> List[str]:
    """One prediction figure per codec in ``out`` (resumable); returns the report lines."""
    paths = {c: os.path.join(out, f"{prefix}_{c}.png") for c in rows_by_codec}
    done = all(is_figure_current(r, picks, paths[c], reference) for c, r in rows_by_codec.items())
    with times.step(step, done):
        for codec, rows in rows_by_codec.items():
            write_prediction_figure(rows, picks, paths[codec], reference)
    frames = ", ".join(f"video {v + 1} frame {t}" for v, t in picks)
    lines = [f"Predictions on {reference} ({frames}): ground truth first, then per row the "
             "frames the model saw, with each frame's bpp (side streams included) and AP.", ""]
    return lines + [f"![{c}]({os.path.relpath(paths[c], out)})" for c in rows_by_codec]
