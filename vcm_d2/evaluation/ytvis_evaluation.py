"""YouTube-VIS evaluation: the official video instance segmentation metric and its evaluator.

The metric (Yang et al., "Video Instance Segmentation", ICCV 2019) is COCO's mask AP with
tracks in place of instances; its official code is a fork of the COCO API. Written here from
that definition:

* IoU of a predicted track ``d`` and a ground-truth track ``g``:
  ``sum_t |d_t ∩ g_t| / sum_t |d_t ∪ g_t|``. A frame where only one of them has a mask adds
  that mask's area to the union, a frame where neither has one adds nothing; a zero union
  gives IoU 0. ``iscrowd`` does not change this formula (COCO's does).
* A track's area is the mean of its per-frame mask areas over the frames where it is present;
  it selects the area range (YouTube-VIS bounds 128² / 256², not COCO's 32² / 96²).
* Matching per (video, category) and accumulation are COCOeval's ``evaluateImg`` /
  ``accumulate`` / ``summarize`` with a video in place of an image: detections by descending
  score (stable), at most maxDet per video and category, greedy matching per IoU threshold
  with ignored ground truth (crowd or out of the area range) last, a crowd track matchable
  many times, detections matched to ignored ground truth ignored, unmatched detections out
  of the area range ignored; 101-point interpolated precision; categories without
  non-ignored ground truth excluded from the means.

:func:`evaluate_ytvis` takes the official json layouts (ground truth and results) and returns
the metrics in percent, like detectron2's COCOEvaluator. :class:`YTVISEvaluator` is the
detectron2 ``DatasetEvaluator`` for per-video models whose outputs carry ``"tracks"``.
"""
import itertools
import logging
import os
from collections import Counter, OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from pycocotools import mask as mask_util
from tabulate import tabulate

from ..utils.io import atomic_write_json

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "MAX_DETS",
    "AREA_RANGES",
    "SUMMARY_METRICS",
    "YTVISAccumulation",
    "normalize_segmentation",
    "track_area",
    "sequence_iou",
    "accumulate_ytvis",
    "summarize_ytvis",
    "per_category_ap",
    "evaluate_ytvis",
    "contiguous_to_dataset_ids",
    "dataset_to_ytvis_gt",
    "track_to_result",
    "YTVISEvaluator",
]

logger = logging.getLogger(__name__)

# Official YouTube-VIS / COCO evaluation parameters.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
# YouTube-VIS area bounds (pixels of the mean per-frame mask): videos are larger than COCO
# images, so the bounds are 128² and 256² instead of COCO's 32² and 96².
SMALL_AREA_MAX = 128 ** 2
LARGE_AREA_MIN = 256 ** 2
MAX_AREA = 1e5 ** 2  # the official "no upper bound"
AREA_RANGES = OrderedDict([
    ("all", (0.0, MAX_AREA)),
    ("small", (0.0, SMALL_AREA_MAX)),
    ("medium", (SMALL_AREA_MAX, LARGE_AREA_MIN)),
    ("large", (LARGE_AREA_MIN, MAX_AREA)),
])
# Reported metric -> (AP or AR, IoU threshold or None for the mean over all, area, maxDet).
SUMMARY_METRICS = OrderedDict([
    ("AP", ("AP", None, "all", 100)),
    ("AP50", ("AP", 0.5, "all", 100)),
    ("AP75", ("AP", 0.75, "all", 100)),
    ("APs", ("AP", None, "small", 100)),
    ("APm", ("AP", None, "medium", 100)),
    ("APl", ("AP", None, "large", 100)),
    ("AR1", ("AR", None, "all", 1)),
    ("AR10", ("AR", None, "all", 10)),
    ("AR100", ("AR", None, "all", 100)),
])
PER_CATEGORY_PREFIX = "AP-"  # detectron2's per-category key, e.g. "AP-person"
_TABLE_PAIRS = 3  # (category, AP) pairs per row of the logged table, as detectron2
_MISSING = -1.0  # COCOeval's marker for "no ground truth to evaluate against"
_EPS = np.spacing(1)  # COCOeval's guard against 0/0 in precision

