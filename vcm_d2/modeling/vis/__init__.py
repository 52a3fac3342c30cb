"""Video instance segmentation: a per-frame instance-segmentation network (Mask R-CNN, CDRE, or
TransVFC with an instance-segmentation FST) whose detections detectron2's trackers link into
tracks. ``VideoInstanceSegmentor`` is registered as a meta-architecture on import."""
from .config import add_vis_config
from .meta_arch import DETECTOR_PREFIX, VideoInstanceSegmentor
from .tracks import VideoTracks, build_tracker

__all__ = ["add_vis_config", "VideoInstanceSegmentor", "DETECTOR_PREFIX", "VideoTracks",
           "build_tracker"]
