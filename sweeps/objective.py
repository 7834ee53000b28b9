"""The Optuna objective: suggest -> build config -> train (report + prune each evaluation) -> metric.

Each (trial, seed) is one MLflow run, a child of the study's parent run, tagged with the study and
trial number; the trial keeps its run ids so a lost worker's runs can be closed FAILED later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev
from typing import Any, Callable

import optuna

from cvae.config import Config
from cvae.mlflow_tracker import MlflowTracker
from cvae.tracking import Tracker
from cvae.trainer import Diverged, train
from sweeps.space import trial_params
from sweeps.spec import StudySpec


class Pruned(Exception):
    """Raised from the epoch callback; the trainer closes the MLflow run KILLED and tags it pruned."""

    tracking_status = "KILLED"
    tracking_tags = {"pruned": "true"}


@dataclass
class Context:
    spec: StudySpec
    extra: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    threads: int = 0
    on_start: Callable[[], None] = lambda: None
    """Called first thing in every trial (releases the ask lock)."""


# helpers


def _best(history: list[dict[str, float]], metric: str, direction: str) -> tuple[float, int]:
    """Best value of `metric` over evaluated epochs, and its epoch."""
    rows = [(r[metric], int(r["epoch"])) for r in history if r.get(metric) is not None and not math.isnan(r[metric])]
    if not rows:
        return (math.nan, 0)
    return max(rows) if direction == "maximize" else min(rows)


def _trial_config(ctx: Context, params: dict[str, Any], seed_index: int) -> Config:
    base = ctx.spec.base_config(ctx.extra)
    values = dict(params)
    values["run.seed"] = base.run.seed + seed_index
    values["train.progress"] = False
    values["tracking.experiment"] = ctx.spec.name
    if ctx.threads:
        values["run.threads"] = ctx.threads
    return ctx.spec.base_config(ctx.extra, values)


class _TrialTracker(MlflowTracker):
    """Records the MLflow run id on the trial the moment the run exists."""

    def __init__(self, cfg: Config, trial: optuna.Trial, parent: str | None, seed_index: int):
        tags = {"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number),
                "optuna.seed_index": str(seed_index)}
        super().__init__(cfg, parent_run_id=parent, tags=tags)
        self.trial, self.seed_index = trial, seed_index

    def start(self, cfg: Config, run_dir: Path, resume_run_id: str | None = None) -> None:
        super().start(cfg, run_dir, resume_run_id)
        # seed 0 starts the list: a retried trial inherits the lost trial's user attrs, run ids included
        earlier = self.trial.user_attrs.get("mlflow_run_ids", []) if self.seed_index else []
        ids = list(earlier) + [self.run_id]
        self.trial.set_user_attr("mlflow_run_ids", ids)
        self.trial.set_user_attr("mlflow_run_id", ids[0])


def make_objective(ctx: Context) -> Callable[[optuna.Trial], float]:
    """Objective for study.optimize; Diverged propagates so Optuna records the trial FAILED."""
    spec = ctx.spec

    def objective(trial: optuna.Trial) -> float:
        ctx.on_start()
        params = trial_params(trial, spec)
        values: list[float] = []
        for k in range(spec.seeds):
            cfg = _trial_config(ctx, params, k)
            run_dir = Path(cfg.run.out_dir) / spec.name / f"trial-{trial.number:04d}" / f"seed-{cfg.run.seed}"
            tracker: Tracker = _TrialTracker(cfg, trial, ctx.parent_run_id, k) if cfg.tracking.enabled else Tracker()

            def on_epoch(epoch: int, row: dict[str, float], first: bool = k == 0) -> None:
                trial.set_user_attr("epochs_run", epoch)
                if first and "val/psnr_copy_last" in row and "copy_last_psnr" not in trial.user_attrs:
                    trial.set_user_attr("copy_last_psnr", row["val/psnr_copy_last"])  # pruned trials show it too
                if not first or row.get(spec.metric) is None:
                    return  # only the first seed is judged: later seeds repeat a survivor
                trial.report(row[spec.metric], step=epoch)
                if epoch < cfg.train.niter and trial.should_prune():  # at the last epoch nothing is left to save
                    raise Pruned(f"pruned at epoch {epoch}: {spec.metric}={row[spec.metric]:.3f}")

            trial.set_user_attr("run_dir", str(run_dir))
            try:
                result = train(cfg, run_dir=run_dir, tracker=tracker, on_epoch=on_epoch)
            except Pruned as e:
                raise optuna.TrialPruned(str(e)) from None
            except Diverged as e:
                trial.set_user_attr("fail_reason", str(e))
                raise
            best, best_epoch = _best(result.history, spec.metric, spec.direction)
            values.append(best)
            if k == 0:
                trial.set_user_attr("best_epoch", best_epoch)
                trial.set_user_attr("copy_last_psnr", result.copy_last_psnr)
                trial.set_user_attr("gif", str(run_dir / "samples" / f"epoch_{best_epoch:04d}.gif"))
        if spec.seeds > 1:
            trial.set_user_attr("seed_values", values)
            trial.set_user_attr("seed_std", pstdev(values))
        return mean(values)

    return objective
