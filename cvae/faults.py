"""Fault injection for the kill campaign: SIGKILL this process at a named point of its work.

    CVAE_FAULTS="train:3,checkpoint:2" CVAE_FAULTS_DIR=/tmp/marks cvae sweep ...

kills the process the 3rd time it reaches `train` (one training iteration), or the 2nd time it reaches
`checkpoint` (a checkpoint written to its temp file, not yet renamed into place). Each point fires once
for the whole campaign, in whichever process gets there first: firing creates CVAE_FAULTS_DIR/<point>
(exclusively) before the kill, so replacement workers, which inherit the environment, run clean.

    CVAE_FAULTS_HOLD="train:3" CVAE_FAULTS_DIR=/tmp/marks cvae sweep ...

holds instead: from the 3rd pass through `train` on, every process waits there while the file
CVAE_FAULTS_DIR/hold exists, so a test can stop runs that are certainly in the middle of their training,
however loaded the machine. A signal interrupts the wait as it would interrupt training. Unset, every point
is a dictionary lookup of nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

POINTS = ("train", "evaluate", "checkpoint", "mlflow", "tell")


def _plan(var: str) -> dict[str, int]:
    text = os.environ.get(var, "")
    plan = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, n = item.partition(":")
        if name not in POINTS or not n.isdigit() or int(n) < 1:
            raise SystemExit(
                f"cvae: error: {var}: {item!r} is not <point>:<n> with n >= 1 and the point one of {', '.join(POINTS)}"
            )
        plan[name] = int(n)
    return plan


_PLAN = _plan("CVAE_FAULTS")
_HOLD = _plan("CVAE_FAULTS_HOLD")
_DIR = Path(os.environ.get("CVAE_FAULTS_DIR", ".cvae-faults"))
_seen: dict[str, int] = {}


def point(name: str) -> None:
    """Mark one pass through `name`; SIGKILL here when the plan says this is the pass to die at, or wait here
    while the hold file exists when the hold plan has reached it."""
    if name not in _PLAN and name not in _HOLD:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if name in _HOLD and _seen[name] >= _HOLD[name]:
        while (_DIR / "hold").exists():
            time.sleep(0.05)
    if name not in _PLAN or _seen[name] != _PLAN[name]:
        return
    _DIR.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(_DIR / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another process has died here already
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
