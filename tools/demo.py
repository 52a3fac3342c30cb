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
"""
import argparse
import contextlib
import json
import logging
import os
import time
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.data.pairs import MANIFEST_FILENAME, pair_dataset_name, register_pair_dataset
from vcm_d2.engine import VCMTrainer, get_vcm_cfg
from vcm_d2.engine.compress import compress_dataset, output_dir_for
from vcm_d2.engine.figures import FigureRow, is_figure_current, write_prediction_figure
from vcm_d2.evaluation.results import RateTaskCurve, save_curve, write_report
from vcm_d2.utils.io import atomic_write_json

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")
TRAIN_SET, VAL_SET = "vcm_synth_train", "vcm_synth_val"
CLEAN_CONFIG = "faster_rcnn_R18_slim.yaml"
# Config of each trained method, all started from the clean detector (Table I rows).
METHOD_CONFIGS = {
    "head_ft": "faster_rcnn_R18_slim_head_finetune.yaml",
    "full_ft": "faster_rcnn_R18_slim_finetune.yaml",
    "ours_fd": "cdre_faster_rcnn_R18_slim_ours_fd.yaml",
    "ours": "cdre_faster_rcnn_R18_slim_ours.yaml",
}
ANCHOR_METHOD = "direct"
# CRF points: CRF 17 already costs the clean detector ~20% AP, CRF 32 ~55%; beyond ~CRF 40 the
# AP of every method is ~1-2 and BD-rates there measure noise.
DEFAULT_QUALITIES = (17, 22, 27, 32)
# vvenc QPs whose bpp on the synthetic validation set spans about the range of x264/x265 at
# DEFAULT_QUALITIES: measured 0.52 / 0.41 / 0.27 / 0.14 bpp (x264: 0.60 / 0.38 / 0.23 / 0.13).
DEFAULT_VVC_QUALITIES = (16, 19, 23, 28)
# Iterations of the clean slim detector every method starts from.
DEFAULT_TRAIN_ITERS = 600
# The fine-tunes drop their lr 10x after this fraction of the iterations (as the configs do).
LR_DROP_FRACTION = 0.75
TASK, METRIC = "detection", "AP"
TIMINGS_FILE = "timings.json"
# Frames of the prediction figures: (video, frame) of the validation set (frame 6 is a P-frame
# half-way through the GOP).
FIGURE_PICKS = ((0, 6), (4, 6))
# Written next to model_final.pth: what the model was trained with (see ``train``).
RUN_RECORD_FILE = "vcm_run.json"

logger = logging.getLogger("vcm_d2.demo")


class _HelpFormatter(argparse.RawTextHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's layout and shows every option's default."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--output", default="output/demo", help="output folder (resumable)")
    p.add_argument("--codecs", nargs="+", default=["x264", "x265"], help="video codecs (vcm_d2 codec names)")
    p.add_argument("--qualities", nargs="+", type=float, default=list(DEFAULT_QUALITIES),
                   help="CRF values (higher = stronger compression)")
    p.add_argument("--gop", type=int, default=12, help="key-frame interval of the video codecs")
    p.add_argument("--train-iters", type=int, default=DEFAULT_TRAIN_ITERS,
                   help="clean detector iterations")
    p.add_argument("--finetune-iters", type=int, default=150,
                   help="full fine-tune iterations (pooled codecs); 0 skips it")
    p.add_argument("--cdre-iters", type=int, default=150,
                   help="iterations of each CDRE model (ours, ours_fd); 0 skips them")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every training (weights init, data order); < 0: random")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- building blocks
def model_cfg(config_name: str, output_dir: str, extra: Sequence = ()):
    """Config from configs/synthetic/<config_name> + overrides, writing to ``output_dir``."""
    cfg = get_vcm_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config_name))
    cfg.merge_from_list(list(extra))
    cfg.OUTPUT_DIR = output_dir
    return cfg


def method_cfg(method: str, output_dir: str, *, iters: int, weights: str,
               train_sets: Sequence[str], extra: Sequence = ()):
    """Config of a Table I method (``METHOD_CONFIGS``) fine-tuned from ``weights`` for
    ``iters`` iterations on ``train_sets`` (lr drop at ``LR_DROP_FRACTION``)."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHOD_CONFIGS)}")
    if iters <= 0:
        raise ValueError(f"{method}: iterations must be > 0, got {iters}")
    if not train_sets:
        raise ValueError(f"{method}: no training sets")
    return model_cfg(METHOD_CONFIGS[method], output_dir, [
        "SOLVER.MAX_ITER", int(iters),
        "SOLVER.STEPS", (max(1, int(iters * LR_DROP_FRACTION)),),
        "MODEL.WEIGHTS", weights,
        "DATASETS.TRAIN", tuple(train_sets),
    ] + list(extra))


