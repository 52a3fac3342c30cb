#!/usr/bin/env python
"""Video instance segmentation rate-task benchmark on the synthetic VIS split (slim, CPU).

YouTube-VIS AP (sequence IoU over whole videos) against bpp, every bit counted, of

    direct    the clean VIS model (slim Mask R-CNN + detectron2 tracker) on decoded frames
    full_ft   the VIS model fine-tuned on clips of compressed training videos
    ours      CDRE (CNN variant, lambda 4.0) inside the VIS model, trained jointly (side
              streams in bpp)
    ours_fd   CDRE only, the VIS model frozen
    transvfc  TransVFC: one codec per lambda_R (stage 1) + the instance-segmentation FST
              (stage 2); the bits of its streams (headers, I-frames, CRCs)

with the pixel codecs x264 / x265 (CRF, zerolatency, keyint --gop) and VVC (vvenc QP, low
delay), and learned codecs trained by tools/train_learned_codec.py (--learned, e.g.
ssf2020=output/learned_codecs/ssf2020; direct-test and TransVFC rows). full_ft / ours / ours_fd
train on x264 + x265 pooled at --train-qualities.

    1. compress vcm_synth_vis_train (--train-codecs) and the test videos (--codecs)
    2. the clean slim detector and the VIS network (the detector + a mask head, on clips)
    3. direct test on every compressed test set (the 32 videos of vcm_synth_vis_test)
    4. full_ft, ours, ours_fd from the VIS network (--iters each)
    5. TransVFC stage 1 per lambda_R, stage 2 (instance segmentation) per lambda_R
    6. --conditions: low light / Gaussian noise (TransVFC Sec. 4.4.6) applied to the videos of
       --condition-set before any codec; direct and TransVFC on them and on the same videos
       undegraded (no retraining)
    7. reports: OUTPUT/cdre/report.md (each method vs the direct test, per codec) and
       OUTPUT/transvfc/report.md (TransVFC vs each pixel codec, one plot per condition); a run
       without TransVFC and conditions (--lambdas --conditions with no values) writes
       OUTPUT/direct/report.md instead (every codec's direct test against x265's)

Resumable like the other benchmarks (steps whose models or evaluations exist are skipped). The
clean detector, stage-1 models and compressed sets use the folder names of
benchmarks/transvfc_rate_task.py, so one output folder can serve both.

    python benchmarks/vis_rate_task.py --output output/vis_rate_task --threads 2
"""
import argparse
import logging
import os
import re

import torch

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.data.degradation import DEGRADATIONS, degrade_dataset
from vcm_d2.evaluation.report import write_report
from vcm_d2.evaluation.results import save_curve
from vcm_d2.pipeline import ANCHOR_METHOD, Run
from vcm_d2.pipeline.methods import SYNTHETIC_DETECTION, SYNTHETIC_VIS
from vcm_d2.pipeline.rate_task import DEFAULT_QUALITIES as TRAIN_QUALITIES
from vcm_d2.pipeline.rate_task import DEFAULT_TRAIN_ITERS
from vcm_d2.pipeline.report import (bd_table, curve_from, figure_rows, points_table,
                                    strongest_point_lines, write_figures)
from vcm_d2.pipeline.transvfc import (DEFAULT_LAMBDAS, TASK_NETWORK_CONFIG, TRANSVFC, PixelCodecs,
                                      add_pixel_codec_arguments, add_stage1_arguments,
                                      figure_rows_vs_pixels, pixel_anchor, stage1_schedule,
                                      train_stage1, train_stage2, train_task_networks,
                                      transvfc_curve)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")
