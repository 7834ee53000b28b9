"""Nothing lost, whatever happens: graceful stops, dead workers, orphaned runs, unsafe checkpoints, full disks."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from helpers import (
    CLEAN_ENV,
    check_trial_run,
    child_runs,
    cvae,
    load_study,
    long_spec,
    mlflow_client,
    run_cli,
    running_with_a_run,
    states,
    sweep_cmd,
    wait_until,
    write_spec,
)

from cvae import config as config_mod
from cvae.checkpoints import FORMAT_VERSION, load_checkpoint, load_model
from cvae.config import ConfigError
from cvae.trainer import train
from sweeps import cli as cli_mod, local as local_mod

pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

# helpers


def lingering(procs: list[psutil.Process]) -> str:
    """What a process that outlived its stop was doing: its command line and, where py-spy is installed, its
    Python stack (the test is its ancestor, so it may read it)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    lines = []
    for p in procs:
        try:
            lines.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())}")
        except psutil.Error as e:
            lines.append(f"{p.pid}: {e}")
            continue
        if spy:
            dump = subprocess.run([spy, "dump", "--pid", str(p.pid)], capture_output=True, text=True, timeout=30)
            lines.append(dump.stdout + dump.stderr)
    return "\n".join(lines)


# stops and deaths


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stop_ends_every_process_closes_its_runs_and_a_rerun_continues(
    tmp_path: Path, data_cache: Path, how: str
) -> None:
    """SIGTERM to the coordinator, or a terminal's Ctrl-C (SIGINT to every process of the group, and then the
    coordinator's own SIGTERM reaches the workers while they close their runs). Both runs are held in their
    second epoch (CVAE_FAULTS_HOLD) until the stop, so neither can finish first on a loaded machine."""
    spec = long_spec(tmp_path, data_cache, niter=4, trials=2)
    cmd = sweep_cmd(spec, "--workers", "2")
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "hold").touch()
    held = {**CLEAN_ENV, "CVAE_FAULTS_HOLD": "train:3", "CVAE_FAULTS_DIR": str(marks)}  # epoch 2's 1st step
    log = tmp_path / "first.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(
            cmd, cwd=tmp_path, env=held, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: running_with_a_run(tmp_path, 2), coordinator, log, timeout=300)
        family = [coordinator] + psutil.Process(coordinator.pid).children(recursive=True)
        start = time.monotonic()
        if how == "sigterm":
            coordinator.send_signal(signal.SIGTERM)
        else:
            os.killpg(coordinator.pid, signal.SIGINT)
        gone, alive = psutil.wait_procs([psutil.Process(p.pid) for p in family], timeout=30)
        assert not alive, f"still running after 30 s:\n{lingering(alive)}\n--- log ---\n{log.read_text()[-3000:]}"
        print(f"every process gone {time.monotonic() - start:.1f} s after {how}")
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
        assert (r.params, r.user_attrs["config_id"], r.user_attrs["seed_index"]) == (
            dead.params,
            dead.user_attrs["config_id"],
            dead.user_attrs["seed_index"],
        )
    pairs = [(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in trials if t.state.name == "COMPLETE"]
    assert len(pairs) == len(set(pairs)) == 2
    assert all(r.info.status != "RUNNING" for r in child_runs(client, study).values())


def test_a_worker_stops_on_the_first_signal_and_lets_its_cleanup_finish() -> None:
    """Ctrl-C in a terminal reaches a worker, and the coordinator's SIGTERM follows while the worker closes its
    run: the second signal must not cut that short."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cleaned = False
    try:
        for s in saved:
            signal.signal(s, local_mod.stop_once)
        with pytest.raises(KeyboardInterrupt):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler raises first
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives during cleanup
                time.sleep(0.1)
                cleaned = True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C still forces it
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert cleaned


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_the_study_completes(tmp_path: Path, data_cache: Path) -> None:
    spec = long_spec(tmp_path, data_cache, niter=15, trials=3)
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(
            sweep_cmd(spec, "--workers", "2"), cwd=tmp_path, env=CLEAN_ENV, stdout=f, stderr=subprocess.STDOUT
        )
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


def test_a_fault_point_kills_at_its_count_once_per_campaign(tmp_path: Path) -> None:
    env = {**os.environ, "CVAE_FAULTS": "train:2,tell:1", "CVAE_FAULTS_DIR": str(tmp_path / "marks")}
    code = (
        "from cvae import faults\nfaults.point('train')\nprint('after 1', flush=True)\nfaults.point('train')\n"
        "print('after 2')"
    )
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -signal.SIGKILL and first.stdout == "after 1\n"
    assert (tmp_path / "marks" / "train").read_text().strip().isdigit()  # the pid that died there
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "after 1\nafter 2\n"  # the replacement runs clean
    bad = subprocess.run(
        [sys.executable, "-c", "import cvae.faults"],
        env={**env, "CVAE_FAULTS": "train:0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("cvae: error: CVAE_FAULTS: 'train:0'")


CAMPAIGN_SEED = 20261126


def _until_done(cmd: list[str], cwd: Path, env: dict[str, str], attempts: int = 5) -> int:
    """Run the same command again until it succeeds, as a user would; returns how many runs it took."""
    for n in range(1, attempts + 1):
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode == 0:
            return n
    pytest.fail(f"still failing after {attempts} runs of the same command:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")


def _nothing_lost(tmp_path: Path, configs: int, seeds: int) -> list[Any]:
    """The campaign's invariants; returns the failed trials."""
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    done = {(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in trials if t.state.name == "COMPLETE"}
    assert (
        sum(t.state.name == "COMPLETE" for t in trials) == len(done) == configs * seeds
    )  # count reached, no duplicate
    failed = [t for t in trials if t.state.name == "FAIL"]
    for t in failed:  # every killed run was run again, to the end
        assert (t.user_attrs["config_id"], t.user_attrs["seed_index"]) in done, t.number
    client = mlflow_client(tmp_path)
    runs = child_runs(client, study)
    assert not [r.info.run_id for r in runs.values() if r.info.status == "RUNNING"]
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"
    per_trial = Counter(r.data.tags["optuna.trial"] for r in runs.values())
    assert max(per_trial.values()) == 1  # no trial number counted twice
    for t in trials:
        if t.state.name == "COMPLETE":
            assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    ckpts = [p for p in (tmp_path / "runs" / "tiny").rglob("*.pt") if not p.name.startswith(".")]
    assert ckpts
    for p in ckpts:
        load_checkpoint(p)  # every checkpoint on disk loads (a kill mid-write leaves only a dot-temp file)
    return failed


@pytest.mark.slow
def test_kill_campaign_loses_nothing(tmp_path: Path, data_cache: Path) -> None:
    """SIGKILL at seeded moments: five points inside workers (a training iteration, an evaluation, a checkpoint
    written but not renamed, MLflow half-logged, a finished run not yet told to Optuna), then the coordinator
    itself while its workers train. After each, the same command again until it succeeds."""
    rng = random.Random(CAMPAIGN_SEED)
    # per worker process and 6-epoch run: 12 iterations, 6 evaluations, 6-12 checkpoints, 6 metric logs, 1 tell
    plan = {
        "train": rng.randint(1, 12),
        "evaluate": rng.randint(1, 6),
        "checkpoint": rng.randint(1, 12),
        "mlflow": rng.randint(1, 6),
        "tell": 1,
    }
    marks = tmp_path / "faults"
    env = {**CLEAN_ENV, "CVAE_FAULTS": ",".join(f"{k}:{n}" for k, n in plan.items()), "CVAE_FAULTS_DIR": str(marks)}
    # heartbeats every 2 s (stale after 6): a CI box loaded by parallel tests must not fail a live trial
    spec = long_spec(tmp_path, data_cache, niter=6, heartbeat=2, trials=3, seeds=2)
    cmd = sweep_cmd(spec, "--workers", "2")

    _until_done(cmd, tmp_path, env)
    assert sorted(p.name for p in marks.iterdir()) == sorted(plan)  # every point fired, once
    failed = _nothing_lost(tmp_path, configs=3, seeds=2)
    assert len(failed) >= len(plan)  # each kill failed the trial it hit
    assert _until_done(cmd, tmp_path, CLEAN_ENV, attempts=1) == 1  # and once done, the same command adds nothing
    assert len(load_study(tmp_path).get_trials()) == 6 + len(failed)

    # the coordinator, SIGKILLed while its workers train: they stop cleanly (their runs KILLED, trials FAIL)
    grow = sweep_cmd(spec, "--workers", "2", "--trials", "4")
    want = rng.randint(1, 2)
    log = tmp_path / "coordinator.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(grow, cwd=tmp_path, env=CLEAN_ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: (
                sum(
                    t.state.name == "RUNNING" and "epochs_run" in t.user_attrs
                    for t in load_study(tmp_path).get_trials()
                )
                >= want
            ),
            coordinator,
            log,
            timeout=300,
        )
        family = [psutil.Process(coordinator.pid)] + psutil.Process(coordinator.pid).children(recursive=True)
        coordinator.kill()
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"orphans still running 30 s after the coordinator died: {alive}"
    finally:
        for p in psutil.Process(os.getpid()).children(recursive=True):
            p.kill()
    stopped = [
        t for t in load_study(tmp_path).get_trials() if t.state.name == "FAIL" and t.user_attrs.get("interrupted")
    ]
    assert len(stopped) >= want
    client = mlflow_client(tmp_path)
    ended = {
        t.number: (r.info.status, r.data.tags.get("ended_by"))
        for t in stopped
        for r in [client.get_run(t.user_attrs["mlflow_run_id"])]
    }
    assert all(status == "KILLED" for status, _ in ended.values()), ended
    _until_done(grow, tmp_path, CLEAN_ENV)
    failed = _nothing_lost(tmp_path, configs=4, seeds=2)
    kills = len(plan) + 1
    print(
        f"kill campaign (seed {CAMPAIGN_SEED}, plan {plan}): {kills} kills survived, {len(failed)} runs failed "
        f"and re-run, 0 lost, 0 duplicates, 0 MLflow runs left RUNNING"
    )


