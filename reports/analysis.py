"""A study's runs -> every number the report shows (results.json): settings, comparisons, verdicts (pure).

Input is the tidy one-row-per-run frame of reports/collect.py (its `outcome` column is sweeps.outcome's rule);
nothing here reads a store or draws. Every result counts: a collapsed or diverged run is a failure of its
setting, in its failure rate and in the verdicts (sweeps/sequential.py), and settings are ranked by the same
score the study picks its winner by (sweeps.design.ranking).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from reports.comparisons import comparisons
from reports.frames import as_runs, num
from reports.words import verdict_line
from sweeps import boundary, outcome, sequential, stats
from sweeps.design import CONFIRM, SEARCH, scores
from sweeps.spec import MARGIN_DB

# helpers


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The searched config paths (columns `param:<path>`)."""
    return [c.removeprefix("param:") for c in runs.columns if c.startswith("param:")]


def label(params: dict[str, Any], varying: list[str]) -> str:
    """'tf.start_decay_epoch=4, kl.mode=cyclical': the settings that differ between configurations."""
    keys = varying or list(params)
    return ", ".join(f"{k}={_fmt(params[k])}" for k in keys) or "(one configuration)"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trained(runs: pd.DataFrame, phase: str = SEARCH) -> pd.DataFrame:
    """The trained runs of a phase: their values are what a setting's mean, curves and media show."""
    return runs[(runs.outcome == outcome.TRAINED) & (runs.phase == phase)]


# settings


def _failure(failed: int, n: int) -> dict[str, Any]:
    lo, hi = stats.failure_interval(failed, n) if n else (math.nan, math.nan)
    return {"failed": failed, "results": n, "failure_rate": failed / n if n else None, "failure_ci": [lo, hi]}


def settings(
    runs: pd.DataFrame, params: list[str], reps: int, seed: int, margin: float, maximize: bool = True
) -> list[dict[str, Any]]:
    """One entry per configuration: its runs by outcome, its failure rate with an exact interval, its trained
    seeds' values and their summary, and its score (failures a margin below the worst trained run); ranked as
    the study picks (design.ranking: by score, a configuration with no trained run last)."""
    ok = trained(runs)
    scored = scores(as_runs(runs), margin, maximize)
    varying = [p for p in params if runs[f"param:{p}"].nunique(dropna=True) > 1]
    out = []
    for cid, g in runs[runs.phase == SEARCH].groupby("config_id", sort=False):
        good = ok[ok.config_id == cid].sort_values("seed")
        bad = g[g.outcome.isin(outcome.FAILED)].sort_values("seed")
        p = {k: g.iloc[0][f"param:{k}"] for k in params}
        s = scored.get(cid)
        entry: dict[str, Any] = {
            "config_id": cid,
            "label": label(p, varying),
            "params": p,
            "runs": int(len(g)),
            "outcomes": outcome.counts(g.outcome),
            **_failure(s.failed if s else 0, s.results if s else 0),
            "score": s.score if s else None,
            "n": int(len(good)),
            "values": good.value.tolist(),
            "seeds": good.seed.tolist(),
            "run_ids": good.run_id.tolist(),
            "trials": good.trial.tolist(),
            "failed_runs": [
                {"seed": r.seed, "outcome": r.outcome, "value": r.value, "trial": int(r.trial)}
                for r in bad.itertuples()
            ],
            "cond_gain": good.cond_gain.mean() if len(good) else None,
            "psnr_moving": good.psnr_moving.mean() if len(good) else None,
            "psnr_moving_copy_last": good.psnr_moving_copy_last.mean() if len(good) else None,
            # test-split scores where `cvae eval` was run on a seed's checkpoint
            "test_psnr": good.test_psnr.mean() if "test_psnr" in good and good.test_psnr.notna().any() else None,
        }
        if len(good):
            sm = stats.summarize(good.value.to_numpy(float), reps=reps, seed=seed)
            entry.update(mean=sm.mean, std=sm.std, iqm=sm.iqm, ci=[sm.ci_low, sm.ci_high])
        out.append(num(entry))
    sign = -1 if maximize else 1
    out.sort(key=lambda e: (not e["n"], sign * (e.get("score") or 0.0), e["config_id"]))
    return out


