"""The Optuna objective: one (configuration, seed) run -> train (report + prune each evaluation) -> metric.

A trial is one seed of one configuration (sweeps/design.py). A trial the sampler proposes is seed 0
of a new configuration and queues the configuration's other seeds at once, so idle workers take them
in parallel; a queued trial carries its configuration id, seed index and phase. Each trial is one MLflow
run, a child of the study's parent run, tagged with the study, trial, configuration, seed and phase.
After training, the run is tagged `degenerate` when its condition gain at the best epoch is below the
study's threshold: a model that ignores its actions cannot rank schedules.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from cvae import faults
from cvae.checkpoints import load_checkpoint
from cvae.config import Config
from cvae.mlflow_tracker import MlflowTracker
from cvae.tracking import Tracker
from cvae.trainer import Diverged, train
from sweeps.design import SEARCH, config_id, run_seed, sibling_seeds
from sweeps.provenance import code_fingerprint
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


def _trial_config(ctx: Context, params: dict[str, Any], seed: int) -> Config:
    values = dict(params)
    values["run.seed"] = seed
    values["train.progress"] = False
    values["tracking.experiment"] = ctx.spec.name
    if ctx.threads:
        values["run.threads"] = ctx.threads
    return ctx.spec.base_config(ctx.extra, values)


def _identify(trial: optuna.Trial, spec: StudySpec, params: dict[str, Any]) -> tuple[str, int, str]:
    """(config_id, seed_index, phase) of this trial; a fresh sample becomes seed 0 and queues its siblings."""
    attrs = trial.user_attrs
    if "config_id" in attrs:
        return attrs["config_id"], int(attrs["seed_index"]), attrs.get("phase", SEARCH)
    cid = config_id(params)
    present = [
        t.user_attrs["seed_index"]
        for t in trial.study.get_trials(deepcopy=False)
        if t.number != trial.number
        and t.user_attrs.get("config_id") == cid
        and t.user_attrs.get("phase", SEARCH) == SEARCH
    ]
    # the sampler proposed a configuration the study already has: this run becomes its next seed, so no
    # (configuration, seed) ever runs twice
    k = max(present) + 1 if present else 0
    for key, v in (("config_id", cid), ("seed_index", k), ("phase", SEARCH)):
        trial.set_user_attr(key, v)
    if not present:
        for j in sibling_seeds(spec.seeds, [0]):
            trial.study.enqueue_trial(params, user_attrs={"config_id": cid, "seed_index": j, "phase": SEARCH})
    return cid, k, SEARCH


def _config_pruned(trial: optuna.Trial, cid: str) -> bool:
    return any(
        t.state == TrialState.PRUNED and t.user_attrs.get("config_id") == cid
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    )


def _continue_lost(trial: optuna.Trial, run_dir: Path) -> bool:
    """A retry of a lost run (sweeps.plan.requeue_lost, or Optuna's heartbeat retry) continues from the lost run's
    last.pt when its folder is on a disk this node reaches (a shared disk, or the same machine): the folder is
    copied into this trial's, and the trial records the epoch it resumed at. Else it starts over."""
    # the heartbeat's retry (optuna's RetryFailedTrialCallback) names the trials it retried, the last one last;
    # it copies the lost trial's user attributes, so `retry_of` is only this trial's own when it has no history
    trials = trial.study.get_trials(deepcopy=False)
    history = trials[trial.number].system_attrs.get("retry_history") or []
    lost = history[-1] if history else trial.user_attrs.get("retry_of")
    if lost is None:
        return False
    old = trials[int(lost)]
    src = Path(str(old.user_attrs.get("run_dir", "")))
    if not old.user_attrs.get("run_dir") or not (src / "last.pt").is_file() or src.resolve() == run_dir.resolve():
        trial.set_user_attr("resumed_at_epoch", 0)  # from the start (a retry inherits its lost trial's attributes)
        return False
    shutil.copytree(src, run_dir, dirs_exist_ok=True)
    epoch = int(load_checkpoint(run_dir / "last.pt")["epoch"])
    trial.set_user_attr("resumed_from", str(src))
    trial.set_user_attr("resumed_at_epoch", epoch)
    return True


class _TrialTracker(MlflowTracker):
    """Records the MLflow run id on the trial the moment the run exists."""

    def __init__(self, cfg: Config, trial: optuna.Trial, parent: str | None, tags: dict[str, str]):
        tags = {"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number), **tags}
        super().__init__(cfg, parent_run_id=parent, tags=tags)
        self.trial = trial

    def start(self, cfg: Config, run_dir: Path, resume_run_id: str | None = None) -> None:
        super().start(cfg, run_dir, resume_run_id)
        # a retried trial inherits the lost trial's user attrs, its run ids included
        ids = list(self.trial.user_attrs.get("mlflow_run_ids", [])) + [self.run_id]
        self.trial.set_user_attr("mlflow_run_ids", ids)
        self.trial.set_user_attr("mlflow_run_id", self.run_id)


def make_objective(ctx: Context) -> Callable[[optuna.Trial], float]:
    """Objective for study.optimize; Diverged propagates so Optuna records the trial FAILED."""
    spec = ctx.spec

    def objective(trial: optuna.Trial) -> float:
        params = trial_params(trial, spec)
        cid, k, phase = _identify(trial, spec, params)
        ctx.on_start()  # siblings are queued: other workers may take them now
        if phase == SEARCH and spec.pruner != "none" and _config_pruned(trial, cid):
            raise optuna.TrialPruned(f"configuration {cid} was pruned")  # before any training
        seed = run_seed(spec.base_config(ctx.extra).run.seed, phase, k)
        cfg = _trial_config(ctx, params, seed)
        run_dir = Path(cfg.run.out_dir) / spec.name / f"trial-{trial.number:04d}"
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("run_dir", str(run_dir))
        tags = {
            "config_id": cid,
            "seed": str(seed),
            "seed_index": str(k),
            "phase": phase,
            "node": os.environ.get("CVAE_NODE") or socket.gethostname(),
            "code": code_fingerprint(),
            "code_path": str(Path(__file__).resolve().parents[1]),  # where this worker's code came from
        }  # CVAE_NODE: the Ray launcher's
        tracker: Tracker = _TrialTracker(cfg, trial, ctx.parent_run_id, tags) if cfg.tracking.enabled else Tracker()

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            trial.set_user_attr("epochs_run", epoch)
            if "val/psnr_copy_last" in row and "copy_last_psnr" not in trial.user_attrs:
                trial.set_user_attr("copy_last_psnr", row["val/psnr_copy_last"])  # pruned trials show it too
            if row.get(spec.metric) is None:
                return
            trial.report(row[spec.metric], step=epoch)
            if epoch < cfg.train.niter and trial.should_prune():  # at the last epoch nothing is left to save
                raise Pruned(f"pruned at epoch {epoch}: {spec.metric}={row[spec.metric]:.3f}")

        resumed = _continue_lost(trial, run_dir)
        try:
            result = train(cfg, run_dir=run_dir, resume=resumed, new_run=True, tracker=tracker, on_epoch=on_epoch)
        except Pruned as e:
            raise optuna.TrialPruned(str(e)) from None
        except Diverged as e:
            trial.set_user_attr("fail_reason", str(e))
            raise
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("interrupted", True)  # Ctrl-C / SIGTERM: run again when the study resumes
            raise
        best, best_epoch = _best(result.history, spec.metric, spec.direction)
        at_best = next(r for r in result.history if int(r["epoch"]) == best_epoch) if best_epoch else {}
        diag = {k: at_best.get(f"val/{k}", math.nan) for k in ("cond_gain", "psnr_moving", "psnr_moving_copy_last")}
        degenerate = not diag["cond_gain"] >= spec.degenerate_below  # NaN counts as degenerate
        for key, v in {
            "best_epoch": best_epoch,
            "copy_last_psnr": result.copy_last_psnr,
            **diag,
            "degenerate": degenerate,
            "gif": str(run_dir / "samples" / f"epoch_{best_epoch:04d}.gif"),
        }.items():
            trial.set_user_attr(key, v)
        tracker.set_tags({"degenerate": str(degenerate).lower(), "cond_gain_at_best": f"{diag['cond_gain']:.4f}"})
        faults.point("tell")  # trained and tagged, not yet told to Optuna
        return best

    return objective
