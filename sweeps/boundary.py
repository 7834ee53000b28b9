"""Repeated looks at a growing study: a group-sequential boundary (Wang & Tsiatis 1987; Pocock 1977 at shape
0.5), its p-value correction and the nominal level it spends at each look. Pure, seeded: the same looks give the
same boundary in every process.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

from sweeps.stats import SEED

BOUNDARY_DRAWS = 200_000  # Monte-Carlo paths of the group-sequential null (p* to about +-0.0005 near 0.05)


def _weights(looks: tuple[int, ...], shape: float) -> np.ndarray:
    """Wang-Tsiatis boundary shape: reject at look k when |Z_k| >= C (n_k / n_K)^(shape - 1/2)."""
    n = np.asarray(looks, dtype=float)
    return (n / n[-1]) ** (shape - 0.5)


@lru_cache(maxsize=64)
def _null_max(looks: tuple[int, ...], shape: float, two_sided: bool) -> np.ndarray:
    """Sorted max_k |Z_k| / w_k (or Z_k / w_k) over BOUNDARY_DRAWS null paths with n_k seeds at look k."""
    n = np.asarray(looks, dtype=float)
    rng = np.random.default_rng(SEED)
    z = np.cumsum(rng.standard_normal((BOUNDARY_DRAWS, n.size)) * np.sqrt(np.diff(n, prepend=0.0)), axis=1) / np.sqrt(n)
    return np.sort(((np.abs(z) if two_sided else z) / _weights(looks, shape)).max(axis=1))


def _check_looks(look: int, looks: tuple[int, ...]) -> None:
    if not 1 <= look <= len(looks) or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1:
        raise ValueError(f"look {look} of {looks}: looks are increasing seed counts, look is 1-based")


def sequential_p(p: float, look: int, looks: tuple[int, ...], *, shape: float = 0.5, two_sided: bool = True) -> float:
    """The p-value of a look's test corrected for every planned look: the chance, with no difference, that
    some look's statistic crosses the boundary that this look's statistic just reaches. p itself with one look."""
    looks = tuple(int(n) for n in looks)
    _check_looks(look, looks)
    if len(looks) == 1 or math.isnan(p):
        return p
    z = float(special.ndtri(1 - p / 2 if two_sided else 1 - p))
    null = _null_max(looks, float(shape), two_sided)
    c = z / _weights(looks, shape)[look - 1]
    return float((null.size - np.searchsorted(null, c, side="left")) / null.size)


def nominal_level(alpha: float, look: int, looks: tuple[int, ...], *, shape: float = 0.5,
                  two_sided: bool = True) -> float:
    """The single-test level at `look` that the boundary spends: sequential_p(p) <= alpha iff p <= this."""
    looks = tuple(int(n) for n in looks)
    _check_looks(look, looks)
    if len(looks) == 1:
        return alpha
    z = _boundary(alpha, looks, float(shape), two_sided) * _weights(looks, shape)[look - 1]
    return float(2 * special.ndtr(-z) if two_sided else special.ndtr(-z))


@lru_cache(maxsize=256)
def _boundary(alpha: float, looks: tuple[int, ...], shape: float, two_sided: bool) -> float:
    """C of the boundary: the 1 - alpha quantile of the null's max statistic."""
    return float(np.quantile(_null_max(looks, shape, two_sided), 1 - alpha))