# comparisons


# confirmation, compute


def confirmations(
    runs: pd.DataFrame, setting_list: list[dict[str, Any]], reps: int, seed: int, margin: float, maximize: bool
) -> list[dict[str, Any]]:
    """Each confirmed configuration: search-time score and mean next to the confirmed ones (winner's curse),
    its confirmation failures counted as the search's are."""
    by_id = {s["config_id"]: s for s in setting_list}
    confirmed = scores(as_runs(runs), margin, maximize, CONFIRM)
    ok = trained(runs, CONFIRM)
    out = []
    for cid, s in confirmed.items():
        g = ok[ok.config_id == cid]
        sm = stats.summarize(g.value.to_numpy(float), reps=reps, seed=seed) if len(g) else None
        search = by_id.get(cid, {})
        all_runs = runs[(runs.phase == CONFIRM) & (runs.config_id == cid)]
        search_score = search.get(
            "score", all_runs.search_value.dropna().iloc[0] if all_runs.search_value.notna().any() else None
        )
        out.append(
            num(
                {
                    "config_id": cid,
                    "label": search.get("label", cid),
                    "search_score": search_score,
                    "search_mean": search.get("mean"),
                    "search_n": search.get("n", 0),
                    "score": s.score,
                    **_failure(s.failed, s.results),
                    "n": len(g),
                    "mean": sm.mean if sm else None,
                    "std": sm.std if sm else None,
                    "ci": [sm.ci_low, sm.ci_high] if sm else [None, None],
                    "values": g.value.tolist(),
                    "seeds": g.seed.tolist(),
                    "shrinkage": None if search_score is None else s.score - search_score,
                }
            )
        )
    return out


def compute(runs: pd.DataFrame, niter: int) -> dict[str, Any]:
    """Runs by outcome, epochs and hours run, and what pruning saved (epochs a pruned run did not train)."""
    epochs = runs.epochs.fillna(0).astype(float)
    pruned = runs.outcome == outcome.PRUNED
    saved = float((niter - epochs[pruned]).clip(lower=0).sum())
    planned = float(niter * len(runs))
    return num(
        {
            "runs": int(len(runs)),
            **outcome.counts(runs.outcome),
            "epochs_trained": float(epochs.sum()),
            "epochs_planned": planned,
            "epochs_saved_by_pruning": saved,
            "saved_fraction": saved / planned if planned else None,
            "worker_hours": float(runs.duration_s.fillna(0).sum()) / 3600,
        }
    )


# the whole analysis


def plan_of(info: dict[str, Any], setting_list: list[dict[str, Any]]) -> tuple[sequential.Plan, int]:
    """The study's decision rule and the last look it decided. `info` may carry looks, margin_db and look (the
    sequential state); a study without them is one look at the seeds it has."""
    looks = tuple(info.get("looks") or ()) or (
        max([s["results"] for s in setting_list] + [int(info.get("seeds") or 1), 1]),
    )
    plan = sequential.Plan(
        looks=looks,
        margin=float(info.get("margin_db") or MARGIN_DB),
        maximize=info.get("direction", "maximize") == "maximize",
    )
    look = info.get("look")
    return plan, 1 if look is None else int(look)  # 0: a sequential study still in its first look


