"""Trainer for vcm_d2 models: detectron2's DefaultTrainer plus freezing, per-module learning
rates, AdamW, learning-rate schedules by name, pair-dataset loading and rate-task evaluation."""
import logging
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_writers,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..data.clip_mapper import build_clip_train_loader, build_video_test_loader, is_video_dataset
from ..data.mapper import PairDatasetMapper
from ..data.samplers import VideoInferenceSampler
from ..evaluation import build_task_evaluator
from ..solver import build_vcm_lr_scheduler
from .datasets import prepare_datasets

logger = logging.getLogger(__name__)


def freeze_parameters(model: torch.nn.Module, prefixes) -> int:
    """Set requires_grad=False on parameters whose name starts with one of ``prefixes``.

    Returns the number of frozen tensors; an unknown prefix raises (a typo would otherwise
    silently train what the user meant to freeze)."""
    prefixes = list(prefixes)
    hit = {p: 0 for p in prefixes}
    for name, param in model.named_parameters():
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                param.requires_grad_(False)
                hit[p] += 1
    missing = [p for p, n in hit.items() if n == 0]
    if missing:
        raise ValueError(f"MODEL.VCM.FREEZE prefixes match no parameter: {missing}")
    return sum(hit.values())


def train_only(model: torch.nn.Module, prefixes) -> int:
    """Freeze every parameter not under one of ``prefixes``; returns the number frozen."""
    prefixes = list(prefixes)
    frozen = [n for n, _ in model.named_parameters()
              if not any(n == p or n.startswith(p + ".") for p in prefixes)]
    if len(frozen) == len(list(model.parameters())):
        raise ValueError(f"MODEL.VCM.TRAINABLE prefixes match no parameter: {prefixes}")
    return freeze_parameters(model, frozen)


def lr_factor_func(multipliers):
    """Map [[prefix, factor], ...] to detectron2's ``lr_factor_func(param_name) -> float``."""
    pairs = [(str(p), float(f)) for p, f in multipliers]

    def factor(name):
        for prefix, f in pairs:
            if name == prefix or name.startswith(prefix + "."):
                return f
        return 1.0

    return factor


def build_vcm_optimizer(cfg, model):
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=lr_factor_func(cfg.MODEL.VCM.LR_MULTIPLIERS),
        # EntropyBottleneck quantiles are fitted by the aux loss only: no weight decay.
        overrides={"quantiles": {"weight_decay": 0.0}},
    )
    name = cfg.VCM.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        opt_cls, kwargs = torch.optim.SGD, dict(
            momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    elif name == "ADAMW":
        opt_cls, kwargs = torch.optim.AdamW, {}
    else:
        raise ValueError(f"VCM.SOLVER.OPTIMIZER must be SGD or ADAMW, got {name!r}")
    opt_cls = maybe_add_gradient_clipping(cfg, opt_cls)
    return opt_cls(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)


def frame_mapper(cfg, is_train):
    """The mapper of one frame: detectron2's DatasetMapper that also decodes frames of
    bitstream-stored pairs, with the original when VCM.PAIRS.LOAD_ORIGINAL (CDRE)."""
    return PairDatasetMapper(cfg, is_train)


def ddp_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several processes.

    detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which DDP
    refuses for a CPU model (gloo); a CPU model gets ``device_ids=None`` instead."""
    on_gpu = any(p.is_cuda for p in model.parameters())
    return create_ddp_model(
        model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_gpu else None
    )


class VCMTrainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__ with one change: the DDP wrapper of ddp_model, so that
        # `train_net.py --num-gpus N` also runs on CPU processes.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = ddp_model(model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.VCM.FREEZE:
            n = freeze_parameters(model, cfg.MODEL.VCM.FREEZE)
            logger.info(f"Froze {n} parameter tensors under {list(cfg.MODEL.VCM.FREEZE)}")
        if cfg.MODEL.VCM.TRAINABLE:
            n = train_only(model, cfg.MODEL.VCM.TRAINABLE)
            logger.info(f"Froze {n} parameter tensors outside {list(cfg.MODEL.VCM.TRAINABLE)}")
        return model

    def build_writers(self):
        """detectron2's writers; TensorBoard only when it is installed (it is optional here)."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            writers = default_writers(self.cfg.OUTPUT_DIR, self.max_iter)
            return [w for w in writers if type(w).__name__ != "TensorboardXWriter"]
        return super().build_writers()

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_vcm_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        prepare_datasets(cfg, cfg.DATASETS.TRAIN)  # synthetic pairs built on first use
        if cfg.VCM.CLIP.LENGTH > 0:  # video models train on clips of consecutive frames
            return build_clip_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=frame_mapper(cfg, True))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # By SOLVER.LR_SCHEDULER_NAME: a method's own schedule or detectron2's (vcm_d2.solver).
        return build_vcm_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        prepare_datasets(cfg, [dataset_name])
        if is_video_dataset(dataset_name):  # evaluated video by video (e.g. YouTube-VIS)
            return build_video_test_loader(cfg, dataset_name)
        # Frames sharded over processes at video borders: a per-video stream (CDRE side stream,
        # TransVFC) is coded whole in one process, so bits do not depend on the process count.
        args = build_detection_test_loader.from_config(cfg, dataset_name,
                                                       mapper=frame_mapper(cfg, False))
        args["sampler"] = VideoInferenceSampler([d.get("video_id") for d in args["dataset"]])
        return build_detection_test_loader(**args)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_task_evaluator(cfg, dataset_name, output_folder)


__all__ = [
    "VCMTrainer", "build_vcm_optimizer", "ddp_model", "frame_mapper", "freeze_parameters",
    "lr_factor_func", "train_only",
]
