"""The statistics behind every number `veil analyze` prints.

Accuracy differences between an original and an obfuscated model are small (the paper's
average top-1 drop is 0.655 points), so each one comes with its uncertainty:

- :func:`mean_sem`: mean and standard error over training seeds (model-to-model spread);
- :func:`seed_image_interval`: the 95% CI of a drop that accounts for *both* sources of
  uncertainty, training randomness (seed to seed) and the finite validation set (image to
  image); every verdict (drop / gain / within noise) rests on it;
- :func:`paired_bootstrap`: the image-only part of that uncertainty (kept for metrics
  without a closed-form image variance, e.g. VOC mAP);
- :func:`holm` and :func:`benjamini_hochberg`: multiplicity corrections;
- :func:`mcnemar`: whether two models sharing a validation set differ in top-1 at all;
- :func:`correlation`: Spearman and Pearson with p-values;
- :func:`per_class_ap`: one-vs-rest average precision per class from the softmax scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

#: Below this many discordant pairs McNemar uses the exact binomial test.
MCNEMAR_EXACT_BELOW = 25
#: Up to this many distinct per-image differences the bootstrap draws multinomial counts.
MULTINOMIAL_MAX_VALUES = 4096


def mean_sem(values: Sequence[float] | np.ndarray, ddof: int = 1) -> tuple[float, float]:
    """Mean and standard error of the mean, ``std(values, ddof) / sqrt(n)``.

    ``ddof=1`` is the textbook SEM; the paper's scripts use ``ddof=2`` (see
    :mod:`veil.analysis.paper_pickles`). The SEM is NaN when ``n <= ddof`` (one seed says
    nothing about the seed-to-seed spread).
    """
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if array.size <= ddof:
        return mean, math.nan
    return mean, float(array.std(ddof=ddof) / math.sqrt(array.size))


@dataclass(frozen=True)
class BootstrapCI:
    """The observed mean difference and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    variance: float = math.nan  # of the resampled estimates

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def paired_bootstrap(
    first: np.ndarray,
    second: np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int | None = 0,
    chunk: int = 64,
) -> list[BootstrapCI]:
    """Percentile bootstrap CIs of ``mean(first - second)`` over images.

    ``first`` and ``second`` are (images,) or (metrics, images) arrays of per-image scores
    (e.g. top-1 correctness averaged over seeds) in the same image order. Each resample
    draws ``n`` image indices with replacement, *the same indices for both conditions and
    for every metric*, and takes the mean difference; the interval is the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of the ``resamples`` means.

    Per-image differences of seed-averaged correctness take few distinct values, so a
    resample is drawn as multinomial counts of those values (probabilities = their shares
    among the images): exactly the distribution of drawing ``n`` indices with replacement,
    at a cost independent of ``n``. With many distinct values it draws the indices
    themselves, ``chunk`` resamples at a time. Returns one :class:`BootstrapCI` per
    metric (row).
    """
    a = np.atleast_2d(np.asarray(first, dtype=float))
    b = np.atleast_2d(np.asarray(second, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    diff = a - b
    n = diff.shape[1]
    if n == 0:
        nan = math.nan
        return [BootstrapCI(nan, nan, nan, level, resamples) for _ in diff]
    rng = np.random.default_rng(seed)
    values, inverse = np.unique(diff.T, axis=0, return_inverse=True)
    if len(values) <= MULTINOMIAL_MAX_VALUES:
        counts = rng.multinomial(n, np.bincount(inverse.ravel()) / n, size=resamples)
        means = (values.T @ counts.T) / n  # (metrics, resamples)
    else:
        means = np.empty((diff.shape[0], resamples))
        for start in range(0, resamples, chunk):
            stop = min(start + chunk, resamples)
            index = rng.integers(0, n, size=(stop - start, n))
            means[:, start:stop] = diff[:, index].mean(axis=2)
    tails = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return [
        BootstrapCI(float(diff[i].mean()), float(tails[0, i]), float(tails[1, i]), level,
                    resamples)
        for i in range(diff.shape[0])
    ]


@dataclass(frozen=True)
class McNemarResult:
    """``b``: first right, second wrong; ``c``: first wrong, second right."""

    b: int
    c: int
    statistic: float
    pvalue: float
    method: str  # "exact-binomial" or "chi2-continuity"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def mcnemar(first_correct: np.ndarray, second_correct: np.ndarray,
            exact_below: int = MCNEMAR_EXACT_BELOW) -> McNemarResult:
    """McNemar's test on paired right/wrong outcomes of two models on the same images.

    Only discordant pairs carry information. With ``b + c < exact_below`` the p-value is
    the two-sided exact binomial test of ``b`` successes in ``b + c`` trials at 1/2 (the
    statistic is then ``min(b, c)``); otherwise the chi-square statistic with Edwards'
    continuity correction, ``(|b - c| - 1)^2 / (b + c)``, on 1 degree of freedom. No
    discordant pairs: p = 1.
    """
    x = np.asarray(first_correct, dtype=bool)
    y = np.asarray(second_correct, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in shape: {x.shape} vs {y.shape}")
    b = int(np.count_nonzero(x & ~y))
    c = int(np.count_nonzero(~x & y))
    if b + c == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact-binomial")
    if b + c < exact_below:
        p = stats.binomtest(b, b + c, 0.5).pvalue
        return McNemarResult(b, c, float(min(b, c)), float(min(1.0, p)), "exact-binomial")
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemarResult(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)),
                         "chi2-continuity")


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho and Pearson's r with their two-sided p-values over ``n`` pairs."""

    n: int
    spearman: float
    spearman_p: float
    pearson: float
    pearson_p: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
                ) -> Correlation:
    """Both coefficients over the pairs where neither value is NaN; NaN where undefined
    (fewer than 3 pairs, or a constant variable)."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    keep = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    n = int(xs.size)
    nan = math.nan
    if n < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return Correlation(n, nan, nan, nan, nan)
    spearman = stats.spearmanr(xs, ys)
    pearson = stats.pearsonr(xs, ys)
    return Correlation(n, float(spearman.statistic), float(spearman.pvalue),
                       float(pearson.statistic), float(pearson.pvalue))


def per_class_ap(labels: np.ndarray, scores: np.ndarray, chunk: int = 64) -> np.ndarray:
    """One-vs-rest average precision of each class: column ``k`` of ``scores`` ranks the
    images, ``labels == k`` are the positives; NaN for a class with no positive image.

    The same number as sklearn's ``average_precision_score`` (step-wise, ties in score
    form one threshold): ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds,
    i.e. each positive contributes the precision at the end of its tie group, / #positives.
    Vectorised over ``chunk`` classes at a time: sklearn loops over classes and needs
    ~160 s for 50,000 x 1000 scores, this needs seconds.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    n, num_classes = scores.shape
    result = np.full(num_classes, np.nan)
    positives = np.bincount(labels[(labels >= 0) & (labels < num_classes)],
                            minlength=num_classes)
    rank = np.arange(1, n + 1, dtype=np.float64)[:, None]
    for start in range(0, num_classes, chunk):
        cols = np.arange(start, min(start + chunk, num_classes))
        cols = cols[positives[cols] > 0]
        if cols.size == 0:
            continue
        block = scores[:, cols]
        order = np.argsort(-block, axis=0, kind="stable")
        ranked = np.take_along_axis(block, order, axis=0)
        hits = labels[order] == cols[None, :]
        precision = np.cumsum(hits, axis=0) / rank
        # the end of each tie group, and for every row the end of its group
        last = np.ones_like(hits)
        last[:-1] = ranked[:-1] != ranked[1:]
        end = np.where(last, np.arange(n)[:, None], n)
        end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
        at_end = np.take_along_axis(precision, end, axis=0)
        result[cols] = (hits * at_end).sum(axis=0) / positives[cols]
    return result


