"""`cvae sweep` end to end with tiny budgets: Optuna trial states vs MLflow runs, parallel workers, grids,
a worker lost mid-trial, diverged trials, bad specs, reruns of the same study.

Sweeps run as subprocesses where processes matter (workers, SIGKILL) and in-process otherwise.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import psutil
import pytest
import yaml
from helpers import (
    CLEAN_ENV,
    SMALL_SPACE,
    TINY,
    check_trial_run,
    child_runs,
    cvae,
    load_study,
    mlflow_client,
    one_line_error,
    run_cli,
    states,
    sweep_cmd,
    wait_until,
    write_grid_spec,
    write_spec,
)
from optuna.trial import FrozenTrial, TrialState

from sweeps import (
    cli as cli_mod,
    coordinator as coordinator_mod,
    local as local_mod,
    plan as plan_mod,
    space as space_mod,
    storage as storage_mod,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.usefixtures("isolated"),
]


# helpers


# fixtures


@pytest.fixture
def inprocess_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep` runs its workers one after the other in this process, so monkeypatches reach them."""

    def run_workers(spec_name: str, extra: list[str], url: str, workers: int, threads: int, on_tick: Any = None) -> int:
        codes = [
            cli_mod.main(
                ["worker", spec_name, "--storage", url, "--threads", str(threads), "--worker-index", str(i), *extra]
            )
            for i in range(workers)
        ]
        return max(codes)

    monkeypatch.setattr(local_mod, "run_workers", run_workers)


# bad specs: one line, exit 2, no study


