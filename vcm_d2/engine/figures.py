"""Prediction figures for the reports (the papers' Fig. 9/10: detections at several rates).

A figure is a grid: one row per (method, rate point), one column per chosen frame. Each panel is
the frame the model saw with its predictions drawn by detectron2's ``Visualizer``, captioned with
the row's label, the frame's bpp (codec bits + CDRE side stream or TransVFC stream bits) and its
AP (instances) or mIoU (semantic segmentation). The first row is the uncompressed frame with the
ground truth. Video models run on the whole video (a frame's instances are taken from the tracks), frame
models on the video's frames up to the one shown (so stream codecs code it inside its GOP).

The PNG is written atomically with a JSON record beside it; a resumed report redraws only when a
row (weights, data, labels) or the frames changed.
"""
import contextlib
import copy
import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_util

from ..data.clip_mapper import ClipDatasetMapper, is_video_dataset, to_video_dicts
from ..data.pairs import read_frame
from ..evaluation.rate_task import load_sem_seg
from ..utils.io import atomic_write, atomic_write_json
from ..utils.rate import BITS, RATE_KEYS
from .trainer import VCMTrainer, frame_mapper

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".json"
PANEL_SCALE = 2.0  # 128-px synthetic frames are drawn at 256 px
CAPTION_LINES = 2
CAPTION_LINE_PX = 14
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
SCORE_THRESHOLD = 0.5  # predictions drawn (AP is computed from all of them)
SEM_SEG_ALPHA = 0.5  # opacity of drawn label maps
# One colour per class (thing_colors / stuff_colors), so a class looks the same in every panel.
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


@dataclass
class FigureRow:
    """One row: ``weights`` loaded into the model of ``cfg``, run on ``dataset``'s frames."""
    label: str
    cfg: Any
    weights: str
    dataset: str


# ----------------------------------------------------------------------------- frame metrics
def _silent(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
        return fn(*args)


def frame_ap(annotations: Sequence[dict], instances: Instances, height: int, width: int,
             num_classes: int, iou_type: str = "bbox") -> float:
    """COCO AP (IoU .50:.95, in %) of one frame's predictions; nan without ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts = []
    for i, a in enumerate(annotations):
        box = BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYWH_ABS)
        gt = {"id": i + 1, "image_id": 1, "category_id": int(a["category_id"]), "bbox": box,
              "iscrowd": int(a.get("iscrowd", 0)), "area": float(box[2] * box[3])}
        if iou_type == "segm":
            gt["segmentation"] = _gt_rle(a["segmentation"], height, width)
            gt["area"] = float(mask_util.area(gt["segmentation"]))
        gts.append(gt)
    if not gts:
        return float("nan")
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": height, "width": width}], "annotations": gts,
                    "categories": [{"id": c} for c in range(num_classes)]}
    _silent(coco.createIndex)
    dets = _detections(instances, iou_type)
    if not dets:
        return 0.0
    ev = COCOeval(coco, _silent(coco.loadRes, dets), iou_type)
    ev.params.imgIds = [1]
    for step in (ev.evaluate, ev.accumulate, ev.summarize):
        _silent(step)
    return max(0.0, float(ev.stats[0]) * 100.0)


def _gt_rle(segmentation, height: int, width: int) -> dict:
    if isinstance(segmentation, list):  # polygons
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def _detections(instances: Instances, iou_type: str) -> List[dict]:
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    dets = []
    for i in range(len(instances)):
        det = {"image_id": 1, "category_id": int(instances.pred_classes[i]),
               "bbox": [float(v) for v in boxes[i]], "score": float(instances.scores[i])}
        if iou_type == "segm":
            if not instances.has("pred_masks"):
                raise ValueError("segm AP needs predicted masks")
            mask = np.asfortranarray(instances.pred_masks[i].numpy().astype(np.uint8))
            det["segmentation"] = mask_util.encode(mask)
        dets.append(det)
    return dets


def frame_miou(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int) -> float:
    """Mean IoU (in %) over the classes present in the ground truth or the prediction."""
    valid = gt != ignore_label
    ious = []
    for c in range(num_classes):
        g, p = (gt == c) & valid, (pred == c) & valid
        union = np.logical_or(g, p).sum()
        if union:
            ious.append(np.logical_and(g, p).sum() / union)
    return 100.0 * float(np.mean(ious)) if ious else float("nan")


# ----------------------------------------------------------------------------- running models
def _frames(dataset: str) -> List[List[dict]]:
    """The dataset's records grouped by video (a record without ``video_id`` is its own video)."""
    dicts = DatasetCatalog.get(dataset)
    if is_video_dataset(dataset):
        return [v["frames"] for v in to_video_dicts(dicts)]
    videos: Dict[Any, List[dict]] = {}
    for i, d in enumerate(dicts):
        videos.setdefault(d.get("video_id", ("image", i)), []).append(d)
    return list(videos.values())


def _pick(videos: List[List[dict]], picks: Sequence[Tuple[int, int]], dataset: str) -> List[Tuple[int, int]]:
    out = []
    for v, t in picks:
        if v >= len(videos):
            raise ValueError(f"{dataset} has {len(videos)} videos, a figure asks for video {v}")
        out.append((v, min(t, len(videos[v]) - 1)))
    return out


def _load_model(row: FigureRow):
    cfg = row.cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = row.weights
    cfg.freeze()
    model = VCMTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(row.weights)
    return cfg, model.eval()


def _rate(record: dict, output: dict, index: Optional[int]) -> Optional[float]:
    """Bits of one frame: the pixel codec's (record) or the model's own, plus side streams."""
    def at(value):
        return value if index is None else value[index]

    bits = [at(output[k]) for k in RATE_KEYS if k in output]
    if BITS not in output:
        if BITS not in record:
            return None  # uncompressed
        bits.append(record[BITS])
    return float(sum(bits))


def _instances_of_frame(result: dict, t: int, height: int, width: int) -> Instances:
    """Frame ``t``'s instances from a video model's tracks (masks, boxes from masks, ID)."""
    masks, classes, scores, ids = [], [], [], []
    for track in result["tracks"]:
        rle = track["segmentations"][t]
        if rle is None:
            continue
        masks.append(torch.from_numpy(mask_util.decode(rle).astype(bool)))
        classes.append(track["category_id"])
        scores.append(track["score"])
        ids.append(track["track_id"])
    inst = Instances((height, width))
    stack = torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.bool)
    inst.pred_masks = stack
    boxes = torch.zeros((len(masks), 4))
    for i, m in enumerate(stack):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float)
    inst.pred_boxes = Boxes(boxes)
    inst.pred_classes = torch.tensor(classes, dtype=torch.long)
    inst.scores = torch.tensor(scores, dtype=torch.float)
    inst.ID = ids
    return inst


