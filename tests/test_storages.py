"""Study storages besides SQLite and PostgreSQL (sweeps/backends.py): a journal file and a gRPC storage proxy, with
our heartbeat: two workers on a journal, a worker SIGKILLed mid-run and its trial retried, a stale beat failed and
retried with its parameters, bad URLs as one line.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import psutil
import pytest
from helpers import (
    CLEAN_ENV,
    free_port,
    long_spec,
    mlflow_client,
    one_line_error,
    run_cli,
    sweep_cmd,
    wait_until,
    write_spec,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from cvae.config import ConfigError
from sweeps import backends, cli as cli_mod, storage as storage_mod

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning"),  # ask() by hand
    pytest.mark.usefixtures("isolated"),
]

HAS_GRPC = importlib.util.find_spec("grpc") is not None
needs_grpc = pytest.mark.skipif(not HAS_GRPC, reason="grpcio is not installed (pip install -e '.[grpc]')")


# helpers


def journal_study(path: Path, name: str = "tiny") -> optuna.Study:
    """The study as a reader sees it, through Optuna alone."""
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def pairs_once(study: optuna.Study) -> set[tuple[str, int]]:
    """(configuration, seed index) of every complete trial; fails on a pair that completed twice."""
    pairs = [
        (t.user_attrs["config_id"], t.user_attrs["seed_index"])
        for t in study.get_trials()
        if t.state.name == "COMPLETE"
    ]
    assert len(pairs) == len(set(pairs)), pairs
    return set(pairs)


def own_beat(t: optuna.trial.FrozenTrial) -> bool:
    return t.system_attrs.get(backends.BEAT, [None])[0] == t._trial_id


def grpc_proxy(db: Path) -> Any:
    """optuna's gRPC storage proxy over a SQLite file, serving on a free loopback port (server.stop(0) ends it)."""
    # deferred: grpcio is an optional extra
    from optuna.storages._grpc.server import make_server

    port = free_port()
    server = make_server(optuna.storages.get_storage(f"sqlite:///{db}"), "127.0.0.1", port)
    server.start()
    server.url = f"grpc://127.0.0.1:{port}"
    return server


# URLs


def test_a_relative_journal_is_made_absolute_and_bad_urls_are_one_line(tmp_path: Path) -> None:
    url = storage_mod.storage_url(None, "journal://shared/study.log")  # type: ignore[arg-type]
    assert url == f"journal://{tmp_path}/shared/study.log" and url.startswith("journal:///")
    assert storage_mod.storage_url(None, f"journal://{tmp_path}/j.log") == f"journal://{tmp_path}/j.log"  # type: ignore[arg-type]
    for bad in ("journal://", "grpc://host", "grpc://host:port", "grpc://:13000", "grpc://h:1/db"):
        with pytest.raises(ConfigError, match="study storage"):
            storage_mod.storage_url(None, bad) if bad.startswith("journal") else backends.grpc_address(bad)  # type: ignore[arg-type]
    assert backends.grpc_address("grpc://[::1]:13000") == ("[::1]", 13000)
    # looks, races, grid points and replicates are handed out under the ask lock, which a proxy cannot give
    cases = [("sequential", "grid", 3), ("racing", "tpe", 3), ("grid", "grid", 1), ("replicated", "tpe", 2)]
    for kind, sampler, seeds in cases:
        sequential = kind in ("sequential", "racing")
        spec = SimpleNamespace(
            heartbeat_seconds=1, sequential=sequential, racing=kind == "racing", sampler=sampler, seeds=seeds
        )
        with pytest.raises(ConfigError, match=f"a {kind} study needs the study-wide ask lock to run each"):
            storage_mod.make_storage("grpc://127.0.0.1:1", spec, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "where, why",
    [("afile/sub/j.log", "Not a directory"), ("afolder", "is a folder"), ("", "no file named")],
    ids=["under-a-file", "a-folder", "no-path"],
)
def test_a_journal_that_cannot_be_written_is_one_line_and_creates_nothing(
    where: str, why: str, tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, data_cache)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "afolder").mkdir()
    before = sorted(tmp_path.rglob("*"))
    url = f"journal://{tmp_path / where}" if where else "journal://"
    assert cli_mod.main(["sweep", str(spec), "--storage", url]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert why in line and (not where or str(tmp_path / where) in line), line
    assert sorted(tmp_path.rglob("*")) == before  # no runs/, no journal, no folder, no lock file


# the heartbeat


@pytest.mark.parametrize("kind", ["journal", pytest.param("grpc", marks=needs_grpc)])
def test_a_trial_whose_beat_stopped_is_failed_and_retried_with_its_params(kind: str, tmp_path: Path) -> None:
    server = grpc_proxy(tmp_path / "proxy.db") if kind == "grpc" else None
    url = server.url if server else f"journal://{tmp_path / 'j.log'}"
    try:
        spec = SimpleNamespace(heartbeat_seconds=1, sequential=False, racing=False, sampler="random", seeds=1)
        cfg = SimpleNamespace(tracking=SimpleNamespace(enabled=False))
        storage = storage_mod.make_storage(url, spec, cfg)  # type: ignore[arg-type]
        study = optuna.create_study(study_name="beats", storage=storage)
        dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
        alive, lost, fresh = (study.ask(dist) for _ in range(3))
        lost.set_user_attr("config_id", "c1")
        storage.record_heartbeat(alive._trial_id)
        storage.set_trial_system_attr(lost._trial_id, backends.BEAT, [lost._trial_id, time.time() - 10])
        # `fresh` has not beaten yet (its worker's first beat follows the ask): never stale, as on RDBStorage

        optuna.storages.fail_stale_trials(study)  # what a worker does under the ask lock before it asks
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "RUNNING", "WAITING"]
        retry = trials[3]
        assert retry.params == lost.params and retry.user_attrs == {"config_id": "c1"}
        assert retry.system_attrs["failed_trial"] == lost.number

        # the retry inherits the lost trial's old beat: taken, it is not stale for that
        taken = study.ask(dist)
        assert taken.number == retry.number and taken.params == lost.params
        optuna.storages.fail_stale_trials(study)
        assert study.get_trials()[3].state == TrialState.RUNNING
    finally:
        if server is not None:
            server.stop(0)


