"""`cvae sweep --ray`: workers placed by Ray on a local multi-node cluster; a node lost mid-run loses nothing.

The cluster test uses ray.cluster_utils.Cluster (a head with no worker resources, two nodes with one logical
GPU each, all on this machine); the smoke test starts real `ray start` processes on 127.0.0.1. Runs are
deterministic on a CPU, so a run retried after its node died must score what an uninterrupted run scores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import CLEAN_ENV, TINY, cvae
from mlflow import MlflowClient

from sweeps import ray_launch

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
PG = os.environ.get("CVAE_TEST_POSTGRES_URL", "")

# helpers


def write_spec(folder: Path, data_cache: Path, name: str) -> Path:
    """A 2-configuration grid with 3 seeds (6 runs) of seconds-long models, heartbeats every 2 s."""
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "experiment": "demo",
                "seeds": 3,
                "sampler": {"type": "grid"},
                "pruner": {"type": "none"},
                "heartbeat_seconds": 2,
                "degenerate_below": -100.0,
                "grid": {"kl.mode": ["monotonic", "cyclical"]},
                # three epochs of six iterations: a run long enough for a node to be lost in its middle
                "overrides": {
                    **TINY,
                    "train.niter": 3,
                    "train.epoch_size": 6,
                    "run.out_dir": str(folder / "runs"),
                    "data.cache_dir": str(data_cache),
                },
            }
        )
    )
    return path


def values(study: optuna.Study) -> dict[tuple[str, int], float]:
    return {
        (t.user_attrs["config_id"], t.user_attrs["seed_index"]): t.value
        for t in study.get_trials()
        if t.state == optuna.trial.TrialState.COMPLETE
    }


@pytest.fixture
def ray_alone() -> Any:
    """One Ray test at a time on this machine (pytest -n 2): `ray stop` ends every Ray process here."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "cvae-ray-tests.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
        fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# pure parts


def test_slots_one_per_gpu_else_per_cpus():
    assert ray_launch.slots({"CPU": 16.0, "GPU": 2.0}, 4) == (2, True)
    assert ray_launch.slots({"CPU": 9.0}, 4) == (2, False)
    assert ray_launch.slots({}, 1) == (0, False)


def test_sqlite_is_refused_across_machines_and_allowed_on_one():
    one = [{"Alive": True, "NodeManagerAddress": "10.0.0.1"}, {"Alive": True, "NodeManagerAddress": "10.0.0.1"}]
    ray_launch.check_storage("sqlite:////x/optuna.db", one)
    two = one + [{"Alive": True, "NodeManagerAddress": "10.0.0.2"}]
    with pytest.raises(ray_launch.ConfigError, match="cannot be shared by the 2 machines"):
        ray_launch.check_storage("sqlite:////x/optuna.db", two)
    ray_launch.check_storage("postgresql://u@h/db", two)


