"""Does the drop's 95% interval cover the true drop? A simulation, run as a test.

The world simulated (per cell: seeds S, seed-to-seed SD sigma, validation images N):

- the validation set is N images drawn from a population of difficulty levels (so which
  images happen to be in it is a shared source of error, the same for every seed);
- obfuscation lowers an image's chance of being right by a level-dependent amount whose
  population mean is the true drop (images of some levels lose more, as images with faces
  would);
- each trained model (condition x seed) shifts every image's chance by its own
  N(0, sigma^2): training randomness, independent between models;
- each model gets each image right or wrong independently given its chance.

Each cell draws the whole experiment ``REPS`` times and counts how often the interval
holds the true drop. Exact and cheap: given the level counts, the 2S models' outcomes on
an image form one of 2^(2S) patterns, so an experiment is a multinomial draw of pattern
counts per level, whatever N is (no per-image arrays).

Monte-Carlo error: with REPS = 1500 an interval whose true coverage is 95% shows
95% +- 0.56% (1 SE), so the 93% bar sits 3.6 SE below it; one at 90% sits 5.4 SE below.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats as sps

from veil.analysis.stats import (
    image_se_of_mean,
    paired_bootstrap,
    seed_image_bounds,
    seed_image_interval,
    shared_image_variance,
)

TRUE_DROP = 0.006  # the paper's average top-1 drop, as a fraction
LEVELS = np.array([0.08, 0.3, 0.55, 0.75, 0.9, 0.97])  # chance right, original model
WEIGHTS = np.array([0.12, 0.13, 0.15, 0.2, 0.25, 0.15])
# what obfuscation does to an image's chance, per level: some lose much, some gain (so which
# images are in the validation set matters); shifted so the population mean is TRUE_DROP
RAW_DROP = np.array([0.07, -0.06, 0.12, -0.05, 0.03, -0.02])
LEVEL_DROP = RAW_DROP - float(WEIGHTS @ RAW_DROP) + TRUE_DROP
SEEDS = (2, 3, 5)
SIGMAS = (0.0, 0.1, 0.25, 0.5)  # seed-to-seed SD of a model's accuracy, in points
IMAGES = (1_000, 10_000, 50_000)
REPS = 1500
BAR = 0.93

#: an interval maker: (Experiments, N) -> (low, high), one per experiment
Maker = Callable[["Experiments", int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Experiments:
    """What each simulated experiment shows the analysis."""

    drops: np.ndarray  # (reps, seeds): per-seed accuracy drop
    averaged_var: np.ndarray  # (reps,): variance over images of the seed-averaged drop
    shared_var: np.ndarray  # (reps,): shared_image_variance of the per-image drops


def simulate(seeds: int, sigma: float, images: int, reps: int, rng: np.random.Generator
             ) -> Experiments:
    """``reps`` independent experiments of one cell."""
    models = 2 * seeds  # original seeds first, then obfuscated
    bits = np.array(list(itertools.product((0, 1), repeat=models)), dtype=float)  # (K, M)
    shifts = rng.normal(0.0, sigma / 100.0, size=(reps, models))
    counts_level = rng.multinomial(images, WEIGHTS, size=reps)  # (reps, G)
    right = np.zeros((reps, models))
    sum_d = np.zeros(reps)
    sum_d2 = np.zeros(reps)
    sum_cross = np.zeros(reps)
    per_seed = bits[:, :seeds] - bits[:, seeds:]  # (K, S): per-seed drop on one image
    per_pattern_d = per_seed.mean(axis=1)
    per_pattern_cross = per_seed.sum(1) ** 2 - (per_seed**2).sum(1)  # sum_{k != l} d_k d_l
    for g, base in enumerate(LEVELS):
        chance = np.where(np.arange(models) < seeds, base, base - LEVEL_DROP[g]) + shifts
        chance = np.clip(chance, 1e-6, 1 - 1e-6)
        log_p = np.log(chance) @ bits.T + np.log1p(-chance) @ (1 - bits).T  # (reps, K)
        probs = np.exp(log_p)
        probs /= probs.sum(axis=1, keepdims=True)
        counts = rng.multinomial(counts_level[:, g], probs)  # (reps, K)
        right += counts @ bits
        sum_d += counts @ per_pattern_d
        sum_d2 += counts @ per_pattern_d**2
        sum_cross += counts @ per_pattern_cross
    accuracy = right / images
    drops = accuracy[:, :seeds] - accuracy[:, seeds:]
    mean_d = sum_d / images
    averaged = (sum_d2 - images * mean_d**2) / (images - 1)
    mean_cross = drops.sum(1) ** 2 - (drops**2).sum(1)
    shared = (sum_cross - images * mean_cross) / (seeds * (seeds - 1) * (images - 1))
    return Experiments(drops, averaged, shared)


def seed_and_image(e: Experiments, images: int) -> tuple[np.ndarray, np.ndarray]:
    """veil's interval (:func:`veil.analysis.stats.seed_image_bounds`)."""
    out = seed_image_bounds(e.drops, e.shared_var, images)
    return out["low"], out["high"]


