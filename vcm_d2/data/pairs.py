"""Compressed "pair" datasets: a base dataset joined with a compression manifest.

``tools/compress_dataset.py`` (``vcm_d2.engine.compress``) writes, per codec and quality,
``<root>/<dataset>/<codec>/q<quality>/manifest.json`` plus either the decoded frames as PNG
(storage "png") or only each sequence's bitstream (storage "bitstream", 1/25 of the disk or
less). This module reads such manifests and registers detectron2 datasets whose records point
``file_name`` at the compressed frame and keep the original in ``original_file_name`` together
with the exact bits.
With bitstream storage ``file_name`` is the frame's name only (the PNG it would have): the record
also carries ``bitstream_frame`` (``bitstream_frames`` in video dicts) and the frame is decoded
when read. Read a record's frame with :func:`read_frame`, which handles both storages.

Records are joined by original file name: first by the normalized path, then (so a dataset that
was compressed on another machine, under another ``DETECTRON2_DATASETS``, still matches) by the
path relative to the common folder of all the dataset's frames, which the manifest stores per frame
as ``original_relpath``.
"""
import functools
import glob
import json
import logging
import math
import os
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_PIL_to_numpy, read_image
from PIL import Image

from ..codecs.stored import DecodedFrameCache, StoredBitstreamError, StoredSequence
from ..utils.rate import BITS

__all__ = [
    "MANIFEST_VERSION",
    "MANIFEST_FILENAME",
    "STORAGE_PNG",
    "STORAGE_BITSTREAM",
    "STORAGES",
    "BITSTREAM_FRAME",
    "BITSTREAM_FRAMES",
    "load_manifest",
    "manifest_storage",
    "manifest_version",
    "load_pair_dicts",
    "read_frame",
    "stored_sequence",
    "register_pair_dataset",
    "register_pair_datasets_from_dir",
    "register_pair_datasets_from_root",
    "register_folder_entries",
    "pair_dataset_name",
    "format_quality",
    "quality_dirname",
    "common_root",
    "relative_original_path",
    "png_frame_names",
    "registered_for",
]

logger = logging.getLogger(__name__)

# Version 2 added bitstream storage ("storage", per-frame "offset", per-sequence "bitstream" and
# "crc32"). A PNG-stored manifest is still written as version 1 (no "storage": older vcm_d2 reads
# it); every version up to MANIFEST_VERSION is read.
MANIFEST_VERSION = 2
MANIFEST_FILENAME = "manifest.json"
STORAGE_PNG = "png"  # the decoded frames as PNG files
STORAGE_BITSTREAM = "bitstream"  # only each sequence's bitstream; frames are decoded when read
STORAGES = (STORAGE_PNG, STORAGE_BITSTREAM)
# Record key of a frame kept in a stored bitstream: {"manifest": manifest path, "sequence": key,
# "index": frame index in the sequence}; video dicts have one per frame under BITSTREAM_FRAMES.
BITSTREAM_FRAME = "bitstream_frame"
BITSTREAM_FRAMES = "bitstream_frames"
# Bitstream-stored manifests whose sequences a process keeps indexed (see stored_sequence).
MANIFESTS_INDEXED = 16
# Separates the base dataset name from the codec/quality suffix in pair dataset names.
PAIR_NAME_SEPARATOR = "@"
# Number of offending names quoted in error messages (the rest are counted).
MAX_NAMES_IN_ERROR = 5

_MANIFEST_FIELDS = {
    "version": int,
    "dataset": str,
    "codec": str,
    "quality": (int, float),
    "codec_options": dict,
    "frames": list,
    "total_bits": int,
    "total_pixels": int,
    "bpp": (int, float),
}
_FRAME_FIELDS = {
    "original_file_name": str,
    "file_name": str,
    BITS: int,
    "bpp": (int, float),
    "height": int,
    "width": int,
    "sequence": str,
    "frame_index": int,
}
_SEQUENCE_FIELDS = {  # the "sequences" entries of a bitstream-stored manifest
    "sequence": str,
    "num_frames": int,
    BITS: int,
    "bitstream": str,
    "crc32": int,
}
# Per-frame fields of a pair record and the keys their per-frame lists have in a video dict.
_VIDEO_FIELDS = {"file_name": "file_names", BITS: BITS, "bpp": "bpp", BITSTREAM_FRAME: BITSTREAM_FRAMES}
# Base metadata that describes the compression, not the dataset: never copied to a pair dataset.
_PAIR_ONLY_METADATA = ("name", "codec", "quality", "bpp", "manifest", "base_dataset", "storage")


