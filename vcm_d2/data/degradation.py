"""Degraded copies of a dataset for the robustness test of TransVFC (§4.4.6, Fig. 16).

The source frames are degraded *before* any codec, so every method and codec sees the same
input. :func:`degrade_dataset` writes a PNG copy of every frame of a registered dataset and
registers it as ``<base>~<kind>``: an ordinary detectron2 dataset (same annotations, image and
video ids) that ``tools/compress_dataset.py`` compresses like any other, giving the pair datasets
``<base>~<kind>@<codec>_q<quality>``.

Layout::

    <root>/<base>~<kind>/
        degradation.json    # kind, params, seed: written first, every rerun must match it
        frames/<path relative to the common folder of the base frames, extension .png>
        DONE.json           # the same plus the frame list: written last (the folder is complete)

Noise is deterministic: a frame's noise comes from a generator seeded by (seed, hash of the
frame's path relative to the common folder of the dataset's frames), so a frame gets the same
noise on every machine and run, whether an image-level or a video-level dataset lists it.
"""
import concurrent.futures
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from ..utils.io import atomic_write, atomic_write_json
from .pairs import (
    MAX_NAMES_IN_ERROR,
    common_root,
    png_frame_names,
    register_folder_entries,
    register_pair_datasets_from_root,
    registered_for,
    relative_original_path,
)

__all__ = [
    "LOW_LIGHT_FACTOR",
    "NOISE_SIGMA",
    "DEGRADATIONS",
    "DEGRADED_NAME_SEPARATOR",
    "Degradation",
    "low_light",
    "gaussian_noise",
    "frame_rng",
    "degrade_image",
    "get_degradation",
    "degraded_dataset_name",
    "degraded_dir",
    "degrade_dataset",
    "load_degraded_dicts",
    "register_degraded_dataset",
    "register_degraded_datasets_from_dir",
    "register_derived_datasets",
]

logger = logging.getLogger(__name__)

# TransVFC §4.4.6 (Fig. 16): low light multiplies the luma by 0.3; noise is additive Gaussian
# with sigma 25 on 0..255 pixels.
LOW_LIGHT_FACTOR = 0.3
NOISE_SIGMA = 25.0

# Separates the base dataset name from the degradation kind: ``vcm_synth_val~lowlight``.
DEGRADED_NAME_SEPARATOR = "~"
DEGRADATION_VERSION = 1
SETTINGS_FILENAME = "degradation.json"
DONE_FILENAME = "DONE.json"
FRAMES_DIRNAME = "frames"
PNG_COMPRESS_LEVEL = 1  # fast; PNG is lossless at every level
PIXEL_MAX = 255

# ITU-R BT.601 full range, as JPEG (JFIF) and Pillow use: rows Y, Cb, Cr.
_RGB_TO_YCBCR = np.array([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
])
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)  # exact inverse: factor 1 is the identity
_YCBCR_OFFSET = np.array([0.0, 128.0, 128.0])  # chroma is centred on mid-range
# Bytes of the path digest that seed the noise generator (with the user seed).
_PATH_HASH_BYTES = 8


# ----------------------------------------------------------------------------- pixel functions
def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got {getattr(image, 'shape', None)} "
            f"{getattr(image, 'dtype', type(image).__name__)}"
        )


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, PIXEL_MAX).astype(np.uint8)


def low_light(image: np.ndarray, factor: float = LOW_LIGHT_FACTOR) -> np.ndarray:
    """Low-light version of an RGB uint8 image: luma (BT.601 full range) times ``factor``.

    Chroma is kept, so colours keep their hue; channels are rounded and clipped to 0..255.
    """
    _check_image(image)
    if not factor >= 0:
        raise ValueError(f"low-light factor must be >= 0, got {factor!r}")
    ycbcr = image.astype(np.float64) @ _RGB_TO_YCBCR.T + _YCBCR_OFFSET
    ycbcr[..., 0] *= factor
    return _to_uint8((ycbcr - _YCBCR_OFFSET) @ _YCBCR_TO_RGB.T)


def gaussian_noise(image: np.ndarray, sigma: float = NOISE_SIGMA, *,
                   rng: np.random.Generator) -> np.ndarray:
    """``image`` plus independent N(0, sigma^2) noise per pixel and channel, rounded and clipped."""
    _check_image(image)
    if not sigma >= 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma!r}")
    return _to_uint8(image.astype(np.float64) + rng.normal(0.0, sigma, size=image.shape))


