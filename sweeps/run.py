"""`cvae sweep` / `cvae worker`: create a study once, run worker processes on it, print the outcome.

The coordinator validates the spec, creates the Optuna study, the MLflow experiment and the study's
parent run and the data cache, then starts N worker processes. Workers loop: under the ask lock, fail
stale trials (lost workers, via heartbeats), then take a retry or a new trial while the study is short
of its target. Running the same command again continues the study.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cvae.config import Config, ConfigError
from cvae.data import DataError, load_split
from cvae.trainer import Diverged
from sweeps.lock import AskLock
from sweeps.objective import Context, make_objective
from sweeps.space import make_pruner, make_sampler
from sweeps.spec import SpecError, StudySpec, load_spec

MAX_RETRY = 2
# heartbeats and stale-trial retries are "experimental" in Optuna 5; the warning repeats every trial
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# helpers


def storage_url(cfg: Config, storage: str | None) -> str:
    """--storage / $OPTUNA_STORAGE, else a SQLite file under run.out_dir."""
    url = storage or os.environ.get("OPTUNA_STORAGE", "")
    return url or f"sqlite:///{Path(cfg.run.out_dir).resolve() / 'optuna.db'}"


def _close_lost_runs(cfg: Config) -> Any:
    """Stale-trial callback: close the lost worker's MLflow runs FAILED, then retry the same params."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ids = trial.user_attrs.get("mlflow_run_ids", [])
        if ids and cfg.tracking.enabled:
            from cvae.mlflow_tracker import make_client

            client = make_client(cfg)
            for run_id in ids:
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_tag(run_id, "ended_by", "worker lost (no heartbeat)")
                    client.set_terminated(run_id, status="FAILED")
        retry(study, trial)

    return callback


def make_storage(url: str, spec: StudySpec, cfg: Config) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats; SQLite waits on locks instead of failing when workers collide."""
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_seconds,
            grace_period=3 * spec.heartbeat_seconds, heartbeat_stale_trial_callback=_close_lost_runs(cfg))
    except Exception as e:  # noqa: BLE001 - driver errors vary; the user needs one line
        raise ConfigError(f"study storage {url}: {str(e).splitlines()[0][:200]}") from None


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    out = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def _spec_args(spec_name: str, extra: list[str], trials: int | None) -> tuple[StudySpec, Config]:
    spec = load_spec(spec_name, extra, trials)
    return spec, spec.base_config(extra)


# coordinator


def prepare(spec: StudySpec, cfg: Config, extra: list[str], url: str) -> optuna.Study:
    """Create (or reopen) the study, the MLflow parent run and the data cache, once, before workers."""
    for split in ("train", "validate"):
        load_split(cfg.data, split)  # build the cache once, not in every worker; missing data creates no study
    storage = make_storage(url, spec, cfg)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction,
                                load_if_exists=True, sampler=make_sampler(spec), pruner=make_pruner(spec, cfg.train.niter))
    fp = spec.fingerprint(extra)
    old = study.user_attrs.get("fingerprint")
    if old is not None and old != fp:
        raise SpecError(f"study {spec.name} in {url} was created with other settings "
                        f"(experiment/overrides/space); delete it or give the study another name")
    study.set_user_attr("fingerprint", fp)
    study.set_user_attr("n_trials", spec.trials)
    if cfg.tracking.enabled:
        from cvae.mlflow_tracker import artifact_root, ensure_experiment, make_client

        client = make_client(cfg)
        exp_id = ensure_experiment(client, spec.name, artifact_root(cfg))
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is None:
            run = client.create_run(exp_id, run_name=f"study {spec.name}",
                                    tags={"optuna.study": spec.name, "optuna.storage": url, "role": "study"})
            parent = run.info.run_id
            study.set_user_attr("mlflow_parent_run_id", parent)
            client.log_param(parent, "sampler", spec.sampler)
            client.log_param(parent, "pruner", spec.pruner)
            client.log_param(parent, "space", ", ".join(spec.space or spec.grid))
        else:
            client.update_run(parent, status="RUNNING")
    return study


def run_workers(spec_name: str, extra: list[str], url: str, workers: int, threads: int) -> int:
    """Start `workers` worker processes and wait; Ctrl-C / SIGTERM stops them all."""
    cmd = [sys.executable, "-m", "sweeps.run", "worker", spec_name, "--storage", url, "--threads", str(threads)]
    procs = [subprocess.Popen(cmd + ["--worker-index", str(i), "--"] + extra) for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except (KeyboardInterrupt, SystemExit):
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    return max(codes)


def summary(study: optuna.Study, spec: StudySpec) -> str:
    """Table of trials and the best one, then where to look next."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name,
                     **{k.split(".", 1)[1] if "." in k else k: v for k, v in t.params.items()},
                     spec.metric: None if t.value is None else round(t.value, 2),
                     "copy_last": round(t.user_attrs["copy_last_psnr"], 2) if "copy_last_psnr" in t.user_attrs else None,
                     "epochs": t.user_attrs.get("epochs_run"),
                     "run_id": t.user_attrs.get("mlflow_run_id", "")[:8],
                     "note": t.user_attrs.get("fail_reason", "")})
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {s.name.lower()}" for s, n in _counts(study).items() if n)]
    if rows:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            lines.append(pd.DataFrame(rows).to_string(index=False))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if complete:
        b = study.best_trial
        lines.append(f"best trial {b.number}: {spec.metric}={b.value:.2f} (copy-last "
                     f"{b.user_attrs.get('copy_last_psnr', float('nan')):.2f}) params {b.params}")
        lines.append(f"  mlflow run {b.user_attrs.get('mlflow_run_id', '-')}  gif {b.user_attrs.get('gif', '-')}")
    lines.append("next: `make ui` to browse the runs, `make report` for the comparison report")
    return "\n".join(lines)


