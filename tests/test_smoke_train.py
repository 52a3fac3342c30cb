"""End to end on the synthetic benchmark: compress -> pair dataset -> 3 training iterations
through tools/train_net.py -> evaluation with AP and bpp from the manifest."""
import importlib.util
import json
import os

import pytest

from catalog_helpers import catalog_aside, shortened
import vcm_d2  # noqa: F401
from vcm_d2.engine.compress import compress_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIR = "vcm_synth_val@x264_q40"


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("storage", ["png", "bitstream"])
def test_train_then_evaluate_on_compressed(tmp_path, storage, one_torch_thread):
    """Both storages of a pair dataset (decoded PNGs, or only the bitstreams, whose frames the
    mapper decodes), trained on and evaluated through tools/train_net.py, on the first two
    validation videos."""
    with catalog_aside([PAIR]), shortened({"vcm_synth_val": 2}):
        _train_then_evaluate(tmp_path, storage)


def _train_then_evaluate(tmp_path, storage):
    manifests = compress_dataset("vcm_synth_val", "x264", [40], str(tmp_path / "comp"),
                                 codec_options={"gop": 12}, progress=False, storage=storage)
    with open(manifests[40]) as f:
        manifest_bpp = json.load(f)["bpp"]
    train_net = _train_net()
    args = train_net.default_argument_parser().parse_args([
        "--config-file", os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml"),
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
        "VCM.PAIRS.ROOTS", f"('{tmp_path / 'comp'}',)",
        "DATASETS.TRAIN", f"('{PAIR}',)", "DATASETS.TEST", f"('{PAIR}',)",
    ])
    train_net.main(args)
    final = tmp_path / "out" / "model_final.pth"
    assert final.exists()

    args = train_net.default_argument_parser().parse_args([
        "--config-file", os.path.join(REPO, "configs", "synthetic", "faster_rcnn_R18_slim.yaml"),
        "--eval-only", "MODEL.WEIGHTS", str(final), "OUTPUT_DIR", str(tmp_path / "eval"),
        "DATALOADER.NUM_WORKERS", "0",
        "VCM.PAIRS.ROOTS", f"('{tmp_path / 'comp'}',)",
        "DATASETS.TEST", f"('{PAIR}',)",
    ])
    res = train_net.main(args)
    assert 0.0 <= res["bbox"]["AP"] <= 100.0
    assert res["rate"]["frames"] == 24
    assert res["rate"]["bpp"] == pytest.approx(manifest_bpp, rel=1e-9)
    assert res["rate"]["side_bpp"] == 0.0