def frame_rng(seed: int, relpath: str) -> np.random.Generator:
    """Generator of one frame: seeded by ``seed`` and a stable hash of its relative path.

    sha256 (not ``hash()``, which is salted per process) makes the stream identical across
    machines and runs.
    """
    _check_seed(seed)
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:_PATH_HASH_BYTES], "little")])


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Degradation:
    """A named degradation: ``function(image, **params)``, plus ``rng=`` if ``random``."""

    function: Callable[..., np.ndarray]
    params: Mapping[str, float]
    random: bool


DEGRADATIONS: Dict[str, Degradation] = {
    "lowlight": Degradation(low_light, {"factor": LOW_LIGHT_FACTOR}, random=False),
    "noise": Degradation(gaussian_noise, {"sigma": NOISE_SIGMA}, random=True),
}


def get_degradation(kind: str) -> Degradation:
    """The registered degradation ``kind``; ValueError listing the known kinds otherwise."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(sorted(DEGRADATIONS))}")
    return DEGRADATIONS[kind]


def degrade_image(image: np.ndarray, kind: str, seed: int = 0, relpath: str = "") -> np.ndarray:
    """Apply degradation ``kind`` with its registered parameters to one frame.

    ``relpath`` (the frame's path relative to the dataset's common folder) and ``seed`` choose
    the noise of random kinds.
    """
    degradation = get_degradation(kind)
    kwargs = dict(degradation.params)
    if degradation.random:
        kwargs["rng"] = frame_rng(seed, relpath)
    return degradation.function(image, **kwargs)


# ----------------------------------------------------------------------------- layout
def degraded_dataset_name(base_name: str, kind: str) -> str:
    """``<base_name>~<kind>``."""
    get_degradation(kind)
    return f"{base_name}{DEGRADED_NAME_SEPARATOR}{kind}"


def degraded_dir(root: str, base_name: str, kind: str) -> str:
    """Absolute folder of the degraded copy: ``<root>/<base_name>~<kind>``."""
    name = degraded_dataset_name(base_name, kind)
    if not base_name or "/" in name or os.sep in name:
        raise ValueError(f"dataset name {name!r} cannot be used as a folder name")
    return os.path.abspath(os.path.join(root, name))


@dataclass(frozen=True)
class _Frame:
    original: str  # as listed by the base dataset
    relpath: str  # relative to the common folder of the base frames: the noise key
    file_name: str  # degraded PNG, relative to the degraded folder ("/" separators)


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def _record_paths(record: dict) -> List[str]:
    if "file_names" in record:
        return list(record["file_names"])
    if "file_name" in record:
        return [record["file_name"]]
    raise ValueError(f"dataset dict without file_name or file_names (keys {sorted(record)})")


def _plan(dicts: Sequence[dict], base_name: str) -> Dict[str, _Frame]:
    """Degraded frame of every distinct frame of ``dicts``, keyed by normalized path, in order.

    Names follow tools/compress_dataset.py: the relative path with ``.png`` as extension, or
    with ``.png`` appended when two originals differ only by their extension.
    """
    if not dicts:
        raise ValueError(f"dataset {base_name!r} is empty: nothing to degrade")
    paths: Dict[str, str] = {}
    for record in dicts:
        for path in _record_paths(record):
            paths.setdefault(_key(path), path)
    root = common_root(paths.values())
    rels = {k: relative_original_path(p, root) for k, p in paths.items()}
    names = png_frame_names(rels)
    return {k: _Frame(paths[k], rels[k], f"{FRAMES_DIRNAME}/{names[k]}") for k in paths}


# ----------------------------------------------------------------------------- settings files
def _header(base_name: str, kind: str, seed: Optional[int]) -> Dict[str, Any]:
    """What a folder records; the seed only for random kinds (None: any seed matches)."""
    degradation = get_degradation(kind)
    return {"version": DEGRADATION_VERSION, "base_dataset": base_name, "kind": kind,
            "params": dict(degradation.params),
            "seed": int(seed) if degradation.random and seed is not None else None}


def _read_json(path: str) -> Optional[Any]:
    """Parsed JSON of ``path``, None if it does not exist; ValueError naming it if unreadable."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete the folder to recreate it") from e