RLE = Dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Masks and sequence IoU
# ---------------------------------------------------------------------------------------------
def normalize_segmentation(segm: Any, height: int, width: int) -> Optional[RLE]:
    """One frame's mask (None, polygons, uncompressed or compressed RLE) -> compressed RLE.

    Raises ValueError if an RLE's size is not ``[height, width]``: pycocotools would silently
    give IoU -1 for masks of different sizes."""
    if segm is None:
        return None
    if isinstance(segm, list):  # polygons
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise ValueError(f"not a mask (polygons or RLE dict with size/counts): {type(segm).__name__}")
    if list(segm["size"]) != [height, width]:
        raise ValueError(f"mask size {list(segm['size'])} != frame size {[height, width]}")
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return mask_util.frPyObjects(segm, height, width)
    return segm


def _frame_areas(track: Sequence[Optional[RLE]]) -> np.ndarray:
    """Mask area per frame, 0 where the track is absent."""
    present = [t for t, rle in enumerate(track) if rle is not None]
    areas = np.zeros(len(track), dtype=np.float64)
    if present:
        areas[present] = mask_util.area([track[t] for t in present])
    return areas


def track_area(track: Sequence[Optional[RLE]]) -> float:
    """Mean mask area over the frames where the track is present (0 if it never is)."""
    present = [rle for rle in track if rle is not None]
    return float(np.mean(mask_util.area(present))) if present else 0.0


def sequence_iou(dt_tracks: Sequence[Sequence[Optional[RLE]]],
                 gt_tracks: Sequence[Sequence[Optional[RLE]]]) -> np.ndarray:
    """(D, G) sequence IoU: summed per-frame intersections / summed per-frame unions.

    Tracks are per-frame lists of compressed RLE (None = absent), all of the same length.
    """
    num_dt, num_gt = len(dt_tracks), len(gt_tracks)
    if num_dt == 0 or num_gt == 0:
        return np.zeros((num_dt, num_gt))
    num_frames = len(gt_tracks[0])
    if any(len(track) != num_frames for track in itertools.chain(dt_tracks, gt_tracks)):
        raise ValueError(f"tracks of one video must all have {num_frames} frames")
    dt_areas = np.stack([_frame_areas(track) for track in dt_tracks])  # (D, T)
    gt_areas = np.stack([_frame_areas(track) for track in gt_tracks])  # (G, T)
    inter = np.zeros((num_dt, num_gt))
    for t in range(num_frames):
        d_idx = [i for i, track in enumerate(dt_tracks) if track[t] is not None]
        g_idx = [j for j, track in enumerate(gt_tracks) if track[t] is not None]
        if d_idx and g_idx:
            inter[np.ix_(d_idx, g_idx)] += _intersections(
                [dt_tracks[i][t] for i in d_idx], [gt_tracks[j][t] for j in g_idx],
                dt_areas[d_idx, t],
            )
    # Absent masks have area 0, so a frame with one mask adds its area and one with none adds 0.
    union = dt_areas.sum(1)[:, None] + gt_areas.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _intersections(dts: List[RLE], gts: List[RLE], dt_areas: np.ndarray) -> np.ndarray:
    """Pairwise |d ∩ g| in pixels, vectorised through pycocotools.

    ``mask.iou`` with every ground truth flagged crowd returns |d ∩ g| / |d| (0 when the
    intersection is empty); multiplying back by |d| and rounding recovers the exact integer
    count (both are < 2**32, far inside double precision)."""
    ratio = np.asarray(mask_util.iou(dts, gts, [1] * len(gts)), dtype=np.float64)
    return np.rint(ratio * dt_areas[:, None])


