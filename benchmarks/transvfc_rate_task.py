#!/usr/bin/env python
"""TransVFC rate-task curves on the synthetic benchmark (slim models, CPU).

TransVFC (feature coding, one model per lambda_R, bits of its real bitstreams incl. stream
headers and I-frames) against the pixel codecs x264 / x265 (zerolatency, keyint = --gop) and
VVC (vvenc, low delay), whose decoded frames go to the same frozen task networks, for
detection (AP, slim R18 Faster R-CNN), semantic segmentation (mIoU, slim DeepLab-v3) and video
instance segmentation (YouTube-VIS AP, slim Mask R-CNN + tracker, whole videos):

    1. compress vcm_synth_val with every codec (pair datasets; the segmentation and VIS splits
       hold the same frames and reuse them)
    2. the clean slim detector (as `make demo` trains it), the slim segmentation network and
       the VIS network (the detector + a mask head, trained on clips)
    3. stage 1 per lambda_R: the first (largest) lambda runs the full Table 1 schedule from the
       detector; each next lambda is fine-tuned from the previous one (--finetune-iters, the
       same schedule scaled), the usual way to get a family of rate points cheaply
    4. stage 2 per lambda_R and task: the task's FST (Table 2 weights), the rest frozen
    5. evaluation (TransVFC codes every validation video for real) and OUTPUT/report.md:
       BD-rate / BD-metric of TransVFC vs each pixel codec, curves, points, timings

Resumable: every compression, training and evaluation is skipped when already done. To reuse
`make demo`'s clean detector, copy its clean/ folder into OUTPUT (same --train-iters).

    python benchmarks/transvfc_rate_task.py --output output/transvfc_rate_task
"""
import argparse
import logging
import os
from typing import Dict, List, Sequence, Tuple

import torch

from vcm_d2.data.pairs import MANIFEST_FILENAME, pair_dataset_name, register_pair_dataset
from vcm_d2.engine.compress import output_dir_for
from vcm_d2.engine.figures import FigureRow
from vcm_d2.evaluation.bdrate import bd_metric, bd_rate
from vcm_d2.evaluation.results import RateTaskCurve, save_curve, write_report

from _common import demo  # benchmarks/ is on sys.path when run as a script

# lambda_R weighs the rate (eq. 5): 256 is the lowest rate. The paper's four points, then 4 and 1
# (slim configs only): on the synthetic frames lambda_R 16 already lands at ~0.045 bpp, far below
# the pixel codecs' 0.13-0.65 bpp.
DEFAULT_LAMBDAS = (256, 128, 32, 16, 4, 1)
# Pixel-codec points: the demo's plus two lower rates, so that the pixel curves reach down into
# TransVFC's rate range (CRF 37/42, QP 33/38).
DEFAULT_QUALITIES = tuple(demo.DEFAULT_QUALITIES) + (37, 42)
DEFAULT_VVC_QUALITIES = tuple(demo.DEFAULT_VVC_QUALITIES) + (33, 38)
STAGE1_CONFIG = "transvfc_stage1_slim_lambda{:g}.yaml"
STAGE2_CONFIG = {"detection": "transvfc_stage2_slim_detection.yaml",
                 "semseg": "transvfc_stage2_slim_semseg.yaml",
                 "vis": "transvfc_stage2_slim_vis.yaml"}
BASE_CONFIG = "transvfc_base_slim.yaml"
# Frozen task networks without a checkpoint, trained here from the clean detector: config and
# output folder per task (their weights become TASK.<node>.WEIGHTS of TransVFC).
TASK_NETWORK_CONFIG = {"semseg": ("transvfc_task_slim_semseg.yaml", "semseg_network"),
                       "vis": ("vis_mask_rcnn_R18_slim.yaml", "vis_network")}
