#!/usr/bin/env python
"""Train a learned codec of the codec registry (ssf2020, bmshj2018_hyperprior, cheng2020_anchor)
on the videos of a registered dataset, one checkpoint per quality, resumably.

Example (six rate points on the synthetic training videos; one process trains one quality, so
qualities can also run in parallel shells, one quality each)::

    python tools/train_learned_codec.py --codec ssf2020 --qualities 1 2 3 4 5 6 \\
        --output checkpoints/learned

Writes ``<output>/<codec>/q<quality>.pth``, which the codec loads
(``build_codec("ssf2020", weights="<output>/ssf2020")``, or ``--codec-opt
weights=<output>/ssf2020`` in tools/compress_dataset.py), and keeps the training state next to
it (``q<quality>.train.pth``: model, optimizers, iteration, RNG), written atomically every
``--checkpoint-period`` iterations: a rerun continues where a killed run stopped, and a larger
``--iterations`` trains a finished quality further.

Training data: clips of ``--clip-length`` consecutive frames (video order: frames grouped by
``video_id`` and ordered by ``frame_idx``, or a video dict's ``file_names``), the same random
``--crop-size`` window in every frame of a clip (frames smaller than it are edge-padded, as the
codec pads them). An image codec sees as many frames per step, as independent frames. Sampling
depends only on (--seed, quality, iteration), so a resumed run sees the batches an uninterrupted
one would.

With ``--finetune-iterations N`` the qualities form a chain, like TransVFC's stage 1 (one
lambda_R from scratch, each next one fine-tuned from the previous): the first of --qualities
trains --iterations from scratch, each next one starts from the previous one's ``q<k>.pth`` and
trains N iterations (the zoo's widths must match: bmshj2018 widens at quality 6, cheng2020 at 4).

Loss (CompressAI's ``RateDistortionLoss``, averaged over the frames of a clip for a video model,
whose I-frame rate is included): lambda * 255^2 * MSE + bpp, lambda per quality from CompressAI's
MSE table (``DEFAULT_LAMBDAS``) unless ``--lmbda`` is given. Adam on the network (gradient norm
clipped), a second Adam on the entropy bottlenecks' quantiles with the aux loss (CompressAI's
``examples/train.py``); ``--lr-drop F`` multiplies the network's rate by ``--lr-drop-factor``
after the fraction F of each quality's iterations (a short schedule at a high rate converges
much further with one late step down). The final checkpoint is saved after ``update(force=True,
update_quantiles=True)``: the CDF tables of the range coder, from quantiles set by bisection
(after a short schedule the aux loss has not converged).
"""
import argparse
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

import vcm_d2  # noqa: F401  (registers codecs and built-in datasets)
from vcm_d2.codecs import CODEC_REGISTRY
from vcm_d2.codecs.base import pad_frame
from vcm_d2.codecs.neural import CHECKPOINT_NAME, LearnedCodec, load_state_dict_file
# the frame reader of compress_dataset (files, or frames of a bitstream-stored pair dataset)
from vcm_d2.engine.compress import FrameSpec, _read_original, build_sequences
from vcm_d2.utils.io import atomic_write

logger = logging.getLogger("vcm_d2.train_learned_codec")

# CompressAI's lambda per quality index of its MSE-trained zoo models (loss lambda*255^2*MSE+bpp).
DEFAULT_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483,
                   7: 0.0932, 8: 0.1800}
STATE_SUFFIX = ".train.pth"  # training state next to q<quality>.pth
STATE_FORMAT = 1
# settings added after STATE_FORMAT 1, with the value a state written without them was trained with
LATER_SETTINGS = {"lr_drop": 0.0, "lr_drop_factor": 1.0}
PIXEL_MAX = 255.0


