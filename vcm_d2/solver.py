"""Learning-rate schedulers chosen by name (``SOLVER.LR_SCHEDULER_NAME``).

detectron2's ``build_lr_scheduler`` knows its own names (WarmupMultiStepLR, WarmupCosineLR,
WarmupStepWithFixedGammaLR). A method whose paper prescribes another schedule registers it in
``LR_SCHEDULER_REGISTRY`` under a name of its own and its configs set
``SOLVER.LR_SCHEDULER_NAME`` to that name: the trainer builds whatever the config names and
knows no method.
"""
from detectron2.solver import build_lr_scheduler
from detectron2.utils.registry import Registry

__all__ = ["LR_SCHEDULER_REGISTRY", "build_vcm_lr_scheduler"]

LR_SCHEDULER_REGISTRY = Registry("LR_SCHEDULER")
LR_SCHEDULER_REGISTRY.__doc__ = """
Learning-rate schedulers of vcm_d2, by ``SOLVER.LR_SCHEDULER_NAME``.

A registered object is called as ``obj(cfg, optimizer)`` and returns a
``torch.optim.lr_scheduler`` scheduler stepped once per iteration (e.g. a detectron2
``LRMultiplier`` subclass with ``@configurable`` / ``from_config(cfg, optimizer)``).
"""


def build_vcm_lr_scheduler(cfg, optimizer):
    """The scheduler registered as ``cfg.SOLVER.LR_SCHEDULER_NAME``, else detectron2's
    (which raises ValueError for a name it does not know either)."""
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    if name in LR_SCHEDULER_REGISTRY:
        return LR_SCHEDULER_REGISTRY.get(name)(cfg, optimizer)
    return build_lr_scheduler(cfg, optimizer)
