"""reports.stats: exact values on hand-made per-seed scores, and the vectorised code against its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports import stats

X = [0.3, 1.7, 2.2, 4.9, 10.6, 6.1]

# helpers


def naive_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics, as np.quantile's default, written out."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def naive_interval(values: list[float], level: float) -> tuple[float, float]:
    return naive_percentile(values, (1 - level) / 2), naive_percentile(values, (1 + level) / 2)


def naive_mean(row) -> float:
    return sum(row) / len(row)


# IQM


@pytest.mark.parametrize("x, expected", [
    # n=8: int(0.25*8)=2 dropped per end -> sorted [1,2 | 3,4,5,6 | 7,100] -> (3+4+5+6)/4 = 4.5
    ([100, 7, 1, 2, 3, 4, 5, 6], 4.5),
    # n=5: int(1.25)=1 dropped per end -> [-50 | 1,2,3 | 99] -> 2
    ([3, 99, 1, -50, 2], 2.0),
    # n=4: int(1.0)=1 per end -> [0 | 1,3 | 8] -> 2
    ([8, 1, 0, 3], 2.0),
    # n=3: int(0.75)=0, nothing dropped -> (1+2+9)/3 = 4
    ([1, 2, 9], 4.0),
    ([7.5], 7.5),
])
def test_iqm_trims_a_quarter_from_each_end(x, expected):
    assert stats.iqm(x) == expected


def test_iqm_reduces_along_an_axis():
    rows = np.array([[100, 7, 1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=float)
    assert stats.iqm(rows, axis=1).tolist() == [4.5, 1.0]


# bootstrap


def test_bootstrap_of_constant_and_single_scores_is_a_point():
    assert stats.bootstrap_ci([27.5, 27.5, 27.5, 27.5]) == (27.5, 27.5)
    assert stats.bootstrap_ci([31.25]) == (31.25, 31.25)
    # 0.1 is not representable: the point is whatever np.mean reports as the mean, zero width either way
    lo, hi = stats.bootstrap_ci([0.1, 0.1, 0.1])
    assert lo == hi == np.mean([0.1, 0.1, 0.1])


def test_bootstrap_regression_value_equals_a_naive_loop_on_the_same_draws():
    lo, hi = stats.bootstrap_ci(X, reps=1000, seed=0)
    assert (lo, hi) == pytest.approx((1.85, 7.18375), rel=1e-12)
    idx = np.random.default_rng(0).integers(0, len(X), size=(1000, len(X)))
    means = [naive_mean([X[i] for i in row]) for row in idx]
    assert (lo, hi) == pytest.approx(naive_interval(means, 0.95), rel=1e-12)


def test_bootstrap_of_iqm_equals_a_naive_loop():
    lo, hi = stats.bootstrap_ci(X, stats.iqm, reps=1000, seed=0, level=0.9)
    idx = np.random.default_rng(0).integers(0, len(X), size=(1000, len(X)))
    # n=6 drops int(1.5)=1 per end
    iqms = [naive_mean(sorted(X[i] for i in row)[1:-1]) for row in idx]
    assert (lo, hi) == pytest.approx(naive_interval(iqms, 0.9), rel=1e-12)


def test_bootstrap_is_a_function_of_its_seed():
    assert stats.bootstrap_ci(X, reps=1000, seed=3) == stats.bootstrap_ci(X, reps=1000, seed=3)
    assert stats.bootstrap_ci(X, reps=1000, seed=0) != stats.bootstrap_ci(X, reps=1000, seed=1)


def test_scores_must_be_finite_and_present():
    with pytest.raises(ValueError, match="at least one"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        stats.summarize([1.0, float("nan")])


def test_summarize():
    s = stats.summarize([1, 2, 3, 4], reps=1000, seed=0)
    # std ddof=1: deviations 1.5, .5, .5, 1.5 -> 5/3 -> sqrt(5/3)
    assert (s.n, s.mean, s.iqm) == (4, 2.5, 2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    assert (s.ci_low, s.ci_high) == stats.bootstrap_ci([1, 2, 3, 4], reps=1000, seed=0)
    assert (s.method, s.reps, s.seed, s.level) == ("percentile bootstrap", 1000, 0, 0.95)
    one = stats.summarize([24.0])
    assert math.isnan(one.std) and (one.ci_low, one.ci_high) == (24.0, 24.0)


# P(A > B)


@pytest.mark.parametrize("a, b, expected", [
    # a=1: beats none, ties none; a=2: ties b=2 twice; a=3: beats b=2 twice -> (2 + 0.5*2) / 9 = 1/3
    ([1, 2, 3], [2, 2, 4], 1 / 3),
    # the mirror: wins 2>1, 2>1, 4>1, 4>2, 4>3 = 5, ties 2 -> (5 + 0.5*2) / 9 = 2/3 = 1 - 1/3
    ([2, 2, 4], [1, 2, 3], 2 / 3),
    ([5, 5], [5, 5, 5], 0.5),  # all ties
    ([7, 8], [1, 2, 3], 1.0),
    ([1, 2, 3], [7, 8], 0.0),
])
def test_prob_improvement_counts_ties_half(a, b, expected):
    assert stats.prob_improvement(a, b) == pytest.approx(expected, abs=1e-15)


# permutation test


def test_exact_permutation_p_value():
    # C(6,3) = 20 relabelings; only [1,2,3]|[4,5,6] and [4,5,6]|[1,2,3] reach |diff| >= 3 -> 2/20
    assert stats.permutation_test([1, 2, 3], [4, 5, 6]) == (pytest.approx(0.1), "exact permutation")
    assert stats.permutation_test([1, 2, 3], [1, 2, 3]) == (1.0, "exact permutation")
    # unequal sizes: C(3,1)=3 relabelings of [0 | 1, 2]: |0 - 1.5|=1.5, |1 - 1|=0, |2 - 0.5|=1.5 -> 2/3
    assert stats.permutation_test([0], [1, 2])[0] == pytest.approx(2 / 3)


def test_monte_carlo_permutation_when_enumeration_is_too_large():
    a, b = np.arange(12.0), np.arange(12.0) + 100  # C(24,12) = 2704156 > 20000
    p, test = stats.permutation_test(a, b, reps=999, seed=0)
    # none of 999 random relabelings is the fully separated one (chance ~2/2.7M each): (0 + 1) / (999 + 1)
    assert (p, test) == (1 / 1000, "Monte-Carlo permutation")


def test_monte_carlo_p_value_equals_a_naive_count_on_the_same_draws():
    a = [0.3, 1.7, 2.2, 4.9, 10.6, 6.1, 3.3, 2.8, 5.5, 7.0]
    b = [x + 1.5 for x in reversed(a)]  # C(20,10) = 184756 > 20000
    p, test = stats.permutation_test(a, b, reps=999, seed=0)
    shuffled = np.random.default_rng(0).permuted(np.tile(a + b, (999, 1)), axis=1)
    observed = abs(naive_mean(a) - naive_mean(b))
    count = sum(abs(naive_mean(row[:10]) - naive_mean(row[10:])) >= observed - 1e-9 for row in shuffled)
    assert test == "Monte-Carlo permutation"
    assert p == pytest.approx((count + 1) / 1000) and p == pytest.approx(0.303)


def test_monte_carlo_agrees_with_exact(monkeypatch):
    a, b = np.arange(8.0), np.arange(8.0) + 3  # C(16,8) = 12870 -> exact
    exact, test = stats.permutation_test(a, b)
    assert test == "exact permutation"
    monkeypatch.setattr(stats, "EXACT_LIMIT", 0)
    mc, test = stats.permutation_test(a, b, reps=10_000, seed=0)
    assert test == "Monte-Carlo permutation"
    assert mc == pytest.approx(exact, abs=0.01)


# compare


def test_compare_fields_and_intervals_equal_a_naive_loop():
    a, b = [1.0, 2.0, 3.0, 6.0], [4.0, 5.0, 6.0]
    c = stats.compare(a, b, reps=500, seed=7, level=0.9)
    assert (c.n_a, c.n_b, c.mean_a, c.mean_b, c.diff) == (4, 3, 3.0, 5.0, -2.0)
    # of the 4*3=12 pairs only a=6 wins or ties: 6>4, 6>5, 6==6 -> (2 + 0.5) / 12
    assert c.p_improve == pytest.approx(2.5 / 12)
    assert (c.test, c.method, c.reps, c.seed, c.level, c.reason) == (
        "exact permutation", "percentile bootstrap", 500, 7, 0.9, None)
    assert c.p_value == stats.permutation_test(a, b)[0]
    rng = np.random.default_rng(7)
    ia, ib = rng.integers(0, 4, size=(500, 4)), rng.integers(0, 3, size=(500, 3))
    diffs, probs = [], []
    for ra, rb in zip(ia, ib):
        sa, sb = [a[i] for i in ra], [b[j] for j in rb]
        diffs.append(naive_mean(sa) - naive_mean(sb))
        probs.append(sum((x > y) + 0.5 * (x == y) for x in sa for y in sb) / 12)
    assert c.diff_ci == pytest.approx(naive_interval(diffs, 0.9), rel=1e-12)
    assert c.p_improve_ci == pytest.approx(naive_interval(probs, 0.9), rel=1e-12)


def test_compare_with_one_seed_gives_no_interval_and_says_why():
    c = stats.compare([25.0], [24.0, 24.5])
    assert c.diff == 0.75 and c.p_improve == 1.0
    assert all(math.isnan(v) for v in (*c.diff_ci, *c.p_improve_ci, c.p_value))
    assert c.test == "not run"
    assert "fewer than 2 seeds" in c.reason and "--confirm" in c.reason
    assert stats.verdict(c, 0.0) == stats.CANNOT_TELL


# Holm


def test_holm():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is kept and not counted: m=2 -> 0.01*2=0.02, 0.04*1=0.04
    out = stats.holm([0.01, float("nan"), 0.04])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.04])
    # capped at 1; tied inputs get the same value whatever their order
    assert stats.holm([0.5, 0.5, 0.9]).tolist() == [1.0, 1.0, 1.0]
    assert stats.holm([0.02, 0.02]).tolist() == [0.04, 0.04]
    assert stats.holm([]).size == 0


# noise and budget


def test_noise_floor_pools_within_group_variance():
    # [1,2,3]: sum sq dev 2 over 2 dof; [10,14]: 8 over 1 dof; [5] has no spread to give -> sqrt(10/3)
    assert stats.noise_floor([[1, 2, 3], [10, 14], [5]]) == pytest.approx(math.sqrt(10 / 3))
    assert math.isnan(stats.noise_floor([[5], [6]]))
    assert math.isnan(stats.noise_floor([]))


@pytest.mark.parametrize("diff, sigma, expected", [
    (1.0, 1.0, 16),  # 2 * (1.959964 + 0.841621)^2 = 15.698 -> 16
    (-1.0, 1.0, 16),
    (2.0, 1.0, 4),  # 15.698 / 4 = 3.92 -> 4
    (1.0, 0.1, 2),  # 0.157 -> at least 2
    (0.0, 1.0, math.inf),
])
def test_seeds_needed(diff, sigma, expected):
    assert stats.seeds_needed(diff, sigma) == expected


def test_seeds_needed_unknown_noise_and_other_alpha():
    assert math.isnan(stats.seeds_needed(1.0, float("nan")))
    # alpha=0.01: 2 * (2.575829 + 0.841621)^2 = 23.35 -> 24
    assert stats.seeds_needed(1.0, 1.0, alpha=0.01) == 24


# verdicts


def test_verdict_flips_at_alpha_and_min_effect():
    c = stats.compare([4, 5, 6], [1, 2, 3])  # diff 3; any resampled diff >= min(a) - max(b) = 1 > 0
    assert c.p_value == pytest.approx(0.1) and c.diff_ci[0] > 0
    assert stats.verdict(c, 0.1, alpha=0.1 + 1e-9) == stats.BETTER
    assert stats.verdict(c, 0.1, alpha=0.1 - 1e-9) == stats.CANNOT_TELL
    assert stats.verdict(c, 0.1, alpha=0.1) == stats.CANNOT_TELL  # strict: p < alpha
    assert stats.verdict(c, 0.1, alpha=0.2, min_effect=3.0) == stats.BETTER
    assert stats.verdict(c, 0.1, alpha=0.2, min_effect=3.0 + 1e-9) == stats.CANNOT_TELL
    mirror = stats.compare([1, 2, 3], [4, 5, 6])
    assert stats.verdict(mirror, 0.1, alpha=0.2) == stats.WORSE
    assert stats.verdict(mirror, 0.1, alpha=0.2, min_effect=3.0 + 1e-9) == stats.CANNOT_TELL


def test_verdict_needs_the_interval_to_exclude_zero():
    c = stats.compare([1, 2, 3, 10], [2, 3, 4])
    assert c.diff_ci[0] < 0 < c.diff_ci[1]
    assert stats.verdict(c, 0.0) == stats.CANNOT_TELL


def test_constants_the_report_prints():
    assert (stats.ALPHA, stats.LEVEL, stats.MIN_EFFECT_DB) == (0.05, 0.95, 0.0)
    assert stats.CANNOT_TELL == "cannot tell at this budget"


# many comparisons


def test_compare_many_holm_adjusts_across_pairs():
    pairs = {"kl: cyclical vs monotonic": ([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]),
             "lr: 2e-3 vs 1e-3": ([1.0, 2.0, 3.0, 6.0], [4.0, 5.0, 6.0]),
             "skips: on vs off": ([3.0], [1.0, 2.0]),
             "tfr: 1 vs 0.5": ([1.0, 2.0], [1.0, 2.0])}
    rows = stats.compare_many(pairs, reps=500, seed=0, alpha=0.2)
    assert [r.name for r in rows] == list(pairs)
    raw = [r.comparison.p_value for r in rows]
    assert np.allclose([r.p_adjusted for r in rows], stats.holm(raw), equal_nan=True)
    # 3 testable pairs: 0.1 * 3 = 0.3 -> no longer below alpha=0.2 once adjusted
    assert rows[0].comparison.p_value == pytest.approx(0.1) and rows[0].p_adjusted == pytest.approx(0.3)
    assert [r.verdict for r in rows] == [stats.CANNOT_TELL] * 4
    assert math.isnan(rows[2].p_adjusted) and "fewer than 2 seeds" in rows[2].comparison.reason
    for r, (a, b) in zip(rows, pairs.values()):
        assert r.sigma == stats.noise_floor([a, b])
        assert r.seeds_needed == stats.seeds_needed(r.comparison.diff, r.sigma, alpha=0.2)
        assert r.comparison == stats.compare(a, b, reps=500, seed=0)
    # identical arms: diff 0 -> no finite number of seeds resolves it
    assert rows[3].comparison.p_value == 1.0 and rows[3].seeds_needed == math.inf
    # alone, the first pair is not adjusted and is resolved at alpha=0.2
    alone = stats.compare_many({"kl": pairs["kl: cyclical vs monotonic"]}, reps=500, seed=0, alpha=0.2)
    assert alone[0].p_adjusted == pytest.approx(0.1) and alone[0].verdict == stats.BETTER
