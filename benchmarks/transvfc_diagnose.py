#!/usr/bin/env python
"""Where TransVFC's task metric goes: the models of a ``transvfc_rate_task.py`` run evaluated
step by step along image -> res2 -> codec -> FST -> task tail, on a split the benchmark does not
report (default the test split, 4x the validation frames).

Detection (--task detection, AP):

    uncoded        res2 -> identity FST -> tail: the clean detector through TransVFC's path
                   (INFERENCE_INPUT uncoded_features; equals the detector itself)
    decoded        each stage-1 model's decoded feature -> identity FST -> tail: what the codec
                   keeps, before any FST training (a residual FST at its init)
    decoded, I     the same with every frame an I-frame (GOP 1, --intra-only): the intra codec
    decoded + FST  each stage-2 model, as the benchmark evaluates it (if trained)

Semantic segmentation (--task semseg, mIoU): the FST maps the detector's res2 into another
network's (the slim DeepLab-v3's), so there is no identity FST; instead

    uncoded        the segmentation network on the uncompressed frames
    uncoded + FST  each stage-2 model's FST on the uncoded res2 feature: what the mapping
                   between the two networks costs without any coding
    decoded + FST  each stage-2 model, as the benchmark evaluates it

Run it with the benchmark's --output, --lambdas, iterations and overrides; it trains nothing
(missing stage-1 models are an error, missing stage-2 models skipped) and caches every
evaluation in OUTPUT/diagnose/<dataset>/. The stage-2 rows are only meaningful with the configs
the models were trained with (a checkpoint of another FST layout loads partially).

    python benchmarks/transvfc_diagnose.py --output output/transvfc_rate_task --lambdas 256 32 4 1
"""
import argparse
import logging
import os
from typing import List

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.pipeline import Run
from vcm_d2.pipeline.methods import SYNTHETIC_DETECTION
from vcm_d2.pipeline.rate_task import DEFAULT_TRAIN_ITERS
from vcm_d2.pipeline.run import EVAL_CACHE_FILE, FINAL_WEIGHTS, evaluate, is_trained
from vcm_d2.pipeline.transvfc import (DEFAULT_LAMBDAS, STAGE2_CONFIG, TASK_NETWORK_CONFIG, TASKS,
                                      add_stage1_arguments, eval_set, pixel_cfg, stage1_cfg,
                                      stage1_schedule, stage2_cfg, task_network_weights)
from vcm_d2.utils.io import atomic_write_bytes

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")
TRANSVFC = "MODEL.VCM.TRANSVFC."
# The identity FST: a residual FST whose correction was never trained.
IDENTITY_FST = [TRANSVFC + "FST.RESIDUAL", True]

