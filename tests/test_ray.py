"""`cvae sweep --ray`: workers placed by Ray on a local multi-node cluster; a node lost mid-run loses nothing.

The cluster test uses ray.cluster_utils.Cluster (a head with no worker resources, two nodes with one logical
GPU each, all on this machine); the smoke test starts real `ray start` processes on 127.0.0.1. Runs are
deterministic on a CPU, so a run retried after its node died must score what an uninterrupted run scores.
"""

from __future__ import annotations

import os
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
from helpers import CLEAN_ENV, TINY, MlflowServer, cvae, free_port, run_cli
from mlflow import MlflowClient

from sweeps import ray_launch

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
PG = os.environ.get("CVAE_TEST_POSTGRES_URL", "")

# helpers


def write_spec(folder: Path, data_cache: Path, name: str, out_dir: str | None = None) -> Path:
    """A 2-configuration grid with 2 seeds (4 runs) of seconds-long models, heartbeats every 2 s; run folders
    under `out_dir` (relative: the worker's folder) or folder/runs."""
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "experiment": "demo",
                "seeds": 2,
                "sampler": {"type": "grid"},
                "pruner": {"type": "none"},
                "heartbeat_seconds": 2,
                "degenerate_below": -100.0,
                "register": False,
                "grid": {"kl.mode": ["monotonic", "cyclical"]},
                # three epochs of six iterations: a run long enough for a node to be lost in its middle
                "overrides": {
                    **TINY,
                    "train.niter": 3,
                    "train.epoch_size": 6,
                    "run.out_dir": out_dir or str(folder / "runs"),
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


# pure parts


def test_slots_one_per_gpu_or_fraction_else_per_cpus():
    assert ray_launch.slots({"CPU": 16.0, "GPU": 2.0}, 4) == (2, True)
    assert ray_launch.slots({"CPU": 16.0, "GPU": 2.0}, 4, 0.25) == (8, True)  # four small models per GPU
    assert ray_launch.slots({"CPU": 16.0, "GPU": 3.0}, 4, 2) == (1, True)
    assert ray_launch.slots({"CPU": 9.0}, 4) == (2, False)
    assert ray_launch.slots({"CPU": 9.0}, 4, 1) == (0, True)  # GPUs asked for: none yet, the autoscaler's to add
    assert ray_launch.slots({}, 1) == (0, False)
    assert ray_launch.Placement(gpus_per_worker=0.5).task_options(True) == {"num_gpus": 0.5, "num_cpus": 0}
    assert ray_launch.Placement(cpus_per_worker=3).task_options(False) == {"num_cpus": 3}


def test_demand_is_the_study_s_work_capped_by_max_workers():
    assert ray_launch.want(6, 0) == 6 and ray_launch.want(6, 2) == 2 and ray_launch.want(0, 2) == 0


def test_the_study_s_demand_counts_queued_running_lost_and_unstarted_runs(tmp_path: Path, data_cache: Path) -> None:
    from sweeps import plan, spec as spec_mod

    spec = spec_mod.load_spec(str(write_spec(tmp_path, data_cache, "demand")))  # a grid: 2 configurations x 2 seeds
    study = optuna.create_study(study_name="demand", storage=optuna.storages.InMemoryStorage())
    plan.enqueue_grid(study, spec)
    assert plan.wanted_workers(study, spec) == 4
    trial = study.ask()  # one of them starts
    assert plan.wanted_workers(study, spec) == 4
    study.tell(trial, 20.0)
    assert plan.wanted_workers(study, spec) == 3


def test_sqlite_or_local_tracking_is_refused_across_machines_and_allowed_on_one():
    one = [{"Alive": True, "NodeManagerAddress": "10.0.0.1"}, {"Alive": True, "NodeManagerAddress": "10.0.0.1"}]
    ray_launch.check_cluster("sqlite:////x/optuna.db", "sqlite:////x/mlflow.db", one)
    two = one + [{"Alive": True, "NodeManagerAddress": "10.0.0.2"}]
    with pytest.raises(ray_launch.ConfigError, match="cannot be shared by the 2 machines"):
        ray_launch.check_cluster("sqlite:////x/optuna.db", None, two)
    pg = "postgresql://u@h/db"
    for local in ("sqlite:////x/mlflow.db", "file:///x/mlruns", "/x/mlruns", pg):
        with pytest.raises(ray_launch.ConfigError, match=r"would each log to their own disk.*tracking.uri=http://"):
            ray_launch.check_cluster(pg, local, two)
    ray_launch.check_cluster(pg, "http://head:5000", two)
    ray_launch.check_cluster(pg, None, two)  # tracking off


def test_the_job_ships_the_project_folder_and_a_node_may_name_its_own_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ray_launch.runtime_env()
    assert Path(env["working_dir"]) == Path(ray_launch.__file__).resolve().parents[1]  # this checkout, experiments too
    assert ".venv" in env["excludes"] and "runs" in env["excludes"]
    monkeypatch.delenv("CVAE_WORKDIR", raising=False)
    assert ray_launch.workdir(str(tmp_path)) == str(tmp_path)
    assert ray_launch.workdir(str(tmp_path / "not-on-this-node")) is None  # Ray's job folder
    monkeypatch.setenv("CVAE_WORKDIR", str(tmp_path / "node-a"))
    assert ray_launch.workdir(str(tmp_path)) == str(tmp_path / "node-a") and (tmp_path / "node-a").is_dir()


def test_a_worker_whose_code_is_not_the_study_s_refuses_in_one_line(tmp_path: Path, data_cache: Path) -> None:
    from sweeps.provenance import code_fingerprint

    spec = write_spec(tmp_path, data_cache, "oldcode")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="oldcode", storage=url)
    study.set_user_attr("code", "0123456789ab")  # what another checkout recorded
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "worker", str(spec), "--storage", url],
        cwd=tmp_path,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, out.stderr
    assert f"code (fingerprint {code_fingerprint()})" in err[0] and "(0123456789ab)" in err[0]
    assert study.get_trials() == []  # took nothing


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
@pytest.mark.cluster
def test_a_node_lost_mid_run_loses_nothing(tmp_path: Path, data_cache: Path, ray_alone: None) -> None:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # reference: the same runs, uninterrupted, without Ray
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref_spec = write_spec(ref_dir, data_cache, "rayref")
    out = run_cli(cvae("sweep", str(ref_spec), "--threads", "1"), cwd=ref_dir, timeout=600)
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
    assert len(keys) == 4 and len(set(keys)) == 4  # 0 lost, 0 counted twice
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
    # the retry continued from the lost run's last.pt (this machine's disk is shared by its nodes)
    for t in failed:
        (retry,) = [
            r
            for r in complete
            if (r.system_attrs.get("retry_history") or [r.user_attrs.get("retry_of")])[-1] == t.number
        ]
        done_before = t.user_attrs["epochs_run"]
        redone = done_before - retry.user_attrs["resumed_at_epoch"]
        print(f"trial {t.number}: {done_before} epoch(s) done before the loss, {redone} redone by trial {retry.number}")
        assert retry.user_attrs["resumed_from"] == t.user_attrs["run_dir"] and redone < done_before
    assert values(study) == pytest.approx(reference, abs=0, rel=0)  # every run, the retried one too, as uninterrupted


