"""The statistics of `veil analyze`, against hand-computed values and scipy/statsmodels."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from veil.analysis.stats import (
    BootstrapCI,
    correlation,
    mcnemar,
    mean_sem,
    paired_bootstrap,
    per_class_ap,
    verdict,
)

# -- mean +- SEM ------------------------------------------------------------------------------


def test_mean_sem_by_hand_and_scipy() -> None:
    # 75, 80: std (ddof=1) = 3.5355..., / sqrt(2) = 2.5
    assert mean_sem([75.0, 80.0]) == pytest.approx((77.5, 2.5))
    values = [69.1, 69.9, 70.3]
    for ddof in (1, 2):
        mean, sem = mean_sem(values, ddof=ddof)
        assert mean == pytest.approx(np.mean(values))
        assert sem == pytest.approx(sps.sem(values, ddof=ddof))


def test_mean_sem_of_one_seed_has_no_sem() -> None:
    mean, sem = mean_sem([70.0])
    assert mean == 70.0
    assert math.isnan(sem)
    assert all(math.isnan(v) for v in mean_sem([]))


# -- paired bootstrap -------------------------------------------------------------------------


def test_bootstrap_is_seedable_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(500) < 0.7, rng.random(500) < 0.65
    first = paired_bootstrap(a, b, resamples=500, seed=3)[0]
    again = paired_bootstrap(a, b, resamples=500, seed=3)[0]
    other = paired_bootstrap(a, b, resamples=500, seed=4)[0]
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.estimate == pytest.approx(a.mean() - b.mean())
    assert first.low < first.estimate < first.high


def test_bootstrap_resamples_the_same_images_for_both_conditions() -> None:
    # second = first - 0.25 on every image: any resample of *paired* indices gives a
    # difference of exactly 0.25; resampling the conditions independently would not.
    rng = np.random.default_rng(0)
    first = rng.random(300)
    ci = paired_bootstrap(first, first - 0.25, resamples=300, seed=0)[0]
    assert (ci.low, ci.estimate, ci.high) == pytest.approx((0.25, 0.25, 0.25))


def test_bootstrap_matches_the_normal_approximation_on_many_images() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    a = (rng.random(n) < 0.76).astype(float)
    b = (rng.random(n) < 0.75).astype(float)
    d = a - b
    half = 1.959964 * d.std(ddof=1) / math.sqrt(n)
    ci = paired_bootstrap(a, b, resamples=2000, seed=0)[0]
    assert ci.low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_bootstrap_agrees_with_scipy_percentile_bootstrap() -> None:
    rng = np.random.default_rng(11)
    a = (rng.random(2000) < 0.7).astype(float)
    b = (rng.random(2000) < 0.6).astype(float)
    ours = paired_bootstrap(a, b, resamples=4000, seed=0)[0]
    ref = sps.bootstrap((a, b), lambda x, y, axis=-1: (x - y).mean(axis=axis), paired=True,
                        vectorized=True, n_resamples=4000, method="percentile",
                        random_state=np.random.default_rng(0)).confidence_interval
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.05 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.05 * width)


def test_bootstrap_several_metrics_share_indices_and_shape_errors() -> None:
    a = np.array([[1, 1, 0, 1], [1, 1, 1, 1]], dtype=float)
    cis = paired_bootstrap(a, a, resamples=200, seed=0)
    assert len(cis) == 2
    assert all((c.low, c.high) == (0.0, 0.0) for c in cis)
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(np.ones(3), np.ones(4))


def test_verdict_reads_a_ci_containing_zero_as_noise() -> None:
    assert verdict(BootstrapCI(0.5, -0.1, 1.0, 0.95, 100)) == "within noise"
    assert verdict(BootstrapCI(0.6, 0.2, 1.0, 0.95, 100)) == "drop"
    assert verdict(BootstrapCI(-0.6, -1.0, -0.2, 0.95, 100)) == "gain"
    assert verdict(BootstrapCI(0.0, 0.0, 0.0, 0.95, 100)) == "within noise"


# -- McNemar ----------------------------------------------------------------------------------


def _pairs(b: int, c: int, both: int = 5, neither: int = 5) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([1] * b + [0] * c + [1] * both + [0] * neither, dtype=bool)
    second = np.array([0] * b + [1] * c + [1] * both + [0] * neither, dtype=bool)
    return first, second


def test_mcnemar_exact_by_hand() -> None:
    # b=3, c=0: two-sided binomial p = 2 * 0.5**3 = 0.25
    result = mcnemar(*_pairs(3, 0))
    assert (result.b, result.c, result.method) == (3, 0, "exact-binomial")
    assert result.pvalue == pytest.approx(0.25)


def _statsmodels_mcnemar() -> Callable[..., Any]:
    """statsmodels' McNemar, the cross-check (a test dependency, not veil's)."""
    from statsmodels.stats.contingency_tables import mcnemar

    return mcnemar


@pytest.mark.parametrize(("b", "c"), [(1, 0), (7, 2), (10, 10), (12, 3)])
def test_mcnemar_exact_is_the_two_sided_binomial(b: int, c: int) -> None:
    result = mcnemar(*_pairs(b, c))
    assert result.method == "exact-binomial"
    # two-sided at 1/2: twice the smaller tail, at most 1
    expected = min(1.0, 2 * sps.binom.cdf(min(b, c), b + c, 0.5))
    assert result.pvalue == pytest.approx(expected)


@pytest.mark.parametrize(("b", "c"), [(1, 0), (7, 2), (10, 10), (12, 3)])
def test_mcnemar_exact_matches_statsmodels(b: int, c: int) -> None:
    reference = _statsmodels_mcnemar()([[5, b], [c, 5]], exact=True)
    assert mcnemar(*_pairs(b, c)).pvalue == pytest.approx(reference.pvalue)


def test_mcnemar_chi_square_with_continuity_correction() -> None:
    # b=30, c=10: (|30-10| - 1)^2 / 40 = 9.025; p = chi2.sf(9.025, 1)
    result = mcnemar(*_pairs(30, 10))
    assert result.method == "chi2-continuity"
    assert result.statistic == pytest.approx(9.025)
    assert result.pvalue == pytest.approx(sps.chi2.sf(9.025, 1))


def test_mcnemar_chi_square_matches_statsmodels() -> None:
    reference = _statsmodels_mcnemar()([[5, 30], [10, 5]], exact=False, correction=True)
    result = mcnemar(*_pairs(30, 10))
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.pvalue == pytest.approx(reference.pvalue)


def test_mcnemar_without_discordant_pairs_is_p_one() -> None:
    assert mcnemar(*_pairs(0, 0)).pvalue == 1.0


# -- correlations -----------------------------------------------------------------------------


def test_correlation_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    x = rng.random(40)
    y = 2 * x + rng.normal(0, 0.3, 40)
    result = correlation(x, y)
    assert result.n == 40
    assert result.spearman == pytest.approx(sps.spearmanr(x, y).statistic)
    assert result.spearman_p == pytest.approx(sps.spearmanr(x, y).pvalue)
    assert result.pearson == pytest.approx(sps.pearsonr(x, y).statistic)
    assert result.pearson_p == pytest.approx(sps.pearsonr(x, y).pvalue)


def test_correlation_by_hand_and_undefined_cases() -> None:
    perfect = correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert perfect.spearman == pytest.approx(1.0)
    assert perfect.pearson == pytest.approx(1.0)
    # NaN pairs are dropped: 3 pairs remain
    assert correlation([1, 2, np.nan, 4], [1, 3, 5, 2]).n == 3
    assert math.isnan(correlation([1, 2], [3, 4]).spearman)
    assert math.isnan(correlation([1, 1, 1], [3, 4, 5]).pearson)


# -- per-class AP -----------------------------------------------------------------------------


def test_per_class_ap_by_hand() -> None:
    labels = np.array([0, 1, 0, 1])
    # class 0 scores ranked: img0 (pos) 0.9, img1 (neg) 0.8, img2 (pos) 0.7, img3 (neg) 0.6
    # AP = (1/1 + 2/3) / 2 = 0.8333...
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0], [0.6, 0.4, 0.0]])
    ap = per_class_ap(labels, scores)
    assert ap[0] == pytest.approx(5 / 6)
    # class 1: scores img3 0.4 (pos), img2 0.3 (neg), img1 0.2 (pos), img0 0.1 (neg)
    assert ap[1] == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(ap[2])  # no positive image: undefined, not 0


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_per_class_ap_equals_sklearn_with_and_without_ties(decimals: int | None) -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(decimals or 0)
    labels = rng.integers(0, 12, 700)
    labels[labels == 5] = 4  # class 5 has no image
    scores = rng.random((700, 12)).astype(np.float32)
    if decimals is not None:
        scores = np.round(scores, decimals)  # many tied scores
    ours = per_class_ap(labels, scores, chunk=5)
    present = np.unique(labels)
    reference = average_precision_score(labels[:, None] == present[None, :],
                                        scores[:, present], average=None)
    np.testing.assert_allclose(ours[present], reference, rtol=0, atol=1e-12)
    assert math.isnan(ours[5])


def test_bootstrap_multinomial_shortcut_matches_index_resampling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # seed-averaged correctness (3 seeds) has few distinct per-image differences: the
    # multinomial draw of their counts is the index bootstrap's distribution exactly
    import veil.analysis.stats as module

    rng = np.random.default_rng(2)
    a = (rng.random((3, 2, 5000)) < 0.72).mean(axis=0)
    b = (rng.random((3, 2, 5000)) < 0.70).mean(axis=0)
    fast = paired_bootstrap(a, b, resamples=3000, seed=0)
    monkeypatch.setattr(module, "MULTINOMIAL_MAX_VALUES", 0)
    slow = paired_bootstrap(a, b, resamples=3000, seed=0)
    for f, s in zip(fast, slow, strict=True):
        width = s.high - s.low
        assert f.estimate == s.estimate
        assert f.low == pytest.approx(s.low, abs=0.06 * width)
        assert f.high == pytest.approx(s.high, abs=0.06 * width)


# -- multiplicity -----------------------------------------------------------------------------


def test_holm_and_benjamini_hochberg_match_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    from veil.analysis.stats import benjamini_hochberg, holm

    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005, 0.5])
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    assert benjamini_hochberg(p) == pytest.approx(multipletests(p, method="fdr_bh")[1])
    with_nan = holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1])
    assert with_nan[[0, 2]] == pytest.approx([0.02, 0.04])
    assert np.isnan(benjamini_hochberg([math.nan])).all()
