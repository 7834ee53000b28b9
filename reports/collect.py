"""Optuna study + MLflow runs -> tidy DataFrames: one row per run, one row per (run, epoch), per (run, frame)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from cvae.config import Config
from cvae.mlflow_tracker import make_client
from sweeps import outcome


def runs_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (= one configuration seed): state, outcome (sweeps.outcome), value, configuration, seed,
    phase, diagnostics, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "outcome": outcome.of_trial(t),
                "value": t.value,
                "config_id": a.get("config_id"),
                "seed": a.get("seed"),
                "seed_index": a.get("seed_index"),
                "phase": a.get("phase", "search"),
                "search_value": a.get("search_value"),
                "degenerate": a.get("degenerate"),
                "cond_gain": a.get("cond_gain"),
                "psnr_moving": a.get("psnr_moving"),
                "psnr_moving_copy_last": a.get("psnr_moving_copy_last"),
                "copy_last": a.get("copy_last_psnr"),
                "epochs": a.get("epochs_run"),
                "best_epoch": a.get("best_epoch"),
                "duration_s": t.duration.total_seconds() if t.duration else None,
                "run_id": a.get("mlflow_run_id"),
                "run_dir": a.get("run_dir"),
                "gif": a.get("gif"),
                "fail_reason": a.get("fail_reason"),
                **{f"param:{k}": v for k, v in t.params.items()},
            }
        )
    cols = [
        "trial",
        "state",
        "outcome",
        "value",
        "config_id",
        "seed",
        "seed_index",
        "phase",
        "search_value",
        "degenerate",
        "cond_gain",
        "psnr_moving",
        "psnr_moving_copy_last",
        "copy_last",
        "epochs",
        "best_epoch",
        "duration_s",
        "run_id",
        "run_dir",
        "gif",
        "fail_reason",
    ]
    df = pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r if k.startswith("param:")}))
    return df.astype(
        {
            "value": float,
            "cond_gain": float,
            "psnr_moving": float,
            "psnr_moving_copy_last": float,
            "copy_last": float,
            "search_value": float,
            "duration_s": float,
        }
    )


CURVES = ("val/psnr", "train/loss", "sched/beta", "sched/tfr", "val/cond_gain")


def curves_frame(cfg: Config, run_ids: list[str], metrics: tuple[str, ...] = CURVES) -> pd.DataFrame:
    """Per-epoch history of each run from MLflow: columns run_id, metric, epoch, value."""
    if not cfg.tracking.enabled or not run_ids:
        return pd.DataFrame(columns=["run_id", "metric", "epoch", "value"])

    client = make_client(cfg)
    rows: list[dict[str, Any]] = []
    for run_id in run_ids:
        for m in metrics:
            for h in client.get_metric_history(run_id, m):
                rows.append({"run_id": run_id, "metric": m, "epoch": h.step, "value": h.value})
    return pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value"])


def per_step_frame(cfg: Config, runs: pd.DataFrame) -> pd.DataFrame:
    """Per predicted frame PSNR (and copy-last) at each run's best epoch: columns run_id, frame, psnr, psnr_copy_last.

    Read from the run folder when it is on this machine, else from the run's MLflow artifact.
    """
    rows = []
    for r in runs.dropna(subset=["best_epoch"]).itertuples():
        path = Path(r.run_dir) / "per_step.csv" if isinstance(r.run_dir, str) else None
        if (path is None or not path.is_file()) and cfg.tracking.enabled and isinstance(r.run_id, str):
            path = _download(cfg, r.run_id, "per_step.csv")
        if path is None or not path.is_file():
            continue
        df = pd.read_csv(path)
        df = df[(df.epoch == int(r.best_epoch)) & df.psnr.notna()]
        rows += [
            {"run_id": r.run_id, "frame": int(f.frame), "psnr": f.psnr, "psnr_copy_last": f.psnr_copy_last}
            for f in df.itertuples()
        ]
    return pd.DataFrame(rows, columns=["run_id", "frame", "psnr", "psnr_copy_last"])


def _download(cfg: Config, run_id: str, artifact: str) -> Path | None:
    import tempfile

    try:
        return Path(make_client(cfg).download_artifacts(run_id, artifact, tempfile.mkdtemp(prefix="cvae-report-")))
    except Exception:  # noqa: BLE001 - a run without the artifact (pruned early) simply has no per-step curve
        return None


def test_scores(cfg: Config, run_ids: list[str]) -> dict[str, float]:
    """run_id -> test/psnr for the runs that `cvae eval` scored on the test split (others are absent)."""
    if not cfg.tracking.enabled or not run_ids:
        return {}

    client = make_client(cfg)
    out = {}
    for run_id in run_ids:
        value = client.get_run(run_id).data.metrics.get("test/psnr")
        if value is not None:
            out[run_id] = value
    return out


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the searched settings (empty when there are too few complete trials)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
