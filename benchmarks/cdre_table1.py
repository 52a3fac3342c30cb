#!/usr/bin/env python
"""CDRE Table I and Fig. 6 on the synthetic benchmark (slim R18 Faster R-CNN, CPU).

Table I: every trained method starts from the clean detector and is trained on the pooled
compressed training frames of all --codecs (one model per method, same iterations and
solver for all), then evaluated on each codec's compressed validation frames:

    direct   clean detector, no training on compressed data (BD-rate anchor, per codec)
    head_ft  fine-tune with the backbone frozen
    full_ft  fine-tune everything
    ours_fd  CDRE modules trained, detector frozen
    ours     CDRE modules and detector trained jointly

bpp includes the CDRE side stream (``side_bits`` of the model outputs). Writes
OUTPUT/table1/report.md (+ PNG curves).

Fig. 6 (transfer): --transfer-methods trained on --transfer-train-codec only (x264), evaluated
on --transfer-codecs (x265, and VVC at --vvc-qualities, QPs chosen to span the bpp range of
the CRF points) against the direct test there. Writes OUTPUT/fig6/report.md.

Resumable: compression, each training (folder named by method, training codecs and
iterations) and each evaluation are skipped when already done. To reuse `make demo`'s
compressed frames and clean detector, copy its compressed/ and clean/ folders into OUTPUT
(same --qualities and --train-iters).

    python benchmarks/cdre_table1.py --output output/cdre_table1 --iters 400
"""
import argparse
import logging
import os
import sys

import torch

from _common import demo  # benchmarks/ is on sys.path when run as a script

TABLE_METHODS = ("head_ft", "full_ft", "ours_fd", "ours")
TRANSFER_METHODS = ("full_ft", "ours")
# Iterations of every trained method (2x the demo's; one schedule for all methods).
DEFAULT_ITERS = 400

logger = logging.getLogger("vcm_d2.cdre_table1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/cdre_table1", help="output folder (resumable)")
    p.add_argument("--codecs", nargs="+", default=["x264", "x265"], help="Table I codecs (pooled training)")
    p.add_argument("--qualities", nargs="+", type=float, default=list(demo.DEFAULT_QUALITIES),
                   help="CRF values of --codecs")
    p.add_argument("--gop", type=int, default=12, help="key-frame interval of the video codecs")
    p.add_argument("--train-iters", type=int, default=demo.DEFAULT_TRAIN_ITERS, help="clean detector iterations")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="iterations of every trained method")
    p.add_argument("--methods", nargs="+", default=list(TABLE_METHODS), choices=sorted(demo.METHOD_CONFIGS),
                   help="Table I methods to train")
    p.add_argument("--transfer-train-codec", default="x264", help="Fig. 6: training codec")
    p.add_argument("--transfer-codecs", nargs="*", default=["x265", "vvc"],
                   help="Fig. 6: test codecs (none: skip Fig. 6)")
    p.add_argument("--transfer-methods", nargs="+", default=list(TRANSFER_METHODS),
                   choices=sorted(demo.METHOD_CONFIGS))
    p.add_argument("--vvc-qualities", nargs="+", type=float, default=list(demo.DEFAULT_VVC_QUALITIES),
                   help="vvenc QPs of the vvc test sets")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every training (weights init, data order); < 0: random")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: all cores; 1 avoids thread oversubscription on a shared machine)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


def qualities_of(codec, args):
    return args.vvc_qualities if codec == "vvc" else args.qualities


def run_dir(out, method, train_codecs, iters):
    return os.path.join(out, "models", f"{method}_{'+'.join(train_codecs)}_{iters}it")


