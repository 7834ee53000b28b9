"""Nothing lost, whatever happens: graceful stops, dead workers, orphaned runs, unsafe checkpoints, full disks."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml

from cvae import config as config_mod
from cvae.config import ConfigError
from cvae.trainer import FORMAT_VERSION, load_checkpoint, load_model, train

from test_sweeps import (CLEAN_ENV, TINY, check_trial_run, child_runs, load_study, mlflow_client, run_cli, states,
                         sweep_cmd, wait_until, write_spec)

pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

# helpers


def long_spec(tmp_path: Path, data_cache: Path, niter: int = 25, **fields: Any) -> Path:
    """A study whose runs last long enough (about 10 s) to be stopped in the middle."""
    exp = tmp_path / "exp.yaml"
    nested: dict[str, dict[str, Any]] = {}
    for key, value in {**TINY, "train.niter": niter}.items():
        section, _, k = key.partition(".")
        nested.setdefault(section, {})[k] = value
    exp.write_text(yaml.safe_dump(nested))
    return write_spec(tmp_path, data_cache, experiment=str(exp), heartbeat_seconds=1,
                      overrides={"run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)}, **fields)


def running_with_a_run(tmp_path: Path, n: int = 1) -> bool:
    """At least n runs are training and have reported an epoch. The store is only opened once n runs have
    written a checkpoint: opening it earlier could race the coordinator creating its tables."""
    if len(list((tmp_path / "runs" / "tiny").glob("trial-*/last.pt"))) < n:
        return False
    trials = load_study(tmp_path).get_trials()
    return sum(t.state.name == "RUNNING" and "epochs_run" in t.user_attrs for t in trials) >= n


# stops and deaths


@pytest.mark.slow
def test_sigterm_stops_every_process_closes_its_runs_and_a_rerun_continues(tmp_path: Path, data_cache: Path) -> None:
    spec = long_spec(tmp_path, data_cache, trials=2)
    cmd = sweep_cmd(spec, "--workers", "2")
    log = tmp_path / "first.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(cmd, cwd=tmp_path, env=CLEAN_ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: running_with_a_run(tmp_path, 2), coordinator, log, timeout=300)
        family = [coordinator] + psutil.Process(coordinator.pid).children(recursive=True)
        start = time.monotonic()
        coordinator.send_signal(signal.SIGTERM)
        gone, alive = psutil.wait_procs([psutil.Process(p.pid) for p in family], timeout=30)
        assert not alive, f"still running after 30 s: {alive}"
        print(f"every process gone {time.monotonic() - start:.1f} s after SIGTERM")
    finally:
        for p in psutil.Process(os.getpid()).children(recursive=True):
            if p.pid == coordinator.pid or p.pid in {c.pid for c in family}:
                p.kill()
    study = load_study(tmp_path)
    stopped = study.get_trials()
    assert states(study) == ["FAIL", "FAIL"] and all(t.user_attrs.get("interrupted") for t in stopped)
    client = mlflow_client(tmp_path)
    for t in stopped:
        check_trial_run(client, study, t, "KILLED")
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"

    out = run_cli(cmd, cwd=tmp_path, timeout=300)  # the same command again continues the study
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    study = load_study(tmp_path)
    trials = study.get_trials()
    retries = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [0, 1]
    assert all(t.state.name == "COMPLETE" for t in retries)
    for r in retries:  # the same configuration and seed, run to the end once
        dead = trials[r.user_attrs["retry_of"]]
        assert (r.params, r.user_attrs["config_id"], r.user_attrs["seed_index"]) == \
            (dead.params, dead.user_attrs["config_id"], dead.user_attrs["seed_index"])
    pairs = [(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in trials if t.state.name == "COMPLETE"]
    assert len(pairs) == len(set(pairs)) == 2
    assert all(r.info.status != "RUNNING" for r in child_runs(client, study).values())


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_the_study_completes(tmp_path: Path, data_cache: Path) -> None:
    spec = long_spec(tmp_path, data_cache, niter=15, trials=3)
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(sweep_cmd(spec, "--workers", "2"), cwd=tmp_path, env=CLEAN_ENV, stdout=f,
                                       stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: running_with_a_run(tmp_path, 1), coordinator, log, timeout=300)
        victim = psutil.Process(coordinator.pid).children()[0]
        victim.kill()  # SIGKILL: the worker cannot say goodbye
        assert coordinator.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if coordinator.poll() is None:
            for p in psutil.Process(coordinator.pid).children(recursive=True):
                p.kill()
            coordinator.kill()
    text = log.read_text()
    assert "starting a replacement (1/3)" in text
    study = load_study(tmp_path)
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    pairs = [(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in done]
    assert len(pairs) == len(set(pairs)) == 3  # the study reaches its count, nothing counted twice
    client = mlflow_client(tmp_path)
    assert all(r.info.status != "RUNNING" for r in child_runs(client, study).values())


def test_repair_closes_runs_whose_trial_is_over(tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps import run as run_mod

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, data_cache, trials=1)
    assert run_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    study = load_study(tmp_path)
    (trial,) = study.get_trials()
    client = mlflow_client(tmp_path)
    run_id = trial.user_attrs["mlflow_run_id"]
    client.update_run(run_id, status="RUNNING")  # an orphan: its trial finished, the run was never closed
    capsys.readouterr()
    from cvae.cli import main

    assert main(["sweep", "repair", str(spec)]) == 0
    out = capsys.readouterr().out
    assert f"closed MLflow run {run_id} FAILED (repair: trial 0 is COMPLETE)" in out
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["ended_by"] == "repair: trial 0 is COMPLETE"
    assert main(["sweep", "repair", str(spec)]) == 0  # nothing left to do
    assert "0 orphaned run(s) closed" in capsys.readouterr().out


# files that must not be trusted, disks that fill up


class _Boom:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_checkpoints_load_without_running_pickled_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "best.pt"
    torch.save({"format_version": FORMAT_VERSION, "model": {}, "config": {}, "payload": _Boom()}, evil)
    with pytest.raises(ConfigError, match="not a cvae checkpoint that loads safely") as e:
        load_checkpoint(evil)
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ConfigError, match="loads safely"):
        load_checkpoint(tmp_path / "raw.pt")
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_size_or_version_is_one_line(tiny_cfg: config_mod.Config, tmp_path: Path) -> None:
    train(tiny_cfg, run_dir=tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    bigger = {**ckpt, "config": config_mod.build({**tiny_cfg.flat(), "model.g_dim": 32}).to_dict()}
    torch.save(bigger, tmp_path / "other_size.pt")
    with pytest.raises(ConfigError, match=r"checkpoint is for another model \(size mismatch") as e:
        load_model(tmp_path / "other_size.pt")
    assert "\n" not in str(e.value)
    torch.save({**ckpt, "format_version": FORMAT_VERSION - 1}, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match=f"checkpoint format {FORMAT_VERSION - 1} is not {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "old.pt")


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 400 KB tmpfs: too small for a run folder (needs root and mount; skipped where not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_still_loads(tiny_args: list[str], small_disk: Path,
                                                                     tmp_path: Path) -> None:
    args = [a for a in tiny_args if not a.startswith(("run.out_dir=", "train.niter="))]
    proc = subprocess.run([sys.executable, "-m", "cvae.cli", "train", *args, f"run.out_dir={small_disk}",
                           "train.niter=50"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvae: error: cannot write ") and "No space left" in lines[0]
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]  # nothing half-written taken for complete
    for name in ("last.pt", "best.pt"):
        for ckpt in small_disk.rglob(name):
            load_checkpoint(ckpt)  # whatever is there is whole


def test_a_read_only_run_folder_is_one_line_and_writes_nothing(tiny_args: list[str], small_disk: Path,
                                                               tmp_path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    args = [a for a in tiny_args if not a.startswith("run.out_dir=")]
    proc = subprocess.run([sys.executable, "-m", "cvae.cli", "train", *args, f"run.out_dir={small_disk}/runs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0], proc.stderr
    assert not any(small_disk.iterdir())
