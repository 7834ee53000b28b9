"""Statistics of comparisons over per-seed scores: pure functions on arrays, no I/O, no plotting.

One setting: mean, IQM and a percentile-bootstrap interval, as rliable (Agarwal et al. 2021). Two settings:
a difference of means with a t reference, paired by seed where the two sides share seeds (common random
numbers: the same initial weights, batches and teacher-forcing coins), Welch's unpaired form where they do
not. The t reference, not a permutation or sign-flip test, decides: with 3-6 seeds those tests cannot go
below p = 2 / 2^n (0.25 at n = 3), whatever the data; the exact sign-flip p is reported beside it as a
check. Repeated looks at a growing study use a group-sequential boundary (Wang & Tsiatis 1987; Pocock
1977 at shape 0.5), and equivalence is TOST (Schuirmann 1987). Every random function takes `reps` and
`seed`, so a report rebuilt from the same runs prints the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import special

ALPHA = 0.05  # family-wise error rate of better/worse; per-comparison error rate of "equivalent"
LEVEL = 0.95  # confidence level of the single-look intervals (settings, paired vs unpaired widths)
POWER = 0.8  # of the "runs it would take" hints
REPS = 10_000  # bootstrap resamples and Monte-Carlo sign flips
SEED = 0
EXACT_FLIPS = 16  # enumerate all 2^n sign flips up to this many pairs
PSI_STEPS = 400  # grid of the discordance rate over which the paired failure test takes its largest p
METHOD = "percentile bootstrap"
PAIRED_T, WELCH_T, ONE_SAMPLE_T = "paired t", "Welch t", "one-sample t"

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


def bootstrap_ci(
    x: Sequence[float] | np.ndarray, stat: Stat = np.mean, *, reps: int = REPS, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float]:
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
    return Summary(
        n=int(x.size),
        mean=float(x.mean()),
        std=std,
        iqm=float(iqm(x)),
        ci_low=lo,
        ci_high=hi,
        method=METHOD,
        reps=reps,
        seed=seed,
        level=level,
    )


# two samples


def prob_improvement(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """P(A > B) = (#{a_i > b_j} + 0.5 #{a_i == b_j}) / (n_a n_b), the Mann-Whitney form (unpaired)."""
    a, b = _scores(a), _scores(b)
    gt = (a[:, None] > b[None, :]).sum()
    eq = (a[:, None] == b[None, :]).sum()
    return float((gt + 0.5 * eq) / (a.size * b.size))


def prob_improvement_paired(d: Sequence[float] | np.ndarray) -> float:
    """P(A > B) in paired form: the share of seeds on which A beat B (ties count half)."""
    d = _scores(d)
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


@dataclass(frozen=True)
class Estimate:
    """A difference of means (A - B) with its standard error and t degrees of freedom."""

    diff: float
    se: float
    df: float
    n_a: int
    n_b: int
    """paired: both are the number of pairs"""
    test: str
    """PAIRED_T, WELCH_T or ONE_SAMPLE_T (then diff is the mean itself)"""

    @property
    def paired(self) -> bool:
        return self.test == PAIRED_T

    @property
    def sd_unit(self) -> float:
        """The standard deviation one more seed per side divides by sqrt(n): se * sqrt(n)."""
        n = self.n_a if self.paired else 2 / (1 / self.n_a + 1 / self.n_b)
        return self.se * math.sqrt(n)


def mean_estimate(x: Sequence[float] | np.ndarray, test: str = ONE_SAMPLE_T) -> Estimate:
    """The mean of one sample, se = sd / sqrt(n), df = n - 1 (needs n >= 2)."""
    x = _scores(x)
    if x.size < 2:
        raise ValueError(f"a t estimate needs >= 2 seeds, got {x.size}")
    return Estimate(
        diff=float(x.mean()),
        se=float(x.std(ddof=1) / math.sqrt(x.size)),
        df=float(x.size - 1),
        n_a=int(x.size),
        n_b=int(x.size),
        test=test,
    )


def paired_estimate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Estimate:
    """Mean of the per-seed differences a_k - b_k, se = sd(d) / sqrt(n), df = n - 1 (needs n >= 2)."""
    a, b = _scores(a), _scores(b)
    if a.size != b.size or a.size < 2:
        raise ValueError(f"paired estimate needs two aligned samples of >= 2 seeds, got {a.size} and {b.size}")
    return mean_estimate(a - b, PAIRED_T)


def welch_estimate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Estimate:
    """mean(a) - mean(b), se = sqrt(s_a^2/n_a + s_b^2/n_b), Welch-Satterthwaite df (needs >= 2 per side)."""
    a, b = _scores(a), _scores(b)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch estimate needs >= 2 seeds per side, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    df = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se2 > 0 else float(a.size + b.size - 2)
    return Estimate(
        diff=float(a.mean() - b.mean()),
        se=float(math.sqrt(se2)),
        df=float(df),
        n_a=int(a.size),
        n_b=int(b.size),
        test=WELCH_T,
    )


def _t_stat(diff: float, se: float) -> float:
    if se > 0:
        return diff / se
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)  # no spread: any nonzero difference is certain