# Per task: TransVFC task node, validation set, evaluation result key, metric.
TASKS = {
    "detection": ("DETECTION", demo.VAL_SET, "bbox", "AP"),
    "semseg": ("SEM_SEG", "vcm_synth_sem_val", "sem_seg", "mIoU"),
    "vis": ("INSTANCE_SEG", "vcm_synth_vis_val", "segm", "AP"),
}
# Config of each task's pixel anchor: the frozen task network on the decoded frames (TransVFC
# with INFERENCE_INPUT pixels; for VIS inside the video model, which tracks and scores videos).
PIXEL_CONFIG = {"detection": BASE_CONFIG, "semseg": BASE_CONFIG, "vis": STAGE2_CONFIG["vis"]}
PIXEL_METHOD = demo.ANCHOR_METHOD  # pixel codec -> frozen task network ("direct")
TRANSVFC, TRANSVFC_METHOD = "transvfc", "fst"  # curve "transvfc/fst": decoded features -> FST

logger = logging.getLogger("vcm_d2.transvfc_rate_task")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=demo._HelpFormatter)
    p.add_argument("--output", default="output/transvfc_rate_task", help="output folder (resumable)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                   help="vis: see also benchmarks/vis_rate_task.py (CDRE and fine-tune rows)")
    p.add_argument("--lambdas", nargs="+", type=float, default=list(DEFAULT_LAMBDAS),
                   help="lambda_R of the stage-1 models (slim configs exist for 1, 4, 16, 32, 128, "
                        "256); trained in this order, each next one fine-tuned from the previous")
    p.add_argument("--stage1-iters", type=int, default=1000,
                   help="iterations of the first lambda's stage 1 (its config's schedule, scaled)")
    p.add_argument("--finetune-iters", type=int, default=300,
                   help="stage-1 iterations of every further lambda, from the previous one")
    p.add_argument("--stage2-iters", type=int, default=300, help="stage-2 (FST) iterations")
    p.add_argument("--semseg-iters", type=int, default=1500,
                   help="iterations of the slim segmentation network (uncoded frames)")
    p.add_argument("--vis-iters", type=int, default=600,
                   help="iterations of the VIS network from the clean detector (uncoded clips)")
    p.add_argument("--train-iters", type=int, default=demo.DEFAULT_TRAIN_ITERS,
                   help="iterations of the clean detector")
    p.add_argument("--codecs", nargs="+", default=["x264", "x265", "vvc"],
                   help="pixel codecs compared with TransVFC")
    p.add_argument("--qualities", nargs="+", type=float, default=list(DEFAULT_QUALITIES),
                   help="CRF of x264 / x265")
    p.add_argument("--vvc-qualities", nargs="+", type=float, default=list(DEFAULT_VVC_QUALITIES),
                   help="vvenc QPs")
    p.add_argument("--gop", type=int, default=12, help="key-frame interval of the pixel codecs")
    p.add_argument("--seed", type=int, default=0, help="seed of every training; < 0: random")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: all cores). Bit-exact decoding of a TransVFC stream "
                        "needs the encoder's thread count (stored in the stream)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every TransVFC model, KEY VALUE pairs")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- configs
def scale_schedule(cfg, iters: int) -> None:
    """Run ``cfg`` for ``iters`` iterations with its SOLVER.STEPS at the same fractions."""
    steps = {int(s * iters / cfg.SOLVER.MAX_ITER) for s in cfg.SOLVER.STEPS}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < iters))
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, iters // 2)
    cfg.SOLVER.CHECKPOINT_PERIOD = iters


def scaled_stage_ends(ends: Sequence[int], iters: int) -> List[int]:
    """Table 1 stage boundaries ``ends`` scaled to a run of ``iters`` iterations (strictly
    increasing, the last one = ``iters``)."""
    if iters < len(ends):
        raise ValueError(f"a stage-1 run needs at least {len(ends)} iterations (one per Table 1 "
                         f"stage), got {iters}")
    total = float(ends[-1])
    out, prev = [], 0
    for i, e in enumerate(ends):
        room = iters - (len(ends) - 1 - i)  # leave one iteration for every later stage
        prev = min(max(prev + 1, round(e / total * iters)), room)
        out.append(prev)
    return out


