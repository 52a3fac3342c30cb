"""The rate-task pipeline of `make demo`, for any registered dataset, codecs and methods.

1. compress the training and test sets with every codec at every quality (pair datasets);
2. the clean model: trained on the uncompressed training set, or given as weights (e.g. a
   COCO checkpoint);
3. "direct": the clean model on the uncompressed and every compressed test set (the BD anchor);
4. every trained method (e.g. CDRE Table I: head_ft, full_ft, ours_fd, ours) from the clean
   model on the pooled compressed training sets of all codecs, then evaluated;
5. OUTPUT/report.md: BD-rate per codec against the direct test, metric @ bpp per point, PNG
   curves, one prediction figure per codec, step timings.

With several seeds, steps 2-5 run once per seed in OUTPUT/seed<k>/ (the compressed sets are
shared) and OUTPUT/report.md gives each BD value as mean ± sd over the seeds with the per-seed
values (also in OUTPUT/seed_spread.json) and says where two methods' intervals overlap.
Every step is resumable (see ``run.Run``).
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from ..evaluation.report import write_report
from ..evaluation.results import RateTaskCurve, save_curve
from .methods import ANCHOR_METHOD, SYNTHETIC_DETECTION, MethodTable
from .report import (FIGURE_PICKS, curve_from, figure_rows, points_table, strongest_point_lines,
                     write_figures)
from .run import Run
from .seeds import SPREAD_FILE, run_seeds, seed_links, seed_spread, write_spread_report

__all__ = ["RateTaskSpec", "TASK_OF_EVALUATOR", "run_rate_task", "task_metric"]

logger = logging.getLogger(__name__)

# Task name, evaluation result key and metric of a test set, by its evaluator type.
TASK_OF_EVALUATOR = {"coco": ("detection", "bbox", "AP"),
                     "sem_seg": ("semseg", "sem_seg", "mIoU"),
                     "ytvis": ("vis", "segm", "AP")}
# CRF points of the demo: CRF 17 already costs the clean detector ~20% AP, CRF 32 ~55%; beyond
# ~CRF 40 the AP of every method is ~1-2 and BD-rates there measure noise.
DEFAULT_QUALITIES = (17, 22, 27, 32)
# vvenc QPs whose bpp on the synthetic validation set spans about the range of x264/x265 at
# DEFAULT_QUALITIES: measured 0.52 / 0.41 / 0.27 / 0.14 bpp (x264: 0.60 / 0.38 / 0.23 / 0.13).
DEFAULT_VVC_QUALITIES = (16, 19, 23, 28)
# Iterations of the clean slim detector every method starts from.
DEFAULT_TRAIN_ITERS = 600
DEFAULT_GOP = 12


@dataclass
class RateTaskSpec:
    """What a rate-task run compares, on which data (defaults: `make demo`)."""

    output: str
    config_dir: str                      # folder of the table's config files
    table: MethodTable = SYNTHETIC_DETECTION
    train_set: str = "vcm_synth_train"
    test_set: str = "vcm_synth_val"
    codecs: Sequence[str] = ("x264", "x265")
    qualities: Sequence[float] = DEFAULT_QUALITIES
    codec_options: Mapping = field(default_factory=lambda: {"gop": DEFAULT_GOP})
    # Trained methods and their iterations, in report order (0 iterations: skipped).
    methods: Mapping[str, int] = field(default_factory=lambda: {
        "full_ft": 150, "ours": 150, "ours_fd": 150})
    train_iters: int = DEFAULT_TRAIN_ITERS  # of the clean model
    clean_weights: str = ""  # a trained clean model: no clean training
    metric: Optional[Tuple[str, str]] = None  # (result key, metric); default by evaluator type
    seeds: Sequence[int] = (0,)  # of every training; several: mean ± sd over them (< 0: random)
    workers: int = 2
    threads: int = 0
    opts: Sequence = ()  # overrides for every model
    figure_picks: Sequence[Tuple[int, int]] = FIGURE_PICKS


def task_metric(dataset: str, metric: Optional[Tuple[str, str]] = None) -> Tuple[str, str, str]:
    """(task, result key, metric) of ``dataset``'s evaluation: from its evaluator type, or
    ``metric`` = (result key, metric) with the result key as the task name."""
    if metric is not None:
        return (metric[0],) + tuple(metric)
    kind = MetadataCatalog.get(dataset).get("evaluator_type")
    if kind not in TASK_OF_EVALUATOR:
        raise ValueError(f"{dataset}: no default metric for evaluator type {kind!r}; give the "
                         f"result key and metric (e.g. bbox AP, segm AP, sem_seg mIoU)")
    return TASK_OF_EVALUATOR[kind]


def _check(spec: RateTaskSpec) -> None:
    unknown = sorted(set(spec.methods) - set(spec.table.methods))
    if unknown:
        raise ValueError(f"methods {unknown} are not in the method table (known: "
                         f"{sorted(spec.table.methods)})")
    if not spec.codecs or not spec.qualities:
        raise ValueError("a rate-task run needs at least one codec and one quality")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(spec.seeds)}")


def run_rate_task(spec: RateTaskSpec) -> str:
    """Run (or resume) the pipeline of ``spec``; returns the report's path."""
    _check(spec)
    if len(spec.seeds) == 1:
        return _run_seed(spec, spec.seeds[0], spec.output, "")[0]
    def one_seed(seed, folder, compressed):
        logger.info("seed %d of %s", seed, list(spec.seeds))
        return _run_seed(spec, seed, folder, compressed)

    reports, curves = zip(*run_seeds(spec.output, spec.seeds, one_seed))
    return _spread_report(spec, list(reports), list(curves))


