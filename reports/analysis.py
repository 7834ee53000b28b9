"""A study's runs -> every number the report shows (results.json): settings, comparisons, verdicts (pure).

Input is the tidy one-row-per-run frame of reports/collect.py; nothing here reads a store or draws.
Degenerate runs (a model that ignores its condition, sweeps/objective.py) are listed apart and never
ranked. Verdicts come from sweeps/stats.py: the numbers decide, with the thresholds printed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from sweeps.questions import Question, main_effects, setting_pair
from sweeps import boundary, stats
from sweeps import sequential
from sweeps.design import CONFIRM, SEARCH
from sweeps.spec import MARGIN_DB

MAX_PAIRS = 5  # the best setting is compared with at most this many runners-up
MAX_RUNS_HINT = 1000  # a power hint above this says the difference is too small to chase


# helpers


def _num(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to None."""
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_num(x) for x in v]
    if isinstance(v, dict):
        return {k: _num(x) for k, x in v.items()}
    return v


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The searched config paths (columns `param:<path>`)."""
    return [c.removeprefix("param:") for c in runs.columns if c.startswith("param:")]


def label(params: dict[str, Any], varying: list[str]) -> str:
    """'tf.start_decay_epoch=4, kl.mode=cyclical': the settings that differ between configurations."""
    keys = varying or list(params)
    return ", ".join(f"{k}={_fmt(params[k])}" for k in keys) or "(one configuration)"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def usable(runs: pd.DataFrame, phase: str = SEARCH) -> pd.DataFrame:
    """COMPLETE, non-degenerate runs of a phase with a finite value: what settings are ranked on."""
    ok = (runs.state == "COMPLETE") & (runs.phase == phase) & runs.value.notna()
    ok &= ~runs.degenerate.fillna(False).astype(bool)
    return runs[ok & np.isfinite(runs.value.astype(float))]


def _better_word(verdict: str, maximize: bool) -> str:
    """The decision speaks of higher values; for a minimised metric lower is better."""
    if maximize or verdict not in (sequential.BETTER, sequential.WORSE):
        return verdict
    return sequential.WORSE if verdict == sequential.BETTER else sequential.BETTER


# settings


def settings(runs: pd.DataFrame, params: list[str], reps: int, seed: int, maximize: bool = True) -> list[dict[str, Any]]:
    """One entry per configuration: its seeds' values and their summary, best first."""
    ok = usable(runs)
    varying = [p for p in params if runs[f"param:{p}"].nunique(dropna=True) > 1]
    out = []
    for cid, g in runs[runs.phase == SEARCH].groupby("config_id", sort=False):
        good = ok[ok.config_id == cid].sort_values("seed")
        p = {k: g.iloc[0][f"param:{k}"] for k in params}
        entry: dict[str, Any] = {"config_id": cid, "label": label(p, varying), "params": p,
                                 "runs": int(len(g)), "degenerate": int(g.degenerate.fillna(False).astype(bool).sum()),
                                 "n": int(len(good)), "values": good.value.tolist(), "seeds": good.seed.tolist(),
                                 "run_ids": good.run_id.tolist(), "trials": good.trial.tolist(),
                                 "cond_gain": good.cond_gain.mean() if len(good) else None,
                                 "psnr_moving": good.psnr_moving.mean() if len(good) else None,
                                 "psnr_moving_copy_last": good.psnr_moving_copy_last.mean() if len(good) else None,
                                 # test-split scores where `cvae eval` was run on a seed's checkpoint
                                 "test_psnr": good.test_psnr.mean() if "test_psnr" in good and
                                 good.test_psnr.notna().any() else None}
        if len(good):
            s = stats.summarize(good.value.to_numpy(float), reps=reps, seed=seed)
            entry.update(mean=s.mean, std=s.std, iqm=s.iqm, ci=[s.ci_low, s.ci_high])
        out.append(_num(entry))
    sign = -1 if maximize else 1
    out.sort(key=lambda e: (e.get("mean") is None, sign * (e.get("mean") or 0.0), e["config_id"]))
    return out


# comparisons


def _values(runs: pd.DataFrame) -> dict[tuple[str, int], float]:
    """(config_id, seed_index) -> value of the usable search runs: what the verdicts rest on."""
    ok = usable(runs)
    return {(str(r.config_id), int(r.seed_index)): float(r.value) for r in ok.itertuples()}


