#!/usr/bin/env python
"""`make demo`: the rate-task pipeline end to end on the built-in synthetic benchmark.

1. compress the synthetic train/val videos with x264 and x265 (low-delay P, GOP 12) at four
   quality points (exact Annex-B bits, tools/compress_dataset.py's library function);
2. train a slim Faster R-CNN on the uncompressed frames (CPU, minutes);
3. "direct test": evaluate it on every compressed copy;
4. "full fine-tune": fine-tune it on the compressed training frames of each codec and evaluate;
5. write OUTPUT/report.md with BD-rates + PNG rate-task curves.

Every step is resumable: rerunning skips finished compression, training and evaluation.
"""
import argparse
import json
import logging
import os
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.logger import setup_logger

import vcm_d2  # noqa: F401  (registers the synthetic benchmark)
from vcm_d2.data.pairs import pair_dataset_name, register_pair_dataset
from vcm_d2.engine import VCMTrainer, get_vcm_cfg
from vcm_d2.engine.compress import compress_dataset
from vcm_d2.evaluation.results import RateTaskCurve, save_curve, write_report

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic")
TRAIN_SET, VAL_SET = "vcm_synth_train", "vcm_synth_val"

logger = logging.getLogger("vcm_d2.demo")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/demo", help="output folder (resumable)")
    p.add_argument("--codecs", nargs="+", default=["x264", "x265"])
    p.add_argument("--qualities", nargs="+", type=float, default=[27, 35, 43, 51],
                   help="CRF values (higher = stronger compression)")
    p.add_argument("--gop", type=int, default=12, help="key-frame interval of the video codecs")
    p.add_argument("--train-iters", type=int, default=600, help="clean detector iterations")
    p.add_argument("--finetune-iters", type=int, default=200, help="fine-tune iterations")
    p.add_argument("--workers", type=int, default=2, help="compression processes")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="extra config overrides for every model, KEY VALUE pairs")
    return p.parse_args(argv)


def _cfg(config_name, output_dir, extra):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config_name))
    cfg.merge_from_list(list(extra))
    cfg.OUTPUT_DIR = output_dir
    return cfg


def train(cfg):
    """Train unless OUTPUT_DIR already holds model_final.pth; return its path."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.exists(final):
        logger.info(f"[skip] {final} exists")
        return final
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = VCMTrainer(cfg)
    trainer.resume_or_load(resume=True)  # picks up an interrupted run's last checkpoint
    trainer.train()
    return final


def evaluate(cfg, weights, datasets, cache_file):
    """AP + bpp of ``weights`` on each dataset; cached in ``cache_file`` (JSON)."""
    cache = {}
    if os.path.exists(cache_file):
        with open(cache_file) as f:
            cache = json.load(f)
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
        tmp = cache_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, cache_file)
    return {d: cache[d] for d in datasets}


def curve_from(results, codec, method, qualities, names):
    points = []
    for q, name in zip(qualities, names):
        r = results[name]
        points.append({"quality": q, "bpp": r["rate"]["bpp"], "metric": r["bbox"]["AP"],
                       "side_bpp": r["rate"]["side_bpp"]})
    return RateTaskCurve(name=f"{codec}/{method}", task="detection", metric="AP", codec=codec,
                         method=method, points=points, meta={})


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="vcm_d2")
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    timings = {}

    # 1. compressed pairs
    t0 = time.time()
    comp_root = os.path.join(out, "compressed")
    pair_names = {}  # (split, codec) -> [dataset names by quality]
    for split in (TRAIN_SET, VAL_SET):
        for codec in args.codecs:
            manifests = compress_dataset(split, codec, args.qualities, comp_root,
                                         codec_options={"gop": args.gop}, workers=args.workers)
            names = []
            for q in args.qualities:
                name = pair_dataset_name(split, codec, q)
                register_pair_dataset(name, manifests[q], split)
                names.append(name)
            pair_names[split, codec] = names
    timings["compress"] = time.time() - t0

    # 2. clean detector
    t0 = time.time()
    extra = list(args.opts)
    clean_cfg = _cfg("faster_rcnn_R18_slim.yaml", os.path.join(out, "clean"),
                     ["SOLVER.MAX_ITER", args.train_iters] + extra)
    clean_weights = train(clean_cfg)
    timings["train_clean"] = time.time() - t0

    # 3. direct test
    t0 = time.time()
    curves = []
    val_all = [n for c in args.codecs for n in pair_names[VAL_SET, c]]
    direct = evaluate(clean_cfg, clean_weights, [VAL_SET] + val_all,
                      os.path.join(out, "clean", "eval.json"))
    for c in args.codecs:
        curves.append(curve_from(direct, c, "direct", args.qualities, pair_names[VAL_SET, c]))
    timings["eval_direct"] = time.time() - t0

    # 4. full fine-tune per codec on its compressed training frames
    for c in args.codecs:
        t0 = time.time()
        ft_dir = os.path.join(out, f"finetune_{c}")
        ft_cfg = _cfg("faster_rcnn_R18_slim_finetune.yaml", ft_dir,
                      ["SOLVER.MAX_ITER", args.finetune_iters,
                       "SOLVER.STEPS", (int(args.finetune_iters * 0.75),),
                       "MODEL.WEIGHTS", clean_weights,
                       "DATASETS.TRAIN", tuple(pair_names[TRAIN_SET, c])] + extra)
        ft_weights = train(ft_cfg)
        res = evaluate(ft_cfg, ft_weights, pair_names[VAL_SET, c],
                       os.path.join(ft_dir, "eval.json"))
        curves.append(curve_from(res, c, "finetune", args.qualities, pair_names[VAL_SET, c]))
        timings[f"finetune_{c}"] = time.time() - t0

    # 5. report
    curve_dir = os.path.join(out, "curves")
    for curve in curves:
        save_curve(curve, os.path.join(curve_dir, curve.name.replace("/", "_") + ".json"))
    clean_ap = direct[VAL_SET]["bbox"]["AP"]
    lines = [f"Uncompressed validation AP of the clean detector: **{clean_ap:.1f}**", ""]
    for curve in curves:
        if curve.method != "direct":
            continue
        worst = max(curve.points, key=lambda p: p["quality"])
        drop = 100.0 * (clean_ap - worst["metric"]) / max(clean_ap, 1e-9)
        lines.append(f"- {curve.codec} q{worst['quality']:g} ({worst['bpp']:.3f} bpp): "
                     f"AP {worst['metric']:.1f}, {drop:.1f}% relative AP loss (direct test)")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    report = write_report(curves, anchor_per_codec="direct", output_dir=out,
                          preamble="\n".join(lines))
    logger.info(f"report written to {report}")
    print(open(report).read())


if __name__ == "__main__":
    main()
