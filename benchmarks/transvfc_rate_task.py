#!/usr/bin/env python
"""TransVFC rate-task curves on the synthetic benchmark (slim models, CPU).

TransVFC (feature coding, one model per lambda_R, bits of its real bitstreams incl. stream
headers and I-frames) against the pixel codecs x264 / x265 (zerolatency, keyint = --gop) and
VVC (vvenc, low delay), whose decoded frames go to the same frozen task networks, for
detection (AP, slim R18 Faster R-CNN), semantic segmentation (mIoU, slim DeepLab-v3) and video
instance segmentation (YouTube-VIS AP, slim Mask R-CNN + tracker, whole videos):

    1. compress the evaluation split (--split: vcm_synth_val by default) with every codec (pair
       datasets; the segmentation and VIS sets of a split hold the same frames and reuse them)
    2. the clean slim detector (as `make demo` trains it), the slim segmentation network and
       the VIS network (the detector + a mask head, trained on clips)
    3. stage 1 per lambda_R: the first (largest) lambda runs the full Table 1 schedule from the
       detector; each next lambda is fine-tuned from the previous one (--finetune-iters, the
       same schedule scaled), the usual way to get a family of rate points cheaply
    4. stage 2 per lambda_R and task: the task's FST (Table 2 weights), the rest frozen
    5. evaluation (TransVFC codes every validation video for real) and OUTPUT/report.md:
       BD-rate / BD-metric of TransVFC vs each pixel codec, curves, points, timings

Resumable: every compression, training and evaluation is skipped when already done; a process
reaching a model another one is training waits for it. To reuse `make demo`'s clean detector,
copy its clean/ folder into OUTPUT (same --train-iters). A rerun with another --split evaluates
the same models and writes its report to OUTPUT/<split>/.

With several --seeds, steps 2-5 run once per seed in OUTPUT/seed<k>/ (the compressed sets are
shared) and OUTPUT/report.md gives each BD value of TransVFC against each pixel codec as
mean ± sd with the per-seed values (also in OUTPUT/seed_spread.json). A second process started
with the same command takes the seeds the first is not working on.

    python benchmarks/transvfc_rate_task.py --output output/transvfc_rate_task
"""
import argparse
import logging
import os
from typing import Dict, List, Mapping, Sequence

import torch

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.data.synthetic import SPLIT_SPECS
from vcm_d2.evaluation.report import bd_results, overlaps_of, write_report
from vcm_d2.evaluation.results import save_curve
from vcm_d2.pipeline import Run
from vcm_d2.pipeline.methods import SYNTHETIC_DETECTION
from vcm_d2.pipeline.rate_task import DEFAULT_TRAIN_ITERS
from vcm_d2.pipeline.report import bd_table, curve_from, points_table, write_figures
from vcm_d2.pipeline.run import register_joined_pairs
from vcm_d2.pipeline.seeds import (SPREAD_FILE, SeedSpread, bd_values_against, mean_sd, run_seeds,
                                   seed_links, write_spread_report)
from vcm_d2.pipeline.transvfc import (DEFAULT_LAMBDAS, EVAL_SPLIT, PIXEL_METHOD, TASKS, TRANSVFC,
                                      PixelCodecs, add_pixel_codec_arguments,
                                      add_stage1_arguments, eval_set, figure_rows_vs_pixels,
                                      pixel_anchor, pixel_cfg, stage1_schedule, train_stage1,
                                      train_stage2, train_task_networks, transvfc_curve)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")

