"""Report figures (seaborn): PSNR curves per trial, objective against each setting, importances."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from cvae.plots import save_figure  # noqa: E402 - one atomic PNG writer for the project


def curves(curves_df: pd.DataFrame, trials: pd.DataFrame, metric: str, copy_last: float | None, path: Path) -> Path:
    """Validation metric per epoch, one line per trial; the best trial drawn thick."""
    df = curves_df[curves_df.metric == metric].merge(trials[["trial", "run_id", "state"]], on="run_id")
    fig, ax = plt.subplots(figsize=(7, 4))
    if not df.empty:
        sns.lineplot(data=df, x="epoch", y="value", hue="trial", style="state", palette="viridis", ax=ax,
                     marker="o", markersize=3, linewidth=1)
        best = trials.dropna(subset=["value"]).sort_values("value").tail(1)
        if not best.empty:
            b = df[df.trial == int(best.trial.iloc[0])]
            ax.plot(b.epoch, b.value, color="black", linewidth=2.5, label=f"best (trial {int(best.trial.iloc[0])})")
    if copy_last is not None:
        ax.axhline(copy_last, color="red", linestyle="--", linewidth=1, label="copy last frame")
    ax.set_ylabel(metric + " (dB)" if "psnr" in metric else metric)
    ax.set_title(f"{metric} per epoch, every trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def settings(trials: pd.DataFrame, params: list[str], metric: str, path: Path) -> Path:
    """Objective against each searched setting (complete trials), one panel per setting."""
    done = trials[trials.state == "COMPLETE"]
    n = max(1, len(params))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        col = f"param:{p}"
        data = done.dropna(subset=[col, "value"])
        if data.empty:
            ax.set_visible(False)
            continue
        numeric = pd.api.types.is_numeric_dtype(data[col]) and data[col].nunique() > 3
        if numeric:
            sns.scatterplot(data=data, x=col, y="value", ax=ax)
            if "lr" in p:
                ax.set_xscale("log")
        else:
            sns.stripplot(data=data, x=col, y="value", ax=ax, size=6)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} against each setting (complete trials)")
    return save_figure(fig, path)


def importance(imp: dict[str, float], path: Path) -> Path:
    """fANOVA importance bar chart."""
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.8 + 0.4 * len(imp))))
    if imp:
        s = pd.Series(imp).sort_values()
        ax.barh(s.index, s.values, color="steelblue")
    else:
        ax.text(0.5, 0.5, "needs 3+ complete trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("fANOVA importance")
    ax.set_title("Which setting matters")
    return save_figure(fig, path)
