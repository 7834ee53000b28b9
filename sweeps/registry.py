"""The study's winner in MLflow's Model Registry: at the end of `cvae sweep`, and by `cvae register STUDY`.

The winner is the study's pick (sweeps.plan.best_config: the best score, failures counted a margin below the
worst trained run, among configurations with a trained run, in a race of those not shown worse) and, of its
trained runs, the one with the best value. Its best checkpoint is logged to that run in MLflow's PyTorch
flavour (the course's prediction as one exported graph, torch.export: no pickled code; a signature of
tensors and an input example from the built-in data), with the checkpoint itself beside it, and registered
as a new version of `cvae-<study>`, tagged with the study, configuration, seed, value and condition gain.
`cvae eval models:/cvae-<study>/latest` evaluates that checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
import torch
from torch import nn

from cvae.checkpoints import load_model
from cvae.config import Config, ConfigError
from cvae.data import pushing
from cvae.mlflow_tracker import make_client, tracking_uri
from sweeps import outcome
from sweeps.design import SEARCH
from sweeps.plan import best_config
from sweeps.spec import StudySpec

CHECKPOINT_FILE = "best.pt"


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API on `uri` for a while: mlflow.set_tracking_uri also writes $MLFLOW_TRACKING_URI, which
    would send every later run of this process (a test session, a notebook) to this store; both are restored."""
    import mlflow
    from mlflow.tracking import _tracking_service

    utils = _tracking_service.utils
    saved, env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if hasattr(utils, "_tracking_uri"):
            utils._tracking_uri = saved
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def model_name(study: str) -> str:
    return f"cvae-{study}"


class Predictor(nn.Module):
    """The course's prediction as one call: frames (B, n_past, 3, 64, 64) in [0, 1] and cond (B, n_past +
    n_future, 7) -> predicted frames (B, n_future, 3, 64, 64), z from the prior."""

    def __init__(self, model: nn.Module, n_past: int, n_future: int):
        super().__init__()
        self.model, self.n_past, self.n_future = model, n_past, n_future

    def forward(self, frames: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model.predict(frames, cond, self.n_past, self.n_future)[:, self.n_past :]


def winner(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """The study's pick (plan.best_config: by score, a configuration with a trained run, in a race one still
    standing) and its best trained run: config_id, seed, value, cond_gain, MLflow run id and run folder."""
    best = best_config(study, spec)
    if best is None:
        raise ConfigError(f"study {spec.name} has no trained run to register yet (every result collapsed or diverged)")
    trained = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("config_id") == best.config_id
        and t.user_attrs.get("phase", SEARCH) == SEARCH
        and outcome.of_trial(t) == outcome.TRAINED
    ]
    top = (max if spec.direction == "maximize" else min)(trained, key=lambda t: t.value)
    a = top.user_attrs
    return {
        "config_id": best.config_id,
        "seed": a.get("seed"),
        "seed_index": a.get("seed_index"),
        "value": top.value,
        "mean": best.mean_trained,
        "score": best.score,
        "seeds": len(best.trained),
        "failed": best.failed,
        "results": best.results,
        "cond_gain": a.get("cond_gain"),
        "run_id": a.get("mlflow_run_id"),
        "run_dir": a.get("run_dir"),
        "trial": top.number,
    }


def _checkpoint(w: dict[str, Any], client: Any, into: Path) -> Path:
    """The winner's best.pt: from its run folder here, else from its MLflow run's artifacts."""
    local = Path(str(w["run_dir"])) / CHECKPOINT_FILE
    if local.is_file():
        return local
    if not w["run_id"]:
        raise ConfigError(f"the best run (trial {w['trial']}) has no {CHECKPOINT_FILE} here and no MLflow run")
    return Path(client.download_artifacts(w["run_id"], f"checkpoints/{CHECKPOINT_FILE}", str(into)))


def example(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Two sequences of the built-in data as (frames, cond) in the predictor's input layout (two, not one: the
    exported graph then keeps the batch size free)."""

    e = cfg.eval
    frames, cond = pushing.generate(2, seed=0, seq_len=e.n_past + e.n_future)
    x = frames[:, : e.n_past].transpose(0, 1, 4, 2, 3).astype(np.float32) / 255.0
    return np.ascontiguousarray(x), cond.astype(np.float32)


def register(study: optuna.Study, spec: StudySpec, cfg: Config) -> tuple[str, str, dict[str, Any]]:
    """Log the winner's best checkpoint as a PyTorch model and register it; returns (name, version, winner)."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if not cfg.tracking.enabled:
        raise ConfigError("registering needs MLflow tracking (tracking.enabled=true)")
    client = make_client(cfg)
    w = winner(study, spec)
    name = model_name(spec.name)
    with tempfile.TemporaryDirectory(prefix="cvae-register-") as tmp:
        ckpt = _checkpoint(w, client, Path(tmp))
        model, mcfg = load_model(ckpt)
        predictor = Predictor(model.eval(), mcfg.eval.n_past, mcfg.eval.n_future)
        frames, cond = example(mcfg)
        with torch.no_grad():
            out = predictor(torch.from_numpy(frames), torch.from_numpy(cond)).numpy()
        signature = ModelSignature(
            inputs=Schema(
                [
                    TensorSpec(np.dtype("float32"), (-1, *frames.shape[1:]), "frames"),
                    TensorSpec(np.dtype("float32"), (-1, *cond.shape[1:]), "cond"),
                ]
            ),
            outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *out.shape[1:]), "predicted_frames")]),
        )
        logging.getLogger("torch._export").setLevel(logging.ERROR)  # shape-specialisation chatter of the export
        status = client.get_run(w["run_id"]).info.status if w["run_id"] else "FINISHED"
        with (
            tracking(tracking_uri(cfg)),
            mlflow.start_run(run_id=w["run_id"]) if w["run_id"] else mlflow.start_run(run_name=f"{name} winner"),
        ):
            # stated requirements: MLflow's own inference imports the model in a subprocess (seconds per study)
            info = mlflow.pytorch.log_model(
                predictor,
                name="model",
                signature=signature,
                input_example=(frames, cond),
                extra_files=[str(ckpt)],
                registered_model_name=name,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    if w["run_id"] and status != "FINISHED":  # logging reopened the run: it keeps the status it had (e.g. repaired)
        client.set_terminated(w["run_id"], status=status)
    version = str(info.registered_model_version)
    tags = {
        "study": spec.name,
        "config_id": w["config_id"],
        "seed": str(w["seed"]),
        "val/psnr": f"{w['value']:.4f}",
        "cond_gain": f"{w['cond_gain']:.4f}" if w["cond_gain"] is not None else "",
        "config_mean": f"{w['mean']:.4f}",
        "config_seeds": str(w["seeds"]),
        "config_score": f"{w['score']:.4f}",
        "config_failures": f"{w['failed']}/{w['results']}",
        "trial": str(w["trial"]),
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    return name, version, w
