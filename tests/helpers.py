"""What the tests share, defined once: the tiny configuration, the `cvae` command runner, sweep and MLflow helpers.

Test modules import these (`from helpers import ...`); no test module imports another.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import FrozenTrial

CVAE = (
    [str(Path(sys.executable).with_name("cvae"))]
    if Path(sys.executable).with_name("cvae").exists()
    else [sys.executable, "-m", "reports.cli"]
)
"""the `cvae` command: the installed console script (its entry point under test too), else the module"""


def cvae(*args: Any) -> list[str]:
    """`cvae ARGS...` as a subprocess command line."""
    return [*CVAE, *map(str, args)]


def run_cvae(
    *args: Any, cwd: Path | None = None, env: dict[str, str] | None = None, prelude: str = "", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `cvae ARGS` in cwd and wait, as a user runs it without a user's MLflow or Optuna store (CLEAN_ENV unless
    `env` says otherwise); `prelude` is Python run first in the same process (to patch things)."""
    entry = "import sys\nfrom reports.cli import main\nsys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", f"{prelude}\n{entry}"] if prelude else CVAE
    return subprocess.run(
        [*cmd, *map(str, args)],
        cwd=cwd,
        env=CLEAN_ENV if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def as_args(overrides: dict[str, Any]) -> list[str]:
    """{'section.key': value} -> ['section.key=value', ...] for config.load or the command line."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items()]


# The tiny configuration: a run of a couple of seconds on one CPU thread. A test that needs more epochs or other
# settings says so beside it ({**TINY, "train.niter": 3}).
TINY: dict[str, Any] = {
    "model.arch": "dcgan",
    "model.width": 0.125,
    "model.g_dim": 16,
    "model.z_dim": 4,
    "model.rnn_size": 16,
    "train.batch_size": 4,
    "train.niter": 2,
    "train.epoch_size": 2,
    "train.n_future": 3,
    "train.progress": False,
    "eval.n_future": 3,
    "eval.sequences": 8,
    "eval.batch_size": 8,
    "eval.every": 1,
    "eval.gif_sequences": 1,
    "data.n_train": 16,
    "data.n_val": 8,
    "data.n_test": 8,
    "tracking.system_metrics": False,
}


SMALL_SPACE = {
    "kl.ratio": {"type": "float", "low": 0.25, "high": 1.0},
    "train.lr": {"type": "float", "low": 0.001, "high": 0.004, "log": True},
}


CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")}


def write_spec(tmp_path: Path, data_cache: Path, name: str = "tiny", **fields: Any) -> Path:
    """A study spec in tmp_path on the demo experiment with TINY overrides; `fields` replace top-level keys."""
    overrides = {**TINY, "run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)}
    # a 4-iteration model cannot learn its condition (cond_gain 0): these tests are about the sweep's mechanics, so
    # every finished run counts as trained unless a test asks for the real threshold
    raw: dict[str, Any] = {
        "name": name,
        "experiment": "demo",
        "overrides": overrides,
        "trials": 2,
        "sampler": {"type": "random", "seed": 1},
        "pruner": {"type": "none"},
        "heartbeat_seconds": 5,
        "space": SMALL_SPACE,
        "degenerate_below": -100.0,
        "register": False,  # registering exports the winner (seconds a study): tests/test_registry.py covers it
    }
    raw.update(fields)
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_grid_spec(tmp_path: Path, data_cache: Path, grid: dict[str, list[Any]], **fields: Any) -> Path:
    """write_spec for a grid study: `grid` instead of the search space; `fields` as in write_spec (e.g. seeds)."""
    return write_spec(tmp_path, data_cache, sampler={"type": "grid"}, space=None, trials=None, grid=grid, **fields)


def sweep_cmd(spec: Path, *args: str) -> list[str]:
    """`cvae sweep SPEC ...` (one torch thread per worker: a loaded 2-core box is 10x slower with two)."""
    return cvae("sweep", spec, "--threads", "1", *args)


def run_cli(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout)


def load_study(tmp_path: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")


def mlflow_client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def child_runs(client: MlflowClient, study: optuna.Study) -> dict[str, Any]:
    """run_id -> run for every run of the study's MLflow experiment except the parent."""
    exp = client.get_experiment_by_name(study.study_name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = study.user_attrs["mlflow_parent_run_id"]
    return {r.info.run_id: r for r in runs if r.info.run_id != parent}


def check_trial_run(client: MlflowClient, study: optuna.Study, trial: FrozenTrial, status: str) -> Any:
    """The trial's MLflow run: a child of the study's parent run, tagged with study and trial, in `status`."""
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
    assert tags["optuna.study"] == study.study_name and tags["optuna.trial"] == str(trial.number)
    assert run.info.status == status, (trial.number, trial.state, run.info.status, tags.get("ended_by"))
    for path, value in trial.params.items():
        assert run.data.params[path] == str(value)
    return run


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvae: error: "), err
    return lines[0]


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"sweep ended early (rc {proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def long_spec(tmp_path: Path, data_cache: Path, niter: int = 25, heartbeat: int = 1, **fields: Any) -> Path:
    """A study whose runs last long enough (about 10 s) to be stopped in the middle."""
    exp = tmp_path / "exp.yaml"
    nested: dict[str, dict[str, Any]] = {}
    for key, value in {**TINY, "train.niter": niter}.items():
        section, _, k = key.partition(".")
        nested.setdefault(section, {})[k] = value
    exp.write_text(yaml.safe_dump(nested))
    return write_spec(
        tmp_path,
        data_cache,
        experiment=str(exp),
        heartbeat_seconds=heartbeat,
        overrides={"run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)},
        **fields,
    )


def running_with_a_run(tmp_path: Path, n: int = 1) -> bool:
    """At least n runs are training and have reported an epoch. The store is only opened once n runs have
    written a checkpoint: opening it earlier could race the coordinator creating its tables."""
    if len(list((tmp_path / "runs" / "tiny").glob("trial-*/last.pt"))) < n:
        return False
    trials = load_study(tmp_path).get_trials()
    return sum(t.state.name == "RUNNING" and "epochs_run" in t.user_attrs for t in trials) >= n


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a user's MLflow server, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | extra


def wait_for(cond: Any, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    """End a process this test started, and what it spawned (its own process group), and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # `mlflow server` leaves job-runner children behind for a while
    except ProcessLookupError:
        pass
    proc.wait()


class MlflowServer:
    """A real `mlflow server` on a free loopback port; stop() and start() again keep its port and its store."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
        ]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 120) -> None:
        with self.log.open("a") as f:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.log.parent,
                env=clean_env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.healthy, timeout, f"mlflow server on {self.url}", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


# Bad overrides and a piece of the key the one-line message must name; test_cli.py runs them too.
BAD_OVERRIDES = [
    pytest.param(["foo.bar=1"], "foo", id="unknown-section"),
    pytest.param(["train.foo=1"], "train.foo", id="unknown-key"),
    pytest.param(["train.lr=abc"], "train.lr", id="lr-not-a-number"),
    pytest.param(["train.batch_size=1.5"], "train.batch_size", id="batch-size-not-an-int"),
    pytest.param(["run.amp=maybe"], "run.amp", id="amp-not-a-bool"),
    pytest.param(["kl.mode=sometimes"], "kl.mode", id="bad-literal"),
    pytest.param(["tf.ratio=1.5"], "tf.ratio", id="tf-ratio-above-1"),
    pytest.param(["tf.ratio=-0.1"], "tf.ratio", id="tf-ratio-negative"),
    pytest.param(["train.n_future=29"], "train.n_future", id="too-many-frames"),
    pytest.param(["train.batch_size=0"], "train.batch_size", id="batch-size-zero"),
    pytest.param(["model.z_dim=-1"], "model.z_dim", id="z-dim-negative"),
    pytest.param(["train.niter=0"], "train.niter", id="niter-zero"),
    pytest.param(["trainlr=0.1"], "trainlr", id="override-without-section"),
    pytest.param(["train.niter=1", "train.lr"], "train.lr", id="override-without-equals"),
]


def bair_samples() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, aux1 frames (30, 64, 64, 3) uint8, main-camera frames, actions (30, 4), positions (30, 3)) of
    BAIR-schema samples: one made from the built-in generator (always), and the real one of ../shared when it is
    there (cvae.data.sample.load, whose stand-in positions are the running sum of the actions)."""
    from cvae.data import pushing, sample

    frames, cond = pushing.generate(2, seed=7)
    out = [("generated", frames[0], frames[1], cond[0, :, :4].copy(), cond[0, :, 4:].copy())]
    if sample.SAMPLE.is_file():
        seq = sample.sequences(1)
        out.append(("real", seq["aux1"][0], seq["main"][0], seq["action"][0], seq["position"][0]))
    return out