@pytest.mark.slow
@pytest.mark.cluster
def test_two_nodes_with_their_own_folders_log_every_run_to_one_tracking_server(
    tmp_path: Path, data_cache: Path, ray_alone: None
) -> None:
    """Real `ray start` nodes, each with its own working folder (CVAE_WORKDIR: its run folders land there, as on
    machines without a shared disk); the study's runs, curves and files all reach the one MLflow server, and
    every worker ran the driver's code, shipped by the job (runtime_env), not the checkout it would import."""
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
    (tmp_path / "server").mkdir()
    server = MlflowServer(
        f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", tmp_path / "server" / "artifacts", tmp_path / "server.log"
    )
    server.start()
    try:
        for cmd, node in ((head, "node-a"), (second, "node-b")):
            out = subprocess.run(
                cmd, env={**env, "CVAE_WORKDIR": str(tmp_path / node)}, capture_output=True, text=True, timeout=180
            )
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        name = f"raysmoke{uuid.uuid4().hex[:6]}"
        spec = write_spec(tmp_path, data_cache, name, out_dir="runs")  # relative: each node's own folder
        storage = ["--storage", PG] if PG else []  # PostgreSQL in CI; the nodes share this machine's disk otherwise
        out = run_cli(
            cvae("sweep", str(spec), "--ray", f"127.0.0.1:{port}", *storage, f"tracking.uri={server.url}"),
            cwd=tmp_path,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "ray: 2 node(s), 2 worker slot(s), one per GPU" in out.stdout
        client = MlflowClient(tracking_uri=server.url)
        runs = [
            r
            for r in client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=100)
            if "optuna.trial" in r.data.tags
        ]
        assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
        assert len({r.data.tags["node"] for r in runs}) == 2  # both nodes ran runs
        folders = {Path(r.data.tags["run_dir"]).relative_to(tmp_path).parts[0] for r in runs}
        assert folders == {"node-a", "node-b"}  # each in its node's own folder...
        for r in runs:  # ...and all of it in the server: curves, files
            assert len(client.get_metric_history(r.info.run_id, "val/psnr")) == 3
            files = {a.path for a in client.list_artifacts(r.info.run_id)}
            assert {"config.yaml", "samples", "metrics.csv"} <= files
            assert any(a.path.endswith(".gif") for a in client.list_artifacts(r.info.run_id, "samples"))
        study = optuna.load_study(
            study_name=name, storage=PG or f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
        )  # the driver's study
        assert {r.data.tags["code"] for r in runs} == {study.user_attrs["code"]}
        assert all("runtime_resources" in r.data.tags["code_path"] for r in runs)  # the job's copy of the code
        assert not (tmp_path / "runs" / "mlflow.db").exists()  # no local store on the side
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        server.stop()