def finish_parent(study: optuna.Study, cfg: Config, status: str) -> None:
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent or not cfg.tracking.enabled:
        return
    from cvae.mlflow_tracker import make_client

    client = make_client(cfg)
    counts = _counts(study)
    client.log_metric(parent, "trials/complete", counts[TrialState.COMPLETE])
    client.log_metric(parent, "trials/pruned", counts[TrialState.PRUNED])
    client.log_metric(parent, "trials/failed", counts[TrialState.FAIL])
    if counts[TrialState.COMPLETE]:
        b = study.best_trial
        client.log_metric(parent, "best/value", b.value)
        client.set_tag(parent, "best.trial", str(b.number))
        client.set_tag(parent, "best.run_id", b.user_attrs.get("mlflow_run_id", ""))
    client.set_terminated(parent, status=status)


# worker


def worker_loop(spec: StudySpec, cfg: Config, extra: list[str], url: str, index: int, threads: int) -> int:
    """Run trials until the study has its target of complete + pruned trials; returns trials run here."""
    storage = make_storage(url, spec, cfg)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, index),
                              pruner=make_pruner(spec, cfg.train.niter))
    lock = AskLock(url, spec.name)
    ctx = Context(spec=spec, extra=extra, parent_run_id=study.user_attrs.get("mlflow_parent_run_id"),
                  threads=threads, on_start=lock.release)
    objective = make_objective(ctx)
    ran = 0
    while True:
        target = int(study.user_attrs.get("n_trials", spec.trials))
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)
            c = _counts(study)
            taken = c[TrialState.COMPLETE] + c[TrialState.PRUNED] + c[TrialState.RUNNING]
            if c[TrialState.FAIL] >= (MAX_RETRY + 1) * target:  # failed trials do not count: never-ending
                print(f"worker {index}: giving up after {c[TrialState.FAIL]} failed trials", flush=True)
                return ran
            if c[TrialState.WAITING] == 0 and taken >= target:
                if c[TrialState.RUNNING] == 0:
                    return ran
                wait = True  # someone else is running the last trials: stay to retry them if their worker dies
            else:
                wait = False
                study.optimize(objective, n_trials=1, catch=(Diverged,))
                ran += 1
        finally:
            lock.release()
        if wait:
            time.sleep(spec.heartbeat_seconds)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # Optuna records the trial FAILED, the trainer closes its run KILLED


def main(argv: list[str] | None = None) -> int:
    """`cvae sweep STUDY [--workers N] [--trials N] [--storage URL] [-- overrides]` and `cvae worker ...`."""
    p = argparse.ArgumentParser(prog="cvae sweep")
    p.add_argument("mode", choices=["sweep", "worker"])
    p.add_argument("study", nargs="?", default="demo", help="study name (sweeps/studies/<name>.yaml) or path")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--trials", type=int, default=None, help="target of complete + pruned trials")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite under run.out_dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = cores / workers)")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, section.key=value")
    ns = p.parse_intermixed_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        if ns.workers < 1 or (ns.trials is not None and ns.trials < 1):
            raise SpecError("--workers and --trials must be positive")
        spec, cfg = _spec_args(ns.study, ns.overrides, ns.trials)
        url = storage_url(cfg, ns.storage)
        threads = ns.threads or max(1, (os.cpu_count() or 1) // ns.workers)
        if ns.mode == "worker":
            n = worker_loop(spec, cfg, ns.overrides, url, ns.worker_index, threads)
            print(f"worker {ns.worker_index}: ran {n} trial(s)", flush=True)
            return 0
        study = prepare(spec, cfg, ns.overrides, url)
        print(f"study {spec.name}: target {spec.trials} trials, {ns.workers} worker(s) x {threads} thread(s), "
              f"storage {url}", flush=True)
        status = "FINISHED"
        try:
            code = run_workers(ns.study, ns.overrides, url, ns.workers, threads)
        except (KeyboardInterrupt, SystemExit):
            status, code = "KILLED", 130
        c = _counts(study)
        if status == "FINISHED" and (code or c[TrialState.COMPLETE] + c[TrialState.PRUNED] < spec.trials):
            status = "FAILED"
        finish_parent(study, cfg, status)
        print(summary(study, spec))
        return code or int(status == "FAILED")
    except (ConfigError, DataError) as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
