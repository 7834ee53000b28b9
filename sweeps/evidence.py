"""A question's results at one look, as its tests read them (pure).

Seed k of every configuration shares its initial weights, batches and teacher-forcing coins, so the unit of
evidence is the seed. For each seed, the matched cells of a question where both sides have a result give three
things: the trained runs' difference (the value test), the difference with failures counted (equivalence), and
which side failed more (the failure test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from sweeps.questions import Question

Values = Mapping[tuple[str, int], float]
"""(config_id, seed_index) -> the run's result: its value when it trained, NaN (outcome.FAILURE) when it
collapsed or diverged. Runs that are not results (pruned, lost, pending) are absent."""


@dataclass(frozen=True)
class Evidence:
    """A question's results at one look, as its three tests read them."""

    seeds: list[int]
    """seeds on which both sides of at least one cell trained: the value test's pairs"""
    a: np.ndarray
    b: np.ndarray
    """per such seed, each side's mean over the cells where both trained"""
    all_a: np.ndarray
    all_b: np.ndarray
    """every trained value of each side, for the unpaired fallback"""
    counted: np.ndarray
    """per seed on which both sides of a cell have a result, the mean over those cells of A - B with failures
    counted (a failure against a trained run: a margin worse; both failed: 0): what equivalence is judged on"""
    results: int
    """seeds on which both sides of a cell have a result: the failure test's pairs"""
    failed_a: int
    failed_b: int
    results_a: int
    results_b: int
    more_a: int
    more_b: int
    """seeds on which side A failed more of its cells than side B, and the other way"""


def evidence(q: Question, values: Values, seeds: int, margin: float, maximize: bool = True) -> Evidence:
    """The question's results at seeds < `seeds`; a failure against a trained run counts `margin` worse."""
    worse = -margin if maximize else margin  # A - B when A failed and B trained
    ks, pa, pb, counted = [], [], [], []
    more_a = more_b = both = 0
    for k in range(seeds):
        cells = [(values[(a, k)], values[(b, k)]) for a, b in q.cells if (a, k) in values and (b, k) in values]
        if not cells:
            continue
        both += 1
        fa, fb = sum(math.isnan(x) for x, _ in cells), sum(math.isnan(y) for _, y in cells)
        more_a, more_b = more_a + (fa > fb), more_b + (fb > fa)
        counted.append(sum(_counted(x, y, worse) for x, y in cells) / len(cells))
        trained = [(x, y) for x, y in cells if not (math.isnan(x) or math.isnan(y))]
        if trained:
            ks.append(k)
            pa.append(sum(x for x, _ in trained) / len(trained))
            pb.append(sum(y for _, y in trained) / len(trained))
    side = lambda cs: [values[(c, k)] for c in cs for k in range(seeds) if (c, k) in values]  # noqa: E731
    va, vb = side(q.side_a), side(q.side_b)
    return Evidence(
        seeds=ks,
        a=np.array(pa, dtype=float),
        b=np.array(pb, dtype=float),
        all_a=np.array([v for v in va if not math.isnan(v)], dtype=float),
        all_b=np.array([v for v in vb if not math.isnan(v)], dtype=float),
        counted=np.array(counted, dtype=float),
        results=both,
        failed_a=sum(math.isnan(v) for v in va),
        failed_b=sum(math.isnan(v) for v in vb),
        results_a=len(va),
        results_b=len(vb),
        more_a=more_a,
        more_b=more_b,
    )


def _counted(x: float, y: float, worse: float) -> float:
    """A - B of one cell on one seed with failures counted: a failure is a margin worse than a trained run."""
    if math.isnan(x) or math.isnan(y):
        return 0.0 if math.isnan(x) and math.isnan(y) else (worse if math.isnan(x) else -worse)
    return x - y
