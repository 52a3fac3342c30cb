"""The rate-task report: one markdown table per task with BD-rate and BD-metric of every curve
against its anchor, plus PNG rate-task plots, from result curves (``results.RateTaskCurve``).

``bd_cells`` and the ``*_FMT`` formats are the one way BD values and numbers are written in
every report of the project (the pipeline's tables use them too).
"""
import io
import math
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..utils.io import atomic_write_bytes
from .bdrate import METHODS, MIN_OVERLAP, NON_MONOTONIC_POLICIES, BDResult, bd_metric, bd_rate
from .results import PathLike, RateTaskCurve

__all__ = ["BD_METRIC_FMT", "BD_RATE_FMT", "BPP_FMT", "METRIC_FMT", "REPORT_NAME", "bd_cells",
           "bd_results", "cells_of", "overlaps_of", "write_report"]

REPORT_NAME = "report.md"
# write_report(plot_by=...): one plot per (task, codec), or one per task with every curve
# (file curve_<task>_all.png).
PLOT_BY = ("codec", "task")
ALL_CODECS = "all"
# Number formatting in the report tables.
BD_RATE_FMT = "{:+.2f}"
BD_METRIC_FMT = "{:+.3f}"
BPP_FMT = "{:.4g}"
METRIC_FMT = "{:.4g}"
NOT_AVAILABLE = "n/a"
# Plot size in inches and resolution.
FIGSIZE = (6.0, 4.0)
DPI = 100
# Minor ticks of a log-scale rate axis that get a label (mantissas of 2x10^k, 5x10^k).
LOG_MINOR_LABELS = (2, 5)

Anchor = Union[None, str, Mapping[str, str]]
# A BD value's result, or the error that makes it undefined (``bd_results``).
BDOutcome = Union[BDResult, Exception]
BD_FUNCTIONS = (bd_rate, bd_metric)  # the order of every (BD-rate, BD-metric) pair


def bd_results(anchor: RateTaskCurve, test: RateTaskCurve, method: str = "pchip", *,
               on_non_monotonic: str = "drop", min_overlap: float = MIN_OVERLAP
               ) -> Tuple[BDOutcome, BDOutcome]:
    """BD-rate and BD-metric of ``test`` against ``anchor``: each a ``BDResult`` (value, overlap,
    warnings), or the ValueError / RuntimeError that makes it undefined."""
    args = (anchor.rates(), anchor.metrics(), test.rates(), test.metrics(), method)
    out: List[BDOutcome] = []
    for fn in BD_FUNCTIONS:
        try:
            out.append(fn(*args, on_non_monotonic=on_non_monotonic, min_overlap=min_overlap))
        except (ValueError, RuntimeError) as e:
            out.append(e)
    return out[0], out[1]


def cells_of(results: Sequence[BDOutcome]) -> Tuple[Tuple[str, str], List[str]]:
    """``bd_results`` as table cells ("n/a" where undefined) and the notes to show with them
    (the reasons and bdrate's warnings, once each)."""
    cells, notes = [], []
    for fn, fmt, res in zip(BD_FUNCTIONS, (BD_RATE_FMT, BD_METRIC_FMT), results):
        if isinstance(res, Exception):
            cells.append(NOT_AVAILABLE)
            notes.append(f"{fn.__name__}: {res}")
            continue
        cells.append(fmt.format(res.value))
        notes.extend(res.warnings)
    return (cells[0], cells[1]), list(dict.fromkeys(notes))


def overlaps_of(results: Sequence[BDOutcome]) -> Tuple[Optional[float], ...]:
    """The fractions of the union of both curves' ranges that the BD-rate (metric axis) and the
    BD-metric (log-rate axis) of ``bd_results`` average over; None where undefined."""
    return tuple(None if isinstance(r, Exception) else r.overlap for r in results)


def bd_cells(anchor: RateTaskCurve, test: RateTaskCurve, method: str = "pchip", *,
             on_non_monotonic: str = "drop", min_overlap: float = MIN_OVERLAP
             ) -> Tuple[Tuple[str, str], List[str]]:
    """(BD-rate %, BD-metric) of ``test`` against ``anchor`` as table cells, and their notes."""
    return cells_of(bd_results(anchor, test, method, on_non_monotonic=on_non_monotonic,
                               min_overlap=min_overlap))


def _safe(text: str) -> str:
    """File-name-safe version of a task/codec name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"


def _md(text: str) -> str:
    """Escape characters that would break a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _group(curves: Sequence[RateTaskCurve]) -> Dict[str, List[RateTaskCurve]]:
    by_task: Dict[str, List[RateTaskCurve]] = {}
    for c in curves:
        by_task.setdefault(c.task, []).append(c)
    for task, group in by_task.items():
        metrics = sorted({c.metric for c in group})
        if len(metrics) > 1:
            raise ValueError(f"task '{task}' mixes metrics {metrics}: BD values need one metric "
                             "per task; give the curves distinct task names")
        names = [c.name for c in group]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task '{task}' has several curves named {dupes}")
    return by_task


