"""`cvae sweep STUDY --ray [ADDRESS]`: the same workers, placed by Ray: one task per GPU (or per
`--cpus-per-worker` CPUs on a cluster without GPUs).

The driver prepares the study exactly as `cvae sweep` does (sweeps.coordinator.prepare), then keeps one worker task in
flight per slot of the cluster, adding tasks when nodes join. Each task runs `python -m sweeps.cli worker` (the
body of `cvae worker`) as a child process on its node, against the study's storage, with the MLflow tracking
URI in its environment. A node that dies takes its task and its run with it: Ray runs the task again on a
node that is left (max_retries), the run's trial is failed by its missing heartbeat and queued again with the
same configuration and seed by the next worker that looks, and its MLflow run is closed FAILED. Ctrl-C on the
driver cancels every task; each forwards SIGTERM to its worker, which closes its run as a local worker does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cvae.config import ConfigError
from sweeps.local import STOP_GRACE_S, die_with_parent
from sweeps.lock import AskLock
from sweeps.plan import advance_look, advance_race, requeue_lost, unfinished

TASK_RETRIES = 5  # a task whose node died is run again this many times
ROUNDS = 3  # worker rounds when a round ends with the study unfinished (lost runs to queue again)
POLL_S = 1.0
INSTALL_HINT = "--ray needs Ray: pip install -e '.[ray]' (pinned as the project's `ray` extra)"


def import_ray() -> Any:
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def slots(resources: dict[str, float], cpus_per_worker: int) -> tuple[int, bool]:
    """(worker tasks the cluster can hold, whether they take a GPU each): one per GPU, else one per N CPUs."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus, True
    return int(resources.get("CPU", 0)) // max(1, cpus_per_worker), False


def check_storage(url: str, nodes: list[dict[str, Any]]) -> None:
    """A SQLite study file can only be shared by processes of one machine."""
    hosts = {n.get("NodeManagerAddress") for n in nodes if n.get("Alive")}
    if url.startswith("sqlite") and len(hosts) > 1:
        raise ConfigError(
            f"study storage {url}: a SQLite file cannot be shared by the {len(hosts)} machines of this "
            "Ray cluster; give --storage postgresql://... (a database every node reaches)"
        )


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
        cwd=cwd if os.path.isdir(cwd) else None,
        preexec_fn=die_with_parent,
    )
    try:
        return proc.wait()
    except BaseException:  # ray.cancel raises KeyboardInterrupt here: stop the worker the way Ctrl-C does
        _stop(proc, STOP_GRACE_S)
        raise


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


def run(
    spec_arg: str,
    spec: Any,
    cfg: Any,
    extra: list[str],
    url: str,
    address: str,
    cpus_per_worker: int,
    study: Any,
    on_tick: Any = lambda: None,
) -> int:
    """Drive a prepared study's workers as Ray tasks until it has no work left; returns the worst exit code."""

    ray = import_ray()
    if not ray.is_initialized():
        ray.init(
            address=None if address in ("", "local") else address,
            log_to_driver=True,
            include_dashboard=False,
            configure_logging=False,
        )
    check_storage(url, ray.nodes())
    path = Path(spec_arg)
    spec_text = path.read_text() if path.suffix in (".yaml", ".yml") and path.is_file() else None
    env = tracking_env(cfg)
    cwd = os.getcwd()
    remote = ray.remote(worker_task)
    in_flight: dict[Any, int] = {}
    codes: list[int] = []
    index = 0
    total, gpu = slots(ray.cluster_resources(), cpus_per_worker)
    print(
        f"ray: {len([n for n in ray.nodes() if n.get('Alive')])} node(s), {total} worker slot(s), one per "
        + ("GPU" if gpu else f"{cpus_per_worker} CPU(s)"),
        flush=True,
    )
    try:
        for _ in range(ROUNDS):
            waiting_said = False
            while True:
                total, gpu = slots(ray.cluster_resources(), cpus_per_worker)
                while len(in_flight) < total and unfinished(study, spec):  # tasks wait in Ray's queue for room
                    opts = {"num_gpus": 1, "num_cpus": 0} if gpu else {"num_cpus": cpus_per_worker}
                    ref = remote.options(max_retries=TASK_RETRIES, retry_exceptions=False, **opts).remote(
                        spec_arg, spec_text, extra, url, index, cpus_per_worker, env, cwd
                    )
                    in_flight[ref] = index
                    index += 1
                if not in_flight:
                    if not unfinished(study, spec):
                        break
                    if total == 0 and not waiting_said:
                        print("ray: no node has room for a worker yet; waiting for one to join", flush=True)
                        waiting_said = True
                    if total > 0:
                        break  # every worker ended with work left (lost runs): queue them again below
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
    return max((c for c in codes if c != 0), default=0)
