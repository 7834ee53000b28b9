"""`cvae sweep STUDY --ray [ADDRESS]`: the same workers, placed by Ray: one task per GPU (or per fraction of a
GPU with --gpus-per-worker, or per --cpus-per-worker CPUs on a cluster without GPUs).

The driver prepares the study exactly as `cvae sweep` does (sweeps.coordinator.prepare), asks the autoscaler
(ray.autoscaler.sdk.request_resources) for as many worker slots as the study can keep busy (plan.wanted_workers,
at most --max-workers), the demand KubeRay or a cloud launcher grows the cluster for, and keeps one worker task
in flight per slot the cluster has now, adding tasks as nodes join. Each task runs
`python -m sweeps.cli worker` (the body of `cvae worker`) as a child process on its node, against the study's
storage, with the MLflow tracking URI in its environment. The driver's code travels with the job (runtime_env:
the project folder, or its packages), and a worker whose code fingerprint is not the study's refuses
(sweeps.provenance). Across machines, a SQLite study or a tracking store on local disk is refused: every node
must reach one database and one tracking server.

A node that dies takes its task and its run with it: Ray runs the task again on a node that is left
(max_retries), the run's trial is failed by its missing heartbeat and queued again with the same configuration
and seed, and the retry continues from the lost run's last.pt when that folder is on a disk both nodes reach
(sweeps.objective). Ctrl-C on the driver cancels every task; each forwards SIGTERM to its worker, which closes
its run as a local worker does. A driver killed outright takes its tasks with it (Ray SIGKILLs a dead driver's
workers and their children, so their trials stay RUNNING); the same command again fails them by their missing
heartbeat, retries them from their last.pt and finishes the study.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cvae
import sweeps
from cvae.config import ConfigError
from sweeps.local import STOP_GRACE_S, die_with_parent
from sweeps.lock import AskLock
from sweeps.plan import advance_look, advance_race, requeue_lost, unfinished, wanted_workers

TASK_RETRIES = 5  # a task whose node died is run again this many times
ROUNDS = 3  # worker rounds when a round ends with the study unfinished (lost runs to queue again)
POLL_S = 1.0
WAIT_NOTE_S = 30.0  # while no node has room, say so this often
SHARED_TRACKING = ("http://", "https://", "databricks")  # tracking stores every node reaches, artifacts included
EXCLUDES = [".git", ".venv", ".cache", ".*_cache", "runs", "mlruns", "mlartifacts", "*.db", "*.pt", "__pycache__"]
EXCLUDES += ["*.egg-info"]  # what the job leaves behind: environments, caches, results
INSTALL_HINT = "--ray needs Ray: pip install -e '.[ray]' (pinned as the project's `ray` extra)"


def import_ray() -> Any:
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class Placement:
    """Where the workers go: the cluster's address and what one worker takes."""

    address: str = "auto"  # auto = the running cluster, local = a new one here, or host:port / ray://host:10001
    cpus_per_worker: int = 1
    gpus_per_worker: float | None = None  # None: one GPU when the cluster has GPUs now; a fraction packs models
    max_workers: int = 0  # 0 = as many as the study can keep busy

    def task_options(self, gpu: bool) -> dict[str, float]:
        if gpu:
            return {"num_gpus": self.gpus_per_worker or 1.0, "num_cpus": 0}
        return {"num_cpus": self.cpus_per_worker}


def slots(resources: dict[str, float], cpus_per_worker: int, gpus_per_worker: float | None = None) -> tuple[int, bool]:
    """(worker tasks the cluster can hold, whether they take GPUs): per GPU (or fraction) when GPUs are asked for or
    the cluster has some, else per N CPUs. An autoscaling GPU cluster that starts empty needs --gpus-per-worker."""
    gpus = float(resources.get("GPU", 0))
    if gpus_per_worker is not None or gpus:
        return int(gpus / (gpus_per_worker or 1.0) + 1e-9), True
    return int(resources.get("CPU", 0)) // max(1, cpus_per_worker), False


def want(study_wants: int, max_workers: int) -> int:
    """Worker tasks to keep in flight: what the study can keep busy, at most max_workers (0 = no cap)."""
    return min(study_wants, max_workers) if max_workers else study_wants


