"""Statistics of comparisons over per-seed scores: pure functions on arrays, no I/O, no plotting.

Follows rliable (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice"): IQM,
percentile-bootstrap intervals and P(A > B), with the method, repetitions and seed explicit. Every
random function takes `reps` and `seed` and draws from `np.random.default_rng(seed)`, so a report
rebuilt from the same runs prints the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from statistics import NormalDist
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

ALPHA = 0.05  # family-wise error rate, applied to Holm-adjusted p-values
LEVEL = 0.95  # confidence level of every interval
# No practical-effect threshold by default: the interval and the Holm-adjusted test already keep seed
# noise out of the verdicts, and any positive dB cut-off would be a judgement call per study.
MIN_EFFECT_DB = 0.0
REPS = 10_000  # bootstrap resamples and Monte-Carlo permutations
SEED = 0
EXACT_LIMIT = 20_000  # enumerate every relabeling when there are at most this many
METHOD = "percentile bootstrap"
EXACT, MONTE_CARLO, NOT_RUN = "exact permutation", "Monte-Carlo permutation", "not run"
BETTER, WORSE, CANNOT_TELL = "better", "worse", "cannot tell at this budget"

Stat = Callable[..., np.ndarray]

# helpers


def _scores(x: Sequence[float] | np.ndarray, allow_empty: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=float).reshape(-1)
    if a.size == 0 and not allow_empty:
        raise ValueError("need at least one score")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"scores must be finite (drop failed runs first): {a.tolist()}")
    return a


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])  # linear interpolation
    return float(lo), float(hi)


def _p_improve_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # a: (r, n_a), b: (r, n_b) -> (r,) P(A > B) per row, ties counted half
    gt = (a[:, :, None] > b[:, None, :]).sum(axis=(1, 2))
    eq = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))
    return (gt + 0.5 * eq) / (a.shape[1] * b.shape[1])


def _mean_diff_rows(pooled_rows: np.ndarray, n_a: int) -> np.ndarray:
    return pooled_rows[:, :n_a].mean(axis=1) - pooled_rows[:, n_a:].mean(axis=1)


def _sum_sq_dev(x: np.ndarray) -> float:
    return float(((x - x.mean()) ** 2).sum())


# one sample


def iqm(x: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: sort, drop int(0.25 * n) values from each end, average the rest."""
    # scipy.stats.trim_mean(x, 0.25) semantics, as rliable's aggregate_iqm: n=8 drops 2 per end,
    # n=5 drops 1, n < 4 drops nothing (plain mean). Reduces along `axis` so it can be a bootstrap stat.
    s = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = s.shape[axis]
    k = int(0.25 * n)
    return np.take(s, np.arange(k, n - k), axis=axis).mean(axis=axis)


