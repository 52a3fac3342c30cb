"""CDRE: compression distortion representation embedding (Sun et al.), as backbone-agnostic modules.

Encoder side (where the original frame exists): ``CDREEncoderSide`` =
``CompressionSensitiveExtractor`` (eq. 2) + ``DistortionEncoder`` (eq. 3-4) + ``binarize`` (eq. 5);
the binary map y_hat travels in the side stream (``encode_side_stream`` / ``decode_side_stream``
for an image; for the frames of a video one stream with its header once, ``video_side_stream``).
Decoder side: ``DistortionDecoder`` (CNN) or ``TokenDistortionDecoder`` (Transformer) gives d_0,
then ``DistortionEmbedding`` (eq. 6) or ``CrossAttentionEmbedding`` (eq. 7) fuses it into the
backbone stage by stage. Training adds ``CDRECosineLoss`` (eq. 8). Config: ``add_cdre_config``.

detectron2 integration (importing registers them): backbones ``build_cdre_resnet_fpn_backbone``
and ``build_cdre_resnet_backbone`` (CNN decoder side inside detectron2's unchanged ResNet / FPN),
``build_cdre_swin_fpn_backbone`` (Transformer decoder side inside detectron2's unchanged Swin /
FPN) and the plain ``build_swin_fpn_backbone`` (Config: ``MODEL.VCM.SWIN``),
``build_cdre_vit_sfp_backbone`` (the same inside detectron2's unchanged ViT /
SimpleFeaturePyramid, ViTDet) and the plain ``build_vit_sfp_backbone`` (Config:
``MODEL.VCM.VIT``), meta-architecture ``CDRERCNN`` (encoder side, cosine loss, side streams)
and ``CDREPredictor``.
"""
from .backbone import (
    CDREDecoderSide,
    CDREFPN,
    CDREHost,
    CDREResNet,
    DistortionAwareBackbone,
    DistortionAwareInput,
    DistortionAwareNeck,
    build_cdre_resnet_backbone,
    build_cdre_resnet_fpn_backbone,
)
from .config import add_cdre_config
from .distortion_codec import (
    CDREEncoderSide,
    DistortionDecoder,
    DistortionDecoderBase,
    DistortionEncoder,
    EncoderSideOutput,
    TokenDistortionDecoder,
    binarize,
)
from .embedding import CrossAttentionEmbedding, DistortionEmbedding
from .extractor import CompressionSensitiveExtractor
from .loss import CDRECosineLoss, cdre_cosine_loss
from .meta_arch import CDRERCNN
from .predictor import CDREPredictor
from .swin_backbone import (
    CDRESwinTransformer,
    build_cdre_swin_fpn_backbone,
    build_swin_fpn_backbone,
)
from .vit_backbone import (
    CDRESimpleFeaturePyramid,
    CDREViT,
    build_cdre_vit_sfp_backbone,
    build_vit_sfp_backbone,
)
from .side_stream import (
    SideStreamHeader,
    decode_side_stream,
    encode_side_stream,
    parse_side_stream_header,
    side_stream_bits,
)
from .video_side_stream import (
    SideStreamSessions,
    VideoSideStreamDecoder,
    VideoSideStreamEncoder,
    encode_video_side_stream,
    read_video_side_stream,
)

__all__ = [
    "add_cdre_config",
    "CompressionSensitiveExtractor",
    "DistortionEncoder",
    "binarize",
    "DistortionDecoderBase",
    "DistortionDecoder",
    "TokenDistortionDecoder",
    "CDREEncoderSide",
    "EncoderSideOutput",
    "DistortionEmbedding",
    "CrossAttentionEmbedding",
    "cdre_cosine_loss",
    "CDRECosineLoss",
    "encode_side_stream",
    "decode_side_stream",
    "parse_side_stream_header",
    "side_stream_bits",
    "SideStreamHeader",
    "encode_video_side_stream",
    "read_video_side_stream",
    "VideoSideStreamEncoder",
    "VideoSideStreamDecoder",
    "SideStreamSessions",
    "CDREDecoderSide",
    "DistortionAwareBackbone",
    "DistortionAwareInput",
    "DistortionAwareNeck",
    "CDREHost",
    "CDREResNet",
    "CDREFPN",
    "build_cdre_resnet_backbone",
    "build_cdre_resnet_fpn_backbone",
    "CDRESwinTransformer",
    "build_swin_fpn_backbone",
    "build_cdre_swin_fpn_backbone",
    "CDREViT",
    "CDRESimpleFeaturePyramid",
    "build_vit_sfp_backbone",
    "build_cdre_vit_sfp_backbone",
    "CDRERCNN",
    "CDREPredictor",
]