def check_cluster(url: str, tracking: str | None, nodes: list[dict[str, Any]]) -> None:
    """Across machines, every worker must reach one study database and one tracking server: a SQLite study
    file, or a tracking store on local disk (SQLite, files: runs, curves and GIFs scattered over the nodes'
    disks), is refused with what to give instead."""
    hosts = {n.get("NodeManagerAddress") for n in nodes if n.get("Alive")}
    if len(hosts) <= 1:
        return
    if url.startswith("sqlite"):
        raise ConfigError(
            f"study storage {url}: a SQLite file cannot be shared by the {len(hosts)} machines of this "
            "Ray cluster; give --storage postgresql://... (a database every node reaches) or journal:///shared/study.log"
        )
    if tracking is not None and not tracking.startswith(SHARED_TRACKING):
        raise ConfigError(
            f"MLflow tracking URI {tracking}: the {len(hosts)} machines of this Ray cluster would each log to "
            "their own disk; start a tracking server every node reaches (mlflow server --backend-store-uri "
            "postgresql://... --serve-artifacts --host 0.0.0.0) and give tracking.uri=http://HOST:5000"
        )


def runtime_env() -> dict[str, Any]:
    """The driver's code for every worker: the project folder when this is a checkout (its experiments/ come
    along), else the installed packages. Ray puts it first on the workers' PYTHONPATH."""
    root = Path(cvae.__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "experiments").is_dir():
        return {"working_dir": str(root), "excludes": EXCLUDES}
    return {"py_modules": [str(Path(m.__file__).parent) for m in (cvae, sweeps)], "excludes": EXCLUDES}


def _stop(proc: subprocess.Popen, grace: float) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_task(
    spec_name: str,
    spec_text: str | None,
    extra: list[str],
    url: str,
    index: int,
    threads: int,
    env: dict[str, str],
    cwd: str,
) -> int:
    """Body of a Ray task: one `python -m sweeps.cli worker` on this node until the study has no work left."""

    spec_arg = spec_name
    if spec_text is not None:  # a spec file of the driver's machine: the same text, here
        folder = Path(tempfile.mkdtemp(prefix="cvae-ray-spec-"))
        spec_arg = str(folder / Path(spec_name).name)
        Path(spec_arg).write_text(spec_text)
    node = os.environ.get("CVAE_NODE") or _node_name()
    cmd = [
        sys.executable,
        "-P",  # the node's own checkout in cwd must not shadow the driver's code on PYTHONPATH
        "-m",
        "sweeps.cli",
        "worker",
        spec_arg,
        "--storage",
        url,
        "--threads",
        str(threads),
        "--worker-index",
        str(index),
        "--",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env, "CVAE_NODE": node},
        cwd=workdir(cwd),
        preexec_fn=die_with_parent,
    )
    try:
        return proc.wait()
    except BaseException:  # ray.cancel raises KeyboardInterrupt here: stop the worker the way Ctrl-C does
        _stop(proc, STOP_GRACE_S)
        raise


def workdir(driver_cwd: str) -> str | None:
    """Where a worker runs (relative run folders land there): the node's $CVAE_WORKDIR, else the driver's folder
    when this node has it, else the job's own folder."""
    mine = os.environ.get("CVAE_WORKDIR")
    if mine:
        Path(mine).mkdir(parents=True, exist_ok=True)
        return mine
    return driver_cwd if os.path.isdir(driver_cwd) else None


def _node_name() -> str:
    """host:ray-node-id (short) of the process's node, or the host name outside Ray."""
    try:
        import ray

        return f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return socket.gethostname()


def tracking_env(cfg: Any) -> dict[str, str]:
    """The MLflow tracking URI every task must log to (the driver's, resolved to an absolute one)."""
    # deferred: MLflow loads only when tracking is on
    from cvae.mlflow_tracker import tracking_uri

    return {"MLFLOW_TRACKING_URI": tracking_uri(cfg)} if cfg.tracking.enabled else {}


def request(ray: Any, n: int, options: dict[str, float]) -> None:
    """Tell the autoscaler the slots the study wants (sticky until changed; 0 clears it). A cluster without
    an autoscaler ignores it."""
    # deferred: part of Ray, imported only once Ray is
    from ray.autoscaler.sdk import request_resources

    bundle = {"GPU" if k == "num_gpus" else "CPU": v for k, v in options.items() if v}
    request_resources(bundles=[bundle] * n)