# ---------------------------------------------------------------------------------------------
# Matching (COCOeval.evaluateImg with a video in place of an image)
# ---------------------------------------------------------------------------------------------
class _Tracks(NamedTuple):
    """The tracks of one (video, category), detections sorted by score and truncated."""

    ious: np.ndarray  # (D, G)
    dt_scores: np.ndarray  # (D,)
    dt_areas: np.ndarray  # (D,)
    gt_areas: np.ndarray  # (G,)
    gt_crowd: np.ndarray  # (G,) bool


class _Matches(NamedTuple):
    dt_scores: np.ndarray  # (D,)
    dt_matched: np.ndarray  # (T, D) bool
    dt_ignored: np.ndarray  # (T, D) bool
    gt_ignored: np.ndarray  # (G,) bool


def _best_gt(ious: np.ndarray, threshold: float, available: np.ndarray, gt_ignored: np.ndarray) -> int:
    """COCOeval's greedy choice for one detection: the highest IoU >= threshold among the
    available non-ignored ground truth (ties -> the later one), else among the ignored; -1."""
    candidates = available & (ious >= threshold)
    for group in (~gt_ignored, gt_ignored):
        in_group = candidates & group
        if in_group.any():
            best = ious[in_group].max()
            return int(np.flatnonzero(in_group & (ious == best))[-1])
    return -1


def _match(tracks: _Tracks, area_range: Tuple[float, float]) -> _Matches:
    lo, hi = area_range
    gt_ignored = tracks.gt_crowd | (tracks.gt_areas < lo) | (tracks.gt_areas > hi)
    # COCOeval stably sorts ignored ground truth last; _best_gt's two groups do the same
    # (the order inside each group, which decides ties, is unchanged), so no sort is needed.
    gt_crowd, ious = tracks.gt_crowd, tracks.ious
    num_dt = len(tracks.dt_scores)
    dt_matched = np.zeros((len(IOU_THRESHOLDS), num_dt), dtype=bool)
    dt_ignored = np.zeros_like(dt_matched)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        gt_taken = np.zeros(len(gt_ignored), dtype=bool)
        for d in range(num_dt):
            g = _best_gt(ious[d], threshold, ~gt_taken | gt_crowd, gt_ignored)
            if g < 0:
                continue
            dt_matched[t, d], dt_ignored[t, d], gt_taken[g] = True, gt_ignored[g], True
    outside = (tracks.dt_areas < lo) | (tracks.dt_areas > hi)
    dt_ignored |= ~dt_matched & outside[None, :]
    return _Matches(tracks.dt_scores, dt_matched, dt_ignored, gt_ignored)


# ---------------------------------------------------------------------------------------------
# Accumulation and summary (COCOeval.accumulate / summarize)
# ---------------------------------------------------------------------------------------------
class YTVISAccumulation(NamedTuple):
    """COCOeval's ``eval`` arrays; -1 where a category has no ground truth in the area range."""

    precision: np.ndarray  # (IoU thresholds, recall thresholds, categories, areas, maxDets)
    recall: np.ndarray  # (IoU thresholds, categories, areas, maxDets)
    category_ids: List[int]
    category_names: List[str]
    max_dets: Tuple[int, ...]


