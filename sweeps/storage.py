"""The study's storage: opening it (schema races between processes), finding a study, closing orphaned runs.

An Optuna RDB storage (SQLite on one machine, PostgreSQL across machines), a journal file (journal:///path, on a
shared filesystem) or a gRPC storage proxy (grpc://host:port), all with heartbeats (the journal's and the proxy's
are ours, sweeps.backends), so a lost worker's trial is failed and retried (`_close_lost_runs`); `repair` closes
the MLflow runs that outlived their trial. docs/storages.md says which storage when.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cvae.config import Config, ConfigError
from sweeps import backends
from sweeps.spec import SpecError, StudySpec

MAX_RETRY = 2
STORAGE_ATTEMPTS = 5  # opening a study storage whose schema another process is creating at that moment


def storage_url(cfg: Config, storage: str | None) -> str:
    """--storage / $OPTUNA_STORAGE, else a SQLite file under run.out_dir; a relative journal path made absolute."""
    url = storage or os.environ.get("OPTUNA_STORAGE", "")
    if (path := backends.journal_path(url)) is not None:
        return f"{backends.JOURNAL}{path}"  # the same file for workers started in other folders or on other nodes
    return url or f"sqlite:///{Path(cfg.run.out_dir).resolve() / 'optuna.db'}"


def _close_lost_runs(cfg: Config) -> Any:
    """Stale-trial callback: close the lost worker's MLflow runs FAILED, then retry the same params."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ids = trial.user_attrs.get("mlflow_run_ids", [])
        if ids and cfg.tracking.enabled:
            # deferred: MLflow loads only when tracking is on
            from cvae.mlflow_tracker import make_client

            client = make_client(cfg)
            for run_id in ids:
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_tag(run_id, "ended_by", "worker lost (no heartbeat)")
                    client.set_terminated(run_id, status="FAILED")
        retry(study, trial)

    return callback


def _schema_race(e: Exception) -> bool:
    """Whether opening a storage failed because another process created its schema at the same moment:
    a CREATE TABLE that finds the table (SQLite, PostgreSQL), or the schema's version row inserted twice
    (SQLite: UNIQUE constraint failed: alembic_version...; PostgreSQL: duplicate key)."""
    import sqlalchemy.exc

    return isinstance(e, sqlalchemy.exc.IntegrityError) or any(
        w in str(e) for w in ("already exists", "duplicate key", "UNIQUE constraint failed")
    )


def make_storage(url: str, spec: StudySpec, cfg: Config) -> optuna.storages.BaseStorage:
    """The study's storage with heartbeats: RDB (SQLite waits on locks instead of failing when workers collide),
    a journal file or a gRPC proxy (sweeps.backends: our beat, the same stale-trial callback)."""
    grace = 3 * spec.heartbeat_seconds
    if (path := backends.journal_path(url)) is not None:
        return backends.journal(path, url).beat_every(spec.heartbeat_seconds, grace, _close_lost_runs(cfg))
    if (address := backends.grpc_address(url)) is not None:
        if kind := _needs_lock(spec):  # without the ask lock two workers may take the last run both
            raise ConfigError(
                f"study storage {url}: a {kind} study needs the study-wide ask lock to run each (configuration, seed) "
                "once, which a gRPC proxy cannot give; give the proxy's postgresql://... or a journal:///..."
            )
        return backends.grpc(*address).beat_every(spec.heartbeat_seconds, grace, _close_lost_runs(cfg))
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.heartbeat_seconds,
                grace_period=grace,
                heartbeat_stale_trial_callback=_close_lost_runs(cfg),
            )
        except Exception as e:  # noqa: BLE001 - driver errors vary; the user needs one line
            # another process (a second sweep, a worker, a script reading the study) created the schema
            # between optuna's check and its CREATE TABLE or its version row: the tables now exist, open it again
            if attempt < STORAGE_ATTEMPTS and _schema_race(e):
                time.sleep(0.2 * attempt)  # let the winner finish writing the schema
                continue
            raise ConfigError(f"study storage {url}: {str(e).splitlines()[0][:200]}") from None


def _needs_lock(spec: StudySpec) -> str:
    """What makes a study need the ask lock ('' when nothing does: one seed of sampled configurations, where two
    workers asking at once add one configuration more, as plain Optuna does)."""
    if spec.racing or spec.sequential:  # looks and races are decided under the lock
        return "racing" if spec.racing else "sequential"
    if spec.sampler == "grid":  # Optuna's GridSampler may hand one point to two workers
        return "grid"
    return "replicated" if spec.seeds > 1 else ""


def existing_study(spec: StudySpec, url: str, storage: Any = None) -> optuna.Study:
    """The study as stored, or one line saying there is none (and nothing created, not even a SQLite file)."""
    sqlite = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    path = backends.journal_path(url) or sqlite
    if path is not None and not path.is_file():
        raise SpecError(f"no study {spec.name} in {url} (no such file): run `make sweep STUDY={spec.name}` first")
    try:
        return optuna.load_study(study_name=spec.name, storage=storage or backends.open_url(url))
    except KeyError:
        raise SpecError(f"no study {spec.name} in {url}: run `make sweep STUDY={spec.name}` first") from None


def repair(study: optuna.Study, cfg: Config, client: Any = None) -> list[tuple[int, str, str]]:
    """Close the MLflow runs that outlived their trial: (trial, run id, why) of each run closed FAILED.

    First fails the trials whose worker stopped beating (as a worker would); then every run of the study
    still RUNNING in MLflow whose trial is not RUNNING any more is closed: the case the stale-trial callback
    cannot see, e.g. a study that finished while a run was orphaned, a coordinator killed with its workers,
    or a worker killed between creating its run and recording it on the trial. `client`: an MLflow client
    the caller already holds (else one is made).
    """
    optuna.storages.fail_stale_trials(study)
    if not cfg.tracking.enabled:
        return []
    if client is None:
        # deferred: MLflow loads only when tracking is on
        from cvae.mlflow_tracker import make_client

        client = make_client(cfg)
    exp = client.get_experiment_by_name(study.study_name)
    if exp is None:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000)
    closed = []
    for run in running:
        tags = run.data.tags
        if tags.get("optuna.study") != study.study_name or "optuna.trial" not in tags:
            continue  # the study's parent run, or another study's run in the same experiment
        t = trials.get(int(tags["optuna.trial"]))
        if t is not None and t.state == TrialState.RUNNING:
            continue
        why = f"repair: trial {tags['optuna.trial']} is {t.state.name if t is not None else 'gone'}"
        client.set_tag(run.info.run_id, "ended_by", why)
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append((int(tags["optuna.trial"]), run.info.run_id, why))
    return closed
