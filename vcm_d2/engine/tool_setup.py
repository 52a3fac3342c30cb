"""Config and model setup of the command-line tools (tools/vfc_encode.py, vfc_decode.py,
video_demo.py): a config file plus KEY VALUE overrides, and its model with MODEL.WEIGHTS."""
from typing import Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .defaults import get_vcm_cfg

__all__ = ["setup_cfg", "load_model"]


def setup_cfg(config_file: str, opts: Sequence[str], meta_architecture: Optional[str] = None):
    """The frozen config of ``config_file`` with ``opts``; ValueError unless its
    MODEL.META_ARCHITECTURE is ``meta_architecture`` (when given)."""
    cfg = get_vcm_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if meta_architecture is not None and cfg.MODEL.META_ARCHITECTURE != meta_architecture:
        raise ValueError(f"{config_file} is not a {meta_architecture} config "
                         f"(MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r})")
    cfg.freeze()
    return cfg


def load_model(cfg):
    """The model of ``cfg`` with MODEL.WEIGHTS (if any), in eval mode."""
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()
