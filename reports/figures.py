"""Report figures: every seed per setting, learning curves with bands, the origin report's four plots per
setting, per-frame PSNR, and the exploratory appendix. Each takes tidy frames / results and a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cvae.plots import save_figure  # noqa: E402 - one atomic PNG writer for the project
from sweeps import stats  # noqa: E402

MAX_SETTINGS = 8  # curves and the four-plot grid show at most this many settings (best first)

# helpers


def _colors(n: int) -> list[Any]:
    return [plt.get_cmap("tab10")(i % 10) for i in range(n)]


def _unit(metric: str) -> str:
    return f"{metric} (dB)" if "psnr" in metric else metric


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _band(values: np.ndarray, reps: int = 2000) -> tuple[float, float, float]:
    """Mean and its percentile-bootstrap interval (a point when fewer than 2 seeds)."""
    lo, hi = stats.bootstrap_ci(values, reps=reps, seed=0) if len(values) > 1 else (values[0], values[0])
    return float(values.mean()), lo, hi


def _setting_curves(curves: pd.DataFrame, setting: dict[str, Any], metric: str) -> pd.DataFrame:
    """epoch, mean, lo, hi of one metric over the setting's seeds."""
    df = curves[(curves.metric == metric) & curves.run_id.isin(setting["run_ids"])]
    rows = [(e, *_band(g.value.to_numpy(float))) for e, g in df.groupby("epoch")]
    return pd.DataFrame(rows, columns=["epoch", "mean", "lo", "hi"])


