"""Optuna study + MLflow runs -> tidy DataFrames: one row per trial, one row per (trial, epoch)."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from cvae.config import Config


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """number, state, value, params (by config path), user attrs of every trial."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                     "duration_s": t.duration.total_seconds() if t.duration else None,
                     "run_id": t.user_attrs.get("mlflow_run_id"), "epochs": t.user_attrs.get("epochs_run"),
                     "best_epoch": t.user_attrs.get("best_epoch"), "copy_last": t.user_attrs.get("copy_last_psnr"),
                     "gif": t.user_attrs.get("gif"), "fail_reason": t.user_attrs.get("fail_reason"),
                     **{f"param:{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def curves_frame(cfg: Config, run_ids: list[str], metrics: tuple[str, ...] = ("val/psnr", "train/loss")) -> pd.DataFrame:
    """Per-epoch history of each run from MLflow: columns run_id, metric, epoch, value."""
    if not cfg.tracking.enabled or not run_ids:
        return pd.DataFrame(columns=["run_id", "metric", "epoch", "value"])
    from cvae.mlflow_tracker import make_client

    client = make_client(cfg)
    rows: list[dict[str, Any]] = []
    for run_id in run_ids:
        for m in metrics:
            for h in client.get_metric_history(run_id, m):
                rows.append({"run_id": run_id, "metric": m, "epoch": h.step, "value": h.value})
    return pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value"])


def param_columns(trials: pd.DataFrame) -> list[str]:
    """The searched config paths present in the study."""
    return [c.removeprefix("param:") for c in trials.columns if c.startswith("param:")]


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the searched settings (empty when there are too few complete trials)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
