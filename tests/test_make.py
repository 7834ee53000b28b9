"""The Makefile's user-facing targets that serve things: `make help`, `make ui`, `make dashboard`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_get(args: list[str], url: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run `make ARGS` in its own process group until `url` answers; return (status, body, stdout)."""
    proc = subprocess.Popen(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    status, body = r.status, r.read().decode()
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{args} never answered at {url}: {proc.stdout.read()[-2000:]}") from None
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    return status, body, out


def test_make_help_lists_every_target() -> None:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, check=True)
    for target in ("install", "train", "test", "sweep", "worker", "ui", "dashboard", "report", "bench"):
        assert f"make {target} " in out.stdout


@pytest.mark.slow
def test_make_ui_serves_the_store_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    status, body, out = serve_and_get(["ui", f"OUT={tmp_path}", f"PORT={port}"], f"http://127.0.0.1:{port}/health")
    assert status == 200 and body.strip() == "OK"
    assert f"http://127.0.0.1:{port}" in out  # the URL is printed for the user


@pytest.mark.slow
def test_make_dashboard_serves_the_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="dash", storage=storage)
    port = free_port()
    status, body, out = serve_and_get(
        ["dashboard", f"STORAGE={storage}", f"DASH_PORT={port}"], f"http://127.0.0.1:{port}/api/studies"
    )
    assert status == 200 and '"study_name": "dash"' in body
    assert f"http://127.0.0.1:{port}" in out