logger = logging.getLogger("vcm_d2.transvfc_rate_task")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/transvfc_rate_task", help="output folder (resumable)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                   help="vis: see also benchmarks/vis_rate_task.py (CDRE and fine-tune rows)")
    p.add_argument("--lambdas", nargs="+", type=float, default=list(DEFAULT_LAMBDAS),
                   help="lambda_R of the stage-1 models (slim configs exist for 1, 4, 16, 32, 128, "
                        "256); trained in this order, each next one fine-tuned from the previous")
    add_stage1_arguments(p)
    p.add_argument("--stage2-iters", type=int, default=300, help="stage-2 (FST) iterations")
    p.add_argument("--semseg-iters", type=int, default=1500,
                   help="iterations of the slim segmentation network (uncoded frames)")
    p.add_argument("--vis-iters", type=int, default=600,
                   help="iterations of the VIS network from the clean detector (uncoded clips)")
    p.add_argument("--train-iters", type=int, default=DEFAULT_TRAIN_ITERS,
                   help="iterations of the clean detector")
    add_pixel_codec_arguments(p)
    p.add_argument("--split", default=EVAL_SPLIT, choices=[s for s in SPLIT_SPECS if s != "train"],
                   help="synthetic split every curve is measured on: val (96 frames), or test / "
                        "holdout (384 frames each; holdout: no choice was made on it, for "
                        "final figures)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seeds of every training (< 0: random); several: each seed trains every "
                        "network once in OUTPUT/seed<k>/, BD values as mean ± sd over them")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: all cores). Bit-exact decoding of a TransVFC stream "
                        "needs the encoder's thread count (stored in the stream)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every TransVFC model, KEY VALUE pairs")
    return p.parse_args(argv)


def compress_split(run: Run, split: str, codecs: Sequence[str], qualities_of, options_of,
                   workers: int) -> Dict[tuple, List[str]]:
    """Compressed pairs of ``split`` per (task, codec): the detection, segmentation and VIS
    sets share their frames, so one compression serves all (registered for each)."""
    frames = eval_set("detection", split)
    step = "compress" if split == EVAL_SPLIT else f"compress_{split}"
    pairs = run.compress((frames,), codecs, qualities_of, options_of, workers, step)
    root = run.compressed_root
    names = {}
    for codec in codecs:
        names["detection", codec] = pairs[frames, codec]
        for task in ("semseg", "vis"):
            names[task, codec] = register_joined_pairs(root, frames, eval_set(task, split), codec,
                                                       qualities_of(codec))
    return names


def main(argv=None):
    args = parse_args(argv)
    lambdas = list(args.lambdas)
    if len(set(lambdas)) != len(lambdas) or len(lambdas) < 2:
        raise ValueError(f"--lambdas needs at least two distinct values, got {lambdas}")
    stage1_schedule(args, lambdas)  # checked before any work
    pixel = PixelCodecs.from_args(args)  # learned checkpoints checked before any work
    if len(args.seeds) == 1:
        return run_seed(args, args.seeds[0], args.output, "", pixel)[0]
    per_seed = run_seeds(args.output, args.seeds, lambda seed, folder, compressed: run_seed(
        args, seed, folder, compressed, pixel))
    reports, curves, clean = zip(*per_seed)
    return spread_report(split_dir(os.path.abspath(args.output), args.split), args.seeds,
                         reports, curves, clean, pixel.codecs)


def split_dir(out: str, split: str) -> str:
    """Where the report, curves and figures of ``split`` go: ``out`` for the default split,
    else out/<split>/, next to the same models."""
    return out if split == EVAL_SPLIT else os.path.join(out, split)


def spread_report(out: str, seeds: Sequence[int], reports: Sequence[str],
                  curves: Sequence[Sequence], clean: Sequence[Mapping[str, float]],
                  codecs: Sequence[str]) -> str:
    """OUTPUT/report.md over the seeds: BD values of TransVFC against each pixel codec as
    mean ± sd, with the per-seed values and reports; then the top of each seed's TransVFC curve
    against its task network on uncompressed frames (``clean``: {task: metric} per seed) and
    the part of the curves each BD-rate averages over."""
    spread = SeedSpread(seeds, [bd_values_against(c, TRANSVFC, codecs) for c in curves])
    head = [f"# TransVFC vs pixel codecs over {len(seeds)} seeds", "",
            "BD-rate / BD-metric (pchip) of TransVFC (method column) against each pixel codec "
            "(codec column) on the same frames; every network (clean detector, task networks, "
            f"stage 1 and 2) is trained once per seed. Per-seed reports (points, overlaps, "
            f"curves, timings): {seed_links(seeds, reports, out)}; values in `{SPREAD_FILE}`.", ""]
    tail = [""] + top_table(seeds, curves, clean) + [""] + overlap_table(curves, codecs)
    path = write_spread_report(out, spread, head, tail)
    logger.info("report written to %s", path)
    return path