def p_two_sided(e: Estimate) -> float:
    """Two-sided t p-value of A - B == 0."""
    return float(2 * special.stdtr(e.df, -abs(_t_stat(e.diff, e.se))))


def p_tost(e: Estimate, margin: float) -> tuple[float, float]:
    """One-sided t p-values of TOST (Schuirmann 1987): (of A - B <= -margin, of A - B >= +margin)."""
    return (
        float(special.stdtr(e.df, -_t_stat(e.diff + margin, e.se))),
        float(special.stdtr(e.df, _t_stat(e.diff - margin, e.se))),
    )


def interval(e: Estimate, level: float = LEVEL) -> tuple[float, float]:
    """Two-sided t interval of A - B at `level`."""
    h = float(special.stdtrit(e.df, (1 + level) / 2)) * e.se
    return e.diff - h, e.diff + h


def sign_flip_p(d: Sequence[float] | np.ndarray, *, reps: int = REPS, seed: int = SEED) -> float:
    """Two-sided sign-flip permutation p of mean(d) == 0: exact over all 2^n flips up to EXACT_FLIPS pairs,
    else (count + 1) / (reps + 1) over `reps` random flips. Its floor is 2 / 2^n: 0.25 at n = 3."""
    d = _scores(d)
    observed = abs(d.mean())
    tol = 1e-12 * float(np.abs(d).max() or 1.0)
    if d.size <= EXACT_FLIPS:
        signs = 1 - 2 * ((np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1)
        return float((np.abs(signs @ d / d.size) >= observed - tol).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(reps, d.size))
    return float(((np.abs(signs @ d / d.size) >= observed - tol).sum() + 1) / (reps + 1))


# failures: rates and their comparison


def failure_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) interval of a failure rate seen k times in n runs."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    lo = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, (1 - level) / 2))
    hi = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, (1 + level) / 2))
    return lo, hi


@lru_cache(maxsize=16)
def discordance_bound(cells: int) -> float:
    """The largest chance that a seed is discordant (one side failing more of its `cells` runs on it than the
    other side) when both sides fail alike and a seed's failures on one side do not make the other side's less
    likely: 1 - min over p of sum_j Bin(j; cells, p)^2, reached with independent failures at p = 1/2 (1/2 for
    one cell, 5/8 for two)."""
    p = np.linspace(0.0, 1.0, 2001)[:, None]
    j = np.arange(cells + 1)[None, :]
    pmf = special.comb(cells, j) * p**j * (1 - p) ** (cells - j)
    return float(1 - (pmf**2).sum(axis=1).min())


@lru_cache(maxsize=4096)
def failure_test_paired(more_a: int, more_b: int, seeds: int, cells: int = 1) -> float:
    """Two-sided exact test of failure rates on paired seeds: `more_a` of `seeds` seeds on which side A failed more
    of the question's `cells` runs than side B, `more_b` the other way. With no difference each seed is discordant
    one way or the other with the same chance psi/2; the p-value is the largest chance, over psi up to
    discordance_bound(cells), of a difference between the two counts at least the one seen: an unconditional
    exact test (Suissa & Shuster 1991) whose nuisance is bounded by the assumption, instead of conditioned away
    as McNemar's test does (that one cannot go below 2/2^5 = 0.0625 on five seeds, whatever they show)."""
    t = abs(more_a - more_b)
    if t == 0 or seeds < 1:
        return 1.0
    psi = np.linspace(0.0, discordance_bound(cells), PSI_STEPS + 1)[1:]
    total = np.zeros_like(psi)
    for i in range(seeds + 1):
        for k in range(seeds + 1 - i):
            if abs(i - k) >= t:
                ways = math.factorial(seeds) / (math.factorial(i) * math.factorial(k) * math.factorial(seeds - i - k))
                total += ways * (psi / 2) ** (i + k) * (1 - psi) ** (seeds - i - k)
    return float(min(1.0, total.max()))


def failure_test_paired_min_p(seeds: int, cells: int = 1) -> float:
    """The smallest p the paired failure test can give on this many seeds: every seed discordant one way."""
    return failure_test_paired(seeds, 0, seeds, cells)