# end to end


@pytest.mark.slow
def test_journal_study_with_two_workers_runs_every_planned_pair_once(tmp_path: Path, data_cache: Path) -> None:
    spec = write_spec(tmp_path, data_cache, trials=2, seeds=2)
    journal = tmp_path / "shared" / "study.log"  # its folder does not exist yet
    # MLflow off: the lost-worker test below checks the runs on a journal; registering a winner takes 10 s
    out = run_cli(
        sweep_cmd(spec, "--storage", f"journal://{journal}", "--workers", "2", "tracking.enabled=false"), cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert not (tmp_path / "runs" / "optuna.db").exists() and Path(f"{journal}.ask.lock").is_file()
    study = journal_study(journal)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len(pairs_once(study)) == 4 and all(own_beat(t) for t in trials)  # each beat by its worker
    assert "study tiny: 4 runs: 4 trained, 0 collapsed, 0 diverged, 0 pruned, 0 lost" in out.stdout


@pytest.mark.slow
def test_a_worker_killed_mid_run_on_a_journal_is_failed_and_retried_without_a_rerun(
    tmp_path: Path, data_cache: Path
) -> None:
    """The worker that trains is SIGKILLed (a node lost): the idle one finds its beat stale after the grace period
    (3 s), fails it, closes its MLflow run and runs it again with the same parameters; the sweep ends complete."""
    spec = long_spec(tmp_path, data_cache, niter=12, heartbeat=1, trials=1)
    journal = tmp_path / "study.log"
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(
            sweep_cmd(spec, "--storage", f"journal://{journal}", "--workers", "2"),
            cwd=tmp_path,
            env=CLEAN_ENV,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:

        def training() -> bool:
            try:
                trials = journal_study(journal).get_trials() if journal.is_file() else []
            except KeyError:  # the coordinator has not created the study yet
                return False
            return any(t.state == TrialState.RUNNING and "epochs_run" in t.user_attrs for t in trials)

        wait_until(training, coordinator, log, timeout=120)
        workers = psutil.Process(coordinator.pid).children()
        assert len(workers) == 2
        for w in workers:
            w.cpu_percent(None)
        time.sleep(0.5)
        max(workers, key=lambda w: w.cpu_percent(None)).kill()  # the one training; the other polls, idle
        assert coordinator.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if coordinator.poll() is None:  # the test failed before the end: leave nothing running
            for p in psutil.Process(coordinator.pid).children(recursive=True):
                p.kill()
            coordinator.kill()
            coordinator.wait()

    assert re.search(r"worker \d died \(exit -9\); starting a replacement", log.read_text())
    study = journal_study(journal)
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == dead.number
    assert pairs_once(study) == {(dead.user_attrs["config_id"], 0)}  # the retry is the lost run, not a new one
    client = mlflow_client(tmp_path)
    lost_run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert lost_run.info.status == "FAILED" and lost_run.data.tags["ended_by"] == "worker lost (no heartbeat)"
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
@needs_grpc
def test_two_workers_through_a_grpc_proxy_run_a_sampled_study(tmp_path: Path, data_cache: Path) -> None:
    """One seed of sampled configurations, the study a proxy can run: 4 configurations, or one more when both
    workers asked for the last at once (as plain Optuna would), each once, each beaten by its own worker."""
    server = grpc_proxy(tmp_path / "proxy.db")
    try:
        spec = write_spec(tmp_path, data_cache, trials=4)
        out = run_cli(
            sweep_cmd(spec, "--storage", server.url, "--workers", "2", "tracking.enabled=false"), cwd=tmp_path
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'proxy.db'}")
        trials = study.get_trials()
        assert len(trials) in (4, 5) and all(t.state == TrialState.COMPLETE for t in trials), trials
        assert len(pairs_once(study)) == len(trials) and all(own_beat(t) for t in trials)
    finally:
        server.stop(0)
