"""Report figures: frame metrics on hand-made cases, and grids drawn from real (random-weight)
models of the shipped configs, with their resume record."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from pycocotools import mask as mask_util

from tool_helpers import REPO
from vcm_d2.engine import VCMTrainer, get_vcm_cfg, prepare_datasets
from vcm_d2.engine.figures import FigureRow, frame_ap, frame_miou, write_prediction_figure

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gt(box, cls, mask=None):
    a = {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls}
    if mask is not None:
        a["segmentation"] = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return a


def _pred(boxes, classes, scores, masks=None):
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float).reshape(-1, 4))
    inst.pred_classes = torch.tensor(classes, dtype=torch.long)
    inst.scores = torch.tensor(scores, dtype=torch.float)
    if masks is not None:
        inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, 32, 32), dtype=torch.bool)
    return inst


def test_frame_ap_hand_made_cases():
    box, other = (2, 2, 12, 12), (18, 18, 30, 30)
    gts = [_gt(box, 1), _gt(other, 2)]
    assert frame_ap(gts, _pred([box, other], [1, 2], [0.9, 0.8]), 32, 32, 3) == pytest.approx(100.0)
    assert frame_ap(gts, _pred([box], [1], [0.9]), 32, 32, 3) == pytest.approx(50.0)  # one class missed
    assert frame_ap(gts, _pred([box, other], [2, 1], [0.9, 0.8]), 32, 32, 3) == 0.0  # swapped classes
    assert frame_ap(gts, _pred([], [], []), 32, 32, 3) == 0.0
    assert np.isnan(frame_ap([], _pred([box], [1], [0.9]), 32, 32, 3))
    mask = np.zeros((32, 32), bool)
    mask[2:12, 2:12] = True
    half = mask.copy()
    half[2:12, 7:12] = False  # mask IoU 0.5: counts at IoU .50 only (1 of 10 thresholds)
    seg_gt = [_gt(box, 1, mask)]
    assert frame_ap(seg_gt, _pred([box], [1], [0.9], [mask]), 32, 32, 3, "segm") == pytest.approx(100.0)
    assert frame_ap(seg_gt, _pred([box], [1], [0.9], [half]), 32, 32, 3, "segm") == pytest.approx(10.0)


def test_frame_miou_hand_made():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    assert frame_miou(gt, gt.clip(0, 1), 3, 255) == pytest.approx(100.0)
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 2]])  # class 0: 4/5, class 1: 2/3, ignore not counted
    assert frame_miou(gt, pred, 3, 255) == pytest.approx(100.0 * (4 / 5 + 2 / 3) / 2)


def _random_weights(config, path, extra=()):
    cfg = get_vcm_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic", config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"] + list(extra))
    torch.manual_seed(0)
    model = VCMTrainer.build_model(cfg)
    os.makedirs(path, exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(path)).save("model")
    return cfg, str(path / "model.pth")


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_detection_figure_rows_frames_and_resume(tmp_path):
    cfg, weights = _random_weights("faster_rcnn_R18_slim.yaml", tmp_path)
    cfg.VCM.PAIRS.BUILD_ROOT = str(tmp_path / "pairs")
    pair = "vcm_synth_val@x264_q42"
    prepare_datasets(cfg, [pair])
    rows = [FigureRow("uncompressed direct", cfg, weights, "vcm_synth_val"),
            FigureRow("x264 q42 direct", cfg, weights, pair)]
    path = str(tmp_path / "fig" / "predictions_x264.png")
    picks = [(0, 6), (3, 6), (5, 99)]  # a frame index past the video's end is its last frame
    assert write_prediction_figure(rows, picks, path, "vcm_synth_val") == path
    width, height = _size(path)
    assert width % 3 == 0 and height % 3 == 0 and width // 3 >= 256  # 3 frames, 3 rows, 2x scale
    with open(os.path.splitext(path)[0] + ".json") as f:
        record = json.load(f)
    assert [r["label"] for r in record["rows"]] == ["uncompressed direct", "x264 q42 direct"]
    assert record["picks"] == [[0, 6], [3, 6], [5, 99]]
    mtime = os.stat(path).st_mtime_ns
    write_prediction_figure(rows, picks, path, "vcm_synth_val")  # same rows: not redrawn
    assert os.stat(path).st_mtime_ns == mtime
    write_prediction_figure(rows[:1], picks[:2], path, "vcm_synth_val")  # changed: redrawn
    assert _size(path) == (width * 2 // 3, height * 2 // 3)
    with pytest.raises(ValueError, match="8 videos"):
        write_prediction_figure(rows, [(8, 0)], str(tmp_path / "x.png"), "vcm_synth_val")


def test_video_and_semseg_figures(tmp_path):
    vis_cfg, vis_weights = _random_weights("vis_mask_rcnn_R18_slim.yaml", tmp_path / "vis",
                                           ["MODEL.VCM.VIS.MIN_SCORE", 0.0])
    path = str(tmp_path / "vis.png")
    write_prediction_figure([FigureRow("VIS direct", vis_cfg, vis_weights, "vcm_synth_vis_val")],
                            [(1, 6)], path, "vcm_synth_vis_val")
    assert _size(path)[1] > 2 * 256
    sem_cfg, sem_weights = _random_weights("transvfc_task_slim_semseg.yaml", tmp_path / "sem")
    path = str(tmp_path / "sem.png")
    write_prediction_figure([FigureRow("DeepLab", sem_cfg, sem_weights, "vcm_synth_sem_val")],
                            [(0, 6), (2, 6)], path, "vcm_synth_sem_val")
    assert _size(path)[0] >= 2 * 256
