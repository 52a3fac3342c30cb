"""Config keys of the TransVFC video feature codec and its FST modules.

All keys live under ``cfg.MODEL.VCM.TRANSVFC`` (FST keys under ``...TRANSVFC.FST``). Defaults
follow the paper (Sun et al., Pattern Recognition 2025) where it gives a value; values the
paper leaves open are marked "(ours)".
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_transvfc_config"]


def add_transvfc_config(cfg):
    """Add ``cfg.MODEL.VCM.TRANSVFC`` (idempotent). ``cfg.MODEL.VCM`` must already exist."""
    if not hasattr(cfg.MODEL, "VCM"):
        raise ValueError("add_transvfc_config needs cfg.MODEL.VCM; call add_vcm_config first")
    if hasattr(cfg.MODEL.VCM, "TRANSVFC"):
        return cfg
    _C = cfg.MODEL.VCM
    _C.TRANSVFC = CN()
    T = _C.TRANSVFC

    # ------------------------------------------------------------------ features / widths
    # Channels of the coded feature: res2 of a detectron2 ResNet-50 (256 ch, stride 4).
    T.IN_CHANNELS = 256
    # Stride of the coded feature relative to the image (res2 = 1/4); used for bits/pixel.
    T.FEATURE_STRIDE = 4
    # Channels after channel reduction (256 -> 64); everything below codes this feature.
    T.REDUCED_CHANNELS = 64
    # Residual blocks in the channel reduction and (mirrored) restoration stages (ours).
    T.REDUCTION_RES_BLOCKS = 2
    # Width of the motion-estimation U-Net (ours).
    T.MOTION_ESTIMATION_CHANNELS = 64
    # Channels of the motion representation m_t and its decoded version m^_t.
    T.MOTION_CHANNELS = 64
    # Channels of the motion latent (1/16 of the image).
    T.MOTION_LATENT_CHANNELS = 64
    # Channels of every hyper-latent z (1/64 of the image).
    T.HYPER_CHANNELS = 64
    # Width of the analysis/synthesis transforms (motion, contextual and intra codecs) (ours).
    T.HIDDEN_CHANNELS = 128
    # Motion schemes per reduced channel: REDUCED_CHANNELS x NUM_SCHEMES candidates (64x16).
    T.NUM_SCHEMES = 16
    # Channel multipliers of the successive depthwise-separable expansions of f_ref
    # (DepthConv(n) of Fig. 4b); their product must equal NUM_SCHEMES (ours: 4 x 4).
    T.SCHEME_EXPANSIONS = [4, 4]
    # Kernel of the conv that combines the selected schemes into REDUCED_CHANNELS (paper: 7x7).
    T.SCHEME_COMBINE_KERNEL = 7
    # How that conv combines: "dense" (REDUCED_CHANNELS x NUM_SCHEMES -> REDUCED_CHANNELS, as
    # Fig. 4b reads; a third of a P-frame's MACs) or "separable" (depthwise, then 1x1: ~1/28 of
    # them; the weights differ, so a dense checkpoint does not load into it).
    T.SCHEME_COMBINE = "dense"
    # Channels of the residual (contextual) latent y (1/16 of the image).
    T.RESIDUAL_LATENT_CHANNELS = 96
    # Channels of the intra (I-frame) latent (1/16 of the image) (ours).
    T.INTRA_LATENT_CHANNELS = 96
    # Channels of each perception condition after its 1x1 reduction.
    T.CONDITION_CHANNELS = 32
    # Channels of the perception network outputs p2..p6 (detectron2 FPN: 256).
    T.PERCEPTION_CHANNELS = 256
    # Channels of the temporal prior (DCVC-TCM style) fed to the residual entropy model (ours).
    T.TEMPORAL_PRIOR_CHANNELS = 192
    # Hidden width of the 1x1 entropy-parameter network fusing hyperprior + temporal prior (ours).
    T.ENTROPY_PARAMETER_CHANNELS = 256

    # ------------------------------------------------------------------ coding structure
    # Frames per GOP: the first frame of each GOP is intra coded (paper: 12).
    T.GOP = 12
    # Quantization of latents feeding the synthesis transforms in training: "ste" (round with a
    # straight-through gradient, around the predicted means) or "noise" (additive uniform). The
    # rate always uses additive noise.
    T.TRAIN_QUANTIZATION = "ste"
    # Detach the reference feature between P-frames in training (saves memory on long GOPs).
    T.DETACH_REFERENCE = False

    # ------------------------------------------------------------------ ablations (Table 5)
    # Scheme-based inter-prediction; False: warping baseline (offset field + bilinear warp).
    T.USE_SCHEME_PREDICTION = True
    # Perception conditions C_enc / C_dec in the contextual encoder / decoder.
    T.USE_PERCEPTION_CONDITION = True
    # Perception loss D_p in the codec loss.
    T.USE_PERCEPTION_LOSS = True

    # ------------------------------------------------------------------ codec loss (eq. 5)
    # Rate weight lambda_R; the paper trains one model per value in {16, 32, 128, 256}.
    T.LAMBDA_R = 32.0
    # Feature distortion weight lambda_f (MSE on res2 features).
    T.LAMBDA_F = 16.0
    # lambda_c = LAMBDA_C_RATIO * lambda_f (compensated-feature distortion).
    T.LAMBDA_C_RATIO = 0.1
    # Perception distortion weight lambda_p (MSE over p2..p6).
    T.LAMBDA_P = 4.0
    # Last iteration (exclusive) of each of the 5 training stages of Table 1 (ours: the paper
    # gives the stages' losses and learning rates, not their lengths).
    T.STAGE_ENDS = [20000, 40000, 80000, 100000, 120000]

    # ------------------------------------------------------------------ FST (eq. 4, Fig. 6)
    T.FST = CN()
    # Width of the three branch outputs at the feature resolution.
    T.FST.HIDDEN_CHANNELS = 96
    # Width at full image resolution in the up-then-down branch.
    T.FST.IMAGE_CHANNELS = 32
    # Channels of the coarse image reconstructed by the up-then-down branch (RGB).
    T.FST.IMAGE_OUT_CHANNELS = 3
    # Bottleneck residual blocks of the bottleneck-resblock branch.
    T.FST.NUM_RES_BLOCKS = 4
    # Inner width of the bottleneck residual blocks.
    T.FST.BOTTLENECK_CHANNELS = 64
    # Width at the coarsest scale of the down-then-up branch.
    T.FST.GLOBAL_CHANNELS = 144
    # Residual blocks at the coarsest scale of the down-then-up branch.
    T.FST.NUM_GLOBAL_RES_BLOCKS = 2
    # Stride-2 steps of the down-then-up branch below the feature resolution.
    T.FST.GLOBAL_DOWNSAMPLING_STEPS = 2
    # Channels of the target task feature (e.g. 256 for a ResNet res2 / FPN level).
    T.FST.OUT_CHANNELS = 256
    # Stride of the target task feature relative to the image (power-of-2 multiple of
    # FEATURE_STRIDE, e.g. 4 or 8).
    T.FST.OUT_STRIDE = 4
    # Branch ablations (Table 6).
    T.FST.USE_UP_DOWN = True
    T.FST.USE_DOWN_UP = True
    # Not in the paper: output = input + a zero-initialized correction, so the FST starts as the
    # identity (fst.py); only for task features of the res2 shape. For short FST schedules.
    T.FST.RESIDUAL = False
    # FST loss weights (eq. 7); defaults: object detection row of Table 2.
    T.FST.LAMBDA_TASK = 10.0
    T.FST.LAMBDA_X = 1024.0
    T.FST.LAMBDA_MID = 16.0
    T.FST.LAMBDA_HIGH = 4.0

    _add_meta_arch_config(T)
    return cfg


def _add_meta_arch_config(T):
    """Keys of the detectron2 meta-architecture ``TransVFC`` (``meta_arch.py``)."""
    # ------------------------------------------------------------------ training
    # What trains: "codec" (stage 1, eq. 5-6: the codec, everything else frozen), "fst"
    # (stage 2, eq. 7-8: the FSTs of TASKS, everything else frozen) or "task" (the task tails
    # on uncoded features, for task networks without a checkpoint, e.g. the synthetic benchmark).
    T.TRAIN_STAGE = "codec"
    # (Training clips come from VCM.CLIP: frame 0 of a clip is an I-frame, the rest P-frames.)
    # Side of the random square crop of the res2 features in stage 1, in feature pixels (paper:
    # 128); clamped to the smallest frame of the batch. 0: whole frames.
    T.TRAIN_CROP_SIZE = 128
    # Weight of CompressAI's aux loss, which fits the quantiles of the z bottlenecks (stage 1).
    T.AUX_LOSS_WEIGHT = 1.0

    # ------------------------------------------------------------------ bitstreams / evaluation
    # Model name written into stream headers (at most 255 UTF-8 bytes).
    T.MODEL_ID = "transvfc"
    # Rate point written into stream headers (0..3 for lambda_R 16, 32, 128, 256).
    T.QUALITY_INDEX = 1
    # Evaluation keeps one open stream (reference feature) per video_id; beyond this many the
    # least recently used is closed (its next frame starts a new stream with an I-frame).
    T.EVAL_MAX_OPEN_VIDEOS = 64
    # What the task networks see in inference: "coded_features" (TransVFC: the frame's res2
    # feature through the codec and each task's FST, bits reported per frame) or "pixels" (each
    # task network on the input frame itself, no feature coding and no bits: the anchor of a
    # pixel codec whose decoded frames and bits come from a pair dataset) or "uncoded_features"
    # (the res2 feature through each task's FST without the codec, no bits: what the FSTs and
    # tails reach when coding loses nothing).
    T.INFERENCE_INPUT = "coded_features"

    # ------------------------------------------------------------------ tasks
    # Task nodes (under TASK) whose FST + frozen tail are built, in order. Every task runs in
    # inference (outputs merged: "instances", "sem_seg", ...); stage 2 trains all their FSTs.
    T.TASKS = ["DETECTION"]
    # One node per task: TAIL names a class in TRANSVFC_TASK_REGISTRY (tasks.py); FST holds
    # overrides of the FST keys above for this task's FST (loss weights of Table 2, widths).
    # A new task = a registered tail + a node here (a config file may add it).
    T.TASK = CN(new_allowed=True)

    # Object detection: the RPN + box head of the upstream Faster R-CNN (MODEL.RPN,
    # MODEL.ROI_HEADS, ...) on FPN(res3-5) of the transferred res2 feature; the same checkpoint
    # as head and perception network. Table 2 row = the FST defaults above.
    T.TASK.DETECTION = CN(new_allowed=True)
    T.TASK.DETECTION.TAIL = "FasterRCNNTail"
    T.TASK.DETECTION.FST = CN(new_allowed=True)

    # Instance segmentation (the per-frame network of video instance segmentation, used inside
    # MODEL.VCM.VIS with DETECTOR "TransVFC"): a Mask R-CNN of its own, built like the upstream
    # network (MODEL.RESNETS / FPN / RPN / ROI_* keys) with MASK_ON, whose res2 is replaced by
    # the transferred feature.
    T.TASK.INSTANCE_SEG = CN(new_allowed=True)
    T.TASK.INSTANCE_SEG.TAIL = "MaskRCNNTail"
    # Table 2, instance segmentation: lambda_task 1, lambda_x 1024, lambda_mid 8, lambda_high 64.
    T.TASK.INSTANCE_SEG.FST = CN(new_allowed=True)
    T.TASK.INSTANCE_SEG.FST.LAMBDA_TASK = 1.0
    T.TASK.INSTANCE_SEG.FST.LAMBDA_MID = 8.0
    T.TASK.INSTANCE_SEG.FST.LAMBDA_HIGH = 64.0
    # Checkpoint of the frozen network: a detectron2 Mask R-CNN, a VIS model (keys detector.*)
    # or a TransVFC checkpoint (keys tasks.instance_seg.*). "": the weights MODEL.WEIGHTS gives.
    T.TASK.INSTANCE_SEG.WEIGHTS = ""
    # Classes of the network (YouTube-VIS 2019: 40); 0: MODEL.ROI_HEADS.NUM_CLASSES.
    T.TASK.INSTANCE_SEG.NUM_CLASSES = 0
    # Input normalization the network was trained with (empty: MODEL.PIXEL_MEAN / PIXEL_STD).
    T.TASK.INSTANCE_SEG.PIXEL_MEAN = []
    T.TASK.INSTANCE_SEG.PIXEL_STD = []

    # Semantic segmentation: a DeepLab-v3 network (ResNet + ASPP head of detectron2's DeepLab
    # project) whose res2 is replaced by the transferred feature.
    T.TASK.SEM_SEG = CN(new_allowed=True)
    T.TASK.SEM_SEG.TAIL = "DeepLabV3Tail"
    # Table 2, semantic segmentation: lambda_task 10, lambda_x 1024, lambda_mid 16, lambda_high 64.
    T.TASK.SEM_SEG.FST = CN(new_allowed=True)
    T.TASK.SEM_SEG.FST.LAMBDA_HIGH = 64.0
    # Checkpoint of the frozen network: a detectron2 SemanticSegmentor (keys backbone.*,
    # sem_seg_head.*) or a TransVFC checkpoint (keys tasks.sem_seg.*). "": keep the weights
    # MODEL.WEIGHTS provides (or the random init).
    T.TASK.SEM_SEG.WEIGHTS = ""
    # Classes (VSPW: 124) and the ignored label.
    T.TASK.SEM_SEG.NUM_CLASSES = 124
    T.TASK.SEM_SEG.IGNORE_VALUE = 255
    # Input normalization and channel order the network was trained with (empty: the same as
    # MODEL.PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT; detectron2's DeepLab configs use RGB with
    # mean [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375]).
    T.TASK.SEM_SEG.PIXEL_MEAN = []
    T.TASK.SEM_SEG.PIXEL_STD = []
    T.TASK.SEM_SEG.FORMAT = ""
    # Keys of cfg.MODEL.RESNETS for the segmentation backbone (detectron2 / DeepLab names;
    # depth 18/34 builds a plain ResNet, depth >= 50 the DeepLab ResNet with dilated res5).
    # OUT_FEATURES (default res2..res5) may stop earlier: later stages are then not built.
    T.TASK.SEM_SEG.RESNETS = CN(new_allowed=True)
    T.TASK.SEM_SEG.RESNETS.DEPTH = 50
    T.TASK.SEM_SEG.RESNETS.NORM = "BN"
    T.TASK.SEM_SEG.RESNETS.STEM_TYPE = "deeplab"
    T.TASK.SEM_SEG.RESNETS.STEM_OUT_CHANNELS = 128
    T.TASK.SEM_SEG.RESNETS.RES2_OUT_CHANNELS = 256
    T.TASK.SEM_SEG.RESNETS.STRIDE_IN_1X1 = False
    T.TASK.SEM_SEG.RESNETS.RES5_DILATION = 2
    T.TASK.SEM_SEG.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
    # Keys of cfg.MODEL.SEM_SEG_HEAD for the DeepLab-v3 head (detectron2 DeepLab names;
    # IN_FEATURES defaults to ["res5"]; the output stride COMMON_STRIDE is taken from that stage).
    T.TASK.SEM_SEG.HEAD = CN(new_allowed=True)
    T.TASK.SEM_SEG.HEAD.ASPP_CHANNELS = 256
    T.TASK.SEM_SEG.HEAD.ASPP_DILATIONS = [6, 12, 18]
    T.TASK.SEM_SEG.HEAD.ASPP_DROPOUT = 0.1
    T.TASK.SEM_SEG.HEAD.CONVS_DIM = 256
    T.TASK.SEM_SEG.HEAD.NORM = "BN"
    T.TASK.SEM_SEG.HEAD.LOSS_TYPE = "hard_pixel_mining"
    T.TASK.SEM_SEG.HEAD.LOSS_WEIGHT = 1.0
