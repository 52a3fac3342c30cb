"""Compressed "pair" datasets: a base dataset joined with a compression manifest.

``tools/compress_dataset.py`` (``vcm_d2.engine.compress``) writes, per codec and quality,
``<root>/<dataset>/<codec>/q<quality>/manifest.json`` plus the decoded frames as PNG. This module
reads such manifests and registers detectron2 datasets whose records point ``file_name`` at the
compressed frame and keep the original in ``original_file_name`` together with the exact bits.

Records are joined by original file name: first by the normalized path, then (so a dataset that
was compressed on another machine, under another ``DETECTRON2_DATASETS``, still matches) by the
path relative to the common folder of all the dataset's frames, which the manifest stores per frame
as ``original_relpath``.
"""
import glob
import json
import logging
import math
import os
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..utils.rate import BITS

__all__ = [
    "MANIFEST_VERSION",
    "MANIFEST_FILENAME",
    "load_manifest",
    "load_pair_dicts",
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

MANIFEST_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
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
# Base metadata that describes the compression, not the dataset: never copied to a pair dataset.
_PAIR_ONLY_METADATA = ("name", "codec", "quality", "bpp", "manifest", "base_dataset")


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


def validate_manifest(manifest: Any, where: str = "manifest") -> None:
    """Raise ValueError naming the problem if ``manifest`` is not a valid version-1 manifest."""
    if isinstance(manifest, dict) and manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{where}: unsupported manifest version {manifest.get('version')!r} "
            f"(this vcm_d2 reads version {MANIFEST_VERSION})"
        )
    _check_fields(manifest, _MANIFEST_FIELDS, where)
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


def _compressed_fields(frame: dict, manifest_dir: str, original: str, where: str,
                       record: dict) -> Tuple[str, int, float]:
    for key in ("height", "width"):
        if key in record and int(record[key]) != frame[key]:
            raise ValueError(
                f"{where}: {original!r} has {key} {record[key]} in the base dataset but "
                f"{frame[key]} in the manifest (a different image with the same name?)"
            )
    path = os.path.normpath(os.path.join(manifest_dir, frame["file_name"]))
    return path, frame[BITS], float(frame["bpp"])


def _missing_error(missing: List[str], base: str, manifest_path: str) -> ValueError:
    shown = ", ".join(repr(m) for m in missing[:MAX_NAMES_IN_ERROR])
    more = f" and {len(missing) - MAX_NAMES_IN_ERROR} more" if len(missing) > MAX_NAMES_IN_ERROR else ""
    return ValueError(
        f"{len(missing)} frame(s) of dataset {base!r} are missing from manifest "
        f"{manifest_path!r}: {shown}{more} (compress them, or pass allow_partial=True)"
    )


def load_pair_dicts(manifest_path: str, base_dataset_name: str, allow_partial: bool = False) -> List[dict]:
    """Base dataset dicts whose images are replaced by their compressed versions.

    Image dicts get ``file_name`` (absolute path of the compressed PNG), ``original_file_name``,
    ``bits``, ``bpp``, ``codec``, ``quality``. Video dicts (with ``file_names``) get compressed
    ``file_names``, ``original_file_names`` and per-frame lists ``bits`` and ``bpp``.
    A base record with a frame missing from the manifest raises ValueError naming it, unless
    ``allow_partial`` (such records are then dropped).
    """
    manifest = load_manifest(manifest_path)
    manifest_dir = os.path.dirname(os.path.abspath(manifest_path))
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
                _compressed_fields(f, manifest_dir, p, where, record)
                for p, f in zip(record["file_names"], frames)
            ]
            new = dict(record)
            new["original_file_names"] = list(record["file_names"])
            new["file_names"] = [j[0] for j in joined]
            new[BITS] = [j[1] for j in joined]
            new["bpp"] = [j[2] for j in joined]
        else:
            frame = index.get(record["file_name"])
            if frame is None:
                missing.append(record["file_name"])
                continue
            path, bits, bpp = _compressed_fields(frame, manifest_dir, record["file_name"], where, record)
            new = dict(record)
            new["original_file_name"] = record["file_name"]
            new["file_name"] = path
            new[BITS] = bits
            new["bpp"] = bpp
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


# ----------------------------------------------------------------------------- registration
def register_pair_dataset(name: str, manifest_path: str, base_dataset_name: str,
                          allow_partial: bool = False, **metadata: Any) -> None:
    """Register ``name`` = ``base_dataset_name`` joined with ``manifest_path``.

    The base metadata (thing_classes, keypoint info, stuff_classes, evaluator_type, json_file,
    ignore_label, ...) is copied: image ids are unchanged, so evaluators reuse the base
    annotations. ``codec``, ``quality``, ``bpp``, ``manifest`` and ``base_dataset`` are added;
    ``metadata`` overrides anything. Registering the same name for the same manifest again is
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