def _anchor_for(curve: RateTaskCurve, group: List[RateTaskCurve], anchor: Anchor,
                anchor_per_codec: Optional[str]) -> Tuple[Optional[RateTaskCurve], Optional[str]]:
    """The anchor curve of ``curve`` (or None with the reason)."""
    if anchor_per_codec is not None:
        for c in group:
            if c.codec == curve.codec and c.method == anchor_per_codec:
                return c, None
        return None, f"no '{anchor_per_codec}' curve for codec '{curve.codec}'"
    name = anchor if isinstance(anchor, str) else anchor[curve.task]
    return next(c for c in group if c.name == name), None


def _check_options(method: str, on_non_monotonic: str, plot_by: str) -> None:
    # Option errors must fail here, not become an "n/a" footnote on every row.
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation method '{method}', expected one of {METHODS}")
    if on_non_monotonic not in NON_MONOTONIC_POLICIES or \
            (on_non_monotonic == "keep" and method != "cubic"):
        raise ValueError(f"on_non_monotonic '{on_non_monotonic}' is not valid with method "
                         f"'{method}' (policies {NON_MONOTONIC_POLICIES}; 'keep' is cubic only)")
    if plot_by not in PLOT_BY:
        raise ValueError(f"plot_by must be one of {PLOT_BY}, got {plot_by!r}")


def _check_anchor_args(by_task, anchor: Anchor, anchor_per_codec: Optional[str]) -> None:
    if (anchor is None) == (anchor_per_codec is None):
        raise ValueError("give exactly one of anchor (a curve name, or {task: name}) and "
                         "anchor_per_codec (a method name)")
    if anchor_per_codec is not None:
        for task, group in by_task.items():
            for codec in {c.codec for c in group}:
                found = [c.name for c in group
                         if c.codec == codec and c.method == anchor_per_codec]
                if len(found) > 1:
                    raise ValueError(f"task '{task}', codec '{codec}': several '{anchor_per_codec}'"
                                     f" curves {sorted(found)}; the anchor must be unique")
        return
    for task, group in by_task.items():
        if isinstance(anchor, str):
            name = anchor
        else:
            if task not in anchor:
                raise ValueError(f"no anchor given for task '{task}' (anchors: {dict(anchor)})")
            name = anchor[task]
        if not any(c.name == name for c in group):
            raise ValueError(f"anchor '{name}' not found in task '{task}'; curves: "
                             f"{sorted(c.name for c in group)}")


def _anchor_policy(anchor: Anchor, anchor_per_codec: Optional[str]) -> str:
    if anchor_per_codec is not None:
        return f"per codec, the curve with method `{anchor_per_codec}`"
    if isinstance(anchor, str):
        return f"`{anchor}`"
    return ", ".join(f"{t}: `{n}`" for t, n in sorted(anchor.items()))


# ----------------------------------------------------------------------------- plots
def _mantissa(value: float) -> int:
    return round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0


def _plot(task: str, codec: str, curves: List[RateTaskCurve], path: Path, log_x: bool,
          label_by: str = "codec") -> None:
    # Figure + Agg canvas directly: no pyplot global state, no backend switching.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # One codec per plot: the methods tell the curves apart; otherwise their full names.
    for c in sorted(curves, key=lambda c: c.method if label_by == "codec" else c.name):
        ax.plot(c.rates(), c.metrics(), marker="o", label=c.method if label_by == "codec" else c.name)
    if log_x:
        ax.set_xscale("log")
        # Plain numbers (0.05, 0.1) instead of the default 5x10^-2 tick labels; minor ticks
        # labelled only at LOG_MINOR_LABELS x 10^k so labels do not collide.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if _mantissa(v) in LOG_MINOR_LABELS else ""))
    ax.set_xlabel("rate (bpp, incl. side information)")
    ax.set_ylabel(curves[0].metric)
    ax.set_title(f"{task} - {codec}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="method" if label_by == "codec" else "curve")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _plot_task(task: str, group: List[RateTaskCurve], out: Path, plot_by: str, log_x: bool,
               plots: Dict[str, Tuple[str, str]]) -> List[str]:
    """The plots of one task (one per codec, or one with every curve); their markdown links."""
    by_codec: Dict[str, List[RateTaskCurve]] = {}
    for c in group:
        by_codec.setdefault(c.codec if plot_by == "codec" else ALL_CODECS, []).append(c)
    lines = []
    for codec in sorted(by_codec):
        png = f"curve_{_safe(task)}_{_safe(codec)}.png"
        if plots.setdefault(png, (task, codec)) != (task, codec):
            raise ValueError(f"plot file name {png} is shared by {plots[png]} and "
                             f"{(task, codec)}; rename a task or codec")
        _plot(task, codec, by_codec[codec], out / png, log_x, label_by=plot_by)
        lines += [f"![{_md(task)} {_md(codec)}]({png})", ""]
    return lines


