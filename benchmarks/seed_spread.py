#!/usr/bin/env python
"""BD-rate / BD-metric of every method against its codec's anchor, over several runs (seeds).

Each RUN is the output folder of a benchmark run with another --seed (its curves/*.json files,
e.g. benchmarks/vis_rate_task.py, tools/demo.py). For every (task, codec, method) present in
all runs it prints the per-seed values and mean ± sample standard deviation, and says whether
two methods' mean ± sd intervals overlap (vcm_d2.pipeline.seeds; tools/demo.py --seeds and
benchmarks/cdre_table1.py --seeds do this themselves).

    python benchmarks/seed_spread.py output/vis_rate_task output/vis_seed1 output/vis_seed2
"""
import argparse
import os
from typing import List

from vcm_d2.evaluation.results import load_curves
from vcm_d2.pipeline.methods import ANCHOR_METHOD
from vcm_d2.pipeline.seeds import seed_spread

CURVES_DIRNAME = "curves"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of runs with different seeds")
    p.add_argument("--anchor", default=ANCHOR_METHOD, help="anchor method of each codec")
    p.add_argument("--method", default="pchip", help="BD interpolation")
    return p.parse_args(argv)


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    spread = seed_spread(args.runs, [load_curves([os.path.join(r, CURVES_DIRNAME)])
                                     for r in args.runs], args.anchor, args.method)
    lines = [f"{len(args.runs)} runs: " + ", ".join(args.runs), ""]
    lines += spread.table() + [""] + spread.overlap_lines()
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