def _precision_recall(matches: List[_Matches], max_det: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(precision (T, R), recall (T,)) over all videos of one category, or None without GT."""
    num_gt = sum(int(np.count_nonzero(~m.gt_ignored)) for m in matches)
    if num_gt == 0:
        return None
    scores = np.concatenate([m.dt_scores[:max_det] for m in matches])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([m.dt_matched[:, :max_det] for m in matches], axis=1)[:, order]
    ignored = np.concatenate([m.dt_ignored[:, :max_det] for m in matches], axis=1)[:, order]
    tp_sum = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
        if len(tp) == 0:
            continue
        rc = tp / num_gt
        pr = tp / (fp + tp + _EPS)
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
        recall[t] = rc[-1]
        inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        reached = inds < len(rc)  # recall thresholds never reached keep precision 0
        precision[t, reached] = pr[inds[reached]]
    return precision, recall


def _iou_index(threshold: float) -> int:
    return int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, threshold))[0])


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > _MISSING]
    return float(np.mean(valid)) if valid.size else _MISSING


def summarize_ytvis(acc: YTVISAccumulation) -> "OrderedDict[str, float]":
    """COCOeval.summarize: the SUMMARY_METRICS as fractions, -1 where nothing to evaluate."""
    areas = list(AREA_RANGES)
    stats = OrderedDict()
    for name, (kind, iou, area, max_det) in SUMMARY_METRICS.items():
        if max_det not in acc.max_dets:
            continue
        a, m = areas.index(area), acc.max_dets.index(max_det)
        values = acc.precision[..., a, m] if kind == "AP" else acc.recall[..., a, m]
        if iou is not None:
            values = values[_iou_index(iou)]
        stats[name] = _mean_valid(values)
    return stats


def _group_by_video_category(items: Sequence[dict], what: str, videos: Dict[Any, dict],
                             categories: Dict[int, str]) -> Dict[Tuple[Any, int], List[dict]]:
    groups: Dict[Tuple[Any, int], List[dict]] = {}
    for item in items:
        vid, cat = item["video_id"], item["category_id"]
        if vid not in videos:
            raise ValueError(f"{what} for video_id {vid!r}, which is not in the ground truth")
        if cat not in categories:
            raise ValueError(f"{what} of video {vid!r} has unknown category_id {cat!r}")
        groups.setdefault((vid, cat), []).append(item)
    return groups


def _num_frames(video: dict) -> int:
    return len(video["file_names"]) if "file_names" in video else int(video["length"])


def _normalize_track(item: dict, what: str, video: dict) -> List[Optional[RLE]]:
    segms = item["segmentations"]
    if len(segms) != _num_frames(video):
        raise ValueError(
            f"{what} of video {item['video_id']!r} has {len(segms)} masks for "
            f"{_num_frames(video)} frames"
        )
    try:
        return [normalize_segmentation(s, video["height"], video["width"]) for s in segms]
    except ValueError as e:
        raise ValueError(f"{what} of video {item['video_id']!r}: {e}") from e


def _video_category_tracks(video: dict, gts: List[dict], dts: List[dict], max_det: int) -> _Tracks:
    dts = sorted(dts, key=lambda d: -d["score"])[:max_det]  # sorted() is stable
    gt_tracks = [_normalize_track(g, f"ground-truth track {g.get('id')}", video) for g in gts]
    dt_tracks = [_normalize_track(d, "result", video) for d in dts]
    return _Tracks(
        ious=sequence_iou(dt_tracks, gt_tracks),
        dt_scores=np.array([float(d["score"]) for d in dts], dtype=np.float64),
        dt_areas=np.array([track_area(t) for t in dt_tracks], dtype=np.float64),
        gt_areas=np.array([track_area(t) for t in gt_tracks], dtype=np.float64),
        gt_crowd=np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool),
    )


def accumulate_ytvis(gt: dict, results: Sequence[dict],
                     max_dets: Sequence[int] = MAX_DETS) -> YTVISAccumulation:
    """Match and accumulate: the official ``evaluate()`` + ``accumulate()``.

    Args:
        gt: official ground-truth json (``videos``, ``annotations``, ``categories``).
        results: official results json (``video_id``, ``category_id``, ``score``,
            ``segmentations``); every video and category must be in ``gt``.
        max_dets: detections per video and category considered (ascending).
    """
    max_dets = tuple(int(m) for m in max_dets)
    videos = {v["id"]: v for v in gt["videos"]}
    categories = OrderedDict(
        (c["id"], c["name"]) for c in sorted(gt["categories"], key=lambda c: c["id"])
    )
    gt_groups = _group_by_video_category(gt["annotations"], "ground-truth track", videos, categories)
    dt_groups = _group_by_video_category(results, "result", videos, categories)
    video_ids = sorted(videos)  # COCOeval concatenates images in sorted id order (tie-breaks)
    shape = (len(IOU_THRESHOLDS), len(categories), len(AREA_RANGES), len(max_dets))
    precision = np.full(shape[:1] + (len(RECALL_THRESHOLDS),) + shape[1:], _MISSING)
    recall = np.full(shape, _MISSING)
    for k, cat in enumerate(categories):
        per_area: List[List[_Matches]] = [[] for _ in AREA_RANGES]
        for vid in video_ids:
            gts, dts = gt_groups.get((vid, cat), []), dt_groups.get((vid, cat), [])
            if not gts and not dts:
                continue
            tracks = _video_category_tracks(videos[vid], gts, dts, max_dets[-1])
            for a, area_range in enumerate(AREA_RANGES.values()):
                per_area[a].append(_match(tracks, area_range))
        for a, matches in enumerate(per_area):
            for m, max_det in enumerate(max_dets):
                pr_rc = _precision_recall(matches, max_det) if matches else None
                if pr_rc is not None:
                    precision[:, :, k, a, m], recall[:, k, a, m] = pr_rc
    return YTVISAccumulation(precision, recall, list(categories), list(categories.values()), max_dets)


def _percent(value: float) -> float:
    """Fraction -> percent; COCOeval's -1 ("nothing to evaluate") -> NaN as in detectron2."""
    return float(value * 100) if value >= 0 else float("nan")


def per_category_ap(acc: YTVISAccumulation) -> "OrderedDict[str, float]":
    """AP (IoU .50:.95, all areas, largest maxDet) per category name, in percent."""
    a = list(AREA_RANGES).index("all")
    return OrderedDict(
        (name, _percent(_mean_valid(acc.precision[:, :, k, a, -1])))
        for k, name in enumerate(acc.category_names)
    )


def evaluate_ytvis(gt: dict, results: Sequence[dict],
                   max_dets: Sequence[int] = MAX_DETS) -> "OrderedDict[str, float]":
    """The official YouTube-VIS metrics in percent (NaN where undefined).

    Keys: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100 and ``AP-<category name>``.
    """
    acc = accumulate_ytvis(gt, results, max_dets)
    metrics = OrderedDict((k, _percent(v)) for k, v in summarize_ytvis(acc).items())
    metrics.update((PER_CATEGORY_PREFIX + name, ap) for name, ap in per_category_ap(acc).items())
    return metrics


# ---------------------------------------------------------------------------------------------
# detectron2 dataset dicts <-> official json
# ---------------------------------------------------------------------------------------------
def contiguous_to_dataset_ids(metadata) -> Dict[int, int]:
    """Contiguous thing class index -> dataset category id: the inverse of
    ``thing_dataset_id_to_contiguous_id`` if the metadata has it, else index + 1."""
    thing_classes = metadata.get("thing_classes", None)
    if thing_classes is None:
        raise ValueError(f"dataset {metadata.name!r} has no thing_classes in its metadata")
    forward = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not forward:
        return {i: i + 1 for i in range(len(thing_classes))}
    inverse = {int(c): int(d) for d, c in forward.items()}
    if sorted(inverse) != list(range(len(thing_classes))):
        raise ValueError(
            f"thing_dataset_id_to_contiguous_id of {metadata.name!r} does not cover the "
            f"{len(thing_classes)} thing classes"
        )
    return inverse


def _xywh_box(obj: dict, rle: RLE) -> List[float]:
    if "bbox" in obj:
        box = BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYWH_ABS)
        return [float(x) for x in box]
    return [float(x) for x in mask_util.toBbox(rle)]


