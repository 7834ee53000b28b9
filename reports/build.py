"""`cvae report [STUDY] [--studies a,b]`: which setting is best, by how much, and whether that is real.

Data first, then views: the study and its MLflow runs become tidy frames (collect.py), every number of
the report is computed once into results.json (analysis.py), figures are drawn from those
(figures.py), and report.md / index.html only render them (render.py). The HTML is one file with its
figures inlined, logged to the study's parent run in MLflow so `make ui` shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from cvae import config as config_mod
from cvae.atomic import write_text as _atomic_text
from cvae.config import Config, ConfigError, dump
from cvae.mlflow_tracker import make_client
from cvae.schedules import kl_beta, teacher_forcing_ratio
from reports import analysis, collect, comparisons, figures, render
from sweeps.plan import seq_state
from sweeps.spec import load_spec
from sweeps.storage import existing_study, storage_url

PROJECT_DIR = Path(__file__).resolve().parents[1]
MIN_TRIALS_FOR_IMPORTANCE = 10  # below this, importances of a few runs mostly describe seed noise

# helpers


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _load(name: str, storage: str | None, overrides: list[str]) -> tuple[Any, Config, str, optuna.Study]:
    """(spec, base config, storage url, study) of a study that exists."""

    spec = load_spec(name, overrides, storage=storage)
    cfg = spec.base_config(overrides)
    url = storage_url(cfg, storage)
    return spec, cfg, url, existing_study(spec, url)


def _appendix(study: optuna.Study, runs: Any) -> dict[str, Any]:
    """Importances with the evaluator named, the run count and a warning when there are too few runs."""
    n = int((runs.state == "COMPLETE").sum())
    imp = collect.importances(study)
    warning = (
        ""
        if n >= MIN_TRIALS_FOR_IMPORTANCE
        else (
            f"Only {n} complete runs: importances this few mostly describe seed noise; read the verdicts above instead."
        )
    )
    return {"importances": imp, "evaluator": "Optuna's fANOVA (random forest)", "n_complete": n, "warning": warning}


def _sample_media(cfg: Config, results: dict[str, Any], runs: Any, out: Path) -> dict[str, Path]:
    """Prediction strips and GIFs of the best and the worst setting (their best seed), copied next to the report."""
    ranked = [s for s in results["settings"] if s["n"]]
    picks = [("best", ranked[0])] + ([("worst", ranked[-1])] if len(ranked) > 1 else []) if ranked else []
    media: dict[str, Path] = {}
    for name, s in picks:
        rows = runs[runs.run_id.isin(s["run_ids"])].sort_values("value", ascending=False)
        if rows.empty:
            continue
        r = rows.iloc[0]
        for suffix, key in (("_strip.png", "prediction strip"), (".gif", "prediction GIF")):
            src = Path(str(r.run_dir)) / "samples" / f"epoch_{int(r.best_epoch):04d}{suffix}"
            if not src.is_file() and cfg.tracking.enabled and isinstance(r.run_id, str):
                got = collect._download(cfg, r.run_id, f"samples/{src.name}")
                src = got if got is not None else src
            if src.is_file():
                dest = out / f"{name}_{src.name.split('_', 2)[-1] if suffix == '_strip.png' else 'prediction.gif'}"
                shutil.copyfile(src, dest)
                media[f"{name} setting ({s['label']}), seed {int(r.seed)}: {key}"] = dest
    return media


def _schedules(cfg: Config, results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each setting's KL weight (by fractional epoch) and teacher-forcing ratio (by epoch), from its config."""
    import numpy as np

    out = {}
    for s in results["settings"]:
        c = config_mod.build({**cfg.flat(), **s["params"]})
        its = np.unique(np.linspace(0, c.total_iters - 1, min(c.total_iters, 600)).astype(int))
        epochs = list(range(1, c.train.niter + 1))
        out[s["config_id"]] = {
            "beta": ((its / c.train.epoch_size).tolist(), [kl_beta(int(i), c.total_iters, c.kl) for i in its]),
            "tfr": (epochs, [teacher_forcing_ratio(e, c.tf, c.train.niter) for e in epochs]),
        }
    return out


def _log_to_parent(cfg: Config, study: optuna.Study, paths: list[Path]) -> None:
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent or not cfg.tracking.enabled:
        return

    client = make_client(cfg)
    for p in paths:
        client.log_artifact(parent, str(p), artifact_path="report")


