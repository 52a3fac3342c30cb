"""``TransVFC``: the TransVFC framework (Fig. 2) as a detectron2 meta-architecture.

    image -> head (stem + res2, frozen) -> F_t -> video feature codec -> F^_t
          -> FST^i -> F^^i_t -> task tail i (frozen) -> predictions of task i

Modules and parameter names:

* ``backbone``: the upstream Faster R-CNN's ResNet-FPN (MODEL.BACKBONE / RESNETS / FPN). Its
  stem + res2 are the head; res3-5 + FPN are the perception network p2..p6 (``perception.py``).
* ``codec``: ``TransVFCCodec`` (MODEL.VCM.TRANSVFC).
* ``fst.<task>``: one ``FeatureSpaceTransform`` per task of ``MODEL.VCM.TRANSVFC.TASKS``.
* ``tasks.<task>``: the frozen tails (``tasks.py``); the detection tail holds the upstream
  ``proposal_generator`` / ``roi_heads``.

A standard detectron2 Faster R-CNN R50-FPN checkpoint (MODEL.WEIGHTS) therefore supplies head,
perception network and detection tail: ``backbone.*`` matches as is and ``proposal_generator.*``
/ ``roi_heads.*`` are mapped to ``tasks.detection.*`` when loading (shape mismatches are skipped
with a warning, as detectron2 does).

Training (``MODEL.VCM.TRANSVFC.TRAIN_STAGE``; the meta-architecture freezes everything else and
keeps frozen modules in eval mode):

* "codec" (stage 1, eq. 5-6): clips -> res2 -> random TRAIN_CROP_SIZE crop (same window for
  every frame of a clip) -> codec (I-frame, then P-frames) -> ``codec_loss`` with the Table 1
  stage of the current iteration + CompressAI's aux loss.
* "fst" (stage 2, eq. 7-8): the frozen codec in eval mode (rounding, i.e. exactly the decoded
  features) -> each task's FST -> ``fst_loss`` (L_task of the frozen tail, D_mid, D_high, D_x;
  D_x compares the FST's coarse image with the frame scaled to [0, 1]).
* "task": the task tails on uncoded features (to train a task network that has no checkpoint).

Inputs in training are clips ``{"frames": [frame dicts]}`` (``vcm_d2.data.ClipDatasetMapper``)
or single frame dicts (one-frame clips: I-frames only), all with the same clip length.

Inference / evaluation: one frame dict at a time, its res2 feature coded for real within its
video's stream (``video_id`` / ``frame_idx``; GOP rules in ``stream.py``). Detectron2's
inference loader keeps dataset order, so a per-frame dataset (video by video, frames in order)
is coded exactly like a video. Each output holds the task predictions plus ``"bits"``: the
frame's share of the stream, so ``RateTaskEvaluator`` reports the bpp of the actual bitstreams.

Bitstreams: ``stream_coder`` (``FeatureStreamCoder``, ``stream.py``) codes the features;
``encode_video`` (images) / ``decode_frames`` (features) write and read the container.
"""
import itertools
import logging
import math
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...utils.rate import BITS
from .codec import TransVFCCodec
from .container import ParsedStream
from .fst import FeatureSpaceTransform
from .losses import CodecLossWeights, FSTLossWeights, codec_loss, fst_loss, stage_for_iter
from .perception import SplitBackbone
from .solver import TransVFCCodecStages
from .stream import DecodedFrame, EncodedVideo, FeatureStreamCoder
from .tasks import TaskTail, build_task_tail, task_key

__all__ = ["TransVFC", "TRAIN_STAGES", "INFERENCE_INPUTS", "PIXEL_RANGE"]

logger = logging.getLogger(__name__)

TRAIN_STAGES = ("codec", "fst", "task")
INFERENCE_INPUTS = ("coded_features", "uncoded_features", "pixels")
# Module (attribute) trained in each stage; every other module is frozen and kept in eval mode.
_TRAINED_MODULE = {"codec": "codec", "fst": "fst", "task": "tasks"}
_ALL_MODULES = ("backbone", "codec", "fst", "tasks")
_PERCEPTION_LEVELS = ("p2", "p3", "p4", "p5", "p6")
PIXEL_RANGE = 255.0  # 8-bit pixels; the FST's coarse image lives in [0, 1]