# ----------------------------------------------------------------------------- tables
class _Notes:
    """Footnotes, numbered in order of first use."""

    def __init__(self):
        self.texts: List[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> List[str]:
        if not self.texts:
            return []
        return ["## Notes", ""] + [f"{i}. {_md(n)}" for i, n in enumerate(self.texts, 1)] + [""]


def _task_table(group: List[RateTaskCurve], anchor: Anchor, anchor_per_codec: Optional[str],
                notes: _Notes, bd_options: Mapping) -> List[str]:
    """The table of one task: each curve's range and BD values against its anchor."""
    metric = group[0].metric
    lines = [f"| name | codec | method | points | bpp range | {metric} range | "
             f"anchor | BD-rate (%) | BD-{metric} | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in group:
        rates, metrics = c.rates(), c.metrics()
        ref_curve, missing = _anchor_for(c, group, anchor, anchor_per_codec)
        marks = []
        if ref_curve is None:
            anchor_name, bdr, bdm = "-", NOT_AVAILABLE, NOT_AVAILABLE
            marks.append(notes.ref(missing))
        elif ref_curve is c:
            anchor_name, bdr, bdm = "(anchor)", "0 (anchor)", "0 (anchor)"
        else:
            anchor_name = ref_curve.name
            (bdr, bdm), texts = bd_cells(ref_curve, c, **bd_options)
            marks += [notes.ref(f"{c.name} vs {ref_curve.name}: {t}") for t in texts]
        marks = list(dict.fromkeys(marks))
        lines.append(
            f"| {_md(c.name)} | {_md(c.codec)} | {_md(c.method)} | {len(rates)} | "
            f"{BPP_FMT.format(rates[0])}-{BPP_FMT.format(rates[-1])} | "
            f"{METRIC_FMT.format(min(metrics))}-{METRIC_FMT.format(max(metrics))} | "
            f"{_md(anchor_name)} | {bdr} | {bdm} | {' '.join(marks)} |")
    return lines + [""]


def write_report(curves: Sequence[RateTaskCurve], *, output_dir: PathLike,
                 anchor: Anchor = None, anchor_per_codec: Optional[str] = None,
                 method: str = "pchip", on_non_monotonic: str = "drop",
                 min_overlap: float = MIN_OVERLAP, log_x: bool = False,
                 title: str = "Rate-task report", preamble: str = "",
                 plot_by: str = "codec") -> Path:
    """Write ``output_dir/report.md`` and ``curve_<task>_<codec>.png`` plots; returns the
    report path.

    Args:
        curves: the curves (any tasks; one metric per task).
        anchor: anchor curve name matched in every task, or ``{task: name}``.
        anchor_per_codec: alternatively, a method name: each curve is compared with the curve
            of the same codec and this method (``"direct"`` -> x264/finetune vs x264/direct).
        method, on_non_monotonic, min_overlap: passed to ``bd_rate``/``bd_metric``.
        log_x: log-scale rate axis in the plots.
        title, preamble: report heading and free markdown placed under it.
        plot_by: "codec" (one plot per task and codec: the methods on one codec) or "task"
            (one plot per task with every curve, e.g. codecs against each other).
    """
    if not curves:
        raise ValueError("no curves to report")
    _check_options(method, on_non_monotonic, plot_by)
    by_task = _group(curves)
    _check_anchor_args(by_task, anchor, anchor_per_codec)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bd_options = dict(method=method, on_non_monotonic=on_non_monotonic, min_overlap=min_overlap)

    lines = [f"# {title}", "",
             f"Anchor: {_anchor_policy(anchor, anchor_per_codec)}. BD interpolation: "
             f"`{method}`; non-monotonic points: `{on_non_monotonic}`. Negative BD-rate = fewer "
             "bits than the anchor for the same metric; positive BD-metric = higher metric at "
             "the same rate. bpp includes side information.", ""]
    if preamble:
        lines += [preamble.rstrip("\n"), ""]
    notes, plots = _Notes(), {}
    for task in sorted(by_task):
        group = sorted(by_task[task], key=lambda c: (c.codec, c.method, c.name))
        lines += [f"## {task} ({group[0].metric})", ""]
        lines += _task_table(group, anchor, anchor_per_codec, notes, bd_options)
        lines += _plot_task(task, group, out, plot_by, log_x, plots)
    lines += notes.lines()
    path = out / REPORT_NAME
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))
    return path