def is_trained(cfg) -> bool:
    return os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))


def is_evaluated(datasets: Sequence[str], cache_file: str) -> bool:
    cache = _load_cache(cache_file)
    return all(d in cache for d in datasets)


def is_compressed(splits: Sequence[str], codecs: Sequence[str], qualities: Sequence[float], root: str) -> bool:
    return all(os.path.exists(os.path.join(output_dir_for(root, s, c, q), MANIFEST_FILENAME))
               for s in splits for c in codecs for q in qualities)


class StepTimes:
    """Seconds per pipeline step, kept in a JSON file across resumed runs: a step that is
    skipped because it was already done keeps the time of the run that did it (and is not
    listed if that run was not timed). Each write merges with what the file holds then, so
    runs sharing an output folder (e.g. the VIS and TransVFC benchmarks) keep each other's."""

    def __init__(self, path: str):
        self.path = path
        self.times: Dict[str, float] = _load_cache(path)

    @contextlib.contextmanager
    def step(self, name: str, done_before: bool):
        start = time.time()
        yield
        if not done_before:
            self.times = {**_load_cache(self.path), **self.times, name: time.time() - start}
            atomic_write_json(self.path, self.times)

    def line(self) -> str:
        self.times = {**_load_cache(self.path), **self.times}
        total = sum(self.times.values())
        return timing_line({**self.times, "total": total})


