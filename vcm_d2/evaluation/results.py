"""Rate-task result files and the BD-rate report built from them.

A result file is one rate-task curve in JSON::

    {"name": "x264/direct", "task": "detection", "metric": "AP", "codec": "x264",
     "method": "direct",
     "points": [{"quality": 51, "bpp": 0.05, "metric": 30.1, "side_bpp": 0.0}, ...],
     "meta": {...free-form...}}

``bpp`` is the total rate per pixel and already includes ``side_bpp`` (side information such
as a model's side bitstream); ``side_bpp`` is informative only. ``quality`` is the codec
setting (QP, CRF, lambda index, ...). ``meta`` is never interpreted.

``write_report`` turns many curves into ``report.md`` (one table per task with BD-rate and
BD-metric against an anchor) plus one PNG rate-task plot per (task, codec).
"""
import io
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..utils.io import atomic_write_bytes
from .bdrate import METHODS, MIN_OVERLAP, NON_MONOTONIC_POLICIES, bd_metric, bd_rate

__all__ = ["RateTaskCurve", "save_curve", "load_curve", "load_curves", "write_report",
           "REPORT_NAME"]

REQUIRED_FIELDS = ("name", "task", "metric", "codec", "method", "points")
POINT_FIELDS = ("quality", "bpp", "metric")
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
# Plot size in inches and resolution.
FIGSIZE = (6.0, 4.0)
DPI = 100
# Minor ticks of a log-scale rate axis that get a label (mantissas of 2x10^k, 5x10^k).
LOG_MINOR_LABELS = (2, 5)

PathLike = Union[str, os.PathLike]