def failure_test_unpaired(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided exact unconditional test (Boschloo 1970) of k_a failures in n_a runs against k_b in n_b, for
    sides that share no seeds."""
    if k_a + k_b == 0 or k_a + k_b == n_a + n_b:
        return 1.0  # no failure, or nothing but failures: the two rates cannot be told apart
    from scipy.stats import boschloo_exact

    return float(boschloo_exact([[k_a, k_b], [n_a - k_a, n_b - k_b]], alternative="two-sided").pvalue)


def failure_test_unpaired_min_p(n_a: int, n_b: int) -> float:
    """The smallest p the unpaired failure test can give with these many runs: one side failing every run, the
    other none."""
    return failure_test_unpaired(n_a, n_a, 0, n_b) if n_a and n_b else 1.0


# many comparisons


def holm(p_values: Sequence[float] | np.ndarray, m: int | None = None) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values in the input order; NaN stays NaN, not counted in m.

    `m`: the family's size when it has hypotheses not in `p_values` that are still unrejected (e.g. closed
    as equivalent at an earlier look: they keep their share of alpha); default, the valid p-values."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    if m is not None and m < order.size:
        raise ValueError(f"family of {m} cannot hold {order.size} p-values")
    m = order.size if m is None else m
    stepped = (m - np.arange(order.size)) * p[order]  # k-th smallest (0-based) times m - k
    out[order] = np.minimum(np.maximum.accumulate(stepped), 1.0)
    return out


def tarone_holm(
    p_values: Sequence[float] | np.ndarray, p_min: Sequence[float] | np.ndarray, alpha: float, *, held: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down over continuous and discrete tests, with Tarone's (1990) rule for the discrete ones
    (Hommel & Krummenauer 1998): at each step, a test whose smallest attainable p (`p_min`) cannot reach the
    step's level alpha / k does not count in the family of k, so an exact test on too few seeds costs the
    others nothing. `held`: hypotheses of the family not tested now that keep their share (continuous).
    NaN p: not tested. Returns (rejected at alpha, adjusted p: each step's p x k, a running maximum, capped at
    1; with every p_min 0 these are Holm's adjusted p-values)."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    lo = np.asarray(p_min, dtype=float).reshape(-1)
    rejected = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, math.nan)
    remaining = [int(i) for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    running, stopped = 0.0, False
    while remaining:
        k = 1
        while held + sum(lo[i] <= alpha / k for i in remaining) > k:
            k += 1
        testable = [i for i in remaining if lo[i] <= alpha / k]
        if not testable:  # none can reach its level: each keeps what it would need
            for i in remaining:
                adjusted[i] = max(running, min(1.0, max(p[i], lo[i]) * k))
            break
        first = testable[0]
        running = max(running, min(1.0, p[first] * k))
        adjusted[first] = running
        stopped |= p[first] > alpha / k
        rejected[first] = not stopped
        remaining.remove(first)
    return rejected, adjusted


def noise_floor(groups: Iterable[Sequence[float] | np.ndarray]) -> float:
    """Pooled within-configuration std: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over groups with n_i >= 2."""
    gs = [g for g in (_scores(g, allow_empty=True) for g in groups) if g.size >= 2]
    dof = sum(g.size - 1 for g in gs)
    if dof == 0:
        return math.nan
    return math.sqrt(sum(_sum_sq_dev(g) for g in gs) / dof)


def seeds_to_decide(
    e: Estimate, margin: float, *, alpha_diff: float, alpha_equiv: float, power: float = POWER, limit: int = 100_000
) -> float:
    """Seeds per side at which one look of the same t tests would, with `power`, reach a verdict at the
    observed difference and spread: show the difference (two-sided, level alpha_diff), or, when it lies
    inside the margin, show equivalence (TOST, one-sided level alpha_equiv). inf when neither can happen."""
    if not (math.isfinite(e.diff) and math.isfinite(e.se)):
        return math.nan
    sd = e.sd_unit
    if sd == 0:
        return 2.0

    def first(effect: float, level: float) -> float:
        # smallest n in [2, limit) with (t_{n-1}(level) + t_{n-1}(power)) sd / sqrt(n) <= effect (decreasing in n)
        def reach(n: int) -> float:
            return float((special.stdtrit(n - 1, level) + special.stdtrit(n - 1, power)) * sd / math.sqrt(n))

        if effect <= 0 or reach(limit - 1) > effect:
            return math.inf
        lo, hi = 2, limit - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reach(mid) <= effect else (mid + 1, hi)
        return float(lo)

    n_diff = first(abs(e.diff), 1 - alpha_diff / 2)
    n_equiv = first(margin - abs(e.diff), 1 - alpha_equiv)
    return min(n_diff, n_equiv)