def main(argv=None):
    args = parse_args(argv)
    out = demo.start_run(args.output, args.threads)
    extra = ["SEED", args.seed] + list(args.opts)
    times = demo.StepTimes(os.path.join(out, demo.TIMINGS_FILE))
    if args.transfer_codecs and args.transfer_train_codec not in args.codecs:
        raise ValueError(f"--transfer-train-codec {args.transfer_train_codec} must be one of --codecs "
                         f"{args.codecs} (its training pairs are compressed with them)")

    logger.info("[1/5] compression")
    root, splits = os.path.join(out, "compressed"), (demo.TRAIN_SET, demo.VAL_SET)
    extra_codecs = [c for c in args.transfer_codecs if c not in args.codecs]
    done = demo.is_compressed(splits, args.codecs, args.qualities, root) and all(
        demo.is_compressed((demo.VAL_SET,), [c], qualities_of(c, args), root) for c in extra_codecs)
    with times.step("compress", done):
        pairs = demo.compress_pairs(splits, args.codecs, args.qualities, root, {"gop": args.gop}, args.workers)
        for codec in extra_codecs:
            pairs.update(demo.compress_pairs((demo.VAL_SET,), [codec], qualities_of(codec, args), root,
                                             {"gop": args.gop}, args.workers))
    val = lambda codec: pairs[demo.VAL_SET, codec]  # noqa: E731
    test_codecs = list(dict.fromkeys(list(args.codecs) + list(args.transfer_codecs)))

    logger.info("[2/5] clean detector (%d iterations)", args.train_iters)
    clean_cfg = demo.model_cfg(demo.CLEAN_CONFIG, os.path.join(out, "clean"),
                               ["SOLVER.MAX_ITER", args.train_iters] + extra)
    with times.step("train_clean", demo.is_trained(clean_cfg)):
        clean = demo.train(clean_cfg)

    logger.info("[3/5] direct test on %s", test_codecs)
    direct_sets = [demo.VAL_SET] + [n for c in test_codecs for n in val(c)]
    cache = os.path.join(out, "clean", "eval.json")
    with times.step("eval_direct", demo.is_evaluated(direct_sets, cache)):
        direct = demo.evaluate(clean_cfg, clean, direct_sets, cache)
    direct_curves = {c: demo.curve_from(direct, c, demo.ANCHOR_METHOD, qualities_of(c, args), val(c))
                     for c in test_codecs}
    clean_ap = direct[demo.VAL_SET]["bbox"][demo.METRIC]

    trained = {}  # label -> (cfg, weights), for the figures

    def run(method, train_codecs, test, label):
        d = run_dir(out, method, train_codecs, args.iters)
        train_sets = [n for c in train_codecs for n in pairs[demo.TRAIN_SET, c]]
        cfg = demo.method_cfg(method, d, iters=args.iters, weights=clean, train_sets=train_sets, extra=extra)
        with times.step(f"train_{label}", demo.is_trained(cfg)):
            weights = demo.train(cfg)
        trained[label] = (cfg, weights)
        sets, cache = [n for c in test for n in val(c)], os.path.join(d, "eval.json")
        with times.step(f"eval_{label}", demo.is_evaluated(sets, cache)):
            res = demo.evaluate(cfg, weights, sets, cache)
        meta = {"iters": args.iters, "trained_on": list(train_codecs)}
        return [demo.curve_from(res, c, label, qualities_of(c, args), val(c), meta=meta) for c in test]

    logger.info("[4/5] Table I: %s trained on pooled %s, %d iterations", args.methods, args.codecs, args.iters)
    table = [direct_curves[c] for c in args.codecs]
    for method in args.methods:
        logger.info("Table I: %s", method)
        table += run(method, args.codecs, args.codecs, method)
    fig6 = []
    if args.transfer_codecs:
        logger.info("[5/5] Fig. 6: %s trained on %s, tested on %s", args.transfer_methods,
                    args.transfer_train_codec, args.transfer_codecs)
        fig6 = [direct_curves[c] for c in args.transfer_codecs]
        for method in args.transfer_methods:
            fig6 += run(method, [args.transfer_train_codec], args.transfer_codecs,
                        f"{method}@{args.transfer_train_codec}")

    common = [f"Clean detector: uncompressed validation {demo.METRIC} **{clean_ap:.1f}** "
              f"({args.train_iters} iterations). Trained methods: {args.iters} iterations each from "
              "the clean detector.", ""]
    timing = (times.line() + f" (each step timed in the run that did it, {torch.get_num_threads()} torch "
              "thread(s); total = their sum)")
    reports = [("table1", "CDRE Table I (synthetic benchmark)", table,
                f"Training data: pooled {' + '.join(args.codecs)} at q {', '.join(f'{q:g}' for q in args.qualities)}.",
                args.codecs),
               ("fig6", "CDRE Fig. 6: codec transfer (synthetic benchmark)", fig6,
                f"Trained on {args.transfer_train_codec} only; tested on {', '.join(args.transfer_codecs)}.",
                args.transfer_codecs)]
    for folder, title, curves, what, codecs in reports:
        if not curves:
            continue
        d = os.path.join(out, folder)
        models = {demo.ANCHOR_METHOD: (clean_cfg, clean)}
        models.update((c.method, trained[c.method]) for c in curves if c.method in trained)
        figure_lines = demo.write_figures(d, {
            c: demo.figure_rows(c, models, direct_curves[c], val(c), demo.VAL_SET) for c in codecs},
            demo.VAL_SET, times, step=f"figures_{folder}")
        lines = common + [what, ""] + demo.strongest_point_lines(curves, clean_ap) + [
            "", f"{demo.METRIC} @ bpp per quality point (CDRE side-stream bpp in brackets, included in bpp):",
            "", demo.points_table(curves), ""] + figure_lines + ["", timing]
        for curve in curves:
            demo.save_curve(curve, os.path.join(d, "curves", curve.name.replace("/", "_") + ".json"))
        path = demo.write_report(curves, anchor_per_codec=demo.ANCHOR_METHOD, output_dir=d, title=title,
                                 preamble="\n".join(lines))
        logger.info("report written to %s", path)
        with open(path) as f:
            print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
