"""TransVFC's steps in a rate-task run: stage 1 per lambda_R (a chain of codecs), stage 2 per
task (the FSTs), the frozen task networks they need, and the curve of a set of stage-2 models
coding a dataset for real. Config names are those of ``configs/synthetic`` (slim models)."""
import argparse
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..codecs.neural import learned_codec_options
from ..engine.figures import FigureRow
from ..evaluation.results import RateTaskCurve
from .methods import ANCHOR_METHOD, scale_schedule
from .rate_task import DEFAULT_QUALITIES, DEFAULT_VVC_QUALITIES
from .report import curve_from, figure_points, figure_rows
from .run import FINAL_WEIGHTS, Run, run_each_locked

__all__ = [
    "DEFAULT_LAMBDAS", "EVAL_SPLIT", "PIXEL_METHOD", "PIXEL_QUALITIES", "PIXEL_VVC_QUALITIES", "TASKS", "TASK_NETWORK_CONFIG", "TRANSVFC",
    "PixelCodecs", "add_pixel_codec_arguments", "add_stage1_arguments", "eval_set", "figure_rows_vs_pixels", "parse_lambda_iters", "pixel_cfg",
    "scaled_stage_ends", "stage1_cfg", "stage1_iterations", "stage1_schedule", "stage2_cfg",
    "task_network_weights",
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
PIXEL_CODECS = ("x264", "x265", "vvc")
PIXEL_GOP = 12  # key-frame interval of the pixel codecs (the synthetic videos have 12 frames)
LEARNED_QUALITIES = (1, 2, 3, 4, 5)  # bmshj2018 keeps its widths over q1-5 (one fine-tune chain)
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


# ----------------------------------------------------------------------------- pixel anchors
def add_pixel_codec_arguments(parser: argparse.ArgumentParser) -> None:
    """The pixel codecs a benchmark compares TransVFC with: classic codecs and qualities, and
    learned codecs with their trained checkpoints (``PixelCodecs.from_args``)."""
    parser.add_argument("--codecs", nargs="+", default=list(PIXEL_CODECS),
                        help="pixel codecs compared with TransVFC")
    parser.add_argument("--qualities", nargs="+", type=float, default=list(PIXEL_QUALITIES),
                        help="CRF of x264 / x265")
    parser.add_argument("--vvc-qualities", nargs="+", type=float,
                        default=list(PIXEL_VVC_QUALITIES), help="vvenc QPs")
    parser.add_argument("--gop", type=int, default=PIXEL_GOP,
                        help="key-frame interval of the pixel codecs (also ssf2020's)")
    parser.add_argument("--learned", nargs="+", default=[], metavar="CODEC=WEIGHTS",
                        help="learned pixel codecs with their trained checkpoints, e.g. "
                             "ssf2020=output/learned_codecs/ssf2020 "
                             "(tools/train_learned_codec.py)")
    parser.add_argument("--learned-qualities", nargs="+", type=int,
                        default=list(LEARNED_QUALITIES),
                        help="quality indices of the learned codecs (one checkpoint each)")


@dataclass(frozen=True)
class PixelCodecs:
    """Pixel anchors: ``codecs`` in report order (classic ones, then learned ones), the
    qualities and codec options of each. Learned codecs' options hold their weights and the
    checkpoints' checksums (``learned_codec_options``)."""

    codecs: Tuple[str, ...]
    qualities: Tuple[float, ...]
    vvc_qualities: Tuple[float, ...]
    gop: int
    learned: Mapping[str, Dict[str, Any]]
    learned_qualities: Tuple[int, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PixelCodecs":
        """From ``add_pixel_codec_arguments``' options; every learned checkpoint must exist."""
        learned = dict(learned_codec_options(spec, args.learned_qualities, {"gop": args.gop})
                       for spec in args.learned)
        codecs = list(args.codecs) + [c for c in learned if c not in args.codecs]
        return cls(tuple(codecs), tuple(args.qualities), tuple(args.vvc_qualities), args.gop,
                   learned, tuple(args.learned_qualities))

    def qualities_of(self, codec: str) -> Tuple:
        if codec in self.learned:
            return self.learned_qualities
        return self.vvc_qualities if codec == "vvc" else self.qualities

    def options_of(self, codec: str) -> Dict[str, Any]:
        return dict(self.learned.get(codec, {"gop": self.gop}))

    def describe(self) -> str:
        """One report sentence: codecs, qualities, GOP and the learned checkpoints."""
        classic = [c for c in self.codecs if c not in self.learned]
        crf = ", ".join(f"{q:g}" for q in self.qualities)
        qp = ", ".join(f"{q:g}" for q in self.vvc_qualities)
        learned = "".join(f"; {c} qualities {', '.join(map(str, self.learned_qualities))} from "
                          f"{os.path.basename(o['weights'])}" for c, o in self.learned.items())
        return (f"Pixel codecs: {', '.join(classic)} (x264/x265 CRF {crf}, vvc QP {qp}; GOP "
                f"{self.gop}){learned}")


def pixel_anchor(codecs: Sequence[str], tasks) -> Dict[str, str]:
    """{task: anchor curve name} of a report comparing pixel codecs: the direct test of x265,
    else of the first of ``codecs``."""
    codec = "x265" if "x265" in codecs else codecs[0]
    return {task: f"{codec}/{PIXEL_METHOD}" for task in tasks}


# ----------------------------------------------------------------------------- schedules
def add_stage1_arguments(parser: argparse.ArgumentParser) -> None:
    """--stage1-iters, --finetune-iters and --lambda-iters: the stage-1 chain's schedule (the
    scripts that train it and those that find its models take the same three)."""
    parser.add_argument("--stage1-iters", type=int, default=1000,
                        help="stage-1 iterations of the first lambda_R, from the clean detector "
                             "(its config's schedule, scaled)")
    parser.add_argument("--finetune-iters", type=int, default=300,
                        help="stage-1 iterations of every further lambda_R, from the previous")
    parser.add_argument("--lambda-iters", nargs="+", default=[], metavar="LAMBDA=ITERS",
                        help="stage-1 iterations of some lambda_R instead of the two above, e.g. "
                             "0.25=2000 0.0625=2000 (the top of the curve needs the longest "
                             "schedule)")


def parse_lambda_iters(specs: Sequence[str]) -> Dict[float, int]:
    """{lambda_R: iterations} from "LAMBDA=ITERS" strings."""
    out = {}
    for spec in specs:
        lam, sep, iters = str(spec).partition("=")
        try:
            lam_value, iters_value = float(lam), int(iters)
        except ValueError:
            lam_value, iters_value = None, 0
        if not sep or lam_value is None or iters_value < 1:
            raise ValueError(f"expected LAMBDA=ITERS (lambda_R and a positive iteration count), "
                             f"got {spec!r}")
        if lam_value in out:
            raise ValueError(f"lambda_R {lam_value:g} is given twice in {list(specs)}")
        out[lam_value] = iters_value
    return out


def stage1_iterations(lambdas: Sequence[float], first_iters: int, finetune_iters: int,
                      lambda_iters: Optional[Mapping[float, int]] = None) -> List[int]:
    """Stage-1 iterations per lambda_R of a chain: ``first_iters`` for the first (from the
    detector), ``finetune_iters`` for each next (from the previous), unless ``lambda_iters``
    names it."""
    lambda_iters = lambda_iters or {}
    unknown = sorted(set(lambda_iters) - {float(lam) for lam in lambdas})
    if unknown:
        raise ValueError(f"iterations given for lambda_R {', '.join(f'{u:g}' for u in unknown)}, "
                         f"which the chain {', '.join(f'{lam:g}' for lam in lambdas)} lacks")
    return [lambda_iters.get(float(lam), first_iters if i == 0 else finetune_iters)
            for i, lam in enumerate(lambdas)]


def stage1_schedule(args: argparse.Namespace, lambdas: Sequence[float]) -> Tuple[List[int], Dict]:
    """The options of ``add_stage1_arguments`` for the chain ``lambdas``: the iterations per
    lambda_R (checked, see ``stage1_iterations``) and their record for a curve's meta."""
    lambda_iters = parse_lambda_iters(args.lambda_iters)
    iters = stage1_iterations(lambdas, args.stage1_iters, args.finetune_iters, lambda_iters)
    return iters, {"stage1_iters": args.stage1_iters, "finetune_iters": args.finetune_iters,
                   "lambda_iters": {f"{lam:g}": it for lam, it in lambda_iters.items()}}


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
                         # the config's period: a long run killed midway resumes (``train``
                         # drops the intermediate checkpoints once the run has finished)
                         "SOLVER.CHECKPOINT_PERIOD", min(cfg.SOLVER.CHECKPOINT_PERIOD, iters),
                         "MODEL.WEIGHTS", weights])
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
def task_network_weights(run: Run, task: str) -> str:
    """Where ``task``'s frozen network (one of TASK_NETWORK_CONFIG) is trained to in ``run``."""
    return os.path.join(run.out, TASK_NETWORK_CONFIG[task][1], FINAL_WEIGHTS)


