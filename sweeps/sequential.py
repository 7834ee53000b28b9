"""The verdicts of a study's questions at each look, and who gets the next look's seeds (pure).

One decision code for everyone: the coordinator calls `advance` when a look's runs are done, the report
replays the same looks to show the verdicts, and the simulator (sweeps/simulate.py) drives these same
functions through thousands of simulated studies to measure their error rates.

Every run that is a result counts (sweeps/outcome.py): a run that collapsed or diverged is a failure of its
setting, not missing data. Seed k of every configuration shares its initial weights, batches and teacher-forcing
coins, so the unit of evidence is the seed. A question (sweeps/questions.py) is answered by three tests:

- values (better / worse): D_k is the mean, over the matched cells where both sides trained on seed k, of
  (side A - side B); a paired t test on the D_k (Welch's unpaired t on the trained runs where fewer than 3 seeds
  pair). A failed run has no value to compare: it is left to the failure test, not imputed (an imputed failure
  is a spike that the t test cannot tell from noise: on the demo's failure rates it cost half the power);
- failures (worse): the seeds on which one side failed more of its runs than the other, in an exact test on
  discordant seeds (stats.failure_test_paired), or Boschloo's exact test where the sides share no seeds;
- equivalence: TOST on the per-seed differences with failures counted, a failure a margin worse than the trained
  run it meets (both failed: no difference), so a setting that fails more often is never called equivalent on
  the strength of the runs it did not lose: failing on every seed is a margin's difference.

At a look, every open question's value and failure tests are corrected for the planned looks (sweeps.boundary,
an O'Brien-Fleming boundary calibrated on t statistics) and then together, as one family, by Holm's step-down
with Tarone's rule (an exact test on too few seeds to reach its level costs the others nothing), the alpha of
questions already shown different recycled (Maurer & Bretz 2013). A side that fails significantly more often
is worse, whatever its trained runs score; otherwise the values decide better or worse. A question not shown
different is equivalent when its TOST, corrected for the looks and by Holm across the family, puts it inside
+-margin. A question with a verdict is closed; configurations in an open question get the next look's seeds.
After the last look an open question is "cannot tell yet".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import numpy as np

from sweeps import boundary, stats
from sweeps.evidence import Evidence, Values, evidence
from sweeps.questions import Question

BETTER, WORSE, EQUIVALENT, OPEN, CANNOT_TELL = "better", "worse", "equivalent", "open", "cannot tell yet"
BY_FAILURES, BY_VALUES = "failures", "values"
PAIRED_FAILURES, BOSCHLOO = "exact test on discordant seeds", "Boschloo exact test"
PAIRED_MIN_SEEDS = 3  # the value test pairs seeds from 3 (a paired t on 2 seeds has 1 degree of freedom)


@dataclass(frozen=True)
class Plan:
    """A study's decision rule: seeds per configuration at each look, margin, error rate, boundary shape,
    and which way is better."""

    looks: tuple[int, ...]
    margin: float
    alpha: float = stats.ALPHA
    shape: float = 0.0
    """Wang-Tsiatis boundary shape: 0 (O'Brien & Fleming 1979) spends almost nothing at the first looks, where a
    t test on 3 seeds of a skewed difference (schedules that sometimes collapse) is least trustworthy, and keeps
    alpha for the last; 0.5 spends it evenly (Pocock). Chosen by `make bench-decisions`: with 0.5 the demo's
    false better/worse rate reached 5-6% under resampled noise, with 0 it stays under 3%."""
    maximize: bool = True
    """higher values are better (PSNR, SSIM): a failure counts below the worst trained run"""

    def __post_init__(self) -> None:
        if not self.looks or self.looks[0] < 1 or any(b <= a for a, b in zip(self.looks, self.looks[1:])):
            raise ValueError(f"looks must be increasing seed counts >= 1, got {self.looks}")
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")


@dataclass(frozen=True)
class Decision:
    """Where a question stands after a look; frozen at the look that gave it a verdict. Differences are A - B in
    the metric's units; `verdict` says whether A is better or worse in the study's direction."""

    name: str
    verdict: str
    look: int
    seeds: int
    """seeds per configuration at that look"""
    runs: int
    """results (trained, collapsed or diverged runs) of the question's configurations that the look used"""
    test: str
    """the value test: stats.PAIRED_T (3 or more paired seeds), stats.WELCH_T, or 'not run' (fewer than 2 trained
    runs a side)"""
    n_a: int = 0
    n_b: int = 0
    mean_a: float = math.nan
    mean_b: float = math.nan
    diff: float = math.nan
    """A - B of the trained runs (what better and worse by values are about)"""
    diff_counted: float = math.nan
    """A - B with failures counted, a failure a margin worse than a trained run (what equivalence is about)"""
    interval: tuple[float, float] = (math.nan, math.nan)
    """repeated confidence interval of A - B at 1 - alpha: valid whichever look one stops at"""
    interval_equivalence: tuple[float, float] = (math.nan, math.nan)
    """the TOST one, of diff_counted: repeated interval at 1 - 2 alpha; equivalent iff inside +-margin (and the
    family's adjustment)"""
    p_value: float = math.nan
    """the look's two-sided t p-value, uncorrected"""
    p_sequential: float = math.nan
    """corrected for the planned looks"""
    p_adjusted: float = math.nan
    """and adjusted within the family (Holm with Tarone's rule, with the failure tests): <= alpha: shown"""
    p_equivalence: float = math.nan
    """TOST: the larger one-sided p, corrected for the looks"""
    p_equivalence_adjusted: float = math.nan
    """and Holm-adjusted across the family: equivalent iff <= alpha"""
    equivalence_bound: float = math.nan
    """the narrowest margin within which the question is equivalent at the level its Holm step used"""
    margin: str = ""
    """better/worse: 'beyond the margin', 'within the margin' or '' (cannot say which)"""
    p_improve: float = math.nan
    """P(A > B): paired, the share of seeds A won; unpaired, the Mann-Whitney form"""
    correlation: float = math.nan
    """pairing: correlation of the two sides' per-seed values (3 seeds or more)"""
    width_paired: float = math.nan
    width_unpaired: float = math.nan
    """single-look 95% interval widths of A - B, paired and as if unpaired: what pairing bought"""
    seeds_needed: float = math.nan
    """seeds per configuration at which one look would likely decide (cannot tell / open)"""
    reason: str = ""
    failed_a: int = 0
    failed_b: int = 0
    """failed (collapsed or diverged) runs of each side at the look"""
    results_a: int = 0
    results_b: int = 0
    """results of each side at the look: the failure rates are failed / results"""
    more_a: int = 0
    more_b: int = 0
    """discordant seeds: on which side A failed more often than side B, and the other way"""
    fail_test: str = ""
    """PAIRED_FAILURES, BOSCHLOO, or '' (no failure on either side)"""
    p_fail: float = math.nan
    p_fail_sequential: float = math.nan
    p_fail_adjusted: float = math.nan
    """the failure test's p, corrected for the looks, and adjusted with the family: <= alpha: shown"""
    decided_by: str = ""
    """better/worse: BY_FAILURES (the failure test) or BY_VALUES"""


# evidence


def measure(q: Question, values: Values, plan: Plan, look: int) -> Decision:
    """The look's numbers for one question (no verdict yet: OPEN); the family's adjustment and the verdict come
    from decide_look."""
    return _measure(q, values, plan, look)[0]


def _failures(q: Question, ev: Evidence, plan: Plan, look: int) -> tuple[dict[str, Any], float]:
    """The failure test's fields of a Decision, and the smallest look-corrected p it could reach."""
    if ev.failed_a + ev.failed_b == 0 or not (ev.results_a and ev.results_b):
        return {}, 1.0
    if ev.results >= 2:
        test, p = PAIRED_FAILURES, stats.failure_test_paired(ev.more_a, ev.more_b, ev.results, len(q.cells))
        p_min = stats.failure_test_paired_min_p(ev.results, len(q.cells))
    else:
        test, p = BOSCHLOO, stats.failure_test_unpaired(ev.failed_a, ev.results_a, ev.failed_b, ev.results_b)
        p_min = stats.failure_test_unpaired_min_p(ev.results_a, ev.results_b)
    seq = lambda x: boundary.sequential_p(x, look, plan.looks, shape=plan.shape)  # noqa: E731
    return {"fail_test": test, "p_fail": p, "p_fail_sequential": seq(p)}, seq(p_min)


def _equivalence(ev: Evidence, plan: Plan, look: int) -> tuple[dict[str, Any], stats.Estimate | None]:
    """TOST on the per-seed differences with failures counted (one-sample t): its fields of a Decision."""
    if ev.counted.size < 2:
        return {}, None
    e = stats.mean_estimate(ev.counted)
    lo_p, hi_p = stats.p_tost(e, plan.margin)
    seq = lambda x: boundary.sequential_p(x, look, plan.looks, shape=plan.shape, two_sided=False)  # noqa: E731
    a1 = boundary.nominal_level(plan.alpha, look, plan.looks, shape=plan.shape, two_sided=False)
    return {
        "diff_counted": e.diff,
        "interval_equivalence": stats.interval(e, 1 - 2 * a1),
        "p_equivalence": max(seq(lo_p), seq(hi_p)),
    }, e


def _value_estimate(ev: Evidence) -> tuple[stats.Estimate, dict[str, Any], float] | None:
    """The value test's estimate on trained runs: paired over 3 or more seeds, else Welch's unpaired t."""
    if len(ev.seeds) >= PAIRED_MIN_SEEDS:
        pa, pb = ev.a, ev.b
        corr = float(np.corrcoef(pa, pb)[0, 1]) if pa.std() > 0 and pb.std() > 0 else math.nan
        extra = dict(
            p_improve=stats.prob_improvement_paired(pa - pb),
            correlation=corr,
            mean_a=float(pa.mean()),
            mean_b=float(pb.mean()),
        )
        return (
            stats.paired_estimate(pa, pb),
            extra,
            float(np.subtract(*stats.interval(stats.welch_estimate(pa, pb))[::-1])),
        )
    if ev.all_a.size >= 2 and ev.all_b.size >= 2:
        return (
            stats.welch_estimate(ev.all_a, ev.all_b),
            dict(p_improve=stats.prob_improvement(ev.all_a, ev.all_b)),
            math.nan,
        )
    return None


def _measure(
    q: Question, values: Values, plan: Plan, look: int
) -> tuple[Decision, stats.Estimate | None, stats.Estimate | None, float]:
    n = plan.looks[look - 1]
    ev = evidence(q, values, n, plan.margin, plan.maximize)
    va, vb = ev.all_a, ev.all_b
    fail, p_fail_min = _failures(q, ev, plan, look)
    equiv, e_eq = _equivalence(ev, plan, look)
    base = Decision(
        name=q.name,
        verdict=OPEN,
        look=look,
        seeds=n,
        runs=ev.results_a + ev.results_b,
        test="not run",
        n_a=int(va.size),
        n_b=int(vb.size),
        mean_a=float(va.mean()) if va.size else math.nan,
        mean_b=float(vb.mean()) if vb.size else math.nan,
        failed_a=ev.failed_a,
        failed_b=ev.failed_b,
        results_a=ev.results_a,
        results_b=ev.results_b,
        more_a=ev.more_a,
        more_b=ev.more_b,
        **fail,
        **equiv,
    )
    est = _value_estimate(ev)
    if est is None:
        reason = (
            f"fewer than 2 trained seeds a side ({va.size} vs {vb.size}): one run cannot separate a setting "
            "from seed noise"
        )
        return replace(base, reason=reason), None, e_eq, p_fail_min
    e, extra, w_u = est
    looks, shape = plan.looks, plan.shape
    a2 = boundary.nominal_level(plan.alpha, look, looks, shape=shape)
    p = stats.p_two_sided(e)
    w_p = float(np.subtract(*stats.interval(e)[::-1]))
    return (
        replace(
            base,
            test=e.test,
            n_a=e.n_a,
            n_b=e.n_b,
            diff=e.diff,
            interval=stats.interval(e, 1 - a2),
            p_value=p,
            p_sequential=boundary.sequential_p(p, look, looks, shape=shape),
            width_paired=w_p if e.paired else math.nan,
            width_unpaired=w_u if e.paired else w_p,
            **{k: v for k, v in extra.items() if k not in ("mean_a", "mean_b") or e.paired},
        ),
        e,
        e_eq,
        p_fail_min,
    )


# decisions


def _p(x: float) -> float:
    """A float, NaN as the one math.nan: replayed decisions then compare equal to the ones made look by look."""
    return math.nan if math.isnan(x) else float(x)


def _margin_word(d: Decision, margin: float) -> str:
    lo, hi = d.interval
    if lo > margin or hi < -margin:
        return "beyond the margin"
    if -margin < lo and hi < margin:
        return "within the margin"
    return ""


def _equivalence_bound(e: stats.Estimate, plan: Plan, look: int, alpha: float) -> float:
    """The narrowest margin m with TOST(m) passing at `alpha`, corrected for the looks: |diff| + t * se."""
    a1 = boundary.nominal_level(alpha, look, plan.looks, shape=plan.shape, two_sided=False)
    return abs(e.diff) + float(stats.interval(e, 1 - 2 * a1)[1] - e.diff)


def decide_look(
    questions: Iterable[Question], values: Values, plan: Plan, look: int, prior: Mapping[str, Decision] | None = None
) -> dict[str, Decision]:
    """Every question's decision after `look`. Those decided in `prior` keep their verdict; the open ones are
    measured on seeds < plan.looks[look - 1]; their value and failure tests are adjusted together with the
    family's other questions not yet shown different, and each is closed as better/worse (failures first),
    equivalent, or (after the last look) cannot tell."""
    prior = dict(prior or {})
    qs = list(questions)
    todo = [q for q in qs if q.name not in prior or prior[q.name].verdict == OPEN]
    shown = sum(prior[q.name].verdict in (BETTER, WORSE) for q in qs if q.name in prior)
    equivalent = sum(prior[q.name].verdict == EQUIVALENT for q in qs if q.name in prior)
    measured = {q.name: _measure(q, values, plan, look) for q in todo}
    ds = [measured[q.name][0] for q in todo]
    # the family: each open question's value test and failure test; questions closed as equivalent hold a share
    p = [d.p_sequential for d in ds] + [d.p_fail_sequential for d in ds]
    p_min = [0.0] * len(ds) + [measured[q.name][3] for q in todo]
    held = max(0, len(qs) - shown - sum(not math.isnan(d.p_sequential) for d in ds))
    shown_now, adjusted = stats.tarone_holm(p, p_min, plan.alpha, held=held)
    m_eq = max(len(qs) - equivalent, sum(not math.isnan(d.p_equivalence) for d in ds))
    eq_adjusted = stats.holm([d.p_equivalence for d in ds], m=m_eq)
    eq_order = np.argsort(
        [d.p_equivalence if d.p_equivalence == d.p_equivalence else math.inf for d in ds], kind="stable"
    )
    eq_rank = {int(i): r for r, i in enumerate(eq_order)}  # Holm's step r tests at alpha / (m_eq - r)
    last = look == len(plan.looks)
    out = {q.name: prior[q.name] for q in qs if q.name not in measured}
    for i, q in enumerate(todo):
        d, e, e_eq, _ = measured[q.name]
        d = replace(
            d,
            p_adjusted=_p(adjusted[i]),
            p_fail_adjusted=_p(adjusted[len(ds) + i]),
            p_equivalence_adjusted=_p(eq_adjusted[i]),
        )
        if e_eq is not None:
            d = replace(d, equivalence_bound=_equivalence_bound(e_eq, plan, look, plan.alpha / (m_eq - eq_rank[i])))
        if shown_now[len(ds) + i]:  # fails significantly more often: worse, whatever its trained runs score
            a_fails_more = (
                d.more_a > d.more_b
                if d.fail_test == PAIRED_FAILURES
                else d.failed_a / d.results_a > d.failed_b / d.results_b
            )
            d = replace(d, verdict=WORSE if a_fails_more else BETTER, decided_by=BY_FAILURES)
        elif shown_now[i]:
            d = replace(
                d,
                verdict=BETTER if (d.diff > 0) == plan.maximize else WORSE,
                margin=_margin_word(d, plan.margin),
                decided_by=BY_VALUES,
            )
        elif d.p_equivalence_adjusted <= plan.alpha:
            d = replace(d, verdict=EQUIVALENT)
        elif last:
            d = replace(d, verdict=CANNOT_TELL)
        if d.verdict in (OPEN, CANNOT_TELL) and e is not None:
            d = replace(
                d, seeds_needed=stats.seeds_to_decide(e, plan.margin, alpha_diff=plan.alpha, alpha_equiv=plan.alpha)
            )
        out[q.name] = d
    return {q.name: out[q.name] for q in qs}
