"""CDRE and TransVFC through tools/train_net.py: the weights a 2-iteration training saves, loaded
by `--eval-only` (VCMTrainer.test), give the evaluation that ended the training, with the rate
of the method's own bits (CDRE: pair bits + side stream; TransVFC: its feature streams)."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from catalog_helpers import catalog_aside
from tool_helpers import REPO, load_tool
from vcm_d2.data.pairs import load_manifest, pair_dataset_name
from vcm_d2.engine.compress import compress_dataset

SYNTHETIC = os.path.join(REPO, "configs", "synthetic")
SOURCE = "vcm_synth_val"
# The first frames of one video of SOURCE (an I-frame and P-frames of TransVFC's 12-frame GOP):
# each evaluation stays short.
VIDEO = "vcm_test_synth_val_video_start"
FRAMES = 6
CODEC, QUALITY = "x264", 27
PAIR = pair_dataset_name(VIDEO, CODEC, QUALITY)
QUICK = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
         "TEST.DETECTIONS_PER_IMAGE", "5"]
METHODS = {  # config, dataset trained and evaluated on
    # CDRE enhances decoded frames of a pair dataset (its encoder side reads the originals)
    "cdre": ("cdre_faster_rcnn_R18_slim_ours.yaml", PAIR),
    # TransVFC codes the original frames' features itself (INFERENCE_INPUT "coded_features")
    "transvfc": ("transvfc_stage2_slim_detection.yaml", VIDEO),
}

# Small convolutions: a second torch thread only adds contention (several times slower on a
# busy machine).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory):
    """VIDEO registered, and its x264 pair compressed into the returned VCM.PAIRS.ROOTS entry."""
    dicts = DatasetCatalog.get(SOURCE)
    dicts = [d for d in dicts if d["video_id"] == dicts[0]["video_id"] and d["frame_idx"] < FRAMES]
    # without the synthetic spec: it describes SOURCE (and would build pairs of VIDEO on first use)
    metadata = {k: v for k, v in MetadataCatalog.get(SOURCE).as_dict().items() if k not in ("name", "spec")}
    root = str(tmp_path_factory.mktemp("pairs"))
    with catalog_aside([VIDEO]):
        DatasetCatalog.register(VIDEO, lambda: [dict(d) for d in dicts])
        MetadataCatalog.get(VIDEO).set(**metadata)
        compress_dataset(VIDEO, CODEC, [QUALITY], root, progress=False)
        yield root


def _results(output_dir):
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_eval_only_of_saved_weights_gives_the_final_evaluation(method, pair_root, tmp_path):
    config, dataset = METHODS[method]
    train_net = load_tool("train_net")
    opts = ["VCM.PAIRS.ROOTS", f"('{pair_root}',)", "DATASETS.TRAIN", f"('{dataset}',)",
            "DATASETS.TEST", f"('{dataset}',)"] + QUICK
    train_dir, eval_dir = str(tmp_path / "train"), str(tmp_path / "eval")

    def run(flags, *more_opts):
        args = ["--config-file", os.path.join(SYNTHETIC, config)] + flags + opts + list(more_opts)
        return train_net.main(train_net.default_argument_parser().parse_args(args))

    trained = run([], "OUTPUT_DIR", train_dir)
    weights = os.path.join(train_dir, "model_final.pth")
    evaluated = run(["--eval-only"], "MODEL.WEIGHTS", weights, "OUTPUT_DIR", eval_dir)

    rate = evaluated["rate"]
    assert rate["frames"] == FRAMES and rate["bpp"] > 0
    if method == "cdre":  # the pair's bits plus the side stream
        assert rate["side_bpp"] > 0
        assert rate["codec_bpp"] == pytest.approx(
            load_manifest(os.path.join(pair_root, VIDEO, CODEC, f"q{QUALITY}", "manifest.json"))["bpp"])
    else:  # the bits of the model's streams, nothing on the side
        assert rate["side_bpp"] == 0
    assert rate["bpp"] == pytest.approx(rate["codec_bpp"] + rate["side_bpp"])
    # the saved weights are the ones evaluated at the end of training (random ones would give
    # other bits), and each run wrote what it returned
    assert trained["rate"] == rate
    for key in ("AP", "AP50"):
        assert trained["bbox"][key] == pytest.approx(evaluated["bbox"][key], abs=1e-9)
    assert _results(train_dir)["rate"] == rate and _results(eval_dir)["rate"] == rate
    assert _results(eval_dir)["bbox"]["AP"] == pytest.approx(evaluated["bbox"]["AP"], abs=1e-9)
