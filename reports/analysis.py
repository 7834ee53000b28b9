"""A study's runs -> every number the report shows (results.json): settings, comparisons, verdicts (pure).

Input is the tidy one-row-per-run frame of reports/collect.py; nothing here reads a store or draws.
Degenerate runs (a model that ignores its condition, sweeps/objective.py) are listed apart and never
ranked. Verdicts come from reports/stats.py: the numbers decide, with the thresholds printed.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from reports import stats
from sweeps.design import CONFIRM, SEARCH

MAX_LEVELS = 4  # a setting with more distinct values than this is a continuous dimension, not a factor
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
    """stats.verdict speaks of higher values; for a minimised metric lower is better."""
    if maximize or verdict == stats.CANNOT_TELL:
        return verdict
    return stats.WORSE if verdict == stats.BETTER else stats.BETTER


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


def factors(runs: pd.DataFrame, params: list[str]) -> dict[str, list[Any]]:
    """Settings with 2..MAX_LEVELS distinct values among the search runs: the design's factors and levels."""
    out = {}
    for p in params:
        levels = sorted(runs[runs.phase == SEARCH][f"param:{p}"].dropna().unique().tolist(), key=str)
        if 2 <= len(levels) <= MAX_LEVELS:
            out[p] = levels
    return out


# comparisons


def comparisons(runs: pd.DataFrame, params: list[str], setting_list: list[dict[str, Any]], *, reps: int, seed: int,
                alpha: float, min_effect: float, maximize: bool = True) -> list[dict[str, Any]]:
    """Main effect of every factor (each pair of its levels) and the best setting against its runners-up.

    Every run of a level counts for a main effect (the other factors averaged over, as in a factorial
    design). Holm's correction runs within each family: the main effects are the design's questions,
    the setting pairs a second look; mixing them would let the second dilute the first.
    """
    ok = usable(runs)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for p, levels in factors(runs, params).items():
        for a, b in combinations(levels, 2):
            va = ok[ok[f"param:{p}"] == a].value.to_numpy(float)
            vb = ok[ok[f"param:{p}"] == b].value.to_numpy(float)
            if len(va) and len(vb):
                name = f"{p}: {_fmt(a)} vs {_fmt(b)}"
                pairs[name] = (va, vb)
                meta[name] = {"kind": "main effect", "factor": p, "a": _fmt(a), "b": _fmt(b)}
    ranked = [s for s in setting_list if s["n"]]
    if len(ranked) > 1:
        best = ranked[0]
        for other in ranked[1 : 1 + MAX_PAIRS]:
            name = f"{best['label']} vs {other['label']}"
            pairs[name] = (np.asarray(best["values"], float), np.asarray(other["values"], float))
            meta[name] = {"kind": "setting pair", "factor": None, "a": best["label"], "b": other["label"],
                          "a_config": best["config_id"], "b_config": other["config_id"]}
    # Holm within each family of questions: the design's main effects, then the pairs of settings
    rows = []
    for kind in ("main effect", "setting pair"):
        family = {k: v for k, v in pairs.items() if meta[k]["kind"] == kind}
        if family:
            rows += stats.compare_many(family, reps=reps, seed=seed, alpha=alpha, min_effect=min_effect)
    out = []
    for r in rows:
        c = r.comparison
        out.append(_num({"name": r.name, **meta[r.name], "n_a": c.n_a, "n_b": c.n_b, "mean_a": c.mean_a,
                         "mean_b": c.mean_b, "diff": c.diff, "diff_ci": list(c.diff_ci), "p_improve": c.p_improve,
                         "p_improve_ci": list(c.p_improve_ci), "p_value": c.p_value, "p_adjusted": r.p_adjusted,
                         "test": c.test, "verdict": _better_word(r.verdict, maximize), "sigma": r.sigma,
                         "seeds_needed": r.seeds_needed, "reason": c.reason}))
    return out