def run(
    spec_arg: str,
    spec: Any,
    cfg: Any,
    extra: list[str],
    url: str,
    placement: Placement,
    study: Any,
    on_tick: Any = lambda: None,
) -> int:
    """Drive a prepared study's workers as Ray tasks until it has no work left; returns the worst exit code."""

    ray = import_ray()
    if not ray.is_initialized():
        ray.init(
            address="local" if placement.address in ("", "local") else placement.address,  # local: always a new one
            runtime_env=runtime_env(),
            log_to_driver=True,
            include_dashboard=False,
            configure_logging=False,
        )
    env = tracking_env(cfg)
    check_cluster(url, env.get("MLFLOW_TRACKING_URI"), ray.nodes())
    path = Path(spec_arg)
    spec_text = path.read_text() if path.suffix in (".yaml", ".yml") and path.is_file() else None
    cwd = os.getcwd()
    remote = ray.remote(worker_task)
    in_flight: dict[Any, int] = {}
    codes: list[int] = []
    index = 0
    total, gpu = slots(ray.cluster_resources(), placement.cpus_per_worker, placement.gpus_per_worker)
    if gpu:
        unit = "GPU" if placement.gpus_per_worker in (None, 1) else f"{placement.gpus_per_worker:g} GPU"
    else:
        unit = f"{placement.cpus_per_worker} CPU(s)"
    print(
        f"ray: {len([n for n in ray.nodes() if n.get('Alive')])} node(s), {total} worker slot(s), one per {unit}",
        flush=True,
    )
    asked = -1
    waiting_since: float | None = None
    said_at = 0.0
    try:
        for _ in range(ROUNDS):
            while True:
                total, gpu = slots(ray.cluster_resources(), placement.cpus_per_worker, placement.gpus_per_worker)
                opts = placement.task_options(gpu)
                n = want(wanted_workers(study, spec), placement.max_workers)
                if n != asked:  # the autoscaler sees the study's demand, not only the tasks that fit now
                    request(ray, n, opts)
                    asked = n
                while len(in_flight) < min(n, total):  # the request above covers the rest
                    ref = remote.options(max_retries=TASK_RETRIES, retry_exceptions=False, **opts).remote(
                        spec_arg, spec_text, extra, url, index, placement.cpus_per_worker, env, cwd
                    )
                    in_flight[ref] = index
                    index += 1
                if total == 0 and n > 0:  # no node has room yet: say so, and for how long
                    waiting_since = waiting_since or time.monotonic()
                    waited = time.monotonic() - waiting_since
                    if said_at == 0.0 or waited - said_at >= WAIT_NOTE_S:
                        print(
                            f"ray: waiting for resources: {n} worker(s) wanted, {unit} each; no node has room "
                            f"(waited {waited:.0f} s)",
                            flush=True,
                        )
                        said_at = max(waited, 1e-9)
                else:
                    waiting_since, said_at = None, 0.0
                if not in_flight:
                    if n == 0:
                        break  # no work queued: done, or lost runs to queue again below
                    time.sleep(POLL_S)
                    continue
                on_tick()
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    i = in_flight.pop(ref)
                    try:
                        codes.append(int(ray.get(ref)))
                    except Exception as e:  # noqa: BLE001 - a task that failed after its retries: say it, go on
                        print(f"ray: worker {i} failed: {str(e).splitlines()[0][:200]}", flush=True)
                        codes.append(1)
            if not unfinished(study, spec):
                break
            lock = AskLock(url, spec.name)
            lock.acquire()
            try:
                requeue_lost(study)
                advance_look(study, spec)
                advance_race(study, spec)
            finally:
                lock.release()
    except (KeyboardInterrupt, SystemExit):
        for ref in in_flight:
            ray.cancel(ref)
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=STOP_GRACE_S + 5)
        raise
    finally:
        try:
            request(ray, 0, {})  # the study wants nothing more: let the autoscaler shrink the cluster
        except Exception:  # noqa: BLE001 - a driver whose cluster is gone has nothing to release
            pass
    return max((c for c in codes if c != 0), default=0)
