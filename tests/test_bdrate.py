import math
import warnings

import bjontegaard
import numpy as np
import pytest
import scipy.interpolate

from vcm_d2.evaluation.bdrate import METHODS, BDResult, bd_metric, bd_rate, monotone_envelope

# A classic JCTVC-style example (four QPs, rate in kbps, PSNR in dB), listed high rate first.
RATE_A = [9487.76, 4593.60, 2258.26, 1149.03]
PSNR_A = [40.037, 38.615, 37.177, 35.742]
RATE_T = [9787.80, 4469.00, 2181.00, 1112.48]
PSNR_T = [40.121, 38.567, 37.196, 35.698]


@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method):
    res = bd_rate(RATE_A, PSNR_A, RATE_A, PSNR_A, method)
    assert isinstance(res, BDResult)
    assert res.value == pytest.approx(0.0, abs=1e-9)
    assert res.overlap == pytest.approx(1.0)
    assert bd_metric(RATE_A, PSNR_A, RATE_A, PSNR_A, method).value == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale, expected", [(0.5, -50.0), (2.0, 100.0)])
def test_scaled_rates_give_exact_bd_rate(method, scale, expected):
    # Scaling every rate shifts log10(rate) by log10(scale) at every metric value, so the
    # average log-rate difference is exactly log10(scale): BD-rate = (scale - 1) * 100.
    res = bd_rate(RATE_A, PSNR_A, [r * scale for r in RATE_A], PSNR_A, method)
    assert res.value == pytest.approx(expected, abs=1e-9)
    assert res.warnings == []


def _line_curve(metrics, slope):
    # log10(rate) = slope * (metric - 30): a straight line in the (metric, log-rate) plane,
    # which cubic, pchip and akima all reproduce exactly.
    return [10 ** (slope * (m - 30)) for m in metrics], list(metrics)


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_linear_curves(method):
    ra, ma = _line_curve([30, 32.5, 35, 37.5, 40], 0.1)
    rt, mt = _line_curve([30, 32.5, 35, 37.5, 40], 0.05)
    # BD-rate: integrate log10 Rt - log10 Ra = -0.05 (m - 30) over m in [30, 40]:
    #   int = -0.05 * (10^2 / 2) = -2.5, average = -2.5 / 10 = -0.25,
    #   BD-rate = 10^-0.25 - 1 = -43.7658 %.
    res = bd_rate(ra, ma, rt, mt, method)
    assert res.value == pytest.approx((10 ** -0.25 - 1) * 100, abs=1e-6)
    assert res.value == pytest.approx(-43.7658, abs=1e-4)
    # BD-metric: with L = log10(rate), anchor m = 30 + 10 L (L in [0, 1]) and test
    # m = 30 + 20 L (L in [0, 0.5]); overlap L in [0, 0.5] = half of the union [0, 1].
    #   int_0^0.5 (20 L - 10 L) dL = 10 * 0.5^2 / 2 = 1.25, average = 1.25 / 0.5 = +2.5.
    resm = bd_metric(ra, ma, rt, mt, method)
    assert resm.value == pytest.approx(2.5, abs=1e-6)
    assert resm.overlap == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_partial_overlap_integrates_common_range_and_warns(method):
    ra, ma = _line_curve([30, 32.5, 35, 37.5, 40], 0.1)
    rt, mt = _line_curve([34, 36.5, 39, 41.5, 44], 0.05)
    # Common metric range [34, 40] of union [30, 44]: overlap 6/14.
    # average of -0.05 (m - 30) over [34, 40] = -0.05 * 7 = -0.35 -> 10^-0.35 - 1.
    res = bd_rate(ra, ma, rt, mt, method)
    assert res.overlap == pytest.approx(6 / 14)
    assert res.value == pytest.approx((10 ** -0.35 - 1) * 100, abs=1e-6)
    assert any("overlap" in w for w in res.warnings)
    # The threshold is an argument: no warning when it is lowered.
    assert bd_rate(ra, ma, rt, mt, method, min_overlap=0.4).warnings == []