@dataclass
class RateTaskCurve:
    """One rate-task curve: a codec/method evaluated at several quality settings.

    ``points`` are dicts with ``quality``, ``bpp`` (> 0, includes side bits), ``metric`` and
    optional ``side_bpp`` (default 0.0); they are validated on construction.
    """

    name: str
    task: str
    metric: str
    codec: str
    method: str
    points: List[Dict[str, Any]]
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for key in ("name", "task", "metric", "codec", "method"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"curve field '{key}' must be a non-empty string, got {value!r}")
        if not isinstance(self.points, list) or not self.points:
            raise ValueError(f"curve '{self.name}': 'points' must be a non-empty list")
        if not isinstance(self.meta, dict):
            raise ValueError(f"curve '{self.name}': 'meta' must be a dict, got {type(self.meta)}")
        self.points = [self._check_point(i, p) for i, p in enumerate(self.points)]

    def _check_point(self, index: int, point: Any) -> Dict[str, Any]:
        where = f"curve '{self.name}' point {index}"
        if not isinstance(point, dict):
            raise ValueError(f"{where}: expected a dict, got {point!r}")
        missing = [k for k in POINT_FIELDS if k not in point]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        point = dict(point)
        point.setdefault("side_bpp", 0.0)
        for key in ("bpp", "metric", "side_bpp"):
            value = point[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{where}: '{key}' must be a finite number, got {value!r}")
            point[key] = float(value)
        if point["bpp"] <= 0:
            raise ValueError(f"{where}: 'bpp' must be > 0, got {point['bpp']}")
        if point["side_bpp"] < 0 or point["side_bpp"] > point["bpp"]:
            raise ValueError(f"{where}: 'side_bpp' {point['side_bpp']} must be in [0, bpp] "
                             "(bpp includes side bits)")
        return point

    def _sorted(self) -> List[Dict[str, Any]]:
        return sorted(self.points, key=lambda p: p["bpp"])

    def rates(self) -> List[float]:
        """bpp of the points, sorted by bpp."""
        return [p["bpp"] for p in self._sorted()]

    def metrics(self) -> List[float]:
        """Metric values, in the order of ``rates()``."""
        return [p["metric"] for p in self._sorted()]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RateTaskCurve":
        if not isinstance(data, Mapping):
            raise ValueError(f"a result must be a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise ValueError(f"result is missing field(s) {missing}")
        return cls(**{k: data[k] for k in REQUIRED_FIELDS}, meta=data.get("meta", {}))


def save_curve(curve: RateTaskCurve, path: PathLike) -> Path:
    """Write ``curve`` as a result file (atomically); returns the path."""
    path = Path(path)
    text = json.dumps(curve.to_dict(), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def load_curve(path: PathLike) -> RateTaskCurve:
    """Read one result file; ``ValueError`` naming the file if it is not a valid result."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    try:
        return RateTaskCurve.from_dict(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: invalid result file: {e}") from e


def _looks_like_result(data: Any) -> bool:
    # A JSON file without "points" is some other file (config, metrics dump), not a result.
    return isinstance(data, dict) and "points" in data


def load_curves(paths_or_dirs: Iterable[PathLike]) -> List[RateTaskCurve]:
    """Load result files; directories contribute their ``*.json`` files (not recursive).

    JSON files that are not result files (no ``points`` field) are skipped with a warning;
    files that look like results but are malformed raise ``ValueError``.
    """
    if isinstance(paths_or_dirs, (str, os.PathLike)):
        paths_or_dirs = [paths_or_dirs]
    files: List[Path] = []
    for item in paths_or_dirs:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(item.glob("*.json")))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"result path does not exist: {item}")
    curves, seen = [], set()
    for path in files:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not _looks_like_result(data):
            warnings.warn(f"skipping {path}: not a rate-task result file (no 'points')")
            continue
        try:
            curves.append(RateTaskCurve.from_dict(data))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: invalid result file: {e}") from e
    return curves


# ----------------------------------------------------------------------------- report


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


def _anchor_for(curve: RateTaskCurve, group: List[RateTaskCurve],
                anchor: Union[None, str, Mapping[str, str]],
                anchor_per_codec: Optional[str]) -> Tuple[Optional[RateTaskCurve], Optional[str]]:
    """The anchor curve of ``curve`` (or None with the reason)."""
    if anchor_per_codec is not None:
        for c in group:
            if c.codec == curve.codec and c.method == anchor_per_codec:
                return c, None
        return None, f"no '{anchor_per_codec}' curve for codec '{curve.codec}'"
    name = anchor if isinstance(anchor, str) else anchor[curve.task]
    return next(c for c in group if c.name == name), None


def _check_anchor_args(by_task, anchor, anchor_per_codec) -> None:
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


def write_report(curves: Sequence[RateTaskCurve], *, output_dir: PathLike,
                 anchor: Union[None, str, Mapping[str, str]] = None,
                 anchor_per_codec: Optional[str] = None, method: str = "pchip",
                 on_non_monotonic: str = "drop", min_overlap: float = MIN_OVERLAP,
                 log_x: bool = False, title: str = "Rate-task report",
                 preamble: str = "", plot_by: str = "codec") -> Path:
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
    # Option errors must fail here, not become an "n/a" footnote on every row.
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation method '{method}', expected one of {METHODS}")
    if on_non_monotonic not in NON_MONOTONIC_POLICIES or \
            (on_non_monotonic == "keep" and method != "cubic"):
        raise ValueError(f"on_non_monotonic '{on_non_monotonic}' is not valid with method "
                         f"'{method}' (policies {NON_MONOTONIC_POLICIES}; 'keep' is cubic only)")
    if plot_by not in PLOT_BY:
        raise ValueError(f"plot_by must be one of {PLOT_BY}, got {plot_by!r}")
    by_task = _group(curves)
    _check_anchor_args(by_task, anchor, anchor_per_codec)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    notes: List[str] = []  # footnotes, numbered in order of first use
    plots: Dict[str, Tuple[str, str]] = {}  # png file name -> (task, codec)

    def ref(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    if anchor_per_codec is not None:
        policy = f"per codec, the curve with method `{anchor_per_codec}`"
    elif isinstance(anchor, str):
        policy = f"`{anchor}`"
    else:
        policy = ", ".join(f"{t}: `{n}`" for t, n in sorted(anchor.items()))
    lines = [f"# {title}", "",
             f"Anchor: {policy}. BD interpolation: `{method}`; non-monotonic points: "
             f"`{on_non_monotonic}`. Negative BD-rate = fewer bits than the anchor for the "
             "same metric; positive BD-metric = higher metric at the same rate. bpp includes "
             "side information.", ""]
    if preamble:
        lines += [preamble.rstrip("\n"), ""]

    for task in sorted(by_task):
        group = sorted(by_task[task], key=lambda c: (c.codec, c.method, c.name))
        metric = group[0].metric
        lines += [f"## {task} ({metric})", "",
                  f"| name | codec | method | points | bpp range | {metric} range | "
                  f"anchor | BD-rate (%) | BD-{metric} | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in group:
            rates, metrics = c.rates(), c.metrics()
            ref_curve, missing = _anchor_for(c, group, anchor, anchor_per_codec)
            marks = []
            if ref_curve is None:
                anchor_name, bdr, bdm = "-", "n/a", "n/a"
                marks.append(ref(missing))
            elif ref_curve is c:
                anchor_name, bdr, bdm = "(anchor)", "0 (anchor)", "0 (anchor)"
            else:
                anchor_name = ref_curve.name
                args = (ref_curve.rates(), ref_curve.metrics(), rates, metrics, method)
                kwargs = dict(on_non_monotonic=on_non_monotonic, min_overlap=min_overlap)
                cells = []
                for fn, fmt in ((bd_rate, BD_RATE_FMT), (bd_metric, BD_METRIC_FMT)):
                    try:
                        res = fn(*args, **kwargs)
                    except (ValueError, RuntimeError) as e:
                        cells.append("n/a")
                        marks.append(ref(f"{c.name} vs {ref_curve.name}, {fn.__name__}: {e}"))
                        continue
                    cells.append(fmt.format(res.value))
                    marks.extend(ref(f"{c.name} vs {ref_curve.name}: {w}") for w in res.warnings)
                bdr, bdm = cells
            marks = list(dict.fromkeys(marks))  # same warning from bd_rate and bd_metric
            lines.append(
                f"| {_md(c.name)} | {_md(c.codec)} | {_md(c.method)} | {len(rates)} | "
                f"{BPP_FMT.format(rates[0])}-{BPP_FMT.format(rates[-1])} | "
                f"{METRIC_FMT.format(min(metrics))}-{METRIC_FMT.format(max(metrics))} | "
                f"{_md(anchor_name)} | {bdr} | {bdm} | {' '.join(marks)} |")
        lines.append("")
        by_codec: Dict[str, List[RateTaskCurve]] = {}
        for c in group:
            by_codec.setdefault(c.codec if plot_by == "codec" else ALL_CODECS, []).append(c)
        for codec in sorted(by_codec):
            png = f"curve_{_safe(task)}_{_safe(codec)}.png"
            if plots.setdefault(png, (task, codec)) != (task, codec):
                raise ValueError(f"plot file name {png} is shared by {plots[png]} and "
                                 f"{(task, codec)}; rename a task or codec")
            _plot(task, codec, by_codec[codec], out / png, log_x, label_by=plot_by)
            lines += [f"![{_md(task)} {_md(codec)}]({png})", ""]

    if notes:
        lines += ["## Notes", ""]
        lines += [f"{i}. {_md(n)}" for i, n in enumerate(notes, 1)]
        lines.append("")
    path = out / REPORT_NAME
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))
    return path