ONE_SEED = "one seed: training randomness unmeasured"


def verdict(ci: BootstrapCI | DropInterval) -> str:
    """How to read a drop (first minus second, positive = the obfuscated model is worse):
    "drop", "gain", or "within noise" when the CI contains 0; with one seed no reading at
    all (:data:`ONE_SEED`)."""
    if isinstance(ci, DropInterval) and ci.seeds < 2:
        return ONE_SEED
    if math.isnan(ci.low) or ci.contains_zero:
        return "within noise"
    return "drop" if ci.low > 0 else "gain"


def verdict_from_p(estimate: float, p_adjusted: float, seeds: int,
                   alpha: float = 0.05) -> str:
    """The reading of a drop from its multiplicity-adjusted p-value (Holm / BH)."""
    if seeds < 2:
        return ONE_SEED
    if math.isnan(p_adjusted) or p_adjusted >= alpha:
        return "within noise"
    return "drop" if estimate > 0 else "gain"


# -- seeds and images ---------------------------------------------------------------------


@dataclass(frozen=True)
class DropInterval:
    """A drop with an interval that accounts for seeds and images.

    ``seed_se`` is the seed-to-seed part (SD of the per-seed drops / sqrt(seeds)),
    ``image_se`` the shared image part (what the choice of validation images adds),
    ``se`` = sqrt(seed_se^2 + image_se^2), ``df`` = seeds - 1, ``pvalue`` the two-sided
    t test of "no drop"."""

    estimate: float
    low: float
    high: float
    level: float
    se: float
    df: float
    pvalue: float
    seeds: int
    seed_se: float
    image_se: float

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def scaled(self, factor: float) -> DropInterval:
        """The same interval in other units (fractions -> points)."""
        return DropInterval(self.estimate * factor, self.low * factor, self.high * factor,
                            self.level, self.se * factor, self.df, self.pvalue, self.seeds,
                            self.seed_se * factor, self.image_se * factor)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