def train_task_networks(run: Run, tasks: Sequence[str], detector: str,
                        iters: Mapping[str, int]) -> Dict[str, str]:
    """The frozen networks of ``tasks`` that have no checkpoint (TASK_NETWORK_CONFIG), each
    trained from the clean detector for ``iters[task]`` iterations; {task: weights}."""
    weights = {}
    for task in tasks:
        if task not in TASK_NETWORK_CONFIG:
            continue
        config, folder = TASK_NETWORK_CONFIG[task]
        output_dir = os.path.dirname(task_network_weights(run, task))
        cfg = run.cfg(config, output_dir, ["MODEL.WEIGHTS", detector] + run.extra)
        scale_schedule(cfg, iters[task])
        weights[task] = run.train(cfg, f"train_{folder}")
    return weights


def train_stage1(run: Run, lambdas: Sequence[float], iters: Sequence[int], detector: str) -> List:
    """Stage-1 configs per lambda_R (trained if needed) with ``iters`` each (see
    ``stage1_iterations``): the first from the detector, each next one fine-tuned from the
    previous."""
    if len(iters) != len(lambdas):
        raise ValueError(f"{len(iters)} iteration counts for {len(lambdas)} lambda_R")
    stage1, weights = [], detector
    for lam, lam_iters in zip(lambdas, iters):
        cfg = stage1_cfg(run, lam, lam_iters, weights)
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