def _race(study: optuna.Study, settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A racing study's lanes, leader first: each configuration's label, status, seeds, and the decision that
    settled it (against whom, the difference on their shared seeds, at which seed count)."""
    lanes = study.user_attrs.get("race") or {}
    labels = {s["config_id"]: s["label"] for s in settings}
    rank = {"leads": 0, "tied": 1, "undecided": 2, "racing": 3, "out": 4}
    rows = [
        {"config_id": c, "label": labels.get(c, c), **lane, "against_label": labels.get(lane.get("against"))}
        for c, lane in lanes.items()
    ]
    return sorted(rows, key=lambda r: (rank.get(r["status"], 9), -r["target"]))


def _decided_through(study: optuna.Study, spec: Any) -> int:
    """The last look the study decided (a look in progress is not reported as decided); 1 for a fixed design."""
    if not (spec.sequential and spec.grid):
        return 1

    state = seq_state(study, spec)
    return state.look if state.done else state.look - 1


# the report


def study_results(name: str, storage: str | None, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, context for figures) of one study."""
    spec, cfg, url, study = _load(name, storage, overrides)
    runs = collect.runs_frame(study)
    if runs.empty:
        raise ConfigError(f"study {spec.name} has no runs yet: run `make sweep STUDY={name}` first")
    runs["test_psnr"] = runs.run_id.map(collect.test_scores(cfg, runs.run_id.dropna().tolist()))
    info = {
        "name": spec.name,
        "description": spec.description,
        "metric": spec.metric,
        "direction": spec.direction,
        "seeds": spec.seeds,
        "niter": cfg.train.niter,
        "sampler": spec.sampler,
        "pruner": spec.pruner,
        "storage": url,
        "degenerate_below": spec.degenerate_below,
        "margin_db": spec.margin_db,
        # a grid's looks; a race decides configuration by configuration, so its report is one look at all it ran
        "looks": list(spec.plan.looks) if spec.sequential and spec.grid else None,
        "look": _decided_through(study, spec),
    }
    results = analysis.analyse(runs, info)
    results["appendix"] = {k: v for k, v in _appendix(study, runs).items()}
    results["race"] = _race(study, results["settings"])
    parent = study.user_attrs.get("mlflow_parent_run_id")
    results["provenance"] = {
        "git commit": _git_commit(),
        "study": spec.name,
        "optuna storage": url,
        "mlflow tracking": cfg.tracking.uri
        or os.environ.get("MLFLOW_TRACKING_URI", "")
        or f"sqlite:///{Path(cfg.run.out_dir).resolve() / 'mlflow.db'}",
        "mlflow parent run": parent or "-",
        "built": datetime.now(timezone.utc).isoformat(),
        "base config": dump(cfg),
        "run ids": runs.run_id.dropna().tolist(),
        "seeds": sorted(runs.seed.dropna().astype(int).unique().tolist()),
    }
    ctx = {"cfg": cfg, "study": study, "runs": runs, "base": cfg.flat()}
    return results, ctx


def write(results: dict[str, Any], ctx: dict[str, Any], out: Path) -> Path:
    """Figures, report.md, index.html and results.json into `out`; returns index.html."""
    out.mkdir(parents=True, exist_ok=True)
    cfg, runs = ctx["cfg"], ctx["runs"]
    curves = collect.curves_frame(cfg, runs.run_id.dropna().tolist())
    per_step = collect.per_step_frame(cfg, analysis.trained(runs))
    params = analysis.param_columns(runs)
    metric = results["study"]["metric"]
    app = results["appendix"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # matplotlib's tight_layout chatter on long labels
        figs = {
            "strip": figures.strip(results, runs, out / "settings.png"),
            "curves": figures.learning_curves(results, curves, ctx["base"], out / "curves.png"),
            "origin": figures.origin_grid(results, curves, _schedules(cfg, results), out / "four_plots.png"),
            "per_frame": figures.per_frame(results, per_step, out / "per_frame.png"),
            "history": figures.history(runs, metric, out / "history.png"),
            "slices": figures.slices(runs, params, metric, out / "slices.png"),
            "importance": figures.importance(
                app["importances"], app["evaluator"], app["n_complete"], out / "importance.png"
            ),
        }
    media = _sample_media(cfg, results, runs, out)
    results["figures"] = {k: p.name for k, p in figs.items()} | {k: p.name for k, p in media.items()}
    _atomic_text(out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    _atomic_text(out / "report.md", render.markdown(results, figs, media))
    index = _atomic_text(out / "index.html", render.page(results, figs, media))
    _log_to_parent(cfg, ctx["study"], [index, out / "report.md", out / "results.json"])
    return index


def main(argv: list[str] | None = None) -> int:
    """`cvae report [STUDY] [--studies a,b] [--storage URL] [--out DIR] [overrides]`."""
    p = argparse.ArgumentParser(prog="cvae report")
    p.add_argument("study", nargs="?", default="demo")
    p.add_argument("--studies", default=None, help="a,b: also compare the best settings of these studies")
    p.add_argument("--storage", default=None)
    p.add_argument("--out", default=None, help="folder (default <run.out_dir>/reports/<study>)")
    p.add_argument("overrides", nargs="*", help="the same overrides the sweep was run with (out_dir, tracking)")
    ns = p.parse_intermixed_args(argv)
    names = [s for s in (ns.studies or "").split(",") if s] or [ns.study]
    try:
        done = {n: study_results(n, ns.storage, ns.overrides) for n in dict.fromkeys(names)}
        results, ctx = done[names[0]]
        if len(done) > 1:
            results["cross_study"] = comparisons.cross_study({n: r for n, (r, _) in done.items()})
            results["answer"] = results["answer"] + [
                analysis.verdict_line(c, results["study"]["metric"]) for c in results["cross_study"]
            ]
        folder = "+".join(r["study"]["name"] for r, _ in done.values())
        out = Path(ns.out) if ns.out else Path(ctx["cfg"].run.out_dir) / "reports" / folder
        index = write(results, ctx, out)
    except ConfigError as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index} (+ report.md, results.json)")
    for line in results["answer"]:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
