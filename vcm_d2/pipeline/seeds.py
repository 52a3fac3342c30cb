"""BD values over runs with different seeds: per (task, codec, method) the value of each run,
mean ± sample standard deviation, and whether two methods' mean ± sd intervals overlap (a
difference inside them is not established by these runs). ``run_seeds`` runs one pipeline per
seed folder and ``write_spread_report`` writes the report over them."""
import math
import os
import statistics
from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..evaluation.report import REPORT_NAME, bd_results
from ..evaluation.results import RateTaskCurve
from ..utils.io import atomic_write_bytes, atomic_write_json
from .run import COMPRESSED_DIR, run_each_locked

__all__ = ["SEED_DIR", "SPREAD_FILE", "SeedSpread", "bd_values", "bd_values_against", "mean_sd",
           "run_seeds", "seed_links", "seed_spread", "write_spread_report"]

SEED_DIR = "seed{}"  # OUTPUT/seed<k>/: the run of one seed
SPREAD_FILE = "seed_spread.json"  # the per-seed BD values next to the report over the seeds

Key = Tuple[str, str, str]  # (task, codec, method)
VALUE_NAMES = ("bd_rate", "bd_metric")


def bd_values(curves: Sequence[RateTaskCurve], anchor_method: str, method: str = "pchip"
              ) -> Dict[Key, Tuple[Optional[float], Optional[float]]]:
    """{(task, codec, method): (BD-rate %, BD-metric)} of every curve against the curve of the
    same task and codec whose method is ``anchor_method``; None where a value is undefined."""
    anchors = {(c.task, c.codec): c for c in curves if c.method == anchor_method}
    out = {}
    for c in curves:
        ref = anchors.get((c.task, c.codec))
        if ref is None or c is ref:
            continue
        out[c.task, c.codec, c.method] = _bd_pair(ref, c, method)
    return out


def bd_values_against(curves: Sequence[RateTaskCurve], test_codec: str,
                      anchor_codecs: Sequence[str], method: str = "pchip"
                      ) -> Dict[Key, Tuple[Optional[float], Optional[float]]]:
    """{(task, anchor codec, test_codec): (BD-rate %, BD-metric)} of the ``test_codec`` curve of
    each task against the curve of each of ``anchor_codecs`` (e.g. TransVFC against every pixel
    codec, whose curves have another codec name)."""
    by_name = {(c.task, c.codec): c for c in curves}
    return {(task, codec, test_codec): _bd_pair(by_name[task, codec], by_name[task, test_codec],
                                                method)
            for task in sorted({c.task for c in curves}) for codec in anchor_codecs
            if (task, codec) in by_name and (task, test_codec) in by_name}