def _row(q: Question, d: sequential.Decision, values: dict[tuple[str, int], float], plan: sequential.Plan,
         maximize: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One comparison as results.json holds it."""
    ks, pa, pb, _, _ = sequential.evidence(q, values, d.seeds)
    diffs = pa - pb
    paired = d.test == stats.PAIRED_T
    n_configs = len(q.configs)
    more = max(d.seeds_needed - d.seeds, 1) * n_configs if d.verdict in (sequential.CANNOT_TELL, sequential.OPEN) else None
    return _num({"name": q.name, "kind": q.kind, "factor": q.factor, "a": q.a, "b": q.b, **(extra or {}),
                 "verdict": _better_word(d.verdict, maximize), "look": d.look, "looks": len(plan.looks), "seeds": d.seeds,
                 "runs": d.runs, "paired": paired, "test": d.test, "margin_db": plan.margin,
                 "margin_note": d.margin, "n_a": d.n_a, "n_b": d.n_b, "mean_a": d.mean_a, "mean_b": d.mean_b,
                 "diff": d.diff, "p_value": d.p_value, "p_sequential": d.p_sequential,
                 # the interval that decides the verdict: TOST's for "equivalent", the difference's otherwise
                 "interval": list(d.interval_equivalence if d.verdict == sequential.EQUIVALENT else d.interval),
                 "interval_difference": list(d.interval), "interval_equivalence": list(d.interval_equivalence),
                 "p_adjusted": d.p_adjusted, "p_equivalence": d.p_equivalence, "prob_improvement": d.p_improve,
                 "prob_improvement_ci": list(stats.bootstrap_ci((diffs > 0) + 0.5 * (diffs == 0))) if paired else None,
                 "sign_flip_p": stats.sign_flip_p(diffs) if paired else None, "pair_seeds": ks if paired else [],
                 "correlation": d.correlation, "width_paired": d.width_paired, "width_unpaired": d.width_unpaired,
                 "narrower": 1 - d.width_paired / d.width_unpaired if paired and d.width_unpaired else None,
                 "seeds_needed": d.seeds_needed, "runs_needed": more if more is None or math.isfinite(more) else None,
                 "reason": d.reason or None})


def comparisons(runs: pd.DataFrame, setting_list: list[dict[str, Any]], plan: sequential.Plan, through: int, *,
                maximize: bool = True) -> list[dict[str, Any]]:
    """Main effect of every factor (each pair of its levels), replayed look by look as the study decided them,
    then the best setting against its runners-up at the last look decided.

    A main effect pairs its sides seed by seed within cells equal in every other setting (sweeps.sequential).
    Holm runs within each family: the main effects are the design's questions (they decide the seeds), the
    setting pairs a second look chosen after the fact; mixing them would let the second dilute the first.
    """
    values = _values(runs)
    configs = {s["config_id"]: {k: v for k, v in s["params"].items() if v is not None} for s in setting_list}
    questions = main_effects(configs)
    decisions = sequential.replay(questions, values, plan, through) if through else {}
    out = [_row(q, decisions[q.name], values, plan, maximize) for q in questions if q.name in decisions]
    ranked = [s for s in setting_list if s["n"]]
    pairs = [setting_pair(ranked[0]["config_id"], o["config_id"], ranked[0]["label"], o["label"])
             for o in ranked[1 : 1 + MAX_PAIRS]] if len(ranked) > 1 else []
    for q, d in sequential.decide_look(pairs, values, plan, max(1, through)).items() if pairs else []:
        q = next(p for p in pairs if p.name == q)
        if d.verdict == sequential.OPEN:  # these pairs never ask for seeds: what is open now stays open
            d = replace(d, verdict=sequential.CANNOT_TELL)
        out.append(_row(q, d, values, plan, maximize, {"a_config": q.side_a[0], "b_config": q.side_b[0]}))
    return out


def verdict_line(c: dict[str, Any], metric: str) -> str:
    """One sentence: the verdict, by how much, with its interval, how it was tested, and at which look."""
    unit = " dB" if "psnr" in metric else ""
    head = (f"**{c['factor']}**: {c['a']} vs {c['b']}" if c["kind"] == "main effect" else f"**{c['a']}** vs {c['b']}")
    if c["reason"]:
        return f"{head}: cannot tell yet ({c['reason']}); difference {_signed(c['diff'], unit)} (n={c['n_a']} vs {c['n_b']})."
    lo, hi = c["interval"]
    how = (f"paired over {c['n_a']} seeds" + (f", correlation {c['correlation']:.2f}" if c["correlation"] is not None else "")
           if c["paired"] else f"unpaired, n={c['n_a']} vs {c['n_b']}")
    where = f"look {c['look']} of {c['looks']}, {c['runs']} runs" if c["looks"] > 1 else f"{c['runs']} runs"
    nums = f"{_signed(c['diff'], unit)} [{lo:+.2f}, {hi:+.2f}] ({how}; {where})"
    if c["verdict"] in (stats_words := (sequential.BETTER, sequential.WORSE)):
        note = {"beyond the margin": f", more than the {c['margin_db']:g}{unit} margin",
                "within the margin": f", less than the {c['margin_db']:g}{unit} margin"}.get(c["margin_note"] or "", "")
        word = "better" if c["verdict"] == stats_words[0] else "worse"
        return f"{head}: **{c['a']} is {word}**{note}: {nums}, P(A>B)={c['prob_improvement']:.2f}, Holm p={c['p_adjusted']:.3g}."
    if c["verdict"] == sequential.EQUIVALENT:
        return (f"{head}: **equivalent within +-{c['margin_db']:g}{unit}**: {nums}, TOST p={c['p_equivalence']:.3g}.")
    if c["verdict"] == sequential.OPEN:
        return f"{head}: open after {nums}: the next look adds seeds."
    more = c["runs_needed"]
    if more is None or more > MAX_RUNS_HINT:
        hint = "; no verdict is within reach at this noise"
    else:
        target = max(int(c["seeds_needed"]), c["seeds"] + 1)
        hint = f"; about {int(math.ceil(more))} more runs ({target} seeds per configuration) would decide it"
    return f"{head}: cannot tell yet: {nums}, Holm p={c['p_adjusted']:.3g}{hint}."


def _signed(v: Any, unit: str) -> str:
    return "-" if v is None else f"{v:+.2f}{unit}"


# confirmation, compute


def confirmations(runs: pd.DataFrame, setting_list: list[dict[str, Any]], reps: int, seed: int) -> list[dict[str, Any]]:
    """Each confirmed configuration: search-time mean next to the confirmed mean and interval (winner's curse)."""
    ok = usable(runs, CONFIRM)
    by_id = {s["config_id"]: s for s in setting_list}
    out = []
    for cid, g in ok.groupby("config_id", sort=False):
        s = stats.summarize(g.value.to_numpy(float), reps=reps, seed=seed)
        search = by_id.get(cid, {})
        search_mean = search.get("mean", g.search_value.dropna().iloc[0] if g.search_value.notna().any() else None)
        out.append(_num({"config_id": cid, "label": search.get("label", cid), "search_mean": search_mean,
                         "search_n": search.get("n", 0), "n": s.n, "mean": s.mean, "std": s.std,
                         "ci": [s.ci_low, s.ci_high], "values": g.value.tolist(), "seeds": g.seed.tolist(),
                         "shrinkage": None if search_mean is None else s.mean - search_mean}))
    return out


def compute(runs: pd.DataFrame, niter: int) -> dict[str, Any]:
    """Epochs and hours run, and what pruning saved (epochs a pruned run did not train)."""
    epochs = runs.epochs.fillna(0).astype(float)
    pruned = runs.state == "PRUNED"
    saved = float((niter - epochs[pruned]).clip(lower=0).sum())
    planned = float(niter * len(runs))
    return _num({"runs": int(len(runs)), "complete": int((runs.state == "COMPLETE").sum()),
                 "pruned": int(pruned.sum()), "failed": int((runs.state == "FAIL").sum()),
                 "epochs_trained": float(epochs.sum()), "epochs_planned": planned, "epochs_saved_by_pruning": saved,
                 "saved_fraction": saved / planned if planned else None,
                 "worker_hours": float(runs.duration_s.fillna(0).sum()) / 3600})


# the whole analysis


def plan_of(info: dict[str, Any], setting_list: list[dict[str, Any]]) -> tuple[sequential.Plan, int]:
    """The study's decision rule and the last look it decided. `info` may carry looks, margin_db and look (the
    sequential state); a study without them is one look at the seeds it has."""
    looks = tuple(info.get("looks") or ()) or (max([s["n"] for s in setting_list] + [int(info.get("seeds") or 1), 1]),)
    plan = sequential.Plan(looks=looks, margin=float(info.get("margin_db") or MARGIN_DB))
    look = info.get("look")
    return plan, 1 if look is None else int(look)  # 0: a sequential study still in its first look


def analyse(runs: pd.DataFrame, info: dict[str, Any], *, reps: int = stats.REPS, seed: int = stats.SEED) -> dict[str, Any]:
    """Every number of the report. `info`: name, description, metric, direction, seeds, niter, degenerate_below,
    and for a sequential study looks, margin_db and look (the last look decided)."""
    maximize = info.get("direction", "maximize") == "maximize"
    params = param_columns(runs)
    setting_list = settings(runs, params, reps, seed, maximize)
    plan, through = plan_of(info, setting_list)
    cmp = comparisons(runs, setting_list, plan, through, maximize=maximize)
    ok = usable(runs)
    groups = [ok[ok.config_id == s["config_id"]].value.to_numpy(float) for s in setting_list]
    floor = stats.noise_floor(groups)
    degenerate = runs[runs.degenerate.fillna(False).astype(bool)]
    answer = [verdict_line(c, info["metric"]) for c in cmp]
    max_seeds = max((s["n"] for s in setting_list), default=0)
    if max_seeds < 2:
        answer.insert(0, f"Every setting has fewer than 2 usable seeds: this study cannot separate settings from "
                         f"seed noise. Run `cvae sweep {info['name']} --confirm 3 --seeds 3` (or `make confirm`) to "
                         "re-run the best configurations with fresh seeds.")
    if through == 0:
        answer.insert(0, f"The study is still in its first look ({plan.looks[0]} seeds per configuration): no main "
                         "effect is decided yet; `make sweep` again continues it.")
    copy_last = runs.copy_last.dropna()
    seq_words = (f"{len(plan.looks)} looks at {', '.join(map(str, plan.looks))} seeds per configuration, the error "
                 f"rates spread over them by a Pocock boundary (a simulation of the look statistics, "
                 f"{boundary.BOUNDARY_DRAWS:,} paths)" if len(plan.looks) > 1 else "one look")
    return _num({
        "study": {k: info.get(k) for k in ("name", "description", "metric", "direction", "seeds", "niter", "sampler",
                                            "pruner", "storage", "degenerate_below")}
                 | {"looks": list(plan.looks), "look": through, "margin_db": plan.margin},
        "thresholds": {"alpha": plan.alpha, "level": stats.LEVEL, "margin_db": plan.margin,
                       "bootstrap": {"method": stats.METHOD, "reps": reps, "seed": seed},
                       "test": "t test of the per-seed differences where both sides share seeds (paired), else "
                               f"Welch's t (unpaired); {seq_words}; Holm within each family (main effects; setting "
                               "pairs); the exact sign-flip p of the paired differences is shown as a check",
                       "verdict": f"better/worse when the Holm-adjusted, look-corrected p <= {plan.alpha} (and beyond "
                                  f"or within the {plan.margin:g} margin when its interval says so); equivalent when "
                                  f"TOST, look-corrected, puts the difference inside +-{plan.margin:g} at "
                                  f"{plan.alpha}; else open, or after the last look cannot tell yet",
                       "degenerate_below": info.get("degenerate_below")},
        "answer": answer,
        "settings": setting_list,
        "comparisons": cmp,
        "noise_floor": floor,
        "copy_last": copy_last.mean() if len(copy_last) else None,
        "degenerate": [{"trial": int(r.trial), "config_id": r.config_id, "seed": r.seed, "value": r.value,
                        "cond_gain": r.cond_gain, "run_id": r.run_id} for r in degenerate.itertuples()],
        "confirm": confirmations(runs, setting_list, reps, seed),
        "compute": compute(runs, int(info.get("niter") or 0)),
        "failed": [{"trial": int(r.trial), "config_id": r.config_id, "reason": r.fail_reason}
                   for r in runs[runs.state == "FAIL"].itertuples()],
    })


def cross_study(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The best setting of each study against the best of every other study, Holm-adjusted together; paired by
    run seed where the studies share seeds (the same seed starts from the same weights and batches)."""
    best = {name: r["settings"][0] for name, r in results.items() if r["settings"] and r["settings"][0]["n"]}
    values = {(name, int(sd)): float(v) for name, s in best.items() for sd, v in zip(s["seeds"], s["values"])}
    seeds = 1 + max((k for _, k in values), default=0)
    margin = min((r["study"].get("margin_db") or MARGIN_DB for r in results.values()), default=MARGIN_DB)
    plan = sequential.Plan(looks=(seeds,), margin=margin)
    pairs = [setting_pair(a, b, f"{a}: {best[a]['label']}", f"{b}: {best[b]['label']}")
             for a, b in combinations(best, 2)]
    decisions = sequential.decide_look(pairs, values, plan, 1)
    return [{**_row(q, decisions[q.name], values, plan, True), "kind": "study pair", "name": f"{q.side_a[0]} vs {q.side_b[0]}"}
            for q in pairs]