def train(cfg) -> str:
    """Train unless OUTPUT_DIR already holds model_final.pth; return its path.

    RNGs are seeded from cfg.SEED right before training (< 0: random), so a run does not
    depend on what was trained before it in the same process. detectron2's trainer evaluates
    DATASETS.TEST after the last iteration; the demo evaluates separately (with caching), so
    that set is emptied here to save the time."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    record_path = os.path.join(cfg.OUTPUT_DIR, RUN_RECORD_FILE)
    record = _run_record(cfg)
    if os.path.exists(final):
        done = _load_cache(record_path)
        if not done:
            logger.warning(f"{final} exists without {RUN_RECORD_FILE}: reused as is (it cannot "
                           "be checked against iterations, initial weights and training sets)")
        elif done != record:
            raise ValueError(f"{cfg.OUTPUT_DIR} holds a model trained with {done}, this run asks "
                             f"for {record}: delete that folder or use another output folder")
        logger.info(f"[skip] {final} exists")
        return final
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = ()
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    trainer = VCMTrainer(cfg)
    trainer.resume_or_load(resume=True)  # picks up an interrupted run's last checkpoint
    trainer.train()
    atomic_write_json(record_path, record)
    return final


def _run_record(cfg) -> Dict:
    """What identifies a finished training for reuse by a resumed run."""
    return {"max_iter": int(cfg.SOLVER.MAX_ITER), "weights": cfg.MODEL.WEIGHTS,
            "train_sets": list(cfg.DATASETS.TRAIN), "seed": int(cfg.SEED)}


def _load_cache(cache_file: str) -> Dict:
    if not os.path.exists(cache_file):
        return {}
    with open(cache_file) as f:
        return json.load(f)


def evaluate(cfg, weights: str, datasets: Sequence[str], cache_file: str) -> Dict[str, Dict]:
    """AP + bpp of ``weights`` on each dataset; cached in ``cache_file`` (JSON), so only
    datasets missing from the cache are evaluated."""
    cache = _load_cache(cache_file)
    todo = [d for d in datasets if d not in cache]
    if todo:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = weights
        cfg.DATASETS.TEST = tuple(todo)
        cfg.freeze()
        model = VCMTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        results = VCMTrainer.test(cfg, model)
        if len(todo) == 1:  # detectron2 unwraps single-dataset results
            results = {todo[0]: results}
        for name in todo:
            cache[name] = json.loads(json.dumps(results[name], default=float))
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
        atomic_write_json(cache_file, cache)
    return {d: cache[d] for d in datasets}


def compress_pairs(splits: Sequence[str], codecs: Sequence[str], qualities: Sequence[float],
                   root: str, codec_options: Mapping, workers: int) -> Dict:
    """Compress (resumably) and register every (split, codec, quality) pair dataset;
    returns {(split, codec): [pair dataset names in ``qualities`` order]}."""
    names = {}
    for split in splits:
        for codec in codecs:
            manifests = compress_dataset(split, codec, qualities, root,
                                         codec_options=dict(codec_options), workers=workers)
            names[split, codec] = []
            for q in qualities:
                name = pair_dataset_name(split, codec, q)
                register_pair_dataset(name, manifests[q], split)
                names[split, codec].append(name)
    return names


def curve_from(results: Mapping, codec: str, method: str, qualities: Sequence[float],
               names: Sequence[str], meta: Mapping = None, *, task: str = TASK,
               result_key: str = "bbox", metric: str = METRIC) -> RateTaskCurve:
    """Rate-task curve of one (codec, method) from ``evaluate`` results of its datasets
    (``metric`` read from ``results[name][result_key]``, e.g. "sem_seg" / "mIoU")."""
    if len(qualities) != len(names):
        raise ValueError(f"{len(qualities)} qualities but {len(names)} datasets")
    points = []
    for q, name in zip(qualities, names):
        r = results[name]
        if "bpp" not in r.get("rate", {}):
            raise ValueError(f"{name}: no bpp in the evaluation results (records without bits?)")
        points.append({"quality": q, "bpp": r["rate"]["bpp"], "metric": r[result_key][metric],
                       "side_bpp": r["rate"].get("side_bpp", 0.0)})
    return RateTaskCurve(name=f"{codec}/{method}", task=task, metric=metric, codec=codec,
                         method=method, points=points, meta=dict(meta or {}))


# ----------------------------------------------------------------------------- report text
def relative_loss(clean: float, value: float) -> float:
    """Relative metric loss in percent (100 * (clean - value) / clean)."""
    if clean <= 0:
        raise ValueError(f"clean metric must be > 0 to compute a relative loss, got {clean}")
    return 100.0 * (clean - value) / clean


def strongest_point_lines(curves: Sequence[RateTaskCurve], clean_metric: float,
                          method: str = ANCHOR_METHOD) -> List[str]:
    """One line per ``method`` curve: AP and relative AP loss at its lowest-rate point."""
    lines = []
    for c in curves:
        if c.method != method:
            continue
        p = min(c.points, key=lambda p: p["bpp"])
        loss = (f"{relative_loss(clean_metric, p['metric']):.1f}% relative {c.metric} loss"
                if clean_metric > 0 else f"no relative loss (uncompressed {c.metric} 0)")
        lines.append(f"- {c.codec} q{p['quality']:g} ({p['bpp']:.3f} bpp): {c.metric} "
                     f"{p['metric']:.1f}, {loss} ({method})")
    return lines


def points_table(curves: Sequence[RateTaskCurve]) -> str:
    """Markdown table: per curve, "metric @ bpp" at each quality (side bpp in brackets)."""
    qualities = sorted({p["quality"] for c in curves for p in c.points})
    lines = ["| curve | " + " | ".join(f"q{q:g}" for q in qualities) + " |",
             "|---|" + "---|" * len(qualities)]
    for c in sorted(curves, key=lambda c: (c.codec, c.method)):
        by_q = {p["quality"]: p for p in c.points}
        cells = []
        for q in qualities:
            p = by_q.get(q)
            if p is None:
                cells.append("-")
                continue
            side = f" ({p['side_bpp']:.4f})" if p.get("side_bpp") else ""
            cells.append(f"{p['metric']:.1f} @ {p['bpp']:.4f}{side}")
        lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure_points(anchor: RateTaskCurve) -> List[float]:
    """Qualities of a middle and the strongest (lowest-rate) point of ``anchor``."""
    by_rate = sorted(anchor.points, key=lambda p: -p["bpp"])
    picked = [by_rate[(len(by_rate) - 1) // 2]["quality"], by_rate[-1]["quality"]]
    return picked[1:] if picked[0] == picked[1] else picked  # one point: shown once


def figure_rows(codec: str, models: Mapping[str, Tuple], anchor: RateTaskCurve,
                names: Sequence[str], clean_set: str) -> List[FigureRow]:
    """Rows of ``codec``'s figure: the anchor model on ``clean_set``, then every model of
    ``models`` ({method: (cfg, weights)}) at ``figure_points(anchor)``; ``names`` are the pair
    datasets in the order of ``anchor``'s points."""
    by_quality = {p["quality"]: n for p, n in zip(anchor.points, names)}
    rows = [FigureRow(f"uncompressed, {anchor.method}", *models[anchor.method], clean_set)]
    for q in figure_points(anchor):
        rows += [FigureRow(f"{codec} q{q:g}, {method}", cfg, weights, by_quality[q])
                 for method, (cfg, weights) in models.items()]
    return rows


