"""TransVFC's steps in a rate-task run: stage 1 per lambda_R (a chain of codecs), stage 2 per
task (the FSTs), the frozen task networks they need, and the curve of a set of stage-2 models
coding a dataset for real. Config names are those of ``configs/synthetic`` (slim models)."""
import os
from typing import Dict, List, Mapping, Sequence, Tuple

from ..engine.figures import FigureRow
from ..evaluation.results import RateTaskCurve
from .methods import ANCHOR_METHOD, scale_schedule
from .rate_task import DEFAULT_QUALITIES, DEFAULT_VVC_QUALITIES
from .report import curve_from, figure_points, figure_rows
from .run import Run, run_each_locked

__all__ = [
    "DEFAULT_LAMBDAS", "EVAL_SPLIT", "PIXEL_METHOD", "PIXEL_QUALITIES", "PIXEL_VVC_QUALITIES", "TASKS", "TASK_NETWORK_CONFIG", "TRANSVFC",
    "eval_set", "figure_rows_vs_pixels", "pixel_cfg", "scaled_stage_ends", "stage1_cfg", "stage2_cfg",
    "train_stage1", "train_stage2", "train_task_networks", "transvfc_curve",
]

# lambda_R weighs the rate (eq. 5): 256 is the lowest rate. The paper's four points, then 4 and 1
# (slim configs only): on the synthetic frames lambda_R 16 already lands at ~0.045 bpp, far below
# the pixel codecs' 0.13-0.65 bpp.
DEFAULT_LAMBDAS = (256, 128, 32, 16, 4, 1)
# Pixel-codec points against TransVFC: the demo's plus two lower rates, so that the pixel curves
# reach down into TransVFC's rate range (CRF 37/42, QP 33/38).
PIXEL_QUALITIES = tuple(DEFAULT_QUALITIES) + (37, 42)
PIXEL_VVC_QUALITIES = tuple(DEFAULT_VVC_QUALITIES) + (33, 38)
STAGE1_CONFIG = "transvfc_stage1_slim_lambda{:g}.yaml"
STAGE2_CONFIG = {"detection": "transvfc_stage2_slim_detection.yaml",
                 "semseg": "transvfc_stage2_slim_semseg.yaml",
                 "vis": "transvfc_stage2_slim_vis.yaml"}
BASE_CONFIG = "transvfc_base_slim.yaml"
# Frozen task networks without a checkpoint, trained from the clean detector: config and
# output folder per task (their weights become TASK.<node>.WEIGHTS of TransVFC).
TASK_NETWORK_CONFIG = {"semseg": ("transvfc_task_slim_semseg.yaml", "semseg_network"),
                       "vis": ("vis_mask_rcnn_R18_slim.yaml", "vis_network")}
# Per task: TransVFC task node, synthetic dataset family (``eval_set``), evaluation result key,
# metric.
TASKS = {
    "detection": ("DETECTION", "vcm_synth", "bbox", "AP"),
    "semseg": ("SEM_SEG", "vcm_synth_sem", "sem_seg", "mIoU"),
    "vis": ("INSTANCE_SEG", "vcm_synth_vis", "segm", "AP"),
}
EVAL_SPLIT = "val"  # the split a rate-task run evaluates on unless told otherwise
# Config of each task's pixel anchor: the frozen task network on the decoded frames (TransVFC
# with INFERENCE_INPUT pixels; for VIS inside the video model, which tracks and scores videos).
PIXEL_CONFIG = {"detection": BASE_CONFIG, "semseg": BASE_CONFIG, "vis": STAGE2_CONFIG["vis"]}
PIXEL_METHOD = ANCHOR_METHOD  # pixel codec -> frozen task network ("direct")
TRANSVFC, TRANSVFC_METHOD = "transvfc", "fst"  # curve "transvfc/fst": decoded features -> FST


def eval_set(task: str, split: str = EVAL_SPLIT) -> str:
    """The synthetic dataset of ``task`` on ``split`` (e.g. "vcm_synth_sem_val"); the splits of
    one name hold the same frames across tasks."""
    return f"{TASKS[task][1]}_{split}"


# ----------------------------------------------------------------------------- configs
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


def stage1_cfg(run: Run, lam: float, iters: int, weights: str):
    cfg = run.cfg(STAGE1_CONFIG.format(lam), "", run.extra)
    ends = scaled_stage_ends(cfg.MODEL.VCM.TRANSVFC.STAGE_ENDS, iters)
    cfg.merge_from_list(["SOLVER.MAX_ITER", iters, "MODEL.VCM.TRANSVFC.STAGE_ENDS", ends,
                         "SOLVER.WARMUP_ITERS", min(cfg.SOLVER.WARMUP_ITERS, ends[0]),
                         "SOLVER.CHECKPOINT_PERIOD", iters, "MODEL.WEIGHTS", weights])
    cfg.OUTPUT_DIR = os.path.join(run.out, "stage1", f"lambda{lam:g}_{iters}it")
    return cfg


def _task_weights_opts(task: str, task_weights: Mapping[str, str]) -> List:
    """TASK.<node>.WEIGHTS of a task whose frozen network was trained in the run."""
    if task not in TASK_NETWORK_CONFIG:
        return []
    return [f"MODEL.VCM.TRANSVFC.TASK.{TASKS[task][0]}.WEIGHTS", task_weights[task]]


