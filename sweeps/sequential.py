"""The questions a study asks, their verdicts at each look, and who gets the next look's seeds (pure).

One decision code for everyone: the coordinator calls `advance` when a look's runs are done, the report
replays the same looks to show the verdicts, and the simulator (sweeps/simulate.py) drives these same
functions through thousands of simulated studies to measure their error rates.

A question compares two sides: for a main effect, the configurations at one level of a factor against
those at another, matched cell by cell on every other factor. Seed k of every configuration shares its
initial weights, batches and teacher-forcing coins, so the unit of evidence is the seed: D_k is the mean,
over the matched cells, of (side A - side B) on seed k, and the test is a paired t test on the D_k. That
stays exact whatever the correlations between cells of one seed (measured: 0.8-0.9 within a
teacher-forcing level, near 0 across). Where the sides share fewer than 2 seeds, Welch's unpaired t is used.

Looks: `plan.looks` are the seeds per configuration at each look (e.g. 3, 4, 5, 6). At a look, every open
question is tested with the group-sequential correction (boundary.sequential_p, an O'Brien-Fleming boundary
by default), Holm across the family of
questions with the alpha of questions already shown different recycled (Maurer & Bretz 2013); a question
not shown different is "equivalent" when TOST, corrected the same way, puts it inside +-margin. A question
with a verdict is closed; configurations in an open question get the next look's seeds. After the last
look an open question is "cannot tell yet", with the seeds it would take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import numpy as np

from sweeps import boundary, stats
from sweeps.questions import Question

BETTER, WORSE, EQUIVALENT, OPEN, CANNOT_TELL = "better", "worse", "equivalent", "open", "cannot tell yet"

Values = Mapping[tuple[str, int], float]
"""(config_id, seed_index) -> the run's value, for usable runs only (complete, finite, not degenerate)"""


@dataclass(frozen=True)
class Plan:
    """A study's decision rule: seeds per configuration at each look, margin, error rate, boundary shape."""

    looks: tuple[int, ...]
    margin: float
    alpha: float = stats.ALPHA
    shape: float = 0.0
    """Wang-Tsiatis boundary shape: 0 (O'Brien & Fleming 1979) spends almost nothing at the first looks, where a
    t test on 3 seeds of a skewed difference (schedules that sometimes collapse) is least trustworthy, and keeps
    alpha for the last; 0.5 spends it evenly (Pocock). Chosen by `make bench-decisions`: with 0.5 the demo's
    false better/worse rate reached 5-6% under resampled noise, with 0 it stays under 3%."""

    def __post_init__(self) -> None:
        if not self.looks or self.looks[0] < 1 or any(b <= a for a, b in zip(self.looks, self.looks[1:])):
            raise ValueError(f"looks must be increasing seed counts >= 1, got {self.looks}")
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")


@dataclass(frozen=True)
class Decision:
    """Where a question stands after a look; frozen at the look that gave it a verdict."""

    name: str
    verdict: str
    look: int
    seeds: int
    """seeds per configuration at that look"""
    runs: int
    """runs of the question's configurations that the look used"""
    test: str
    """stats.PAIRED_T, stats.WELCH_T, or 'not run' (fewer than 2 seeds a side)"""
    n_a: int = 0
    n_b: int = 0
    mean_a: float = math.nan
    mean_b: float = math.nan
    diff: float = math.nan
    interval: tuple[float, float] = (math.nan, math.nan)
    """repeated confidence interval of A - B at 1 - alpha: valid whichever look one stops at"""
    interval_equivalence: tuple[float, float] = (math.nan, math.nan)
    """the TOST one: repeated interval at 1 - 2 alpha; equivalent iff it lies inside +-margin"""
    p_value: float = math.nan
    """the look's two-sided t p-value, uncorrected"""
    p_sequential: float = math.nan
    """corrected for the planned looks"""
    p_adjusted: float = math.nan
    """and Holm-adjusted within the family: better/worse iff <= alpha"""
    p_equivalence: float = math.nan
    """TOST: the larger one-sided p, corrected for the looks: equivalent iff <= alpha"""
    margin: str = ""
    """better/worse: 'beyond the margin', 'within the margin' or '' (cannot say which)"""
    p_improve: float = math.nan
    """P(A > B): paired, the share of seeds A won; unpaired, the Mann-Whitney form"""
    correlation: float = math.nan
    """pairing: correlation of the two sides' per-seed values"""
    width_paired: float = math.nan
    width_unpaired: float = math.nan
    """single-look 95% interval widths of A - B, paired and as if unpaired: what pairing bought"""
    seeds_needed: float = math.nan
    """seeds per configuration at which one look would likely decide (cannot tell / open)"""
    reason: str = ""