@torch.no_grad()
def run_row(row: FigureRow, picks: Sequence[Tuple[int, int]]) -> List[dict]:
    """Per picked (video, frame): the record, the model's instances or sem_seg, the frame's bits."""
    cfg, model = _load_model(row)
    videos = _frames(row.dataset)
    picks = _pick(videos, picks, row.dataset)
    out = []
    if is_video_dataset(row.dataset):
        mapper = ClipDatasetMapper(cfg, False)
        for v, t in picks:
            frames = videos[v]
            h, w = int(frames[0]["height"]), int(frames[0]["width"])
            result = model([mapper({"video_id": frames[0].get("video_id"), "height": h,
                                    "width": w, "frames": copy.deepcopy(frames)})])[0]
            out.append({"record": frames[t], "instances": _instances_of_frame(result, t, h, w),
                        "bits": _rate(frames[t], result, t)})
        return out
    mapper = frame_mapper(cfg, False)
    for v, t in picks:
        record = videos[v][t]
        # The video's frames up to t in order, so a model that codes a stream per video (TransVFC)
        # codes frame t inside its GOP, as in evaluation; frame-by-frame models give the same.
        for frame in videos[v][:t + 1]:
            result = model([mapper(copy.deepcopy(frame))])[0]
        entry = {"record": record, "bits": _rate(record, result, None)}
        if "sem_seg" in result:
            entry["sem_seg"] = result["sem_seg"].argmax(dim=0).cpu().numpy()
        else:
            entry["instances"] = result["instances"].to("cpu")
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- drawing
def _metadata(dataset: str) -> Metadata:
    """The dataset's metadata with fixed class colours (the same in every panel)."""
    values = {k: v for k, v in MetadataCatalog.get(dataset).as_dict().items() if k != "name"}
    for key in ("thing_classes", "stuff_classes"):
        if key in values:
            colors = [list(_PALETTE[i % len(_PALETTE)]) for i in range(len(values[key]))]
            values[key.replace("classes", "colors")] = colors
    return Metadata(name=f"{dataset} (figure)", **values)


def _visualizer(image: np.ndarray, metadata: Metadata):
    from detectron2.utils.visualizer import ColorMode, Visualizer  # imports OpenCV

    return Visualizer(image, metadata, scale=PANEL_SCALE, instance_mode=ColorMode.SEGMENTATION)


def _draw(image: np.ndarray, metadata: Metadata, entry: dict) -> np.ndarray:
    vis = _visualizer(image, metadata)
    if "sem_seg" in entry:
        return vis.draw_sem_seg(entry["sem_seg"], alpha=SEM_SEG_ALPHA).get_image()
    inst = entry["instances"]
    keep = (inst.scores >= SCORE_THRESHOLD).tolist()
    shown = Instances(inst.image_size)  # Instances[mask] cannot index list fields (track IDs)
    for name, value in inst.get_fields().items():
        shown.set(name, [v for v, k in zip(value, keep) if k] if isinstance(value, list)
                  else value[torch.tensor(keep, dtype=torch.bool)])
    return vis.draw_instance_predictions(shown).get_image()


def _draw_gt(image: np.ndarray, metadata: Metadata, record: dict) -> np.ndarray:
    vis = _visualizer(image, metadata)
    if metadata.get("thing_classes") is None:  # a semantic-segmentation dataset
        return vis.draw_sem_seg(load_sem_seg(record["sem_seg_file_name"]), alpha=SEM_SEG_ALPHA).get_image()
    gt = {k: v for k, v in record.items() if k != "sem_seg_file_name"}
    return vis.draw_dataset_dict(gt).get_image()


