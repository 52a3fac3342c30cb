"""Peak memory of coding N frames, to size compression workers.

Each (codec, N) runs in a fresh process that codes N frames of a synthetic 720p video
(``vcm_d2.codecs.sample_video``, made one frame at a time) and drops each coded frame, as
``tools/compress_dataset.py`` does after writing it. ``--mode stream`` uses
``Codec.encode_stream``; ``--mode list`` the list-based ``Codec.encode``, which holds every input
and decoded frame (what compress_dataset did before streaming). Reported per run: the peak
resident memory of the coding process itself (``ru_maxrss``; about 0.9 GB of it is importing
vcm_d2 with a CUDA build of torch) and of the whole process tree, VVC's ffmpeg encoder and
decoder included (sampled every 20 ms from /proc, Linux only), then per codec the ratio of the
tree peak at the largest N to the one at the smallest.

    python benchmarks/codec_memory.py --codec x264 x265 vvc --frames 30 600
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List

SAMPLE_PERIOD_S = 0.02
GOAL_RATIO = 1.2  # issue 13: peak at 600 frames <= 1.2x the peak at 30 frames


def _child(args: argparse.Namespace) -> None:
    from vcm_d2.codecs import build_codec
    from vcm_d2.codecs.sample_video import sample_video

    width, height = (int(v) for v in args.size.lower().split("x"))
    codec = build_codec(args.codec, **json.loads(args.options))
    making = [0.0]  # seconds spent making the synthetic frames, not coding them

    def frames():
        video = sample_video(args.frames, height, width)
        while True:
            start = time.perf_counter()
            frame = next(video, None)
            making[0] += time.perf_counter() - start
            if frame is None:
                return
            yield frame

    start = time.perf_counter()
    if args.mode == "stream":
        bits = sum(coded.bits for coded in codec.encode_stream(frames(), args.quality))
    else:
        bits = codec.encode(list(frames()), args.quality).total_bits
    elapsed = time.perf_counter() - start - making[0]
    kb = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KB on Linux, bytes on macOS
    print(json.dumps({
        "seconds": elapsed, "bits": bits,
        "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 2**20,
    }))


def _tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants (Linux /proc), in MB."""
    parents: Dict[int, int] = {}
    rss: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(entry)] = int(fields[1])  # ppid
        rss[int(entry)] = int(fields[21])  # resident pages
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier += children
    return sum(rss.get(p, 0) for p in tree) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(codec: str, frames: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--codec", codec,
           "--frames", str(frames), "--size", args.size, "--mode", args.mode,
           "--quality", str(args.quality[codec]), "--options", json.dumps(args.codec_options[codec])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    tree_peak = 0.0
    while proc.poll() is None:
        if os.path.isdir("/proc"):
            tree_peak = max(tree_peak, _tree_rss_mb(proc.pid))
        time.sleep(SAMPLE_PERIOD_S)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["tree_mb"] = tree_peak
    return result


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", nargs="+", default=["x264", "x265", "vvc"])
    parser.add_argument("--frames", nargs="+", type=int, default=[30, 600])
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--mode", choices=("stream", "list"), default="stream")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quality", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.codec = args.codec[0]
        args.frames = args.frames[0]
        args.quality = float(args.quality)
        return _child(args)
    # CRF 27 for x264/x265, QP 37 for VVC; GOP 12, one thread: compress_dataset's defaults
    args.quality = {c: 37 if c == "vvc" else 27 for c in args.codec}
    args.codec_options = {c: {"gop": 12, "threads": 1} for c in args.codec}
    print(f"{args.size}, mode {args.mode}; peak resident memory in MB")
    print("codec  frames  seconds  frames/s  coding process  process tree  (seconds: coding only)")
    for codec in args.codec:
        peaks = []
        for n in args.frames:
            r = measure(codec, n, args)
            peaks.append(r["tree_mb"])
            print(f"{codec:6s} {n:6d} {r['seconds']:8.1f} {n / r['seconds']:9.2f} "
                  f"{r['self_mb']:15.0f} {r['tree_mb']:13.0f}", flush=True)
        if len(peaks) > 1:
            ratio = peaks[-1] / peaks[0]
            print(f"{codec}: tree peak at {args.frames[-1]} frames / at {args.frames[0]} frames = "
                  f"{ratio:.2f} (goal <= {GOAL_RATIO})", flush=True)


if __name__ == "__main__":
    main()
