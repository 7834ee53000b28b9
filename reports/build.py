"""`cvae report [STUDY]`: which setting is best, by how much, and why, as Markdown + figures.

Reads the Optuna study (params, states, values) and the trials' MLflow runs (per-epoch curves), and
writes runs/reports/<study>/report.md with its PNGs beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna
import pandas as pd

from cvae.config import ConfigError
from reports import collect, figures

# helpers


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def effects(trials: pd.DataFrame, params: list[str]) -> list[str]:
    """One sentence per setting: how the objective moves with it across complete trials."""
    done = trials[trials.state == "COMPLETE"].dropna(subset=["value"])
    out = []
    for p in params:
        col = f"param:{p}"
        d = done.dropna(subset=[col])
        if len(d) < 2 or d[col].nunique() < 2:
            out.append(f"- `{p}`: not enough variation among complete trials to tell.")
            continue
        if pd.api.types.is_numeric_dtype(d[col]) and d[col].nunique() > 3:
            rho = d[col].rank().corr(d["value"].rank())
            top = d.nlargest(max(1, len(d) // 4), "value")[col]
            trend = "higher is better" if rho > 0.3 else "lower is better" if rho < -0.3 else "no clear trend"
            out.append(f"- `{p}`: rank correlation with the objective {rho:+.2f} ({trend}); the best quarter of "
                       f"trials used {_fmt(top.min())} to {_fmt(top.max())}.")
        else:
            g = d.groupby(col)["value"].agg(["mean", "count"]).sort_values("mean", ascending=False)
            parts = ", ".join(f"{_fmt(k)}: {m:.2f} dB (n={int(n)})" for k, (m, n) in g.iterrows())
            gap = g["mean"].iloc[0] - g["mean"].iloc[-1]
            out.append(f"- `{p}`: mean by choice {parts}; best choice `{_fmt(g.index[0])}` leads by {gap:.2f} dB.")
    return out


def build(study: optuna.Study, spec_name: str, description: str, metric: str, cfg_for_tracking, out: Path) -> Path:
    """Write report.md and its figures; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    trials = collect.trials_frame(study)
    if trials.empty:
        raise ConfigError(f"study {spec_name} has no trials yet: run `make sweep STUDY={spec_name}` first")
    params = collect.param_columns(trials)
    curves = collect.curves_frame(cfg_for_tracking, [r for r in trials.run_id.dropna()])
    copy_last = trials.copy_last.dropna().mean() if trials.copy_last.notna().any() else None
    imp = collect.importances(study)
    fig_curves = figures.curves(curves, trials, metric, copy_last, out / "curves.png")
    fig_settings = figures.settings(trials, params, metric, out / "settings.png")
    fig_imp = figures.importance(imp, out / "importance.png")

    counts = trials.state.value_counts().to_dict()
    done = trials[trials.state == "COMPLETE"].dropna(subset=["value"]).sort_values("value", ascending=False)
    lines = [f"# Study `{spec_name}`", "", description, "",
             f"{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
             + f". Objective: best `{metric}` on the validation split, the course's protocol "
             "(2 frames in, predicted frames scored, z from the prior).", ""]
    lines += ["## Answer", ""]
    if done.empty:
        lines += ["No trial has completed yet.", ""]
    else:
        b = done.iloc[0]
        median = done.value.median()
        lines.append(f"**Best: trial {int(b.trial)}, {metric} = {b.value:.2f} dB** at epoch {_fmt(b.best_epoch)}"
                     + (f", {b.value - b.copy_last:+.2f} dB over copying the last frame ({b.copy_last:.2f} dB)"
                        if pd.notna(b.copy_last) else "")
                     + f", {b.value - median:+.2f} dB over the median complete trial ({median:.2f} dB).")
        if len(done) > 1:
            lines.append(f"Runner-up: trial {int(done.iloc[1].trial)} at {done.iloc[1].value:.2f} dB "
                         f"({done.iloc[1].value - b.value:+.2f} dB).")
        lines += ["", "Settings of the best trial:", ""]
        lines += [f"- `{p}` = {_fmt(b[f'param:{p}'])}" for p in params]
        lines += ["", f"MLflow run `{b.run_id}`; prediction GIF: `{b.gif}`.", ""]
    lines += ["## Which settings matter", ""]
    if imp:
        lines += ["fANOVA importance (share of the objective's variance explained):", ""]
        lines += [f"- `{k}`: {v:.2f}" for k, v in imp.items()]
        lines.append("")
    lines += effects(trials, params)
    lines += ["", f"![settings]({fig_settings.name})", f"![importance]({fig_imp.name})", ""]
    lines += ["## Why: the learning curves", "",
              "Validation curves of every trial; pruned trials stop where the pruner judged them hopeless. "
              "A curve that flattens or drops after the teacher-forcing decay starts shows the model failing "
              "to use its own predictions; one that keeps rising shows the schedule working.", "",
              f"![curves]({fig_curves.name})", ""]
    pruned = trials[trials.state == "PRUNED"]
    if not pruned.empty:
        lines.append(f"Pruned: trials {', '.join(str(int(t)) for t in pruned.trial)} "
                     f"(after {', '.join(_fmt(e) for e in pruned.epochs)} epochs).")
    failed = trials[trials.state == "FAIL"]
    for _, f in failed.iterrows():
        lines.append(f"Failed: trial {int(f.trial)}: {f.fail_reason or 'see the worker log'}.")
    lines += ["", "## All trials", ""]
    table = trials[["trial", "state", "value", "epochs", "best_epoch"] + [f"param:{p}" for p in params] + ["run_id"]]
    table = table.rename(columns={f"param:{p}": p for p in params}).sort_values("value", ascending=False)
    lines.append(table.to_markdown(index=False, floatfmt=".4g"))
    path = out / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`cvae report [STUDY] [--storage URL] [--out DIR] [overrides]`."""
    from sweeps.run import storage_url
    from sweeps.spec import load_spec

    p = argparse.ArgumentParser(prog="cvae report")
    p.add_argument("study", nargs="?", default="demo")
    p.add_argument("--storage", default=None)
    p.add_argument("--out", default=None, help="folder (default <run.out_dir>/reports/<study>)")
    p.add_argument("overrides", nargs="*", help="the same overrides the sweep was run with (out_dir, tracking)")
    ns = p.parse_intermixed_args(argv)
    try:
        spec = load_spec(ns.study, ns.overrides)
        cfg = spec.base_config(ns.overrides)
        url = storage_url(cfg, ns.storage)
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise ConfigError(f"no study storage at {url}: run `make sweep STUDY={ns.study}` first")
        try:
            study = optuna.load_study(study_name=spec.name, storage=url)
        except KeyError:
            raise ConfigError(f"no study {spec.name} in {url}: run `make sweep STUDY={ns.study}` first") from None
        out = Path(ns.out) if ns.out else Path(cfg.run.out_dir) / "reports" / spec.name
        path = build(study, spec.name, spec.description, spec.metric, cfg, out)
    except ConfigError as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
