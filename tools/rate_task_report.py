#!/usr/bin/env python
"""Rate-task report: BD-rate tables and rate-task plots from result files.

    python tools/rate_task_report.py results/ --anchor x264/direct --output out/report
    python tools/rate_task_report.py a.json b.json --anchor detection=x264/direct \\
        --anchor segmentation=x265/direct
    python tools/rate_task_report.py results/ --anchor-per-codec direct --log-x

Writes OUTPUT/report.md and OUTPUT/curve_<task>_<codec>.png. The logic lives in
``vcm_d2.evaluation.report.write_report``; result files are described in
``vcm_d2.evaluation.results``.
"""
import argparse
import sys

from vcm_d2.evaluation.bdrate import METHODS, MIN_OVERLAP, NON_MONOTONIC_POLICIES
from vcm_d2.evaluation.report import write_report
from vcm_d2.evaluation.results import load_curves

DEFAULT_OUTPUT = "output/rate_task_report"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="result JSON files or directories of them")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--anchor", action="append", metavar="[TASK=]NAME",
                       help="anchor curve name; NAME applies to every task, TASK=NAME to one "
                            "task (repeatable; TASK=NAME overrides NAME)")
    group.add_argument("--anchor-per-codec", metavar="METHOD",
                       help="compare each curve with the curve of the same codec whose method "
                            "is METHOD (e.g. 'direct')")
    p.add_argument("--method", default="pchip", choices=METHODS, help="BD interpolation")
    p.add_argument("--on-non-monotonic", default="drop", choices=NON_MONOTONIC_POLICIES,
                   help="what to do with points whose metric does not increase with rate")
    p.add_argument("--min-overlap", type=float, default=MIN_OVERLAP,
                   help="warn when the curves overlap less than this fraction")
    p.add_argument("--log-x", action="store_true", help="log-scale bpp axis in the plots")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="output directory")
    p.add_argument("--title", default="Rate-task report")
    return p.parse_args(argv)


def anchors_by_task(specs, tasks):
    """``["NAME", "task=NAME2"]`` -> ``{task: name}`` for every task (ValueError if one is
    left without an anchor)."""
    default, per_task = None, {}
    for spec in specs:
        if "=" in spec:
            task, name = spec.split("=", 1)
            if task not in tasks:
                raise ValueError(f"--anchor {spec}: no task '{task}' in the results "
                                 f"(tasks: {sorted(tasks)})")
            per_task[task] = name
        elif default is not None:
            raise ValueError(f"two default anchors given: '{default}' and '{spec}'")
        else:
            default = spec
    missing = sorted(t for t in tasks if t not in per_task and default is None)
    if missing:
        raise ValueError(f"no anchor for task(s) {missing}; give --anchor NAME or TASK=NAME")
    return {t: per_task.get(t, default) for t in tasks}


def main(argv=None):
    args = parse_args(argv)
    try:
        curves = load_curves(args.results)
        if not curves:
            raise ValueError(f"no result files found in {args.results}")
        anchor = None
        if args.anchor:
            anchor = anchors_by_task(args.anchor, {c.task for c in curves})
        path = write_report(curves, output_dir=args.output, anchor=anchor,
                            anchor_per_codec=args.anchor_per_codec, method=args.method,
                            on_non_monotonic=args.on_non_monotonic,
                            min_overlap=args.min_overlap, log_x=args.log_x, title=args.title)
    except (ValueError, FileNotFoundError) as e:  # bad inputs: a message, not a traceback
        sys.exit(f"rate_task_report: error: {e}")
    print(path)


if __name__ == "__main__":
    main()
