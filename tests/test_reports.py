"""`cvae report`: a study with known trials and MLflow curves -> the right answer, figures, and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution

from reports import build as build_mod
from reports import collect

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# trial -> (kl.mode, train.lr, best val/psnr, val/psnr per epoch)
TRIALS = {0: ("cyclical", 0.002, 24.5, [22.0, 23.5, 24.5]),
          1: ("monotonic", 0.002, 23.0, [21.0, 22.5, 23.0]),
          2: ("cyclical", 0.001, 24.0, [22.5, 23.0, 24.0]),
          3: ("monotonic", 0.0005, 22.0, [20.0, 21.0, 22.0])}
COPY_LAST = 22.5


def write_study(tmp_path: Path) -> Path:
    """A spec, a study with four complete trials and one pruned, and their MLflow runs."""
    out = tmp_path / "runs"
    spec = tmp_path / "rep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "rep", "experiment": "demo", "overrides": {"run.out_dir": str(out)}, "trials": 5,
        "sampler": {"type": "random"}, "pruner": {"type": "median"},
        "space": {"kl.mode": {"type": "categorical", "choices": ["monotonic", "cyclical"]},
                  "train.lr": {"type": "float", "low": 0.0001, "high": 0.005, "log": True}}}))
    out.mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.create_experiment("rep", artifact_location=(out / "mlartifacts").as_uri())
    study = optuna.create_study(study_name="rep", storage=f"sqlite:///{out / 'optuna.db'}", direction="maximize")
    dists = {"kl.mode": CategoricalDistribution(["monotonic", "cyclical"]),
             "train.lr": FloatDistribution(0.0001, 0.005, log=True)}
    for n, (mode, lr, best, curve) in TRIALS.items():
        run = client.create_run(exp).info.run_id
        for epoch, v in enumerate(curve, start=1):
            client.log_metric(run, "val/psnr", v, step=epoch)
        study.add_trial(optuna.trial.create_trial(
            params={"kl.mode": mode, "train.lr": lr}, distributions=dists, value=best,
            user_attrs={"mlflow_run_id": run, "copy_last_psnr": COPY_LAST, "epochs_run": 3,
                        "best_epoch": 3, "gif": f"runs/rep/trial-{n:04d}/x.gif"}))
    study.add_trial(optuna.trial.create_trial(params={"kl.mode": "monotonic", "train.lr": 0.0001}, distributions=dists,
                                              state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 18.0},
                                              user_attrs={"epochs_run": 1}))
    return spec


def test_report_answers_which_setting_is_best_and_by_how_much(tmp_path: Path) -> None:
    spec = write_study(tmp_path)
    assert build_mod.main([str(spec)]) == 0
    folder = tmp_path / "runs" / "reports" / "rep"
    text = (folder / "report.md").read_text()
    # best 24.5 dB; copy-last 22.5 -> +2.00; median of complete trials (22, 23, 24, 24.5) = 23.5 -> +1.00
    assert "**Best: trial 0, val/psnr = 24.50 dB** at epoch 3, +2.00 dB over copying the last frame (22.50 dB)" in text
    assert "+1.00 dB over the median complete trial (23.50 dB)" in text
    assert "Runner-up: trial 2 at 24.00 dB (-0.50 dB)" in text
    # cyclical mean (24.5 + 24) / 2 = 24.25 vs monotonic (23 + 22) / 2 = 22.5 -> leads by 1.75
    assert "`kl.mode`: mean by choice cyclical: 24.25 dB (n=2), monotonic: 22.50 dB (n=2); best choice `cyclical` leads by 1.75 dB" in text
    assert "Pruned: trials 4 (after 1 epochs)." in text
    for fig in ("curves.png", "settings.png", "importance.png"):
        assert (folder / fig).stat().st_size > 1000


def test_collect_reads_curves_from_mlflow(tmp_path: Path) -> None:
    spec = write_study(tmp_path)
    from sweeps.spec import load_spec

    cfg = load_spec(str(spec)).base_config()
    study = optuna.load_study(study_name="rep", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    trials = collect.trials_frame(study)
    curves = collect.curves_frame(cfg, list(trials.run_id.dropna()), metrics=("val/psnr",))
    assert len(curves) == 4 * 3
    assert sorted(curves[curves.run_id == trials.run_id[0]].value) == TRIALS[0][3]
    assert collect.param_columns(trials) == ["kl.mode", "train.lr"]


def test_report_without_a_study_is_one_line_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "none.yaml"
    spec.write_text(yaml.safe_dump({"name": "none", "experiment": "demo",
                                    "overrides": {"run.out_dir": str(tmp_path / "runs")},
                                    "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.01}}}))
    out = subprocess.run([sys.executable, "-m", "cvae.cli", "report", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvae: error: no study storage") and "make sweep" in lines[0]
    assert not (tmp_path / "runs").exists()
