"""Config keys of vcm_d2. Every key has a default and a one-line comment.

Model keys live under ``cfg.MODEL.VCM``; data/codec/evaluation keys under ``cfg.VCM``, so
nothing silently overwrites detectron2's or another project's keys.
"""
from detectron2.config import CfgNode as CN

from .codecs.stored import DEFAULT_DECODED_CACHE_MB
from .modeling.cdre.config import add_cdre_config
from .modeling.restoration.config import add_restoration_config
from .modeling.transvfc.config import add_transvfc_config
from .modeling.vis.config import add_vis_config


def add_vcm_config(cfg):
    """Add the vcm_d2 keys to a detectron2 config (idempotent)."""
    if hasattr(cfg.MODEL, "VCM"):
        return cfg
    _C = cfg

    # ---------------------------------------------------------------- model
    _C.MODEL.VCM = CN()
    # Parameter-name prefixes frozen during training (requires_grad=False), e.g. ["backbone"]
    # for a head fine-tune. Empty: train everything.
    _C.MODEL.VCM.FREEZE = []
    # If non-empty, only parameters under these prefixes train and everything else is frozen
    # (e.g. CDRE's "Ours-FD" mode: the detector frozen, only the CDRE modules trained).
    _C.MODEL.VCM.TRAINABLE = []
    # Per-parameter learning-rate multipliers: list of [name_prefix, multiplier] pairs; the first
    # matching prefix wins. Used for the "Ours" mode of CDRE (module-wise lr) and fine-tunes.
    _C.MODEL.VCM.LR_MULTIPLIERS = []
    add_cdre_config(_C)
    add_transvfc_config(_C)
    add_vis_config(_C)
    add_restoration_config(_C)

    # ---------------------------------------------------------------- data / codecs / eval
    _C.VCM = CN()
    # Solver additions (detectron2's yacs build_optimizer only knows SGD).
    _C.VCM.SOLVER = CN()
    # "SGD" (detectron2's default optimizer) or "ADAMW" (used by the slim CPU configs).
    _C.VCM.SOLVER.OPTIMIZER = "SGD"

    # Training on clips of consecutive frames (vcm_d2.data.clip_mapper): video models
    # (TransVFC's codec, the VIS model) read one clip per sample instead of one image.
    _C.VCM.CLIP = CN()
    # Frames per training clip; 0: train on single images (detectron2's image loader).
    _C.VCM.CLIP.LENGTH = 0
    # Step between the frames of a clip (1: consecutive frames).
    _C.VCM.CLIP.FRAME_STRIDE = 1

    # Compressed pair datasets (vcm_d2.data.pairs) written by tools/compress_dataset.py.
    _C.VCM.PAIRS = CN()
    # Folders holding <dataset>/<codec>/q<quality>/manifest.json trees; every manifest found
    # there is registered as "<dataset>@<codec>_q<quality>" at setup.
    _C.VCM.PAIRS.ROOTS = []
    # Read the original frame next to the compressed one (needed by CDRE's encoder side).
    _C.VCM.PAIRS.LOAD_ORIGINAL = False
    # Build a pair dataset (or degraded copy) of the synthetic benchmark that a config names but
    # nobody has compressed yet, on first use (vcm_d2.engine.datasets); real data never is.
    _C.VCM.PAIRS.BUILD_SYNTHETIC = True
    # Datasets root the built copies go to (<root>/vcm_compressed, <root>/vcm_degraded, where
    # `import vcm_d2` finds them again); "" = $DETECTRON2_DATASETS (default ./datasets).
    _C.VCM.PAIRS.BUILD_ROOT = ""
    # MB per data-loader process for frames decoded from bitstream-stored pairs (LRU of GOPs).
    _C.VCM.PAIRS.DECODED_CACHE_MB = DEFAULT_DECODED_CACHE_MB

    # Rate accounting in evaluation.
    _C.VCM.EVAL = CN()
    # Add bpp (from each record's "bits" plus any "side_bits" a model reports) to results.
    _C.VCM.EVAL.REPORT_RATE = True
    return cfg