def _video_tracks(video: dict, category_map: Dict[int, int], first_id: int) -> List[dict]:
    """One video dict's per-frame objects -> official per-track annotations."""
    vid, length = video["video_id"], len(video["file_names"])
    h, w = int(video["height"]), int(video["width"])
    if len(video["annotations"]) != length:
        raise ValueError(
            f"video {vid!r} has {len(video['annotations'])} annotation lists for {length} frames"
        )
    tracks: Dict[Any, dict] = OrderedDict()
    for t, objects in enumerate(video["annotations"]):
        for obj in objects:
            if obj["category_id"] not in category_map:
                raise ValueError(
                    f"track {obj['id']} of video {vid!r}: unknown category {obj['category_id']}"
                )
            category, crowd = category_map[obj["category_id"]], int(obj.get("iscrowd", 0))
            track = tracks.setdefault(obj["id"], {
                "id": first_id + len(tracks), "video_id": vid, "category_id": category, "iscrowd": crowd,
                "segmentations": [None] * length, "bboxes": [None] * length, "areas": [None] * length,
            })
            if (track["category_id"], track["iscrowd"]) != (category, crowd):
                raise ValueError(
                    f"track {obj['id']} of video {vid!r} changes category or iscrowd at frame {t}"
                )
            if track["segmentations"][t] is not None:
                raise ValueError(f"track {obj['id']} of video {vid!r} appears twice in frame {t}")
            rle = normalize_segmentation(obj["segmentation"], h, w)
            track["segmentations"][t] = rle
            track["bboxes"][t] = _xywh_box(obj, rle)
            track["areas"][t] = float(mask_util.area(rle))
    return list(tracks.values())


