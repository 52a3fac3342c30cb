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


def test_reset_clears_counts():
    ev = RateTaskEvaluator(CountingEvaluator())
    ev.process([{"height": 2, "width": 2, "bits": 8}], [{}])
    ev.reset()
    ev.process([{"height": 2, "width": 2, "bits": 4}], [{}])
    assert ev.evaluate()["rate"]["bpp"] == pytest.approx(1.0)
