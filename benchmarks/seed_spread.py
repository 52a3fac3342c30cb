#!/usr/bin/env python
"""BD-rate / BD-metric of every method against its codec's anchor, over several runs (seeds).

Each RUN is the output folder of a benchmark run with another --seed (its curves/*.json or
curves.json files, e.g. benchmarks/vis_rate_task.py, tools/demo.py). For every (task, codec,
method) present in all runs it prints the per-seed values and mean ± sample standard deviation,
and says whether two methods' mean ± sd intervals overlap (a difference inside them is not
established by these runs).

    python benchmarks/seed_spread.py output/vis_rate_task output/vis_seed1 output/vis_seed2
"""
import argparse
import os
import statistics
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from vcm_d2.evaluation.bdrate import bd_metric, bd_rate
from vcm_d2.evaluation.results import load_curves

CURVES_DIRNAME = "curves"
ANCHOR_METHOD = "direct"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of runs with different seeds")
    p.add_argument("--anchor", default=ANCHOR_METHOD, help="anchor method of each codec")
    p.add_argument("--method", default="pchip", help="BD interpolation")
    return p.parse_args(argv)


def run_values(folder: str, anchor: str, method: str) -> Dict[Tuple[str, str, str], Tuple]:
    """{(task, codec, method): (BD-rate %, BD-metric)} of one run; None where undefined."""
    curves = load_curves([os.path.join(folder, CURVES_DIRNAME)])
    anchors = {(c.task, c.codec): c for c in curves if c.method == anchor}
    out = {}
    for c in curves:
        ref = anchors.get((c.task, c.codec))
        if ref is None or c is ref:
            continue
        values = []
        for fn in (bd_rate, bd_metric):
            try:
                values.append(fn(ref.rates(), ref.metrics(), c.rates(), c.metrics(), method).value)
            except (ValueError, RuntimeError):
                values.append(None)
        out[c.task, c.codec, c.method] = tuple(values)
    return out


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    runs = [run_values(r, args.anchor, args.method) for r in args.runs]
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    lines = [f"{len(runs)} runs: " + ", ".join(args.runs), "",
             "| task | codec | method | BD-rate % (mean ± sd) | per run | BD-metric (mean ± sd) | per run |",
             "|---|---|---|---|---|---|---|"]
    intervals = defaultdict(dict)
    for key in keys:
        cells = []
        for i in range(2):
            vals = [r[key][i] for r in runs]
            if any(v is None for v in vals):
                cells += ["n/a", ", ".join("n/a" if v is None else f"{v:+.1f}" for v in vals)]
                continue
            m, sd = mean_sd(vals)
            cells += [f"{m:+.1f} ± {sd:.1f}", ", ".join(f"{v:+.1f}" for v in vals)]
            if i == 0:
                intervals[key[:2]][key[2]] = (m - sd, m + sd)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    lines.append("")
    for (task, codec), methods in sorted(intervals.items()):
        names = sorted(methods)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                (lo_a, hi_a), (lo_b, hi_b) = methods[a], methods[b]
                overlap = lo_a <= hi_b and lo_b <= hi_a
                lines.append(f"- {task} {codec}: BD-rate of {a} and {b} "
                             f"{'overlap' if overlap else 'do not overlap'} (mean ± sd)")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
