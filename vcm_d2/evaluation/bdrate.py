"""Bjøntegaard-delta (BD-rate / BD-metric) on top of the ``bjontegaard`` package.

``bd_rate`` is the average rate difference (percent) at equal task metric; ``bd_metric``
(BD-AP, BD-mIoU, BD-PSNR) the average metric difference at equal rate. Both follow the
``bjontegaard`` package: rates are taken in log10, curves are interpolated with ``cubic``
(a least-squares cubic polynomial, as in VCEG-M33), ``pchip`` or ``akima`` and integrated over
the overlap of the two curves' ranges (metric range for BD-rate, log-rate range for BD-metric).

Non-monotonic curves. Task metrics such as AP often do not grow strictly with the rate (a
higher-rate point can score a little lower, or the metric saturates). ``bjontegaard``'s
``pchip``/``akima`` then fail because the metric axis must be strictly increasing. Policy
``on_non_monotonic``:

* ``"drop"`` (default): sort the points by rate and keep the monotone envelope, i.e. a point
  is kept only if its metric is strictly above the metric of every lower-rate point (a
  dominated point — more bits for no better metric — is never the operating point one would
  choose). Dropped points are listed in ``BDResult.dropped_points`` and in a warning. The
  same points are used by ``bd_rate`` and ``bd_metric`` so both numbers describe one curve.
* ``"raise"``: ``ValueError`` naming the offending points.
* ``"keep"``: only for ``cubic`` (a polynomial fit does not need monotone data); the points
  are used as given and a warning is recorded.

Overlap. ``BDResult.overlap`` is the length of the intersection of the two ranges divided by
the length of their union. No overlap -> ``ValueError``; overlap below ``min_overlap``
(default ``MIN_OVERLAP``) -> a warning, because the average is then taken over a small part of
the curves.

Sign convention: a negative BD-rate means the test curve needs fewer bits for the same
metric; a positive BD-metric means the test curve reaches a higher metric at the same rate.
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import bjontegaard
import numpy as np

__all__ = ["METHODS", "MIN_POINTS", "MIN_OVERLAP", "NON_MONOTONIC_POLICIES", "BDResult",
           "bd_rate", "bd_metric", "monotone_envelope"]

METHODS = ("cubic", "pchip", "akima")
# Points each interpolation needs: a cubic fit is under-determined below 4 points
# (bjontegaard only warns then); pchip and akima (linear for 2 points) accept 2.
MIN_POINTS = {"cubic": 4, "pchip": 2, "akima": 2}
# Below this overlap fraction the BD value is an average over a small part of the curves.
MIN_OVERLAP = 0.5
NON_MONOTONIC_POLICIES = ("drop", "raise", "keep")

Point = Tuple[float, float]


@dataclass
class BDResult:
    """A BD value with the information needed to judge it.

    Attributes:
        value: BD-rate in percent (``bd_rate``) or metric difference (``bd_metric``).
        method: interpolation method.
        overlap: fraction (0..1] of the union of the two ranges that both curves cover
            (metric range for BD-rate, log10-rate range for BD-metric).
        warnings: human-readable warnings, including those emitted by ``bjontegaard``.
        dropped_points: ``{"anchor": [(rate, metric), ...], "test": [...]}`` removed by the
            non-monotonic policy.
    """

    value: float
    method: str
    overlap: float
    warnings: List[str] = field(default_factory=list)
    dropped_points: Dict[str, List[Point]] = field(
        default_factory=lambda: {"anchor": [], "test": []})


def monotone_envelope(rates: Sequence[float], metrics: Sequence[float]
                      ) -> Tuple[List[Point], List[Point]]:
    """Split points into (kept, dropped): kept = sorted by rate, metric strictly increasing.

    Points with equal rate are visited best metric first, so only the best one is kept.
    """
    order = sorted(range(len(rates)), key=lambda i: (rates[i], -metrics[i]))
    kept, dropped = [], []
    best = -math.inf
    for i in order:
        point = (float(rates[i]), float(metrics[i]))
        if metrics[i] > best:
            kept.append(point)
            best = metrics[i]
        else:
            dropped.append(point)
    return kept, dropped


def _as_points(rates, metrics, label: str) -> Tuple[np.ndarray, np.ndarray]:
    rates = np.asarray(rates, dtype=float)
    metrics = np.asarray(metrics, dtype=float)
    if rates.ndim != 1 or metrics.ndim != 1:
        raise ValueError(f"{label}: rates and metrics must be 1-D sequences")
    if len(rates) != len(metrics):
        raise ValueError(f"{label}: {len(rates)} rates but {len(metrics)} metric values")
    if not (np.all(np.isfinite(rates)) and np.all(np.isfinite(metrics))):
        raise ValueError(f"{label}: rates and metrics must be finite, got rates={rates.tolist()} "
                         f"metrics={metrics.tolist()}")
    if np.any(rates <= 0):
        raise ValueError(f"{label}: rates must be > 0 (BD uses log-rate), got {rates.tolist()}")
    return rates, metrics


def _prepare(rates, metrics, label: str, method: str, policy: str, notes: List[str]
             ) -> Tuple[np.ndarray, np.ndarray, List[Point]]:
    """Validate one curve and apply the non-monotonic policy; returns rate-sorted points."""
    rates, metrics = _as_points(rates, metrics, label)
    kept, dropped = monotone_envelope(rates.tolist(), metrics.tolist())
    if dropped:
        if policy == "raise":
            raise ValueError(
                f"{label}: metric is not strictly increasing with rate; non-monotonic points "
                f"(rate, metric) {dropped}. Use on_non_monotonic='drop' to discard them.")
        if policy == "drop":
            notes.append(f"{label}: dropped {len(dropped)} non-monotonic point(s) "
                         f"(rate, metric) {[(round(r, 6), round(m, 6)) for r, m in dropped]}")
        else:  # keep: cubic only (checked by the caller)
            notes.append(f"{label}: metric is not monotonic in rate; cubic fit uses all points")
            kept = sorted(zip(rates.tolist(), metrics.tolist()))
            dropped = []
    need = MIN_POINTS[method]
    if len(kept) < need:
        extra = f" after dropping {len(dropped)} non-monotonic point(s)" if dropped else ""
        raise ValueError(f"{label}: method '{method}' needs at least {need} points, "
                         f"got {len(kept)}{extra}")
    kept_arr = np.asarray(kept, dtype=float)
    return kept_arr[:, 0], kept_arr[:, 1], dropped


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    inter = min(a.max(), b.max()) - max(a.min(), b.min())
    if union <= 0:
        return 0.0
    return max(inter, 0.0) / union


def _bd(kind: str, rate_anchor, metric_anchor, rate_test, metric_test, method: str,
        on_non_monotonic: str, min_overlap: float) -> BDResult:
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation method '{method}', expected one of {METHODS}")
    if on_non_monotonic not in NON_MONOTONIC_POLICIES:
        raise ValueError(f"unknown on_non_monotonic '{on_non_monotonic}', "
                         f"expected one of {NON_MONOTONIC_POLICIES}")
    if on_non_monotonic == "keep" and method != "cubic":
        raise ValueError(f"on_non_monotonic='keep' works only with method 'cubic': '{method}' "
                         "needs a strictly increasing metric; use 'drop' or 'raise'")
    notes: List[str] = []
    ra, ma, dropped_a = _prepare(rate_anchor, metric_anchor, "anchor", method,
                                 on_non_monotonic, notes)
    rt, mt, dropped_t = _prepare(rate_test, metric_test, "test", method, on_non_monotonic, notes)

    # BD-rate integrates along the metric axis, BD-metric along the log-rate axis.
    axis_a, axis_t = (ma, mt) if kind == "rate" else (np.log10(ra), np.log10(rt))
    axis_name = "metric" if kind == "rate" else "log10-rate"
    # Order along the integration axis: bjontegaard only flips reversed data, and 'keep'
    # (cubic) curves may be unordered in the other variable. A no-op for monotone curves.
    order_a, order_t = np.argsort(axis_a, kind="stable"), np.argsort(axis_t, kind="stable")
    ra, ma, axis_a = ra[order_a], ma[order_a], axis_a[order_a]
    rt, mt, axis_t = rt[order_t], mt[order_t], axis_t[order_t]
    overlap = _overlap(axis_a, axis_t)
    if overlap <= 0:
        raise ValueError(
            f"anchor and test curves do not overlap along the {axis_name} axis "
            f"(anchor [{axis_a.min():.6g}, {axis_a.max():.6g}], test [{axis_t.min():.6g}, "
            f"{axis_t.max():.6g}]): a BD value averages over the common range, which is empty")
    if overlap < min_overlap:
        notes.append(f"small {axis_name} overlap {overlap:.0%} (< {min_overlap:.0%}): "
                     "the BD value covers only part of the curves")

    fn = bjontegaard.bd_rate if kind == "rate" else bjontegaard.bd_psnr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Our own overlap check replaces bjontegaard's (min_overlap=0 silences its duplicate).
        value = float(fn(ra, ma, rt, mt, method, require_matching_points=False, min_overlap=0.0))
    notes.extend(f"bjontegaard: {w.message}" for w in caught)
    if not math.isfinite(value):
        raise RuntimeError(f"BD-{kind} with method '{method}' is not finite ({value}); "
                           f"warnings: {notes}")
    return BDResult(value=value, method=method, overlap=float(overlap), warnings=notes,
                    dropped_points={"anchor": dropped_a, "test": dropped_t})


def bd_rate(rate_anchor: Sequence[float], metric_anchor: Sequence[float],
            rate_test: Sequence[float], metric_test: Sequence[float], method: str = "pchip", *,
            on_non_monotonic: str = "drop", min_overlap: float = MIN_OVERLAP) -> BDResult:
    """BD-rate of test vs anchor in percent (negative = test needs fewer bits).

    Points may be given in any order; rates must be > 0 and finite. See the module docstring
    for the non-monotonic policy and the overlap rule.
    """
    return _bd("rate", rate_anchor, metric_anchor, rate_test, metric_test, method,
               on_non_monotonic, min_overlap)


def bd_metric(rate_anchor: Sequence[float], metric_anchor: Sequence[float],
              rate_test: Sequence[float], metric_test: Sequence[float], method: str = "pchip", *,
              on_non_monotonic: str = "drop", min_overlap: float = MIN_OVERLAP) -> BDResult:
    """BD-metric (BD-AP, BD-PSNR, ...): average metric difference of test minus anchor at
    equal rate, in the metric's own unit (positive = test is better)."""
    return _bd("metric", rate_anchor, metric_anchor, rate_test, metric_test, method,
               on_non_monotonic, min_overlap)