# evidence


def evidence(q: Question, values: Values, seeds: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(paired seeds, per-seed side-A means, side-B means over the cells present on both sides, all A values,
    all B values) of seeds < `seeds`."""
    ks, pa, pb = [], [], []
    for k in range(seeds):
        cells = [(values[(a, k)], values[(b, k)]) for a, b in q.cells if (a, k) in values and (b, k) in values]
        if cells:
            ks.append(k)
            pa.append(sum(x for x, _ in cells) / len(cells))
            pb.append(sum(y for _, y in cells) / len(cells))
    va = np.array([values[(c, k)] for c in q.side_a for k in range(seeds) if (c, k) in values], dtype=float)
    vb = np.array([values[(c, k)] for c in q.side_b for k in range(seeds) if (c, k) in values], dtype=float)
    return ks, np.array(pa, dtype=float), np.array(pb, dtype=float), va, vb


def _runs_used(q: Question, values: Values, seeds: int) -> int:
    return sum((c, k) in values for c in q.configs for k in range(seeds))


def measure(q: Question, values: Values, plan: Plan, look: int) -> Decision:
    """The look's numbers for one question (no verdict yet: OPEN); Holm and the verdict come from decide_look."""
    return _measure(q, values, plan, look)[0]


def _measure(q: Question, values: Values, plan: Plan, look: int) -> tuple[Decision, stats.Estimate | None]:
    n = plan.looks[look - 1]
    ks, pa, pb, va, vb = evidence(q, values, n)
    base = Decision(name=q.name, verdict=OPEN, look=look, seeds=n, runs=_runs_used(q, values, n), test="not run",
                    n_a=int(va.size), n_b=int(vb.size), mean_a=float(va.mean()) if va.size else math.nan,
                    mean_b=float(vb.mean()) if vb.size else math.nan)
    if len(ks) >= 2:
        e = stats.paired_estimate(pa, pb)
        d = pa - pb
        corr = float(np.corrcoef(pa, pb)[0, 1]) if pa.std() > 0 and pb.std() > 0 else math.nan
        extra = dict(p_improve=stats.prob_improvement_paired(d), correlation=corr, mean_a=float(pa.mean()),
                     mean_b=float(pb.mean()))
        unpaired = stats.welch_estimate(pa, pb)
        w_u = float(np.subtract(*stats.interval(unpaired)[::-1]))
    elif va.size >= 2 and vb.size >= 2:
        e = stats.welch_estimate(va, vb)
        extra = dict(p_improve=stats.prob_improvement(va, vb))
        w_u = math.nan
    else:
        return replace(base, reason=f"fewer than 2 seeds a side ({va.size} vs {vb.size}): one run cannot separate a "
                                    "setting from seed noise"), None
    looks, shape = plan.looks, plan.shape
    a2 = boundary.nominal_level(plan.alpha, look, looks, shape=shape)
    a1 = boundary.nominal_level(plan.alpha, look, looks, shape=shape, two_sided=False)
    p = stats.p_two_sided(e)
    lo_p, hi_p = stats.p_tost(e, plan.margin)
    p_eq = max(boundary.sequential_p(lo_p, look, looks, shape=shape, two_sided=False),
               boundary.sequential_p(hi_p, look, looks, shape=shape, two_sided=False))
    w_p = float(np.subtract(*stats.interval(e)[::-1]))
    return replace(base, test=e.test, n_a=e.n_a, n_b=e.n_b, diff=e.diff, interval=stats.interval(e, 1 - a2),
                   interval_equivalence=stats.interval(e, 1 - 2 * a1),
                   p_value=p, p_sequential=boundary.sequential_p(p, look, looks, shape=shape), p_equivalence=p_eq,
                   width_paired=w_p if e.paired else math.nan, width_unpaired=w_u if e.paired else w_p,
                   **{k: v for k, v in extra.items() if k not in ("mean_a", "mean_b") or e.paired}), e


# decisions


def _margin_word(d: Decision, margin: float) -> str:
    lo, hi = d.interval
    if lo > margin or hi < -margin:
        return "beyond the margin"
    if -margin < lo and hi < margin:
        return "within the margin"
    return ""


def decide_look(questions: Iterable[Question], values: Values, plan: Plan, look: int,
                prior: Mapping[str, Decision] | None = None) -> dict[str, Decision]:
    """Every question's decision after `look`. Those decided in `prior` keep their verdict; the open ones are
    measured on seeds < plan.looks[look - 1], Holm-adjusted together with the family's other questions not
    yet shown different, and closed as better/worse, equivalent, or (after the last look) cannot tell."""
    prior = dict(prior or {})
    qs = list(questions)
    out: dict[str, Decision] = {}
    todo = [q for q in qs if q.name not in prior or prior[q.name].verdict == OPEN]
    shown = sum(prior[q.name].verdict in (BETTER, WORSE) for q in qs if q.name in prior)
    measured, estimates = {}, {}
    for q in todo:
        measured[q.name], estimates[q.name] = _measure(q, values, plan, look)
    adjusted = stats.holm([measured[q.name].p_sequential for q in todo],
                          m=max(len(qs) - shown, sum(not math.isnan(measured[q.name].p_sequential) for q in todo)))
    last = look == len(plan.looks)
    for q in qs:
        if q.name not in measured:
            out[q.name] = prior[q.name]
    for q, p_adj in zip(todo, adjusted):
        d = replace(measured[q.name], p_adjusted=float(p_adj))
        if p_adj <= plan.alpha:
            d = replace(d, verdict=BETTER if d.diff > 0 else WORSE, margin=_margin_word(d, plan.margin))
        elif d.p_equivalence <= plan.alpha:
            d = replace(d, verdict=EQUIVALENT)
        elif last:
            d = replace(d, verdict=CANNOT_TELL)
        e = estimates[q.name]
        if d.verdict in (OPEN, CANNOT_TELL) and e is not None:
            d = replace(d, seeds_needed=stats.seeds_to_decide(e, plan.margin, alpha_diff=plan.alpha, alpha_equiv=plan.alpha))
        out[q.name] = d
    return {q.name: out[q.name] for q in qs}


def replay(questions: Iterable[Question], values: Values, plan: Plan, through: int) -> dict[str, Decision]:
    """The decisions after looks 1..through, made as the coordinator made them, one look at a time."""
    qs = list(questions)
    decisions: dict[str, Decision] = {}
    for look in range(1, through + 1):
        decisions = decide_look(qs, values, plan, look, decisions)
        if not any(d.verdict == OPEN for d in decisions.values()):
            break
    return decisions


def open_configs(questions: Iterable[Question], decisions: Mapping[str, Decision]) -> set[str]:
    """Configurations in at least one open question: the ones the next look gives more seeds."""
    out: set[str] = set()
    for q in questions:
        if decisions.get(q.name) is None or decisions[q.name].verdict == OPEN:
            out |= q.configs
    return out


@dataclass(frozen=True)
class State:
    """Where a sequential study stands: the look in progress, and each configuration's seed target."""

    look: int = 1
    targets: dict[str, int] = field(default_factory=dict)
    done: bool = False
    """the last look was decided: every question closed, or no seeds left to add"""

    def as_json(self) -> dict[str, Any]:
        return {"look": self.look, "targets": dict(sorted(self.targets.items())), "done": self.done}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, configs: Iterable[str], plan: Plan) -> "State":
        if not raw:
            return cls(look=1, targets={c: plan.looks[0] for c in configs})
        targets = {c: int(n) for c, n in raw.get("targets", {}).items()}
        for c in configs:  # a configuration the state never saw (e.g. a grid cut by --trials) starts at look 1
            targets.setdefault(c, plan.looks[0])
        return cls(look=int(raw["look"]), targets=targets, done=bool(raw.get("done", False)))


def advance(questions: Iterable[Question], values: Values, plan: Plan, state: State) -> tuple[State, dict[str, Decision]]:
    """After look `state.look` is complete: decide it, and either give the open questions' configurations the
    next look's seeds or mark the study done. Returns the new state and the decisions so far."""
    qs = list(questions)
    decisions = replay(qs, values, plan, state.look)
    grow = open_configs(qs, decisions)
    if not grow or state.look >= len(plan.looks):
        return replace(state, done=True), decisions
    nxt = state.look + 1
    targets = {c: (plan.looks[nxt - 1] if c in grow else n) for c, n in state.targets.items()}
    return State(look=nxt, targets=targets, done=False), decisions