def _check_codec_matches(T, split: SplitBackbone) -> None:
    """The codec's widths must match the upstream network it codes."""
    if T.IN_CHANNELS != split.feature_channels or T.FEATURE_STRIDE != split.feature_stride:
        raise ValueError(
            f"MODEL.VCM.TRANSVFC.IN_CHANNELS/FEATURE_STRIDE = {T.IN_CHANNELS}/{T.FEATURE_STRIDE} "
            f"but the backbone's res2 has {split.feature_channels} channels at stride "
            f"{split.feature_stride}")
    shapes = split.output_shape
    missing = [k for k in _PERCEPTION_LEVELS if k not in shapes]
    if missing:
        raise ValueError(f"the perception network must output {_PERCEPTION_LEVELS} (a ResNet-FPN "
                         f"with res2 in MODEL.FPN.IN_FEATURES), missing {missing}")
    channels = {shapes[k].channels for k in _PERCEPTION_LEVELS}
    if channels != {T.PERCEPTION_CHANNELS}:
        raise ValueError(f"MODEL.VCM.TRANSVFC.PERCEPTION_CHANNELS={T.PERCEPTION_CHANNELS} but the "
                         f"FPN outputs {sorted(channels)} channels")


def _task_fst_config(cfg, name: str, feature_shape):
    """cfg with ``TRANSVFC.FST`` = the global FST node + the task's overrides + the tail's
    feature shape (OUT_CHANNELS / OUT_STRIDE)."""
    out = cfg.clone()
    out.defrost()
    fst = out.MODEL.VCM.TRANSVFC.FST
    overrides = cfg.MODEL.VCM.TRANSVFC.TASK[name].get("FST", None)
    if overrides:
        unknown = sorted(set(overrides) - set(fst))
        if unknown:
            raise ValueError(f"MODEL.VCM.TRANSVFC.TASK.{name}.FST has keys that are not FST keys: "
                             f"{unknown} (known: {sorted(fst)})")
        fst.merge_from_other_cfg(overrides)
    fst.OUT_CHANNELS = feature_shape.channels
    fst.OUT_STRIDE = feature_shape.stride
    return out