def _check_header(found: Any, expected: Dict[str, Any], path: str) -> None:
    """Raise ValueError unless ``found`` describes the same degradation (seed: if expected)."""
    keys = [k for k in expected if k != "seed" or expected["seed"] is not None]
    if not isinstance(found, dict) or any(found.get(k) != expected[k] for k in keys):
        got = {k: found.get(k) for k in keys} if isinstance(found, dict) else found
        want = {k: expected[k] for k in keys}
        raise ValueError(
            f"{path} records the degradation {got}, not {want}: the folder holds frames made "
            "with other settings. Use another root, or delete the folder to recreate it."
        )


def degrade_command(base_name: str, kind: str, root: str) -> str:
    """The command that writes ``<base_name>~<kind>`` under ``root`` (for error messages)."""
    return ('python -c "import vcm_d2; from vcm_d2.data.degradation import degrade_dataset; '
            f'degrade_dataset({base_name!r}, {kind!r}, {root!r})" '
            f"(or tools/compress_dataset.py --dataset {base_name} --degradation {kind} "
            f"--degradation-root {root} ...)")


# ----------------------------------------------------------------------------- writing
def _degrade_one(frame: _Frame, folder: str, kind: str, seed: int) -> None:
    try:
        image = read_image(frame.original, format="RGB")
        out = degrade_image(image, kind, seed=seed, relpath=frame.relpath)
        atomic_write(os.path.join(folder, frame.file_name),
                     lambda f: Image.fromarray(out).save(f, format="PNG",
                                                         compress_level=PNG_COMPRESS_LEVEL))
    except Exception as e:
        raise RuntimeError(f"cannot degrade frame {frame.original!r}: {e}") from e


def _degrade_frames(frames: List[_Frame], folder: str, kind: str, seed: int, workers: int,
                    progress: bool, desc: str) -> None:
    from tqdm import tqdm

    with tqdm(total=len(frames), desc=desc, unit="frame", disable=not progress) as bar:
        if workers <= 1 or len(frames) <= 1:
            for frame in frames:
                _degrade_one(frame, folder, kind, seed)
                bar.update(1)
            return
        # Threads suffice: decoding, numpy and PNG encoding release the GIL.
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
            futures = [ex.submit(_degrade_one, f, folder, kind, seed) for f in frames]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def degrade_dataset(base_name: str, kind: str, root: str, seed: int = 0, progress: bool = True,
                    workers: int = 1) -> str:
    """Write the degraded copy of every frame of ``base_name`` under ``root``; register it.

    Works for image dicts (``file_name``) and video dicts (``file_names``). Resumable: frames
    already written (atomically, so complete) are skipped; a folder made with another kind,
    parameters or (for noise) seed is refused with ValueError. ``workers`` threads degrade
    frames in parallel. Returns the registered dataset name ``<base_name>~<kind>``.
    """
    get_degradation(kind)
    _check_seed(seed)
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if base_name not in DatasetCatalog.list():
        raise KeyError(f"base dataset {base_name!r} is not registered")
    name = degraded_dataset_name(base_name, kind)
    folder = degraded_dir(root, base_name, kind)
    registered_for(name, "degraded_dir", folder)

    header = _header(base_name, kind, seed)
    settings_path = os.path.join(folder, SETTINGS_FILENAME)
    found = _read_json(settings_path)
    if found is None:  # first run: claim the folder before writing any frame
        atomic_write_json(settings_path, header)
    else:
        _check_header(found, header, settings_path)

    frames = list(_plan(DatasetCatalog.get(base_name), base_name).values())
    done = dict(header, num_frames=len(frames),
                frames=[{"original_relpath": f.relpath, "file_name": f.file_name} for f in frames])
    done_path = os.path.join(folder, DONE_FILENAME)
    pending = [f for f in frames if not os.path.isfile(os.path.join(folder, f.file_name))]
    logger.info("%s: %d frames, %d to degrade (%s, seed %s) in %s",
                name, len(frames), len(pending), done["params"], done["seed"], folder)
    try:
        complete = not pending and _read_json(done_path) == done
    except ValueError:  # an unreadable marker is simply rewritten
        complete = False
    if not complete:
        try:  # stale until every frame of this list exists again
            os.remove(done_path)
        except FileNotFoundError:  # none yet, or a concurrent run (same frames) removed it
            pass
        _degrade_frames(pending, folder, kind, seed, int(workers), progress, desc=name)
        atomic_write_json(done_path, done)
    register_degraded_dataset(base_name, kind, root)
    return name


