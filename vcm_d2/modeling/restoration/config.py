"""Config keys of the "restore, then analyse" baseline (CDRE Table I's PromptIR / PromptCIR /
CascadeNet rows), under ``cfg.MODEL.VCM.RESTORATION``. Every key has a default and a one-line
comment; the defaults are the R50-width real-data model (configs/CDRE/
faster_rcnn_R_50_FPN_restore.yaml), the synthetic config narrows the network.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_restoration_config", "RESTORATION_LOSSES"]

# Pixel losses between R(decoded) and the original (``MODEL.VCM.RESTORATION.LOSS``).
RESTORATION_LOSSES = ("L1", "MSE")


def add_restoration_config(cfg):
    """Add ``cfg.MODEL.VCM.RESTORATION`` (idempotent). ``cfg.MODEL.VCM`` must already exist."""
    if not hasattr(cfg.MODEL, "VCM"):
        raise ValueError("add_restoration_config needs cfg.MODEL.VCM; call add_vcm_config first")
    if hasattr(cfg.MODEL.VCM, "RESTORATION"):
        return cfg
    R = cfg.MODEL.VCM.RESTORATION = CN()
    # Channels of the hidden 3x3 conv layers of the artifact-removal CNN R.
    R.WIDTH = 64
    # 3x3 conv layers of R (>= 2: RGB -> WIDTH, DEPTH - 2 hidden, WIDTH -> RGB residual).
    R.DEPTH = 8
    # Restoration loss between R(decoded) and the original, in [0, 1] pixel units: "L1" or "MSE".
    R.LOSS = "L1"
    # Weight of the restoration loss ("loss_restoration").
    R.LOSS_WEIGHT = 1.0
    # Weight of the frozen detector's task losses on R(decoded) (0: pure restoration, as the
    # papers' competitors: restore, then analyse; > 0: task-driven, CascadeNet-like).
    R.TASK_LOSS_WEIGHT = 0.0
    return cfg