@META_ARCH_REGISTRY.register()
class TransVFC(nn.Module):
    """Head + video feature codec + one FST per task + frozen task tails (module docstring)."""

    # Training inputs are clips (inter-prediction needs consecutive frames): a wrapper such as
    # the VIS model passes them on as they are.
    trains_on_clips = True

    @configurable
    def __init__(self, *, backbone: nn.Module, codec: TransVFCCodec,
                 tails: Mapping[str, TaskTail], fsts: Mapping[str, FeatureSpaceTransform],
                 fst_weights: Mapping[str, FSTLossWeights], codec_weights: CodecLossWeights,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 train_stage: str = "codec",
                 stage_ends: Sequence[int] = (20000, 40000, 80000, 100000, 120000),
                 train_crop_size: int = 128, aux_loss_weight: float = 1.0,
                 model_id: str = "transvfc", quality_index: int = 1,
                 max_open_videos: int = 64, inference_input: str = "coded_features"):
        """
        Args:
            backbone: the upstream ResNet-FPN (head + perception network).
            codec: the video feature codec (codes ``backbone``'s res2).
            tails / fsts / fst_weights: per task key, the frozen tail, its FST and the FST
                loss weights (eq. 7); the three must have the same keys.
            codec_weights: eq. (5) weights; stage_ends: Table 1 stage boundaries (iterations).
            pixel_mean, pixel_std: input normalization (MODEL.PIXEL_MEAN / PIXEL_STD).
            train_stage: one of ``TRAIN_STAGES``.
            train_crop_size: stage-1 feature crop (feature pixels, 0: none).
            aux_loss_weight: weight of the codec's aux loss in stage 1.
            model_id, quality_index, max_open_videos: of the ``FeatureStreamCoder``.
            inference_input: one of ``INFERENCE_INPUTS`` (MODEL.VCM.TRANSVFC.INFERENCE_INPUT).
        """
        super().__init__()
        if train_stage not in TRAIN_STAGES:
            raise ValueError(f"TRAIN_STAGE must be one of {TRAIN_STAGES}, got {train_stage!r}")
        if not set(tails) == set(fsts) == set(fst_weights):
            raise ValueError("tails, fsts and fst_weights need the same task keys")
        if train_stage in ("fst", "task") and not tails:
            raise ValueError(f"TRAIN_STAGE {train_stage!r} needs at least one task in TASKS")
        if inference_input not in INFERENCE_INPUTS:
            raise ValueError(f"INFERENCE_INPUT must be one of {INFERENCE_INPUTS}, got "
                             f"{inference_input!r}")
        if train_crop_size < 0:
            raise ValueError(f"TRAIN_CROP_SIZE must be >= 0, got {train_crop_size}")
        self.backbone = backbone
        self.split = SplitBackbone(backbone)
        self.codec = codec
        self.fst = nn.ModuleDict(dict(fsts))
        self.tasks = nn.ModuleDict(dict(tails))
        self.fst_weights = dict(fst_weights)
        self.codec_weights = codec_weights
        self.train_stage = train_stage
        self.stage_ends = [int(e) for e in stage_ends]
        self.train_crop_size = int(train_crop_size)
        self.aux_loss_weight = float(aux_loss_weight)
        self.stream_coder = FeatureStreamCoder(codec, self.split, model_id=model_id,
                                               quality_index=quality_index,
                                               max_open_videos=max_open_videos)
        self.inference_input = inference_input
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"{self.pixel_mean} and {self.pixel_std} have different shapes")
        self._set_trainable()
        self._register_load_state_dict_pre_hook(self._map_checkpoint_aliases)

    @classmethod
    def from_config(cls, cfg):
        T = cfg.MODEL.VCM.TRANSVFC
        backbone = build_backbone(cfg)
        split = SplitBackbone(backbone)
        _check_codec_matches(T, split)
        names = list(T.TASKS)
        keys = [task_key(n) for n in names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"MODEL.VCM.TRANSVFC.TASKS has duplicates: {names}")
        schedule = TransVFCCodecStages.__name__
        if T.TRAIN_STAGE == "codec" and cfg.SOLVER.LR_SCHEDULER_NAME != schedule:
            logger.warning("TransVFC stage 1 (TRAIN_STAGE codec) with SOLVER.LR_SCHEDULER_NAME "
                           "%r: the paper trains the codec with the Table 1 learning rates, %r",
                           cfg.SOLVER.LR_SCHEDULER_NAME, schedule)
        tails, fsts, weights = {}, {}, {}
        for name, key in zip(names, keys):
            tails[key] = build_task_tail(cfg, name, split)
            fst_cfg = _task_fst_config(cfg, name, tails[key].feature_shape())
            fsts[key] = FeatureSpaceTransform(fst_cfg)
            weights[key] = FSTLossWeights.from_config(fst_cfg)
        return {
            "backbone": backbone,
            "codec": TransVFCCodec(cfg),
            "tails": tails,
            "fsts": fsts,
            "fst_weights": weights,
            "codec_weights": CodecLossWeights.from_config(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "train_stage": T.TRAIN_STAGE,
            "stage_ends": T.STAGE_ENDS,
            "train_crop_size": T.TRAIN_CROP_SIZE,
            "aux_loss_weight": T.AUX_LOSS_WEIGHT,
            "model_id": T.MODEL_ID,
            "quality_index": T.QUALITY_INDEX,
            "max_open_videos": T.EVAL_MAX_OPEN_VIDEOS,
            "inference_input": T.INFERENCE_INPUT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ freezing / modes
    def _set_trainable(self) -> None:
        trained = _TRAINED_MODULE[self.train_stage]
        for name in _ALL_MODULES:
            getattr(self, name).requires_grad_(name == trained)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            trained = _TRAINED_MODULE[self.train_stage]
            for name in _ALL_MODULES:
                if name != trained:
                    getattr(self, name).eval()
        # Weights may change in between: recompute the CDF tables and reopen every stream.
        self.stream_coder.reset()
        return self

    def prepare_for_coding(self) -> None:
        """Compute the entropy coders' CDF tables from the current weights (once per eval
        session; call again after loading weights while in eval mode)."""
        self.stream_coder.prepare()

    def _map_checkpoint_aliases(self, state_dict, prefix, *args) -> None:
        """Rename standard-checkpoint keys to the tails' names (``proposal_generator.*`` ->
        ``tasks.detection.proposal_generator.*``), skipping shape mismatches with a warning."""
        own, consumed = None, set()
        for key, tail in self.tasks.items():
            for src, dst in tail.checkpoint_aliases().items():
                for k in [k for k in state_dict if k.startswith(prefix + src)]:
                    new = f"tasks.{key}.{dst}{k[len(prefix + src):]}"
                    if prefix + new in state_dict:
                        continue
                    own = self.state_dict() if own is None else own
                    consumed.add(k)
                    if new not in own:
                        continue
                    value = state_dict[k]
                    if tuple(own[new].shape) != tuple(value.shape):
                        logger.warning("Skip loading %s into %s: shape %s in the checkpoint, "
                                       "%s in the model", k, new, tuple(value.shape),
                                       tuple(own[new].shape))
                        continue
                    state_dict[prefix + new] = value
        for k in consumed:
            del state_dict[k]

    # ------------------------------------------------------------------ helpers
    def _normalize(self, image: Tensor) -> Tensor:
        image = image.to(self.device)
        if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
            raise ValueError(f"expected a {self.pixel_mean.shape[0]} x H x W image, got "
                             f"{tuple(image.shape)}")
        return (image.float() - self.pixel_mean) / self.pixel_std

    def preprocess_image(self, frames: Sequence[dict]) -> ImageList:
        images = [self._normalize(f["image"]) for f in frames]
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)

    def raw_images(self, images: ImageList) -> Tensor:
        """The padded batch back in input units (INPUT.FORMAT, 0..255; padding = the mean)."""
        return images.tensor * self.pixel_std + self.pixel_mean

    def unit_images(self, images: ImageList) -> Tensor:
        """The padded batch in [0, 1], INPUT.FORMAT channel order: the target of the FST's
        coarse image (D_x; lambda_x = 1024 of Table 2 assumes this range)."""
        return self.raw_images(images) / PIXEL_RANGE

    def image_to_feature(self, image: Tensor) -> Tensor:
        """res2 feature (1 x C x h x w) of one C x H x W image in INPUT.FORMAT."""
        return self.split.head(self._normalize(image)[None])

    def transfer(self, key: str, feature: Tensor) -> Dict[str, Optional[Tensor]]:
        """FST of task ``key`` on a decoded feature ({"feature", "coarse_image"})."""
        if key not in self.fst:
            raise ValueError(f"unknown task {key!r}; this model has {list(self.fst)}")
        return self.fst[key](feature)

    def run_tasks(self, feature: Tensor, image_sizes: Sequence[Tuple[int, int]],
                  output_sizes: Sequence[Tuple[int, int]],
                  tasks: Optional[Sequence[str]] = None) -> List[dict]:
        """Predictions of ``tasks`` (default: all) from decoded features (N x C x h x w) of
        images of ``image_sizes``, rescaled to ``output_sizes``."""
        results = [{} for _ in image_sizes]
        for key in (list(self.tasks) if tasks is None else tasks):
            transferred = self.transfer(key, feature)["feature"]
            tail = self.tasks[key]
            outs = tail.inference(tail.high_features(transferred), image_sizes, output_sizes)
            for r, o in zip(results, outs):
                r.update(o)
        return results

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        clips = [inp["frames"] if "frames" in inp else [inp] for inp in batched_inputs]
        lengths = sorted({len(c) for c in clips})
        if len(lengths) != 1 or lengths[0] < 1:
            raise ValueError(f"all clips of a batch need the same number of frames, got {lengths}")
        num_frames, batch = lengths[0], len(clips)
        frames = [clip[t] for t in range(num_frames) for clip in clips]  # time-major
        images = self.preprocess_image(frames)
        if self.train_stage == "task":
            return self._task_losses(frames, images)
        with torch.no_grad():
            features = list(self.split.head(images.tensor).split(batch))
        if self.train_stage == "codec":
            return self._codec_losses(features, images.image_sizes[:batch])
        return self._fst_losses(features, frames, images)

    def _random_crop(self, features: List[Tensor], image_sizes) -> List[Tensor]:
        """Same random TRAIN_CROP_SIZE window in every frame of a clip, inside each clip's
        unpadded area (clamped to the smallest clip of the batch)."""
        if not self.train_crop_size:
            return features
        stride = self.split.feature_stride
        valid = [(math.ceil(h / stride), math.ceil(w / stride)) for h, w in image_sizes]
        ch = min([self.train_crop_size] + [v[0] for v in valid])
        cw = min([self.train_crop_size] + [v[1] for v in valid])
        crops = [[] for _ in features]
        for b, (vh, vw) in enumerate(valid):
            y = int(torch.randint(0, vh - ch + 1, ()))
            x = int(torch.randint(0, vw - cw + 1, ()))
            for t, f in enumerate(features):
                crops[t].append(f[b:b + 1, :, y:y + ch, x:x + cw])
        return [torch.cat(c) for c in crops]

    def _codec_losses(self, features: List[Tensor], image_sizes) -> Dict[str, Tensor]:
        features = self._random_crop(features, image_sizes)
        out = self.codec(features, self.split.rest)
        storage = get_event_storage()
        stage = stage_for_iter(storage.iter, self.stage_ends)
        losses, stats = codec_loss(out, features, self.codec_weights, perception=self.split.rest,
                                   stage=stage, pad_multiple=self.codec.pad_multiple)
        if self.aux_loss_weight > 0:
            losses["loss_aux"] = self.aux_loss_weight * self.codec.aux_loss()
        storage.put_scalars(transvfc_stage=stage.index,
                            **{f"transvfc/{k}": float(v) for k, v in stats.items()})
        return losses

    def _fst_losses(self, features: List[Tensor], frames: Sequence[dict],
                    images: ImageList) -> Dict[str, Tensor]:
        with torch.no_grad():  # the codec is frozen and in eval mode: the decoded features
            decoded = torch.cat(self.codec(features, self.split.rest)["f_hat"])
        losses, scalars = {}, {}
        for key, fst in self.fst.items():
            tail = self.tasks[key]
            transferred = fst(decoded)
            with torch.no_grad():
                target = tail.target_feature(self.raw_images(images))
                high = tail.high_features(target)
            feature_hat = transferred["feature"]
            if feature_hat.shape != target.shape:
                raise ValueError(f"task {key!r}: the FST gives {tuple(feature_hat.shape)}, the "
                                 f"tail's own feature is {tuple(target.shape)}")
            high_hat = tail.high_features(feature_hat)
            task_losses = tail.losses(high_hat, frames, images.image_sizes)
            coarse = transferred["coarse_image"]
            terms, stats = fst_loss(
                self.fst_weights[key], task_loss=sum(task_losses.values()),
                feature_hat=feature_hat, feature=target, high_hat=high_hat, high=high,
                image_hat=coarse, image=None if coarse is None else self.unit_images(images))
            losses.update({f"loss_{key}_{k[len('loss_'):]}": v for k, v in terms.items()})
            scalars.update({f"transvfc/{key}/{k}": float(v) for k, v in stats.items()})
        get_event_storage().put_scalars(**scalars)
        return losses

    def _task_losses(self, frames: Sequence[dict], images: ImageList) -> Dict[str, Tensor]:
        losses = {}
        for key, tail in self.tasks.items():
            high = tail.high_features(tail.target_feature(self.raw_images(images)))
            for k, v in tail.losses(high, frames, images.image_sizes).items():
                losses[f"{k}_{key}" if k in losses else k] = v
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, batched_inputs: List[dict]) -> List[dict]:
        """Code each frame for real (per-video streams, module docstring) and run every task;
        INFERENCE_INPUT "uncoded_features": the same without the codec (no bits)."""
        if self.inference_input == "pixels":
            return self.pixel_inference(batched_inputs)
        outputs = []
        for inp in batched_inputs:
            image = inp["image"]
            size = tuple(image.shape[-2:])
            feature, out = self.image_to_feature(image), {}
            if self.inference_input == "coded_features":
                feature, record, bits = self.stream_coder.code_frame(
                    feature, inp.get("video_id"), inp.get("frame_idx"))
                out = {BITS: bits, "frame_type": record["type"]}
            out_size = (int(inp.get("height", size[0])), int(inp.get("width", size[1])))
            out.update(self.run_tasks(feature, [size], [out_size])[0])
            outputs.append(out)
        return outputs

    @torch.no_grad()
    def pixel_inference(self, batched_inputs: List[dict]) -> List[dict]:
        """Every task network on the frames themselves (its own feature of the pixels, no
        FST): what a task sees behind a pixel codec. No ``"bits"``: those are the pixel codec's."""
        images = self.preprocess_image(batched_inputs)
        out_sizes = [(int(inp.get("height", s[0])), int(inp.get("width", s[1])))
                     for inp, s in zip(batched_inputs, images.image_sizes)]
        results = [{} for _ in batched_inputs]
        for tail in self.tasks.values():
            high = tail.high_features(tail.target_feature(self.raw_images(images)))
            for r, o in zip(results, tail.inference(high, images.image_sizes, out_sizes)):
                r.update(o)
        return results

    # ------------------------------------------------------------------ bitstreams
    def model_hash(self) -> bytes:
        """``FeatureStreamCoder.model_hash``: codec (incl. its CDF tables) and backbone."""
        return self.stream_coder.model_hash()

    def encode_video(self, images: Iterable[Tensor],
                     original_size: Optional[Tuple[int, int]] = None,
                     return_features: bool = False) -> EncodedVideo:
        """Code C x H x W images (INPUT.FORMAT, one size) into one container stream, an I-frame
        every GOP frames. ``original_size``: (H, W) of the source video (default: the images')."""
        if self.training:
            raise RuntimeError("encode_video needs the model in eval mode (model.eval())")
        images = iter(images)
        first = next(images, None)
        if first is None:
            raise ValueError("no frames to encode")
        size = tuple(first.shape[-2:])

        def features():  # lazily: only the records of the frames stay in memory
            for t, image in enumerate(itertools.chain([first], images)):
                if tuple(image.shape[-2:]) != size:
                    raise ValueError(f"frame {t} is {tuple(image.shape[-2:])}, frame 0 was {size}")
                yield self.image_to_feature(image)

        return self.stream_coder.encode(features(), size, original_size, return_features)

    def read_header(self, stream: bytes) -> ParsedStream:
        """Parse ``stream`` and check it was made by this model (ContainerError otherwise)."""
        return self.stream_coder.read_header(stream)

    def decode_frames(self, stream: bytes) -> Iterator[DecodedFrame]:
        """Decode a stream frame by frame (with the encoder's torch thread count, restored
        afterwards). Raises ContainerError for foreign, corrupted or truncated streams here,
        before decoding anything."""
        return self.decode_parsed(self.read_header(stream))

    def decode_parsed(self, parsed: ParsedStream) -> Iterator[DecodedFrame]:
        """``decode_frames`` of a stream already checked by ``read_header``."""
        if self.training:
            raise RuntimeError("decoding needs the model in eval mode (model.eval())")
        return self.stream_coder.decode(parsed)