def _thresholds(plan: sequential.Plan, info: dict[str, Any], reps: int, seed: int) -> dict[str, Any]:
    seq_words = (
        f"{len(plan.looks)} looks at {', '.join(map(str, plan.looks))} seeds per configuration, the error "
        f"rates spread over them by an O'Brien-Fleming boundary calibrated on t statistics (a simulation "
        f"of the look statistics, {boundary.BOUNDARY_DRAWS:,} paths)"
        if len(plan.looks) > 1
        else "one look"
    )
    return {
        "alpha": plan.alpha,
        "level": stats.LEVEL,
        "margin_db": plan.margin,
        "bootstrap": {"method": stats.METHOD, "reps": reps, "seed": seed},
        "failures": "the failure rates are compared by "
        "an exact test on the seeds where one side failed more (Boschloo's exact test where the sides "
        "share no seeds), and equivalence counts a failure as a margin worse than the trained run it "
        "meets; the value test compares trained runs",
        "test": "t test of the per-seed differences where both sides share seeds (paired), else Welch's t "
        f"(unpaired); {seq_words}; within each family (main effects; setting pairs) the value and failure "
        "tests are adjusted together by Holm's step-down with Tarone's rule for the exact tests; the exact "
        "sign-flip p of the paired differences is shown as a check",
        "verdict": f"worse when a side fails significantly more often, whatever its trained runs score; else "
        f"better/worse when the adjusted, look-corrected p <= {plan.alpha} (beyond or within the "
        f"{plan.margin:g} margin when its interval says so); equivalent when TOST, look-corrected and "
        f"Holm-adjusted across the family, puts the difference inside +-{plan.margin:g} at {plan.alpha}; "
        "else open, or after the last look cannot tell yet",
        "degenerate_below": info.get("degenerate_below"),
    }


def analyse(
    runs: pd.DataFrame, info: dict[str, Any], *, reps: int = stats.REPS, seed: int = stats.SEED
) -> dict[str, Any]:
    """Every number of the report. `info`: name, description, metric, direction, seeds, niter, degenerate_below,
    margin_db, and for a sequential study looks and look (the last look decided)."""
    maximize = info.get("direction", "maximize") == "maximize"
    margin = float(info.get("margin_db") or MARGIN_DB)
    params = param_columns(runs)
    setting_list = settings(runs, params, reps, seed, margin, maximize)
    plan, through = plan_of(info, setting_list)
    cmp = comparisons(runs, setting_list, plan, through)
    ok = trained(runs)
    floor = stats.noise_floor(ok[ok.config_id == s["config_id"]].value.to_numpy(float) for s in setting_list)
    answer = [verdict_line(c, info["metric"]) for c in cmp]
    if max((s["n"] for s in setting_list), default=0) < 2:
        answer.insert(
            0,
            f"Every setting has fewer than 2 trained seeds: this study cannot separate settings from "
            f"seed noise. Run `cvae sweep {info['name']} --confirm 3 --seeds 3` (or `make confirm`) to "
            "re-run the best configurations with fresh seeds.",
        )
    if through == 0:
        answer.insert(
            0,
            f"The study is still in its first look ({plan.looks[0]} seeds per configuration): no main "
            "effect is decided yet; `make sweep` again continues it.",
        )
    copy_last = runs.copy_last.dropna()
    failed = runs[runs.outcome.isin(outcome.FAILED)]
    return num(
        {
            "study": {
                k: info.get(k)
                for k in (
                    "name",
                    "description",
                    "metric",
                    "direction",
                    "seeds",
                    "niter",
                    "sampler",
                    "pruner",
                    "storage",
                    "degenerate_below",
                )
            }
            | {
                "looks": list(plan.looks),
                "look": through,
                "margin_db": plan.margin,
                "outcomes": outcome.counts(runs.outcome),
            },
            "thresholds": _thresholds(plan, info, reps, seed),
            "answer": answer,
            "settings": setting_list,
            "comparisons": cmp,
            "noise_floor": floor,
            "copy_last": copy_last.mean() if len(copy_last) else None,
            "failed_runs": [
                {
                    "trial": int(r.trial),
                    "config_id": r.config_id,
                    "seed": r.seed,
                    "outcome": r.outcome,
                    "value": r.value,
                    "cond_gain": r.cond_gain,
                    "reason": r.fail_reason,
                    "run_id": r.run_id,
                }
                for r in failed.itertuples()
            ],
            "lost_runs": [
                {"trial": int(r.trial), "config_id": r.config_id, "seed": r.seed}
                for r in runs[runs.outcome == outcome.LOST].itertuples()
            ],
            "confirm": confirmations(runs, setting_list, reps, seed, margin, maximize),
            "compute": compute(runs, int(info.get("niter") or 0)),
        }
    )
