"""The resumable steps of a rate-task run: compress, train, evaluate, each skipped when its
output exists, and the time each step took.

A run owns one output folder. Models are trained into ``<folder>/model_final.pth`` with a record
of what they were trained with (a resumed run refuses a model trained otherwise); evaluation
results are cached per dataset in a JSON file; step times are kept across resumed runs.

Processes started with the same command on one output folder share its work: compression waits
for a process already compressing, and ``run_each_locked`` gives each seed folder to one process
at a time (``folder_lock``).
"""
import contextlib
import json
import logging
import os
import re
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

try:
    import fcntl
except ImportError:  # not POSIX: no locks, one process per output folder
    fcntl = None

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..data.pairs import MANIFEST_FILENAME, pair_dataset_name, register_pair_dataset
from ..engine import VCMTrainer, get_vcm_cfg
from ..engine.compress import compress_dataset, output_dir_for
from ..utils.io import atomic_write_json

__all__ = [
    "EVAL_CACHE_FILE", "LOCK_FILE", "RUN_RECORD_FILE", "Run", "StepTimes", "TIMINGS_FILE",
    "compress_pairs", "evaluate", "folder_lock", "is_compressed", "is_evaluated", "is_trained",
    "load_json", "model_cfg", "model_lock", "register_joined_pairs", "run_each_locked", "start_run",
    "timing_line", "train",
]

logger = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
# Written next to model_final.pth: what the model was trained with (see ``train``).
RUN_RECORD_FILE = "vcm_run.json"
FINAL_WEIGHTS = "model_final.pth"
# Evaluation results of a model, per dataset, next to its weights.
EVAL_CACHE_FILE = "eval.json"
COMPRESSED_DIR = "compressed"
# Held (flock) by the process working in a folder; the kernel drops it when the process ends.
LOCK_FILE = ".vcm_lock"


def load_json(path: str) -> Dict:
    """The JSON object in ``path``, or {} when there is no such file."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def start_run(output: str, threads: int = 0) -> str:
    """Loggers, the output folder (returned as an absolute path) and torch threads (0: all
    cores) of a pipeline run."""
    setup_logger(name="detectron2")
    setup_logger(name="vcm_d2")
    out = os.path.abspath(output)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))
    return out


def timing_line(timings: Mapping[str, float]) -> str:
    return "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())


class StepTimes:
    """Seconds per pipeline step, kept in a JSON file across resumed runs: a step that is
    skipped because it was already done keeps the time of the run that did it (and is not
    listed if that run was not timed). Each write merges with what the file holds then, so
    runs sharing an output folder (e.g. the VIS and TransVFC benchmarks) keep each other's."""

    def __init__(self, path: str):
        self.path = path
        self.times: Dict[str, float] = load_json(path)

    @contextlib.contextmanager
    def step(self, name: str, done_before: bool):
        start = time.time()
        yield
        if not done_before:
            self.times = {**load_json(self.path), **self.times, name: time.time() - start}
            atomic_write_json(self.path, self.times)

    def line(self) -> str:
        """The report's timing line: every step and their sum."""
        self.times = {**load_json(self.path), **self.times}
        total = sum(self.times.values())
        return (timing_line({**self.times, "total": total})
                + " (each step timed in the run that did it; total = their sum)")


# ----------------------------------------------------------------------------- locks
# Folders whose lock this process holds, with how many nested ``folder_lock`` calls hold it.
_HELD: Dict[str, int] = {}


@contextlib.contextmanager
def folder_lock(folder: str, blocking: bool = True) -> Iterator[bool]:
    """Hold ``folder``'s lock against other processes (``flock`` of LOCK_FILE in it); yields
    whether it is held, always True when ``blocking`` (then it waits for the other process).
    Re-entrant within a process: a step that holds a folder may call one that takes it again
    (``flock`` on a second open file would wait for ourselves)."""
    key = os.path.realpath(folder)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield True
        finally:
            _HELD[key] -= 1
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
        _HELD[key] = 1
        try:
            yield True  # closing the file releases the lock
        finally:
            del _HELD[key]