def bootstrap_ci(x: Sequence[float] | np.ndarray, stat: Stat = np.mean, *, reps: int = REPS, seed: int = SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of stat(x): `reps` resamples with replacement, one rng draw."""
    # `stat` must reduce along an `axis` keyword (np.mean, np.median, iqm).
    x = _scores(x)
    if np.all(x == x[0]):  # n == 1 or constant: every resample is x itself, the interval is a point
        v = float(stat(x, axis=-1))
        return v, v
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(reps, x.size))
    return _percentile_interval(stat(x[idx], axis=1), level)


@dataclass(frozen=True)
class Summary:
    """One setting's per-seed scores: centre, spread and a bootstrap interval of the mean."""

    n: int
    mean: float
    std: float
    """sample standard deviation (ddof=1); NaN when n < 2"""
    iqm: float
    ci_low: float
    ci_high: float
    """interval of the mean"""
    method: str
    reps: int
    seed: int
    level: float


def summarize(x: Sequence[float] | np.ndarray, *, reps: int = REPS, seed: int = SEED, level: float = LEVEL) -> Summary:
    """Mean, sample std, IQM and a percentile-bootstrap interval of the mean of one setting's scores."""
    x = _scores(x)
    std = float(np.std(x, ddof=1)) if x.size >= 2 else math.nan
    lo, hi = bootstrap_ci(x, np.mean, reps=reps, seed=seed, level=level)
    return Summary(n=int(x.size), mean=float(x.mean()), std=std, iqm=float(iqm(x)), ci_low=lo, ci_high=hi,
                   method=METHOD, reps=reps, seed=seed, level=level)


# two samples


def prob_improvement(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """P(A > B) = (#{a_i > b_j} + 0.5 #{a_i == b_j}) / (n_a n_b), the Mann-Whitney form."""
    a, b = _scores(a), _scores(b)
    return float(_p_improve_rows(a[None], b[None])[0])


def permutation_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, reps: int = REPS,
                     seed: int = SEED) -> tuple[float, str]:
    """Two-sided permutation p-value of mean(a) - mean(b), and which test gave it."""
    # Exact over all C(n_a+n_b, n_a) relabelings when <= EXACT_LIMIT (p = count / C, the observed one
    # included); else `reps` random relabelings with p = (count + 1) / (reps + 1).
    a, b = _scores(a), _scores(b)
    pooled, n_a = np.concatenate([a, b]), a.size
    observed = abs(_mean_diff_rows(pooled[None], n_a)[0])
    tol = 1e-12 * float(np.abs(pooled).max())  # relabelings that tie the observed one up to rounding
    if math.comb(pooled.size, n_a) <= EXACT_LIMIT:
        chosen = np.array(list(combinations(range(pooled.size), n_a)))
        in_a = np.zeros((len(chosen), pooled.size), dtype=bool)
        in_a[np.arange(len(chosen))[:, None], chosen] = True
        order = np.argsort(~in_a, axis=1, kind="stable")  # group A's indices first, then B's
        count = int((np.abs(_mean_diff_rows(pooled[order], n_a)) >= observed - tol).sum())
        return count / len(order), EXACT
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(pooled, (reps, 1)), axis=1)
    count = int((np.abs(_mean_diff_rows(shuffled, n_a)) >= observed - tol).sum())
    return (count + 1) / (reps + 1), MONTE_CARLO


