"""Config keys of the video instance segmentation (VIS) model, under ``cfg.MODEL.VCM.VIS``.

The VIS model runs a per-frame instance-segmentation network (``DETECTOR``) and links its
detections across frames with one of detectron2's trackers (``detectron2.tracking``). The
papers' VIS networks (Mask2Former for CDRE, CrossVIS for TransVFC) are not installable here
without copying them; a per-frame Mask R-CNN + tracker is the substitute.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_vis_config"]


def add_vis_config(cfg):
    """Add ``cfg.MODEL.VCM.VIS`` (idempotent). ``cfg.MODEL.VCM`` must already exist."""
    if not hasattr(cfg.MODEL, "VCM"):
        raise ValueError("add_vis_config needs cfg.MODEL.VCM; call add_vcm_config first")
    if hasattr(cfg.MODEL.VCM, "VIS"):
        return cfg
    V = cfg.MODEL.VCM.VIS = CN()
    # Per-frame meta-architecture (META_ARCH_REGISTRY) built from the rest of the config:
    # "GeneralizedRCNN" (Mask R-CNN), "CDRERCNN" (with the CDRE side stream) or "TransVFC"
    # (coded features + the instance-segmentation FST). It must output "instances" with masks.
    V.DETECTOR = "GeneralizedRCNN"
    # Frames given to the per-frame network at once in inference (its outputs are tracked in
    # frame order either way); 1 is what a streaming VideoPredictor does.
    V.FRAMES_PER_BATCH = 1
    # Detections of a frame with a lower score are not tracked (ROI_HEADS.SCORE_THRESH_TEST
    # applies before this).
    V.MIN_SCORE = 0.05
    # Tracks kept per video, highest scores first (YouTube-VIS evaluates up to 100).
    V.MAX_TRACKS_PER_VIDEO = 100

    # A tracker of detectron2.tracking (TRACKER_HEADS_REGISTRY), built per video with that
    # video's size. Measured with detectron2 at a59f0563: the Hungarian trackers
    # ("VanillaHungarianBBoxIOUTracker", "IOUWeightedHungarianBBoxIOUTracker") link boxes
    # below TRACK_IOU_THRESHOLD too (linear_sum_assignment returns every row), so the
    # thresholded greedy "BBoxIOUTracker" is the default.
    V.TRACKER = CN()
    V.TRACKER.NAME = "BBoxIOUTracker"
    # Box IoU below which a detection never continues a track.
    V.TRACKER.TRACK_IOU_THRESHOLD = 0.5
    # Frames a track may be missed and still be continued (its last box is kept for matching).
    V.TRACKER.MAX_LOST_FRAME_COUNT = 0
    # Boxes smaller than this fraction of the frame side are not kept while lost.
    V.TRACKER.MIN_BOX_REL_DIM = 0.02
    # Frames a track must have been seen before it may be kept while lost.
    V.TRACKER.MIN_INSTANCE_PERIOD = 1
    # Largest number of identities the tracker hands out per video.
    V.TRACKER.MAX_NUM_INSTANCES = 200
    return cfg
