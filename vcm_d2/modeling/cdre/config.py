"""Config keys of CDRE (Sun et al., "Embedding Compression Distortion in Video Coding for
Machines"), under ``cfg.MODEL.VCM.CDRE``, and of the Transformer backbones of its Transformer
version and baselines: Swin under ``cfg.MODEL.VCM.SWIN``, ViT (ViTDet) under
``cfg.MODEL.VCM.VIT``. Every key has a default and a one-line comment.

Equation, table and section numbers refer to that paper.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_cdre_config"]


def add_cdre_config(cfg):
    """Add ``cfg.MODEL.VCM.CDRE``, ``cfg.MODEL.VCM.SWIN`` and ``cfg.MODEL.VCM.VIT``
    (idempotent). ``cfg.MODEL.VCM`` must already exist."""
    if not hasattr(cfg.MODEL, "VCM"):
        raise ValueError("add_cdre_config needs cfg.MODEL.VCM: call add_vcm_config(cfg) first")
    if hasattr(cfg.MODEL.VCM, "CDRE"):
        return cfg
    _C = cfg.MODEL.VCM
    _C.CDRE = CN()
    # ------------------------------------------------ compression-sensitive extractor (eq. 2)
    # Width of the extractor features F_i^o, F_i^c.
    _C.CDRE.EXTRACTOR_CHANNELS = 16
    # Number of stride-2 extraction blocks (scales 1/2, 1/4, 1/8).
    _C.CDRE.EXTRACTOR_BLOCKS = 3
    # Negative slope of every LeakyReLU on the encoder side (not given in the paper; torch default).
    _C.CDRE.LEAKY_RELU_SLOPE = 0.01
    # Use all extractor scales for modulation and the cosine loss; False: only the last (Table II).
    _C.CDRE.MULTI_SCALE = True
    # ------------------------------------------------ distortion encoder (eq. 3-4)
    # Width of the narrow encoder path.
    _C.CDRE.ENCODER_CHANNELS = 4
    # Number of stride-2 conv blocks before the final stride-2 conv to the latent (latent at 1/32).
    _C.CDRE.ENCODER_BLOCKS = 4
    # Channels of the compact representation y (Table IV: 6 is best); bits per 32x32 block.
    _C.CDRE.LATENT_CHANNELS = 6
    # Ablation: send all-zero maps (no information) instead of binarize(y); the decoder side, its
    # parameters and the cosine loss stay, separating the information's gain from the capacity's.
    _C.CDRE.CONSTANT_REPRESENTATION = False
    # Linear modulation F' = alpha*F + beta of encoder blocks (eq. 4); False: concatenation (Table II).
    _C.CDRE.USE_MODULATION = True
    # Kernel of the convs giving alpha, beta from concat(F^o, F^c) (or of the concat fusion); 1 matches
    # the paper's 0.89K encoder-side MACs/pixel (3 costs ~1.5K).
    _C.CDRE.MODULATION_KERNEL = 1
    # Kernel of the spatial-attention conv (encoder blocks and CNN embedding).
    _C.CDRE.SPATIAL_KERNEL = 7
    # ------------------------------------------------ distortion decoder
    # Width of the CNN decoder output F_d (at 1/4 of the input).
    _C.CDRE.DECODER_CHANNELS = 16
    # Number of 2x upsamplings of the CNN decoder (1/32 -> 1/4).
    _C.CDRE.DECODER_UPSAMPLES = 3
    # Token width of the Transformer-version decoder (tokens at 1/32, no upsampling).
    _C.CDRE.TOKEN_CHANNELS = 96
    # Residual blocks (two 3x3 convs each) of the Transformer-version decoder.
    _C.CDRE.TOKEN_DECODER_BLOCKS = 2
    # ------------------------------------------------ distortion representation embedding (eq. 6-7)
    # Backbone stages whose input receives the distortion feature, in order (Table III: 4 is best);
    # ResNet "res2".."res5", Swin "p0".."p3", ViT "b<i>" (the input of block i, e.g. "b0","b3","b6","b9").
    _C.CDRE.EMBED_STAGES = ["res2", "res3", "res4", "res5"]
    # Output widths of the CNN transform blocks d_i, one per EMBED_STAGES entry (16->16->64->128->256).
    _C.CDRE.STAGE_CHANNELS = [16, 64, 128, 256]
    # Normalization of the CNN transform blocks (eq. 6 "Norm"): "IN", "BN" or "none".
    _C.CDRE.TRANSFORM_NORM = "IN"
    # CNN fusion of d_i into f_i (eq. 6, embedding.py): "attention_fusion" f + Proj(CA(SA(f, d)))
    # or "gated" f + gamma * CA(SA(f, d)) restricted to f's channels (no projection, ~1/5 the MACs).
    _C.CDRE.EMBEDDING = "attention_fusion"
    # Reduction ratio of the SE-style channel attention of the CNN embedding.
    _C.CDRE.ATTENTION_REDUCTION = 16
    # Attention heads of the Transformer embedding's cross-attention (eq. 7 uses a single head).
    _C.CDRE.CROSS_ATTENTION_HEADS = 1
    # Hidden width of the Transformer embedding's MLP as a multiple of the stage width.
    _C.CDRE.MLP_RATIO = 1.0
    # ------------------------------------------------ loss (eq. 8)
    # Add the cosine term sum_i (1 + cos(F_i^o, F_i^c)) to the task loss (Table II ablation).
    _C.CDRE.USE_COSINE = True
    # lambda of eq. 8: 0.1 for detection / keypoints, 4.0 for video instance segmentation.
    _C.CDRE.COSINE_WEIGHT = 0.1
    # ------------------------------------------------ side bitstream
    # Coding of the binary representation: "cabac" (context-adaptive, lossless) or "raw" (packed bits).
    _C.CDRE.SIDE_STREAM_MODE = "cabac"
    # Also put each image's side-stream bytes into CDRERCNN's inference outputs as "cdre_bits"
    # (to store them); "side_bits" (their size) is always reported.
    _C.CDRE.OUTPUT_SIDE_STREAM = False
    # Frames with video_id / frame_idx (video pair datasets, the VIS model, VideoPredictor) share one
    # side stream per video: its header once, then a record per frame; False: one stream per image.
    _C.CDRE.SIDE_STREAM_PER_VIDEO = True
    # Per-video side streams kept open in inference (least recently used closed first).
    _C.CDRE.SIDE_STREAM_MAX_OPEN_VIDEOS = 64
    _add_swin_config(_C)
    _add_vit_config(_C)
    return cfg


def _add_swin_config(_C):
    """``MODEL.VCM.SWIN``: detectron2's ``SwinTransformer`` for ``build_swin_fpn_backbone`` and
    ``build_cdre_swin_fpn_backbone`` (detectron2 has no yacs keys for it). Defaults: Swin-T."""
    _C.SWIN = CN()
    # Channels C of the patch embedding (4x4 patches); stage i has 2^i * C channels.
    _C.SWIN.EMBED_DIM = 96
    # Swin blocks per stage.
    _C.SWIN.DEPTHS = [2, 2, 6, 2]
    # Attention heads per stage.
    _C.SWIN.NUM_HEADS = [3, 6, 12, 24]
    # Side of the local attention windows, in tokens.
    _C.SWIN.WINDOW_SIZE = 7
    # Hidden width of the Swin blocks' MLP as a multiple of the stage width.
    _C.SWIN.MLP_RATIO = 4.0
    # Stochastic depth rate of the last block (0 at the first, linear in between).
    _C.SWIN.DROP_PATH_RATE = 0.2
    # Output features "p<i>" (stage i, stride 2^(i+2)); FPN.IN_FEATURES takes them.
    _C.SWIN.OUT_FEATURES = ["p0", "p1", "p2", "p3"]


def _add_vit_config(_C):
    """``MODEL.VCM.VIT``: detectron2's ``ViT`` and ``SimpleFeaturePyramid`` (ViTDet) for
    ``build_vit_sfp_backbone`` and ``build_cdre_vit_sfp_backbone`` (detectron2 builds them from
    LazyConfigs only). Defaults: ViTDet's ViT-B Mask R-CNN."""
    _C.VIT = CN()
    # Token width of every block.
    _C.VIT.EMBED_DIM = 768
    # Number of blocks.
    _C.VIT.DEPTH = 12
    # Attention heads per block.
    _C.VIT.NUM_HEADS = 12
    # Side of the square patches (tokens at stride PATCH_SIZE).
    _C.VIT.PATCH_SIZE = 16
    # Hidden width of the blocks' MLP as a multiple of EMBED_DIM.
    _C.VIT.MLP_RATIO = 4.0
    # Bias of the query / key / value projections.
    _C.VIT.QKV_BIAS = True
    # Epsilon of the blocks' LayerNorms (ViTDet's MAE weights: 1e-6; torch's default is 1e-5).
    _C.VIT.LAYER_NORM_EPS = 1e-6
    # Stochastic depth rate of the last block (0 at the first, linear in between; timm's DropPath).
    _C.VIT.DROP_PATH_RATE = 0.1
    # Input side the relative position tables of the global blocks are sized for (ViTDet: 1024);
    # other sizes interpolate them. Must match the checkpoint.
    _C.VIT.IMG_SIZE = 1024
    # Absolute position embedding (interpolated from the pretraining grid to the token grid).
    _C.VIT.USE_ABS_POS = True
    # Image side of the pretraining: sizes the absolute position embedding. Must match the checkpoint.
    _C.VIT.PRETRAIN_IMG_SIZE = 224
    # The pretraining had a class token: its position embedding is kept (and dropped in use).
    _C.VIT.PRETRAIN_USE_CLS_TOKEN = True
    # Decomposed relative position biases in the attention.
    _C.VIT.USE_REL_POS = True
    # Side of the local attention windows, in tokens, of the WINDOW_BLOCK_INDEXES blocks.
    _C.VIT.WINDOW_SIZE = 14
    # Blocks with window attention; the others attend globally (ViT-B: 2, 5, 8, 11).
    _C.VIT.WINDOW_BLOCK_INDEXES = [0, 1, 3, 4, 6, 7, 9, 10]
    # Blocks followed by a residual conv bottleneck (ViTDet's "conv propagation"; none in ViT-B).
    _C.VIT.RESIDUAL_BLOCK_INDEXES = []
    # Simple feature pyramid over the last block's map (stride PATCH_SIZE).
    _C.VIT.SFP = CN()
    # Width of the pyramid levels (the heads' input width).
    _C.VIT.SFP.OUT_CHANNELS = 256
    # Resampling of the stride-PATCH_SIZE map per level, 4.0 / 2.0 / 1.0 / 0.5 (p2..p5 for patch
    # 16); a max-pooled p6 is added on top, as in FPN.
    _C.VIT.SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    # Normalization of the pyramid convs ("LN": detectron2's channel LayerNorm).
    _C.VIT.SFP.NORM = "LN"
    # Pad every batch to this square side (ViTDet: 1024, for its 1024-px inputs); 0: pad to the
    # pyramid's coarsest stride only. Inputs must fit: INPUT.MAX_SIZE_* <= SQUARE_PAD.
    _C.VIT.SFP.SQUARE_PAD = 1024