@dataclass(frozen=True)
class Comparison:
    """Setting A against setting B over their per-seed scores (positive diff: A scores higher)."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    """mean_a - mean_b"""
    diff_ci: tuple[float, float]
    """percentile bootstrap, a and b resampled independently; NaN when a side has < 2 seeds"""
    p_improve: float
    """P(A > B), ties counted half"""
    p_improve_ci: tuple[float, float]
    """percentile bootstrap over the same resamples as diff_ci"""
    p_value: float
    """two-sided permutation test of the difference of means, not adjusted for multiplicity"""
    test: str
    method: str
    reps: int
    seed: int
    level: float
    reason: str | None = None
    """why no interval or test was computed, else None"""


def compare(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, reps: int = REPS, seed: int = SEED,
            level: float = LEVEL) -> Comparison:
    """Difference of means, P(A > B), their bootstrap intervals, and a permutation p-value."""
    a, b = _scores(a), _scores(b)
    common = dict(n_a=int(a.size), n_b=int(b.size), mean_a=float(a.mean()), mean_b=float(b.mean()),
                  diff=float(a.mean() - b.mean()), p_improve=prob_improvement(a, b), method=METHOD, reps=reps,
                  seed=seed, level=level)
    if a.size < 2 or b.size < 2:
        nan2 = (math.nan, math.nan)
        reason = (f"fewer than 2 seeds ({a.size} vs {b.size}): a single run cannot separate a setting from "
                  "seed noise; rerun with more seeds (`--confirm`)")
        return Comparison(**common, diff_ci=nan2, p_improve_ci=nan2, p_value=math.nan, test=NOT_RUN, reason=reason)
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, a.size, size=(reps, a.size))]
    rb = b[rng.integers(0, b.size, size=(reps, b.size))]
    p_value, test = permutation_test(a, b, reps=reps, seed=seed)
    return Comparison(**common, diff_ci=_percentile_interval(ra.mean(axis=1) - rb.mean(axis=1), level),
                      p_improve_ci=_percentile_interval(_p_improve_rows(ra, rb), level), p_value=p_value,
                      test=test)


# many comparisons


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values in the input order; NaN stays NaN, not counted in m."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    stepped = (m - np.arange(m)) * p[order]  # k-th smallest (0-based) times m - k
    out[order] = np.minimum(np.maximum.accumulate(stepped), 1.0)
    return out


def noise_floor(groups: Iterable[Sequence[float] | np.ndarray]) -> float:
    """Pooled within-configuration std: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over groups with n_i >= 2."""
    gs = [g for g in (_scores(g, allow_empty=True) for g in groups) if g.size >= 2]
    dof = sum(g.size - 1 for g in gs)
    if dof == 0:
        return math.nan
    return math.sqrt(sum(_sum_sq_dev(g) for g in gs) / dof)


def seeds_needed(diff: float, sigma: float, *, alpha: float = ALPHA, power: float = 0.8) -> float:
    """Seeds per arm to resolve `diff` under per-run noise `sigma`: ceil(2 ((z_{1-a/2} + z_power) sigma / diff)^2)."""
    # Normal approximation of a two-sided two-sample test; at least 2, inf when diff == 0.
    if math.isnan(diff) or math.isnan(sigma):
        return math.nan
    if diff == 0:
        return math.inf
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    n = 2 * (z * sigma / abs(diff)) ** 2
    return float(max(2, math.ceil(n - 1e-9)))  # the slack keeps rounding error from adding a seed


def verdict(cmp: Comparison, p_adjusted: float, *, alpha: float = ALPHA, min_effect: float = MIN_EFFECT_DB) -> str:
    """BETTER/WORSE iff >= 2 seeds a side, p_adjusted < alpha, diff_ci excludes 0 and |diff| >= min_effect."""
    if cmp.n_a < 2 or cmp.n_b < 2 or not p_adjusted < alpha:
        return CANNOT_TELL
    lo, hi = cmp.diff_ci
    if lo > 0 and cmp.diff >= min_effect:
        return BETTER
    if hi < 0 and -cmp.diff >= min_effect:
        return WORSE
    return CANNOT_TELL


@dataclass(frozen=True)
class Row:
    """One named comparison of a study's report, with its multiplicity-adjusted verdict."""

    name: str
    comparison: Comparison
    p_adjusted: float
    """Holm-adjusted over every pair passed to compare_many together"""
    verdict: str
    sigma: float
    """pooled within-arm std of the two arms"""
    seeds_needed: float
    """seeds per arm to resolve the observed diff at this noise (alpha, power 0.8)"""
    alpha: float
    min_effect: float


def compare_many(pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, reps: int = REPS,
                 seed: int = SEED, level: float = LEVEL, alpha: float = ALPHA,
                 min_effect: float = MIN_EFFECT_DB) -> list[Row]:
    """Compare each named (a, b) pair, Holm-adjust across all of them, and give each a verdict."""
    # Every pair uses the same seed, so a pair's intervals do not depend on which other pairs are given.
    cmps = {name: compare(a, b, reps=reps, seed=seed, level=level) for name, (a, b) in pairs.items()}
    adjusted = holm([c.p_value for c in cmps.values()])
    rows = []
    for (name, c), p_adj in zip(cmps.items(), adjusted):
        sigma = noise_floor(pairs[name])
        rows.append(Row(name=name, comparison=c, p_adjusted=float(p_adj),
                        verdict=verdict(c, float(p_adj), alpha=alpha, min_effect=min_effect), sigma=sigma,
                        seeds_needed=seeds_needed(c.diff, sigma, alpha=alpha), alpha=alpha, min_effect=min_effect))
    return rows