def write_figures(out: str, rows_by_codec: Mapping[str, Sequence[FigureRow]], reference: str,
                  times: "StepTimes", picks: Sequence = FIGURE_PICKS, step: str = "figures",
                  prefix: str = "predictions") -> List[str]:
    """One prediction figure per codec in ``out`` (resumable); returns the report lines."""
    paths = {c: os.path.join(out, f"{prefix}_{c}.png") for c in rows_by_codec}
    done = all(is_figure_current(r, picks, paths[c], reference) for c, r in rows_by_codec.items())
    with times.step(step, done):
        for codec, rows in rows_by_codec.items():
            write_prediction_figure(rows, picks, paths[codec], reference)
    frames = ", ".join(f"video {v + 1} frame {t}" for v, t in picks)
    lines = [f"Predictions on {reference} ({frames}): ground truth first, then per row the "
             "frames the model saw, with each frame's bpp (side streams included) and AP.", ""]
    return lines + [f"![{c}]({os.path.relpath(paths[c], out)})" for c in rows_by_codec]


def timing_line(timings: Mapping[str, float]) -> str:
    return "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())


# ----------------------------------------------------------------------------- main
def start_run(output: str, threads: int = 0) -> str:
    """Loggers, the output folder (returned as an absolute path) and torch threads (0: all
    cores) of a pipeline run."""
    setup_logger(name="detectron2")
    setup_logger(name="vcm_d2")
    out = os.path.abspath(output)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))
    return out