def stage1_cfg(out: str, lam: float, iters: int, weights: str, extra: Sequence):
    cfg = demo.model_cfg(STAGE1_CONFIG.format(lam), "", extra)
    ends = scaled_stage_ends(cfg.MODEL.VCM.TRANSVFC.STAGE_ENDS, iters)
    cfg.merge_from_list(["SOLVER.MAX_ITER", iters, "MODEL.VCM.TRANSVFC.STAGE_ENDS", ends,
                         "SOLVER.WARMUP_ITERS", min(cfg.SOLVER.WARMUP_ITERS, ends[0]),
                         "SOLVER.CHECKPOINT_PERIOD", iters, "MODEL.WEIGHTS", weights])
    cfg.OUTPUT_DIR = os.path.join(out, "stage1", f"lambda{lam:g}_{iters}it")
    return cfg


def _task_weights_opts(task: str, task_weights: Dict[str, str]) -> List:
    """TASK.<node>.WEIGHTS of a task whose frozen network was trained here."""
    if task not in TASK_NETWORK_CONFIG:
        return []
    return [f"MODEL.VCM.TRANSVFC.TASK.{TASKS[task][0]}.WEIGHTS", task_weights[task]]


def stage2_cfg(out: str, task: str, stage1, iters: int, task_weights: Dict[str, str],
               extra: Sequence):
    T = stage1.MODEL.VCM.TRANSVFC
    lam = T.LAMBDA_R
    opts = ["MODEL.WEIGHTS", os.path.join(stage1.OUTPUT_DIR, "model_final.pth"),
            "MODEL.VCM.TRANSVFC.MODEL_ID", T.MODEL_ID,
            "MODEL.VCM.TRANSVFC.QUALITY_INDEX", T.QUALITY_INDEX, "MODEL.VCM.TRANSVFC.LAMBDA_R", lam]
    opts += _task_weights_opts(task, task_weights)
    cfg = demo.model_cfg(STAGE2_CONFIG[task], "", list(extra) + opts)
    scale_schedule(cfg, iters)
    cfg.OUTPUT_DIR = os.path.join(out, "stage2", f"{task}_lambda{lam:g}_{iters}it_from_"
                                  f"{os.path.basename(stage1.OUTPUT_DIR)}")
    return cfg


def pixel_cfg(out: str, task: str, task_weights: Dict[str, str], extra: Sequence):
    """The frozen task network of ``task`` on decoded pixels (TransVFC INFERENCE_INPUT pixels)."""
    opts = ["MODEL.VCM.TRANSVFC.TASKS", [TASKS[task][0]],
            "MODEL.VCM.TRANSVFC.INFERENCE_INPUT", "pixels"] + _task_weights_opts(task, task_weights)
    return demo.model_cfg(PIXEL_CONFIG[task], os.path.join(out, "pixels", task),
                          list(extra) + opts)


# ----------------------------------------------------------------------------- pipeline
def register_joined_pairs(root: str, frame_set: str, target_set: str, codec: str,
                          qualities: Sequence[float]) -> List[str]:
    """Pair datasets of ``target_set`` from the manifests of ``frame_set`` (a split holding the
    same frames, e.g. its semantic or video version): compressed once, registered for both."""
    names = []
    for q in qualities:
        manifest = os.path.join(output_dir_for(root, frame_set, codec, q), MANIFEST_FILENAME)
        name = pair_dataset_name(target_set, codec, q)
        register_pair_dataset(name, manifest, target_set)
        names.append(name)
    return names


