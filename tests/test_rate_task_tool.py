"""tools/rate_task.py: the demo's pipeline on another dataset, codec and task from one command."""
import json

import pytest

from catalog_helpers import catalog_aside, shortened
from tool_helpers import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("rate_task")


def test_arguments_become_the_spec(tool, tmp_path):
    args = tool.parse_args([
        "--output", str(tmp_path), "--codecs", "x265", "vvc", "--qualities", "30", "37.5",
        "--methods", "ours", "--iters", "7", "--methods-table", "cdre_faster_rcnn_R50_FPN",
        "--method-config", "ours=my_ours.yaml", "--method-config", "new=new.yaml",
        "--codec-opt", "gop=8", "--metric", "segm", "AP", "MODEL.DEVICE", "cuda"])
    spec = tool.spec_from_args(args)
    assert spec.qualities == [30, 37.5] and spec.codecs == ["x265", "vvc"]
    assert spec.methods == {"ours": 7} and spec.codec_options == {"gop": 8}
    assert spec.table.clean == "faster_rcnn_R_50_FPN_direct.yaml"
    assert spec.table.methods["ours"] == "my_ours.yaml" and spec.table.methods["new"] == "new.yaml"
    assert spec.table.methods["full_ft"] == "faster_rcnn_R_50_FPN_full_ft.yaml"
    assert spec.metric == ("segm", "AP") and list(spec.opts) == ["MODEL.DEVICE", "cuda"]
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        tool.main(["--output", str(tmp_path), "--method-config", "ours"])


def test_unknown_method_fails_before_any_work(tool, tmp_path):
    with pytest.raises(ValueError, match=r"methods \['nope'\] are not in the method table"):
        tool.main(["--output", str(tmp_path / "out"), "--methods", "nope"])
    assert not (tmp_path / "out" / "compressed").exists()


def test_semantic_segmentation_direct_test_with_jpeg(tool, tmp_path, one_torch_thread):
    """Another dataset (semantic maps, mIoU by its evaluator type), codec (JPEG) and clean
    network, direct test only: curves, report and figure, then a resumed rerun does nothing. On
    the first frames of the first videos (validation: 4 frames of 2 videos, the figure at frame 3
    of both)."""
    names = [f"vcm_synth_sem_val@jpeg_q{q}" for q in (20, 60)]
    argv = ["--output", str(tmp_path), "--dataset", "vcm_synth_sem_val",
            "--train-dataset", "vcm_synth_sem_train", "--codecs", "jpeg", "--qualities", "20", "60",
            "--methods", "--clean-config", "transvfc_task_slim_semseg.yaml", "--train-iters", "1",
            "--figure-frames", "0:3", "1:3", "--workers", "1", "SOLVER.IMS_PER_BATCH", "2",
            "MODEL.VCM.TRANSVFC.INFERENCE_INPUT", "pixels"]
    with catalog_aside(names), shortened({"vcm_synth_sem_train": (1, 4),
                                          "vcm_synth_sem_val": (2, 4)}):
        report = tool.main(argv)
        text = open(report).read()
        assert "## semseg (mIoU)" in text and "jpeg/direct" in text
        assert "![jpeg](predictions_jpeg.png)" in text
        figure = json.loads((tmp_path / "predictions_jpeg.json").read_text())
        assert figure["picks"] == [[0, 3], [1, 3]]  # --figure-frames
        curve = json.loads((tmp_path / "curves" / "jpeg_direct.json").read_text())
        assert [p["quality"] for p in curve["points"]] == [20, 60]
        assert curve["points"][0]["bpp"] < curve["points"][1]["bpp"]  # real JPEG bits
        times = (tmp_path / "timings.json").read_text()
        tool.main(argv)  # resumed: nothing redone
        assert (tmp_path / "timings.json").read_text() == times
