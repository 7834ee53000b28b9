"""sweeps.stats: exact values on hand-made per-seed scores, and the vectorised code against its definition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sweeps import stats

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


@pytest.mark.parametrize(
    "x, expected",
    [
        # n=8: int(0.25*8)=2 dropped per end -> sorted [1,2 | 3,4,5,6 | 7,100] -> (3+4+5+6)/4 = 4.5
        ([100, 7, 1, 2, 3, 4, 5, 6], 4.5),
        # n=5: int(1.25)=1 dropped per end -> [-50 | 1,2,3 | 99] -> 2
        ([3, 99, 1, -50, 2], 2.0),
        # n=4: int(1.0)=1 per end -> [0 | 1,3 | 8] -> 2
        ([8, 1, 0, 3], 2.0),
        # n=3: int(0.75)=0, nothing dropped -> (1+2+9)/3 = 4
        ([1, 2, 9], 4.0),
        ([7.5], 7.5),
    ],
)
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


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # a=1: beats none, ties none; a=2: ties b=2 twice; a=3: beats b=2 twice -> (2 + 0.5*2) / 9 = 1/3
        ([1, 2, 3], [2, 2, 4], 1 / 3),
        # the mirror: wins 2>1, 2>1, 4>1, 4>2, 4>3 = 5, ties 2 -> (5 + 0.5*2) / 9 = 2/3 = 1 - 1/3
        ([2, 2, 4], [1, 2, 3], 2 / 3),
        ([5, 5], [5, 5, 5], 0.5),  # all ties
        ([7, 8], [1, 2, 3], 1.0),
        ([1, 2, 3], [7, 8], 0.0),
    ],
)
def test_prob_improvement_counts_ties_half(a, b, expected):
    assert stats.prob_improvement(a, b) == pytest.approx(expected, abs=1e-15)


def test_paired_prob_improvement_is_the_share_of_seeds_won():
    # seeds won 2 (0.5, 1), tied 1 (0), lost 1 (-2): (2 + 0.5) / 4
    assert stats.prob_improvement_paired([0.5, 0.0, -2.0, 1.0]) == 0.625


# t estimates: paired and Welch, by hand


def test_paired_estimate_by_hand():
    # d = [1, 1, 2.5]: mean 1.5, sd = sqrt((0.25 + 0.25 + 1) / 2) = sqrt(0.75), se = sd / sqrt(3) = 0.5
    e = stats.paired_estimate([1, 2, 3.5], [0, 1, 1])
    assert (e.diff, e.se, e.df, e.n_a, e.n_b, e.test, e.paired) == (
        1.5,
        pytest.approx(0.5),
        2.0,
        3,
        3,
        "paired t",
        True,
    )
    assert e.sd_unit == pytest.approx(math.sqrt(0.75))
    # t = 3 on 2 df: two-sided p = 1 - 3 / sqrt(3^2 + 2) = 1 - 3/sqrt(11) (closed form of the t(2) cdf)
    assert stats.p_two_sided(e) == pytest.approx(1 - 3 / math.sqrt(11), rel=1e-12)
    # t(2) quantile 0.975 = 4.302653: 1.5 +- 4.302653 * 0.5
    assert stats.interval(e) == pytest.approx((1.5 - 2.1513265, 1.5 + 2.1513265), abs=1e-6)
    with pytest.raises(ValueError, match="aligned"):
        stats.paired_estimate([1, 2], [1, 2, 3])


def test_one_sample_estimate_by_hand():
    # the d above plus 1: the same se and interval half-width, around the sample's own mean 2.5
    e = stats.mean_estimate([2, 2, 3.5])
    assert (e.diff, e.se, e.df, e.test, e.paired) == (2.5, pytest.approx(0.5), 2.0, "one-sample t", False)
    assert stats.interval(e) == pytest.approx((2.5 - 2.1513265, 2.5 + 2.1513265), abs=1e-6)
    with pytest.raises(ValueError, match=">= 2 seeds"):
        stats.mean_estimate([1.0])


def test_pairing_removes_the_shared_seed_effect():
    seed_effect = np.array([-1.0, 0.5, 2.0, -0.3, 0.8])
    a, b = 25 + seed_effect + [0.31, 0.29, 0.30, 0.32, 0.28], 25 + seed_effect
    paired, unpaired = stats.paired_estimate(a, b), stats.welch_estimate(a, b)
    assert paired.diff == pytest.approx(unpaired.diff) == pytest.approx(0.3)
    assert stats.p_two_sided(paired) < 1e-5 < 0.5 < stats.p_two_sided(unpaired)


def test_welch_estimate_by_hand():
    # a: mean 2, var 1 -> 1/3; b: mean 5, var 20/3 -> 5/3; se = sqrt(2); df = 2^2 / ((1/3)^2/2 + (5/3)^2/3)
    e = stats.welch_estimate([1, 2, 3], [2, 4, 6, 8])
    assert (e.diff, e.test, e.paired, e.n_a, e.n_b) == (-3.0, "Welch t", False, 3, 4)
    assert e.se == pytest.approx(math.sqrt(2)) and e.df == pytest.approx(4 / (1 / 18 + 25 / 27))
    with pytest.raises(ValueError, match=">= 2 seeds"):
        stats.welch_estimate([1.0], [1.0, 2.0])


def test_no_spread_makes_any_difference_certain_and_none_impossible():
    e = stats.paired_estimate([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert e.se == 0 and stats.p_two_sided(e) == 0.0 and stats.p_tost(e, 0.5) == (0.0, 1.0)
    same = stats.paired_estimate([2.0, 3.0], [2.0, 3.0])
    assert stats.p_two_sided(same) == 1.0 and stats.p_tost(same, 0.5) == (0.0, 0.0)


# TOST at the margin


def test_tost_p_is_one_half_exactly_at_the_margin_and_symmetric():
    # d = [0.8, 1.2]: mean 1.0 = the margin: the upper one-sided statistic is 0 -> p = 0.5 on any df
    e = stats.paired_estimate([1.8, 2.2], [1.0, 1.0])
    lower, upper = stats.p_tost(e, 1.0)
    assert upper == pytest.approx(0.5) and lower < 0.05
    mirror = stats.paired_estimate([1.0, 1.0], [1.8, 2.2])
    assert stats.p_tost(mirror, 1.0) == pytest.approx((upper, lower))


def test_tost_equivalence_iff_the_90_interval_lies_inside_the_margin():
    rng = np.random.default_rng(3)
    for _ in range(200):
        d = rng.normal(rng.uniform(-1, 1), 0.4, size=5)
        e = stats.paired_estimate(d, np.zeros(5))
        lo, hi = stats.interval(e, 0.90)
        inside = -0.8 < lo and hi < 0.8
        assert (max(stats.p_tost(e, 0.8)) < 0.05) == inside


# sign flips


def test_exact_sign_flip_p_values():
    # [1, 2, 3]: 8 flips; |mean| >= 2 only for all + and all - -> 2/8: the floor 2 / 2^n
    assert stats.sign_flip_p([1, 2, 3]) == 0.25
    # [1, -2, 3, 4, 5]: |sum| >= 11 for sums 11, 13, 15 and their negatives: (+1-2+3+4+5=11), (+1+2+3+4+5=15),
    # (-1+2+3+4+5=13) -> 6 of 32
    assert stats.sign_flip_p([1, -2, 3, 4, 5]) == 6 / 32
    assert stats.sign_flip_p([0.0, 0.0]) == 1.0


def test_monte_carlo_sign_flips_beyond_the_exact_limit(monkeypatch):
    d = np.array([0.4, -0.1, 0.3, 0.5, 0.2, -0.2, 0.6, 0.1])
    exact = stats.sign_flip_p(d)
    monkeypatch.setattr(stats, "EXACT_FLIPS", 4)
    assert stats.sign_flip_p(d, reps=20_000, seed=0) == pytest.approx(exact, abs=0.01)


# the arithmetic against scipy.stats on fixed data

A5 = [23.1, 22.7, 23.4, 22.9, 23.3]
B5 = [22.8, 22.9, 22.6, 22.4, 23.0]
C4 = [21.9, 22.5, 22.2, 23.6]


def test_paired_t_p_value_and_interval_match_scipy():
    e, ref = stats.paired_estimate(A5, B5), scipy_stats.ttest_rel(A5, B5)
    assert stats.p_two_sided(e) == pytest.approx(ref.pvalue, rel=1e-10)
    for level in (0.95, 0.9, 0.99):
        assert stats.interval(e, level) == pytest.approx(tuple(ref.confidence_interval(level)), rel=1e-10)


def test_welch_and_one_sample_t_match_scipy():
    e, ref = stats.welch_estimate(A5, C4), scipy_stats.ttest_ind(A5, C4, equal_var=False)
    assert stats.p_two_sided(e) == pytest.approx(ref.pvalue, rel=1e-10)
    assert stats.interval(e, 0.95) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-10)
    e, ref = stats.mean_estimate(C4), scipy_stats.ttest_1samp(C4, 0.0)
    assert stats.p_two_sided(e) == pytest.approx(ref.pvalue, rel=1e-10)
    assert stats.interval(e, 0.9) == pytest.approx(tuple(ref.confidence_interval(0.9)), rel=1e-10)


@pytest.mark.parametrize("margin", [0.25, 0.5, 1.0])
def test_tost_matches_two_one_sided_scipy_tests(margin):
    d = np.subtract(A5, B5)
    lower, upper = stats.p_tost(stats.paired_estimate(A5, B5), margin)
    assert lower == pytest.approx(scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue, rel=1e-10)
    assert upper == pytest.approx(scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue, rel=1e-10)
    lower, upper = stats.p_tost(stats.welch_estimate(A5, C4), margin)
    shifted = np.asarray(A5)  # Welch TOST: A - margin vs B (upper), A + margin vs B (lower)
    assert lower == pytest.approx(
        scipy_stats.ttest_ind(shifted + margin, C4, equal_var=False, alternative="greater").pvalue, rel=1e-10
    )
    assert upper == pytest.approx(
        scipy_stats.ttest_ind(shifted - margin, C4, equal_var=False, alternative="less").pvalue, rel=1e-10
    )


def test_discordance_bound_by_hand():
    # one cell: a seed is discordant when exactly one side fails: 2 p (1 - p), at most 1/2; two cells, independent
    # failures at p = 1/2: ties are (1/16)^2... sum_j Bin(j; 2, 1/2)^2 = 1/16 + 4/16 + 1/16 = 3/8, so 5/8
    assert stats.discordance_bound(1) == pytest.approx(0.5) and stats.discordance_bound(2) == pytest.approx(5 / 8)


def test_paired_failure_test_by_hand():
    # all n seeds one way: 2 (psi / 2)^n at the bound psi = 1/2: 2 / 4^n
    assert stats.failure_test_paired(3, 0, 3) == pytest.approx(2 / 64)
    assert stats.failure_test_paired(0, 5, 5) == pytest.approx(2 / 1024) == stats.failure_test_paired_min_p(5)
    # 4 of 5 one way, one seed concordant: |S| >= 4 is S = +-5 or +-4 (four one way and a tie):
    # 2 (1/4^5 + 5 (1/4)^4 (1/2)) = 22 / 1024
    assert stats.failure_test_paired(4, 0, 5) == pytest.approx(22 / 1024)
    assert stats.failure_test_paired(2, 2, 5) == 1.0 and stats.failure_test_paired(0, 0, 5) == 1.0


@pytest.mark.parametrize("seeds, cells", [(3, 1), (4, 2), (5, 2)])
def test_paired_failure_test_against_brute_force_enumeration(seeds, cells):
    # every sequence of seeds (+1, -1 or 0 each), at the bound: an independent count of the same tail
    psi = stats.discordance_bound(cells)
    prob = {1: psi / 2, -1: psi / 2, 0: 1 - psi}
    for more_a, more_b in ((seeds, 0), (seeds - 1, 0), (1, 0), (seeds - 1, 1)):
        t = abs(more_a - more_b)
        tail = sum(
            math.prod(prob[x] for x in seq) for seq in itertools.product((1, -1, 0), repeat=seeds) if abs(sum(seq)) >= t
        )
        assert stats.failure_test_paired(more_a, more_b, seeds, cells) == pytest.approx(min(1.0, tail), rel=1e-9)


def test_paired_failure_test_keeps_its_level_where_the_bound_is_reached():
    # two cells a side, every run failing independently with probability 1/2: the most discordant null there is
    rng = np.random.default_rng(2)
    for seeds in (5, 8):
        fail = rng.random((20_000, seeds, 2, 2)) < 0.5  # study, seed, side, cell
        sums = fail.sum(axis=3)
        more_a, more_b = (sums[:, :, 0] > sums[:, :, 1]).sum(1), (sums[:, :, 1] > sums[:, :, 0]).sum(1)
        p = np.array([stats.failure_test_paired(int(x), int(y), seeds, 2) for x, y in zip(more_a, more_b)])
        assert (p <= 0.05).mean() <= 0.05 + 0.0046  # 3 standard errors of 20,000 studies


@pytest.mark.parametrize("k, n", [(0, 5), (3, 5), (5, 5), (1, 12), (4, 16)])
def test_failure_interval_is_clopper_pearson(k, n):
    ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert stats.failure_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    with pytest.raises(ValueError):
        stats.failure_interval(6, 5)


def test_unpaired_failure_test_by_hand():
    # k of k against 0 of k: only that table and its mirror are as extreme; sup over the common rate p of
    # 2 p^k (1 - p)^k is 2 / 4^k at p = 1/2
    for k in (2, 3):
        assert stats.failure_test_unpaired(k, k, 0, k) == pytest.approx(2 / 4**k, rel=1e-6)
        assert stats.failure_test_unpaired(0, k, k, k) == pytest.approx(2 / 4**k, rel=1e-6)
        assert stats.failure_test_unpaired_min_p(k, k) == pytest.approx(2 / 4**k, rel=1e-6)
    assert stats.failure_test_unpaired(0, 5, 0, 5) == 1.0 and stats.failure_test_unpaired(5, 5, 5, 5) == 1.0


def test_exact_sign_flip_p_matches_scipys_permutation_test():
    d = np.subtract(A5, B5)
    ref = scipy_stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert stats.sign_flip_p(d) == pytest.approx(ref.pvalue, rel=1e-12)


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
    # a family of 3 with one member outside the list (closed as equivalent earlier): m = 3, not 2
    assert stats.holm([0.01, 0.02], m=3) == pytest.approx([0.03, 0.04])
    with pytest.raises(ValueError, match="family"):
        stats.holm([0.01, 0.02], m=1)


# noise and budget


def test_tarone_holm_is_holm_when_every_test_is_continuous():
    rng = np.random.default_rng(0)
    for _ in range(100):
        p = rng.random(5) ** 3
        for held in (0, 2):
            rejected, adjusted = stats.tarone_holm(p, np.zeros(5), 0.05, held=held)
            assert adjusted == pytest.approx(stats.holm(p, m=5 + held)) and (rejected == (adjusted <= 0.05)).all()


def test_tarone_leaves_out_an_exact_test_that_cannot_reach_its_level():
    # a sign test on 4 discordant seeds cannot go below 2/16 = 0.125: it does not dilute the two t tests
    rejected, adjusted = stats.tarone_holm([0.02, 0.125, 0.024], [0.0, 0.125, 0.0], 0.05)
    assert rejected.tolist() == [True, False, True] and adjusted.tolist() == pytest.approx([0.04, 0.125, 0.04])
    assert stats.holm([0.02, 0.125, 0.024]).tolist() == pytest.approx([0.06, 0.125, 0.06])  # Holm would not
    # on 6 discordant seeds (2/64 = 0.031) it can reach alpha / 1 but not alpha / 2: Tarone's family is 2
    rejected, _ = stats.tarone_holm([0.02, 0.031, 0.024], [0.0, 0.031, 0.0], 0.05)
    assert rejected.tolist() == [True, True, True]
    rejected, _ = stats.tarone_holm([0.03, 0.031], [0.0, 0.031], 0.05)  # alpha / 2 = 0.025 < 0.03: nothing
    assert rejected.tolist() == [False, False]
    assert stats.tarone_holm([math.nan, 0.01], [0.0, 0.0], 0.05)[0].tolist() == [False, True]


def test_noise_floor_pools_within_group_variance():
    # [1,2,3]: sum sq dev 2 over 2 dof; [10,14]: 8 over 1 dof; [5] has no spread to give -> sqrt(10/3)
    assert stats.noise_floor([[1, 2, 3], [10, 14], [5]]) == pytest.approx(math.sqrt(10 / 3))
    assert math.isnan(stats.noise_floor([[5], [6]]))
    assert math.isnan(stats.noise_floor([]))


# runs it would take


def test_seeds_to_decide_follows_the_t_tests():
    e = stats.paired_estimate([1.0, 2.0, 1.5, 0.5], [0.0, 0.0, 0.0, 0.0])  # diff 1.25, sd 0.645
    n = stats.seeds_to_decide(e, margin=0.5, alpha_diff=0.05, alpha_equiv=0.05)
    sd = e.sd_unit
    from scipy import stats as ss

    reach = lambda k: (ss.t.ppf(0.975, k - 1) + ss.t.ppf(0.8, k - 1)) * sd / math.sqrt(k)  # noqa: E731
    assert reach(n) <= 1.25 < reach(n - 1)
    # inside the margin: equivalence is the nearer verdict
    small = stats.paired_estimate([0.1, -0.1, 0.05, 0.0], [0, 0, 0, 0])
    assert stats.seeds_to_decide(small, 1.0, alpha_diff=0.05, alpha_equiv=0.05) == 2
    zero = stats.paired_estimate([0.3, -0.3], [0, 0])
    assert stats.seeds_to_decide(zero, 0.0001, alpha_diff=0.05, alpha_equiv=0.05) == math.inf


def test_constants_the_report_prints():
    assert (stats.ALPHA, stats.LEVEL) == (0.05, 0.95)
    assert (stats.PAIRED_T, stats.WELCH_T) == ("paired t", "Welch t")
