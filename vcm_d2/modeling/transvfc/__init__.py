"""TransVFC: transformable video feature compression (Sun et al., Pattern Recognition 2025).

Pure torch + CompressAI modules; the detectron2 meta-architecture, container format and CLIs
are built on top of them:

* ``TransVFCCodec``: video feature codec for res2 features (I-frames: intra hyperprior codec;
  P-frames: scheme-based inter-prediction, eq. 1, + perception-guided conditional coding,
  eq. 3), with ``forward`` (training), ``compress`` / ``decompress`` (bitstreams, CPU);
* ``FeatureSpaceTransform``: the per-task FST (eq. 4);
* ``codec_loss`` (eq. 5-6), ``fst_loss`` (eq. 7-8), ``CODEC_STAGES`` / ``stage_for_iter``
  (Table 1);
* ``add_transvfc_config``: the ``cfg.MODEL.VCM.TRANSVFC`` keys.
"""
from .codec import LIKELIHOOD_KEYS, RECORD_STRINGS, PerceptionFn, TransVFCCodec, record_num_bits
from .config import add_transvfc_config
from .fst import FeatureSpaceTransform
from .losses import (
    CODEC_STAGES,
    FST_TABLE2_WEIGHTS,
    CodecLossWeights,
    FSTLossWeights,
    TrainingStage,
    codec_loss,
    fst_loss,
    latent_bpp,
    stage_for_iter,
)

__all__ = [
    "TransVFCCodec",
    "FeatureSpaceTransform",
    "PerceptionFn",
    "LIKELIHOOD_KEYS",
    "RECORD_STRINGS",
    "record_num_bits",
    "add_transvfc_config",
    "CodecLossWeights",
    "FSTLossWeights",
    "FST_TABLE2_WEIGHTS",
    "TrainingStage",
    "CODEC_STAGES",
    "stage_for_iter",
    "latent_bpp",
    "codec_loss",
    "fst_loss",
]
