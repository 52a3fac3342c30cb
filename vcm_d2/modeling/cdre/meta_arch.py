"""``CDRERCNN``: detectron2's GeneralizedRCNN (Faster / Keypoint / Mask R-CNN) with CDRE.

Each input dict holds the compressed frame as "image" and its side information as either

* "original" (CHW, same format and size as "image"; the encoder side): the model computes
  y = E(x, x_hat | F^o, F^c) and y_hat = binarize(y) (straight-through) itself, or
* "cdre_bits" (bytes of the side stream of this image, ``encode_side_stream``): the model
  decodes y_hat from them (the receiver's situation).

In training "original" is required (the encoder side is trained); in inference "cdre_bits"
takes precedence when both are given, since that is what a receiver has.

Side stream geometry. The encoder side runs per image on the image's own (unpadded, already
resized) area, so its side stream depends only on that image -- never on the other images of
a batch or on the padding -- and holds ceil(h/s) x ceil(w/s) positions (s = latent stride,
32 by default). For the backbone, each image's map is placed top-left in a zero map of the
padded batch's ceil(H/s) x ceil(W/s) grid; with FPN (size_divisibility 32) that is exactly
padded image / 32. The original path and the bitstream path therefore feed the backbone the
very same tensor, and give identical predictions.

Inference outputs get "side_bits" (8 * len(the image's side-stream bytes), header included,
coded with ``SIDE_STREAM_MODE``; also when the model encoded the stream itself from
"original", so the rate is always counted by ``RateTaskEvaluator``) and, with
``OUTPUT_SIDE_STREAM``, "cdre_bits" (the bytes, to store them).

Videos. With ``SIDE_STREAM_PER_VIDEO`` (default), inputs that carry ``video_id`` and
``frame_idx`` -- per-frame records of video datasets, fed in dataset order by detectron2's test
loader; the frames the VIS model runs through this network; ``VideoPredictor`` -- belong to
their video's side stream (``video_side_stream.py``): a frame's "cdre_bits" are its record,
with the stream header in front on the frame that opens the stream, and its "side_bits" count
exactly those bytes, so a video's side bits add up to its whole stream. Which frames continue
a stream is decided by ``SideStreamSessions``, the same way at the sender and the receiver.
The model keeps one set of open streams per role -- ``encode_side_streams`` (sender),
inference from "original" (both ends in one), inference from "cdre_bits" (receiver) -- and
closes them all on ``train()`` / ``eval()``. Inputs without ``video_id`` / ``frame_idx`` keep
self-contained image streams (``side_stream.py``).
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch.nn import functional as F

from ...utils.rate import SIDE_BITS
from .backbone import DistortionAwareBackbone, _ceil_div
from .distortion_codec import CDREEncoderSide
from .loss import CDRECosineLoss
from .side_stream import SIDE_STREAM_MODES, side_stream_bits
from .video_side_stream import SideStreamSessions

__all__ = ["CDRERCNN"]

# Keys of the per-image side information in input and output dicts.
ORIGINAL_KEY = "original"
SIDE_STREAM_KEY = "cdre_bits"
# Roles of the model's side-stream sessions (module docstring).
SENDER, INFERENCE_ENCODER, RECEIVER = "sender", "inference_encoder", "receiver"


@META_ARCH_REGISTRY.register()
class CDRERCNN(GeneralizedRCNN):
    """GeneralizedRCNN + CDRE encoder side (``cdre_encoder``) + cosine loss (eq. 8).

    The decoder side lives in the backbone (a ``DistortionAwareBackbone``, e.g.
    ``build_cdre_resnet_fpn_backbone``), so the heads are detectron2's, unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        cdre_encoder: CDREEncoderSide,
        cdre_loss: CDRECosineLoss,
        side_stream_mode: str = "cabac",
        output_side_stream: bool = False,
        side_stream_per_video: bool = True,
        max_open_videos: int = 64,
        **kwargs,
    ):
        """
        Args:
            cdre_encoder: extractor + distortion encoder + binarization (encoder side).
            cdre_loss: lambda * sum_i (1 + cos(F_i^o, F_i^c)) as a loss dict (eq. 8).
            side_stream_mode: "cabac" or "raw" coding of the side stream.
            output_side_stream: add the side-stream bytes to each inference output as
                "cdre_bits".
            side_stream_per_video: one side stream per video for inputs with ``video_id`` and
                ``frame_idx`` (module docstring); False: one stream per image.
            max_open_videos: per-video side streams kept open per role.
            kwargs: GeneralizedRCNN's arguments; ``backbone`` must be distortion-aware.
        """
        super().__init__(**kwargs)
        if not isinstance(self.backbone, DistortionAwareBackbone):
            raise ValueError(
                f"CDRERCNN needs a CDRE backbone (MODEL.BACKBONE.NAME build_cdre_resnet_fpn_backbone, "
                f"build_cdre_resnet_backbone, build_cdre_swin_fpn_backbone or build_cdre_vit_sfp_backbone), "
                f"got {type(self.backbone).__name__}"
            )
        side = self.backbone.cdre_decoder_side
        enc = (cdre_encoder.encoder.latent_channels, cdre_encoder.latent_stride)
        if (side.latent_channels, side.latent_stride) != enc:
            raise ValueError(
                f"encoder side (latent {enc[0]} ch, stride {enc[1]}) and backbone decoder side "
                f"(latent {side.latent_channels} ch, stride {side.latent_stride}) disagree"
            )
        if side_stream_mode not in SIDE_STREAM_MODES:
            raise ValueError(f"SIDE_STREAM_MODE must be one of {SIDE_STREAM_MODES}, got {side_stream_mode!r}")
        self.cdre_encoder = cdre_encoder
        self.cdre_loss = cdre_loss
        self.side_stream_mode = side_stream_mode
        self.output_side_stream = bool(output_side_stream)
        self.side_streams = {role: SideStreamSessions(side_stream_mode, side_stream_per_video, max_open_videos)
                             for role in (SENDER, INFERENCE_ENCODER, RECEIVER)}

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        c = cfg.MODEL.VCM.CDRE
        ret.update(
            cdre_encoder=CDREEncoderSide(cfg),
            cdre_loss=CDRECosineLoss(cfg),
            side_stream_mode=c.SIDE_STREAM_MODE,
            output_side_stream=c.OUTPUT_SIDE_STREAM,
            side_stream_per_video=c.SIDE_STREAM_PER_VIDEO,
            max_open_videos=c.SIDE_STREAM_MAX_OPEN_VIDEOS,
        )
        return ret

    def train(self, mode: bool = True):
        # A new phase (the weights may have changed): every side stream starts anew.
        for sessions in self.side_streams.values():
            sessions.reset()
        return super().train(mode)

    @property
    def latent_stride(self) -> int:
        return self.cdre_encoder.latent_stride

    # ------------------------------------------------------------------ side information
    def _normalized_original(self, inp: Dict, index: int) -> torch.Tensor:
        original, image = inp[ORIGINAL_KEY], inp["image"]
        if not isinstance(original, torch.Tensor) or original.shape != image.shape:
            shape = tuple(original.shape) if isinstance(original, torch.Tensor) else type(original).__name__
            raise ValueError(
                f"input {index}: 'original' must be a tensor shaped like 'image' {tuple(image.shape)} "
                f"(same format, same augmentation), got {shape}"
            )
        original = self._move_to_current_device(original)
        return (original - self.pixel_mean) / self.pixel_std

    def _encode_one(self, original: torch.Tensor, image: torch.Tensor):
        """Encoder side on one image's own area: (y_hat (C, h', w'), feats_o, feats_c)."""
        out = self.cdre_encoder(original[None], image[None])
        return out.y_hat[0], out.feats_o, out.feats_c

    def _decode_one(self, inp: Dict, index: int, size: Tuple[int, int]) -> torch.Tensor:
        data = inp[SIDE_STREAM_KEY]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"input {index}: 'cdre_bits' must be bytes, got {type(data).__name__}")
        expected = (self.cdre_encoder.encoder.latent_channels,) + tuple(
            _ceil_div(n, self.latent_stride) for n in size
        )
        try:
            y_hat = self.side_streams[RECEIVER].decode(
                bytes(data), expected, inp.get("video_id"), inp.get("frame_idx"))
        except ValueError as e:
            raise ValueError(f"input {index}: corrupt or invalid CDRE side stream ('cdre_bits'): {e}") from e
        if tuple(y_hat.shape) != expected:
            raise ValueError(
                f"input {index}: side stream holds a map of shape {tuple(y_hat.shape)} but this model and an "
                f"image of size {tuple(size)} need {expected}: it was coded for another image size or model"
            )
        return y_hat.to(device=self.device, dtype=self.pixel_mean.dtype)

    def _side_information(self, batched_inputs: List[Dict], images: ImageList, *, use_streams: bool):
        """y_hat for the padded batch, per-image (F^o, F^c) of the encoded images, and the
        side streams (from the input, or encoded here when ``use_streams``; else None)."""
        grid = [_ceil_div(n, self.latent_stride) for n in images.tensor.shape[-2:]]
        maps, feats, streams = [], [], []
        for i, inp in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            if SIDE_STREAM_KEY in inp and not self.training:
                y_hat = self._decode_one(inp, i, (h, w))
                stream = bytes(inp[SIDE_STREAM_KEY])
            elif ORIGINAL_KEY in inp:
                original = self._normalized_original(inp, i)
                y_hat, f_o, f_c = self._encode_one(original, images.tensor[i, :, :h, :w])
                feats.append((f_o, f_c))
                stream = self._encode_stream(INFERENCE_ENCODER, y_hat, inp) if use_streams else None
            elif self.training:
                raise ValueError(
                    f"input {i}: training CDRERCNN needs the original frame as 'original' "
                    "(set VCM.PAIRS.LOAD_ORIGINAL True with a pair dataset)"
                )
            else:
                raise ValueError(
                    f"input {i}: CDRERCNN needs side information: 'original' (the uncompressed frame, "
                    "encoder side) or 'cdre_bits' (the side stream bytes)"
                )
            streams.append(stream)
            pad = (0, grid[1] - y_hat.shape[-1], 0, grid[0] - y_hat.shape[-2])
            maps.append(F.pad(y_hat, pad))
        return torch.stack(maps), feats, streams

    def _encode_stream(self, role: str, y_hat: torch.Tensor, inp: Dict) -> bytes:
        return self.side_streams[role].encode(y_hat, inp.get("video_id"), inp.get("frame_idx"))

    @torch.no_grad()
    def encode_side_streams(self, batched_inputs: List[Dict]) -> List[bytes]:
        """Encoder side only: the side stream of each input (which needs "image" and
        "original"); a frame of a video gets its record in its video's stream (module
        docstring)."""
        for i, inp in enumerate(batched_inputs):
            if ORIGINAL_KEY not in inp:
                raise ValueError(f"input {i}: encoding the side stream needs 'original'")
        images = self.preprocess_image(batched_inputs)
        streams = []
        for i, inp in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            y_hat, _, _ = self._encode_one(self._normalized_original(inp, i), images.tensor[i, :, :h, :w])
            streams.append(self._encode_stream(SENDER, y_hat, inp))
        return streams

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: detector losses + "loss_cdre_cosine". Inference: see ``inference``."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        y_hat, feats, _ = self._side_information(batched_inputs, images, use_streams=False)
        features = self.backbone(images.tensor, y_hat=y_hat)

        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            if "proposals" not in batched_inputs[0]:
                raise ValueError("CDRERCNN without a proposal generator needs 'proposals' in the inputs")
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            proposal_losses = {}
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)

        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        losses.update(self._cosine_losses(feats))
        return losses

    def _cosine_losses(self, feats) -> Dict[str, torch.Tensor]:
        """Eq. 8 term averaged over the images (each image is its own mean over pixels)."""
        per_image = [self.cdre_loss(f_o, f_c) for f_o, f_c in feats]
        if not per_image or not per_image[0]:
            return {}
        return {k: sum(d[k] for d in per_image) / len(per_image) for k in per_image[0]}

    def inference(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List] = None,
        do_postprocess: bool = True,
    ):
        """As GeneralizedRCNN.inference; with ``do_postprocess`` each output dict also gets
        "side_bits" (and "cdre_bits" with ``output_side_stream``)."""
        if self.training:
            raise RuntimeError("CDRERCNN.inference called in training mode; call model.eval() first")
        images = self.preprocess_image(batched_inputs)
        y_hat, _, streams = self._side_information(batched_inputs, images, use_streams=True)
        features = self.backbone(images.tensor, y_hat=y_hat)

        if detected_instances is None:
            if self.proposal_generator is not None:
                proposals, _ = self.proposal_generator(images, features, None)
            else:
                if "proposals" not in batched_inputs[0]:
                    raise ValueError("CDRERCNN without a proposal generator needs 'proposals' in the inputs")
                proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)

        if not do_postprocess:
            return results
        outputs = GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        for out, stream in zip(outputs, streams):
            out[SIDE_BITS] = side_stream_bits(stream)
            if self.output_side_stream:
                out[SIDE_STREAM_KEY] = stream
        return outputs