def verdict_line(c: dict[str, Any], metric: str) -> str:
    """One sentence: who is better, by how much, with the interval, P(A>B), the adjusted p and n."""
    unit = " dB" if "psnr" in metric else ""
    head = (f"**{c['factor']}**: {c['a']} vs {c['b']}" if c["kind"] == "main effect" else f"**{c['a']}** vs {c['b']}")
    if c["reason"]:
        return f"{head}: cannot tell at this budget ({c['reason']}); difference {c['diff']:+.2f}{unit} (n={c['n_a']} vs {c['n_b']})."
    lo, hi = c["diff_ci"]
    plo, phi = c["p_improve_ci"]
    nums = (f"{c['diff']:+.2f}{unit} [{lo:+.2f}, {hi:+.2f}], P(A>B)={c['p_improve']:.2f} [{plo:.2f}, {phi:.2f}], "
            f"Holm p={c['p_adjusted']:.3g}, n={c['n_a']} vs {c['n_b']}")
    if c["verdict"] == stats.BETTER:
        return f"{head}: **{c['a']} is better** by {nums}."
    if c["verdict"] == stats.WORSE:
        return f"{head}: **{c['a']} is worse** by {nums}."
    need = c["seeds_needed"]
    if need is None or not math.isfinite(need) or need > MAX_RUNS_HINT:
        hint = "; no difference worth resolving at this noise"
    else:
        hint = f"; about {int(need)} runs per side would resolve a difference this size"
    return f"{head}: cannot tell at this budget ({nums}{hint})."


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


def analyse(runs: pd.DataFrame, info: dict[str, Any], *, reps: int = stats.REPS, seed: int = stats.SEED,
            alpha: float = stats.ALPHA, min_effect: float = stats.MIN_EFFECT_DB) -> dict[str, Any]:
    """Every number of the report. `info`: name, description, metric, direction, seeds, niter, degenerate_below."""
    maximize = info.get("direction", "maximize") == "maximize"
    params = param_columns(runs)
    setting_list = settings(runs, params, reps, seed, maximize)
    cmp = comparisons(runs, params, setting_list, reps=reps, seed=seed, alpha=alpha, min_effect=min_effect,
                      maximize=maximize)
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
    copy_last = runs.copy_last.dropna()
    return _num({
        "study": {k: info.get(k) for k in ("name", "description", "metric", "direction", "seeds", "niter", "sampler",
                                            "pruner", "storage", "degenerate_below")},
        "thresholds": {"alpha": alpha, "level": stats.LEVEL, "min_effect": min_effect,
                       "bootstrap": {"method": stats.METHOD, "reps": reps, "seed": seed},
                       "test": "two-sided permutation test of the difference of means (exact up to "
                               f"{stats.EXACT_LIMIT} relabelings), Holm-adjusted within each family (main effects; "
                               "setting pairs)",
                       "verdict": f"better/worse when Holm p < {alpha}, the {stats.LEVEL:.0%} interval of the "
                                  f"difference excludes 0 and |difference| >= {min_effect}; else cannot tell",
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


def cross_study(results: dict[str, dict[str, Any]], *, reps: int = stats.REPS, seed: int = stats.SEED,
                alpha: float = stats.ALPHA, min_effect: float = stats.MIN_EFFECT_DB) -> list[dict[str, Any]]:
    """The best setting of each study against the best of every other study, Holm-adjusted together."""
    best = {name: r["settings"][0] for name, r in results.items() if r["settings"] and r["settings"][0]["n"]}
    pairs = {f"{a} vs {b}": (np.asarray(best[a]["values"], float), np.asarray(best[b]["values"], float))
             for a, b in combinations(best, 2)}
    rows = stats.compare_many(pairs, reps=reps, seed=seed, alpha=alpha, min_effect=min_effect) if pairs else []
    out = []
    for r, (a, b) in zip(rows, combinations(best, 2)):
        c = r.comparison
        out.append(_num({"name": r.name, "kind": "study pair", "factor": None, "a": f"{a}: {best[a]['label']}",
                         "b": f"{b}: {best[b]['label']}", **{k: v for k, v in asdict(c).items()
                                                            if k in ("n_a", "n_b", "mean_a", "mean_b", "diff",
                                                                     "p_improve", "p_value", "test", "reason")},
                         "diff_ci": list(c.diff_ci), "p_improve_ci": list(c.p_improve_ci),
                         "p_adjusted": r.p_adjusted, "verdict": r.verdict, "sigma": r.sigma,
                         "seeds_needed": r.seeds_needed}))
    return out
