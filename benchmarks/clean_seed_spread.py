#!/usr/bin/env python
"""How much the clean model's task metric moves with the training seed, per training length.

Every rate-task comparison starts each method from one clean model; if that model's metric moves
by several points with the seed, methods a few points apart cannot be told apart (issue 9: the
demo's clean detector gave AP 32.2 / 26.6 / 29.0 on seeds 0 / 1 / 2 after 600 iterations). This
trains the clean config once per (iterations, seed), the LR steps scaled with the length
(the config's steps as fractions of its MAX_ITER), evaluates each model on --datasets, and
prints mean ± sd and the per-seed values; OUTPUT/spread.json keeps them. Resumable: finished
models and evaluations are reused.

    python benchmarks/clean_seed_spread.py --output output/clean_seed_spread --iters 600 1800 \
        --seeds 0 1 2 --threads 1
"""
import argparse
import json
import logging
import os

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.pipeline import Run, scale_schedule
from vcm_d2.pipeline.seeds import mean_sd
from vcm_d2.utils.io import atomic_write_json

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")
logger = logging.getLogger("vcm_d2.clean_seed_spread")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/clean_seed_spread", help="output folder (resumable)")
    p.add_argument("--config", default="faster_rcnn_R18_slim.yaml",
                   help="clean model's config, relative to --config-dir")
    p.add_argument("--config-dir", default=CONFIG_DIR)
    p.add_argument("--iters", nargs="+", type=int, default=[600, 1800], help="training lengths")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=["vcm_synth_val", "vcm_synth_test"],
                   help="evaluation sets (the demo reports on vcm_synth_val)")
    p.add_argument("--metric", default="bbox/AP", help="TASK/METRIC of the results to compare")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run = Run(args.output, args.config_dir, args.opts, args.threads)
    task, metric = args.metric.split("/", 1)
    values = {}  # {iters: {dataset: [metric per seed]}}
    for iters in args.iters:
        for seed in args.seeds:
            cfg = run.cfg(args.config, os.path.join(run.out, f"it{iters}", f"seed{seed}"),
                          ["SEED", seed, *args.opts])
            scale_schedule(cfg, iters, checkpoint_at_end=False)  # as the rate-task clean models
            weights = run.train(cfg, f"train_it{iters}_seed{seed}")
            results = run.evaluate(cfg, weights, args.datasets, f"eval_it{iters}_seed{seed}")
            for dataset in args.datasets:
                values.setdefault(iters, {}).setdefault(dataset, []).append(
                    results[dataset][task][metric])
    lines = [f"clean {args.config}: {args.metric} over seeds {args.seeds}",
             "| iterations | " + " | ".join(args.datasets) + " |",
             "|---|" + "---|" * len(args.datasets)]
    for iters, per_set in values.items():
        cells = []
        for dataset in args.datasets:
            m, sd = mean_sd(per_set[dataset])
            seeds = " / ".join(f"{v:.1f}" for v in per_set[dataset])
            cells.append(f"{m:.1f} ± {sd:.1f} (range {max(per_set[dataset]) - min(per_set[dataset]):.1f}; {seeds})")
        lines.append(f"| {iters} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    atomic_write_json(os.path.join(run.out, "spread.json"),
                      {"config": args.config, "metric": args.metric, "seeds": args.seeds,
                       "values": {str(k): v for k, v in values.items()}})
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
