"""The registered model as MLflow serves it: in a Python that cannot import this project, `mlflow.pyfunc.load_model`
by its models:/ URI and the scoring server's JSON (what `mlflow models serve` answers) predict what the in-process
Predictor predicts; mlflow.pytorch loads the same graph, and `cvae eval` finds the checkpoint beside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers import CLEAN_ENV, TINY

from cvae import config as config_mod
from cvae.checkpoints import FORMAT_VERSION, atomic_save, load_model
from cvae.mlflow_tracker import registered_checkpoint
from cvae.model import CVAE
from sweeps import registry

# run by a bare `python -I` in an empty folder: the project is installed editable, so its finder is dropped first;
# what loads after that is what the model carries (its code file, its exported graph) and the installed packages
SERVE = """
import json
import sys

sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
for name in ("cvae", "sweeps", "reports"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    sys.exit(f"{name} is importable here")

import mlflow
import numpy as np
from mlflow.pyfunc import scoring_server

uri, inputs, outputs = sys.argv[1:]
model = mlflow.pyfunc.load_model(uri)
x = dict(np.load(inputs))
body = json.dumps({"inputs": {k: v.tolist() for k, v in x.items()}, "params": {"seed": 0}})
answer = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
assert answer.status == 200, answer.response
served = np.asarray(json.loads(answer.response)["predictions"], np.float32)
np.savez(outputs, loaded=model.predict(x), served=served, modules=sorted(sys.modules))
"""


@pytest.mark.slow
def test_the_registered_model_is_served_without_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder (./mlruns) beside the store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config_mod.load(None, {**TINY, "run.out_dir": str(tmp_path / "runs"), "tracking.uri": uri})
    torch.manual_seed(0)
    ckpt = tmp_path / "best.pt"
    atomic_save(
        {"format_version": FORMAT_VERSION, "model": CVAE(cfg.model).state_dict(), "config": cfg.to_dict()}, ckpt
    )
    (tmp_path / "scratch").mkdir()
    with registry.tracking(uri), mlflow.start_run():
        info = registry.log_model(ckpt, "cvae-serve", tmp_path / "scratch")
    assert {"python_function", "pytorch"} <= set(info.flavors)
    version = f"models:/cvae-serve/{info.registered_model_version}"

    # the in-process prediction, z drawn after torch.manual_seed(0) (the served model's default seed)
    model, mcfg = load_model(ckpt)
    predictor = registry.Predictor(model, mcfg.eval.n_past, mcfg.eval.n_future)
    frames, cond = registry.example(mcfg)
    frames, cond = np.concatenate([frames, frames[:1]]), np.concatenate([cond, cond[:1]])  # a batch of three
    torch.manual_seed(0)
    with torch.no_grad():
        expected = predictor(torch.from_numpy(frames), torch.from_numpy(cond)).numpy()
    assert expected.shape == (3, mcfg.eval.n_future, 3, 64, 64)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.savez(elsewhere / "in.npz", frames=frames, cond=cond)
    env = {k: v for k, v in CLEAN_ENV.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(
        [sys.executable, "-I", "-c", SERVE, version, "in.npz", "out.npz"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(elsewhere / "out.npz")
    assert not [m for m in out["modules"] if m.split(".")[0] in ("cvae", "sweeps", "reports")]
    for got in (out["loaded"], out["served"]):
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    # the pytorch flavour on the same graph; the checkpoint beside it for `cvae eval models:/...`
    with registry.tracking(uri):
        graph = mlflow.pytorch.load_model(version)
    torch.manual_seed(0)
    with torch.no_grad():
        again = graph(torch.from_numpy(frames), torch.from_numpy(cond)).numpy()
    np.testing.assert_allclose(again, expected, atol=1e-5, rtol=0)
    found = registered_checkpoint(version, cfg, tmp_path / "eval")
    assert found.read_bytes() == ckpt.read_bytes()