def _caption(panel: np.ndarray, lines: Sequence[str]) -> Image.Image:
    h, w = panel.shape[:2]
    canvas = Image.new("RGB", (w, h + CAPTION_LINES * CAPTION_LINE_PX + 4), BACKGROUND)
    canvas.paste(Image.fromarray(panel), (0, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i, line in enumerate(lines[:CAPTION_LINES]):
        draw.text((2, h + 2 + i * CAPTION_LINE_PX), line, fill=TEXT_COLOR, font=font)
    return canvas


def _score(entry: dict, metadata: Metadata) -> Tuple[str, float]:
    record = entry["record"]
    h, w = int(record["height"]), int(record["width"])
    if "sem_seg" in entry:
        gt = load_sem_seg(record["sem_seg_file_name"])
        return "mIoU", frame_miou(gt, entry["sem_seg"], len(metadata.stuff_classes),
                                  metadata.get("ignore_label", 255))
    inst = entry["instances"]
    iou_type = "segm" if inst.has("pred_masks") else "bbox"
    return ("mask AP" if iou_type == "segm" else "AP"), frame_ap(
        record.get("annotations", []), inst, h, w, len(metadata.thing_classes), iou_type)


def _panel_lines(label: str, entry: dict, metadata: Metadata) -> List[str]:
    record = entry["record"]
    name, value = _score(entry, metadata)
    pixels = int(record["height"]) * int(record["width"])
    rate = "uncompressed" if entry["bits"] is None else f"{entry['bits'] / pixels:.3f} bpp"
    metric = f"{name} {value:.1f}" if np.isfinite(value) else f"{name} -"
    return [label, f"{rate}, {metric}"]


def _row_key(row: FigureRow) -> Dict[str, Any]:
    stat = os.stat(row.weights)
    return {"label": row.label, "dataset": row.dataset, "weights": os.path.abspath(row.weights),
            "weights_size": stat.st_size, "weights_mtime": stat.st_mtime,
            "config": row.cfg.dump()}


def _figure_key(rows, picks, reference_dataset) -> Dict[str, Any]:
    key = {"rows": [_row_key(r) for r in rows], "picks": [list(p) for p in picks],
           "reference": reference_dataset}
    return json.loads(json.dumps(key))  # as it reads back from the record


def _record_path(path: str) -> str:
    return os.path.splitext(path)[0] + RECORD_SUFFIX


def is_figure_current(rows: Sequence[FigureRow], picks: Sequence[Tuple[int, int]], path: str,
                      reference_dataset: str) -> bool:
    """Whether ``path`` was drawn from these rows (same weights files), frames and reference."""
    if not (os.path.isfile(path) and os.path.isfile(_record_path(path))):
        return False
    with open(_record_path(path)) as f:
        return json.load(f) == _figure_key(rows, picks, reference_dataset)


def write_prediction_figure(rows: Sequence[FigureRow], picks: Sequence[Tuple[int, int]],
                            path: str, reference_dataset: str,
                            reference_label: str = "ground truth") -> str:
    """Draw ``rows`` x ``picks`` (``(video index, frame index)``) into the PNG ``path``.

    The first row is ``reference_dataset``'s uncompressed frames with their ground truth.
    Skipped when the record beside ``path`` says the same rows and frames were drawn."""
    if not rows:
        raise ValueError("a prediction figure needs at least one row")
    if is_figure_current(rows, picks, path, reference_dataset):
        logger.info("[skip] %s is up to date", path)
        return path
    metadata = _metadata(reference_dataset)
    videos = _frames(reference_dataset)
    grid: List[List[Image.Image]] = [[]]
    for v, t in _pick(videos, picks, reference_dataset):
        record = videos[v][t]
        image = read_frame(record, "RGB")
        grid[0].append(_caption(_draw_gt(image, metadata, record), [reference_label, "uncompressed"]))
    for row in rows:
        logger.info("figure %s: %s", os.path.basename(path), row.label)
        panels = []
        for entry in run_row(row, picks):
            image = read_frame(entry["record"], "RGB")
            panels.append(_caption(_draw(image, metadata, entry),
                                   _panel_lines(row.label, entry, metadata)))
        grid.append(panels)
    cell_w = max(p.width for r in grid for p in r)
    cell_h = max(p.height for r in grid for p in r)
    sheet = Image.new("RGB", (cell_w * len(picks), cell_h * len(grid)), BACKGROUND)
    for i, panels in enumerate(grid):
        for j, panel in enumerate(panels):
            sheet.paste(panel, (j * cell_w, i * cell_h))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: sheet.save(f, format="PNG"))
    atomic_write_json(_record_path(path), _figure_key(rows, picks, reference_dataset))
    return path


__all__ = ["FigureRow", "frame_ap", "frame_miou", "is_figure_current", "run_row",
           "write_prediction_figure"]
