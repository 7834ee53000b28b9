"""A study's comparisons as results.json holds them: every main effect replayed look by look as the study decided
it, the best setting against its runners-up, and the best settings of several studies (pure)."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import combinations
from typing import Any

import pandas as pd

from reports.frames import as_runs, num
from sweeps import evidence, looks, outcome, sequential, stats
from sweeps.design import results
from sweeps.questions import Question, main_effects, setting_pair
from sweeps.spec import MARGIN_DB

MAX_PAIRS = 5  # the best setting is compared with at most this many runners-up


def _row(
    q: Question,
    d: sequential.Decision,
    values: dict[tuple[str, int], float],
    plan: sequential.Plan,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One comparison as results.json holds it."""
    ev = evidence.evidence(q, values, d.seeds, plan.margin, plan.maximize)
    diffs = ev.a - ev.b
    paired = d.test == stats.PAIRED_T
    more = (
        max(d.seeds_needed - d.seeds, 1) * len(q.configs)
        if d.verdict in (sequential.CANNOT_TELL, sequential.OPEN)
        else None
    )
    rate = lambda k, n: k / n if n else None  # noqa: E731
    return num(
        {
            "name": q.name,
            "kind": q.kind,
            "factor": q.factor,
            "a": q.a,
            "b": q.b,
            **(extra or {}),
            "verdict": d.verdict,
            "decided_by": d.decided_by or None,
            "look": d.look,
            "looks": len(plan.looks),
            "seeds": d.seeds,
            "max_seeds": plan.looks[-1],
            "runs": d.runs,
            "paired": paired,
            "test": d.test,
            "margin_db": plan.margin,
            "margin_note": d.margin,
            "n_a": d.n_a,
            "n_b": d.n_b,
            "mean_a": d.mean_a,
            "mean_b": d.mean_b,
            "diff": d.diff,
            "diff_counted": d.diff_counted,
            "p_value": d.p_value,
            "p_sequential": d.p_sequential,
            # the interval that decides the verdict: TOST's for "equivalent", the difference's otherwise
            "interval": list(d.interval_equivalence if d.verdict == sequential.EQUIVALENT else d.interval),
            "interval_difference": list(d.interval),
            "interval_equivalence": list(d.interval_equivalence),
            "p_adjusted": d.p_adjusted,
            "p_equivalence": d.p_equivalence,
            "p_equivalence_adjusted": d.p_equivalence_adjusted,
            "equivalence_bound": d.equivalence_bound,
            "failures": {
                "a": d.failed_a,
                "b": d.failed_b,
                "results_a": d.results_a,
                "results_b": d.results_b,
                "rate_a": rate(d.failed_a, d.results_a),
                "rate_b": rate(d.failed_b, d.results_b),
                "seeds_a_more": d.more_a,
                "seeds_b_more": d.more_b,
                "test": d.fail_test or None,
                "p": d.p_fail,
                "p_sequential": d.p_fail_sequential,
                "p_adjusted": d.p_fail_adjusted,
            },
            "prob_improvement": d.p_improve,
            "prob_improvement_ci": list(stats.bootstrap_ci((diffs > 0) + 0.5 * (diffs == 0))) if paired else None,
            "sign_flip_p": stats.sign_flip_p(diffs) if paired else None,
            "pair_seeds": ev.seeds if paired else [],
            "correlation": d.correlation,
            "width_paired": d.width_paired,
            "width_unpaired": d.width_unpaired,
            "narrower": 1 - d.width_paired / d.width_unpaired if paired and d.width_unpaired else None,
            "seeds_needed": d.seeds_needed,
            "runs_needed": more if more is None or math.isfinite(more) else None,
            "reason": d.reason or None,
        }
    )


def comparisons(
    runs: pd.DataFrame, setting_list: list[dict[str, Any]], plan: sequential.Plan, through: int
) -> list[dict[str, Any]]:
    """Main effect of every factor (each pair of its levels), replayed look by look as the study decided them,
    then the best setting against its runners-up at the last look decided.

    A main effect pairs its sides seed by seed within cells equal in every other setting (sweeps.sequential).
    The adjustment runs within each family: the main effects are the design's questions (they decide the seeds),
    the setting pairs a second look chosen after the fact; mixing them would let the second dilute the first.
    """
    values = results(as_runs(runs))
    configs = {s["config_id"]: {k: v for k, v in s["params"].items() if v is not None} for s in setting_list}
    questions = main_effects(configs)
    decisions = looks.replay(questions, values, plan, through) if through else {}
    out = [_row(q, decisions[q.name], values, plan) for q in questions if q.name in decisions]
    ranked = [s for s in setting_list if s["results"]]
    pairs = (
        [
            setting_pair(ranked[0]["config_id"], o["config_id"], ranked[0]["label"], o["label"])
            for o in ranked[1 : 1 + MAX_PAIRS]
        ]
        if len(ranked) > 1 and ranked[0]["n"]
        else []
    )
    for q, d in sequential.decide_look(pairs, values, plan, max(1, through)).items() if pairs else []:
        q = next(p for p in pairs if p.name == q)
        if d.verdict == sequential.OPEN:  # these pairs never ask for seeds: what is open now stays open
            d = replace(d, verdict=sequential.CANNOT_TELL)
        out.append(_row(q, d, values, plan, {"a_config": q.side_a[0], "b_config": q.side_b[0]}))
    return out


def cross_study(results_by_study: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The best setting of each study against the best of every other study, adjusted together; paired by run
    seed where the studies share seeds (the same seed starts from the same weights and batches); failures count."""
    best = {name: r["settings"][0] for name, r in results_by_study.items() if r["settings"] and r["settings"][0]["n"]}
    values = {(name, int(sd)): float(v) for name, s in best.items() for sd, v in zip(s["seeds"], s["values"])}
    values |= {(name, int(f["seed"])): outcome.FAILURE for name, s in best.items() for f in s["failed_runs"]}
    seeds = 1 + max((k for _, k in values), default=0)
    margin = min((r["study"].get("margin_db") or MARGIN_DB for r in results_by_study.values()), default=MARGIN_DB)
    maximize = all(r["study"].get("direction", "maximize") == "maximize" for r in results_by_study.values())
    plan = sequential.Plan(looks=(seeds,), margin=margin, maximize=maximize)
    pairs = [
        setting_pair(a, b, f"{a}: {best[a]['label']}", f"{b}: {best[b]['label']}") for a, b in combinations(best, 2)
    ]
    decisions = sequential.decide_look(pairs, values, plan, 1)
    return [
        {**_row(q, decisions[q.name], values, plan), "kind": "study pair", "name": f"{q.side_a[0]} vs {q.side_b[0]}"}
        for q in pairs
    ]
