"""Compress a registered detectron2 dataset with one codec at several qualities.

Output layout, per quality (see ``vcm_d2.data.pairs`` for the reader)::

    <output>/<dataset>/<codec>/q<quality>/
        manifest.json               # assembled once every sequence of the dataset is done
        frames/<original relpath>.png   (storage "png", the default)
        records/<sequence key>.json # one per finished sequence: what makes runs resumable
        bitstreams/<sequence key>.bin   (storage "bitstream", or png with save_bitstreams)

A *sequence* is what the codec sees at once: a video dict (``file_names``), the image dicts
sharing a ``video_id`` (ordered by ``frame_idx``), or a single image. One task codes one sequence
at every pending quality, one quality after the other; frames stream through the codec
(``Codec.encode_stream``: originals read as the codec needs them, each decoded frame written as
it comes), so a worker's memory does not grow with the length of a video. Every file is written
atomically, and a record is written only after its PNGs and bitstream, so an interrupted run
loses at most the sequences in flight; a rerun recomputes exactly the sequences without a valid
record, and removes the temp files the killed writes left (see ``_remove_orphans``).
"""
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import time
import traceback
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog
from PIL import Image

from ..codecs.base import cached_codec
from ..codecs.stored import DecodedFrameCache, bitstream_crc32
from ..data.pairs import (
    BITSTREAM_FRAME,
    BITSTREAM_FRAMES,
    MANIFEST_FILENAME,
    STORAGE_BITSTREAM,
    STORAGE_PNG,
    STORAGES,
    common_root,
    format_quality,
    manifest_version,
    png_frame_names,
    quality_dirname,
    read_frame,
    relative_original_path,
)
from ..utils.io import atomic_write, atomic_write_bytes, atomic_write_json, remove_orphan_temp_files
from ..utils.rate import BITS

__all__ = [
    "FrameSpec",
    "SequenceSpec",
    "CompressionError",
    "build_sequences",
    "compress_dataset",
    "assemble_manifests",
    "parse_shard",
    "output_dir_for",
]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
RECORDS_DIRNAME = "records"
FRAMES_DIRNAME = "frames"
BITSTREAMS_DIRNAME = "bitstreams"
BITSTREAM_SUFFIX = ".bin"
# Sequence keys become file names: unsafe characters are replaced, long keys truncated, and a
# hash of the raw key is appended whenever the key was altered, so keys stay unique.
MAX_KEY_CHARS = 100
KEY_HASH_CHARS = 10
# Torch threads per worker process: the pool already uses every core it is given.
WORKER_TORCH_THREADS = 1
# Failed sequence keys quoted in the final error (all are logged with their traceback).
MAX_FAILURES_SHOWN = 10


@dataclass(frozen=True)
class FrameSpec:
    original_file_name: str
    original_relpath: str  # relative to the common folder of all frames of the dataset
    file_name: str  # compressed PNG, relative to the quality folder ("/" separators)
    frame_index: int
    image_id: Any = None
    # where the original is decoded from when the dataset is itself a bitstream-stored pair
    # dataset (its records' bitstream_frame), else None
    original_bitstream_frame: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class SequenceSpec:
    key: str
    frames: Tuple[FrameSpec, ...]


class CompressionError(RuntimeError):
    """Some sequences failed; the others were finished and their records kept."""

    def __init__(self, message: str, failures: Dict[str, str], manifests: Dict[Any, str]):
        super().__init__(message)
        self.failures = failures  # sequence key -> formatted traceback
        self.manifests = manifests  # quality -> manifest path, for the complete qualities


# ----------------------------------------------------------------------------- file helpers
def _write_json(path: str, obj: Any) -> None:
    atomic_write_json(path, obj)