def dataset_to_ytvis_gt(dataset_dicts: Sequence[dict], metadata) -> Optional[dict]:
    """detectron2 video dicts (``annotations[t]`` = frame t's objects, ``id`` = track) -> the
    official ground-truth json layout, with the same category ids as the evaluator's results.
    None if no video has annotations (e.g. the YouTube-VIS valid split)."""
    annotated = ["annotations" in v for v in dataset_dicts]
    if not any(annotated):
        return None
    if not all(annotated):
        raise ValueError(f"dataset {metadata.name!r}: only some videos have annotations")
    category_map = contiguous_to_dataset_ids(metadata)
    annotations: List[dict] = []
    for video in dataset_dicts:
        annotations += _video_tracks(video, category_map, first_id=len(annotations) + 1)
    return {
        "videos": [{
            "id": v["video_id"], "width": int(v["width"]), "height": int(v["height"]),
            "length": len(v["file_names"]), "file_names": list(v["file_names"]),
        } for v in dataset_dicts],
        "annotations": annotations,
        "categories": [
            {"id": category_map[i], "name": name} for i, name in enumerate(metadata.thing_classes)
        ],
    }


def _json_rle(rle: RLE) -> RLE:
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def track_to_result(video_id: Any, track: dict, num_frames: int, height: int, width: int,
                    category_map: Dict[int, int]) -> dict:
    """A model's track (contiguous category, per-frame compressed RLE or None) -> one entry of
    the official results json. Raises ValueError naming the video, track and frame if the
    track does not fit the video."""
    where = f"video {video_id!r}, track {track.get('track_id')}"
    segms = track["segmentations"]
    if len(segms) != num_frames:
        raise ValueError(f"{where}: {len(segms)} masks for {num_frames} frames")
    if track["category_id"] not in category_map:
        raise ValueError(f"{where}: category_id {track['category_id']} is not a thing class index")
    out = []
    for t, rle in enumerate(segms):
        if rle is None:
            out.append(None)
            continue
        if not isinstance(rle, dict) or not isinstance(rle.get("counts"), (bytes, str)):
            raise ValueError(f"{where}, frame {t}: mask is not a compressed RLE dict")
        if list(rle.get("size", ())) != [height, width]:
            raise ValueError(
                f"{where}, frame {t}: mask size {rle.get('size')} != video size {[height, width]}"
            )
        out.append(_json_rle(rle))
    return {"video_id": video_id, "category_id": category_map[track["category_id"]],
            "score": float(track["score"]), "segmentations": out}