def image_only(e: Experiments, images: int) -> tuple[np.ndarray, np.ndarray]:
    """The interval veil used before: the paired bootstrap over images of the
    seed-averaged per-image drop, i.e. (at these N) mean +- 1.96 sqrt(var / N)."""
    half = sps.norm.ppf(0.975) * np.sqrt(e.averaged_var / images)
    centre = e.drops.mean(axis=1)
    return centre - half, centre + half


def coverage_table(maker: Maker, reps: int = REPS, seed: int = 12
                   ) -> dict[tuple[int, float, int], float]:
    rng = np.random.default_rng(seed)
    table = {}
    for s, sigma, n in itertools.product(SEEDS, SIGMAS, IMAGES):
        lo, hi = maker(simulate(s, sigma, n, reps, rng), n)
        table[(s, sigma, n)] = float(np.mean((lo <= TRUE_DROP) & (hi >= TRUE_DROP)))
    return table


def render(table: dict[tuple[int, float, int], float]) -> str:
    lines = ["coverage of the true drop (seeds x seed SD in points; columns: images)",
             "seeds  SD    " + "  ".join(f"{n:>7,}" for n in IMAGES)]
    for s, sigma in itertools.product(SEEDS, SIGMAS):
        cells = "  ".join(f"{100 * table[(s, sigma, n)]:6.1f}%" for n in IMAGES)
        lines.append(f"{s:>5}  {sigma:4.2f}  {cells}")
    return "\n".join(lines)


def test_the_seed_and_image_interval_covers_in_every_cell() -> None:
    table = coverage_table(seed_and_image)
    low = {k: v for k, v in table.items() if v < BAR}
    assert not low, (f"coverage under {BAR:.0%} in {len(low)} cells (Monte-Carlo SE about "
                     f"0.6 points at 95%):\n{render(table)}")


def test_the_image_only_bootstrap_fails_the_same_simulation() -> None:
    # the same world and bar: the image-only interval misses the seed part
    table = coverage_table(image_only)
    low = {k: v for k, v in table.items() if v < BAR}
    assert (3, 0.5, 10_000) in low and (2, 0.25, 50_000) in low, render(table)
    assert min(table.values()) < 0.6, render(table)


def test_image_only_shortcut_is_what_paired_bootstrap_computes() -> None:
    # the companion above uses mean +- 1.96 sqrt(var/N) for speed; check it is today's
    # paired_bootstrap on explicit per-image arrays of one simulated experiment
    rng = np.random.default_rng(5)
    n, seeds = 4000, 3
    p = rng.choice(LEVELS, size=n, p=WEIGHTS)
    original = (rng.random((seeds, n)) < p).mean(axis=0)
    obfuscated = (rng.random((seeds, n)) < p - 0.01).mean(axis=0)
    boot = paired_bootstrap(original, obfuscated, resamples=4000, seed=0)[0]
    d = original - obfuscated
    shown = Experiments(np.array([[d.mean()] * seeds]), np.array([d.var(ddof=1)]),
                        np.array([math.nan]))
    lo, hi = image_only(shown, n)
    assert boot.low == pytest.approx(lo[0], abs=0.0015)
    assert boot.high == pytest.approx(hi[0], abs=0.0015)
    assert image_se_of_mean(d) == pytest.approx(d.std(ddof=1) / math.sqrt(n))


def test_shared_image_variance_and_the_interval_by_hand() -> None:
    # two seeds, three images: d_1 = (1, 0, 0), d_2 = (1, 0, 1)
    d = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    assert shared_image_variance(d) == pytest.approx(np.cov(d[0], d[1])[0, 1])
    assert math.isnan(shared_image_variance(d[:1]))
    ci = seed_image_interval([0.010, 0.004], 0.0, images=1000)
    # the seed part alone: mean 0.007, SE = 0.003 (sd 0.004243 / sqrt 2), t(1) = 12.706
    assert (ci.estimate, ci.se, ci.df) == pytest.approx((0.007, 0.003, 1.0))
    assert (ci.low, ci.high) == pytest.approx((0.007 - 12.7062 * 0.003,
                                               0.007 + 12.7062 * 0.003), rel=1e-4)
    assert ci.pvalue == pytest.approx(2 * sps.t.sf(0.007 / 0.003, 1))
    one = seed_image_interval([0.010], 1e-4, images=1000)
    assert math.isnan(one.low) and one.seeds == 1