TRAIN_SET = "vcm_synth_vis_train"
# Curves on the 32-video test split (YouTube-VIS AP over 8 videos varies by about +-1.5 AP
# between neighbouring quality points); the degradations on the 8 validation videos (their
# evaluation costs several times more: the clean-trained network fires on noise).
TEST_SET, CONDITION_SET = "vcm_synth_vis_test", "vcm_synth_vis_val"
TASK, RESULT_KEY, METRIC = "vis", "segm", "AP"
# Trained methods (Table I rows for VIS), each from the clean VIS model.
METHODS = tuple(SYNTHETIC_VIS.methods)
DEFAULT_ITERS = 300
# Task name of the curves of --condition-set, clean or degraded (a plot and BD table each).
CONDITION_TASK = "vis, val ({})"
CLEAN = "clean"

logger = logging.getLogger("vcm_d2.vis_rate_task")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/vis_rate_task", help="output folder (resumable)")
    add_pixel_codec_arguments(p)
    p.add_argument("--train-codecs", nargs="+", default=["x264", "x265"],
                   help="codecs of the training pairs (pooled) of full_ft / ours / ours_fd")
    p.add_argument("--train-qualities", nargs="+", type=float,
                   default=list(TRAIN_QUALITIES), help="CRF of the training pairs")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                   help="trained methods (none: direct only)")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                   help="iterations of every trained method")
    p.add_argument("--train-iters", type=int, default=DEFAULT_TRAIN_ITERS,
                   help="iterations of the clean detector")
    p.add_argument("--vis-iters", type=int, default=600,
                   help="iterations of the VIS network from the clean detector")
    p.add_argument("--lambdas", nargs="*", type=float, default=list(DEFAULT_LAMBDAS),
                   help="lambda_R of the TransVFC models (none: no TransVFC rows)")
    add_stage1_arguments(p)
    p.add_argument("--stage2-iters", type=int, default=300, help="stage-2 (FST) iterations")
    p.add_argument("--test-set", default=TEST_SET,
                   help="videos of the direct / fine-tune / CDRE / TransVFC curves")
    p.add_argument("--conditions", nargs="*", default=list(DEGRADATIONS),
                   choices=list(DEGRADATIONS), help="degradations of --condition-set")
    p.add_argument("--condition-set", default=CONDITION_SET,
                   help="videos degraded for --conditions (reported next to their clean copy)")
    p.add_argument("--seed", type=int, default=0, help="seed of every training; < 0: random")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    stage1_iters, schedule = stage1_schedule(args, args.lambdas)  # checked before any work
    pixel = PixelCodecs.from_args(args)  # learned checkpoints too
    codecs, qualities_of = pixel.codecs, pixel.qualities_of
    run = Run(args.output, CONFIG_DIR, ["SEED", args.seed] + list(args.opts), args.threads)
    out, times = run.out, run.times

    def vis_curve(results, codec, method, names, task=TASK, meta=None):
        return curve_from(results, codec, method, qualities_of(codec), names, meta, task=task,
                          result_key=RESULT_KEY, metric=METRIC)

    def compress(dataset, names, qualities, step):
        pairs = run.compress((dataset,), names, qualities, pixel.options_of, args.workers, step)
        return {codec: pairs[dataset, codec] for codec in names}

    logger.info("[1/7] compressing %s and %s", TRAIN_SET, args.test_set)
    train_pairs = compress(TRAIN_SET, args.train_codecs, lambda c: args.train_qualities,
                           "compress_train") if args.methods else {}
    test_pairs = compress(args.test_set, codecs, qualities_of, "compress_test")

    logger.info("[2/7] clean detector and VIS network")
    clean_cfg = SYNTHETIC_DETECTION.clean_cfg(CONFIG_DIR, os.path.join(out, "clean"),
                                              run.extra, iters=args.train_iters)
    detector = run.train(clean_cfg, "train_detector")
    vis_weights = train_task_networks(run, [TASK], detector, {TASK: args.vis_iters})[TASK]
    vis_config, vis_folder = TASK_NETWORK_CONFIG[TASK]
    vis_cfg = run.cfg(vis_config, os.path.join(out, vis_folder), run.extra)

    def direct_test(dataset, pairs, task, step):
        """Clean metric and direct-test curves of the VIS network on ``dataset``."""
        res = run.evaluate(vis_cfg, vis_weights, [dataset] + [n for c in codecs for n in pairs[c]],
                           step)
        return res[dataset][RESULT_KEY][METRIC], [
            vis_curve(res, c, ANCHOR_METHOD, pairs[c], task=task) for c in codecs]

    logger.info("[3/7] direct test on %s", args.test_set)
    clean_ap, direct_curves = direct_test(args.test_set, test_pairs, TASK, "eval_direct")

    logger.info("[4/7] %s, %d iterations each", args.methods, args.iters)
    train_sets = [n for c in args.train_codecs for n in train_pairs.get(c, [])]
    method_curves = []
    models = {ANCHOR_METHOD: (vis_cfg, vis_weights)}  # of the figures
    for method in args.methods:
        cfg = SYNTHETIC_VIS.method_cfg(method, CONFIG_DIR, os.path.join(out, method),
                                       iters=args.iters, weights=vis_weights,
                                       train_sets=train_sets, extra=run.extra)
        weights = run.train(cfg, f"train_{method}")
        models[method] = (cfg, weights)
        res = run.evaluate(cfg, weights, [n for c in args.train_codecs for n in test_pairs[c]],
                           f"eval_{method}")
        meta = {"iters": args.iters, "trained_on": list(args.train_codecs)}
        method_curves += [vis_curve(res, c, method, test_pairs[c], meta=meta)
                          for c in args.train_codecs]

    transvfc_curves, transvfc_models = [], []
    if args.lambdas:
        logger.info("[5/7] TransVFC at lambda_R %s", args.lambdas)
        stage1 = train_stage1(run, args.lambdas, stage1_iters, detector)
        transvfc_models = train_stage2(run, TASK, stage1, args.stage2_iters, {TASK: vis_weights})
        meta = dict(schedule, stage2_iters=args.stage2_iters)
        transvfc_curves.append(transvfc_curve(run, TASK, transvfc_models, args.test_set, meta,
                                              step_suffix="_test"))

    # Conditions on --condition-set, next to the same set undegraded (the clean reference).
    condition_curves, condition_clean = [], {}
    for cond in ([CLEAN] + list(args.conditions)) if args.conditions else []:
        logger.info("[6/7] condition %s on %s", cond, args.condition_set)
        task = CONDITION_TASK.format(cond)
        dataset = args.condition_set if cond == CLEAN else degrade_dataset(
            args.condition_set, cond, os.path.join(out, "degraded"), seed=max(args.seed, 0),
            progress=False)
        pairs = compress(dataset, codecs, qualities_of, f"compress_{cond}")
        condition_clean[cond], curves = direct_test(dataset, pairs, task, f"eval_direct_{cond}")
        condition_curves += curves
        if transvfc_models:
            condition_curves.append(transvfc_curve(
                run, TASK, transvfc_models, dataset, {"condition": cond},
                step_suffix="" if cond == CLEAN else f"_{cond}", curve_task=task))

    logger.info("[7/7] reports")
    for curve in direct_curves + method_curves + transvfc_curves + condition_curves:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{curve.task}_{curve.codec}_{curve.method}")
        save_curve(curve, os.path.join(out, "curves", name + ".json"))
    common = [f"Slim models on 128x128 videos of 12 frames, {torch.get_num_threads()} torch "
              f"thread(s), seed {args.seed}. VIS network: the clean detector ({args.train_iters} "
              f"it) + a mask head, {args.vis_iters} iterations on 2-frame clips; YouTube-VIS AP "
              f"on the uncompressed videos of {args.test_set} **{clean_ap:.1f}**"
              + (f"; on those of {args.condition_set}: " + ", ".join(
                  f"{c} {v:.1f}" for c, v in condition_clean.items()) if condition_clean else "")
              + f". {pixel.describe()}.", ""]
    common += strongest_point_lines(direct_curves, clean_ap, ANCHOR_METHOD)
    reports = []
    cdre_curves = [c for c in direct_curves if c.codec in args.train_codecs] + method_curves
    anchors = {c.codec: c for c in direct_curves}
    if method_curves:
        cdre_dir = os.path.join(out, "cdre")
        figure_lines = write_figures(cdre_dir, {
            c: figure_rows(c, models, anchors[c], test_pairs[c], args.test_set)
            for c in args.train_codecs}, args.test_set, times, step="figures_cdre")
        lines = common + ["", f"full_ft / ours / ours_fd: {args.iters} iterations each from the "
                          f"VIS network on pooled {' + '.join(args.train_codecs)} training clips at "
                          f"CRF {', '.join(f'{q:g}' for q in args.train_qualities)}; ours / ours_fd "
                          "with CDRE's lambda 4.0 (VIS).", "",
                          f"{METRIC} @ bpp per quality point (CDRE side-stream bpp in brackets, "
                          "included in bpp):", "", points_table(cdre_curves), ""]
        lines += figure_lines + ["", times.line()]
        reports.append(write_report(
            cdre_curves, anchor_per_codec=ANCHOR_METHOD, output_dir=cdre_dir,
            title="Video instance segmentation: CDRE and fine-tuning vs the direct test "
                  "(synthetic VIS)", preamble="\n".join(lines)))
    if transvfc_curves or condition_curves:
        curves = direct_curves + transvfc_curves + condition_curves
        lines = common + ["", f"TransVFC: stage 1 as benchmarks/transvfc_rate_task.py (lambda_R "
                          f"{', '.join(f'{lam:g}' for lam in args.lambdas)}), stage 2 "
                          f"{args.stage2_iters} iterations of the instance-segmentation FST per "
                          f"lambda_R. Conditions: the videos of {args.condition_set} degraded "
                          "before any codec (low light: Y x 0.3; noise: sigma 25), models "
                          "unchanged.", "",
                          "BD values of TransVFC against each pixel codec (pchip):", ""]
        lines += bd_table(curves, TRANSVFC, codecs)
        lines += ["", "Points (quality = CRF, QP or lambda_R):", "",
              points_table(curves, by_quality=False)]
        if transvfc_curves:
            direct = {ANCHOR_METHOD: models[ANCHOR_METHOD]}
            rows = figure_rows_vs_pixels(transvfc_models, transvfc_curves[0], direct,
                                         anchors, test_pairs, args.test_set)
            lines += [""] + write_figures(
                os.path.join(out, "transvfc"), {TRANSVFC: rows}, args.test_set, times,
                step="figures_transvfc")
        lines += ["", times.line()]
        reports.append(write_report(
            curves, anchor=pixel_anchor(codecs, {c.task for c in curves}), plot_by="task",
            output_dir=os.path.join(out, "transvfc"), preamble="\n".join(lines),
            title="Video instance segmentation: TransVFC vs pixel codecs (synthetic VIS)"))
    else:  # the TransVFC report is the one listing every pixel codec (learned ones too)
        reports.append(direct_report(os.path.join(out, ANCHOR_METHOD), direct_curves, codecs,
                                     common + ["", times.line()]))
    for path in reports:
        logger.info("report written to %s", path)
    return reports


def direct_report(out: str, curves, codecs, preamble) -> str:
    """OUTPUT/direct/report.md: the VIS network on every pixel codec's decoded videos, each
    codec against the anchor codec (a run without TransVFC and conditions, whose report would
    otherwise hold these curves)."""
    lines = list(preamble) + ["", "Points (quality = CRF, QP or quality index):", "",
                              points_table(curves, by_quality=False)]
    return write_report(curves, anchor=pixel_anchor(codecs, {c.task for c in curves}),
                        output_dir=out, plot_by="task", preamble="\n".join(lines),
                        title="Video instance segmentation: the direct test of each pixel codec "
                              "(synthetic VIS)")


if __name__ == "__main__":
    main()