def fake_autoscaler(port: int, ip: str, max_nodes: int) -> dict[str, Any]:
    """Ray's fake multi-node provider (nodes are `ray start` processes on this machine) as an autoscaling cluster:
    a head with no room for workers and a GPU node type the autoscaler launches on demand."""
    empty: dict[str, Any] = {}
    return {
        "cluster_name": "cvae-test",
        "max_workers": max_nodes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"{ip}:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0, "GPU": 0}, "node_config": empty, "max_workers": 0},
            "ray.worker.gpu": {
                "resources": {"CPU": 1, "GPU": 1},
                "node_config": empty,
                "min_workers": 0,
                "max_workers": max_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        **{k: empty for k in ("auth", "docker", "file_mounts")},
        **{
            k: []
            for k in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
                "cluster_synced_files",
                "rsync_exclude",
                "rsync_filter",
            )
        },
        "file_mounts_sync_continuously": False,
    }


@pytest.mark.slow
@pytest.mark.cluster
def test_an_autoscaling_cluster_grows_for_the_study_s_demand(tmp_path: Path, data_cache: Path, ray_alone: None) -> None:
    """A cluster with no worker node: the driver says it waits, asks the autoscaler for the study's demand capped
    by --max-workers (2 of the 4 runs), the autoscaler launches two GPU nodes, and the study finishes on them."""
    ray = pytest.importorskip("ray")
    import json

    ray_bin = str(Path(sys.executable).parent / "ray")
    port, ip = free_port(), ray.util.get_node_ip_address()
    config = tmp_path / "autoscaler.json"
    config.write_text(json.dumps(fake_autoscaler(port, ip, max_nodes=4)))
    env = {**CLEAN_ENV, "RAY_ADDRESS": "", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head = [ray_bin, "start", "--head", "--port", str(port), "--autoscaling-config", str(config)]
    head += ["--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats"]
    try:
        out = subprocess.run(head, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        spec = write_spec(tmp_path, data_cache, "grow")
        out = run_cli(
            cvae("sweep", str(spec), "--ray", f"{ip}:{port}", "--gpus-per-worker", "1", "--max-workers", "2"),
            cwd=tmp_path,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "ray: 1 node(s), 0 worker slot(s), one per GPU" in out.stdout
        assert "ray: waiting for resources: 2 worker(s) wanted, GPU each; no node has room (waited 0 s)" in out.stdout
        ray.init(address=f"{ip}:{port}")
        try:
            workers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
        finally:
            ray.shutdown()
        assert len(workers) == 2  # what was asked for (--max-workers 2), not the 4 the node type allows
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("grow").experiment_id], max_results=100)
        if "optuna.trial" in r.data.tags
    ]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_driver_killed_outright_and_started_again_finishes_the_study(
    tmp_path: Path, data_cache: Path, ray_alone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL to `cvae sweep --ray` while two runs train (held in their second epoch): Ray kills the dead driver's
    workers and their children outright, so their runs are lost as with a lost node; the same command again
    fails them by their missing heartbeats, and finishes the study, every run once, the two lost ones continued
    from their checkpoints."""
    import psutil

    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "hold").touch()
    monkeypatch.setenv("CVAE_FAULTS_HOLD", "train:7")  # epoch 2's first step (six a epoch), on the nodes' workers
    monkeypatch.setenv("CVAE_FAULTS_DIR", str(marks))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        spec = write_spec(tmp_path, data_cache, "driverkill")
        cmd = cvae("sweep", str(spec), "--ray", cluster.address)
        log = tmp_path / "first.log"
        with log.open("w") as fh:
            driver = subprocess.Popen(cmd, cwd=tmp_path, env=CLEAN_ENV, stdout=fh, stderr=subprocess.STDOUT)
        db = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"

        def trials(state: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
            try:
                return optuna.load_study(study_name="driverkill", storage=db).get_trials(states=(state,))
            except Exception:  # noqa: BLE001 - not created yet, or its tables are being created at this moment
                return []

        deadline = time.monotonic() + 300
        while len([t for t in trials(optuna.trial.TrialState.RUNNING) if t.user_attrs.get("epochs_run") == 1]) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 120

        def workers() -> list[psutil.Process]:
            return [
                p
                for p in psutil.process_iter(["cmdline"])
                if "sweeps.cli" in (c := " ".join(p.info["cmdline"] or [])) and "driverkill" in c
            ]

        while workers():  # Ray ends a dead driver's workers
            assert time.monotonic() < deadline, "the dead driver's workers still run"
            time.sleep(0.5)
        (marks / "hold").unlink()
        out = subprocess.run(cmd, cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        cluster.shutdown()
        ray.shutdown()
    study = optuna.load_study(study_name="driverkill", storage=db)
    all_trials = study.get_trials()
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in complete]
    assert len(keys) == 4 and len(set(keys)) == 4  # nothing lost, nothing twice
    lost = [t for t in all_trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(lost) == 2 and not [t for t in all_trials if t.state == optuna.trial.TrialState.RUNNING]
    assert sorted(t.user_attrs["resumed_at_epoch"] for t in complete if "resumed_from" in t.user_attrs) == [1, 1]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("driverkill").experiment_id], max_results=100)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    closed = [r for r in runs if r.data.tags.get("ended_by") == "worker lost (no heartbeat)"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in closed) == sorted(t.number for t in lost)
    assert all(r.info.status == "FAILED" for r in closed)
