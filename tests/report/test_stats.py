"""The report's statistics against answers computed here by other means: t quantiles, exact sign-flip enumeration,
the normal approximation of a bootstrap, and differences built to be constant or zero."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from titlegen.report import stats


def test_t_interval_of_three_seeds_is_the_textbook_one():
    values = [0.50, 0.53, 0.47]  # mean 0.5, sample standard deviation 0.03
    low, high = stats.t_interval(values)
    half = 4.302653 * 0.03 / np.sqrt(3)  # t(0.975, 2 degrees of freedom), from a printed table
    assert (low, high) == (pytest.approx(0.5 - half, abs=1e-6), pytest.approx(0.5 + half, abs=1e-6))
    with pytest.raises(ValueError, match="at least 2"):
        stats.t_interval([0.5])


def test_t_interval_of_equal_seeds_is_a_point():
    assert stats.t_interval([0.25, 0.25, 0.25, 0.25]) == (0.25, 0.25)


def test_estimate_chooses_t_over_seeds_then_bootstrap_over_titles_then_none():
    titles = np.random.default_rng(0).normal(0.6, 0.1, 400)
    several = stats.estimate([0.4, 0.5], titles, 100, 0)
    assert several.method == "t" and several.n == 2 and several.mean == pytest.approx(0.45)
    assert several.high - several.low == pytest.approx(2 * 12.7062 * 0.0707107 / np.sqrt(2), abs=1e-3)
    one = stats.estimate([float(titles.mean())], titles, 4000, 0)
    assert one.method == "bootstrap" and one.n == 400
    # The bootstrap interval of a mean of 400 values is close to the normal one, mean +- 1.96 standard errors.
    half = 1.96 * titles.std() / np.sqrt(400)
    assert one.low == pytest.approx(titles.mean() - half, abs=0.002)
    assert one.high == pytest.approx(titles.mean() + half, abs=0.002)
    assert stats.estimate([0.3], None, 100, 0) == stats.Estimate(0.3)
    assert stats.estimate([], titles, 100, 0) is None


def test_bootstrap_depends_on_its_seed_only():
    values = np.random.default_rng(1).uniform(size=50)
    assert stats.bootstrap_interval(values, 500, 3) == stats.bootstrap_interval(values, 500, 3)
    assert stats.bootstrap_interval(values, 500, 3) != stats.bootstrap_interval(values, 500, 4)
    assert stats.bootstrap_interval([0.75] * 10, 100, 0) == (0.75, 0.75)


def test_a_constant_shift_is_that_shift_with_a_point_interval_and_the_smallest_p():
    a = np.random.default_rng(2).uniform(0.3, 0.7, 200)
    result = stats.paired_test(a + 0.07, a, resamples=1000, permutations=999, seed=0)
    assert result.n == 200 and result.diff == pytest.approx(0.07)
    assert result.low == pytest.approx(0.07) and result.high == pytest.approx(0.07)
    assert result.mean_a == pytest.approx(a.mean() + 0.07) and result.mean_b == pytest.approx(a.mean())
    # Only "no flip" (among 2^200) reaches the observed mean: each tail counts the observed statistic once among
    # the 999 random flips plus itself, and a two-sided p doubles the smaller tail.
    assert result.p == pytest.approx(2 / 1000)


def test_identical_experiments_differ_by_nothing_with_p_one():
    a = np.random.default_rng(3).uniform(size=80)
    result = stats.paired_test(a, a.copy(), resamples=500, permutations=999, seed=0)
    assert (result.diff, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_small_samples_get_the_exact_sign_flip_p_value():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(size=9), rng.uniform(size=9)
    result = stats.paired_test(a, b, resamples=500, permutations=9999, seed=0)
    diffs = a - b
    # All 2^9 assignments of signs to the per-title differences, equally likely under "no difference".
    flipped = np.array([np.mean(diffs * signs) for signs in itertools.product((1, -1), repeat=9)])
    expected = np.mean(np.abs(flipped) >= abs(diffs.mean()) - 1e-12)
    assert 0.01 < expected < 1, "a p-value that the test could get wrong in either direction"
    assert result.p == pytest.approx(expected)
    assert result.diff == pytest.approx(diffs.mean())


def test_a_noisy_difference_gets_the_normal_interval_and_a_matching_p():
    rng = np.random.default_rng(5)
    b = rng.uniform(0.3, 0.7, 400)
    a = b + 0.01 + rng.normal(0, 0.1, 400)
    result = stats.paired_test(a, b, resamples=4000, permutations=4999, seed=1)
    diffs = a - b
    se = diffs.std() / np.sqrt(400)
    assert result.low == pytest.approx(diffs.mean() - 1.96 * se, abs=0.002)
    assert result.high == pytest.approx(diffs.mean() + 1.96 * se, abs=0.002)
    # The sign-flip null of a mean is nearly normal with this standard error: p close to the z-test's.
    z = abs(diffs.mean()) / np.sqrt(np.mean(diffs**2) / 400)
    from scipy.stats import norm

    assert result.p == pytest.approx(2 * norm.sf(z), abs=0.02)
    assert stats.paired_test(a, b, 4000, 4999, seed=1) == result, "seeded: the same numbers again"


def test_paired_test_refuses_unpaired_input():
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_test([0.1, 0.2], [0.1], 10, 10, 0)
    with pytest.raises(ValueError, match="non-empty"):
        stats.paired_test([], [], 10, 10, 0)


def test_a_t_interval_is_cut_at_the_bounds_of_the_measure():
    # Three seeds' stop rates: the textbook interval reaches past 1, which no stop rate can be.
    rates = [0.997, 0.95, 0.87]
    low, high = stats.t_interval(rates)
    assert high > 1.0
    cut = stats.estimate(rates, None, 100, 0, bounds=(0.0, 1.0))
    assert cut == stats.Estimate(float(np.mean(rates)), low, 1.0, method="t", n=3)
    assert stats.estimate(rates, None, 100, 0) == stats.Estimate(float(np.mean(rates)), low, high, method="t", n=3)
