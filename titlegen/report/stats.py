"""The report's statistics: a 95% interval for an experiment's mean, and the paired comparison of two experiments
over the titles both generated.

- Several training seeds: a t-interval over the seeds' means. It answers "how much does the result move with the
  training seed?" on this test set; the test titles are held fixed, so it leaves out their sampling error.
- One seed (or no training at all): the percentile bootstrap over the test titles, which is all that varies then.
- Two experiments: per title, each one's F1 averaged over its seeds; the mean of the per-title differences, a paired
  percentile bootstrap interval (titles resampled, both scores of a title kept together) and a two-sided sign-flip
  permutation test of that same mean (`scipy.stats.permutation_test`, `permutation_type="samples"`; exact when
  2**titles is at most the resamples asked for).

Every random draw comes from a generator seeded with the report's `--seed`, made afresh for each interval or test,
so a number does not change when other experiments are added to the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
# Resamples drawn at once: bounds the index matrix (chunk x titles) to tens of MB on a test set of thousands.
_CHUNK = 500


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval; `method` is "t" (over `n` seeds), "bootstrap" (over `n` titles) or None (no
    interval: one seed and no per-title values)."""

    mean: float
    low: float | None = None
    high: float | None = None
    method: str | None = None
    n: int = 0


@dataclass(frozen=True)
class Paired:
    """Experiment a minus experiment b over the `n` titles both have: means, mean difference, its 95% interval and
    the two-sided p-value of "no difference"."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p: float

    def reversed(self) -> Paired:
        """b minus a: the same test seen from the other side."""
        return Paired(self.n, self.mean_b, self.mean_a, -self.diff, -self.high, -self.low, self.p)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """mean +- t(level, n-1) * s / sqrt(n), with s the sample standard deviation; needs two values or more."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {x.size}")
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    mean = float(x.mean())
    return mean - half, mean + half


def resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The means of `resamples` draws of len(values) values with replacement (rows of a 2-D `values` resample
    together)."""
    means = []
    for start in range(0, resamples, _CHUNK):
        picks = rng.integers(0, len(values), size=(min(_CHUNK, resamples - start), len(values)))
        means.append(values[picks].mean(axis=1))
    return np.concatenate(means)


def bootstrap_interval(values: Sequence[float], resamples: int, seed: int, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values`."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("a bootstrap interval needs at least 1 value")
    means = resampled_means(x, resamples, np.random.default_rng(seed))
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def estimate(
    per_seed: Sequence[float],
    per_title: np.ndarray | None,
    resamples: int,
    seed: int,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> Estimate | None:
    """The mean over seeds with a t-interval when there are several seeds; else the one run's mean with a bootstrap
    interval over its titles (`per_title`), or without an interval where there are none. None without any value.

    `bounds`: the values the measure can take (a rate's [0, 1]). A t-interval over few seeds can reach past them
    (a stop rate of 0.94 +- 0.06), and is cut there; a bootstrap interval never leaves the observed values."""
    if len(per_seed) == 0:
        return None
    mean = float(np.mean(per_seed))
    if len(per_seed) >= 2:
        low, high = t_interval(per_seed)
        return Estimate(mean, max(low, bounds[0]), min(high, bounds[1]), method="t", n=len(per_seed))
    if per_title is None or per_title.size == 0:
        return Estimate(mean)
    return Estimate(mean, *bootstrap_interval(per_title, resamples, seed), method="bootstrap", n=int(per_title.size))


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_test(a: Sequence[float], b: Sequence[float], resamples: int, permutations: int, seed: int) -> Paired:
    """Compare paired scores (a[i] and b[i] belong to the same title).

    A permutation test rather than Wilcoxon's signed-rank test: it tests the statistic the report shows (the mean F1
    difference, which the bootstrap interval also describes), not a pseudo-median of ranks, and needs no rule for the
    zero differences that tied titles give (e.g. two experiments that both copy the abstract's first sentence).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired scores need two equally long, non-empty lists, got {x.size} and {y.size}")
    diffs = x - y
    low, high = bootstrap_interval(diffs, resamples, seed)
    test = stats.permutation_test(
        (x, y), _mean_difference, permutation_type="samples", vectorized=True, n_resamples=permutations,
        alternative="two-sided", batch=_CHUNK, random_state=np.random.default_rng(seed),
    )  # fmt: skip
    mean = float(diffs.mean())
    return Paired(int(x.size), float(x.mean()), float(y.mean()), mean, low, high, float(test.pvalue))