# ----------------------------------------------------------------------------- naming helpers
def format_quality(quality: Any) -> str:
    """Canonical text of a quality value: ``23`` for 23 or 23.0, ``0.5`` for 0.5."""
    if isinstance(quality, bool) or not isinstance(quality, (int, float)):
        raise ValueError(f"quality must be a number, got {quality!r}")
    if not math.isfinite(quality):
        raise ValueError(f"quality must be finite, got {quality!r}")
    if float(quality).is_integer():
        return str(int(quality))
    return repr(float(quality))


def quality_dirname(quality: Any) -> str:
    """Folder name of one quality: ``q<quality>``."""
    return "q" + format_quality(quality)


def pair_dataset_name(base: str, codec: str, quality: Any) -> str:
    """Name of the pair dataset of ``base`` compressed with ``codec`` at ``quality``."""
    return f"{base}{PAIR_NAME_SEPARATOR}{codec}_{quality_dirname(quality)}"


def _norm(path: str) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def common_root(paths: Iterable[str]) -> str:
    """Deepest folder containing every path in ``paths`` (absolute)."""
    dirs = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if not dirs:
        raise ValueError("common_root needs at least one path")
    return os.path.commonpath(sorted(dirs))


def relative_original_path(path: str, root: str) -> str:
    """``path`` relative to ``root``, with "/" separators (stable across machines)."""
    return os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")


def png_frame_names(relpaths: Mapping[Any, str]) -> Dict[Any, str]:
    """PNG name of each frame of a derived copy (compressed, degraded) from its path relative
    to the dataset's common folder: ``.png`` for the extension, or appended when two frames
    differ only by their extension (``a.jpg``, ``a.png`` -> ``a.jpg.png``, ``a.png.png``)."""
    stems = {k: os.path.splitext(r)[0] for k, r in relpaths.items()}
    counts = Counter(stems.values())
    return {k: (stems[k] if counts[stems[k]] == 1 else relpaths[k]) + ".png" for k in relpaths}


def registered_for(name: str, key: str, value: Any) -> bool:
    """Whether dataset ``name`` is registered with metadata ``key`` == ``value`` (registering it
    again is then a no-op); ValueError if it is registered for something else."""
    if name not in DatasetCatalog.list():
        return False
    existing = MetadataCatalog.get(name).get(key, None)
    if existing == value:
        return True
    raise ValueError(f"dataset {name!r} is already registered ({key} {existing!r}); cannot "
                     f"register it again for {value!r}")