# ----------------------------------------------------------------------------- registration
def load_degraded_dicts(base_name: str, kind: str, root: str) -> List[dict]:
    """Base dicts with ``file_name`` / ``file_names`` pointing at the degraded copies.

    Everything else (annotations, sem_seg_file_name, ids) is the base's. A missing degraded
    frame raises FileNotFoundError naming it and the command that creates it.
    """
    folder = degraded_dir(root, base_name, kind)
    base = DatasetCatalog.get(base_name)
    plan = _plan(base, base_name)
    missing = [f.file_name for f in plan.values()
               if not os.path.isfile(os.path.join(folder, f.file_name))]
    if missing:
        more = len(missing) - MAX_NAMES_IN_ERROR
        raise FileNotFoundError(
            f"{len(missing)} degraded frame(s) of {degraded_dataset_name(base_name, kind)!r} are "
            f"missing in {folder}: {', '.join(missing[:MAX_NAMES_IN_ERROR])}"
            + (f" and {more} more" if more > 0 else "")
            + f". Create them with {degrade_command(base_name, kind, root)}"
        )

    def degraded(path: str) -> str:
        return os.path.join(folder, plan[_key(path)].file_name)

    out = []
    for record in base:
        new = dict(record)
        if "file_names" in record:
            new["file_names"] = [degraded(p) for p in record["file_names"]]
        else:
            new["file_name"] = degraded(record["file_name"])
        out.append(new)
    return out


def register_degraded_dataset(base_name: str, kind: str, root: str) -> str:
    """Register ``<base_name>~<kind>`` reading the degraded frames under ``root``.

    Metadata: the base's, plus ``degradation`` ({kind, params, seed}; seed None for
    deterministic kinds or if the folder does not exist yet), ``base_dataset`` and
    ``degraded_dir``. The same name for the same folder again is a no-op; for another folder it
    raises ValueError. Returns the name.
    """
    name = degraded_dataset_name(base_name, kind)
    folder = degraded_dir(root, base_name, kind)
    if base_name not in DatasetCatalog.list():
        raise KeyError(f"base dataset {base_name!r} of {name!r} is not registered")
    if registered_for(name, "degraded_dir", folder):
        return name
    expected = _header(base_name, kind, None)  # any seed: the folder says which
    settings_path = os.path.join(folder, SETTINGS_FILENAME)
    settings = _read_json(settings_path)
    if settings is not None:
        _check_header(settings, expected, settings_path)

    values = {k: v for k, v in MetadataCatalog.get(base_name).as_dict().items() if k != "name"}
    values.update(
        degradation={"kind": kind, "params": expected["params"],
                     "seed": None if settings is None else settings.get("seed")},
        base_dataset=base_name,
        degraded_dir=folder,
    )
    DatasetCatalog.register(name, lambda: load_degraded_dicts(base_name, kind, root))
    MetadataCatalog.get(name).set(**values)
    return name


def register_degraded_datasets_from_dir(root: str, strict: bool = True) -> List[str]:
    """Register every finished ``<root>/<base>~<kind>/`` (with ``DONE.json``) of a registered base.

    Folders are visited in name order, so ``a~lowlight`` comes before ``a~lowlight~noise``.
    A folder whose ``DONE.json`` does not match its name or the registered parameters raises
    ValueError, or with ``strict=False`` is skipped with a warning (see
    :func:`~vcm_d2.data.pairs.register_folder_entries`). Returns the names.
    """
    def register(entry: str) -> List[str]:
        base, sep, kind = entry.rpartition(DEGRADED_NAME_SEPARATOR)
        done_path = os.path.join(root, entry, DONE_FILENAME)
        if not sep or not os.path.isfile(done_path) or base not in DatasetCatalog.list():
            return []
        expected = _header(base, kind, None)  # ValueError for an unknown kind
        _check_header(_read_json(done_path), expected, done_path)
        return [register_degraded_dataset(base, kind, root)]

    return register_folder_entries(root, register, strict)


def register_derived_datasets(root: str, degraded_root: Optional[str] = None,
                              strict: bool = True) -> List[str]:
    """Register every derived dataset stored in a folder: the finished degraded copies in
    ``degraded_root`` (default: ``root`` itself), then the pairs
    ``<root>/<dataset>/<codec>/q<quality>/manifest.json`` of every registered dataset.

    The degraded copies come first because a pair may be one of them compressed
    (``<base>~<kind>@<codec>_q<quality>``). ``strict`` as for
    :func:`register_degraded_datasets_from_dir`. Returns the names, degraded copies first.
    """
    degraded_root = root if degraded_root is None else degraded_root
    names = register_degraded_datasets_from_dir(degraded_root, strict)
    return names + register_pair_datasets_from_root(root, strict)