# ---------------------------------------------------------------------------------------------
# detectron2 evaluator
# ---------------------------------------------------------------------------------------------
class YTVISEvaluator(DatasetEvaluator):
    """YouTube-VIS AP of per-video track predictions (``results["segm"]``).

    ``process`` takes one input per video (``video_id``, ``height``, ``width``,
    ``file_names``) and an output with ``"tracks"``: ``{"track_id", "category_id"
    (contiguous), "score", "segmentations": [compressed RLE or None per frame]}``. ``evaluate``
    writes ``results.json`` (the official submission format) to ``output_dir`` and, if the
    dataset has annotations, returns ``{"segm": {AP, AP50, ..., "AP-<class>"}}`` in percent.
    """

    RESULTS_FILE = "results.json"

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._metadata = MetadataCatalog.get(dataset_name)
        self._category_map = contiguous_to_dataset_ids(self._metadata)
        self.reset()

    def reset(self):
        self._predictions: List[dict] = []  # {"video_id", "results": [official result dicts]}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            video_id = inp["video_id"]
            if "tracks" not in out:
                raise ValueError(f"output for video {video_id!r} has no 'tracks'")
            h, w, n = int(inp["height"]), int(inp["width"]), len(inp["file_names"])
            results = [track_to_result(video_id, tr, n, h, w, self._category_map) for tr in out["tracks"]]
            self._predictions.append({"video_id": video_id, "results": results})

    def _gather(self) -> Optional[List[dict]]:
        if not self._distributed:
            return self._predictions
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
        return predictions if comm.is_main_process() else None

    def evaluate(self):
        predictions = self._gather()
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("[YTVISEvaluator] Did not receive valid predictions.")
            return {}
        dataset_dicts = DatasetCatalog.get(self._dataset_name)
        self._check_video_ids([p["video_id"] for p in predictions], dataset_dicts)
        results = [r for p in predictions for r in p["results"]]
        if self._output_dir:
            atomic_write_json(os.path.join(self._output_dir, self.RESULTS_FILE), results, indent=None)
        gt = dataset_to_ytvis_gt(dataset_dicts, self._metadata)
        if gt is None:
            logger.warning(
                "%s has no annotations: submit %s to the official YouTube-VIS server for its AP.",
                self._dataset_name, os.path.join(self._output_dir or "<no output_dir>", self.RESULTS_FILE),
            )
            return {}
        metrics = evaluate_ytvis(gt, results)
        self._log(metrics)
        return OrderedDict(segm=metrics)

    def _check_video_ids(self, predicted: List[Any], dataset_dicts: Sequence[dict]) -> None:
        known = {v["video_id"] for v in dataset_dicts}
        unknown = sorted({str(v) for v in predicted if v not in known})
        if unknown:
            raise ValueError(f"predictions for videos not in {self._dataset_name!r}: {unknown[:10]}")
        duplicated = sorted(str(v) for v, n in Counter(predicted).items() if n > 1)
        if duplicated:
            raise ValueError(
                f"videos processed more than once (detections would count twice): {duplicated[:10]}"
            )

    def _log(self, metrics: Dict[str, float]) -> None:
        """detectron2's COCOEvaluator tables: the summary, then (category, AP) pairs."""
        summary = {k: v for k, v in metrics.items() if not k.startswith(PER_CATEGORY_PREFIX)}
        logger.info("YouTube-VIS results for %s:\n%s", self._dataset_name, create_small_table(summary))
        per_category = [(k[len(PER_CATEGORY_PREFIX):], v) for k, v in metrics.items()
                        if k.startswith(PER_CATEGORY_PREFIX)]
        columns = min(_TABLE_PAIRS * 2, 2 * len(per_category))
        flat = list(itertools.chain(*per_category))
        rows = itertools.zip_longest(*[flat[i::columns] for i in range(columns)])
        table = tabulate(rows, tablefmt="pipe", floatfmt=".3f", numalign="left",
                         headers=["category", "AP"] * (columns // 2))
        logger.info("Per-category AP:\n%s", table)