def top_table(seeds: Sequence[int], curves: Sequence[Sequence],
              clean: Sequence[Mapping[str, float]]) -> List[str]:
    """Markdown: per task and seed, the task network on uncompressed frames, TransVFC's
    highest-rate point and the gap between them; the gap's mean ± sd over the seeds."""
    lines = ["Top of the TransVFC curve against the task network on uncompressed frames:", "",
             "| task | seed | uncompressed | TransVFC highest-rate point | gap |",
             "|---|---|---|---|---|"]
    for task in sorted(set.intersection(*(set(c) for c in clean))):
        gaps = []
        for seed, seed_curves, seed_clean in zip(seeds, curves, clean):
            curve = next(c for c in seed_curves if c.task == task and c.codec == TRANSVFC)
            top = max(curve.points, key=lambda p: p["bpp"])
            gaps.append(seed_clean[task] - top["metric"])
            lines.append(f"| {task} | {seed} | {curve.metric} {seed_clean[task]:.2f} | "
                         f"{top['metric']:.2f} @ {top['bpp']:.3f} bpp | {gaps[-1]:.2f} |")
        m, sd = mean_sd(gaps)
        lines.append(f"| {task} | mean ± sd | | | {m:.2f} ± {sd:.2f} |")
    return lines


def overlap_table(curves: Sequence[Sequence], codecs: Sequence[str]) -> List[str]:
    """Markdown: per task and pixel codec, the smallest and largest fraction of the two curves'
    metric range (BD-rate) and log-rate range (BD-metric) the BD values average over, across
    the seeds."""
    lines = ["Part of the union of both curves' ranges each BD value averages over "
             "(min–max over the seeds):", "", "| task | codec | BD-rate (metric range) | "
             "BD-metric (log-rate range) |", "|---|---|---|---|"]
    by_seed = [{(c.task, c.codec): c for c in seed_curves} for seed_curves in curves]
    for task, codec in sorted(k for k in by_seed[0] if k[1] in codecs):
        if not all((task, codec) in b and (task, TRANSVFC) in b for b in by_seed):
            continue
        overlaps = list(zip(*(overlaps_of(bd_results(b[task, codec], b[task, TRANSVFC]))
                              for b in by_seed)))
        cells = ["n/a" if None in o else f"{min(o):.0%}–{max(o):.0%}" for o in overlaps]
        lines.append(f"| {task} | {codec} | " + " | ".join(cells) + " |")
    return lines


