"""RateTaskEvaluator: bpp = (codec bits + side bits) / pixels, task results untouched."""
import pytest
from detectron2.evaluation import DatasetEvaluator

from vcm_d2.evaluation import RateTaskEvaluator


class CountingEvaluator(DatasetEvaluator):
    def reset(self):
        self.n = 0

    def process(self, inputs, outputs):
        self.n += len(inputs)

    def evaluate(self):
        return {"bbox": {"AP": float(self.n)}}


def test_bpp_includes_side_bits():
    ev = RateTaskEvaluator(CountingEvaluator())
    ev.reset()
    ev.process([{"height": 10, "width": 20, "bits": 400}, {"height": 10, "width": 20, "bits": 200}],
               [{"side_bits": 100}, {}])
    res = ev.evaluate()
    assert res["bbox"]["AP"] == 2.0
    assert res["rate"]["bpp"] == pytest.approx((400 + 200 + 100) / 400)
    assert res["rate"]["codec_bpp"] == pytest.approx(600 / 400)
    assert res["rate"]["side_bpp"] == pytest.approx(100 / 400)
    assert res["rate"]["frames"] == 2


def test_video_records_count_every_frame():
    ev = RateTaskEvaluator(CountingEvaluator())
    ev.process([{"height": 4, "width": 4, "file_names": ["a", "b", "c"], "bits": [10, 20, 30]}],
               [{}])
    res = ev.evaluate()
    assert res["rate"]["bpp"] == pytest.approx(60 / 48)
    assert res["rate"]["frames"] == 3


def test_partial_bits_gives_no_bpp_and_require_bits_raises():
    ev = RateTaskEvaluator(CountingEvaluator())
    ev.process([{"height": 2, "width": 2, "bits": 8}, {"height": 2, "width": 2}], [{}, {}])
    assert "bpp" not in ev.evaluate()["rate"]
    strict = RateTaskEvaluator(CountingEvaluator(), require_bits=True)
    with pytest.raises(ValueError, match="no 'bits'"):
        strict.process([{"height": 2, "width": 2, "file_name": "x.png"}], [{}])


def test_model_coded_bits_count_and_double_coding_raises():
    ev = RateTaskEvaluator(CountingEvaluator())
    ev.process([{"height": 4, "width": 4}], [{"bits": 64, "side_bits": 16}])
    assert ev.evaluate()["rate"]["bpp"] == pytest.approx(80 / 16)
    with pytest.raises(ValueError, match="coded once"):
        ev.process([{"height": 4, "width": 4, "bits": 8}], [{"bits": 8}])


def test_reset_clears_counts():
    ev = RateTaskEvaluator(CountingEvaluator())
    ev.process([{"height": 2, "width": 2, "bits": 8}], [{}])
    ev.reset()
    ev.process([{"height": 2, "width": 2, "bits": 4}], [{}])
    assert ev.evaluate()["rate"]["bpp"] == pytest.approx(1.0)


def test_semseg_evaluator_reports_miou_and_bpp(tmp_path):
    """The sem_seg path of build_task_evaluator: mIoU from SemSegEvaluator plus bpp."""
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from vcm_d2.engine import get_vcm_cfg
    from vcm_d2.evaluation import build_task_evaluator

    name = "vcm_test_semseg_tiny"
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1
    Image.fromarray(gt).save(tmp_path / "gt.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    rec = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "gt.png"),
           "height": 8, "width": 8, "image_id": 0, "bits": 32}
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [rec])
    MetadataCatalog.get(name).set(stuff_classes=["bg", "thing"], ignore_label=255,
                                  evaluator_type="sem_seg")
    cfg = get_vcm_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    ev = build_task_evaluator(cfg, name)
    assert isinstance(ev, RateTaskEvaluator)
    ev.reset()
    logits = torch.zeros(2, 8, 8)
    logits[1][torch.from_numpy(gt == 1)] = 1.0  # perfect prediction
    ev.process([rec], [{"sem_seg": logits}])
    res = ev.evaluate()
    assert res["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert res["rate"]["bpp"] == pytest.approx(32 / 64)
