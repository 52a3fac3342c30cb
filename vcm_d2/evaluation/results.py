"""Rate-task result files and the BD-rate report built from them.

A result file is one rate-task curve in JSON::

    {"name": "x264/direct", "task": "detection", "metric": "AP", "codec": "x264",
     "method": "direct",
     "points": [{"quality": 51, "bpp": 0.05, "metric": 30.1, "side_bpp": 0.0}, ...],
     "meta": {...free-form...}}

``bpp`` is the total rate per pixel and already includes ``side_bpp`` (side information such
as a model's side bitstream); ``side_bpp`` is informative only. ``quality`` is the codec
setting (QP, CRF, lambda index, ...). ``meta`` is never interpreted.

``vcm_d2.evaluation.report.write_report`` turns many curves into a report.
"""
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Union

from ..utils.io import atomic_write_bytes

__all__ = ["RateTaskCurve", "save_curve", "load_curve", "load_curves"]

REQUIRED_FIELDS = ("name", "task", "metric", "codec", "method", "points")
POINT_FIELDS = ("quality", "bpp", "metric")

PathLike = Union[str, os.PathLike]


@dataclass
class RateTaskCurve:
    """One rate-task curve: a codec/method evaluated at several quality settings.

    ``points`` are dicts with ``quality``, ``bpp`` (> 0, includes side bits), ``metric`` and
    optional ``side_bpp`` (default 0.0); they are validated on construction.
    """

    name: str
    task: str
    metric: str
    codec: str
    method: str
    points: List[Dict[str, Any]]
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for key in ("name", "task", "metric", "codec", "method"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"curve field '{key}' must be a non-empty string, got {value!r}")
        if not isinstance(self.points, list) or not self.points:
            raise ValueError(f"curve '{self.name}': 'points' must be a non-empty list")
        if not isinstance(self.meta, dict):
            raise ValueError(f"curve '{self.name}': 'meta' must be a dict, got {type(self.meta)}")
        self.points = [self._check_point(i, p) for i, p in enumerate(self.points)]

    def _check_point(self, index: int, point: Any) -> Dict[str, Any]:
        where = f"curve '{self.name}' point {index}"
        if not isinstance(point, dict):
            raise ValueError(f"{where}: expected a dict, got {point!r}")
        missing = [k for k in POINT_FIELDS if k not in point]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        point = dict(point)
        point.setdefault("side_bpp", 0.0)
        for key in ("bpp", "metric", "side_bpp"):
            value = point[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{where}: '{key}' must be a finite number, got {value!r}")
            point[key] = float(value)
        if point["bpp"] <= 0:
            raise ValueError(f"{where}: 'bpp' must be > 0, got {point['bpp']}")
        if point["side_bpp"] < 0 or point["side_bpp"] > point["bpp"]:
            raise ValueError(f"{where}: 'side_bpp' {point['side_bpp']} must be in [0, bpp] "
                             "(bpp includes side bits)")
        return point

    def _sorted(self) -> List[Dict[str, Any]]:
        return sorted(self.points, key=lambda p: p["bpp"])

    def rates(self) -> List[float]:
        """bpp of the points, sorted by bpp."""
        return [p["bpp"] for p in self._sorted()]

    def metrics(self) -> List[float]:
        """Metric values, in the order of ``rates()``."""
        return [p["metric"] for p in self._sorted()]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RateTaskCurve":
        if not isinstance(data, Mapping):
            raise ValueError(f"a result must be a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise ValueError(f"result is missing field(s) {missing}")
        return cls(**{k: data[k] for k in REQUIRED_FIELDS}, meta=data.get("meta", {}))


def save_curve(curve: RateTaskCurve, path: PathLike) -> Path:
    """Write ``curve`` as a result file (atomically); returns the path."""
    path = Path(path)
    text = json.dumps(curve.to_dict(), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def load_curve(path: PathLike) -> RateTaskCurve:
    """Read one result file; ``ValueError`` naming the file if it is not a valid result."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    try:
        return RateTaskCurve.from_dict(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: invalid result file: {e}") from e


def _looks_like_result(data: Any) -> bool:
    # A JSON file without "points" is some other file (config, metrics dump), not a result.
    return isinstance(data, dict) and "points" in data


def load_curves(paths_or_dirs: Iterable[PathLike]) -> List[RateTaskCurve]:
    """Load result files; directories contribute their ``*.json`` files (not recursive).

    JSON files that are not result files (no ``points`` field) are skipped with a warning;
    files that look like results but are malformed raise ``ValueError``.
    """
    if isinstance(paths_or_dirs, (str, os.PathLike)):
        paths_or_dirs = [paths_or_dirs]
    files: List[Path] = []
    for item in paths_or_dirs:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(item.glob("*.json")))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"result path does not exist: {item}")
    curves, seen = [], set()
    for path in files:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not _looks_like_result(data):
            warnings.warn(f"skipping {path}: not a rate-task result file (no 'points')")
            continue
        try:
            curves.append(RateTaskCurve.from_dict(data))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: invalid result file: {e}") from e
    return curves