def _write_png(path: str, image: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def _read_json(path: str) -> Optional[Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("Ignoring unreadable record %s (%s); it will be recomputed", path, e)
        return None


# ----------------------------------------------------------------------------- sequences
def _safe_key(raw: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:MAX_KEY_CHARS]
    if safe != raw:
        safe += "-" + hashlib.sha1(raw.encode("utf-8")).hexdigest()[:KEY_HASH_CHARS]
    return safe


def _output_names(paths: Sequence[str], root: str) -> Dict[str, str]:
    """Compressed PNG name per original: its relative path with ``.png`` for the extension.

    Originals that differ only by extension (``a.jpg``, ``a.png``) keep it (``a.jpg.png``).
    """
    names = png_frame_names({p: relative_original_path(p, root) for p in paths})
    return {p: f"{FRAMES_DIRNAME}/{name}" for p, name in names.items()}


def build_sequences(dataset_dicts: Sequence[dict]) -> List[SequenceSpec]:
    """Group dataset dicts into coding sequences, in dataset order.

    Video dicts (``file_names``) are one sequence each; image dicts with ``video_id`` are grouped
    by it and ordered by ``frame_idx``; other image dicts are one sequence each.
    """
    if not dataset_dicts:
        raise ValueError("the dataset is empty: nothing to compress")
    is_video = ["file_names" in d for d in dataset_dicts]
    if any(is_video) and not all(is_video):
        raise ValueError("the dataset mixes video dicts (file_names) and image dicts (file_name)")

    # raw key -> list of (order, file_name, image_id, bitstream_frame)
    groups: "OrderedDict[str, List[Tuple[Any, str, Any, Any]]]" = OrderedDict()
    if all(is_video):
        for i, d in enumerate(dataset_dicts):
            raw = f"video-{d['video_id']}" if "video_id" in d else f"video-index{i}"
            if raw in groups:
                raise ValueError(f"two video dicts have video_id {d['video_id']!r}")
            n = len(d["file_names"])
            ids = d.get("image_ids") or [None] * n
            stored = d.get(BITSTREAM_FRAMES) or [None] * n
            groups[raw] = [(t, f, iid, loc) for t, (f, iid, loc)
                           in enumerate(zip(d["file_names"], ids, stored))]
    else:
        for d in dataset_dicts:
            if "file_name" not in d:
                raise ValueError(f"dataset dict without file_name: {sorted(d)}")
            if "video_id" in d:
                if "frame_idx" not in d:
                    raise ValueError(f"{d['file_name']!r} has a video_id but no frame_idx")
                groups.setdefault(f"video-{d['video_id']}", []).append(
                    (d["frame_idx"], d["file_name"], d.get("image_id"), d.get(BITSTREAM_FRAME)))
            else:
                raw = (f"image-{d['image_id']}" if "image_id" in d
                       else "image-" + os.path.splitext(os.path.basename(d["file_name"]))[0])
                if raw in groups:
                    if "image_id" in d:
                        raise ValueError(f"two image dicts have image_id {d['image_id']!r}")
                    raw += "-" + hashlib.sha1(d["file_name"].encode("utf-8")).hexdigest()[:KEY_HASH_CHARS]
                groups[raw] = [(0, d["file_name"], d.get("image_id"), d.get(BITSTREAM_FRAME))]

    all_paths = [f for frames in groups.values() for _, f, _, _ in frames]
    dup = [p for p, n in Counter(os.path.abspath(p) for p in all_paths).items() if n > 1]
    if dup:
        raise ValueError(f"{len(dup)} frame file(s) appear more than once in the dataset, e.g. {dup[0]!r}")
    root = common_root(all_paths)
    names = _output_names(all_paths, root)

    sequences, keys = [], set()
    for raw, frames in groups.items():
        orders = [frame[0] for frame in frames]
        if len(set(orders)) != len(orders):
            raise ValueError(f"sequence {raw!r} has duplicate frame_idx values {sorted(orders)}")
        frames = sorted(frames, key=lambda t: t[0])
        key = _safe_key(raw)
        if key in keys:
            raise ValueError(f"two sequences map to the same key {key!r}")
        keys.add(key)
        sequences.append(SequenceSpec(key, tuple(
            FrameSpec(f, relative_original_path(f, root), names[f], t, iid, loc)
            for t, (_, f, iid, loc) in enumerate(frames)
        )))
    return sequences


def parse_shard(text: str) -> Tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"shard must look like i/N (e.g. 0/4), got {text!r}")
    shard = (int(m.group(1)), int(m.group(2)))
    _check_shard(shard)
    return shard


def _check_shard(shard: Tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is invalid: need 0 <= i < N")


# ----------------------------------------------------------------------------- layout
def _check_name(kind: str, name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"{kind} name {name!r} cannot be used as a folder name")


def output_dir_for(output_dir: str, dataset_name: str, codec_name: str, quality: Any) -> str:
    """Folder of one (dataset, codec, quality): ``<output>/<dataset>/<codec>/q<quality>``."""
    _check_name("dataset", dataset_name)
    _check_name("codec", codec_name)
    return os.path.join(output_dir, dataset_name, codec_name, quality_dirname(quality))


def _record_path(qdir: str, key: str) -> str:
    return os.path.join(qdir, RECORDS_DIRNAME, key + ".json")


def _bitstream_relpath(key: str) -> str:
    return f"{BITSTREAMS_DIRNAME}/{key}{BITSTREAM_SUFFIX}"


def _sequence_files(qdir: str, seq: SequenceSpec) -> List[str]:
    """Every file a run writes for ``seq`` in ``qdir`` (the bitstream even if not saved now)."""
    return ([os.path.join(qdir, f.file_name) for f in seq.frames]
            + [_record_path(qdir, seq.key), os.path.join(qdir, _bitstream_relpath(seq.key))])


def _remove_orphans(sequences: Sequence[SequenceSpec], qdirs: Sequence[str]) -> int:
    """Remove the temp files killed runs left for the files of ``sequences``; return how many.

    Safe next to concurrent shards, which share folders (``records/``, and ``frames/<dir>/`` of
    image datasets): only the temp files of this shard's own files are removed, and no other
    shard writes those (shards split the sequences, and all files of a sequence are named after
    it). The shared manifest is handled by ``_assemble``.
    """
    names_by_folder: Dict[str, set] = defaultdict(set)
    for qdir in qdirs:
        for seq in sequences:
            for path in _sequence_files(qdir, seq):
                names_by_folder[os.path.dirname(path)].add(os.path.basename(path))
    return sum(len(remove_orphan_temp_files(folder, names)) for folder, names in names_by_folder.items())


def _normalize_options(options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(options or {}), sort_keys=True))
    except TypeError as e:
        raise ValueError(f"codec options must be JSON-serializable: {e}") from e


def _normalize_qualities(qualities: Sequence[Any]) -> List[Any]:
    qualities = list(qualities)
    if not qualities:
        raise ValueError("give at least one quality")
    tags = [format_quality(q) for q in qualities]
    dup = [t for t, n in Counter(tags).items() if n > 1]
    if dup:
        raise ValueError(f"duplicate qualities {dup}")
    return [int(q) if float(q).is_integer() else float(q) for q in qualities]


# ----------------------------------------------------------------------------- records
def _check_storage(record: dict, storage: Optional[str], qdir: str) -> None:
    """A record stored otherwise than ``storage`` (None: any) raises: one folder, one storage."""
    stored = record.get("storage", STORAGE_PNG)
    if storage is not None and stored != storage:
        raise ValueError(f"{qdir} holds results stored as {stored}, not {storage}; use another "
                         "output folder or delete it")


def _record_matches(record: Any, seq: SequenceSpec, header: Dict[str, Any], qdir: str,
                    need_bitstream: bool, storage: Optional[str]) -> bool:
    """True if ``record`` is a finished result of ``seq`` for ``header`` with its files present
    (PNGs, and the bitstream if ``need_bitstream`` or stored as bitstream).

    A record made with other codec options or another storage raises: one folder holds one
    codec configuration.
    """
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return False
    if header.get("codec_options") is not None and record.get("codec_options") != header["codec_options"]:
        raise ValueError(
            f"{qdir} holds results made with codec options {record.get('codec_options')}, not "
            f"{header['codec_options']}; use another output folder or delete it"
        )
    _check_storage(record, storage, qdir)
    if record.get("sequence") != seq.key:
        return False
    for key in ("dataset", "codec", "quality"):
        if record.get(key) != header[key]:
            return False
    frames = record.get("frames")
    if not isinstance(frames, list) or len(frames) != len(seq.frames):
        return False
    stored = record.get("storage") == STORAGE_BITSTREAM
    for entry, spec in zip(frames, seq.frames):
        if (entry.get("original_relpath") != spec.original_relpath
                or entry.get("file_name") != spec.file_name
                or not (stored or os.path.isfile(os.path.join(qdir, spec.file_name)))):
            return False
    if need_bitstream or stored:
        rel = record.get("bitstream")
        try:
            return bool(rel) and os.path.getsize(os.path.join(qdir, rel)) * 8 == record["total_bits"]
        except OSError:
            return False
    return True


def _frame_entry(seq: SequenceSpec, spec: FrameSpec, image: np.ndarray, bits: int,
                 offset: Optional[int]) -> dict:
    """A frame's record entry (``offset``: its first byte in the stored bitstream)."""
    h, w = image.shape[:2]
    entry = {
        "original_file_name": spec.original_file_name,
        "original_relpath": spec.original_relpath,
        "file_name": spec.file_name,
        BITS: int(bits),
        "bpp": int(bits) / float(h * w),
        "height": int(h),
        "width": int(w),
        "sequence": seq.key,
        "frame_index": spec.frame_index,
    }
    if spec.image_id is not None:
        entry["image_id"] = spec.image_id
    if offset is not None:
        entry["offset"] = offset
    return entry


# ----------------------------------------------------------------------------- worker
@dataclass(frozen=True)
class _Task:
    sequence: SequenceSpec
    codec_name: str
    codec_options: Dict[str, Any]
    headers: Tuple[Dict[str, Any], ...]  # one per pending quality
    quality_dirs: Tuple[str, ...]
    save_bitstreams: bool
    storage: str


# Originals that are frames of a bitstream-stored pair dataset (recompressing it), decoded once
# per segment while a sequence is coded at each quality.
_ORIGINALS = DecodedFrameCache()


def _read_original(spec: FrameSpec) -> np.ndarray:
    record = {"file_name": spec.original_file_name}
    if spec.original_bitstream_frame is not None:
        record[BITSTREAM_FRAME] = spec.original_bitstream_frame
    return read_frame(record, "RGB", _ORIGINALS)


def _code_sequence(task: _Task, header: Dict[str, Any], qdir: str) -> None:
    """Code one sequence at one quality: PNGs (png storage) as frames come out, then the
    bitstream and the record."""
    seq = task.sequence
    stored = task.storage == STORAGE_BITSTREAM
    codec = cached_codec(task.codec_name, task.codec_options)
    originals = (_read_original(spec) for spec in seq.frames)  # read again at each quality
    frames, chunks, offset = [], [], 0
    for i, coded in enumerate(codec.encode_stream(originals, header["quality"])):
        spec = seq.frames[i]
        if not stored:
            _write_png(os.path.join(qdir, spec.file_name), coded.image)
        frames.append(_frame_entry(seq, spec, coded.image, coded.bits, offset if stored else None))
        chunks.append(coded.data)
        offset += len(coded.data)
    bitstream = b"".join(chunks)
    record = dict(header, version=RECORD_VERSION, sequence=seq.key, frames=frames,
                  total_bits=8 * len(bitstream))
    if task.save_bitstreams or stored:
        record["bitstream"] = _bitstream_relpath(seq.key)
        atomic_write_bytes(os.path.join(qdir, record["bitstream"]), bitstream)
    if stored:
        record.update(storage=STORAGE_BITSTREAM, crc32=bitstream_crc32(bitstream))
    _write_json(_record_path(qdir, seq.key), record)


def _run_task(task: _Task) -> str:
    for header, qdir in zip(task.headers, task.quality_dirs):
        _code_sequence(task, header, qdir)
    return task.sequence.key


def _init_worker() -> None:
    import torch

    torch.set_num_threads(WORKER_TORCH_THREADS)


def _run_tasks(tasks: List[_Task], workers: int, progress: bool, desc: str) -> Dict[str, str]:
    """Run every task; return {sequence key: traceback} of the failed ones."""
    from tqdm import tqdm

    failures: Dict[str, str] = {}

    def failed(key: str, tb: str) -> None:
        failures[key] = tb
        logger.error("Compressing sequence %s failed:\n%s", key, tb)

    with tqdm(total=len(tasks), desc=desc, unit="seq", disable=not progress) as bar:
        if workers <= 1 or len(tasks) <= 1:  # a pool would only add start-up time
            for task in tasks:
                try:
                    _run_task(task)
                except Exception:
                    failed(task.sequence.key, traceback.format_exc())
                bar.update(1)
        else:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as ex:
                futures = {ex.submit(_run_task, t): t.sequence.key for t in tasks}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        future.result()
                    except Exception:
                        failed(futures[future], traceback.format_exc())
                    bar.update(1)
    return failures


# ----------------------------------------------------------------------------- manifests
def _assemble(qdir: str, sequences: List[SequenceSpec], header: Dict[str, Any],
              cache: Dict[str, dict], run_start: float,
              storage: Optional[str]) -> Tuple[Optional[str], List[str]]:
    """Write ``manifest.json`` of one quality if every sequence has a valid record.

    ``storage`` None (a merge) accepts the storage recorded (every record must agree). Returns
    (manifest path or None, keys of the sequences still missing).
    """
    # Any shard (or --merge) may be writing the manifest right now, so a temp file of it is an
    # orphan only if it predates this run: a manifest write lasts far less than the time this
    # run has taken to get here (loading the dataset and reading every record).
    remove_orphan_temp_files(qdir, [MANIFEST_FILENAME], older_than=run_start)
    records, missing = [], []
    for seq in sequences:
        record = cache.get(seq.key)
        if record is None:
            record = _read_json(_record_path(qdir, seq.key))
            if not _record_matches(record, seq, header, qdir, False, storage):
                missing.append(seq.key)
                continue
        records.append(record)
    if missing:
        return None, missing
    options = header.get("codec_options")
    if options is None:  # merge without options given: every record must agree
        found = {json.dumps(r["codec_options"], sort_keys=True) for r in records}
        if len(found) > 1:
            raise ValueError(f"records in {qdir} were made with different codec options: {sorted(found)}")
        options = records[0]["codec_options"]
    storages = {r.get("storage", STORAGE_PNG) for r in records}
    if len(storages) > 1:
        raise ValueError(f"records in {qdir} are stored in different ways: {sorted(storages)}")
    stored_as = storages.pop()
    frames = [f for r in records for f in r["frames"]]
    total_bits = sum(r["total_bits"] for r in records)
    total_pixels = sum(f["height"] * f["width"] for f in frames)
    sequences_summary = []
    for r in records:
        entry = {"sequence": r["sequence"], "num_frames": len(r["frames"]), BITS: r["total_bits"]}
        entry.update({k: r[k] for k in ("bitstream", "crc32") if k in r})
        sequences_summary.append(entry)
    manifest = {
        "version": manifest_version(stored_as),
        "dataset": header["dataset"],
        "codec": header["codec"],
        "quality": header["quality"],
        "codec_options": options,
    }
    if stored_as != STORAGE_PNG:  # version 1 (PNG) manifests have no such field
        manifest["storage"] = stored_as
    manifest.update({
        "total_bits": total_bits,
        "total_pixels": total_pixels,
        "bpp": total_bits / float(total_pixels),
        "num_sequences": len(records),
        "sequences": sequences_summary,
        "frames": frames,
    })
    path = os.path.join(qdir, MANIFEST_FILENAME)
    _write_json(path, manifest)
    return path, []


def _headers(dataset_name: str, codec_name: str, qualities: List[Any],
             options: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{"dataset": dataset_name, "codec": codec_name, "quality": q, "codec_options": options}
            for q in qualities]


def assemble_manifests(dataset_name: str, codec_name: str, qualities: Sequence[Any], output_dir: str,
                       codec_options: Optional[Dict[str, Any]] = None,
                       storage: Optional[str] = None) -> Dict[Any, str]:
    """Assemble ``manifest.json`` of each quality from the records of all shards.

    ``codec_options`` / ``storage`` None accept the options / storage recorded (they must agree).
    Raises RuntimeError naming missing sequences if some shard has not finished.
    """
    run_start = time.time()
    qualities = _normalize_qualities(qualities)
    options = None if codec_options is None else _normalize_options(codec_options)
    sequences = build_sequences(DatasetCatalog.get(dataset_name))
    manifests, problems = {}, []
    for header in _headers(dataset_name, codec_name, qualities, options):
        qdir = output_dir_for(output_dir, dataset_name, codec_name, header["quality"])
        path, missing = _assemble(qdir, sequences, header, {}, run_start, storage)
        if path is None:
            shown = ", ".join(missing[:MAX_FAILURES_SHOWN])
            problems.append(f"q{format_quality(header['quality'])}: {len(missing)} sequence(s) "
                            f"without a record, e.g. {shown}")
        else:
            manifests[header["quality"]] = path
    if problems:
        raise RuntimeError(
            f"cannot assemble manifests of {dataset_name}/{codec_name}: " + "; ".join(problems)
        )
    return manifests


def compress_dataset(dataset_name: str, codec_name: str, qualities: Sequence[Any], output_dir: str,
                     codec_options: Optional[Dict[str, Any]] = None, workers: int = 1,
                     shard: Tuple[int, int] = (0, 1), progress: bool = True,
                     save_bitstreams: bool = False, storage: str = STORAGE_PNG) -> Dict[Any, str]:
    """Compress ``dataset_name`` with ``codec_name`` at each quality into ``output_dir``.

    ``storage`` "png" writes the decoded frames as PNG (and with ``save_bitstreams`` the
    bitstreams too); "bitstream" keeps only each sequence's bitstream, whose frames the pair
    dataset decodes when read (``vcm_d2.data.pairs.read_frame``). One folder holds one storage.
    Resumable: sequences with a valid record are skipped, and the temp files of killed writes
    removed. With ``shard=(i, N)`` only every N-th sequence starting at i is coded here; the
    manifest of a quality is written by whichever run finds the records of all sequences.
    Returns {quality: manifest path} for the qualities whose manifest exists at the end. Raises
    CompressionError (after finishing all other sequences) if some sequences failed.
    """
    run_start = time.time()
    qualities = _normalize_qualities(qualities)
    options = _normalize_options(codec_options)
    _check_shard(tuple(shard))
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    sequences = build_sequences(DatasetCatalog.get(dataset_name))
    mine = sequences[shard[0]::shard[1]]
    headers = _headers(dataset_name, codec_name, qualities, options)
    qdirs = [output_dir_for(output_dir, dataset_name, codec_name, q) for q in qualities]
    removed = _remove_orphans(mine, qdirs)
    if removed:
        logger.info("Removed %d temp file(s) left by an interrupted run", removed)

    caches: List[Dict[str, dict]] = [{} for _ in qualities]
    pending: "OrderedDict[str, List[int]]" = OrderedDict()
    by_key = {seq.key: seq for seq in mine}
    for seq in mine:
        for qi, (header, qdir) in enumerate(zip(headers, qdirs)):
            record = _read_json(_record_path(qdir, seq.key))
            if _record_matches(record, seq, header, qdir, save_bitstreams, storage):
                caches[qi][seq.key] = record
            else:
                pending.setdefault(seq.key, []).append(qi)
    for qi in sorted({qi for qis in pending.values() for qi in qis}):
        stale = os.path.join(qdirs[qi], MANIFEST_FILENAME)
        if os.path.exists(stale):  # it would describe frames that are being rewritten
            os.remove(stale)

    tasks = [
        _Task(by_key[key], codec_name, options, tuple(headers[qi] for qi in qis),
              tuple(qdirs[qi] for qi in qis), save_bitstreams, storage)
        for key, qis in pending.items()
    ]
    logger.info(
        "%s/%s: %d sequences in shard %d/%d, %d to compress at %s",
        dataset_name, codec_name, len(mine), shard[0], shard[1], len(tasks),
        ", ".join(format_quality(q) for q in qualities),
    )
    failures = _run_tasks(tasks, int(workers), progress, desc=f"{dataset_name} {codec_name}")

    manifests: Dict[Any, str] = {}
    for qi, (header, qdir) in enumerate(zip(headers, qdirs)):
        path, missing = _assemble(qdir, sequences, header, caches[qi], run_start, storage)
        if path is not None:
            manifests[header["quality"]] = path
        elif not failures:
            logger.info("q%s: %d sequence(s) of other shards not done yet; manifest not written",
                        format_quality(header["quality"]), len(missing))
    if failures:
        keys = sorted(failures)
        raise CompressionError(
            f"{len(keys)} sequence(s) of {dataset_name} failed with {codec_name}: "
            + ", ".join(keys[:MAX_FAILURES_SHOWN]) + (" ..." if len(keys) > MAX_FAILURES_SHOWN else ""),
            failures, manifests,
        )
    return manifests
