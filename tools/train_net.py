#!/usr/bin/env python
"""Train / evaluate vcm_d2 models with a detectron2 config.

    python tools/train_net.py --config-file configs/synthetic/faster_rcnn_R18_slim.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8            # one machine
    python tools/train_net.py --config-file CFG --num-gpus 8 --num-machines 2 \
        --machine-rank 0 --dist-url tcp://HOST:PORT                     # across machines

The final evaluation (of --eval-only, or the one that ends training) is also written to
OUTPUT_DIR/eval_results.json by the main process.
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import vcm_d2  # noqa: F401  (registers datasets, codecs, models)
from vcm_d2.engine import VCMTrainer, get_vcm_cfg, register_pair_roots
from vcm_d2.utils.io import atomic_write_json

RESULTS_FILE = "eval_results.json"


def setup(args):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    register_pair_roots(cfg.VCM.PAIRS.ROOTS)
    default_setup(cfg, args)
    # vcm_d2's own progress (pairs built on first use, rate evaluation) next to detectron2's
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vcm_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = VCMTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = VCMTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return save_results(cfg, res)
    trainer = VCMTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # The evaluation that ended training (detectron2 returns it only with TEST.EXPECTED_RESULTS).
    return save_results(cfg, getattr(trainer, "_last_eval_results", None))


def save_results(cfg, res):
    """``res`` as OUTPUT_DIR/eval_results.json (main process, when there are results)."""
    if res and comm.is_main_process():
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE), res, default=float)
    return res


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
