"""``VideoInstanceSegmentor``: video instance segmentation from a per-frame network + tracker.

    frames of a video -> per-frame network (MODEL.VCM.VIS.DETECTOR: Mask R-CNN, CDRE Mask R-CNN
    or TransVFC with an instance-segmentation FST) -> instances with masks
    -> detectron2 tracker (MODEL.VCM.VIS.TRACKER) -> identities -> per-video tracks

Inputs:

* training: clips ``{"frames": [frame dicts]}`` (``vcm_d2.data.ClipDatasetMapper``,
  VCM.CLIP.LENGTH > 0) or frame dicts. The per-frame network is trained on the clips' frames as
  one batch (a network that trains on clips itself, such as TransVFC, gets the clips).
* inference: whole videos ``{"video_id", "height", "width", "frames": [...]}``
  (``build_video_test_loader``); frames carry ``video_id`` / ``frame_idx`` in order, so a
  TransVFC network codes them as one stream, and whatever side information the network needs
  ("original" for CDRE's encoder side, "cdre_bits").

Output per video: ``{"tracks": [{"track_id", "category_id", "score", "segmentations"}]}``
(``tracks.VideoTracks``) plus per-frame lists of the network's rate keys ("bits" of TransVFC's
stream, "side_bits" of CDRE's side stream), which ``RateTaskEvaluator`` adds up. For frame-by-
frame use (a live video), ``start_video`` gives the tracking state that
``vcm_d2.engine.VideoPredictor`` drives.

Checkpoints: the per-frame network lives under ``detector.``; a checkpoint of the network alone
(e.g. a COCO Mask R-CNN, keys ``backbone.*``, ``roi_heads.*``) loads into it unchanged, with
shape mismatches (another number of classes) skipped with a warning as detectron2 does.
"""
import logging
from typing import Any, Dict, List, Mapping

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from .tracks import VideoTracks

__all__ = ["VideoInstanceSegmentor", "DETECTOR_PREFIX"]

logger = logging.getLogger(__name__)

# Parameter-name prefix of the per-frame network.
DETECTOR_PREFIX = "detector."


@META_ARCH_REGISTRY.register()
class VideoInstanceSegmentor(nn.Module):
    """Per-frame instance segmentation + a detectron2 tracker (module docstring)."""

    @configurable
    def __init__(self, *, detector: nn.Module, tracker_name: str = "BBoxIOUTracker",
                 tracker_args: Mapping[str, Any] = (), frames_per_batch: int = 1,
                 min_score: float = 0.0, max_tracks: int = 100):
        """
        Args:
            detector: the per-frame network (outputs "instances" with "pred_masks").
            tracker_name: a tracker of detectron2's TRACKER_HEADS_REGISTRY.
            tracker_args: its keyword arguments except the video size (set per video).
            frames_per_batch: frames given to ``detector`` at once in inference.
            min_score: detections below this score are not tracked.
            max_tracks: tracks kept per video (highest scores).
        """
        super().__init__()
        if frames_per_batch < 1:
            raise ValueError(f"FRAMES_PER_BATCH must be >= 1, got {frames_per_batch}")
        self.detector = detector
        self.tracker_name = tracker_name
        self.tracker_args = dict(tracker_args)
        self.frames_per_batch = int(frames_per_batch)
        self.min_score = float(min_score)
        self.max_tracks = int(max_tracks)
        self.start_video()  # fails now, not at the first video, on a bad tracker name
        self._register_load_state_dict_pre_hook(self._prefix_detector_keys)

    @classmethod
    def from_config(cls, cfg):
        V = cfg.MODEL.VCM.VIS
        if V.DETECTOR == cls.__name__:
            raise ValueError("MODEL.VCM.VIS.DETECTOR must be a per-frame network, not "
                             f"{cls.__name__} itself")
        inner = cfg.clone()
        inner.defrost()
        inner.MODEL.META_ARCHITECTURE = V.DETECTOR
        T = V.TRACKER
        return {
            "detector": META_ARCH_REGISTRY.get(V.DETECTOR)(inner),
            "tracker_name": T.NAME,
            "tracker_args": {
                "track_iou_threshold": T.TRACK_IOU_THRESHOLD,
                "max_lost_frame_count": T.MAX_LOST_FRAME_COUNT,
                "min_box_rel_dim": T.MIN_BOX_REL_DIM,
                "min_instance_period": T.MIN_INSTANCE_PERIOD,
                "max_num_instances": T.MAX_NUM_INSTANCES,
            },
            "frames_per_batch": V.FRAMES_PER_BATCH,
            "min_score": V.MIN_SCORE,
            "max_tracks": V.MAX_TRACKS_PER_VIDEO,
        }

    @property
    def device(self):
        return self.detector.device

    def start_video(self) -> VideoTracks:
        """Fresh tracking state for one video (identities restart at 0)."""
        return VideoTracks(self.tracker_name, self.tracker_args, min_score=self.min_score,
                           max_tracks=self.max_tracks)

    # ------------------------------------------------------------------ checkpoints
    def _prefix_detector_keys(self, state_dict, prefix, *args) -> None:
        """Move keys of a per-frame-network checkpoint under ``detector.`` (shape mismatches
        are dropped with a warning, as detectron2's checkpointer does for its own keys)."""
        own = None
        for key in list(state_dict):
            if not key.startswith(prefix) or key.startswith(prefix + DETECTOR_PREFIX):
                continue
            new = DETECTOR_PREFIX + key[len(prefix):]
            value = state_dict.pop(key)
            if prefix + new in state_dict:
                continue
            own = self.state_dict() if own is None else own
            if new in own and tuple(own[new].shape) != tuple(value.shape):
                logger.warning("Skip loading %s: shape %s in the checkpoint, %s in the model",
                               key, tuple(value.shape), tuple(own[new].shape))
                continue
            state_dict[prefix + new] = value

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        if self.training:
            return self.detector(self._training_inputs(batched_inputs))
        return [self.inference_video(video) for video in batched_inputs]

    def _training_inputs(self, batched_inputs: List[dict]) -> List[dict]:
        if getattr(self.detector, "trains_on_clips", False):
            return batched_inputs
        return [f for inp in batched_inputs for f in (inp["frames"] if "frames" in inp else [inp])]

    def inference_video(self, video: Mapping[str, Any]) -> Dict[str, Any]:
        """Tracks of one whole video (module docstring)."""
        frames = video.get("frames")
        if not frames:
            raise ValueError(
                f"{type(self).__name__} evaluates whole videos ({{'frames': [...]}}, see "
                "vcm_d2.data.clip_mapper.build_video_test_loader); for a frame at a time use "
                "vcm_d2.engine.VideoPredictor")
        state = self.start_video()
        for i in range(0, len(frames), self.frames_per_batch):
            chunk = frames[i:i + self.frames_per_batch]
            for output in self.detector(chunk):
                state.add(output)
        return state.result()