def run_seed(args, seed: int, output: str, compressed_root: str, pixel: PixelCodecs):
    """Steps 1-5 with one seed in ``output``: (report path, curves, {task: metric of the task
    network on the uncompressed frames})."""
    run = Run(output, CONFIG_DIR, ["SEED", seed] + list(args.opts), args.threads,
              compressed_root)
    lambdas = list(args.lambdas)
    codecs, qualities_of = pixel.codecs, pixel.qualities_of

    logger.info("[1/5] compressing the %s split with %s", args.split, codecs)
    pairs = compress_split(run, args.split, codecs, qualities_of, pixel.options_of, args.workers)
    suffix = "" if args.split == EVAL_SPLIT else f"_{args.split}"  # step names in timings
    report_dir = split_dir(run.out, args.split)

    logger.info("[2/5] clean detector and task networks")
    clean_cfg = SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, os.path.join(run.out, "clean"),
                                              run.extra, iters=args.train_iters)
    detector = run.train(clean_cfg, "train_detector")
    task_weights = train_task_networks(run, args.tasks, detector,
                                       {"semseg": args.semseg_iters, "vis": args.vis_iters})

    logger.info("[3/5] stage 1 at lambda_R %s", lambdas)
    stage1_iters, schedule = stage1_schedule(args, lambdas)
    stage1 = train_stage1(run, lambdas, stage1_iters, detector)

    logger.info("[4/5] stage 2 (FST) for %s", args.tasks)
    models = {task: train_stage2(run, task, stage1, args.stage2_iters, task_weights)
              for task in args.tasks}

    logger.info("[5/5] evaluation")
    curves, clean, figure_lines = [], {}, []
    meta = dict(schedule, stage2_iters=args.stage2_iters)
    for task in args.tasks:
        _, _, key, metric = TASKS[task]
        val_set = eval_set(task, args.split)
        cfg = pixel_cfg(run, task, task_weights)
        res = run.evaluate(cfg, detector, [val_set] + [n for c in codecs for n in pairs[task, c]],
                           f"eval_pixels_{task}{suffix}")
        pixel_curves = {c: curve_from(res, c, PIXEL_METHOD, qualities_of(c), pairs[task, c],
                                      task=task, result_key=key, metric=metric)
                        for c in codecs}
        clean[task] = res[val_set][key][metric]
        curves += list(pixel_curves.values())
        curves.append(transvfc_curve(run, task, models[task], val_set, meta, suffix))
        rows = figure_rows_vs_pixels(models[task], curves[-1], {PIXEL_METHOD: (cfg, detector)},
                                     pixel_curves, {c: pairs[task, c] for c in codecs},
                                     val_set)
        figure_lines += [""] + write_figures(report_dir, {task: rows}, val_set, run.times,
                                             step=f"figures_{task}{suffix}")

    for curve in curves:
        save_curve(curve, os.path.join(report_dir, "curves", f"{curve.task}_{curve.codec}.json"))
    lines = [f"Slim models on 128x128 frames, {torch.get_num_threads()} torch thread(s). Stage 1: "
             f"lambda_R {lambdas[0]:g} {args.stage1_iters} iterations from the clean detector "
             f"({args.train_iters} it), then each next lambda_R fine-tuned {args.finetune_iters} "
             f"iterations from the previous"
             + (" (lambda_R " + ", ".join(f"{lam}: {it}" for lam, it in
                                          schedule["lambda_iters"].items())
                + " iterations instead)" if schedule["lambda_iters"] else "")
             + f"; stage 2: {args.stage2_iters} iterations per task and "
             f"lambda_R. {pixel.describe()}. TransVFC "
             f"quality = lambda_R, GOP from its config. Every bit counted (TransVFC: container "
             "stream header, I-frames, per-frame records with CRC).", "",
             f"Evaluated on the synthetic {args.split} split. Task networks on its "
             "uncompressed frames: "
             + ", ".join(f"{t} {TASKS[t][3]} {v:.1f}" for t, v in clean.items()) + ".", "",
             "BD values of TransVFC against each pixel codec (pchip; negative BD-rate = fewer "
             "bits for the same task metric):", ""]
    lines += bd_table(curves, TRANSVFC, codecs)
    lines += ["", "Points (quality = CRF, QP or lambda_R):", "",
              points_table(curves, by_quality=False)]
    lines += figure_lines + ["", run.times.line()]
    report = write_report(curves, anchor=pixel_anchor(args.codecs, args.tasks),
                          output_dir=report_dir, plot_by="task",
                          title="TransVFC vs pixel codecs (synthetic benchmark)",
                          preamble="\n".join(lines))
    logger.info("report written to %s", report)
    return report, curves, clean


if __name__ == "__main__":
    main()
