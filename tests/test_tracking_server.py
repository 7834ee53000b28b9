"""A real tracking server: `mlflow server` on loopback, two sweep workers, the server stopped mid-trial.

With CVAE_TEST_POSTGRES_URL (`.ci/run` starts PostgreSQL) the server's store and the study both live in
PostgreSQL, as on a lab's shared machines; without it the server keeps its runs in SQLite and the study
stays in the default SQLite file, so the outage behaviour is tested everywhere.
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from helpers import CLEAN_ENV, MlflowServer, long_spec, sweep_cmd
from mlflow import MlflowClient

PG_URL = os.environ.get("CVAE_TEST_POSTGRES_URL", "")
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def _fresh_pg_database() -> str:
    """A new database in the CI PostgreSQL for this test's MLflow store; its URL."""
    import psycopg

    name = f"mlflow_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    backend = _fresh_pg_database() if PG_URL else f"sqlite:///{tmp_path / 'server.db'}"
    s = MlflowServer(backend, tmp_path / "server-artifacts", tmp_path / "server.log")
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _trials(storage: str, name: str) -> list[Any]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_two_workers_log_through_a_server_that_restarts_mid_trial(
    tmp_path: Path, data_cache: Path, server: MlflowServer
) -> None:
    niter = 10
    name = f"srv-{uuid.uuid4().hex[:6]}"
    spec = long_spec(tmp_path, data_cache, niter=niter, trials=2, name=name)
    storage = PG_URL or f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    # every run waits at its 5th step (epoch 3's first: 2 epochs done) until the server is down, so it has epochs
    # left to train through the outage however slowly a loaded machine got it there
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "hold").touch()
    held = {"CVAE_FAULTS_HOLD": "train:5", "CVAE_FAULTS_DIR": str(marks)}
    env = {**CLEAN_ENV, "MLFLOW_TRACKING_URI": server.url, **held}
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        sweep = subprocess.Popen(
            sweep_cmd(spec, "--workers", "2", "--storage", storage),
            cwd=tmp_path,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:

        def epochs() -> list[int]:
            if sweep.poll() is not None:
                pytest.fail(f"sweep ended early:\n{log.read_text()[-3000:]}")
            try:
                return [t.user_attrs.get("epochs_run", 0) for t in _trials(storage, name) if t.state.name == "RUNNING"]
            except Exception:  # noqa: BLE001 - the study may not exist yet
                return []

        deadline = time.monotonic() + 300
        while not any(e >= 2 for e in epochs()):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        server.stop()  # mid-trial: the workers keep training
        at_stop = max(epochs())
        assert at_stop == 2, at_stop  # held
        (marks / "hold").unlink()
        deadline = time.monotonic() + 120
        while max(epochs(), default=0) < at_stop + 2:
            assert time.monotonic() < deadline, (
                f"training stalled while the server was down:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.5)
        server.start()
        assert sweep.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    text = log.read_text()
    assert "unreachable; training goes on" in text and "answers again" in text

    client = MlflowClient(tracking_uri=server.url)
    trials = _trials(storage, name)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val/psnr")
        assert sorted(m.step for m in history) == list(range(1, niter + 1))  # nothing lost in the outage
        with open(Path(t.user_attrs["run_dir"]) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == list(range(1, niter + 1))
        by_step = {m.step: m.value for m in history}
        assert all(abs(float(r["val/psnr"]) - by_step[int(r["epoch"])]) < 1e-6 for r in rows)
        samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert any(p.endswith(".gif") for p in samples) and len(samples) == 2 * niter  # a GIF and a strip per epoch
