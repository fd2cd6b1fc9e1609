"""commformer.analysis.stats: the interquartile mean on hand cases, the (stratified) percentile bootstrap, the
probability of improvement, performance profiles and the Wilson interval."""
import numpy as np
import pytest

from commformer.analysis.stats import (bootstrap_ci, iqm, mean, performance_profile, probability_of_improvement,
                                       probability_of_improvement_ci, summarize, wilson_interval)


# ---- iqm ---------------------------------------------------------------------------------------------------------

def test_iqm_is_the_mean_of_the_middle_half_when_n_divides_by_4():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # mean(3, 4, 5, 6)
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # order does not matter
    assert iqm([0, 0, 1, 2, 3, 4, 100, 1000]) == 2.5  # the outer quarters never count


def test_iqm_fractional_boundary_drops_floor_n_over_4_each_side():
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # n=5: drop 1 each side -> mean(2, 3, 4)
    assert iqm(list(range(1, 10))) == 5.0  # n=9: drop 2 each side -> mean(3..7)
    assert iqm([1, 2, 3, 4, 5, 6, 70]) == 4.0  # n=7: drop 1 each side -> mean(2..6)
    assert iqm([1, 2, 30]) == 11.0  # n<4: nothing dropped
    assert iqm([7.5]) == 7.5