logger = logging.getLogger("vcm_d2.transvfc_diagnose")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="output folder of transvfc_rate_task.py")
    p.add_argument("--task", default="detection", choices=["detection", "semseg"],
                   help="the task whose models are diagnosed")
    p.add_argument("--split", default="test", help="synthetic split to evaluate on")
    p.add_argument("--lambdas", nargs="+", type=float, default=list(DEFAULT_LAMBDAS),
                   help="the benchmark's --lambdas (its chain order)")
    add_stage1_arguments(p)  # the benchmark's, to find its stage-1 models
    p.add_argument("--stage2-iters", type=int, default=300, help="the benchmark's --stage2-iters")
    p.add_argument("--train-iters", type=int, default=DEFAULT_TRAIN_ITERS,
                   help="the benchmark's --train-iters (clean detector)")
    p.add_argument("--seed", type=int, default=0, help="the benchmark's seed")
    p.add_argument("--intra-only", action="store_true",
                   help="add the rows of every stage-1 model with I-frames only (GOP 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="the benchmark's config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    run = Run(args.output, CONFIG_DIR, ["SEED", args.seed] + list(args.opts), args.threads)
    dataset = eval_set(args.task, args.split)
    _, _, key, metric = TASKS[args.task]
    folder = os.path.join(run.out, "diagnose", dataset)
    clean = SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, os.path.join(run.out, "clean"), run.extra,
                                          iters=args.train_iters)
    task_weights = {t: task_network_weights(run, t) for t in TASK_NETWORK_CONFIG if t == args.task}
    for weights in [os.path.join(clean.OUTPUT_DIR, FINAL_WEIGHTS)] + list(task_weights.values()):
        if not os.path.exists(weights):
            raise FileNotFoundError(f"no {weights}: run benchmarks/transvfc_rate_task.py with "
                                    f"this --output and --tasks {args.task} first")

    def row(step, lam, weights, cfg, opts=()):
        """(step, lambda_R, metric, bpp) of ``weights`` in ``cfg`` + ``opts``, cached in a folder
        named after the step and the model's own folder (which names its lambda_R and
        schedule), so a model trained otherwise never gets another one's cached result."""
        cfg = cfg.clone()
        cfg.defrost()
        cfg.merge_from_list(list(opts))
        model = os.path.basename(os.path.dirname(weights))
        cfg.OUTPUT_DIR = os.path.join(folder, step.replace(" ", "").replace(",", "_") + (
            "" if lam is None else f"_{model}"))
        cfg.freeze()
        res = evaluate(cfg, weights, [dataset], os.path.join(cfg.OUTPUT_DIR, EVAL_CACHE_FILE))
        logger.info("%s lambda_R %s: %s", step, lam, res[dataset][key][metric])
        return step, lam, res[dataset][key][metric], res[dataset].get("rate", {}).get("bpp")

    detector = os.path.join(clean.OUTPUT_DIR, FINAL_WEIGHTS)
    uncoded = [TRANSVFC + "INFERENCE_INPUT", "uncoded_features"]
    if args.task == "detection":
        todo = [("uncoded", None, detector,
                 run.cfg(STAGE2_CONFIG["detection"], "", run.extra + IDENTITY_FST + uncoded))]
    else:  # the segmentation network itself on uncompressed frames (its own res2)
        todo = [("uncoded", None, detector, pixel_cfg(run, args.task, task_weights))]
    iters, _ = stage1_schedule(args, args.lambdas)
    for lam, lam_iters in zip(args.lambdas, iters):  # every model checked before any evaluation
        s1 = stage1_cfg(run, lam, lam_iters, "")
        if not is_trained(s1):
            raise FileNotFoundError(f"no stage-1 model in {s1.OUTPUT_DIR} (check --lambdas and "
                                    "the iterations against the benchmark's)")
        s2 = stage2_cfg(run, args.task, s1, args.stage2_iters, task_weights)
        s2_weights = os.path.join(s2.OUTPUT_DIR, FINAL_WEIGHTS)
        if args.task == "detection":
            for step, opts in [("decoded", [])] + (
                    [("decoded, I", [TRANSVFC + "GOP", 1])] if args.intra_only else []):
                todo.append((step, lam, os.path.join(s1.OUTPUT_DIR, FINAL_WEIGHTS), s2,
                             IDENTITY_FST + opts))
        elif is_trained(s2):
            todo.append(("uncoded + FST", lam, s2_weights, s2, uncoded))
        if is_trained(s2):
            todo.append(("decoded + FST", lam, s2_weights, s2))
    rows = [row(*item) for item in todo]

    lines = [f"{args.task} {metric} on {dataset} of the models in {run.out} (uncoded: "
             + ("the clean detector through TransVFC's path without coding)." if args.task ==
                "detection" else "the segmentation network on uncompressed frames)."), "",
             f"| step | lambda_R | {metric} | bpp | {metric} - uncoded |", "|---|---|---|---|---|"]
    lines += [f"| {step} | {'-' if lam is None else f'{lam:g}'} | {value:.2f} | "
              f"{'-' if bpp is None else f'{bpp:.4f}'} | "
              f"{value - rows[0][2]:+.2f} |" for step, lam, value, bpp in rows]
    atomic_write_bytes(os.path.join(folder, "report.md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
