"""tools/video_demo.py end to end on short synthetic videos (random weights: the plumbing, not
the predictions) and the helpers of ``vcm_d2.utils.video`` and ``vcm_d2.utils.drawing``."""
import importlib.util
import os

import av
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image

from vcm_d2.codecs import build_codec
from vcm_d2.data.synthetic import VAL_SPEC, render_video
from vcm_d2.engine import VideoPredictor, get_vcm_cfg
from vcm_d2.utils.drawing import add_caption, draw_instances, draw_sem_seg, side_by_side
from vcm_d2.utils.video import iter_video_frames, video_frame_rate, write_mp4

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(REPO, "configs", "synthetic")
VIS = os.path.join(SYNTH, "vis_mask_rcnn_R18_slim.yaml")
VIS_CDRE = os.path.join(SYNTH, "vis_cdre_mask_rcnn_R18_slim_ours.yaml")
TRANSVFC = os.path.join(SYNTH, "transvfc_stage2_slim_detection.yaml")
RANDOM_WEIGHTS = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
NUM_FRAMES = 4
CODEC, QUALITY = "x264", 27
INPUT_FPS = 10  # of the mp4 input, unlike the tool's default: shows that the input's is kept
# Mean absolute difference of the output's left panel from the input frame: the output's
# crf-18 encode of these textured 128-px frames costs about 3.5 (a black panel about 130).
LEFT_PANEL_TOLERANCE = 6.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("video_demo",
                                                  os.path.join(REPO, "tools", "video_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def frames():
    return render_video(VAL_SPEC, 0).frames[:NUM_FRAMES]


@pytest.fixture(scope="module")
def frame_dir(tmp_path_factory, frames):
    folder = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return str(folder)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory, frames):
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    write_mp4(path, frames, INPUT_FPS)
    return path


def _decode(path):
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)], rate


def _run(tool, *argv):
    return tool.main([str(a) for a in argv] + RANDOM_WEIGHTS)


def _check_output(path, originals, fps):
    """The mp4 decodes to one side-by-side frame per input frame, the input on the left."""
    out, rate = _decode(path)
    h, w = originals[0].shape[:2]
    assert len(out) == len(originals) and rate == fps
    assert out[0].shape[1] == 2 * w and out[0].shape[0] > h and out[0].shape[0] % 2 == 0
    for frame, original in zip(out, originals):
        diff = np.abs(frame[:h, :w].astype(float) - original).mean()
        assert diff < LEFT_PANEL_TOLERANCE


def test_direct_vis_bpp_is_the_codec_bits(tool, frame_dir, frames, tmp_path):
    out = tmp_path / "vis.mp4"
    summary = _run(tool, frame_dir, "--config-file", VIS, "--codec", CODEC, "--quality", QUALITY,
                   "-o", out, "--confidence-threshold", 0)
    coded = build_codec(CODEC).encode(frames, QUALITY)  # a folder has no frame rate: defaults
    pixels = NUM_FRAMES * frames[0].shape[0] * frames[0].shape[1]
    assert summary["frames"] == NUM_FRAMES and summary["side_bits"] == 0
    assert summary["bits"] == coded.total_bits
    assert summary["bpp"] == pytest.approx(coded.total_bits / pixels)
    assert isinstance(summary["tracks"], int)
    _check_output(str(out), frames, tool.DEFAULT_FPS)
    assert os.listdir(tmp_path) == ["vis.mp4"]  # no temp file left


def test_cdre_bpp_counts_codec_and_side_streams(tool, video_file, tmp_path):
    out = tmp_path / "cdre.mp4"
    summary = _run(tool, video_file, "--config-file", VIS_CDRE, "--method", "cdre",
                   "--codec", CODEC, "--quality", QUALITY, "-o", out)
    originals = list(iter_video_frames(video_file))
    coded = build_codec(CODEC, fps=INPUT_FPS).encode(originals, QUALITY)
    pixels = len(originals) * originals[0].shape[0] * originals[0].shape[1]
    assert summary["side_bits"] > 0
    assert summary["bits"] == coded.total_bits + summary["side_bits"]
    assert summary["bpp"] == pytest.approx(summary["bits"] / pixels)
    _check_output(str(out), originals, INPUT_FPS)


def test_transvfc_bpp_is_the_models_stream(tool, frame_dir, frames, tmp_path):
    out, n = tmp_path / "transvfc.mp4", NUM_FRAMES - 1
    torch.manual_seed(0)
    summary = _run(tool, frame_dir, "--config-file", TRANSVFC, "--method", "transvfc", "-o", out,
                   "--max-frames", n)
    cfg = get_vcm_cfg()
    cfg.merge_from_file(TRANSVFC)
    cfg.merge_from_list(RANDOM_WEIGHTS)
    torch.manual_seed(0)  # the same random weights as the tool's model
    predictor = VideoPredictor(cfg)
    bits = [predictor(np.ascontiguousarray(f[:, :, ::-1]))["bits"] for f in frames[:n]]
    assert summary["frames"] == n and "tracks" not in summary
    assert summary["bits"] == sum(bits) > 0
    pixels = n * frames[0].shape[0] * frames[0].shape[1]
    assert summary["bpp"] == pytest.approx(sum(bits) / pixels)
    _check_output(str(out), frames[:n], tool.DEFAULT_FPS)


def test_output_frame_is_input_left_model_view_right(tool, frames):
    original, seen = frames[0], frames[1]  # any two different frames
    h, w = original.shape[:2]
    nothing = {"instances": Instances((h, w), scores=torch.zeros(0)), "bits": 100}
    frame = tool.render(original, seen, nothing, 0, 0.5, None, tool.DEFAULT_CONFIDENCE)
    assert np.array_equal(frame[:h, :w], original) and np.array_equal(frame[:h, w:], seen)
    assert frame.shape[0] > h and frame[h:].any()  # the caption line
    with pytest.raises(SystemExit, match="no \"instances\" to draw"):
        tool.render(original, seen, {"sem_seg": None}, 0, 0.5, None, tool.DEFAULT_CONFIDENCE)


def _error(tool, capsys, *argv):
    """Message of the SystemExit of the tool (argparse prints its own to stderr)."""
    with pytest.raises(SystemExit) as e:
        _run(tool, *argv)
    return f"{e.value.code} {capsys.readouterr().err}"


