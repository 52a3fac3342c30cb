#!/usr/bin/env python
"""`make demo`: the rate-task pipeline end to end on the built-in synthetic benchmark.

1. compress the synthetic train/val videos with x264 and x265 (low-delay P, GOP 12) at four
   quality points (exact Annex-B bits, tools/compress_dataset.py's library function);
2. train a slim Faster R-CNN on the uncompressed frames (CPU, minutes);
3. "direct": evaluate it on every compressed copy (the BD-rate anchor);
4. "full_ft": fine-tune it on the compressed training frames of all codecs (one pooled
   model) and evaluate;
5. CDRE "ours" (detector + CDRE modules trained jointly) and "ours_fd" (detector frozen,
   CDRE modules only), trained from the clean detector on the same pooled pairs with the
   same schedule as full_ft (by default also the same number of iterations); their bpp
   includes the CDRE side stream;
6. write OUTPUT/report.md with BD-rates, per-point AP/bpp, timings + PNG rate-task curves, and
   one prediction figure per codec (OUTPUT/predictions_<codec>.png: ground truth, then every
   method at a middle and the strongest quality point, each frame's bpp and AP).

Every step is resumable: rerunning skips finished compression, training and evaluation
(delete a model folder to retrain it). --finetune-iters 0 / --cdre-iters 0 skip those rows.
The pipeline is vcm_d2.pipeline.run_rate_task; tools/rate_task.py runs it on any dataset.
"""
import argparse
import os

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.pipeline.rate_task import (DEFAULT_GOP, DEFAULT_QUALITIES, DEFAULT_TRAIN_ITERS,
                                       RateTaskSpec, run_rate_task)
from vcm_d2.pipeline.report import add_figure_argument

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")


class HelpFormatter(argparse.RawTextHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's layout and shows every option's default."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output", default="output/demo", help="output folder (resumable)")
    p.add_argument("--codecs", nargs="+", default=["x264", "x265"], help="video codecs (vcm_d2 codec names)")
    p.add_argument("--qualities", nargs="+", type=float, default=list(DEFAULT_QUALITIES),
                   help="CRF values (higher = stronger compression)")
    p.add_argument("--gop", type=int, default=DEFAULT_GOP, help="key-frame interval of the video codecs")
    p.add_argument("--train-iters", type=int, default=DEFAULT_TRAIN_ITERS,
                   help="clean detector iterations")
    p.add_argument("--finetune-iters", type=int, default=150,
                   help="full fine-tune iterations (pooled codecs); 0 skips it")
    p.add_argument("--cdre-iters", type=int, default=150,
                   help="iterations of each CDRE model (ours, ours_fd); 0 skips them")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seed of every training (weights init, data order; < 0: random); "
                        "several: the pipeline once per seed, BD values as mean ± sd")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: all cores); the figures move by about 1 AP with it")
    add_figure_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


def spec_from_args(args) -> RateTaskSpec:
    return RateTaskSpec(
        output=args.output, config_dir=CONFIG_DIR, codecs=args.codecs, qualities=args.qualities,
        codec_options={"gop": args.gop},
        methods={"full_ft": args.finetune_iters, "ours": args.cdre_iters, "ours_fd": args.cdre_iters},
        train_iters=args.train_iters, seeds=args.seeds, workers=args.workers, threads=args.threads,
        figure_picks=tuple(args.figure_frames), opts=args.opts)


def main(argv=None):
    report = run_rate_task(spec_from_args(parse_args(argv)))
    with open(report) as f:
        print(f.read())
    return report


if __name__ == "__main__":
    main()