def learned_codecs() -> List[str]:
    return sorted(name for name, cls in CODEC_REGISTRY if issubclass(cls, LearnedCodec))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", required=True, choices=learned_codecs(),
                        help="learned codec whose CompressAI model is trained")
    parser.add_argument("--qualities", type=int, nargs="+", required=True,
                        help="quality indices to train, one after the other (q<k>.pth each)")
    parser.add_argument("--lmbda", type=float, nargs="+",
                        help="lambda per quality (same order as --qualities); default: "
                        "CompressAI's MSE table " + str(DEFAULT_LAMBDAS))
    parser.add_argument("--output", required=True,
                        help="checkpoint root: writes <output>/<codec>/q<k>.pth")
    parser.add_argument("--dataset", default="vcm_synth_train", help="registered dataset")
    parser.add_argument("--iterations", type=int, default=1000,
                        help="training steps per quality (TransVFC's synthetic stage 1: 1000)")
    parser.add_argument("--finetune-iterations", type=int, default=0,
                        help="if > 0: only the first of --qualities trains --iterations from "
                        "scratch; each next one starts from the previous one's final weights and "
                        "trains this many (TransVFC's stage-1 chain of lambda_R points)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per step")
    parser.add_argument("--clip-length", type=int, default=3,
                        help="frames per clip of a video model (an I-frame and P-frames)")
    parser.add_argument("--crop-size", type=int, default=128,
                        help="square crop, a multiple of the model's size multiple (ssf2020: 128)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (network)")
    parser.add_argument("--lr-drop", type=float, default=0.0,
                        help="fraction of each quality's iterations after which the network's "
                        "learning rate is multiplied by --lr-drop-factor (0: constant rate)")
    parser.add_argument("--lr-drop-factor", type=float, default=0.1,
                        help="learning-rate factor after --lr-drop")
    parser.add_argument("--aux-lr", type=float, default=1e-3, help="Adam learning rate (quantiles)")
    parser.add_argument("--clip-max-norm", type=float, default=1.0,
                        help="gradient norm clipping of the network (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    parser.add_argument("--checkpoint-period", type=int, default=100,
                        help="write the training state every N iterations")
    parser.add_argument("--log-period", type=int, default=20, help="log every N iterations")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# ----------------------------------------------------------------------------- data
class ClipSampler:
    """Batches of clips (consecutive frames of a video, the same crop in each), drawn from a
    generator seeded by (seed, quality, iteration)."""

    def __init__(self, videos: Sequence[Sequence[FrameSpec]], clip_length: int, crop_size: int):
        self.videos = [list(v) for v in videos]
        self.clip_length = clip_length
        self.crop_size = crop_size
        # every (video, first frame) of a whole clip, drawn uniformly
        self.starts = [(v, t) for v, frames in enumerate(self.videos)
                       for t in range(len(frames) - clip_length + 1)]
        if not self.starts:
            longest = max((len(v) for v in self.videos), default=0)
            raise ValueError(f"no video has {clip_length} frames (the longest has {longest})")

    def _clip(self, rng: np.random.Generator) -> List[np.ndarray]:
        v, t = self.starts[rng.integers(len(self.starts))]
        frames = [_read_original(spec) for spec in self.videos[v][t:t + self.clip_length]]
        size = self.crop_size
        h, w = frames[0].shape[:2]
        ph, pw = max(h, size), max(w, size)
        y, x = int(rng.integers(ph - size + 1)), int(rng.integers(pw - size + 1))
        return [pad_frame(f, ph, pw)[y:y + size, x:x + size] for f in frames]

    def batch(self, seed: Sequence[int], count: int) -> List[torch.Tensor]:
        """``clip_length`` tensors of count x 3 x crop x crop in [0, 1]: frame t of each clip."""
        rng = np.random.default_rng(list(seed))
        clips = [self._clip(rng) for _ in range(count)]
        return [torch.from_numpy(np.stack([c[t] for c in clips])).permute(0, 3, 1, 2).float()
                / PIXEL_MAX for t in range(self.clip_length)]


def load_videos(dataset: str) -> List[Tuple[FrameSpec, ...]]:
    """The frames of each video of ``dataset`` in video order (single images: 1-frame videos)."""
    return [seq.frames for seq in build_sequences(DatasetCatalog.get(dataset))]


# ----------------------------------------------------------------------------- loss
def _likelihood_tensors(likelihoods: Any) -> List[torch.Tensor]:
    if isinstance(likelihoods, dict):
        return [t for v in likelihoods.values() for t in _likelihood_tensors(v)]
    return [likelihoods]


def rate_distortion(model: torch.nn.Module, frames: List[torch.Tensor], is_video: bool,
                    lmbda: float) -> Dict[str, torch.Tensor]:
    """{"loss", "bpp", "mse"}: per-frame bpp (sum of -log2 likelihoods / pixels) and MSE,
    averaged over the frames; loss = lmbda * 255^2 * mse + bpp."""
    if is_video:
        out = model(frames)
        x_hats, likelihoods = out["x_hat"], out["likelihoods"]
    else:
        out = model(frames[0])
        x_hats, likelihoods = [out["x_hat"]], [out["likelihoods"]]
    n, _, h, w = frames[0].shape
    bpp = torch.stack([sum(-torch.log2(t).sum() for t in _likelihood_tensors(lk)) / (n * h * w)
                       for lk in likelihoods]).mean()
    mse = torch.stack([F.mse_loss(x_hat, x) for x_hat, x in zip(x_hats, frames)]).mean()
    return {"loss": lmbda * PIXEL_MAX ** 2 * mse + bpp, "bpp": bpp, "mse": mse}


