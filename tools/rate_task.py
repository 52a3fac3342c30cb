#!/usr/bin/env python
"""The rate-task pipeline of `make demo` on any registered dataset, codecs and methods.

Compresses --train-dataset and --dataset with every codec at every quality, trains the clean
model (or takes --clean-weights), evaluates it on each compressed copy ("direct", the anchor),
trains every --methods entry from it on the pooled compressed training sets, and writes
OUTPUT/report.md (BD-rate per codec vs direct, metric @ bpp, curves, prediction figures).
Resumable: rerun the same command to continue.

    # CDRE Table I on COCO (real data under $DETECTRON2_DATASETS), from a COCO checkpoint:
    python tools/rate_task.py --dataset coco_2017_val --train-dataset coco_2017_train \\
        --codecs x265 vvc --qualities 30 35 40 45 --methods full_ft ours \\
        --config-dir configs/CDRE --methods-table cdre_faster_rcnn_R50_FPN \\
        --clean-weights model_final_280758.pkl --iters 60000 --output output/cdre_coco \\
        MODEL.DEVICE cuda
    # the demo's pipeline with another codec list on the synthetic benchmark:
    python tools/rate_task.py --codecs x265 vvc --methods full_ft ours --output output/rt
"""
import argparse
import os
import sys

import vcm_d2  # noqa: F401  (registers datasets, codecs, models)
from vcm_d2.codecs.options import parse_codec_options, parse_quality
from vcm_d2.engine import register_pair_roots
from vcm_d2.pipeline.methods import METHOD_TABLES
from vcm_d2.pipeline.rate_task import (DEFAULT_QUALITIES, DEFAULT_TRAIN_ITERS,
                                       RateTaskSpec, run_rate_task)
from vcm_d2.pipeline.report import add_figure_argument

DEFAULT_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                  "synthetic")
DEFAULT_ITERS = 150


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="output folder (resumable)")
    p.add_argument("--dataset", default="vcm_synth_val", help="test set (a registered dataset)")
    p.add_argument("--train-dataset", default="vcm_synth_train",
                   help="training set of the clean model and (compressed) of the methods")
    p.add_argument("--codecs", nargs="+", default=["x264", "x265"], help="vcm_d2 codec names")
    p.add_argument("--qualities", nargs="+", type=parse_quality, default=list(DEFAULT_QUALITIES),
                   help="quality points of every codec (CRF, QP, JPEG quality, ...)")
    p.add_argument("--codec-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="codec option of every codec (repeatable), e.g. gop=12 for the video codecs")
    p.add_argument("--methods", nargs="*", default=["full_ft", "ours", "ours_fd"],
                   help="trained methods of the table, in report order (none: direct test only)")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                   help="iterations of every trained method")
    p.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR,
                   help="folder of the method table's config files")
    p.add_argument("--methods-table", default="synthetic_detection", choices=sorted(METHOD_TABLES),
                   help="which config file trains which method")
    p.add_argument("--clean-config", help="config of the clean model (overrides the table's)")
    p.add_argument("--method-config", action="append", default=[], metavar="METHOD=FILE",
                   help="config file of a method (repeatable; overrides or extends the table)")
    p.add_argument("--clean-weights", default="",
                   help="weights of a trained clean model (e.g. a COCO checkpoint): not trained")
    p.add_argument("--train-iters", type=int, default=DEFAULT_TRAIN_ITERS,
                   help="iterations of the clean model when it is trained here")
    p.add_argument("--metric", nargs=2, metavar=("KEY", "NAME"),
                   help="evaluation result key and metric, e.g. segm AP (default: by the test "
                        "set's evaluator type: bbox AP, sem_seg mIoU, YouTube-VIS segm AP)")
    p.add_argument("--pair-roots", nargs="*", default=[],
                   help="folders of existing pair datasets to register first")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seed of every training (< 0: random); several: the pipeline once per "
                        "seed, BD values as mean ± sd")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    add_figure_argument(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


def _pairs(items, what):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def spec_from_args(args) -> RateTaskSpec:
    table = METHOD_TABLES[args.methods_table].with_overrides(
        args.clean_config, _pairs(args.method_config, "--method-config"))
    return RateTaskSpec(
        output=args.output, config_dir=args.config_dir, table=table,
        train_set=args.train_dataset, test_set=args.dataset, codecs=args.codecs,
        qualities=args.qualities, codec_options=parse_codec_options(args.codec_opt),
        methods={m: args.iters for m in args.methods}, train_iters=args.train_iters,
        clean_weights=args.clean_weights, metric=tuple(args.metric) if args.metric else None,
        seeds=args.seeds, workers=args.workers, threads=args.threads,
        figure_picks=tuple(args.figure_frames), opts=args.opts)


def main(argv=None):
    args = parse_args(argv)
    try:
        register_pair_roots(args.pair_roots)
        spec = spec_from_args(args)
    except (ValueError, FileNotFoundError) as e:  # bad arguments: a message, not a traceback
        sys.exit(f"rate_task: error: {e}")
    report = run_rate_task(spec)
    print(report)
    return report


if __name__ == "__main__":
    main()