@pytest.mark.parametrize("method", METHODS)
def test_matches_bjontegaard_package(method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_rate = bjontegaard.bd_rate(RATE_A, PSNR_A, RATE_T, PSNR_T, method)
        ref_psnr = bjontegaard.bd_psnr(RATE_A, PSNR_A, RATE_T, PSNR_T, method)
    assert bd_rate(RATE_A, PSNR_A, RATE_T, PSNR_T, method).value == pytest.approx(ref_rate,
                                                                                   rel=1e-12)
    assert bd_metric(RATE_A, PSNR_A, RATE_T, PSNR_T, method).value == pytest.approx(ref_psnr,
                                                                                     rel=1e-12)
    # The two codecs are close: |BD-rate| of a few percent, |BD-PSNR| below 0.1 dB.
    assert -5 < ref_rate < 0 and 0 < ref_psnr < 0.1


def test_pchip_matches_independent_computation():
    # Re-derive the pchip BD-rate with scipy directly: x = PSNR (ascending), y = log10 rate.
    def interp(rate, psnr):
        order = np.argsort(psnr)
        return scipy.interpolate.PchipInterpolator(np.asarray(psnr)[order],
                                                   np.log10(np.asarray(rate))[order])
    lo, hi = max(min(PSNR_A), min(PSNR_T)), min(max(PSNR_A), max(PSNR_T))
    avg = (interp(RATE_T, PSNR_T).integrate(lo, hi)
           - interp(RATE_A, PSNR_A).integrate(lo, hi)) / (hi - lo)
    expected = (10 ** avg - 1) * 100
    assert bd_rate(RATE_A, PSNR_A, RATE_T, PSNR_T, "pchip").value == pytest.approx(expected)


def test_point_order_does_not_matter():
    perm = [2, 0, 3, 1]
    shuffled = bd_rate([RATE_A[i] for i in perm], [PSNR_A[i] for i in perm], RATE_T, PSNR_T)
    assert shuffled.value == pytest.approx(bd_rate(RATE_A, PSNR_A, RATE_T, PSNR_T).value)


def test_monotone_envelope():
    kept, dropped = monotone_envelope([0.4, 0.1, 0.2, 0.8, 0.8, 1.6], [24, 20, 25, 30, 31, 31])
    assert kept == [(0.1, 20), (0.2, 25), (0.8, 31)]
    # (0.4, 24): below 25 at lower rate; (0.8, 30): same rate as a better point;
    # (1.6, 31): a plateau adds bits for no gain.
    assert sorted(dropped) == [(0.4, 24), (0.8, 30), (1.6, 31)]


NM_RATES = [0.1, 0.2, 0.4, 0.8, 1.6]
NM_AP = [20.0, 25.0, 24.0, 30.0, 33.0]  # the 0.4 bpp point is worse than the 0.2 bpp one
TEST_RATES = [0.1, 0.2, 0.4, 0.8]
TEST_AP = [21.0, 26.0, 28.0, 31.0]


def test_bjontegaard_pchip_rejects_non_monotonic():
    # Why the policy exists: the package fails on such a curve.
    with pytest.raises(ValueError):
        bjontegaard.bd_rate(NM_RATES, NM_AP, TEST_RATES, TEST_AP, "pchip",
                            require_matching_points=False)


@pytest.mark.parametrize("method", ["pchip", "akima"])
def test_non_monotonic_drop(method):
    res = bd_rate(NM_RATES, NM_AP, TEST_RATES, TEST_AP, method)
    assert res.dropped_points == {"anchor": [(0.4, 24.0)], "test": []}
    assert any("non-monotonic" in w for w in res.warnings)
    clean = bd_rate([0.1, 0.2, 0.8, 1.6], [20, 25, 30, 33], TEST_RATES, TEST_AP, method)
    assert res.value == pytest.approx(clean.value)
    assert clean.warnings == []
    # bd_metric uses the same points.
    assert bd_metric(NM_RATES, NM_AP, TEST_RATES, TEST_AP, method).dropped_points == \
        res.dropped_points


def test_non_monotonic_raise_and_keep():
    with pytest.raises(ValueError, match="not strictly increasing"):
        bd_rate(NM_RATES, NM_AP, TEST_RATES, TEST_AP, on_non_monotonic="raise")
    with pytest.raises(ValueError, match="only with method 'cubic'"):
        bd_rate(NM_RATES, NM_AP, TEST_RATES, TEST_AP, "pchip", on_non_monotonic="keep")
    keep = bd_rate(NM_RATES, NM_AP, TEST_RATES, TEST_AP, "cubic", on_non_monotonic="keep")
    assert keep.dropped_points == {"anchor": [], "test": []}
    assert any("not monotonic" in w for w in keep.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = bjontegaard.bd_rate(NM_RATES, NM_AP, TEST_RATES, TEST_AP, "cubic",
                                  require_matching_points=False, min_overlap=0)
    assert keep.value == pytest.approx(ref)


def test_no_overlap_raises():
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate([1, 2, 4, 8], [30, 32, 34, 36], [1, 2, 4, 8], [40, 42, 44, 46])
    with pytest.raises(ValueError, match="do not overlap"):
        bd_metric([1, 2, 4, 8], [30, 32, 34, 36], [16, 32, 64, 128], [30, 32, 34, 36])


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate([1, 2, 4], [30, 32, 34], [1, 2, 4], [31, 33, 35], "cubic")
    assert math.isfinite(bd_rate([1, 2], [30, 32], [1, 2], [31, 33], "pchip").value)
    with pytest.raises(ValueError, match="at least 2 points.*after dropping"):
        bd_rate([1, 2, 4], [30, 30, 30], [1, 2], [31, 33])
    with pytest.raises(ValueError, match="> 0"):
        bd_rate([0, 2, 4, 8], [30, 32, 34, 36], [1, 2, 4, 8], [31, 33, 35, 37])
    with pytest.raises(ValueError, match="finite"):
        bd_rate([1, 2, 4, 8], [30, float("nan"), 34, 36], [1, 2, 4, 8], [31, 33, 35, 37])
    with pytest.raises(ValueError, match="3 rates but 4"):
        bd_rate([1, 2, 4], [30, 32, 34, 36], [1, 2, 4, 8], [31, 33, 35, 37])
    with pytest.raises(ValueError, match="unknown BD interpolation method"):
        bd_rate(RATE_A, PSNR_A, RATE_T, PSNR_T, "linear")
    with pytest.raises(ValueError, match="on_non_monotonic"):
        bd_rate(RATE_A, PSNR_A, RATE_T, PSNR_T, on_non_monotonic="ignore")
