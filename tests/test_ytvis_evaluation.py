"""YouTube-VIS metric: hand-computed cases, agreement with pycocotools on one-frame videos,
the detectron2 evaluator end to end and its wiring into build_task_evaluator."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vcm_d2.evaluation import RateTaskEvaluator, YTVISEvaluator, build_task_evaluator
from vcm_d2.evaluation.ytvis_evaluation import (
    AREA_RANGES,
    LARGE_AREA_MIN,
    SMALL_AREA_MAX,
    accumulate_ytvis,
    dataset_to_ytvis_gt,
    evaluate_ytvis,
    sequence_iou,
    summarize_ytvis,
    track_area,
)

H = W = 8  # tiny frames for the hand-computed cases
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


# ---------------------------------------------------------------------------------------------
# Helpers: official json from numpy masks
# ---------------------------------------------------------------------------------------------
def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def segms(masks):
    return [None if m is None else rle(m) for m in masks]


def video(vid, frames, h=H, w=W):
    return {"id": vid, "height": h, "width": w, "length": frames,
            "file_names": [f"{vid}/{t:05d}.jpg" for t in range(frames)]}


def gt_json(videos, tracks, categories=CATEGORIES):
    """tracks: (video_id, category_id, masks[, iscrowd])."""
    anns = []
    for i, (vid, cat, masks, *crowd) in enumerate(tracks):
        anns.append({"id": i + 1, "video_id": vid, "category_id": cat,
                     "iscrowd": crowd[0] if crowd else 0, "segmentations": segms(masks),
                     "areas": [None if m is None else int(m.sum()) for m in masks],
                     "bboxes": [None] * len(masks)})
    return {"videos": videos, "annotations": anns, "categories": categories}


def result(vid, cat, score, masks):
    return {"video_id": vid, "category_id": cat, "score": score, "segmentations": segms(masks)}


A = box(0, 2, 0, 2)  # 2x2 = 4 px
B = box(4, 6, 4, 6)
C = box(0, 2, 5, 7)


# ---------------------------------------------------------------------------------------------
# Sequence IoU and track area
# ---------------------------------------------------------------------------------------------
def test_sequence_iou_matches_dense_definition():
    rng = np.random.default_rng(0)
    frames = 4

    def random_track():
        return [None if rng.random() < 0.3 else (rng.random((H, W)) < 0.4).astype(np.uint8)
                for _ in range(frames)]

    dts, gts = [random_track() for _ in range(5)], [random_track() for _ in range(3)]
    dts.append([None] * frames)  # never present: union with a present GT is the GT area
    got = sequence_iou([segms(d) for d in dts], [segms(g) for g in gts])
    zero = np.zeros((H, W), bool)
    for i, d in enumerate(dts):
        for j, g in enumerate(gts):
            dd = [zero if m is None else m.astype(bool) for m in d]
            gg = [zero if m is None else m.astype(bool) for m in g]
            inter = sum((x & y).sum() for x, y in zip(dd, gg))
            union = sum((x | y).sum() for x, y in zip(dd, gg))
            assert got[i, j] == pytest.approx(inter / union if union else 0.0, abs=1e-12)
    # Neither track ever present: union 0 -> IoU 0 (not NaN).
    assert sequence_iou([segms([None] * 2)], [segms([None] * 2)])[0, 0] == 0.0


def test_sequence_iou_absent_frames_count_in_union():
    # GT present in 3 frames (4 px each); prediction exact in frames 0-1, absent in frame 2,
    # and present in frame 3 where the GT is absent: I = 8, U = 4 + 4 + 4 (GT only) + 4 (dt only).
    gt = segms([A, A, A, None])
    dt = segms([A, A, None, A])
    assert sequence_iou([dt], [gt])[0, 0] == pytest.approx(8 / 16)


def test_track_area_is_mean_over_present_frames():
    # 100 px and 300 px in 2 of 3 frames: (100 + 300) / 2, not / 3.
    m100, m300 = box(0, 10, 0, 10, 20, 20), box(0, 15, 0, 20, 20, 20)
    assert track_area(segms([m100, None, m300])) == 200.0
    assert track_area(segms([None, None])) == 0.0


# ---------------------------------------------------------------------------------------------
# Hand-computed metric cases
# ---------------------------------------------------------------------------------------------
def test_perfect_prediction_gives_100():
    tracks = [(1, 1, [A, A, None]), (2, 1, [B, B, B]), (2, 2, [None, C, C])]
    gt = gt_json([video(1, 3), video(2, 3)], tracks)
    res = [result(vid, cat, 0.9, masks) for vid, cat, masks in tracks]
    m = evaluate_ytvis(gt, res)
    for key in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "AP-a", "AP-b"):
        assert m[key] == pytest.approx(100.0), key
    # No medium or large track: undefined, reported as NaN like detectron2.
    assert math.isnan(m["APm"]) and math.isnan(m["APl"])


def test_missed_track():
    # Two GT tracks, one predicted exactly: precision [1], recall 1/2 at every IoU threshold.
    # Recall thresholds 0, .01, ..., .50 (51 of 101) get precision 1, the rest 0.
    gt = gt_json([video(1, 3)], [(1, 1, [A, A, A]), (1, 1, [B, B, B])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [A, A, A])])
    assert m["AP"] == pytest.approx(51 / 101 * 100)
    assert m["AP50"] == m["AP75"] == pytest.approx(51 / 101 * 100)
    assert m["AR1"] == m["AR10"] == pytest.approx(50.0)
    assert math.isnan(m["AP-b"])  # no GT of category b


def test_fragmented_track():
    # GT: 2x2 (4 px) in 4 frames. d1 covers frames 0-2 plus one extra pixel in frame 0:
    # IoU = 12 / 17 = 0.706. d2 covers frame 3 only: IoU = 4 / 16 = 0.25.
    a_plus = A.copy()
    a_plus[2, 0] = 1
    gt = gt_json([video(1, 4)], [(1, 1, [A, A, A, A])])
    d1, d2 = result(1, 1, 0.9, [a_plus, A, A, None]), result(1, 1, 0.8, [None, None, None, A])
    ious = sequence_iou([d1["segmentations"], d2["segmentations"]], [gt["annotations"][0]["segmentations"]])
    np.testing.assert_allclose(ious[:, 0], [12 / 17, 4 / 16])
    m = evaluate_ytvis(gt, [d1, d2])
    # IoU thresholds .50-.70 (5 of 10): d1 TP, d2 FP after it -> precision [1, .5], recall [1, 1]
    # -> AP 1. Thresholds .75-.95: no TP -> AP 0. Mean over thresholds: 5 / 10.
    assert m["AP"] == pytest.approx(50.0)
    assert m["AP50"] == pytest.approx(100.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["AR1"] == pytest.approx(50.0)  # recall 1 at 5 of 10 thresholds


@pytest.mark.parametrize("shift, iou, ap50, ap75, ap", [
    # Objects 3x3 (9 px) overlapping in 6 px; a swap frame adds I 6, U 12; a correct one I 9, U 9.
    # 2 correct + 2 swapped frames: IoU = (9 + 9 + 6 + 6) / (9 + 9 + 12 + 12) = 30 / 42 = 0.714,
    # matched at thresholds .50-.70 (5 of 10).
    (1, 30 / 42, 100.0, 0.0, 50.0),
    # Disjoint objects: IoU = 18 / (9 + 9 + 18 + 18) = 1/3, never matched.
    (3, 18 / 54, 0.0, 0.0, 0.0),
])
def test_swapped_identities(shift, iou, ap50, ap75, ap):
    obj1, obj2 = box(0, 3, 0, 3), box(0, 3, shift, shift + 3)
    gt = gt_json([video(1, 4)], [(1, 1, [obj1] * 4), (1, 1, [obj2] * 4)])
    p1 = result(1, 1, 0.9, [obj1, obj1, obj2, obj2])
    p2 = result(1, 1, 0.8, [obj2, obj2, obj1, obj1])
    ious = sequence_iou([p1["segmentations"], p2["segmentations"]],
                        [a["segmentations"] for a in gt["annotations"]])
    np.testing.assert_allclose(ious, [[iou, iou], [iou, iou]])
    m = evaluate_ytvis(gt, [p1, p2])
    assert (m["AP50"], m["AP75"], m["AP"]) == pytest.approx((ap50, ap75, ap))


def test_false_positive_scored_above_true_positive():
    # Sorted: FP (.9) then TP (.8): precision [0, .5] -> envelope [.5, .5], recall [0, 1];
    # every recall threshold gets .5 -> AP 50 at every IoU threshold.
    gt = gt_json([video(1, 3), video(2, 3)], [(1, 1, [A, A, A])])
    tp = result(1, 1, 0.8, [A, A, A])
    fp_same_video, fp_other_video = result(1, 1, 0.9, [B, B, B]), result(2, 1, 0.9, [B, B, B])
    m = evaluate_ytvis(gt, [tp, fp_same_video])
    assert m["AP"] == pytest.approx(50.0)
    assert m["AR1"] == pytest.approx(0.0)  # maxDet 1 per video keeps only the FP
    assert m["AR10"] == pytest.approx(100.0)
    # The same FP in another video: same AP, but maxDet is per video, so AR1 finds the TP.
    m = evaluate_ytvis(gt, [tp, fp_other_video])
    assert m["AP"] == pytest.approx(50.0)
    assert m["AR1"] == pytest.approx(100.0)


def test_crowd_ground_truth():
    crowd, person = box(0, 4, 0, 8), box(6, 8, 0, 2)  # 32 px, 4 px
    videos = [video(1, 2)]
    c1, c2 = result(1, 1, 0.95, [crowd, crowd]), result(1, 1, 0.9, [crowd, crowd])
    tp = result(1, 1, 0.5, [person, person])
    # Crowd: c1 and c2 both match it (many matches allowed) and are ignored; tp is the only
    # counted detection -> AP 100.
    gt_crowd = gt_json(videos, [(1, 1, [crowd, crowd], 1), (1, 1, [person, person])])
    assert evaluate_ytvis(gt_crowd, [c1, c2, tp])["AP"] == pytest.approx(100.0)
    # Not crowd: c1 TP, c2 FP (GT taken), tp TP -> precision [1, .5, 2/3] -> envelope
    # [1, 2/3, 2/3], recall [.5, .5, 1]: 51 recall thresholds <= .5 get 1, 50 get 2/3.
    gt_plain = gt_json(videos, [(1, 1, [crowd, crowd], 0), (1, 1, [person, person])])
    assert evaluate_ytvis(gt_plain, [c1, c2, tp])["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)
    # iscrowd does not change the IoU: a detection covering a quarter of the crowd region has
    # IoU 8 / 32 = .25 (COCO's crowd IoU would say 1), so it is a FP scored above the TP -> 50.
    inside = result(1, 1, 0.9, [box(0, 2, 0, 4)] * 2)
    assert evaluate_ytvis(gt_crowd, [inside, tp])["AP"] == pytest.approx(50.0)


def test_matching_prefers_counted_gt_then_later_ties():
    # A detection prefers any counted GT above the threshold to a better-matching crowd one.
    # d: 32 px; crowd c (listed first): IoU 28/32 = .875; person g: IoU 20/32 = .625.
    d, c, g = box(0, 4, 0, 8), box(0, 4, 0, 7), box(0, 4, 0, 5)
    gt = gt_json([video(1, 1)], [(1, 1, [c], 1), (1, 1, [g])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [d])])
    # Thresholds .50-.60 (3 of 10): d -> g, AP 1; above: g missed, AP 0.
    assert m["AP50"] == pytest.approx(100.0) and m["AP"] == pytest.approx(30.0)
    # Equal IoUs: COCOeval keeps the later GT. d1 = g1 ∪ g2 has IoU 4/8 = .5 with both and
    # takes g2; d2 = g2 then finds g2 taken -> FP. At .50: precision [1, .5], recall [.5, .5].
    g1, g2 = box(0, 2, 0, 2), box(0, 2, 2, 4)
    gt = gt_json([video(1, 1)], [(1, 1, [g1]), (1, 1, [g2])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [g1 | g2]), result(1, 1, 0.8, [g2])])
    assert m["AP50"] == pytest.approx(51 / 101 * 100)


def test_area_ranges_use_ytvis_bounds_and_mean_area():
    assert (SMALL_AREA_MAX, LARGE_AREA_MIN) == (128 ** 2, 256 ** 2)
    size = 300
    # Track a: 128x128 in both frames -> area 128^2 exactly: small AND medium (bounds inclusive).
    # Track b: 256x256 in frame 0, absent in frame 1 -> mean area 256^2 (not 256^2 / 2):
    # medium AND large. Only a is predicted.
    a = box(0, 128, 0, 128, size, size)
    b = box(0, 256, 0, 256, size, size)
    gt = gt_json([video(1, 2, size, size)], [(1, 1, [a, a]), (1, 1, [b, None])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [a, a])])
    assert m["APs"] == pytest.approx(100.0)  # a only (b ignored: too large)
    assert m["APm"] == pytest.approx(51 / 101 * 100)  # a and b, recall 1/2
    assert m["APl"] == pytest.approx(0.0)  # b only, missed (a's detection matches ignored a)
    assert m["AP"] == pytest.approx(51 / 101 * 100)


def test_unknown_video_or_category_raises():
    gt = gt_json([video(1, 2)], [(1, 1, [A, A])])
    with pytest.raises(ValueError, match="video_id 7"):
        evaluate_ytvis(gt, [result(7, 1, 0.5, [A, A])])
    with pytest.raises(ValueError, match="category_id 9"):
        evaluate_ytvis(gt, [result(1, 9, 0.5, [A, A])])
    with pytest.raises(ValueError, match="3 masks for 2 frames"):
        evaluate_ytvis(gt, [result(1, 1, 0.5, [A, A, A])])


# ---------------------------------------------------------------------------------------------
# Agreement with pycocotools on one-frame videos
# ---------------------------------------------------------------------------------------------
def _random_coco_case(seed=0, images=12, categories=3, size=300):
    """Random rectangles with holes, sized across the YTVIS area bounds; detections are
    jittered copies of GT, duplicates and random false positives, scores with ties."""
    rng = np.random.default_rng(seed)

    def shape():
        side_y, side_x = rng.integers(8, size, 2)
        y0, x0 = rng.integers(0, size - side_y + 1), rng.integers(0, size - side_x + 1)
        m = box(y0, y0 + side_y, x0, x0 + side_x, size, size)
        hy, hx = rng.integers(0, side_y // 2 + 1), rng.integers(0, side_x // 2 + 1)
        m[y0:y0 + hy, x0:x0 + hx] = 0  # a notch: not a rectangle
        return m

    def jitter(m):
        return np.roll(m, tuple(rng.integers(-12, 13, 2)), axis=(0, 1))

    gt_masks, dt = [], []
    for img in range(1, images + 1):
        for cat in range(1, categories + 1):
            masks = [shape() for _ in range(rng.integers(0, 4))]
            gt_masks += [(img, cat, m) for m in masks]
            for m in masks:
                dt += [(img, cat, jitter(m)) for _ in range(rng.integers(0, 3))]
            dt += [(img, cat, shape()) for _ in range(rng.integers(0, 14))]  # some (img, cat) > 10
    scores = np.round(rng.random(len(dt)), 1)  # ties across and within images
    return gt_masks, [(i, c, m, float(s)) for (i, c, m), s in zip(dt, scores)]


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pycocotools_on_one_frame_videos(seed):
    size, categories = 300, [{"id": k, "name": f"c{k}"} for k in range(1, 4)]
    gt_masks, dt = _random_coco_case(seed=seed, size=size)
    images = sorted({i for i, _, _ in gt_masks} | {i for i, _, _, _ in dt})
    # COCO layout
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": [{"id": i, "height": size, "width": size} for i in images],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "segmentation": rle(m),
                         "area": float(m.sum()), "bbox": list(mask_util.toBbox(rle(m))), "iscrowd": 0}
                        for n, (i, c, m) in enumerate(gt_masks)],
        "categories": categories,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{"image_id": i, "category_id": c, "segmentation": rle(m), "score": s}
                                   for i, c, m, s in dt])
        coco_eval = COCOeval(coco_gt, coco_dt, "segm")
        coco_eval.params.areaRng = [list(r) for r in AREA_RANGES.values()]  # YTVIS bounds
        coco_eval.params.areaRngLbl = list(AREA_RANGES)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    # YouTube-VIS layout: each image is a one-frame video
    gt = gt_json([video(i, 1, size, size) for i in images],
                 [(i, c, [m]) for i, c, m in gt_masks], categories)
    results = [result(i, c, s, [m]) for i, c, m, s in dt]
    acc = accumulate_ytvis(gt, results)
    ours = evaluate_ytvis(gt, results)

    # The whole precision / recall arrays agree, every category, area range and maxDet.
    np.testing.assert_allclose(acc.precision, coco_eval.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(acc.recall, coco_eval.eval["recall"], rtol=0, atol=1e-12)
    stats = coco_eval.stats  # COCOeval's order; fractions
    expected = {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "APs": stats[3], "APm": stats[4],
                "APl": stats[5], "AR1": stats[6], "AR10": stats[7], "AR100": stats[8]}
    for key, value in expected.items():
        if value < 0:  # an area range without ground truth: nan, as detectron2's COCOEvaluator
            assert np.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value * 100, abs=1e-6), (key, ours[key], value)
    # The case is not degenerate: every area range populated and AR10 < AR100 (maxDet matters).
    assert all(0 < ours[k] < 100 for k in ("AP", "APs", "APm", "APl"))
    assert ours["AR10"] < ours["AR100"]
    assert summarize_ytvis(acc)["AP"] == pytest.approx(stats[0], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# The detectron2 evaluator
# ---------------------------------------------------------------------------------------------
THING_CLASSES = ["cat", "dog"]
DATASET_IDS = {3: 0, 7: 1}  # dataset category id -> contiguous


def _d2_videos():
    """Two videos as the ytvis loader gives them: per-frame object lists, ``id`` = track."""
    poly = [[4.0, 4.0, 7.0, 4.0, 7.0, 7.0, 4.0, 7.0]]
    bytes_rle = mask_util.encode(np.asfortranarray(B))

    def obj(track, cat, segm, crowd=0):
        return {"id": track, "category_id": cat, "segmentation": segm, "iscrowd": crowd,
                "bbox": [0.0, 0.0, 1.0, 1.0], "bbox_mode": 0}

    return [
        {"video_id": 5, "height": H, "width": W, "length": 3, "file_names": ["5/0", "5/1", "5/2"],
         "annotations": [[obj(1, 0, rle(A)), obj(2, 1, poly)], [obj(1, 0, rle(A))],
                         [obj(1, 0, rle(A)), obj(2, 1, poly)]]},
        {"video_id": 9, "height": H, "width": W, "length": 2, "file_names": ["9/0", "9/1"],
         "annotations": [[obj(4, 1, bytes_rle)], [obj(4, 1, bytes_rle), obj(5, 0, rle(C), crowd=1)]]},
    ]


@pytest.fixture
def register_videos():
    names = []

    def register(name, videos, **meta):
        DatasetCatalog.register(name, lambda: videos)
        MetadataCatalog.get(name).set(thing_classes=THING_CLASSES, evaluator_type="ytvis", **meta)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _inputs(videos):
    return [{k: v[k] for k in ("video_id", "height", "width", "file_names")} for v in videos]


def _perfect_outputs(videos):
    """Tracks copied from the GT, as a model would output them (contiguous ids, bytes RLE)."""
    outputs = []
    for v in videos:
        tracks = {}
        for t, objects in enumerate(v["annotations"]):
            for o in objects:
                segm = o["segmentation"]
                if isinstance(segm, list):  # polygons
                    segm = mask_util.merge(mask_util.frPyObjects(segm, H, W))
                counts = segm["counts"]
                counts = counts.encode() if isinstance(counts, str) else counts  # models emit bytes
                track = tracks.setdefault(o["id"], {
                    "track_id": o["id"], "category_id": o["category_id"], "score": 0.9,
                    "segmentations": [None] * len(v["file_names"])})
                track["segmentations"][t] = {"size": [H, W], "counts": counts}
        outputs.append({"tracks": list(tracks.values()), "bits": [1] * len(v["file_names"])})
    return outputs


def test_evaluator_perfect_predictions_and_results_json(tmp_path, register_videos):
    videos = _d2_videos()
    name = register_videos("vcm_test_ytvis_tiny", videos, thing_dataset_id_to_contiguous_id=DATASET_IDS)
    ev = YTVISEvaluator(name, distributed=True, output_dir=str(tmp_path))
    ev.reset()
    outputs = _perfect_outputs(videos)
    for inp, out in zip(_inputs(videos), outputs):  # one video per call, like a video loader
        ev.process([inp], [out])
    res = ev.evaluate()
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["segm"]["AP-cat"] == pytest.approx(100.0)
    assert res["segm"]["AP-dog"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == 4  # tracks 1, 2 of video 5 and 4, 5 of video 9
    assert {r["category_id"] for r in saved} == {3, 7}  # dataset ids, not contiguous
    for r in saved:
        assert set(r) == {"video_id", "category_id", "score", "segmentations"}
        assert len(r["segmentations"]) == {5: 3, 9: 2}[r["video_id"]]
        assert all(s is None or isinstance(s["counts"], str) for s in r["segmentations"])
    # The re-read submission scores the same against the GT in official layout.
    gt = dataset_to_ytvis_gt(videos, MetadataCatalog.get(name))
    assert [c["id"] for c in gt["categories"]] == [3, 7]
    assert evaluate_ytvis(gt, saved)["AP"] == pytest.approx(100.0)


def test_evaluator_default_category_ids_and_wrong_class(tmp_path, register_videos):
    videos = _d2_videos()
    name = register_videos("vcm_test_ytvis_default_ids", videos)  # no id mapping: id = index + 1
    ev = YTVISEvaluator(name, distributed=False, output_dir=str(tmp_path))
    outputs = _perfect_outputs(videos)
    # Track 1 (a cat) predicted as a low-scored dog: cat misses its only counted track, dog
    # gains a FP ranked after its TPs.
    outputs[0]["tracks"][0].update(category_id=1, score=0.1)
    ev.process(_inputs(videos), outputs)
    res = ev.evaluate()["segm"]
    assert res["AP-dog"] == pytest.approx(100.0)
    assert res["AP-cat"] == pytest.approx(0.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["category_id"] for r in saved) == [1, 2, 2, 2]


def test_evaluator_rejects_bad_tracks_and_unknown_videos(register_videos):
    videos = _d2_videos()
    name = register_videos("vcm_test_ytvis_bad", videos)
    ev = YTVISEvaluator(name, distributed=False)
    inp = _inputs(videos)[0]
    good = _perfect_outputs(videos)[0]["tracks"][0]
    small = dict(good, segmentations=[{"size": [4, 4], "counts": rle(np.ones((4, 4)))["counts"]}] * 3)
    with pytest.raises(ValueError, match=r"video 5, track 1, frame 0: mask size \[4, 4\]"):
        ev.process([inp], [{"tracks": [small]}])
    short = dict(good, segmentations=good["segmentations"][:2])
    with pytest.raises(ValueError, match="video 5, track 1: 2 masks for 3 frames"):
        ev.process([inp], [{"tracks": [short]}])
    ev.reset()
    ev.process([dict(inp, video_id=77)], [{"tracks": []}])
    with pytest.raises(ValueError, match="not in 'vcm_test_ytvis_bad'.*77"):
        ev.evaluate()


def test_evaluator_without_annotations_writes_results_only(tmp_path, register_videos):
    videos = [{k: v for k, v in video.items() if k != "annotations"} for video in _d2_videos()]
    name = register_videos("vcm_test_ytvis_unlabelled", videos)
    ev = YTVISEvaluator(name, output_dir=str(tmp_path))
    ev.process(_inputs(videos), _perfect_outputs(_d2_videos()))
    assert ev.evaluate() == {}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["video_id"] for r in saved} == {5, 9}


def test_build_task_evaluator_wraps_ytvis_and_reports_bpp(tmp_path, register_videos):
    from vcm_d2.engine import get_vcm_cfg

    videos = _d2_videos()
    name = register_videos("vcm_test_ytvis_rate", videos)
    cfg = get_vcm_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    ev = build_task_evaluator(cfg, name)
    assert isinstance(ev, RateTaskEvaluator) and isinstance(ev._task, YTVISEvaluator)
    ev.reset()
    inputs = [dict(inp, bits=[100, 200, 300][: len(inp["file_names"])]) for inp in _inputs(videos)]
    outputs = [{k: v for k, v in out.items() if k != "bits"} for out in _perfect_outputs(videos)]
    ev.process(inputs, outputs)
    res = ev.evaluate()
    assert res["segm"]["AP"] == pytest.approx(100.0)
    # Per-frame bits of both videos over all their pixels: (600 + 300) / (5 frames * 64 px).
    assert res["rate"]["bpp"] == pytest.approx(900 / (5 * H * W))
    assert res["rate"]["frames"] == 5
    assert (tmp_path / "inference" / name / "results.json").exists()