#: How :func:`seed_image_interval` works, for tables and summary.json.
INTERVAL_METHOD = (
    "seeds-and-images t interval: SE^2 = var(per-seed drops, ddof=1)/seeds + "
    "(between-seed covariance of per-image drops)/images, Student t critical value with "
    "seeds-1 df; coverage checked by simulation (tests/test_interval_coverage.py)")
ONE_SEED_NOTE = ("one seed: training randomness unmeasured, so no drop gets a verdict "
                 "(train at least 2 seeds, better 3 or more)")


def seed_image_bounds(seed_drops: np.ndarray, image_var: np.ndarray | float, images: int,
                      level: float = 0.95) -> dict[str, np.ndarray]:
    """:func:`seed_image_interval` for many experiments at once (rows of ``seed_drops``,
    shape (..., seeds); ``image_var`` the shared image variance per row, shape (...)).

    Returns arrays ``estimate``, ``se``, ``seed_se``, ``image_se``, ``df``, ``low``,
    ``high`` and ``pvalue``; NaN where fewer than 2 seeds."""
    drops = np.asarray(seed_drops, dtype=float)
    seeds = drops.shape[-1]
    estimate = drops.mean(axis=-1)
    image = np.broadcast_to(np.maximum(np.asarray(image_var, dtype=float), 0.0) / images,
                            estimate.shape)
    if seeds < 2:
        nan = np.full(estimate.shape, np.nan)
        return {"estimate": estimate, "se": nan, "seed_se": nan, "image_se": np.sqrt(image),
                "df": nan, "low": nan, "high": nan, "pvalue": nan}
    seed = drops.var(axis=-1, ddof=1) / seeds
    total = seed + image
    # df = seeds - 1, not Welch-Satterthwaite: when two seeds happen to agree, Satterthwaite
    # lets the image part raise the df and narrows the interval exactly when the seed
    # variance is underestimated (2 seeds covered about 90% in the simulation test)
    df = np.full(estimate.shape, float(seeds - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(total)
        critical = stats.t.ppf((1 + level) / 2, df)
        t_value = np.where(se > 0, np.abs(estimate) / np.where(se > 0, se, 1.0),
                           np.where(estimate != 0, np.inf, 0.0))
        pvalue = 2 * stats.t.sf(t_value, df)
    return {"estimate": estimate, "se": se, "seed_se": np.sqrt(seed),
            "image_se": np.sqrt(image), "df": df, "low": estimate - critical * se,
            "high": estimate + critical * se, "pvalue": pvalue}


def seed_image_interval(seed_drops: Sequence[float] | np.ndarray, image_var: float, *,
                        images: int, level: float = 0.95) -> DropInterval:
    """The CI of the mean drop over seeds, accounting for seeds and images.

    Model: on image ``i`` the seed-``k`` drop (original right minus obfuscated right) is
    ``d_ik = delta_i + e_ik``: ``delta_i`` is what obfuscation does to that image (the
    same for every seed; the validation set is a sample of images, so its mean is
    uncertain), ``e_ik`` is everything the seed changes (initialisation, data order, and
    which images each trained model happens to get right). The mean drop over seeds then
    has variance ``var(delta)/images + var(per-seed drop | images)/seeds``. The first
    term is estimated by the covariance, over images, of two seeds' per-image drops
    (``image_var``: see :func:`shared_image_variance`); the second by the sample variance
    of the per-seed drops. The image-only bootstrap veil used before missed the second,
    and covers the true drop far less than 95% of the time once seeds disagree (the
    coverage tables printed by tests/test_interval_coverage.py).

    The critical value is Student's t with ``seeds - 1`` degrees of freedom (a seed-paired
    t interval whose SE also carries the image part), so 2 seeds give the wide t(1)
    interval they deserve; Welch-Satterthwaite df were tried and under-covered with 2
    seeds. With one seed the interval is NaN and :func:`verdict` says "one seed:
    training randomness unmeasured".
    """
    drops = np.asarray(seed_drops, dtype=float)
    out = seed_image_bounds(drops, float(image_var), images, level)
    value = {k: float(v) for k, v in out.items()}
    return DropInterval(value["estimate"], value["low"], value["high"], level, value["se"],
                        value["df"], value["pvalue"], int(drops.size), value["seed_se"],
                        value["image_se"])


def shared_image_variance(per_image_drops: np.ndarray) -> float:
    """The variance over images of what obfuscation does to each image, from (seeds,
    images) per-image drops: the mean over seed pairs k != l of the covariance over images
    of ``d_k`` and ``d_l`` (unbiased; a seed's own noise does not enter). NaN with fewer
    than 2 seeds or 2 images."""
    d = np.asarray(per_image_drops, dtype=float)
    seeds, n = d.shape
    if seeds < 2 or n < 2:
        return math.nan
    total = d.sum(axis=0)
    cross = float((total**2 - (d**2).sum(axis=0)).sum())  # sum_i sum_{k != l} d_ik d_il
    means = d.mean(axis=1)
    mean_cross = float(means.sum() ** 2 - (means**2).sum())
    return (cross - n * mean_cross) / (seeds * (seeds - 1) * (n - 1))


def image_se_of_mean(per_image: np.ndarray) -> float:
    """SE over images of the mean of per-image values (the paired bootstrap's
    large-sample limit)."""
    values = np.asarray(per_image, dtype=float)
    if values.size < 2:
        return math.nan
    return float(values.std(ddof=1) / math.sqrt(values.size))


def _adjusted(pvalues: Sequence[float] | np.ndarray,
              step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``step`` applied to the non-NaN p-values sorted ascending, capped at 1 and put back
    in their places; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    keep = ~np.isnan(p)
    if not keep.any():
        return out
    values = p[keep]
    order = np.argsort(values, kind="stable")
    result = np.empty(values.size)
    result[order] = np.minimum(step(values[order]), 1.0)
    out[keep] = result
    return out


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), NaN kept as NaN.

    Used across architectures: "does *any* arch lose accuracy" is one family."""
    def step(ranked: np.ndarray) -> np.ndarray:
        m = ranked.size
        return np.maximum.accumulate((m - np.arange(m)) * ranked)
    return _adjusted(pvalues, step)


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), NaN kept as NaN.

    Used across categories and across correlations, where many tests are read at once
    and a few false discoveries among many are tolerable."""
    def step(ranked: np.ndarray) -> np.ndarray:
        m = ranked.size
        return np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    return _adjusted(pvalues, step)