def compress_val(out: str, codecs: Sequence[str], qualities_of, gop: int, workers: int,
                 times) -> Dict[str, List[str]]:
    """Compressed validation pairs per (task, codec): the detection, segmentation and VIS sets
    share their frames, so one compression serves all (registered for each)."""
    root = os.path.join(out, "compressed")
    done = all(demo.is_compressed((demo.VAL_SET,), [c], qualities_of(c), root) for c in codecs)
    names = {}
    with times.step("compress", done):
        for codec in codecs:
            pairs = demo.compress_pairs((demo.VAL_SET,), [codec], qualities_of(codec), root,
                                        {"gop": gop}, workers)
            names["detection", codec] = pairs[demo.VAL_SET, codec]
            for task in ("semseg", "vis"):
                names[task, codec] = register_joined_pairs(root, demo.VAL_SET, TASKS[task][1],
                                                           codec, qualities_of(codec))
    return names


def train_task_networks(out: str, tasks: Sequence[str], detector: str, iters: Dict[str, int],
                        extra: Sequence, times) -> Dict[str, str]:
    """The frozen networks of ``tasks`` that have no checkpoint (TASK_NETWORK_CONFIG), each
    trained from the clean detector for ``iters[task]`` iterations; {task: weights}."""
    weights = {}
    for task in tasks:
        if task not in TASK_NETWORK_CONFIG:
            continue
        config, folder = TASK_NETWORK_CONFIG[task]
        cfg = demo.model_cfg(config, os.path.join(out, folder), ["MODEL.WEIGHTS", detector] + list(extra))
        scale_schedule(cfg, iters[task])
        with times.step(f"train_{folder}", demo.is_trained(cfg)):
            weights[task] = demo.train(cfg)
    return weights


def train_stage1(out: str, lambdas: Sequence[float], first_iters: int, finetune_iters: int,
                 detector: str, extra: Sequence, times) -> List:
    """Stage-1 configs per lambda_R (trained if needed): the first from the detector with the
    full schedule, each next one fine-tuned from the previous."""
    stage1, weights = [], detector
    for i, lam in enumerate(lambdas):
        cfg = stage1_cfg(out, lam, first_iters if i == 0 else finetune_iters, weights, extra)
        with times.step(f"stage1_lambda{lam:g}", demo.is_trained(cfg)):
            weights = demo.train(cfg)
        stage1.append(cfg)
    return stage1


def train_stage2(out: str, task: str, stage1: Sequence, iters: int, task_weights: Dict[str, str],
                 extra: Sequence, times) -> List[Tuple]:
    """Stage-2 (FST) models of ``task``, one per stage-1 model: [(cfg, weights)]."""
    models = []
    for cfg1 in stage1:
        cfg = stage2_cfg(out, task, cfg1, iters, task_weights, extra)
        with times.step(f"stage2_{task}_lambda{cfg1.MODEL.VCM.TRANSVFC.LAMBDA_R:g}",
                        demo.is_trained(cfg)):
            models.append((cfg, demo.train(cfg)))
    return models


def transvfc_curve(task: str, models: Sequence[Tuple], val_set: str, meta: Dict, times,
                   step_suffix: str = "", curve_task: str = "") -> RateTaskCurve:
    """TransVFC's curve of ``task`` on ``val_set``: each stage-2 model codes the set for real
    (``curve_task``: the curve's task name, default ``task``)."""
    _, _, key, metric = TASKS[task]
    results, names, lambdas = {}, [], []
    for cfg, weights in models:
        lam = cfg.MODEL.VCM.TRANSVFC.LAMBDA_R
        cache = os.path.join(cfg.OUTPUT_DIR, "eval.json")
        with times.step(f"eval_{task}_lambda{lam:g}{step_suffix}", demo.is_evaluated([val_set], cache)):
            results[f"lambda{lam:g}"] = demo.evaluate(cfg, weights, [val_set], cache)[val_set]
        names.append(f"lambda{lam:g}")
        lambdas.append(lam)
    return demo.curve_from(results, TRANSVFC, TRANSVFC_METHOD, lambdas, names, meta=meta,
                           task=curve_task or task, result_key=key, metric=metric)


