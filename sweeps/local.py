"""Worker processes on this machine: start them, replace one that dies, stop them all on Ctrl-C / SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Callable

MAX_RESTARTS = 3  # replacements per worker slot when a local worker dies
STOP_GRACE_S = 25  # after Ctrl-C / SIGTERM, workers get this long to close their runs before SIGKILL


def die_with_parent() -> None:
    """In a worker, before exec (Linux): SIGTERM when the coordinator dies, even by SIGKILL, so no orphan
    keeps training unseen; its run then ends KILLED and its trial is queued again by the next `make sweep`.
    Elsewhere a lost coordinator's workers finish the study on their own."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(
    spec_name: str, extra: list[str], url: str, workers: int, threads: int, on_tick: Callable[[], None] = lambda: None
) -> int:
    """Start `workers` worker processes and wait. A worker that dies (killed, crashed) is replaced, at most
    MAX_RESTARTS times per slot, so the sweep keeps its parallelism; its run is failed and retried through
    the heartbeats. Ctrl-C / SIGTERM stops them all: SIGTERM first (their runs end KILLED, their trials
    FAIL and are queued again by the next `make sweep`), SIGKILL after STOP_GRACE_S."""
    cmd = [sys.executable, "-m", "sweeps.cli", "worker", spec_name, "--storage", url, "--threads", str(threads)]

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(cmd + ["--worker-index", str(i), "--"] + extra, preexec_fn=die_with_parent)

    procs = {i: start(i) for i in range(workers)}
    restarts = {i: 0 for i in procs}
    codes: dict[int, int] = {}
    try:
        while procs:
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[i]
                if rc != 0 and restarts[i] < MAX_RESTARTS:
                    restarts[i] += 1
                    print(
                        f"sweep: worker {i} died (exit {rc}); starting a replacement ({restarts[i]}/{MAX_RESTARTS})",
                        flush=True,
                    )
                    procs[i] = start(i)
                else:
                    codes[i] = rc
            on_tick()
            time.sleep(0.5)
    except (KeyboardInterrupt, SystemExit):
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    return max(codes.values(), default=0)


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # Optuna records the trial FAILED, the trainer closes its run KILLED


def stop_once(signum: int, frame: object) -> None:
    """A worker's Ctrl-C / SIGTERM: stop, and ignore the SIGTERM that follows (a terminal's Ctrl-C reaches the
    worker and then the coordinator's SIGTERM does), so closing the run and failing the trial are not cut
    short. A second Ctrl-C still forces the worker out; the coordinator's SIGKILL after STOP_GRACE_S ends
    one that hangs."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt
