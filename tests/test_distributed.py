"""Multi-process training and evaluation through tools/train_net.py on CPU (gloo), the way users
launch it on a cluster: `--num-gpus N` on one machine and `--num-machines 2` with a tcp://
dist-url. Evaluation with rate under 2 processes equals the single-process one."""
import json
import os
import socket
import subprocess
import sys

import pytest
from tool_helpers import REPO

SYNTHETIC = os.path.join(REPO, "configs", "synthetic")
# A few iterations of tiny batches; few detections keep the untrained model's evaluation short.
QUICK = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
         "TEST.DETECTIONS_PER_IMAGE", "5"]
PAIR = "vcm_synth_val@x264_q32"
VAL_VIDEOS = 3  # of 12 frames: ranks of 2 processes get unequal numbers of videos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_net(args, env):
    """Start tools/train_net.py with ``args`` (one torch thread per process) on the first
    videos of the validation set (tests/shortened_train_net.py)."""
    script = os.path.join(REPO, "tests", "shortened_train_net.py")
    return subprocess.Popen([sys.executable, script] + args,
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _results(output_dir):
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the launched processes: one torch thread each, pairs built in a shared
    temporary folder, the validation set cut to its first VAL_VIDEOS videos."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               DETECTRON2_DATASETS=str(tmp_path_factory.mktemp("datasets")),
               VCM_TEST_SHORTENED=f"vcm_synth_val={VAL_VIDEOS}")
    return env


def test_cdre_two_processes_train_and_evaluate_like_one(env, tmp_path):
    """CDRE (side stream in the rate) trained by 2 processes; its evaluation with 2 processes
    gives the AP and bpp of the same evaluation in one process."""
    out = str(tmp_path / "cdre")
    _finish(_train_net(["--config-file", os.path.join(SYNTHETIC, "cdre_faster_rcnn_R18_slim_ours.yaml"),
                        "--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", out,
                        "DATASETS.TEST", f"('{PAIR}',)"] + QUICK, env))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    two = _results(out)
    assert two["rate"]["side_bpp"] > 0 and two["rate"]["bpp"] > two["rate"]["codec_bpp"]
    assert two["rate"]["frames"] == 12 * VAL_VIDEOS  # every frame once, not once per process

    one_dir = str(tmp_path / "one")
    _finish(_train_net(["--config-file", os.path.join(SYNTHETIC, "cdre_faster_rcnn_R18_slim_ours.yaml"),
                        "--eval-only", "OUTPUT_DIR", one_dir, "DATASETS.TEST", f"('{PAIR}',)"]
                       + QUICK + ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")], env))
    one = _results(one_dir)
    assert one["rate"] == pytest.approx(two["rate"], rel=1e-9)
    assert one["bbox"]["AP"] == pytest.approx(two["bbox"]["AP"], abs=1e-6)
    assert one["bbox"]["AP50"] == pytest.approx(two["bbox"]["AP50"], abs=1e-6)


def test_two_machines_over_tcp(env, tmp_path):
    """`--num-machines 2` with one process per machine, both on this host: the two ranks meet at
    a tcp://127.0.0.1 address and train the slim detector together."""
    out = str(tmp_path / "slim")
    url = f"tcp://127.0.0.1:{_free_port()}"
    common = ["--config-file", os.path.join(SYNTHETIC, "faster_rcnn_R18_slim.yaml"),
              "--num-gpus", "1", "--num-machines", "2", "--dist-url", url]
    procs = [_train_net(common + ["--machine-rank", str(rank), "OUTPUT_DIR", out,
                                  "DATASETS.TEST", "()"] + QUICK, env) for rank in (0, 1)]
    for p in procs:
        _finish(p)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    for rank, log in enumerate(["log.txt", "log.txt.rank1"]):  # each rank's own log
        with open(os.path.join(out, log)) as f:
            assert f"Rank of current process: {rank}. World size: 2" in f.read()
