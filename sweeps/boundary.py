"""Repeated looks at a growing study: a group-sequential boundary (Wang & Tsiatis 1987; Pocock 1977 at shape
0.5), its p-value correction and the nominal level it spends at each look. Pure, seeded: the same looks give the
same boundary in every process.

The boundary is calibrated on the statistic the study uses: a one-sample t of the per-seed differences, with
n_k - 1 degrees of freedom at a look of n_k seeds (`statistic="t"`, the default). The classic z calibration
(`statistic="z"`, Pocock's and O'Brien & Fleming's tables) treats the look statistics as normal, which a t on
2-4 degrees of freedom is not: each look estimates its own spread, so successive looks move together less
than z paths do, some look crosses more often, and a z boundary spends 5.6-5.7% where 5% was planned. Every
look enters the boundary through its p-value (read as a normal score), so a test with another reference
(Welch's t, an exact test) is corrected at the same tail probability.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

from sweeps.stats import SEED

BOUNDARY_DRAWS = 200_000  # Monte-Carlo paths of the group-sequential null (p* to about +-0.0005 near 0.05)
STATISTICS = ("t", "z")


def _weights(looks: tuple[int, ...], shape: float) -> np.ndarray:
    """Wang-Tsiatis boundary shape: reject at look k when |S_k| >= C (n_k / n_K)^(shape - 1/2)."""
    n = np.asarray(looks, dtype=float)
    return (n / n[-1]) ** (shape - 0.5)


@lru_cache(maxsize=64)
def _null_max(looks: tuple[int, ...], shape: float, two_sided: bool, statistic: str = "t") -> np.ndarray:
    """Sorted max_k |S_k| / w_k (or S_k / w_k) over BOUNDARY_DRAWS null paths. A path is one sequence of iid
    N(0, 1) per-seed differences; S_k is the normal score of the look's test on its first n_k: the z of their
    sum (`z`), or the t of their mean with n_k - 1 df read as the normal quantile of the same tail (`t`). Each
    S_k is N(0, 1) either way; what the t calibration changes is how the looks move together (each look
    estimates its own spread), and so how often some look crosses."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
    n = np.asarray(looks)
    x = np.random.default_rng(SEED).standard_normal((BOUNDARY_DRAWS, int(n[-1])))
    total, squares = np.cumsum(x, axis=1)[:, n - 1], np.cumsum(x * x, axis=1)[:, n - 1]
    stat = total / np.sqrt(n)
    for j, k in enumerate(n):
        if statistic == "t" and k >= 2:  # a look of one seed has no spread to divide by: its z
            mean = total[:, j] / k
            t = mean / np.sqrt(np.maximum(squares[:, j] - k * mean**2, 1e-300) / (k - 1) / k)
            stat[:, j] = -np.sign(t) * special.ndtri(special.stdtr(k - 1, -np.abs(t)))
    return np.sort(((np.abs(stat) if two_sided else stat) / _weights(looks, shape)).max(axis=1))


def _check_looks(look: int, looks: tuple[int, ...]) -> None:
    if not 1 <= look <= len(looks) or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1:
        raise ValueError(f"look {look} of {looks}: looks are increasing seed counts, look is 1-based")


def sequential_p(
    p: float, look: int, looks: tuple[int, ...], *, shape: float = 0.5, two_sided: bool = True, statistic: str = "t"
) -> float:
    """The p-value of a look's test corrected for every planned look: the chance, with no difference, that
    some look's statistic crosses the boundary that this look's statistic just reaches. p itself with one look."""
    looks = tuple(int(n) for n in looks)
    _check_looks(look, looks)
    if len(looks) == 1 or math.isnan(p):
        return p
    null = _null_max(looks, float(shape), two_sided, statistic)
    c = float(special.ndtri(1 - p / 2 if two_sided else 1 - p)) / _weights(looks, shape)[look - 1]
    return float((null.size - np.searchsorted(null, c, side="left")) / null.size)


def nominal_level(
    alpha: float, look: int, looks: tuple[int, ...], *, shape: float = 0.5, two_sided: bool = True, statistic: str = "t"
) -> float:
    """The single-test level at `look` that the boundary spends: sequential_p(p) <= alpha iff p <= this."""
    looks = tuple(int(n) for n in looks)
    _check_looks(look, looks)
    if len(looks) == 1:
        return alpha
    c = _boundary(alpha, looks, float(shape), two_sided, statistic) * _weights(looks, shape)[look - 1]
    return float(2 * special.ndtr(-c) if two_sided else special.ndtr(-c))


@lru_cache(maxsize=256)
def _boundary(alpha: float, looks: tuple[int, ...], shape: float, two_sided: bool, statistic: str) -> float:
    """C of the boundary: the 1 - alpha quantile of the null's max statistic."""
    return float(np.quantile(_null_max(looks, shape, two_sided, statistic), 1 - alpha))