def stage2_cfg(run: Run, task: str, stage1, iters: int, task_weights: Mapping[str, str]):
    T = stage1.MODEL.VCM.TRANSVFC
    lam = T.LAMBDA_R
    opts = ["MODEL.WEIGHTS", os.path.join(stage1.OUTPUT_DIR, "model_final.pth"),
            "MODEL.VCM.TRANSVFC.MODEL_ID", T.MODEL_ID,
            "MODEL.VCM.TRANSVFC.QUALITY_INDEX", T.QUALITY_INDEX, "MODEL.VCM.TRANSVFC.LAMBDA_R", lam]
    opts += _task_weights_opts(task, task_weights)
    cfg = run.cfg(STAGE2_CONFIG[task], "", run.extra + opts)
    scale_schedule(cfg, iters)
    cfg.OUTPUT_DIR = os.path.join(run.out, "stage2", f"{task}_lambda{lam:g}_{iters}it_from_"
                                  f"{os.path.basename(stage1.OUTPUT_DIR)}")
    return cfg


def pixel_cfg(run: Run, task: str, task_weights: Mapping[str, str]):
    """The frozen task network of ``task`` on decoded pixels (TransVFC INFERENCE_INPUT pixels)."""
    opts = ["MODEL.VCM.TRANSVFC.TASKS", [TASKS[task][0]],
            "MODEL.VCM.TRANSVFC.INFERENCE_INPUT", "pixels"] + _task_weights_opts(task, task_weights)
    return run.cfg(PIXEL_CONFIG[task], os.path.join(run.out, "pixels", task), run.extra + opts)


# ----------------------------------------------------------------------------- steps
def train_task_networks(run: Run, tasks: Sequence[str], detector: str,
                        iters: Mapping[str, int]) -> Dict[str, str]:
    """The frozen networks of ``tasks`` that have no checkpoint (TASK_NETWORK_CONFIG), each
    trained from the clean detector for ``iters[task]`` iterations; {task: weights}."""
    weights = {}
    for task in tasks:
        if task not in TASK_NETWORK_CONFIG:
            continue
        config, folder = TASK_NETWORK_CONFIG[task]
        cfg = run.cfg(config, os.path.join(run.out, folder), ["MODEL.WEIGHTS", detector] + run.extra)
        scale_schedule(cfg, iters[task])
        weights[task] = run.train(cfg, f"train_{folder}")
    return weights


def train_stage1(run: Run, lambdas: Sequence[float], first_iters: int, finetune_iters: int,
                 detector: str) -> List:
    """Stage-1 configs per lambda_R (trained if needed): the first from the detector with the
    full schedule, each next one fine-tuned from the previous."""
    stage1, weights = [], detector
    for i, lam in enumerate(lambdas):
        cfg = stage1_cfg(run, lam, first_iters if i == 0 else finetune_iters, weights)
        weights = run.train(cfg, f"stage1_lambda{lam:g}")
        stage1.append(cfg)
    return stage1


def train_stage2(run: Run, task: str, stage1: Sequence, iters: int,
                 task_weights: Mapping[str, str]) -> List[Tuple]:
    """Stage-2 (FST) models of ``task``, one per stage-1 model: [(cfg, weights)]. They are
    independent: processes started with the same command split them (a lock per model folder),
    unlike stage 1's chain."""
    def one(cfg):
        return cfg, run.train(cfg, f"stage2_{task}_lambda{cfg.MODEL.VCM.TRANSVFC.LAMBDA_R:g}")

    cfgs = [stage2_cfg(run, task, cfg1, iters, task_weights) for cfg1 in stage1]
    return run_each_locked(cfgs, lambda cfg: cfg.OUTPUT_DIR, one)


def transvfc_curve(run: Run, task: str, models: Sequence[Tuple], val_set: str, meta: Dict,
                   step_suffix: str = "", curve_task: str = "") -> RateTaskCurve:
    """TransVFC's curve of ``task`` on ``val_set``: each stage-2 model codes the set for real
    (``curve_task``: the curve's task name, default ``task``)."""
    _, _, key, metric = TASKS[task]
    results, names, lambdas = {}, [], []
    for cfg, weights in models:
        lam = cfg.MODEL.VCM.TRANSVFC.LAMBDA_R
        res = run.evaluate(cfg, weights, [val_set], f"eval_{task}_lambda{lam:g}{step_suffix}")
        results[f"lambda{lam:g}"] = res[val_set]
        names.append(f"lambda{lam:g}")
        lambdas.append(lam)
    return curve_from(results, TRANSVFC, TRANSVFC_METHOD, lambdas, names, meta=meta,
                      task=curve_task or task, result_key=key, metric=metric)


def figure_rows_vs_pixels(models: Sequence[Tuple], curve: RateTaskCurve, pixel_models: Dict,
                          anchors: Dict[str, RateTaskCurve], pairs: Dict[str, Sequence[str]],
                          dataset: str) -> List[FigureRow]:
    """Rows of a TransVFC figure: the task network on ``dataset`` uncompressed, each pixel
    codec's direct test (``anchors``, their ``pairs``) and TransVFC (stage-2 ``models``) at a
    middle and the strongest point of ``curve``."""
    rows = []
    for codec, anchor in anchors.items():
        codec_rows = figure_rows(codec, pixel_models, anchor, pairs[codec], dataset)
        rows += codec_rows[1:] if rows else codec_rows  # one uncompressed row
    by_lambda = {cfg.MODEL.VCM.TRANSVFC.LAMBDA_R: (cfg, w) for cfg, w in models}
    return rows + [FigureRow(f"TransVFC lambda_R {lam:g}", *by_lambda[lam], dataset)
                   for lam in figure_points(curve)]