def main(argv=None):
    args = parse_args(argv)
    out = start_run(args.output)
    times = StepTimes(os.path.join(out, TIMINGS_FILE))
    extra = ["SEED", args.seed] + list(args.opts)

    logger.info("[1/6] compressing train/val with %s at %s", args.codecs, args.qualities)
    root, splits = os.path.join(out, "compressed"), (TRAIN_SET, VAL_SET)
    with times.step("compress", is_compressed(splits, args.codecs, args.qualities, root)):
        pair_names = compress_pairs(splits, args.codecs, args.qualities, root, {"gop": args.gop},
                                    args.workers)
    train_all = [n for c in args.codecs for n in pair_names[TRAIN_SET, c]]
    val_all = [n for c in args.codecs for n in pair_names[VAL_SET, c]]

    logger.info("[2/6] clean detector, %d iterations", args.train_iters)
    clean_cfg = model_cfg(CLEAN_CONFIG, os.path.join(out, "clean"),
                          ["SOLVER.MAX_ITER", args.train_iters] + extra)
    with times.step("train_clean", is_trained(clean_cfg)):
        clean_weights = train(clean_cfg)

    logger.info("[3/6] direct test on %d sets", len(val_all) + 1)
    direct_sets, cache = [VAL_SET] + val_all, os.path.join(out, "clean", "eval.json")
    with times.step("eval_direct", is_evaluated(direct_sets, cache)):
        direct = evaluate(clean_cfg, clean_weights, direct_sets, cache)
    curves = [curve_from(direct, c, ANCHOR_METHOD, args.qualities, pair_names[VAL_SET, c])
              for c in args.codecs]
    models = {ANCHOR_METHOD: (clean_cfg, clean_weights)}

    runs = [("full_ft", args.finetune_iters), ("ours", args.cdre_iters), ("ours_fd", args.cdre_iters)]
    for step, (method, iters) in enumerate(runs, start=4):
        if iters <= 0:
            logger.info("[%d/6] %s skipped (0 iterations)", step, method)
            continue
        logger.info("[%d/6] %s: %d iterations on %d pooled sets", step, method, iters, len(train_all))
        cfg = method_cfg(method, os.path.join(out, method), iters=iters, weights=clean_weights,
                         train_sets=train_all, extra=extra)
        with times.step(f"train_{method}", is_trained(cfg)):
            weights = train(cfg)
        models[method] = (cfg, weights)
        cache = os.path.join(out, method, "eval.json")
        with times.step(f"eval_{method}", is_evaluated(val_all, cache)):
            res = evaluate(cfg, weights, val_all, cache)
        curves += [curve_from(res, c, method, args.qualities, pair_names[VAL_SET, c],
                              meta={"iters": iters, "trained_on": args.codecs})
                   for c in args.codecs]

    logger.info("[6/6] report")
    figure_lines = write_figures(out, {
        c: figure_rows(c, models, curves[i], pair_names[VAL_SET, c], VAL_SET)
        for i, c in enumerate(args.codecs)}, VAL_SET, times)
    curve_dir = os.path.join(out, "curves")
    for curve in curves:
        save_curve(curve, os.path.join(curve_dir, curve.name.replace("/", "_") + ".json"))
    clean_ap = direct[VAL_SET]["bbox"][METRIC]
    lines = [f"Uncompressed validation {METRIC} of the clean detector: **{clean_ap:.1f}** "
             f"({args.train_iters} iterations). full_ft / ours / ours_fd: {args.finetune_iters} / "
             f"{args.cdre_iters} / {args.cdre_iters} iterations from it on pooled "
             f"{' + '.join(args.codecs)} at q {', '.join(f'{q:g}' for q in args.qualities)}; "
             f"seed {args.seed}.", ""]
    lines += strongest_point_lines(curves, clean_ap)
    lines += ["", f"{METRIC} @ bpp per quality point (CDRE side-stream bpp in brackets, "
                  "included in bpp):", "", points_table(curves), ""] + figure_lines + [
              "", times.line() + " (each step timed in the run that did it; total = their sum)"]
    report = write_report(curves, anchor_per_codec=ANCHOR_METHOD, output_dir=out,
                          preamble="\n".join(lines))
    logger.info(f"report written to {report}")
    with open(report) as f:
        print(f.read())


if __name__ == "__main__":
    main()