@pytest.mark.slow
def test_four_workers_on_the_default_sqlite_storage(tmp_path: Path, data_cache: Path) -> None:
    spec = write_spec(tmp_path, data_cache, trials=4, seeds=2)
    out = run_cli(sweep_cmd(spec, "--workers", "4"), cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "database is locked" not in out.stdout + out.stderr
    ran = [int(line.split("ran ")[1].split()[0]) for line in out.stdout.splitlines() if line.startswith("worker ")]
    assert len(ran) == 4 and sum(ran) == 8
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert states(study) == ["COMPLETE"] * 8
    pairs = {(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in trials}
    assert len(pairs) == 8 and len({cid for cid, _ in pairs}) == 4  # exact count, no duplicate
    client = mlflow_client(tmp_path)
    runs = child_runs(client, study)
    assert set(runs) == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert all(r.info.status == "FINISHED" for r in runs.values())


def test_repair_closes_runs_whose_trial_is_over(
    tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, data_cache, trials=1)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    study = load_study(tmp_path)
    (trial,) = study.get_trials()
    client = mlflow_client(tmp_path)
    run_id = trial.user_attrs["mlflow_run_id"]
    client.update_run(run_id, status="RUNNING")  # an orphan: its trial finished, the run was never closed
    capsys.readouterr()
    from reports.cli import main  # `cvae sweep repair` as the top command dispatches it

    assert main(["sweep", "repair", str(spec)]) == 0
    out = capsys.readouterr().out
    assert f"closed MLflow run {run_id} FAILED (repair: trial 0 is COMPLETE)" in out
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["ended_by"] == "repair: trial 0 is COMPLETE"
    assert main(["sweep", "repair", str(spec)]) == 0  # nothing left to do
    assert "0 orphaned run(s) closed" in capsys.readouterr().out

    client.update_run(run_id, status="RUNNING")  # orphaned again: the next `make sweep` closes it by itself
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    assert "tiny: closed 1 MLflow run(s) whose trial was over: trial 0" in capsys.readouterr().out
    assert client.get_run(run_id).info.status == "FAILED"


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


def test_a_full_disk_is_one_line_and_the_last_checkpoint_still_loads(
    tiny_args: list[str], small_disk: Path, tmp_path: Path
) -> None:
    args = [a for a in tiny_args if not a.startswith(("run.out_dir=", "train.niter="))]
    proc = subprocess.run(
        cvae("train", *args, f"run.out_dir={small_disk}", "train.niter=50"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvae: error: cannot write ") and "No space left" in lines[0]
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]  # nothing half-written taken for complete
    for name in ("last.pt", "best.pt"):
        for ckpt in small_disk.rglob(name):
            load_checkpoint(ckpt)  # whatever is there is whole


def test_a_read_only_run_folder_is_one_line_and_writes_nothing(
    tiny_args: list[str], small_disk: Path, tmp_path: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    args = [a for a in tiny_args if not a.startswith("run.out_dir=")]
    proc = subprocess.run(
        cvae("train", *args, f"run.out_dir={small_disk}/runs"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0], proc.stderr
    assert not any(small_disk.iterdir())