def figure_rows_vs_pixels(models: Sequence[Tuple], curve: RateTaskCurve, pixel_models: Dict,
                          anchors: Dict[str, RateTaskCurve], pairs: Dict[str, Sequence[str]],
                          dataset: str) -> List[FigureRow]:
    """Rows of a TransVFC figure: the task network on ``dataset`` uncompressed, each pixel
    codec's direct test (``anchors``, their ``pairs``) and TransVFC (stage-2 ``models``) at a
    middle and the strongest point of ``curve``."""
    rows = []
    for codec, anchor in anchors.items():
        codec_rows = demo.figure_rows(codec, pixel_models, anchor, pairs[codec], dataset)
        rows += codec_rows[1:] if rows else codec_rows  # one uncompressed row
    by_lambda = {cfg.MODEL.VCM.TRANSVFC.LAMBDA_R: (cfg, w) for cfg, w in models}
    return rows + [FigureRow(f"TransVFC lambda_R {lam:g}", *by_lambda[lam], dataset)
                   for lam in demo.figure_points(curve)]


def bd_table(curves: Sequence[RateTaskCurve], codecs: Sequence[str]) -> List[str]:
    """Markdown: BD-rate / BD-metric of TransVFC vs each pixel codec, per task."""
    lines = ["| task | anchor | BD-rate of TransVFC (%) | BD-metric | notes |", "|---|---|---|---|---|"]
    by_name = {(c.task, c.codec): c for c in curves}
    for task in sorted({c.task for c in curves}):
        test = by_name.get((task, TRANSVFC))
        for codec in codecs:
            anchor = by_name.get((task, codec))
            if test is None or anchor is None:
                continue
            cells, notes = [], []
            for fn in (bd_rate, bd_metric):
                try:
                    res = fn(anchor.rates(), anchor.metrics(), test.rates(), test.metrics(), "pchip")
                    cells.append(f"{res.value:+.2f}")
                    notes += res.warnings
                except (ValueError, RuntimeError) as e:
                    cells.append("n/a")
                    notes.append(str(e))
            lines.append(f"| {task} | {codec} | {cells[0]} | {cells[1]} | "
                         f"{'; '.join(dict.fromkeys(notes)).replace('|', '/')} |")
    return lines


def points_lines(curves: Sequence[RateTaskCurve]) -> List[str]:
    """Markdown: every curve's points (the curves have different quality scales)."""
    lines = ["| task | curve | quality: metric @ bpp |", "|---|---|---|"]
    for c in sorted(curves, key=lambda c: (c.task, c.name)):
        points = "; ".join(f"{p['quality']:g}: {p['metric']:.1f} @ {p['bpp']:.4f}"
                           for p in sorted(c.points, key=lambda p: p["bpp"]))
        lines.append(f"| {c.task} | {c.name} | {points} |")
    return lines