def _run_seed(spec: RateTaskSpec, seed: int, output: str, compressed_root: str
              ) -> Tuple[str, List[RateTaskCurve]]:
    """The pipeline with one seed in ``output``: its report's path and curves."""
    run = Run(output, spec.config_dir, ["SEED", seed] + list(spec.opts), spec.threads,
              compressed_root)
    task, key, metric = task_metric(spec.test_set, spec.metric)
    methods = {m: n for m, n in spec.methods.items() if n > 0}
    steps = 3 + len(methods)

    logger.info("[1/%d] compressing %s with %s at %s", steps, [spec.train_set, spec.test_set],
                spec.codecs, list(spec.qualities))
    splits = (spec.train_set, spec.test_set) if methods else (spec.test_set,)
    pairs = run.compress(splits, spec.codecs, lambda c: spec.qualities, spec.codec_options,
                         spec.workers, "compress")
    train_all = [n for c in spec.codecs for n in pairs.get((spec.train_set, c), [])]
    test = {c: pairs[spec.test_set, c] for c in spec.codecs}

    clean_cfg = spec.table.clean_cfg(spec.config_dir, os.path.join(run.out, "clean"),
                                     run.extra, iters=spec.train_iters)
    if spec.clean_weights:
        logger.info("[2/%d] clean model: %s", steps, spec.clean_weights)
        clean_weights = spec.clean_weights
    else:
        logger.info("[2/%d] clean model, %d iterations", steps, spec.train_iters)
        clean_weights = run.train(clean_cfg, "train_clean")

    def curves_of(results, method, meta=None) -> List[RateTaskCurve]:
        return [curve_from(results, c, method, spec.qualities, test[c], meta, task=task,
                           result_key=key, metric=metric) for c in spec.codecs]

    logger.info("[3/%d] direct test on %d sets", steps, 1 + len(spec.codecs) * len(spec.qualities))
    direct = run.evaluate(clean_cfg, clean_weights,
                          [spec.test_set] + [n for c in spec.codecs for n in test[c]], "eval_direct")
    curves = curves_of(direct, ANCHOR_METHOD)
    models = {ANCHOR_METHOD: (clean_cfg, clean_weights)}

    for step, (method, iters) in enumerate(methods.items(), start=4):
        logger.info("[%d/%d] %s: %d iterations on %d pooled sets", step, steps, method, iters,
                    len(train_all))
        cfg = spec.table.method_cfg(method, spec.config_dir, os.path.join(run.out, method),
                                    iters=iters, weights=clean_weights, train_sets=train_all,
                                    extra=run.extra)
        weights = run.train(cfg, f"train_{method}")
        models[method] = (cfg, weights)
        res = run.evaluate(cfg, weights, [n for c in spec.codecs for n in test[c]],
                           f"eval_{method}")
        curves += curves_of(res, method, {"iters": iters, "trained_on": list(spec.codecs)})

    logger.info("[%d/%d] report", steps, steps)
    report = _report(spec, run, curves, models, test, direct[spec.test_set][key][metric],
                     methods, seed)
    return report, curves


def _report(spec: RateTaskSpec, run: Run, curves: List[RateTaskCurve], models: Dict,
            test: Dict[str, List[str]], clean_metric: float, methods: Mapping[str, int],
            seed: int) -> str:
    figure_lines = write_figures(run.out, {
        c: figure_rows(c, models, curves[i], test[c], spec.test_set)
        for i, c in enumerate(spec.codecs)}, spec.test_set, run.times, spec.figure_picks)
    for curve in curves:
        save_curve(curve, os.path.join(run.out, "curves", curve.name.replace("/", "_") + ".json"))
    metric = curves[0].metric
    clean = "the given weights" if spec.clean_weights else f"{spec.train_iters} iterations"
    line = f"Uncompressed validation {metric} of the clean model: **{clean_metric:.1f}** ({clean})."
    if methods:
        line += (f" {' / '.join(methods)}: {' / '.join(str(n) for n in methods.values())} "
                 f"iterations from it on pooled {' + '.join(spec.codecs)} at q "
                 f"{', '.join(f'{q:g}' for q in spec.qualities)}; seed {seed}.")
    lines = [line]
    lines += [""] + strongest_point_lines(curves, clean_metric, ANCHOR_METHOD)
    lines += ["", f"{metric} @ bpp per quality point (CDRE side-stream bpp in brackets, "
                  "included in bpp):", "", points_table(curves), ""] + figure_lines + [
              "", run.times.line()]
    report = write_report(curves, anchor_per_codec=ANCHOR_METHOD, output_dir=run.out,
                          preamble="\n".join(lines))
    logger.info(f"report written to {report}")
    return str(report)


def _spread_report(spec: RateTaskSpec, reports: Sequence[str],
                   curves: Sequence[Sequence[RateTaskCurve]]) -> str:
    """OUTPUT/report.md over the seeds: BD values as mean ± sd, per-seed values, overlaps."""
    spread = seed_spread(spec.seeds, curves, ANCHOR_METHOD)
    head = [f"# Rate-task report over {len(spec.seeds)} seeds", "",
            f"BD-rate / BD-metric (pchip) of each method against the direct test of its codec, "
            f"per seed {', '.join(str(s) for s in spec.seeds)}: the clean model and every method "
            f"are trained once per seed on the same compressed sets. Per-seed reports (points, "
            f"curves, figures, timings): {seed_links(spec.seeds, reports, spec.output)}; values "
            f"in `{SPREAD_FILE}`.", ""]
    path = write_spread_report(spec.output, spread, head, [""] + spread.overlap_lines())
    logger.info(f"report written to {path}")
    return path
