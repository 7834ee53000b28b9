"""The study's winner in MLflow's Model Registry: registered at the end of a sweep, loaded by its models:/ URI,
evaluated by `cvae eval models:/...`, and shown under Models by the MLflow UI (Chromium, screenshot kept); served
as MLflow serves models in test_serving.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
import yaml
from browser import chromium_path, ci, open_url
from helpers import TINY, MlflowServer
from mlflow import MlflowClient

from cvae import cli
from sweeps import cli as cli_mod, registry, spec as spec_mod

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.mark.slow
def test_the_winner_is_registered_loaded_by_uri_and_evaluated(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    spec = tmp_path / "reg.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "reg",
                "experiment": "demo",
                "seeds": 2,
                "sampler": {"type": "grid"},
                "pruner": {"type": "none"},
                "degenerate_below": -100.0,
                "grid": {"kl.mode": ["monotonic", "cyclical"]},
                "overrides": {**TINY, "run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)},
            }
        )
    )
    assert cli_mod.main(["sweep", str(spec), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "registered the winner as cvae-reg version 1" in out and "cvae eval models:/cvae-reg/1" in out

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (mv,) = client.search_model_versions("name='cvae-reg'")
    study = optuna.load_study(study_name="reg", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    w = registry.winner(study, spec_mod.load_spec(str(spec)))
    assert mv.run_id == w["run_id"] and mv.tags["config_id"] == w["config_id"] and mv.tags["study"] == "reg"
    assert {"seed", "val/psnr", "cond_gain"} <= set(mv.tags) and float(mv.tags["val/psnr"]) == pytest.approx(
        w["value"], abs=1e-4
    )

    # load by models:/ URI: the exported graph predicts the course's frames from the signature's inputs
    with registry.tracking(uri):
        model = mlflow.pytorch.load_model("models:/cvae-reg/1")
        info = mlflow.models.get_model_info("models:/cvae-reg/1")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaks into the runs that follow
    assert [s.name for s in info.signature.inputs.inputs] == ["frames", "cond"]
    assert {"python_function", "pytorch"} <= set(info.flavors)  # servable: test_serving.py serves one
    frames, cond = np.zeros((3, 2, 3, 64, 64), np.float32), np.zeros((3, 5, 7), np.float32)
    assert tuple(model(torch.from_numpy(frames), torch.from_numpy(cond)).shape) == (3, 3, 3, 64, 64)  # any batch

    # cvae eval models:/cvae-reg/latest --split test
    assert cli.main(["eval", "models:/cvae-reg/latest", "--split", "test"]) == 0
    done = json.loads((tmp_path / "runs" / "registry" / "cvae-reg-v1" / "eval_test.json").read_text())
    assert done["metrics"]["test/psnr"] > 0 and done["settings"]["sequences"] == 8  # the whole test split
    logged = client.get_run(w["run_id"]).data.metrics.get("test/psnr")  # logged to the winner's run
    assert logged == pytest.approx(done["metrics"]["test/psnr"])

    # `cvae register` on the finished study adds version 2; a wrong URI is one line
    assert cli_mod.main(["register", str(spec)]) == 0
    assert {int(v.version) for v in client.search_model_versions("name='cvae-reg'")} == {1, 2}
    capsys.readouterr()
    assert cli.main(["eval", "models:/cvae-nope/latest"]) == 2
    assert "no registered model cvae-nope" in capsys.readouterr().err

    # the MLflow UI lists it under Models
    if chromium_path() is None and not ci():
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    server = MlflowServer(uri, tmp_path / "runs" / "mlartifacts", tmp_path / "ui.log")
    server.start()
    try:
        shot = Path(os.environ.get("CVAE_TEST_ARTIFACTS", tmp_path)) / "mlflow_models.png"
        page = open_url(f"{server.url}/#/models", shot, wait_for_text="cvae-reg")
        assert "cvae-reg" in page.text and shot.stat().st_size > 10_000
    finally:
        server.stop()