BAD_SPECS = {
    "unknown config path": (
        {"space": {"train.nope": {"type": "float", "low": 0.1, "high": 1.0}}},
        "space.train.nope: unknown config path",
    ),
    "unknown override path": ({"overrides": {"train.nope": 1}}, "train.nope: unknown key"),
    "empty float range": ({"space": {"kl.ratio": {"type": "float", "low": 0.5, "high": 0.5}}}, "empty range"),
    "reversed int range": ({"space": {"kl.cycles": {"type": "int", "low": 3, "high": 1}}}, "empty range"),
    "bound not a number": (
        {"space": {"kl.ratio": {"type": "float", "low": "abc", "high": 1.0}}},
        "space.kl.ratio.low: expected a number",
    ),
    "int bound not an integer": (
        {"space": {"kl.cycles": {"type": "int", "low": 0.5, "high": 3}}},
        "int bounds must be integers",
    ),
    "unknown distribution": (
        {"space": {"kl.ratio": {"type": "normal", "low": 0.1, "high": 1.0}}},
        "space.kl.ratio.type",
    ),
    "bound outside the config's range": (
        {"space": {"kl.ratio": {"type": "float", "low": 0.5, "high": 2.0}}},
        "space.kl.ratio: value 2.0 gives an invalid config",
    ),
    "log scale from zero": (
        {"space": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
        "log scale needs low > 0",
    ),
    "log with a step": (
        {"space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "step": 0.001}}},
        "space.train.lr",
    ),
    "int step not an integer": (
        {"space": {"kl.cycles": {"type": "int", "low": 1, "high": 4, "step": 0.5}}},
        "space.kl.cycles.step",
    ),
    "float range on an int key": ({"space": {"kl.cycles": {"type": "float", "low": 1, "high": 4}}}, "space.kl.cycles"),
    "unknown sampler": ({"sampler": {"type": "cmaes"}}, "sampler.type: 'cmaes' is not one of"),
    "unknown pruner": ({"pruner": {"type": "patient"}}, "pruner.type: 'patient' is not one of"),
    "grid sampler without grid": ({"sampler": {"type": "grid"}, "space": None}, "sampler grid needs a `grid:`"),
    "space with grid sampler": (
        {"sampler": {"type": "grid"}, "grid": {"kl.cycles": [1, 2]}},
        "sampler grid needs a `grid:` (path: [values]) and no `space:`",
    ),
    "grid with random sampler": ({"grid": {"kl.cycles": [1, 2]}}, "sampler random needs a `space:` and no `grid:`"),
    "empty grid axis": (
        {"sampler": {"type": "grid"}, "space": None, "grid": {"kl.cycles": []}},
        "grid.kl.cycles: expected a non-empty list",
    ),
    "invalid grid value": (
        {"sampler": {"type": "grid"}, "space": None, "grid": {"kl.cycles": [1, 0]}},
        "grid.kl.cycles: value 0 gives an invalid config",
    ),
    "unknown top-level field": ({"trails": 3}, "unknown field(s) trails"),
    "zero trials": ({"trials": 0}, "trials: expected a positive integer, got 0"),
    "negative trials": ({"trials": -2}, "trials: expected a positive integer, got -2"),
    "zero heartbeat": ({"heartbeat_seconds": 0}, "heartbeat_seconds: expected a positive integer"),
    "unknown metric": ({"objective": {"metric": "train/loss"}}, "objective.metric"),
    "unknown experiment": ({"experiment": "nosuch"}, "experiment not found: nosuch"),
    "seed range with single-run pruning": (
        {"seeds": {"min": 3, "max": 4}, "pruner": {"type": "hyperband"}},
        "pruner.type: hyperband judges single runs",
    ),
    "race from two seeds": (
        {"seeds": {"min": 2, "max": 4}},
        "seeds.min: a race (sampler random with a seed range) tests from 3 seeds a side, got 2",
    ),
    "seed range upside down": ({"seeds": {"min": 5, "max": 3}}, "seeds: max (3) must be above min (5)"),
    "seed range from one seed": ({"seeds": {"min": 1, "max": 3}}, "seeds.min: a sequential design needs at least 2"),
    "seed range with an unknown field": ({"seeds": {"min": 3, "most": 5}}, "seeds: unknown field(s) most"),
    "seeds not a number": ({"seeds": "three"}, "seeds: expected a positive integer or"),
    "margin of zero": ({"margin_db": 0}, "margin_db: expected a positive number of dB"),
    "register not a boolean": ({"register": "yes"}, "register: expected true or false"),
    "sequential grid with pruning": (
        {
            "sampler": {"type": "grid"},
            "space": None,
            "grid": {"kl.cycles": [1, 2]},
            "seeds": {"min": 2, "max": 4},
            "pruner": {"type": "median"},
        },
        "pruner.type: median with a sequential design",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_gives_one_line_and_exit_2_and_creates_nothing(
    case: str, tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fields, message = BAD_SPECS[case]
    spec = write_spec(tmp_path, data_cache, **fields)
    assert cli_mod.main(["sweep", str(spec)]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["sweep", "no_such_study"], "study not found: no_such_study (shipped: demo, demo_tpe, lab_grid, lab_tpe"),
        (["sweep", "missing.yaml"], "study not found: missing.yaml"),
        (["sweep", "SPEC", "--trials", "0"], "--workers, --trials, --cpus-per-worker and --array must be positive"),
        (["sweep", "SPEC", "--workers", "0"], "--workers, --trials, --cpus-per-worker and --array must be positive"),
        (["sweep", "SPEC", "train.nope=1"], "train.nope: unknown key"),
        (["sweep", "SPEC", "train.lr=abc"], "train.lr: expected a number"),
        (["sweep", "SPEC", "--storage", "nosuchdb://x/y"], "study storage nosuchdb://x/y"),
    ],
)
def test_bad_command_line_gives_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, data_cache)
    argv = [str(spec) if a == "SPEC" else a for a in args]
    assert cli_mod.main(argv) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not list(tmp_path.rglob("optuna.db")) and not list(tmp_path.rglob("mlflow.db"))


def test_missing_data_is_one_line_before_any_study_exists(
    tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the course layout under a folder that does not exist (lab_grid without data.root=... does this)
    spec = write_spec(tmp_path, data_cache)
    assert cli_mod.main(["sweep", str(spec), "data.name=bair", f"data.root={tmp_path / 'nodata'}"]) == 2
    assert "does not exist" in one_line_error(capsys.readouterr().err)
    assert not list(tmp_path.rglob("optuna.db")) and not list(tmp_path.rglob("mlflow.db"))


# one study in-process: every trial state and its MLflow run


class PruneLr(optuna.pruners.BasePruner):
    """Prunes trials whose train.lr is `lr` at their first report (deterministic, unlike a median)."""

    def __init__(self, lr: float):
        self.lr = lr

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.params.get("train.lr") == self.lr


def test_complete_pruned_and_diverged_trials_match_their_mlflow_runs(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch, inprocess_workers: None
) -> None:
    spec = write_spec(
        tmp_path,
        data_cache,
        trials=2,
        space={"train.lr": {"type": "categorical", "choices": [1000000.0, 0.002, 0.001]}},
    )
    monkeypatch.setattr(space_mod, "make_pruner", lambda spec, niter: PruneLr(0.001))
    prepare = coordinator_mod.prepare

    def prepare_and_enqueue(*args: Any, **kwargs: Any) -> optuna.Study:
        study = prepare(*args, **kwargs)
        for lr in (1000000.0, 0.002, 0.001):  # diverges, completes, is pruned: in this order
            study.enqueue_trial({"train.lr": lr})
        return study

    monkeypatch.setattr(coordinator_mod, "prepare", prepare_and_enqueue)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0

    study = load_study(tmp_path)
    trials = study.get_trials()
    # the diverged trial is a result and counts toward the target of 2; the queued third runs all the same
    assert states(study) == ["FAIL", "COMPLETE", "PRUNED"]
    failed, complete, pruned = trials
    assert failed.user_attrs["fail_reason"].startswith("diverged at epoch 1")
    assert complete.value == pytest.approx(max(r for r in complete.intermediate_values.values()))
    assert list(pruned.intermediate_values) == [1] and pruned.user_attrs["epochs_run"] == 1

    client = mlflow_client(tmp_path)
    check_trial_run(client, study, failed, "FAILED")
    run = check_trial_run(client, study, complete, "FINISHED")
    assert run.data.metrics["val/psnr"] > 0
    run = check_trial_run(client, study, pruned, "KILLED")
    assert run.data.tags.get("pruned") == "true"
    assert set(child_runs(client, study)) == {t.user_attrs["mlflow_run_id"] for t in trials}

    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["role"] == "study"
    assert parent.data.metrics["trials/complete"] == 1 and parent.data.metrics["trials/failed"] == 1
    assert parent.data.tags["best.config_id"] == complete.user_attrs["config_id"]
    assert parent.data.metrics["best/value"] == pytest.approx(complete.value)


def test_a_configuration_that_diverges_is_a_result_not_a_lost_run(
    tmp_path: Path, data_cache: Path, inprocess_workers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, data_cache, trials=1, space={"kl.ratio": SMALL_SPACE["kl.ratio"]})
    assert cli_mod.main(["sweep", str(spec), "--threads", "1", "train.lr=1000000.0"]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path)
    # run once: its divergence is the configuration's result, neither retried nor replaced by another draw
    assert states(study) == ["FAIL"]
    assert study.get_trials()[0].user_attrs["fail_reason"].startswith("diverged at epoch 1")
    assert "study tiny: 1 run: 0 trained, 0 collapsed, 1 diverged, 0 pruned, 0 lost" in out
    assert "no configuration has a trained run: nothing to pick" in out
    client = mlflow_client(tmp_path)
    check_trial_run(client, study, study.get_trials()[0], "FAILED")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["runs/diverged"] == 1
    assert "best.config_id" not in parent.data.tags  # nothing trained: nothing is called the best


def test_rerun_adds_nothing_extends_on_more_trials_and_refuses_other_overrides(
    tmp_path: Path, data_cache: Path, inprocess_workers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, data_cache, trials=1)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE"]
    client = mlflow_client(tmp_path)
    parent_id = study.user_attrs["mlflow_parent_run_id"]

    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0  # finished: nothing to do
    assert states(load_study(tmp_path)) == ["COMPLETE"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert len(child_runs(client, study)) == 1

    capsys.readouterr()
    assert cli_mod.main(["sweep", str(spec), "--threads", "1", "kl.beta=0.001"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "was created with other settings (kl.beta 0.0001 -> 0.001)" in err and "--force-new" in err
    assert states(load_study(tmp_path)) == ["COMPLETE"]
    assert client.get_run(parent_id).info.status == "FINISHED"

    assert cli_mod.main(["sweep", str(spec), "--threads", "1", "--trials", "2"]) == 0  # resumable: one more
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE", "COMPLETE"] and study.user_attrs["mlflow_parent_run_id"] == parent_id
    assert len(child_runs(client, study)) == 2


# worker processes


@pytest.mark.slow
def test_two_workers_run_exactly_the_requested_trials_without_duplicates(tmp_path: Path, data_cache: Path) -> None:
    spec = write_spec(tmp_path, data_cache, trials=9)  # --trials wins over the spec
    out = run_cli(sweep_cmd(spec, "--workers", "2", "--trials", "4"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ran = [int(line.split("ran ")[1].split()[0]) for line in out.stdout.splitlines() if line.startswith("worker ")]
    assert len(ran) == 2 and sum(ran) == 4

    study = load_study(tmp_path)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] and states(study) == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == 4
    client = mlflow_client(tmp_path)
    for t in trials:
        check_trial_run(client, study, t, "FINISHED")
    assert set(child_runs(client, study)) == set(run_ids)
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"
    assert "study tiny: 4 runs: 4 trained, 0 collapsed, 0 diverged, 0 pruned, 0 lost" in out.stdout


@pytest.mark.slow
def test_grid_with_two_workers_covers_each_point_once(tmp_path: Path, data_cache: Path) -> None:
    grid = {"kl.mode": ["monotonic", "cyclical"], "tf.start_decay_epoch": [0, 1]}
    spec = write_spec(tmp_path, data_cache, sampler={"type": "grid", "seed": 3}, space=None, grid=grid, trials=None)
    out = run_cli(sweep_cmd(spec, "--workers", "2"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered the winner" not in out.stdout  # the spec says register: false
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE"] * 4
    points = sorted((t.params["kl.mode"], t.params["tf.start_decay_epoch"]) for t in study.get_trials())
    assert points == sorted((m, e) for m in grid["kl.mode"] for e in grid["tf.start_decay_epoch"])


@pytest.mark.slow
def test_worker_killed_mid_trial_is_failed_and_retried_on_resume(tmp_path: Path, data_cache: Path) -> None:
    # A trial long enough to be killed in: 25 tiny epochs (about 10 s); the rerun resumes the same study.
    exp = tmp_path / "exp.yaml"

    def write_experiment(niter: int) -> None:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in {**TINY, "train.niter": niter}.items():
            section, _, k = key.partition(".")
            nested.setdefault(section, {})[k] = value
        exp.write_text(yaml.safe_dump(nested))

    write_experiment(niter=25)
    spec = write_spec(
        tmp_path,
        data_cache,
        experiment=str(exp),
        heartbeat_seconds=1,
        overrides={"run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)},
    )
    cmd = sweep_cmd(spec, "--workers", "1")
    log = tmp_path / "first.log"
    with log.open("w") as f:
        coordinator = subprocess.Popen(cmd, cwd=tmp_path, env=CLEAN_ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        last = tmp_path / "runs" / "tiny" / "trial-0000" / "last.pt"
        wait_until(last.is_file, coordinator, log, timeout=120)

        def reported() -> bool:
            t = load_study(tmp_path).get_trials()[0]
            return t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs and "epochs_run" in t.user_attrs

        wait_until(reported, coordinator, log, timeout=60)
        workers = psutil.Process(coordinator.pid).children(recursive=True)
        assert len(workers) == 1
        for w in workers:  # workers first: a coordinator's death alone would SIGTERM them (a clean stop)
            w.kill()
        coordinator.kill()
        coordinator.wait(10)
        psutil.wait_procs(workers, timeout=10)
    finally:
        if coordinator.poll() is None:  # the test failed before the kill: leave nothing running
            for p in psutil.Process(coordinator.pid).children(recursive=True):
                p.kill()
            coordinator.kill()

    dead = load_study(tmp_path).get_trials()[0]
    assert dead.state == TrialState.RUNNING  # nobody was left to say otherwise
    client = mlflow_client(tmp_path)
    assert client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    out = run_cli(cmd, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert sorted(states(study)) == ["COMPLETE", "COMPLETE", "FAIL"] and trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["mlflow_run_id"] != dead.user_attrs["mlflow_run_id"]

    run = check_trial_run(client, study, trials[0], "FAILED")
    assert run.data.tags["ended_by"] == "worker lost (no heartbeat)"
    check_trial_run(client, study, retry, "FINISHED")
    assert len(child_runs(client, study)) == 3
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


# the paper-size model, once


@pytest.mark.slow
def test_lab_grid_runs_one_full_size_trial_on_cpu(tmp_path: Path, data_cache: Path) -> None:
    """= make sweep STUDY=lab_grid TRIALS=1 WORKERS=1 ARGS="data.name=pushing train.niter=1 train.epoch_size=1":
    the lab recipe (experiments/lab.yaml, the paper-size VGG64) trains and evaluates on a CPU."""
    cheap = [
        "data.n_train=16",
        "data.n_val=8",
        "data.n_test=8",
        f"data.cache_dir={data_cache}",
        "eval.sequences=8",
        "eval.gif_sequences=1",
        "tracking.system_metrics=false",
    ]
    cmd = [
        *cvae(),
        "sweep",
        "lab_grid",
        "--workers",
        "1",
        "--trials",
        "1",
        "data.name=pushing",
        "train.niter=1",
        "train.epoch_size=1",
        *cheap,
    ]
    start = time.perf_counter()
    out = run_cli(cmd, cwd=tmp_path, timeout=550)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"lab_grid full-size trial: {seconds:.1f} s")
    study = load_study(tmp_path, "lab_grid")
    assert states(study) == ["COMPLETE"] and study.user_attrs["n_trials"] == 1
    (trial,) = study.get_trials()
    client = mlflow_client(tmp_path)
    run = check_trial_run(client, study, trial, "FINISHED")
    p = run.data.params
    assert (p["model.arch"], p["model.width"], p["model.g_dim"], p["model.z_dim"], p["model.rnn_size"]) == (
        "vgg",
        "1.0",
        "128",
        "64",
        "256",
    )
    assert (p["train.batch_size"], p["train.n_future"], p["train.lr"]) == ("12", "10", "0.002")
    assert (tmp_path / "runs" / "lab_grid" / "trial-0000" / "best.pt").is_file()


# a model that ignores its condition


def test_a_model_that_ignores_its_condition_is_tagged_degenerate_and_counted_as_a_failure(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch, inprocess_workers: None
) -> None:
    from cvae.model import CVAE
    from reports import analysis, collect

    predict = CVAE.predict

    def blind(self: CVAE, x: Any, cond: Any, n_past: int, n_future: int) -> Any:
        return predict(self, x, cond * 0, n_past, n_future)  # by construction: the condition never reaches it

    monkeypatch.setattr(CVAE, "predict", blind)
    spec = write_spec(tmp_path, data_cache, trials=1, degenerate_below=0.25)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    study = load_study(tmp_path)
    (trial,) = study.get_trials()
    assert trial.user_attrs["cond_gain"] == 0.0 and trial.user_attrs["degenerate"] is True
    run = check_trial_run(mlflow_client(tmp_path), study, trial, "FINISHED")
    assert run.data.tags["degenerate"] == "true" and run.data.metrics["val/cond_gain"] == 0.0
    results = analysis.analyse(collect.runs_frame(study), {"name": "tiny", "metric": "val/psnr", "niter": 2}, reps=100)
    assert [(d["trial"], d["outcome"]) for d in results["failed_runs"]] == [(0, "collapsed")]
    (setting,) = results["settings"]
    assert setting["n"] == 0 and setting["outcomes"]["collapsed"] == 1  # no trained run: nothing to rank it by
    assert (setting["failed"], setting["results"], setting["failure_rate"]) == (1, 1, 1.0)
    assert setting["failure_ci"] == [pytest.approx(0.025), 1.0]  # one failure in one run: 2.5% to 100%


def test_an_edited_experiment_file_is_refused_by_name_and_force_new_starts_again(
    tmp_path: Path, data_cache: Path, inprocess_workers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"train": {"lr": 0.002}}))
    spec = write_spec(tmp_path, data_cache, trials=1, experiment=str(exp))
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    first = load_study(tmp_path).get_trials()
    exp.write_text(yaml.safe_dump({"train": {"lr": 0.001}}))  # someone edits the experiment between two runs
    capsys.readouterr()
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 2
    assert "train.lr 0.002 -> 0.001" in one_line_error(capsys.readouterr().err)
    assert [t.number for t in load_study(tmp_path).get_trials()] == [t.number for t in first]  # nothing mixed in
    assert cli_mod.main(["sweep", str(spec), "--threads", "1", "--force-new"]) == 0
    (trial,) = load_study(tmp_path).get_trials()
    assert trial.datetime_start > first[0].datetime_start  # a new study, run with the edited file
    assert load_study(tmp_path).user_attrs["identity"]["config"]["train.lr"] == 0.001


def test_a_storage_whose_schema_another_process_creates_meanwhile_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a new study storage at once: the slower one's CREATE TABLE fails with "already
    exists" (seen with a script polling the study while `make sweep` created it); it opens the storage
    again. Any other error is one line at once."""
    from types import SimpleNamespace

    import sqlalchemy.exc

    from cvae.config import ConfigError

    real, calls = optuna.storages.RDBStorage, []

    def racing(url: str, **kw: Any) -> Any:
        calls.append(url)
        if len(calls) == 1:
            real(url, **kw)  # the other process wins the race and creates the tables
            raise sqlalchemy.exc.OperationalError(
                "CREATE TABLE trial_user_attributes", {}, Exception("table trial_user_attributes already exists")
            )
        return real(url, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    spec = SimpleNamespace(heartbeat_seconds=10)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = storage_mod.make_storage(url, spec, None)  # type: ignore[arg-type]
    assert len(calls) == 2 and isinstance(storage, real)

    # the schema's version row inserted by both (seen in CI: the coordinator died with this one line)
    def version_race(url: str, **kw: Any) -> Any:
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed: alembic_version.version_num")
            )
        return real(url, **kw)

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", version_race)
    assert isinstance(storage_mod.make_storage(f"sqlite:///{tmp_path / 'v.db'}", spec, None), real)  # type: ignore[arg-type]
    assert len(calls) == 2

    def broken(url: str, **kw: Any) -> Any:
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("unable to open database file"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(ConfigError, match="unable to open database file"):
        storage_mod.make_storage(url, spec, None)  # type: ignore[arg-type]
    assert len(calls) == 1


def _open_at(url: str, start: float, out: Any) -> None:
    from types import SimpleNamespace

    while time.time() < start:
        pass
    try:
        storage_mod.make_storage(url, SimpleNamespace(heartbeat_seconds=10), None)  # type: ignore[arg-type]
        out.put("ok")
    except Exception as e:  # noqa: BLE001 - the test counts what failed
        out.put(str(e)[:200])


def test_four_processes_creating_one_storage_at_once_all_open_it(tmp_path: Path) -> None:
    """The real race (a coordinator, workers and a script polling the study, all opening a new SQLite study
    at once); without the retry about 1 open in 8 failed here (CREATE TABLE or the version row)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the test process has already imported everything
    results = []
    for r in range(4):
        out = ctx.Queue()
        start = time.time() + 0.5
        procs = [
            ctx.Process(target=_open_at, args=(f"sqlite:///{tmp_path / f'r{r}.db'}", start, out)) for _ in range(4)
        ]
        for p in procs:
            p.start()
        results += [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    assert results == ["ok"] * 16


# sequential looks


@pytest.mark.slow
def test_a_sequential_grid_adds_a_look_and_a_stopped_study_continues_at_the_same_look(
    tmp_path: Path,
    data_cache: Path,
    inprocess_workers: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a margin no tiny model can meet: every question stays open until the last look
    spec = write_grid_spec(
        tmp_path,
        data_cache,
        {"kl.mode": ["monotonic", "cyclical"]},
        seeds={"min": 2, "max": 3},
        margin_db=1e-6,
        degenerate_below=-100.0,
    )
    # the first command stops right after look 1's last run, before the look is decided
    real_advance = plan_mod.advance_look
    monkeypatch.setattr(plan_mod, "advance_look", lambda study, spec: 0)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 1  # the study is not finished: FAILED
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE"] * 4
    assert study.user_attrs["sequential"] == {
        "look": 1,
        "targets": {t.user_attrs["config_id"]: 2 for t in study.get_trials()},
        "done": False,
    }
    assert "verdicts after look" not in capsys.readouterr().out  # nothing is decided yet

    monkeypatch.setattr(plan_mod, "advance_look", real_advance)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert states(study) == ["COMPLETE"] * 6
    assert sorted((t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in trials) == sorted(
        (c, k) for c in {t.user_attrs["config_id"] for t in trials} for k in range(3)
    )
    assert study.user_attrs["sequential"]["look"] == 2 and study.user_attrs["sequential"]["done"] is True
    assert "look 1 of 2 (2 seeds): kl.mode: cyclical vs monotonic open -> 2 configuration(s) get 3 seeds" in out
    assert "verdicts after look 2 of 2:" in out and "kl.mode: cyclical vs monotonic: cannot tell yet at look 2" in out

    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0  # done: a rerun adds nothing
    assert len(load_study(tmp_path).get_trials()) == 6


@pytest.mark.slow
def test_a_setting_that_diverges_on_every_seed_is_worse_not_dropped(
    tmp_path: Path, data_cache: Path, inprocess_workers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from reports import analysis, collect

    spec = write_grid_spec(
        tmp_path,
        data_cache,
        {"train.lr": [0.002, 1000000.0]},
        seeds={"min": 3, "max": 5},
    )
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path)
    diverged = [t for t in study.get_trials() if t.params["train.lr"] == 1000000.0]
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("diverged") for t in diverged)
    assert study.user_attrs["sequential"]["done"] is True
    line = next(x for x in out.splitlines() if x.startswith("  train.lr: 0.002 vs 1e+06: "))
    n = len(diverged)
    assert f"better (1e+06 fails more often, fails 0/{n} vs {n}/{n})" in line, out
    res = analysis.analyse(
        collect.runs_frame(study),
        {
            "name": "tiny",
            "metric": "val/psnr",
            "niter": 2,
            "looks": [3, 4, 5],
            "look": study.user_attrs["sequential"]["look"],
            "margin_db": 1.0,
        },
        reps=100,
    )
    cmp = res["comparisons"][0]  # the main effect: 0.002 (A) against 1e6 (B)
    assert cmp["verdict"] == "better" and cmp["decided_by"] == "failures" and cmp["failures"]["a"] == 0
    assert cmp["failures"]["b"] == cmp["failures"]["results_b"] == n and cmp["diff_counted"] == pytest.approx(1.0)
    dead = next(s for s in res["settings"] if s["params"]["train.lr"] == 1000000.0)
    assert dead["failure_rate"] == 1.0 and dead["outcomes"]["diverged"] == len(diverged) and dead["n"] == 0
    assert res["settings"][0]["params"]["train.lr"] == 0.002  # the one that trains ranks first


@pytest.mark.slow
def test_two_settings_that_compute_the_same_function_are_never_told_apart(
    tmp_path: Path, data_cache: Path, inprocess_workers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # eval.gif_sequences changes what is drawn, not what is trained or scored: seed by seed the same numbers
    spec = write_grid_spec(
        tmp_path,
        data_cache,
        {"eval.gif_sequences": [1, 2]},
        seeds={"min": 3, "max": 4},
    )
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path)
    by_seed: dict[int, set[float]] = {}
    for t in study.get_trials():
        by_seed.setdefault(t.user_attrs["seed_index"], set()).add(t.value)
    assert all(len(v) == 1 for v in by_seed.values())  # deterministic: the same value on both settings
    line = next(x for x in out.splitlines() if x.startswith("  eval.gif_sequences: "))
    assert " better" not in line and " worse" not in line and "equivalent at look 1" in line, out


def test_a_racing_study_gives_seeds_only_to_configurations_that_may_still_lead(
    tmp_path: Path, data_cache: Path, inprocess_workers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, data_cache, trials=3, seeds={"min": 3, "max": 4}, margin_db=1e-6)
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    study = load_study(tmp_path)
    trials = study.get_trials()
    race = study.user_attrs["race"]
    configs = {t.user_attrs["config_id"] for t in trials}
    assert set(race) == configs and len(configs) == 3
    assert all(lane["status"] != "racing" for lane in race.values())
    assert [lane["status"] for lane in race.values()].count("leads") == 1
    pairs = [(t.user_attrs["config_id"], t.user_attrs["seed_index"]) for t in trials]
    assert len(pairs) == len(set(pairs))  # no (configuration, seed) twice
    for c, lane in race.items():  # each configuration ran exactly the seeds its lane asked for
        assert sorted(k for cid, k in pairs if cid == c) == list(range(lane["target"]))
    assert states(study) == ["COMPLETE"] * len(trials) and 9 <= len(trials) <= 12
    assert "race (seeds 3, 4, margin 1e-06):" in capsys.readouterr().out


# progress


@pytest.mark.slow
def test_progress_is_a_bar_in_a_terminal_and_a_line_per_run_in_a_log(tmp_path: Path, data_cache: Path) -> None:
    import pty

    spec = write_spec(tmp_path, data_cache, trials=2)
    out = run_cli(sweep_cmd(spec), cwd=tmp_path)  # not a terminal: a log
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("run ")]
    assert len(lines) == 2 and lines[0].startswith("run 1/2: ") and "seed 0: trained, val/psnr " in lines[0]
    assert "cond_gain" in lines[0] and lines[0].endswith(" min") or "degenerate" in lines[0]

    spec2 = write_spec(tmp_path, data_cache, name="tty", trials=2)
    master, slave = pty.openpty()
    proc = subprocess.Popen(sweep_cmd(spec2), cwd=tmp_path, env=CLEAN_ENV, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "study tty:" in screen and "2/2 runs" in screen and "best " in screen and " running" in screen
    assert "run 1/2:" not in screen  # the bar, not the log lines


def test_the_bar_s_best_is_the_study_s_pick_with_its_t_interval() -> None:
    from types import SimpleNamespace

    from optuna.distributions import FloatDistribution

    from sweeps.plan import runs_of
    from sweeps.progress import best_so_far

    study = optuna.create_study(direction="maximize")
    dist = {"lr": FloatDistribution(0.0, 1.0)}
    for k, (cid, value, extra) in enumerate(
        [
            ("a", 20.0, {}),
            ("a", 21.0, {}),
            ("a", 21.5, {}),
            ("b", 23.0, {}),
            ("b", 30.0, {"degenerate": True}),
            ("c", 25.0, {"phase": "confirm"}),
        ]
    ):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.1},
                distributions=dist,
                value=value,
                user_attrs={"config_id": cid, "seed_index": k, **extra},
            )
        )
    # b's collapsed 30 dB counts as a failure, a margin below the worst trained run: 20 - 1 = 19. b scores
    # (23 + 19) / 2 = 21 against a's 20.83; confirmation runs do not count. Its interval: sd 2 sqrt(2), se 2,
    # t(1) 0.975 = 12.7062
    spec = SimpleNamespace(margin_db=1.0, direction="maximize")
    cid, score, (lo, hi), n = best_so_far(study, spec, runs_of(study))
    assert (cid, score, n) == ("b", 21.0, 2)
    assert (lo, hi) == pytest.approx((21 - 2 * 12.706205, 21 + 2 * 12.706205), abs=1e-5)
    # lower is better: the floor is 23 + 1 = 24, b scores 23.5; a's 20.83 with sd 0.7638, t(2) 0.975 = 4.302653
    spec = SimpleNamespace(margin_db=1.0, direction="minimize")
    cid, score, (lo, hi), n = best_so_far(study, spec, runs_of(study))
    assert (cid, n) == ("a", 3) and score == pytest.approx(62.5 / 3)
    half = 4.302653 * np.std([20.0, 21.0, 21.5], ddof=1) / 3**0.5
    assert (lo, hi) == pytest.approx((62.5 / 3 - half, 62.5 / 3 + half), abs=1e-5)