def test_without_ray_installed_ray_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from sweeps import cli as cli_mod

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert cli_mod.main(["sweep", "demo", "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[ray]'" in err[0]
    assert not (tmp_path / "runs").exists()  # nothing created


# a local multi-node cluster


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.xdist_group("ray")  # one cluster at a time (make test's alone phase)
def test_a_node_lost_mid_run_loses_nothing(tmp_path: Path, data_cache: Path, ray_alone: None) -> None:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # reference: the same runs, uninterrupted, without Ray
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref_spec = write_spec(ref_dir, data_cache, "rayref")
    out = subprocess.run(
        cvae("sweep", str(ref_spec), "--threads", "1"),
        cwd=ref_dir,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reference = values(optuna.load_study(study_name="rayref", storage=f"sqlite:///{ref_dir / 'runs' / 'optuna.db'}"))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        work = tmp_path / "ray"
        work.mkdir()
        spec = write_spec(work, data_cache, "rayloss")
        log = work / "sweep.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(
                cvae("sweep", str(spec), "--ray", cluster.address),
                cwd=work,
                env=CLEAN_ENV,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        db = work / "runs" / "optuna.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{work / 'runs' / 'mlflow.db'}")

        def running_on() -> str | None:
            """The Ray node id (prefix) of a run in progress, once a run has completed before it."""
            if not db.exists():
                return None
            try:
                study = optuna.load_study(study_name="rayloss", storage=f"sqlite:///{db}")
            except Exception:  # noqa: BLE001 - not created yet, or its tables are being created at this moment
                return None
            trials = study.get_trials()
            done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
            for t in trials:  # a run that has trained an epoch and has epochs left: mid-training
                if (
                    t.state == optuna.trial.TrialState.RUNNING
                    and "mlflow_run_id" in t.user_attrs
                    and done >= 1
                    and t.user_attrs.get("epochs_run") == 1
                ):
                    return client.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get("node", "").split(":")[-1]
            return None

        deadline = time.monotonic() + 300
        victim_id = None
        while victim_id is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            victim_id = running_on()
            time.sleep(0.2)
        victim = next(n for n in nodes if n.node_id.startswith(victim_id))
        cluster.remove_node(victim, allow_graceful=False)  # the node dies with its task, its worker and its run
        cluster.add_node(num_cpus=1, num_gpus=1)  # and a replacement joins
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        cluster.shutdown()
        ray.shutdown()

    study = optuna.load_study(study_name="rayloss", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in complete]
    assert len(keys) == 6 and len(set(keys)) == 6  # 0 lost, 0 counted twice
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the lost run must show as a failed trial"
    runs = client.search_runs([client.get_experiment_by_name("rayloss").experiment_id], max_results=100)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_id = {r.info.run_id: r for r in runs}
    killed = [by_id[t.user_attrs["mlflow_run_id"]] for t in failed if t.user_attrs.get("mlflow_run_id") in by_id]
    assert killed, "the run the node took with it is in MLflow"
    for r in killed:  # closed, and it was the victim's
        assert r.info.status in ("FAILED", "KILLED") and r.data.tags["node"].endswith(victim.node_id[:8])
    lost = {(t.user_attrs.get("config_id"), t.user_attrs.get("seed_index")) for t in failed}
    assert lost <= set(keys)
    assert values(study) == pytest.approx(reference, abs=0, rel=0)  # every run, the retried one too, as uninterrupted


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.xdist_group("ray")  # one cluster at a time (make test's alone phase)
def test_ray_start_two_nodes_and_sweep_spreads_over_both(tmp_path: Path, data_cache: Path, ray_alone: None) -> None:
    pytest.importorskip("ray")
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    temp = f"/tmp/ray-{uuid.uuid4().hex[:6]}"
    env = {**CLEAN_ENV, "RAY_ADDRESS": ""}
    common = ["--num-cpus", "1", "--num-gpus", "1", "--disable-usage-stats"]
    head = [
        ray_bin,
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--temp-dir",
        temp,
        "--include-dashboard",
        "false",
        *common,
    ]
    second = [
        ray_bin,
        "start",
        "--address",
        f"127.0.0.1:{port}",
        "--node-ip-address",
        "127.0.0.1",
        *common,
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--min-worker-port",
        "20000",
        "--max-worker-port",
        "20999",
    ]
    try:
        for cmd in (head, second):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        name = f"raysmoke{uuid.uuid4().hex[:6]}"
        spec = write_spec(tmp_path, data_cache, name)
        storage = ["--storage", PG] if PG else []  # PostgreSQL in CI; the nodes share this machine's disk otherwise
        out = subprocess.run(
            cvae("sweep", str(spec), "--ray", f"127.0.0.1:{port}", *storage),
            cwd=tmp_path,
            env=CLEAN_ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "ray: 2 node(s), 2 worker slot(s), one per GPU" in out.stdout
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=100)
        if "optuna.trial" in r.data.tags
    ]
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["node"] for r in runs}) == 2  # both nodes ran runs
