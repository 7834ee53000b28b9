"""PostgreSQL study storage (workers on several machines): the advisory ask lock and two workers.

Runs when CVAE_TEST_POSTGRES_URL names a database (`.ci/run` starts one); skips otherwise.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import cvae

from sweeps.lock import AskLock

URL = os.environ.get("CVAE_TEST_POSTGRES_URL", "")
pytestmark = [
    pytest.mark.skipif(not URL, reason="CVAE_TEST_POSTGRES_URL not set (.ci/run starts PostgreSQL)"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def test_advisory_lock_serialises_two_holders() -> None:
    name = f"lock-{uuid.uuid4().hex[:8]}"
    first, second = AskLock(URL, name), AskLock(URL, name)
    first.acquire()
    got = threading.Event()
    t = threading.Thread(target=lambda: (second.acquire(), got.set()))
    t.start()
    time.sleep(0.5)
    assert not got.is_set()  # blocked while the first holds it
    first.release()
    assert got.wait(10)
    second.release()
    second.release()  # idempotent
    t.join()


def test_two_workers_share_a_postgres_study(tmp_path: Path, tiny_overrides: dict[str, str]) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "pg.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "experiment": "demo",
                "overrides": {**tiny_overrides, "train.niter": "2"},
                "trials": 3,
                "sampler": {"type": "random", "seed": 1},
                "pruner": {"type": "none"},
                "heartbeat_seconds": 5,
                "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.004, "log": True}},
            }
        )
    )
    out = subprocess.run(
        cvae("sweep", str(spec), "--workers", "2", "--threads", "1", "--storage", URL),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    study = optuna.load_study(study_name=name, storage=URL)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len({t.params["train.lr"] for t in trials}) == 3
    assert not (tmp_path / "runs" / "optuna.db").exists()  # the study lives in PostgreSQL only