def main(argv=None):
    args = parse_args(argv)
    out = demo.start_run(args.output, args.threads)
    times = demo.StepTimes(os.path.join(out, demo.TIMINGS_FILE))
    extra = ["SEED", args.seed] + list(args.opts)
    lambdas = list(args.lambdas)
    if len(set(lambdas)) != len(lambdas) or len(lambdas) < 2:
        raise ValueError(f"--lambdas needs at least two distinct values, got {lambdas}")

    def qualities_of(codec):
        return args.vvc_qualities if codec == "vvc" else args.qualities

    logger.info("[1/5] compressing %s with %s", demo.VAL_SET, args.codecs)
    pairs = compress_val(out, args.codecs, qualities_of, args.gop, args.workers, times)

    logger.info("[2/5] clean detector and task networks")
    clean_cfg = demo.model_cfg(demo.CLEAN_CONFIG, os.path.join(out, "clean"),
                               ["SOLVER.MAX_ITER", args.train_iters] + extra)
    with times.step("train_detector", demo.is_trained(clean_cfg)):
        detector = demo.train(clean_cfg)
    task_weights = train_task_networks(out, args.tasks, detector,
                                       {"semseg": args.semseg_iters, "vis": args.vis_iters},
                                       extra, times)

    logger.info("[3/5] stage 1 at lambda_R %s", lambdas)
    stage1 = train_stage1(out, lambdas, args.stage1_iters, args.finetune_iters, detector, extra,
                          times)

    logger.info("[4/5] stage 2 (FST) for %s", args.tasks)
    models = {task: train_stage2(out, task, stage1, args.stage2_iters, task_weights, extra, times)
              for task in args.tasks}

    logger.info("[5/5] evaluation")
    curves, clean, figure_lines = [], {}, []
    meta = {"stage1_iters": args.stage1_iters, "finetune_iters": args.finetune_iters,
            "stage2_iters": args.stage2_iters}
    for task in args.tasks:
        _, val_set, key, metric = TASKS[task]
        cfg = pixel_cfg(out, task, task_weights, extra)
        sets = [val_set] + [n for c in args.codecs for n in pairs[task, c]]
        cache = os.path.join(cfg.OUTPUT_DIR, "eval.json")
        with times.step(f"eval_pixels_{task}", demo.is_evaluated(sets, cache)):
            res = demo.evaluate(cfg, detector, sets, cache)
        pixel_curves = {c: demo.curve_from(res, c, PIXEL_METHOD, qualities_of(c), pairs[task, c],
                                           task=task, result_key=key, metric=metric)
                        for c in args.codecs}
        clean[task] = f"{metric} {res[val_set][key][metric]:.1f}"
        curves += list(pixel_curves.values())
        curves.append(transvfc_curve(task, models[task], val_set, meta, times))
        rows = figure_rows_vs_pixels(models[task], curves[-1], {PIXEL_METHOD: (cfg, detector)},
                                     pixel_curves, {c: pairs[task, c] for c in args.codecs},
                                     val_set)
        figure_lines += [""] + demo.write_figures(out, {task: rows}, val_set, times,
                                                  step=f"figures_{task}")

    for curve in curves:
        save_curve(curve, os.path.join(out, "curves", f"{curve.task}_{curve.codec}.json"))
    lines = [f"Slim models on 128x128 frames, {torch.get_num_threads()} torch thread(s). Stage 1: "
             f"lambda_R {lambdas[0]:g} {args.stage1_iters} iterations from the clean detector "
             f"({args.train_iters} it), then each next lambda_R fine-tuned {args.finetune_iters} "
             f"iterations from the previous; stage 2: {args.stage2_iters} iterations per task and "
             f"lambda_R. Pixel codecs: {', '.join(args.codecs)} (x264/x265 CRF "
             f"{', '.join(f'{q:g}' for q in args.qualities)}, vvc QP "
             f"{', '.join(f'{q:g}' for q in args.vvc_qualities)}; GOP {args.gop}); TransVFC "
             f"quality = lambda_R, GOP from its config. Every bit counted (TransVFC: container "
             "stream header, I-frames, per-frame records with CRC).", "",
             "Task networks on uncompressed validation frames: "
             + ", ".join(f"{t} {v}" for t, v in clean.items()) + ".", "",
             "BD values of TransVFC against each pixel codec (pchip; negative BD-rate = fewer "
             "bits for the same task metric):", ""]
    lines += bd_table(curves, args.codecs)
    lines += ["", "Points (quality = CRF, QP or lambda_R):", ""] + points_lines(curves)
    lines += figure_lines + [
        "", times.line() + " (each step timed in the run that did it; total = their sum)"]
    anchor = {task: f"{'x265' if 'x265' in args.codecs else args.codecs[0]}/{PIXEL_METHOD}"
              for task in args.tasks}
    report = write_report(curves, anchor=anchor, output_dir=out, plot_by="task",
                          title="TransVFC vs pixel codecs (synthetic benchmark)",
                          preamble="\n".join(lines))
    logger.info("report written to %s", report)
    return report


if __name__ == "__main__":
    main()