def model_lock(folder: str):
    """``folder_lock`` around training a model, in a single process. Under detectron2's
    ``launch`` every rank trains the same model together, so no rank may wait for another."""
    return folder_lock(folder) if comm.get_world_size() == 1 else contextlib.nullcontext(True)


def run_each_locked(items: Sequence, folder_of: Callable[[Any], str], fn: Callable) -> List:
    """``[fn(item) for item in items]``, each call holding ``folder_of(item)``'s lock. An item
    whose folder another process holds is done after the free ones (waiting for that process,
    then resuming its finished steps), so processes started with the same command split the
    items instead of training the same models at once."""
    results, busy = {}, []
    for i, item in enumerate(items):
        with folder_lock(folder_of(item), blocking=False) as held:
            if held:
                results[i] = fn(item)
            else:
                logger.info("%s is held by another process: later", folder_of(item))
                busy.append(i)
    for i in busy:
        with folder_lock(folder_of(items[i])):
            results[i] = fn(items[i])
    return [results[i] for i in range(len(items))]


# ----------------------------------------------------------------------------- done checks
def is_trained(cfg) -> bool:
    return os.path.exists(os.path.join(cfg.OUTPUT_DIR, FINAL_WEIGHTS))


def is_evaluated(datasets: Sequence[str], cache_file: str) -> bool:
    cache = load_json(cache_file)
    return all(d in cache for d in datasets)


def is_compressed(splits: Sequence[str], codecs: Sequence[str], qualities: Sequence[float],
                  root: str) -> bool:
    return all(os.path.exists(os.path.join(output_dir_for(root, s, c, q), MANIFEST_FILENAME))
               for s in splits for c in codecs for q in qualities)


# ----------------------------------------------------------------------------- steps
# Periodic checkpoints of detectron2 (model_<iteration>.pth), dropped once a training has finished.
INTERMEDIATE_CHECKPOINT = re.compile(r"model_\d{7}\.pth")
# Config keys that do not change what training produces (where it runs, how often it saves or
# evaluates, what it is evaluated on); left out of the run record's config.
RECORD_IGNORED_KEYS = ("OUTPUT_DIR", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "DATASETS.TEST",
                       "SOLVER.CHECKPOINT_PERIOD", "TEST.", "VIS_PERIOD", "CUDNN_BENCHMARK")


def _flat_config(node, prefix: str = "") -> Dict[str, Any]:
    """{"A.B.C": value} of every leaf of a CfgNode, as JSON stores it (tuples become lists)."""
    out = {}
    for key, value in node.items():
        name = prefix + key
        if isinstance(value, dict):
            out.update(_flat_config(value, name + "."))
        else:
            out[name] = json.loads(json.dumps(value))
    return out


def _local_path(value: Any, output_dir: str) -> Any:
    """A local absolute path relative to ``output_dir`` (a copied or moved folder still matches
    the models it started from); anything else unchanged."""
    if isinstance(value, str) and os.path.isabs(value) and "://" not in value:
        return os.path.relpath(value, os.path.abspath(output_dir))
    return value


def _run_record(cfg) -> Dict:
    """What identifies a finished training for reuse by a resumed run: iterations, initial
    weights, training sets, seed and the whole config (without RECORD_IGNORED_KEYS)."""
    def recorded(key):
        return not any(key == i or (i.endswith(".") and key.startswith(i))
                       for i in RECORD_IGNORED_KEYS)

    config = {k: _local_path(v, cfg.OUTPUT_DIR) for k, v in _flat_config(cfg).items()
              if recorded(k)}
    return {"max_iter": int(cfg.SOLVER.MAX_ITER), "weights": cfg.MODEL.WEIGHTS,
            "train_sets": list(cfg.DATASETS.TRAIN), "seed": int(cfg.SEED), "config": config}


def _portable(record: Dict, output_dir: str) -> Dict:
    """``record`` with a local weights path relative to ``output_dir``, so that an output
    folder that was moved or copied (with the models it trained from) still resumes."""
    if "weights" not in record:
        return record
    return dict(record, weights=_local_path(record["weights"], output_dir))