def _bd_pair(anchor: RateTaskCurve, test: RateTaskCurve, method: str
             ) -> Tuple[Optional[float], Optional[float]]:
    """(BD-rate, BD-metric) of ``test`` against ``anchor``; None where undefined."""
    return tuple(None if isinstance(r, Exception) else r.value
                 for r in bd_results(anchor, test, method))


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); both nan when a value is nan (an
    evaluation without detections), which ``statistics`` would reject."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class SeedSpread:
    """BD values of several runs (``runs``: one ``bd_values`` dict per seed, same order as
    ``seeds``), over the keys present in every run."""

    def __init__(self, seeds: Sequence, runs: Sequence[Mapping[Key, Tuple]]):
        if len(seeds) != len(runs) or not runs:
            raise ValueError(f"{len(seeds)} seeds but {len(runs)} runs")
        self.seeds = list(seeds)
        self.runs = list(runs)
        self.keys = sorted(set.intersection(*(set(r) for r in runs)))

    def values(self, key: Key, index: int) -> List[Optional[float]]:
        return [r[key][index] for r in self.runs]

    def interval(self, key: Key, index: int = 0) -> Optional[Tuple[float, float]]:
        """mean - sd, mean + sd of one value (None if a run has it undefined)."""
        vals = self.values(key, index)
        if any(v is None for v in vals):
            return None
        m, sd = mean_sd(vals)
        return m - sd, m + sd

    def table(self) -> List[str]:
        """Markdown: per key, mean ± sd and the per-seed values of BD-rate and BD-metric."""
        lines = [f"| task | codec | method | BD-rate % (mean ± sd of {len(self.runs)}) | per seed | "
                 "BD-metric (mean ± sd) | per seed |", "|---|---|---|---|---|---|---|"]
        for key in self.keys:
            cells = []
            for i in range(len(VALUE_NAMES)):
                vals = self.values(key, i)
                per_seed = ", ".join("n/a" if v is None else f"{v:+.1f}" for v in vals)
                if any(v is None for v in vals):
                    cells += ["n/a", per_seed]
                    continue
                m, sd = mean_sd(vals)
                cells += [f"{m:+.1f} ± {sd:.1f}", per_seed]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
        return lines

    def overlap_lines(self) -> List[str]:
        """One line per pair of methods of a (task, codec): do their BD-rate intervals overlap."""
        intervals = defaultdict(dict)
        for key in self.keys:
            interval = self.interval(key)
            if interval is not None:
                intervals[key[:2]][key[2]] = interval
        lines = []
        for (task, codec), methods in sorted(intervals.items()):
            names = sorted(methods)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    (lo_a, hi_a), (lo_b, hi_b) = methods[a], methods[b]
                    overlap = lo_a <= hi_b and lo_b <= hi_a
                    lines.append(f"- {task} {codec}: BD-rate of {a} and {b} "
                                 f"{'overlap' if overlap else 'do not overlap'} (mean ± sd)")
        return lines

    def paired_lines(self, reference: str) -> List[str]:
        """Per (task, codec), each method's BD-rate minus ``reference``'s, seed by seed (both
        start from that seed's clean model, so its variation cancels), as mean ± sd."""
        lines = []
        for key in self.keys:
            ref = (*key[:2], reference)
            if key[2] == reference or ref not in self.keys:
                continue
            diffs = [None if a is None or b is None else a - b
                     for a, b in zip(self.values(key, 0), self.values(ref, 0))]
            if any(d is None for d in diffs):
                continue
            m, sd = mean_sd(diffs)
            lines.append(f"- {key[0]} {key[1]}: BD-rate of {key[2]} minus {reference}, paired by "
                         f"seed: {m:+.1f} ± {sd:.1f} points ({', '.join(f'{d:+.1f}' for d in diffs)})")
        return lines

    def to_dict(self) -> Dict:
        """Per-seed values and their mean / sd, for a results JSON."""
        out = {"seeds": self.seeds, "values": []}
        for key in self.keys:
            entry = {"task": key[0], "codec": key[1], "method": key[2]}
            for i, name in enumerate(VALUE_NAMES):
                vals = self.values(key, i)
                entry[name] = vals
                if all(v is not None for v in vals):
                    entry[name + "_mean"], entry[name + "_sd"] = mean_sd(vals)
            out["values"].append(entry)
        return out


def seed_spread(seeds: Sequence, curves_per_seed: Sequence[Sequence[RateTaskCurve]],
                anchor_method: str, method: str = "pchip") -> SeedSpread:
    """``SeedSpread`` of the BD values of each seed's curves against ``anchor_method``."""
    return SeedSpread(seeds, [bd_values(c, anchor_method, method) for c in curves_per_seed])


def run_seeds(output: str, seeds: Sequence[int], run_one: Callable[[int, str, str], Any]) -> List:
    """``run_one(seed, folder, compressed_root)`` for every seed, in ``seeds`` order: each seed
    in OUTPUT/seed<k>/, the compressed sets shared in OUTPUT/compressed. Processes started with
    the same command split the seeds (a lock per seed folder, ``run_each_locked``)."""
    out = os.path.abspath(output)
    folder = lambda seed: os.path.join(out, SEED_DIR.format(seed))  # noqa: E731
    compressed = os.path.join(out, COMPRESSED_DIR)
    return run_each_locked(list(seeds), folder, lambda seed: run_one(seed, folder(seed), compressed))


def seed_links(seeds: Sequence[int], reports: Sequence[str], start: str) -> str:
    """Markdown links "[seed k](path)" to each seed's report, relative to folder ``start``."""
    return ", ".join(f"[seed {k}]({os.path.relpath(r, start)})" for k, r in zip(seeds, reports))


def write_spread_report(folder: str, spread: "SeedSpread", head: Sequence[str],
                        tail: Sequence[str] = ()) -> str:
    """``folder``/report.md = ``head`` lines, the spread's table, ``tail`` lines; the values in
    ``folder``/SPREAD_FILE. Returns the report's path."""
    atomic_write_json(os.path.join(folder, SPREAD_FILE), spread.to_dict())
    path = os.path.join(folder, REPORT_NAME)
    text = "\n".join(list(head) + spread.table() + list(tail)).rstrip("\n") + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