def test_method_and_model_mismatches_are_refused(tool, frame_dir, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    codec = ["--codec", CODEC, "--quality", QUALITY]
    assert "needs --codec and --quality" in _error(tool, capsys, frame_dir, "--config-file", VIS,
                                                   "-o", out)
    assert "do not apply" in _error(tool, capsys, frame_dir, "--config-file", TRANSVFC,
                                    "--method", "transvfc", *codec, "-o", out)
    assert "needs a CDRERCNN model" in _error(tool, capsys, frame_dir, "--config-file", VIS,
                                              "--method", "cdre", *codec, "-o", out)
    assert "use --method transvfc" in _error(tool, capsys, frame_dir, "--config-file", TRANSVFC,
                                             *codec, "-o", out)
    assert "use --method cdre" in _error(tool, capsys, frame_dir, "--config-file", VIS_CDRE,
                                         *codec, "-o", out)
    assert "needs a TransVFC model" in _error(tool, capsys, frame_dir, "--config-file", VIS,
                                              "--method", "transvfc", "-o", out)
    assert "must be in [0.0, 51.0]" in _error(tool, capsys, frame_dir, "--config-file", VIS,
                                              "--codec", CODEC, "--quality", 99, "-o", out)
    assert "unexpected keyword argument 'colour'" in _error(
        tool, capsys, frame_dir, "--config-file", VIS, *codec, "--codec-opt", "colour=1", "-o", out)
    assert "must be an .mp4 file" in _error(tool, capsys, frame_dir, "--config-file", VIS, *codec,
                                            "-o", tmp_path / "out.avi")
    assert not os.listdir(tmp_path)


def test_missing_or_empty_input_is_refused(tool, tmp_path, capsys):
    out = tmp_path / "out" / "demo.mp4"
    args = ["--config-file", VIS, "--codec", CODEC, "--quality", QUALITY, "-o", out]
    assert "no video file or frame folder" in _error(tool, capsys, tmp_path / "missing", *args)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no image" in _error(tool, capsys, empty, *args)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    assert "cannot read" in _error(tool, capsys, garbage, *args)
    assert not out.exists()


# ---------------------------------------------------------------- vcm_d2.utils.video / drawing
def test_write_mp4_pads_odd_sizes_and_keeps_the_rate(tmp_path):
    path = str(tmp_path / "odd.mp4")
    odd = [np.full((17, 31, 3), v, np.uint8) for v in (0, 128, 255)]
    assert write_mp4(path, odd, INPUT_FPS) == len(odd)
    out, rate = _decode(path)
    assert len(out) == len(odd) and out[0].shape == (18, 32, 3)
    assert rate == INPUT_FPS and video_frame_rate(path) == INPUT_FPS
    assert video_frame_rate(str(tmp_path)) is None  # a folder of frames states no rate


def test_write_mp4_leaves_no_file_when_interrupted(tmp_path):
    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_mp4(str(tmp_path / "cut.mp4"), frames(), INPUT_FPS)
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(str(tmp_path / "none.mp4"), [], INPUT_FPS)
    with pytest.raises(ValueError, match="the first frame was"):
        write_mp4(str(tmp_path / "sizes.mp4"), [np.zeros((16, 16, 3), np.uint8),
                                                 np.zeros((8, 16, 3), np.uint8)], INPUT_FPS)
    assert not os.listdir(tmp_path)


def _instance(box, class_id, track_id=None, score=0.9, size=(64, 64)):
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
    inst.scores = torch.tensor([score])
    inst.pred_classes = torch.tensor([class_id])
    mask = torch.zeros((1, *size), dtype=torch.bool)
    mask[0, box[1]:box[3], box[0]:box[2]] = True
    inst.pred_masks = mask
    if track_id is not None:
        inst.ID = [track_id]
    return inst


def test_draw_instances_colours_follow_the_track_and_skip_low_scores():
    frame = np.zeros((64, 64, 3), np.uint8)
    box = [20, 30, 40, 50]
    inside = (40, 30)  # (row, col) under the mask, away from the box outline and label
    a = draw_instances(frame, _instance(box, 0, track_id=7), ["a", "b"])
    b = draw_instances(frame, _instance(box, 1, track_id=7), ["a", "b"])
    c = draw_instances(frame, _instance(box, 1, track_id=8), ["a", "b"])
    assert a[inside].any() and np.array_equal(a[inside], b[inside])  # one track, one colour
    assert not np.array_equal(a[inside], c[inside])
    hidden = draw_instances(frame, _instance(box, 0, score=0.1), score_threshold=0.5)
    assert not hidden.any()
    with pytest.raises(ValueError, match="instances are for"):
        draw_instances(np.zeros((32, 32, 3), np.uint8), _instance(box, 0))


def test_side_by_side_and_caption():
    left, right = np.zeros((20, 30, 3), np.uint8), np.full((10, 15, 3), 255, np.uint8)
    both = side_by_side(left, right)
    assert both.shape == (20, 60, 3) and (both[:, 30:] == 255).all()
    captioned = add_caption(both, "frame 0 | 100 bits | 0.1 bpp")
    assert captioned.shape[0] > 20 and captioned.shape[1] == 60
    assert np.array_equal(captioned[:20], both) and captioned[20:].any()


def test_draw_sem_seg_blends_one_colour_per_label():
    frame = np.full((8, 8, 3), 100, np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 1
    drawn = draw_sem_seg(frame, labels)
    assert drawn.dtype == np.uint8 and drawn.shape == frame.shape
    assert (drawn[:, :4] == drawn[0, 0]).all() and (drawn[:, 4:] == drawn[0, 4]).all()
    assert not np.array_equal(drawn[0, 0], drawn[0, 4])
    assert np.array_equal(draw_sem_seg(frame, labels, alpha=0.0), frame)
    with pytest.raises(ValueError, match="differ in size"):
        draw_sem_seg(frame, labels[:4])