def test_iqm_over_last_axis_and_bad_input():
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [10, 10, 10, 10, 0, 0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(iqm(x), [4.5, 5.0])
    with pytest.raises(ValueError, match="at least one value"):
        iqm([])


# ---- bootstrap ---------------------------------------------------------------------------------------------------

def _sample(n, seed=1):
    return np.random.default_rng(seed).normal(0.5, 0.2, size=n)


def test_bootstrap_ci_contains_the_point_estimate_for_both_statistics():
    x = _sample(50)
    for stat in (iqm, mean):
        low, high = bootstrap_ci(x, stat, n_boot=2000, confidence=0.95, seed=0)
        assert low < stat(x) < high


def test_bootstrap_ci_is_deterministic_for_a_seed():
    x = _sample(30)
    assert bootstrap_ci(x, iqm, 500, 0.95, seed=3) == bootstrap_ci(x, iqm, 500, 0.95, seed=3)
    assert bootstrap_ci(x, iqm, 500, 0.95, seed=3) != bootstrap_ci(x, iqm, 500, 0.95, seed=4)


def test_bootstrap_ci_narrows_with_more_data_and_less_confidence():
    small, large = _sample(20), _sample(2000)
    w_small = np.subtract(*bootstrap_ci(small, iqm, 1000, 0.95, 0)[::-1])
    w_large = np.subtract(*bootstrap_ci(large, iqm, 1000, 0.95, 0)[::-1])
    assert w_large < w_small / 5  # ~ sqrt(100) = 10 times narrower
    w_50 = np.subtract(*bootstrap_ci(small, iqm, 1000, 0.5, 0)[::-1])
    assert w_50 < w_small


def test_bootstrap_ci_collapses_on_a_single_value_or_constant_data():
    assert bootstrap_ci([0.3], iqm, 100, 0.95, 0) == (0.3, 0.3)
    assert bootstrap_ci([2.0, 2.0, 2.0], mean, 100, 0.95, 0) == (2.0, 2.0)


def test_bootstrap_is_stratified_each_stratum_keeps_its_size():
    # Two tasks whose runs all agree: every stratified replicate is 3 zeros and 3 ones, so the interval is a point.
    strata = [np.zeros(3), np.ones(3)]
    assert bootstrap_ci(strata, mean, 1000, 0.95, 0) == (0.5, 0.5)
    # Pooled into one stratum, replicates can draw 6 zeros or 6 ones, and the interval opens up.
    low, high = bootstrap_ci(np.concatenate(strata), mean, 1000, 0.95, 0)
    assert low <= 1 / 6 and high >= 5 / 6
    # Strata may differ in size: 1 zero and 3 ones -> every replicate's mean is 3/4.
    assert bootstrap_ci([[0.0], [1.0, 1.0, 1.0]], mean, 200, 0.95, 0) == (0.75, 0.75)


def test_bootstrap_ci_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_boot=0"):
        bootstrap_ci([1.0, 2.0], iqm, n_boot=0)
    with pytest.raises(ValueError, match="confidence=1.5"):
        bootstrap_ci([1.0, 2.0], iqm, confidence=1.5)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_ci(np.ones((2, 3)), iqm)
    with pytest.raises(ValueError, match=r"x\[1\]"):
        bootstrap_ci([[1.0], []], iqm)


def test_summarize_holds_both_statistics_and_their_intervals():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    s = summarize(x, n_boot=300, seed=0)
    assert s["n"] == 8 and s["mean"] == 4.5 and s["iqm"] == 4.5
    assert s["mean_ci"] == list(bootstrap_ci(x, mean, 300, 0.95, 0))
    assert s["iqm_ci"] == list(bootstrap_ci(x, iqm, 300, 0.95, 0))


# ---- probability of improvement ----------------------------------------------------------------------------------

def test_probability_of_improvement_counts_pairs_and_half_ties():
    # x=1 beats only y=0; x=2 beats 0 and ties both 2s; x=3 beats all three: (1 + 2 + 3) / 9
    assert probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    assert probability_of_improvement([2, 2, 0], [1, 2, 3]) == pytest.approx(3 / 9)  # P(X>Y) + P(Y>X) = 1
    assert probability_of_improvement([5, 6], [1, 2, 3]) == 1.0
    assert probability_of_improvement([0.5] * 4, [0.5] * 3) == 0.5  # all ties
    # over the last axis, as the bootstrap calls it
    np.testing.assert_allclose(probability_of_improvement(np.array([[1.0, 2.0], [3.0, 4.0]]),
                                                          np.array([[2.0], [0.0]])), [0.25, 1.0])


def test_probability_of_improvement_ci_resamples_each_side():
    x, y = [0.9, 0.8, 0.7, 0.95, 0.85], [0.1, 0.2, 0.3, 0.15, 0.25]
    assert probability_of_improvement_ci(x, y, 500, 0.95, 0) == (1.0, 1.0)  # every resample separates them
    x, y = _sample(8, seed=1), _sample(8, seed=2)
    low, high = probability_of_improvement_ci(x, y, 2000, 0.95, 0)
    assert low < probability_of_improvement(x, y) < high and high - low > 0.2
    assert probability_of_improvement_ci(x, y, 2000, 0.95, 0) == (low, high)  # seeded
    # by hand: 3 replicates with the same generator draws
    rng = np.random.default_rng(7)
    xs = np.asarray(x)[rng.integers(0, 8, size=(3, 8))]
    ys = np.asarray(y)[rng.integers(0, 8, size=(3, 8))]
    reps = [probability_of_improvement(a, b) for a, b in zip(xs, ys)]
    assert probability_of_improvement_ci(x, y, 3, 0.5, 7) == pytest.approx(tuple(np.quantile(reps, [0.25, 0.75])))


def test_performance_profile_is_the_fraction_strictly_above_tau():
    np.testing.assert_array_equal(performance_profile([0.1, 0.5, 0.9, 0.9], [0.0, 0.1, 0.5, 0.9, 1.0]),
                                  [1.0, 0.75, 0.5, 0.0, 0.0])


# ---- Wilson interval ---------------------------------------------------------------------------------------------

def test_wilson_interval_known_values():
    # 8 of 10 at 95%: the textbook Wilson interval [0.4902, 0.9433]
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-5) and high == pytest.approx(0.94332, abs=1e-5)
    # the ends are exact and the interval is not empty there (unlike the Wald interval)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), 1.0)
    # symmetric around 1/2, narrower with more trials and less confidence
    a, b = wilson_interval(3, 10), wilson_interval(7, 10)
    assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])
    assert np.diff(wilson_interval(300, 1000)) < np.diff(wilson_interval(3, 10)) / 5
    assert np.diff(wilson_interval(3, 10, 0.5)) < np.diff(wilson_interval(3, 10))


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="n=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)


def test_iqm_ratio_interval_resamples_both_groups():
    """IQM(X) / IQM(Y) with both groups resampled: identical groups give an interval around 1 that is wider than a
    single point (the comparator's spread counts); a comparator that is always 0 gives +inf."""
    from commformer.analysis.stats import iqm_ratio_ci

    x = [0.90, 0.95, 1.0, 0.85, 0.97]
    low, high = iqm_ratio_ci(x, x, n_boot=2000, seed=0)
    assert low < 1.0 < high and high - low > 0.02
    assert iqm_ratio_ci([0.5, 0.6], [0.0, 0.0], n_boot=200, seed=0) == (float("inf"), float("inf"))
    with pytest.raises(ValueError, match="n_boot=0"):
        iqm_ratio_ci(x, x, n_boot=0)