def schedule_marks(params: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Where a setting's schedules turn: teacher-forcing decay start and KL cycle boundaries (in epochs)."""
    cfg = {**base, **params}
    niter = float(cfg.get("train.niter") or 0)
    marks: dict[str, Any] = {"tf_start": cfg.get("tf.start_decay_epoch"), "kl_cycles": []}
    if cfg.get("kl.mode") == "cyclical" and niter:
        cycles = int(cfg.get("kl.cycles") or 1)
        marks["kl_cycles"] = [niter * k / cycles for k in range(1, cycles)]
    return marks


# figures


def strip(results: dict[str, Any], runs: pd.DataFrame, path: Path) -> Path:
    """Every seed of every setting: trained runs (dots), their mean and interval (bar), collapsed runs at their
    value (grey x) and diverged runs, which have none, at the left edge (red triangle); legend below the axes."""
    settings = results["settings"]
    metric = results["study"]["metric"]
    fig, ax = plt.subplots(figsize=(8, 0.55 * max(3, len(settings)) + 1.9))
    labels: set[str] = set()

    def once(name: str) -> str | None:
        if name in labels:
            return None
        labels.add(name)
        return name

    diverged_rows = []
    for i, s in enumerate(settings):
        y = len(settings) - 1 - i
        vals = np.asarray(s["values"], float)
        ax.scatter(
            vals,
            np.full(len(vals), y) + np.linspace(-0.12, 0.12, len(vals)) if len(vals) else vals,
            color="tab:blue",
            s=22,
            zorder=3,
            label=once("trained seed"),
        )
        if s.get("mean") is not None:
            lo, hi = s["ci"]
            ax.errorbar(
                s["mean"],
                y,
                xerr=[[s["mean"] - lo], [hi - s["mean"]]],
                fmt="D",
                color="black",
                ms=6,
                capsize=4,
                zorder=4,
                label=once(f"mean of trained seeds, {results['thresholds']['level']:.0%} interval"),
            )
        mine = runs[(runs.config_id == s["config_id"]) & (runs.phase == "search")]
        collapsed = mine[mine.outcome == "collapsed"]
        if len(collapsed):
            ax.scatter(
                collapsed.value,
                np.full(len(collapsed), y),
                marker="x",
                color="grey",
                s=36,
                zorder=2,
                label=once("collapsed (ignores its condition): a failure"),
            )
        diverged_rows += [y] * int((mine.outcome == "diverged").sum())
    if results.get("copy_last") is not None:
        ax.axvline(results["copy_last"], color="red", ls="--", lw=1, label="copy last frame")
    if diverged_rows:  # no value: drawn at the left edge of what is shown
        left = ax.get_xlim()[0]
        ax.scatter(
            np.full(len(diverged_rows), left),
            diverged_rows,
            marker="<",
            color="tab:red",
            s=40,
            zorder=5,
            clip_on=False,
            label=once("diverged (no value): a failure"),
        )
    ax.set_yticks(range(len(settings)), [s["label"] for s in reversed(settings)], fontsize=8)
    ax.set_xlabel(_unit(metric))
    ax.set_title(f"{metric} of every seed, per setting (best score at the top)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    return save_figure(fig, path)


def learning_curves(results: dict[str, Any], curves: pd.DataFrame, base: dict[str, Any], path: Path) -> Path:
    """Validation metric per epoch: mean over seeds with an interval band per setting; schedule turns marked."""
    metric = results["study"]["metric"]
    settings = [s for s in results["settings"] if s["n"]][:MAX_SETTINGS]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for s, color in zip(settings, _colors(len(settings))):
        c = _setting_curves(curves, s, metric)
        if c.empty:
            continue
        ax.plot(c.epoch, c["mean"], color=color, marker="o", ms=3, label=f"{s['label']} (n={s['n']})")
        ax.fill_between(c.epoch, c.lo, c.hi, color=color, alpha=0.15)
        marks = schedule_marks(s["params"], base)
        if marks["tf_start"] is not None:
            ax.axvline(marks["tf_start"], color=color, ls="--", lw=1)
        for b in marks["kl_cycles"]:
            ax.axvline(b, color=color, ls=":", lw=1)
    if results.get("copy_last") is not None:
        ax.axhline(results["copy_last"], color="red", ls="--", lw=1, label="copy last frame")
    ax.set_xlabel("epoch  (dashed: teacher-forcing decay starts; dotted: KL cycle boundary)")
    ax.set_ylabel(_unit(metric))
    ax.set_title(
        f"Validation {metric}: mean over seeds, band = {results['thresholds']['level']:.0%} bootstrap interval"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def origin_grid(results: dict[str, Any], curves: pd.DataFrame, schedules: dict[str, Any], path: Path) -> Path:
    """The origin report's four plots (training loss, validation PSNR, KL weight, teacher-forcing ratio), one row
    per setting; the two schedules are drawn from the setting's config (`schedules[config_id]`: epochs and values
    of the KL weight by iteration and of the ratio by epoch), the two curves are means over its seeds."""
    settings = [s for s in results["settings"] if s["n"]][:MAX_SETTINGS] or results["settings"][:1]
    panels = [
        ("train/loss", "training loss"),
        ("val/psnr", "validation PSNR (dB)"),
        ("beta", "KL weight"),
        ("tfr", "teacher-forcing ratio"),
    ]
    fig, axes = plt.subplots(max(1, len(settings)), 4, figsize=(13, 2.2 * max(1, len(settings))), squeeze=False)
    for row, s in zip(axes, settings):
        for ax, (metric, title) in zip(row, panels):
            if metric in ("beta", "tfr"):
                x, y = schedules.get(s["config_id"], {}).get(metric, ([], []))
                if metric == "tfr":
                    ax.step(x, y, where="post")
                else:
                    ax.plot(x, y)
                ax.set_ylim(-0.05, 1.05 * max(1.0, max(y, default=1.0)))
                ax.grid(alpha=0.3)
            else:
                c = _setting_curves(curves, s, metric)
                if c.empty:
                    _empty(ax, "no data")
                else:
                    ax.plot(c.epoch, c["mean"], marker="o", ms=2)
                    ax.fill_between(c.epoch, c.lo, c.hi, alpha=0.2)
                    ax.grid(alpha=0.3)
            ax.set_title(title, fontsize=8)
        row[0].set_title(f"{s['label']}\n{panels[0][1]}", fontsize=8, loc="left")
    fig.suptitle("Per setting (mean over seeds): the four curves the origin report compared")
    return save_figure(fig, path)


def per_frame(results: dict[str, Any], per_step: pd.DataFrame, path: Path) -> Path:
    """PSNR per predicted frame of the best and the worst setting against copy-last (mean over seeds)."""
    ranked = [s for s in results["settings"] if s["n"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    if not ranked or per_step.empty:
        _empty(ax, "no per-frame scores")
    else:
        picks = [("best", ranked[0])] + ([("worst", ranked[-1])] if len(ranked) > 1 else [])
        for (name, s), color in zip(picks, ("tab:green", "tab:orange")):
            df = per_step[per_step.run_id.isin(s["run_ids"])].groupby("frame")
            m = df.psnr.mean()
            ax.plot(m.index, m.values, marker="o", ms=3, color=color, label=f"{name}: {s['label']}")
        copy = per_step.groupby("frame").psnr_copy_last.mean()
        ax.plot(copy.index, copy.values, color="red", ls="--", label="copy last frame")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax.set_xlabel("frame (predicted frames only)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("Per-frame PSNR, best and worst setting")
    return save_figure(fig, path)


def history(runs: pd.DataFrame, metric: str, path: Path) -> Path:
    """Optimization history: every complete run's value by trial number, and the best configuration mean so far."""
    done = runs[(runs.state == "COMPLETE") & runs.value.notna()].sort_values("trial")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if done.empty:
        _empty(ax, "no complete run")
    else:
        ax.scatter(done.trial, done.value, s=14, label="run (one seed)")
        ax.plot(done.trial, done.value.cummax(), color="black", lw=1, label="best single run so far")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax.set_xlabel("trial")
    ax.set_ylabel(_unit(metric))
    ax.set_title("Optimization history")
    return save_figure(fig, path)


def slices(runs: pd.DataFrame, params: list[str], metric: str, path: Path) -> Path:
    """Value of every complete run against each searched setting."""
    done = runs[(runs.state == "COMPLETE") & runs.value.notna()]
    n = max(1, len(params))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        col = f"param:{p}"
        data = done.dropna(subset=[col])
        if data.empty:
            _empty(ax, "no data")
            continue
        x = data[col]
        if not pd.api.types.is_numeric_dtype(x):
            cats = sorted(x.unique(), key=str)
            x = x.map({c: i for i, c in enumerate(cats)}) + np.random.default_rng(0).uniform(-0.08, 0.08, len(x))
            ax.set_xticks(range(len(cats)), [str(c) for c in cats], fontsize=7)
        elif "lr" in p:
            ax.set_xscale("log")
        ax.scatter(x, data.value, s=14)
        ax.set_xlabel(p)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_unit(metric))
    fig.suptitle("Slice plot: every complete run against each setting")
    return save_figure(fig, path)


def importance(imp: dict[str, float], evaluator: str, n_trials: int, path: Path) -> Path:
    """Importance bar chart, with the evaluator named and the trial count."""
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.8 + 0.4 * len(imp))))
    if imp:
        s = pd.Series(imp).sort_values()
        ax.barh(s.index, s.values, color="steelblue")
    else:
        _empty(ax, "needs 3+ complete runs")
    ax.set_xlabel("importance (share of the objective's variance)")
    ax.set_title(f"{evaluator}, {n_trials} complete runs", fontsize=9)
    return save_figure(fig, path)
