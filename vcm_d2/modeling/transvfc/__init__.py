"""TransVFC: transformable video feature compression (Sun et al., Pattern Recognition 2025).

Pure torch + CompressAI modules; the stream coder, container format and detectron2
meta-architecture are built on top of them:

* ``TransVFCCodec``: video feature codec for res2 features (I-frames: intra hyperprior codec;
  P-frames: scheme-based inter-prediction, eq. 1, + perception-guided conditional coding,
  eq. 3), with ``forward`` (training), ``compress`` / ``decompress`` (bitstreams, CPU);
* ``FeatureSpaceTransform``: the per-task FST (eq. 4);
* ``codec_loss`` (eq. 5-6), ``fst_loss`` (eq. 7-8), ``CODEC_STAGES`` / ``stage_for_iter``
  (Table 1);
* ``add_transvfc_config``: the ``cfg.MODEL.VCM.TRANSVFC`` keys;
* ``FeatureStreamCoder``: res2 features of videos <-> bitstreams (GOP, open streams, bits);
* ``TransVFC``: the detectron2 meta-architecture (head + codec + FSTs + frozen task tails);
* ``TRANSVFC_TASK_REGISTRY`` and the tails ``FasterRCNNTail``, ``DeepLabV3Tail``;
* ``container``: the versioned bitstream format (``write_stream`` / ``read_stream``);
* ``TransVFCCodecStages``: Table 1 learning rates for stage 1 (SOLVER.LR_SCHEDULER_NAME).
"""
from .codec import LIKELIHOOD_KEYS, RECORD_STRINGS, PerceptionFn, TransVFCCodec, record_num_bits
from .config import add_transvfc_config
from .container import ContainerError, StreamHeader, read_stream, write_stream
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
from .meta_arch import TransVFC
from .perception import SplitBackbone
from .solver import TransVFCCodecStages
from .stream import DecodedFrame, EncodedVideo, FeatureStreamCoder
from .tasks import TRANSVFC_TASK_REGISTRY, DeepLabV3Tail, FasterRCNNTail, TaskTail

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
    "FeatureStreamCoder",
    "EncodedVideo",
    "DecodedFrame",
    "TransVFC",
    "SplitBackbone",
    "TRANSVFC_TASK_REGISTRY",
    "TaskTail",
    "FasterRCNNTail",
    "DeepLabV3Tail",
    "ContainerError",
    "StreamHeader",
    "read_stream",
    "write_stream",
    "TransVFCCodecStages",
]