def _record_conflicts(done: Dict, asked: Dict) -> List[str]:
    """Differences between a finished run's record and this run's. Config keys only one of them
    has are not conflicts: a key added to the code since (its default keeps the old behaviour)
    or a record written before configs were recorded."""
    out = [f"{k}: {done.get(k)!r} != {asked.get(k)!r}" for k in sorted(set(done) | set(asked))
           if k != "config" and done.get(k) != asked.get(k)]
    old, new = done.get("config", {}), asked.get("config", {})
    out += [f"{k}: {old[k]!r} != {new[k]!r}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    return out


def train(cfg) -> str:
    """Train unless OUTPUT_DIR already holds model_final.pth; return its path.

    The model's folder is locked while it trains, so that another process asking for the same
    model waits and then reuses it. A finished model is reused only if its record (see
    ``_run_record``) agrees with this run's config.

    RNGs are seeded from cfg.SEED right before training (< 0: random), so a run does not
    depend on what was trained before it in the same process. detectron2's trainer evaluates
    DATASETS.TEST after the last iteration; the pipeline evaluates separately (with caching), so
    that set is emptied here to save the time."""
    final = os.path.join(cfg.OUTPUT_DIR, FINAL_WEIGHTS)
    record_path = os.path.join(cfg.OUTPUT_DIR, RUN_RECORD_FILE)
    record = _portable(_run_record(cfg), cfg.OUTPUT_DIR)
    with model_lock(cfg.OUTPUT_DIR):
        if os.path.exists(final):
            done = _portable(load_json(record_path), cfg.OUTPUT_DIR)
            if not done:
                logger.warning(f"{final} exists without {RUN_RECORD_FILE}: reused as is (it "
                               "cannot be checked against iterations, initial weights and "
                               "training sets)")
            conflicts = _record_conflicts(done, record) if done else []
            if conflicts:
                raise ValueError(f"{cfg.OUTPUT_DIR} holds a model trained otherwise than this run "
                                 f"asks ({'; '.join(conflicts[:8])}"
                                 f"{'; ...' if len(conflicts) > 8 else ''}): delete that folder "
                                 "or use another output folder")
            logger.info(f"[skip] {final} exists")
            return final
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = ()
        seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
        trainer = VCMTrainer(cfg)
        trainer.resume_or_load(resume=True)  # picks up an interrupted run's last checkpoint
        trainer.train()
        if comm.is_main_process():
            drop_intermediate_checkpoints(cfg.OUTPUT_DIR)
        atomic_write_json(record_path, record)
    return final


def drop_intermediate_checkpoints(output_dir: str) -> List[str]:
    """Delete the periodic checkpoints (detectron2's ``model_<iteration>.pth``) of a finished
    run, which only serve to resume it: model_final.pth stays. Returns the deleted names."""
    names = sorted(n for n in os.listdir(output_dir) if INTERMEDIATE_CHECKPOINT.fullmatch(n))
    for name in names:
        os.remove(os.path.join(output_dir, name))
    return names


def evaluate(cfg, weights: str, datasets: Sequence[str], cache_file: str) -> Dict[str, Dict]:
    """Task metric + rate of ``weights`` on each dataset; cached in ``cache_file`` (JSON), so
    only datasets missing from the cache are evaluated."""
    cache = load_json(cache_file)
    todo = [d for d in datasets if d not in cache]
    if todo:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = weights
        cfg.DATASETS.TEST = tuple(todo)
        cfg.freeze()
        model = VCMTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        results = VCMTrainer.test(cfg, model)
        if len(todo) == 1:  # detectron2 unwraps single-dataset results
            results = {todo[0]: results}
        for name in todo:
            cache[name] = json.loads(json.dumps(results[name], default=float))
        atomic_write_json(cache_file, cache)
    return {d: cache[d] for d in datasets}


def compress_pairs(splits: Sequence[str], codecs: Sequence[str], qualities: Sequence[float],
                   root: str, codec_options: Mapping, workers: int) -> Dict:
    """Compress (resumably) and register every (split, codec, quality) pair dataset;
    returns {(split, codec): [pair dataset names in ``qualities`` order]}."""
    names = {}
    for split in splits:
        for codec in codecs:
            manifests = compress_dataset(split, codec, qualities, root,
                                         codec_options=dict(codec_options), workers=workers)
            names[split, codec] = []
            for q in qualities:
                name = pair_dataset_name(split, codec, q)
                register_pair_dataset(name, manifests[q], split)
                names[split, codec].append(name)
    return names


def register_joined_pairs(root: str, frame_set: str, target_set: str, codec: str,
                          qualities: Sequence[float]) -> list:
    """Pair datasets of ``target_set`` from the manifests of ``frame_set`` (a split holding the
    same frames, e.g. its semantic or video version): compressed once, registered for both."""
    names = []
    for q in qualities:
        manifest = os.path.join(output_dir_for(root, frame_set, codec, q), MANIFEST_FILENAME)
        name = pair_dataset_name(target_set, codec, q)
        register_pair_dataset(name, manifest, target_set)
        names.append(name)
    return names


# ----------------------------------------------------------------------------- a run
def model_cfg(config_file: str, output_dir: str, opts: Sequence = ()):
    """Config from ``config_file`` + ``opts`` overrides (KEY, VALUE, ...), writing to
    ``output_dir``."""
    cfg = get_vcm_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = output_dir
    return cfg


class Run:
    """One resumable run in an output folder: configs read from ``config_dir`` (an argument:
    ``configs/synthetic`` of this repository, or a user's folder), the overrides ``extra`` that
    every model of the run gets, and each step timed in ``StepTimes``."""

    def __init__(self, output: str, config_dir: str, extra: Sequence = (), threads: int = 0,
                 compressed_root: str = ""):
        """``compressed_root``: where ``compress`` writes (default OUTPUT/compressed); runs of
        several seeds share one."""
        self.out = start_run(output, threads)
        self.config_dir = config_dir
        self.extra = list(extra)
        self.times = StepTimes(os.path.join(self.out, TIMINGS_FILE))
        self.compressed_root = os.path.abspath(compressed_root or os.path.join(self.out, COMPRESSED_DIR))

    def cfg(self, config_name: str, output_dir: str, opts: Sequence = ()):
        """``model_cfg`` of ``config_dir/config_name`` (``opts`` as given: include
        ``self.extra`` where it belongs among them)."""
        return model_cfg(os.path.join(self.config_dir, config_name), output_dir, opts)

    def train(self, cfg, step: str) -> str:
        """``train``, timed unless already done; the folder is locked first, so a model another
        process is training is waited for (and not timed) here."""
        with model_lock(cfg.OUTPUT_DIR), self.times.step(step, is_trained(cfg)):
            return train(cfg)

    def evaluate(self, cfg, weights: str, datasets: Sequence[str], step: str) -> Dict[str, Dict]:
        """``evaluate`` with the results cached next to the model (cfg.OUTPUT_DIR). The folder is
        locked first like ``train``'s: a second process reaching the same evaluation waits,
        then reads the cache instead of evaluating again."""
        cache = os.path.join(cfg.OUTPUT_DIR, EVAL_CACHE_FILE)
        with model_lock(cfg.OUTPUT_DIR), self.times.step(step, is_evaluated(datasets, cache)):
            return evaluate(cfg, weights, datasets, cache)

    def compress(self, splits: Sequence[str], codecs: Sequence[str],
                 qualities_of: Callable[[str], Sequence[float]],
                 codec_options: Union[Mapping, Callable[[str], Mapping]],
                 workers: int, step: str) -> Dict[Tuple[str, str], List[str]]:
        """Pair datasets of every split, codec and its qualities under ``compressed_root``;
        {(split, codec): [names in quality order]}. ``codec_options``: the same for every
        codec, or a function of the codec's name (e.g. a learned codec's weights)."""
        options_of = codec_options if callable(codec_options) else lambda codec: codec_options
        root = self.compressed_root
        names = {}
        with folder_lock(root):  # another process compressing the same sets: wait, then reuse
            done = all(is_compressed(splits, [c], qualities_of(c), root) for c in codecs)
            with self.times.step(step, done):
                for codec in codecs:
                    names.update(compress_pairs(splits, [codec], qualities_of(codec), root,
                                                options_of(codec), workers))
        return names
