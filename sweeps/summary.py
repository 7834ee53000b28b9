"""The study's summary: runs by outcome, one row per configuration, the pick, the verdicts or the race, what is left."""

from __future__ import annotations

import math
from typing import Any

import optuna

from sweeps import looks, outcome, plan, sequential
from sweeps.design import CONFIRM, SEARCH, Run, lost_runs, results, scores
from sweeps.questions import Question
from sweeps.spec import StudySpec

# helpers


def _short(key: str) -> str:
    return key.split(".", 1)[1] if "." in key else key


def _table(runs: list[Run], spec: StudySpec) -> str:
    """One row per (configuration, phase): params, runs by outcome, failure rate, trained values, score."""
    import pandas as pd

    maximize = spec.direction == "maximize"
    rows = []
    for phase in (SEARCH, CONFIRM):
        scored = scores(runs, spec.margin_db, maximize, phase)
        by: dict[str, list[Run]] = {}
        for r in runs:
            if r.phase == phase and r.config_id is not None:
                by.setdefault(r.config_id, []).append(r)
        for cid, rs in by.items():
            c = outcome.counts(r.outcome for r in rs)
            s = scored.get(cid)
            trained = list(s.trained) if s else []
            rows.append(
                {
                    "config": cid,
                    "phase": phase,
                    **{_short(k): v for k, v in rs[0].params.items()},
                    **{k: c[k] for k in (outcome.TRAINED, outcome.COLLAPSED, outcome.DIVERGED)},
                    **({k: c[k] for k in (outcome.PRUNED, outcome.LOST, outcome.PENDING) if c[k]}),
                    "fails": f"{s.failed}/{s.results}" if s else "-",
                    "mean": sum(trained) / len(trained) if trained else math.nan,
                    "std": pd.Series(trained).std() if len(trained) > 1 else math.nan,
                    "min": min(trained, default=math.nan),
                    "max": max(trained, default=math.nan),
                    "score": s.score if s else math.nan,
                }
            )
    if not rows:
        return ""
    df = pd.DataFrame(rows).fillna({k: 0 for k in (outcome.PRUNED, outcome.LOST, outcome.PENDING)})
    df = df.sort_values(["phase", "score"], ascending=[False, not maximize], na_position="last")
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        return df.to_string(index=False)


def verdict_words(d: sequential.Decision, q: Question) -> str:
    """'worse (1 fails more often, fails 3/5 vs 0/5)' / 'better (within the margin)' / 'equivalent (fails 1/5 vs
    0/5)': the verdict with what it rests on beyond the value test."""
    notes = [d.margin] if d.margin else []
    if d.decided_by == sequential.BY_FAILURES or d.failed_a or d.failed_b:
        notes.append(f"fails {d.failed_a}/{d.results_a} vs {d.failed_b}/{d.results_b}")
    if d.decided_by == sequential.BY_FAILURES:
        notes.insert(0, f"{q.a if d.verdict == sequential.WORSE else q.b} fails more often")
    return d.verdict + (f" ({', '.join(notes)})" if notes else "")


def _verdicts(study: optuna.Study, spec: StudySpec, runs: list[Run]) -> list[str]:
    state = plan.seq_state(study, spec)
    through = state.look if state.done else state.look - 1
    if not through:
        return []
    questions = plan.questions_of(spec)
    decisions = looks.replay(questions, results(runs), spec.plan, through)
    lines = [f"verdicts after look {through} of {len(spec.plan.looks)}:"]
    for q in questions:
        name, d = q.name, decisions[q.name]
        if d.verdict == sequential.EQUIVALENT:  # judged with failures counted
            nums = f"{d.diff_counted:+.2f} [{d.interval_equivalence[0]:+.2f}, {d.interval_equivalence[1]:+.2f}]"
        else:
            lo, hi = d.interval
            nums = f"{d.diff:+.2f} [{lo:+.2f}, {hi:+.2f}]" if d.diff == d.diff else "no value test"
        bound = (
            f", equivalent within +-{d.equivalence_bound:.2f}"
            if d.equivalence_bound == d.equivalence_bound and d.verdict not in (sequential.BETTER, sequential.WORSE)
            else ""
        )
        more = (
            f"; the spec's maximum of {spec.max_seeds} seeds per configuration is reached"
            if d.verdict == sequential.CANNOT_TELL
            else ""
        )
        lines.append(f"  {name}: {verdict_words(d, q)} at look {d.look}, {nums}{bound}, {d.runs} runs{more}")
    return lines


def summary(study: optuna.Study, spec: StudySpec) -> str:
    """Runs by outcome, one row per configuration (its results and score), the pick, then where to look next."""
    runs = plan.runs_of(study)
    seeds = (
        f"seeds at looks {', '.join(map(str, spec.plan.looks))} (margin {spec.margin_db:g} dB)"
        if spec.sequential
        else f"{spec.seeds} seed(s) per configuration"
    )
    lines = [f"study {spec.name}: {outcome.describe(plan.outcomes(runs, phase=None))}; {seeds}"]
    table = _table(runs, spec)
    if table:
        lines.append(table)
    best = plan.best_config(study, spec, runs)
    if best is not None:
        params: dict[str, Any] = next(r.params for r in runs if r.config_id == best.config_id)
        lines.append(
            f"best configuration {best.config_id}: {spec.metric} score {best.score:.2f} (trained mean "
            f"{best.mean_trained:.2f} over {len(best.trained)} seed(s), fails {best.failed}/{best.results}) "
            f"params {dict(params)}"
        )
        if spec.seeds < 2 and not spec.racing:
            lines.append(
                "one seed per configuration: the ranking cannot be told apart from seed noise; "
                f"`cvae sweep {spec.name} --confirm 3 --seeds 3` re-runs the top 3 with fresh seeds"
            )
    elif runs:
        lines.append("no configuration has a trained run: nothing to pick (every result collapsed or diverged)")
    for t in study.get_trials(deepcopy=False):
        if outcome.of_trial(t) == outcome.DIVERGED:
            lines.append(
                f"  diverged run of {t.user_attrs.get('config_id', '-')} (trial {t.number}): "
                f"{t.user_attrs.get('fail_reason') or 'non-finite value'}"
            )
    if spec.sequential and spec.grid:
        lines += _verdicts(study, spec, runs)
    if spec.racing:
        lanes, order = plan.race_lanes(study, spec)
        lines.append(
            f"race (seeds {', '.join(map(str, spec.plan.looks))}, margin {spec.margin_db:g}): "
            + "; ".join(
                f"{c} {lanes[c].status} at {lanes[c].target} seeds"
                + (f" vs {lanes[c].against} ({lanes[c].diff:+.2f})" if lanes[c].against else "")
                for c in order
            )
        )
    lost = lost_runs(runs)
    if lost:
        lines.append(
            f"{len(lost)} run(s) lost to kills or stops with no retry left (trials "
            f"{', '.join(str(r.number) for r in lost)}): the same command again runs them"
        )
    lines.append("next: `make ui` to browse the runs, `make report` for the comparison report")
    return "\n".join(lines)