# ----------------------------------------------------------------------------- manifests
def _check_fields(obj: Any, fields: Dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    for key, types in fields.items():
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{where}: field {key!r} has invalid value {value!r}")


def manifest_version(storage: str) -> int:
    """The version a manifest of ``storage`` is written with: the oldest that describes it."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    return 1 if storage == STORAGE_PNG else MANIFEST_VERSION


def manifest_storage(manifest: Mapping[str, Any]) -> str:
    """How a (validated) manifest's frames are stored: "png" or "bitstream" (version 1: png)."""
    return manifest["storage"] if manifest["version"] >= 2 else STORAGE_PNG


def validate_manifest(manifest: Any, where: str = "manifest") -> None:
    """Raise ValueError naming the problem if ``manifest`` is not a valid manifest."""
    if isinstance(manifest, dict) and manifest.get("version") not in range(1, MANIFEST_VERSION + 1):
        raise ValueError(
            f"{where}: unsupported manifest version {manifest.get('version')!r} "
            f"(this vcm_d2 reads versions 1 to {MANIFEST_VERSION})"
        )
    _check_fields(manifest, _MANIFEST_FIELDS, where)
    if manifest["version"] >= 2 and manifest.get("storage") not in STORAGES:
        raise ValueError(f"{where}: field 'storage' must be one of {STORAGES}, "
                         f"got {manifest.get('storage')!r}")
    for i, frame in enumerate(manifest["frames"]):
        _check_fields(frame, _FRAME_FIELDS, f"{where}: frames[{i}]")
        if os.path.isabs(frame["file_name"]):
            raise ValueError(
                f"{where}: frames[{i}].file_name {frame['file_name']!r} must be relative to the "
                "manifest folder"
            )
        if frame["height"] < 1 or frame["width"] < 1 or frame[BITS] < 0:
            raise ValueError(f"{where}: frames[{i}] has invalid size or bits: {frame}")
    frame_bits = sum(f[BITS] for f in manifest["frames"])
    if frame_bits != manifest["total_bits"]:
        raise ValueError(
            f"{where}: total_bits {manifest['total_bits']} != sum of frame bits {frame_bits}"
        )
    if manifest_storage(manifest) == STORAGE_BITSTREAM:
        _validate_bitstream_layout(manifest, where)


def _validate_bitstream_layout(manifest: dict, where: str) -> None:
    """Each sequence lists its bitstream and CRC; its frames are numbered 0..n-1, of one size,
    and their byte offsets follow their bits."""
    sequences = manifest.get("sequences")
    if not isinstance(sequences, list):
        raise ValueError(f"{where}: a bitstream-stored manifest needs a 'sequences' list")
    frames_of: Dict[str, List[dict]] = {}
    for i, seq in enumerate(sequences):
        _check_fields(seq, _SEQUENCE_FIELDS, f"{where}: sequences[{i}]")
        if os.path.isabs(seq["bitstream"]):
            raise ValueError(f"{where}: sequences[{i}].bitstream {seq['bitstream']!r} must be "
                             "relative to the manifest folder")
        if seq["sequence"] in frames_of:
            raise ValueError(f"{where}: sequence {seq['sequence']!r} is listed twice")
        frames_of[seq["sequence"]] = []
    for i, frame in enumerate(manifest["frames"]):
        _check_fields(frame, {"offset": int}, f"{where}: frames[{i}]")
        if frame["sequence"] not in frames_of:
            raise ValueError(f"{where}: frames[{i}] belongs to sequence {frame['sequence']!r}, "
                             "which 'sequences' does not list")
        frames_of[frame["sequence"]].append(frame)
    for seq in sequences:
        frames = sorted(frames_of[seq["sequence"]], key=lambda f: f["frame_index"])
        offsets = np.cumsum([0] + [f[BITS] // 8 for f in frames]).tolist()
        if ([f["frame_index"] for f in frames] != list(range(seq["num_frames"]))
                or [f["offset"] for f in frames] != offsets[:-1]
                or any(f[BITS] % 8 for f in frames) or 8 * offsets[-1] != seq[BITS]
                or len({(f["height"], f["width"]) for f in frames}) != 1):
            raise ValueError(f"{where}: the frames of sequence {seq['sequence']!r} do not match its "
                             f"entry {seq} (frame indices, sizes, bits or byte offsets)")


def load_manifest(path: str) -> dict:
    """Read and validate ``manifest.json``; errors name the file and the bad field."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path!r} does not exist")
    with open(path, "r", encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"manifest {path!r} is not valid JSON: {e}") from e
    validate_manifest(manifest, where=f"manifest {path!r}")
    return manifest


# ----------------------------------------------------------------------------- join
class _ManifestIndex:
    """Looks frames of a manifest up by original path (exact, then relative to the data root)."""

    def __init__(self, manifest: dict, manifest_path: str):
        self.by_path: Dict[str, dict] = {}
        self.by_relpath: Dict[str, dict] = {}
        for frame in manifest["frames"]:
            self.by_path[_norm(frame["original_file_name"])] = frame
            if "original_relpath" in frame:
                self.by_relpath[frame["original_relpath"]] = frame
        self.manifest_path = manifest_path
        self._base_root: Optional[str] = None

    def set_base_paths(self, paths: Sequence[str]) -> None:
        if paths:
            self._base_root = common_root(paths)

    def get(self, original: str) -> Optional[dict]:
        frame = self.by_path.get(_norm(original))
        if frame is None and self._base_root is not None and self.by_relpath:
            frame = self.by_relpath.get(relative_original_path(original, self._base_root))
        return frame


def _compressed_fields(frame: dict, manifest_path: str, stored: bool, original: str, where: str,
                       record: dict) -> Dict[str, Any]:
    """The per-frame fields a pair record gets from its manifest entry (see _VIDEO_FIELDS)."""
    for key in ("height", "width"):
        if key in record and int(record[key]) != frame[key]:
            raise ValueError(
                f"{where}: {original!r} has {key} {record[key]} in the base dataset but "
                f"{frame[key]} in the manifest (a different image with the same name?)"
            )
    path = os.path.normpath(os.path.join(os.path.dirname(manifest_path), frame["file_name"]))
    fields = {"file_name": path, BITS: frame[BITS], "bpp": float(frame["bpp"])}
    if stored:
        fields[BITSTREAM_FRAME] = {"manifest": manifest_path, "sequence": frame["sequence"],
                                   "index": frame["frame_index"]}
    return fields


def _missing_error(missing: List[str], base: str, manifest_path: str) -> ValueError:
    shown = ", ".join(repr(m) for m in missing[:MAX_NAMES_IN_ERROR])
    more = f" and {len(missing) - MAX_NAMES_IN_ERROR} more" if len(missing) > MAX_NAMES_IN_ERROR else ""
    return ValueError(
        f"{len(missing)} frame(s) of dataset {base!r} are missing from manifest "
        f"{manifest_path!r}: {shown}{more} (compress them, or pass allow_partial=True)"
    )


def load_pair_dicts(manifest_path: str, base_dataset_name: str, allow_partial: bool = False) -> List[dict]:
    """Base dataset dicts whose images are replaced by their compressed versions.

    Image dicts get ``file_name`` (absolute path of the compressed PNG; its name only with
    bitstream storage), ``original_file_name``, ``bits``, ``bpp``, ``codec``, ``quality``, and with
    bitstream storage ``bitstream_frame``. Video dicts (with ``file_names``) get compressed
    ``file_names``, ``original_file_names`` and per-frame lists ``bits``, ``bpp`` (and
    ``bitstream_frames``). Read a record's frame with :func:`read_frame`.
    A base record with a frame missing from the manifest raises ValueError naming it, unless
    ``allow_partial`` (such records are then dropped).
    """
    manifest_path = os.path.abspath(manifest_path)
    manifest = load_manifest(manifest_path)
    stored = manifest_storage(manifest) == STORAGE_BITSTREAM
    if manifest["dataset"] != base_dataset_name:
        logger.info(
            "Joining manifest of %r with base dataset %r by original file name",
            manifest["dataset"], base_dataset_name,
        )
    base_dicts = DatasetCatalog.get(base_dataset_name)
    index = _ManifestIndex(manifest, manifest_path)
    index.set_base_paths(
        [p for d in base_dicts for p in (d["file_names"] if "file_names" in d else [d["file_name"]])]
    )
    where = f"pair of {base_dataset_name!r} and {manifest_path!r}"
    common = {"codec": manifest["codec"], "quality": manifest["quality"]}

    out: List[dict] = []
    missing: List[str] = []
    for record in base_dicts:
        if "file_names" in record:
            frames = [index.get(p) for p in record["file_names"]]
            absent = [p for p, f in zip(record["file_names"], frames) if f is None]
            if absent:
                missing.extend(absent)
                continue
            joined = [
                _compressed_fields(f, manifest_path, stored, p, where, record)
                for p, f in zip(record["file_names"], frames)
            ]
            new = dict(record)
            new["original_file_names"] = list(record["file_names"])
            for key, video_key in _VIDEO_FIELDS.items():
                if key in joined[0]:
                    new[video_key] = [j[key] for j in joined]
        else:
            frame = index.get(record["file_name"])
            if frame is None:
                missing.append(record["file_name"])
                continue
            new = dict(record)
            new["original_file_name"] = record["file_name"]
            new.update(_compressed_fields(frame, manifest_path, stored, record["file_name"], where, record))
        new.update(common)
        out.append(new)

    if missing:
        if not allow_partial:
            raise _missing_error(missing, base_dataset_name, manifest_path)
        logger.warning(
            "%s: dropped %d record(s) whose frames are not in the manifest (%d frames missing)",
            where, len(base_dicts) - len(out), len(missing),
        )
    return out


# ----------------------------------------------------------------------------- reading frames
@functools.lru_cache(maxsize=MANIFESTS_INDEXED)
def _stored_sequences(manifest_path: str, mtime_ns: int, size: int) -> Dict[str, StoredSequence]:
    manifest = load_manifest(manifest_path)
    if manifest_storage(manifest) != STORAGE_BITSTREAM:
        raise ValueError(f"manifest {manifest_path!r} stores its frames as "
                         f"{manifest_storage(manifest)}, not as bitstreams")
    frames: Dict[str, List[dict]] = {}
    for frame in manifest["frames"]:
        frames.setdefault(frame["sequence"], []).append(frame)
    folder = os.path.dirname(manifest_path)
    out = {}
    for seq in manifest["sequences"]:
        coded = sorted(frames[seq["sequence"]], key=lambda f: f["frame_index"])
        out[seq["sequence"]] = StoredSequence.create(
            seq["sequence"], os.path.normpath(os.path.join(folder, seq["bitstream"])),
            manifest["codec"], manifest["codec_options"], [f[BITS] for f in coded],
            coded[0]["height"], coded[0]["width"], seq["crc32"])
    return out


def stored_sequence(manifest_path: str, sequence: str) -> StoredSequence:
    """Sequence ``sequence`` of a bitstream-stored manifest. A process indexes each manifest
    once (again when the file changes)."""
    try:
        stat = os.stat(manifest_path)
    except OSError as exc:
        raise StoredBitstreamError(f"sequence {sequence!r}: cannot read manifest "
                                   f"{manifest_path!r}: {exc}") from exc
    sequences = _stored_sequences(manifest_path, stat.st_mtime_ns, stat.st_size)
    if sequence not in sequences:
        raise StoredBitstreamError(f"sequence {sequence!r} is not in manifest {manifest_path!r}")
    return sequences[sequence]


@functools.lru_cache(maxsize=None)
def _process_cache() -> DecodedFrameCache:
    """read_frame's cache when it is given none: one per process, of the default size."""
    return DecodedFrameCache()


def read_frame(record: Mapping[str, Any], image_format: Optional[str] = "RGB",
               cache: Optional[DecodedFrameCache] = None) -> np.ndarray:
    """The frame of a dataset record in ``image_format``, exactly as detectron2's
    ``read_image(record["file_name"], image_format)`` reads it from a PNG: read from its file,
    or, for a record of a bitstream-stored pair dataset (``bitstream_frame``), decoded from its
    stored bitstream through ``cache`` (default: one per process, of the default size).

    Raises StoredBitstreamError naming the sequence if its bitstream is missing or corrupt.
    """
    locator = record.get(BITSTREAM_FRAME)
    if locator is None:
        return read_image(record["file_name"], format=image_format)
    cache = _process_cache() if cache is None else cache
    rgb = cache.frame(stored_sequence(locator["manifest"], locator["sequence"]), locator["index"])
    return convert_PIL_to_numpy(Image.fromarray(rgb), image_format)


# ----------------------------------------------------------------------------- registration
def register_pair_dataset(name: str, manifest_path: str, base_dataset_name: str,
                          allow_partial: bool = False, **metadata: Any) -> None:
    """Register ``name`` = ``base_dataset_name`` joined with ``manifest_path``.

    The base metadata (thing_classes, keypoint info, stuff_classes, evaluator_type, json_file,
    ignore_label, ...) is copied: image ids are unchanged, so evaluators reuse the base
    annotations. ``codec``, ``quality``, ``bpp``, ``manifest``, ``base_dataset`` and ``storage``
    are added; ``metadata`` overrides anything. Registering the same name for the same manifest again is
    a no-op; for another manifest it raises ValueError.
    """
    manifest_path = os.path.abspath(manifest_path)
    if _already_registered(name, manifest_path, base_dataset_name):
        return
    _register_loaded(name, manifest_path, load_manifest(manifest_path), base_dataset_name,
                     allow_partial, metadata)


def _already_registered(name: str, manifest_path: str, base_dataset_name: str) -> bool:
    if base_dataset_name not in DatasetCatalog.list():
        raise KeyError(f"base dataset {base_dataset_name!r} of pair dataset {name!r} is not registered")
    return registered_for(name, "manifest", manifest_path)


def _register_loaded(name: str, manifest_path: str, manifest: dict, base_dataset_name: str,
                     allow_partial: bool, metadata: Dict[str, Any]) -> None:
    base_meta = {
        k: v for k, v in MetadataCatalog.get(base_dataset_name).as_dict().items()
        if k not in _PAIR_ONLY_METADATA
    }
    DatasetCatalog.register(
        name,
        lambda: load_pair_dicts(manifest_path, base_dataset_name, allow_partial=allow_partial),
    )
    values = dict(base_meta)
    values.update(
        codec=manifest["codec"],
        quality=manifest["quality"],
        bpp=float(manifest["bpp"]),
        manifest=manifest_path,
        base_dataset=base_dataset_name,
        storage=manifest_storage(manifest),
    )
    values.update(metadata)
    MetadataCatalog.get(name).set(**values)


def register_pair_datasets_from_dir(root: str, base_dataset_name: str) -> List[str]:
    """Register every ``root/<base>/<codec>/q*/manifest.json`` as ``<base>@<codec>_q<quality>``.

    Codec and quality are taken from each manifest. Returns the names sorted by (codec, quality).
    """
    pattern = os.path.join(glob.escape(root), glob.escape(base_dataset_name), "*", "q*", MANIFEST_FILENAME)
    found = []
    for path in glob.glob(pattern):
        header = {k: v for k, v in load_manifest(path).items() if k != "frames"}
        found.append((header["codec"], header["quality"], os.path.abspath(path), header))
    found.sort(key=lambda t: (t[0], t[1]))
    names = []
    for codec, quality, path, header in found:
        name = pair_dataset_name(base_dataset_name, codec, quality)
        if not _already_registered(name, path, base_dataset_name):
            _register_loaded(name, path, header, base_dataset_name, False, {})
        names.append(name)
    return names


def register_pair_datasets_from_root(root: str, strict: bool = True) -> List[str]:
    """Register the pairs of every registered dataset with a folder in ``root``
    (:func:`register_pair_datasets_from_dir` for each, in name order); a broken one raises, or
    with ``strict=False`` is skipped with a warning (see :func:`register_folder_entries`).
    Returns the names."""
    registered = set(DatasetCatalog.list())

    def register(base: str) -> List[str]:
        if base in registered and os.path.isdir(os.path.join(root, base)):
            return register_pair_datasets_from_dir(root, base)
        return []

    return register_folder_entries(root, register, strict)


def register_folder_entries(root: str, register: Callable[[str], List[str]],
                            strict: bool = True) -> List[str]:
    """The names ``register(entry)`` registers for each entry of folder ``root``, in name order.

    An entry whose registration fails (OSError, ValueError) raises, or with ``strict=False`` is
    skipped with a warning, as is an unreadable ``root`` (a missing one holds nothing): a broken
    folder under $DETECTRON2_DATASETS must not break ``import vcm_d2``.
    """
    if not strict and not os.path.isdir(root):
        return []
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        if strict:
            raise
        logger.warning("Skipping unreadable folder %s: %s", root, e)
        return []
    names = []
    for entry in entries:
        try:
            names += register(entry)
        except (OSError, ValueError) as e:
            if strict:
                raise
            logger.warning("Skipping %s: %s", os.path.join(root, entry), e)
    return names