def _aux_loss(model: torch.nn.Module) -> torch.Tensor:
    aux = model.aux_loss()  # ssf2020 returns one per hyperprior
    return sum(aux) if isinstance(aux, (list, tuple)) else aux


def _optimizers(model: torch.nn.Module, lr: float, aux_lr: float):
    """Adam on the network, Adam on the entropy bottlenecks' quantiles (aux loss only)."""
    params = dict(model.named_parameters())
    aux = [n for n in params if n.endswith(".quantiles")]
    main = [n for n in params if not n.endswith(".quantiles")]
    # fused: one kernel per step (about 2.5x faster than the default on a 2-core CPU, measured)
    return (torch.optim.Adam([params[n] for n in main], lr=lr, fused=True),
            torch.optim.Adam([params[n] for n in aux], lr=aux_lr))


# ----------------------------------------------------------------------------- training
def _save(path: str, obj: Dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _build(codec_cls: type, quality: int, seed: int) -> torch.nn.Module:
    """The zoo architecture, initialised from ``seed`` (torch's RNG then drives the training
    noise; a resumed run restores its state)."""
    from compressai import zoo

    torch.manual_seed(seed)
    return getattr(zoo, codec_cls.zoo_name)(quality=quality, pretrained=False)


def _load_state(path: str, codec: str, settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The training state at ``path`` (memory-mapped), None if there is none. Raises ValueError
    if it was written with other settings."""
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    was = {**LATER_SETTINGS, **state["settings"]}
    changed = {k: (was.get(k), v) for k, v in settings.items() if was.get(k) != v}
    if state.get("format") != STATE_FORMAT or state.get("codec") != codec or changed:
        raise ValueError(f"{path} was written with other settings (was, now: {changed}) or "
                         "another codec / format; use another --output or the same settings")
    return state


def train_quality(codec: str, quality: int, settings: Dict[str, Any], iterations: int,
                  output: str, videos: Sequence[Sequence[FrameSpec]],
                  checkpoint_period: int = 100, log_period: int = 20,
                  progress: bool = True, init: Optional[str] = None) -> str:
    """Train (or resume, or skip if done) one quality; return the final checkpoint's path.
    ``init``: a final checkpoint (``q<k>.pth`` of the same architecture) to start from instead
    of the seed's initialisation."""
    codec_cls = CODEC_REGISTRY.get(codec)
    size = settings["crop_size"]
    if size < codec_cls.pad_multiple or size % codec_cls.pad_multiple:
        raise ValueError(f"--crop-size {size}: {codec} codes multiples of "
                         f"{codec_cls.pad_multiple} pixels")
    final = os.path.join(output, codec, CHECKPOINT_NAME.format(quality=quality))
    state_path = final[: -len(".pth")] + STATE_SUFFIX
    state = _load_state(state_path, codec, settings)
    start = 0 if state is None else int(state["iteration"])
    if os.path.exists(final) and (state is None or start >= iterations):
        logger.info("%s q%d: %s exists (%s); left as is", codec, quality, final,
                    "no training state" if state is None else f"{start} iterations")
        return final
    model = _build(codec_cls, quality, settings["seed"]).train()
    if state is None and init is not None:
        try:
            model.load_state_dict(load_state_dict_file(init))
        except RuntimeError as e:  # shapes differ: the zoo changes width between qualities
            raise ValueError(f"{codec} q{quality} cannot start from {init} (another "
                             f"architecture): {str(e).splitlines()[0]}") from e
        logger.info("%s q%d: starting from %s", codec, quality, init)
    optimizer, aux_optimizer = _optimizers(model, settings["lr"], settings["aux_lr"])
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        torch.set_rng_state(state["rng"])
        logger.info("%s q%d: resuming from iteration %d (%s)", codec, quality, start, state_path)
        del state

    from tqdm import tqdm

    sampler = ClipSampler(videos, settings["clip_length"] if codec_cls.is_video else 1, size)
    count = settings["batch_size"] * (1 if codec_cls.is_video else settings["clip_length"])
    main_params = [p for group in optimizer.param_groups for p in group["params"]]

    def save_state(iteration: int) -> None:
        _save(state_path, {"format": STATE_FORMAT, "codec": codec, "quality": quality,
                           "iteration": iteration, "settings": dict(settings),
                           "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "aux_optimizer": aux_optimizer.state_dict(),
                           "rng": torch.get_rng_state()})

    # the network's rate steps down once, at a fraction of this quality's iterations
    drop_at = math.ceil(settings["lr_drop"] * iterations) if settings["lr_drop"] > 0 else None
    began = time.perf_counter()
    bar = tqdm(range(start, iterations), desc=f"{codec} q{quality}", disable=not progress,
               initial=start, total=iterations)
    for it in bar:
        frames = sampler.batch((settings["seed"], quality, it), count)
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"] * (
                settings["lr_drop_factor"] if drop_at is not None and it >= drop_at else 1.0)
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        terms = rate_distortion(model, frames, codec_cls.is_video, settings["lmbda"])
        terms["loss"].backward()
        if settings["clip_max_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(main_params, settings["clip_max_norm"])
        optimizer.step()
        aux = _aux_loss(model)
        aux.backward()
        aux_optimizer.step()
        psnr = 10 * math.log10(1.0 / max(terms["mse"].item(), 1e-10))
        bar.set_postfix(loss=f"{terms['loss'].item():.3f}", bpp=f"{terms['bpp'].item():.3f}",
                        psnr=f"{psnr:.2f}")
        done = it + 1
        if done % log_period == 0 or done == iterations:
            logger.info("%s q%d iter %d/%d: loss %.4f bpp %.4f psnr %.2f dB aux %.1f "
                        "(%.2f s/iter)", codec, quality, done, iterations, terms["loss"].item(),
                        terms["bpp"].item(), psnr, aux.item(),
                        (time.perf_counter() - began) / (done - start))
        if done % checkpoint_period == 0 or done == iterations:
            save_state(done)
    bar.close()
    # The range coder's CDF tables, saved with the weights. The quantiles that bound them are
    # first set by bisection on the learned densities: after a short schedule the aux loss has
    # not converged (CompressAI: "often faster and much more precise than minimizing aux loss").
    model.update(force=True, update_quantiles=True)
    _save(final, {"state_dict": model.state_dict(), "codec": codec, "quality": quality,
                  "iterations": max(start, iterations), "settings": dict(settings)})
    logger.info("%s q%d: wrote %s", codec, quality, final)
    return final


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="vcm_d2")
    codec_cls = CODEC_REGISTRY.get(args.codec)
    lo, hi = codec_cls.quality_range
    problems = [f"quality {q} outside [{lo}, {hi}]" for q in args.qualities if not lo <= q <= hi]
    if args.lmbda is not None and len(args.lmbda) != len(args.qualities):
        problems.append(f"{len(args.lmbda)} --lmbda values for {len(args.qualities)} qualities")
    lambdas = dict(zip(args.qualities, args.lmbda or []))
    for q in args.qualities:
        if q not in lambdas and q not in DEFAULT_LAMBDAS:
            problems.append(f"quality {q} has no default lambda: give --lmbda")
        lambdas.setdefault(q, DEFAULT_LAMBDAS.get(q))
    if not 0 <= args.lr_drop < 1:
        problems.append("--lr-drop must be in [0, 1)")
    if args.lr_drop_factor <= 0:
        problems.append("--lr-drop-factor must be > 0")
    if args.finetune_iterations < 0:
        problems.append("--finetune-iterations must be >= 0")
    for name in ("iterations", "batch_size", "clip_length", "checkpoint_period", "log_period"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    if args.dataset not in DatasetCatalog.list():
        problems.append(f"dataset {args.dataset!r} is not registered")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    videos = load_videos(args.dataset)
    logger.info("%s: %d videos, %d frames", args.dataset, len(videos), sum(map(len, videos)))
    previous = None  # the chain's previous final checkpoint (--finetune-iterations)
    for q in args.qualities:
        init = previous if args.finetune_iterations > 0 else None
        settings = {"dataset": args.dataset, "lmbda": lambdas[q], "batch_size": args.batch_size,
                    "clip_length": args.clip_length, "crop_size": args.crop_size, "lr": args.lr,
                    "lr_drop": args.lr_drop,
                    "lr_drop_factor": args.lr_drop_factor if args.lr_drop > 0 else 1.0,
                    "aux_lr": args.aux_lr, "clip_max_norm": args.clip_max_norm,
                    "seed": args.seed, "init": None if init is None else os.path.basename(init)}
        iterations = args.iterations if init is None else args.finetune_iterations
        try:
            path = train_quality(args.codec, q, settings, iterations, args.output, videos,
                                 args.checkpoint_period, args.log_period, not args.no_progress,
                                 init=init)
        except ValueError as e:  # a crop the model cannot code, a state of other settings
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.codec} q{q} (lambda {lambdas[q]}): {path}")
        previous = path
    return 0


if __name__ == "__main__":
    sys.exit(main())
