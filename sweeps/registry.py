"""The study's winner in MLflow's Model Registry: at the end of `cvae sweep`, and by `cvae register STUDY`.

The winner is the study's pick (sweeps.plan.best_config: the best score, failures counted a margin below the
worst trained run, among configurations with a trained run, in a race of those not shown worse) and, of its
trained runs, the one with the best value. Its best checkpoint becomes one exported graph (torch.export: the
course's prediction, no pickled code), logged to that run as an MLflow model with two flavours on that one file:
python_function from code (sweeps/pyfunc_model.py, which imports neither cvae nor sweeps: `mlflow models serve`
serves it without this project) and pytorch (`mlflow.pytorch.load_model` gives the graph as a module); a signature
of tensors, an input example from the built-in data, and the checkpoint itself beside it. It is registered as a
new version of `cvae-<study>`, tagged with the study, configuration, seed, value and condition gain.
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
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
"""the served model's code (MLflow's models from code): it runs the exported graph and imports no project module"""
PROGRAM_FILE = "model.pt2"  # the name MLflow's pytorch flavour loads from its model_data folder


QUIET_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API on `uri` for a while: mlflow.set_tracking_uri also writes $MLFLOW_TRACKING_URI, which
    would send every later run of this process (a test session, a notebook) to this store; both are restored, as are
    MLflow's progress bars and its pyfunc log level, quiet meanwhile."""
    import mlflow
    from mlflow.tracking import _tracking_service

    utils = _tracking_service.utils
    saved, env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    bar, chatter = os.environ.get(QUIET_BAR), logging.getLogger("mlflow.pyfunc")
    level = chatter.level
    os.environ[QUIET_BAR] = "false"  # MLflow's download bars while it checks the logged model, in the sweep's output
    chatter.setLevel(logging.WARNING)  # "Validating input example against model signature"
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        chatter.setLevel(level)
        if bar is None:
            os.environ.pop(QUIET_BAR, None)
        else:
            os.environ[QUIET_BAR] = bar
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


def export(predictor: Predictor, frames: np.ndarray, cond: np.ndarray, path: Path) -> None:
    """torch.export the predictor on an example to a .pt2 file, the batch size left free (one for both inputs, down
    to a single sequence)."""
    batch = torch.export.Dim("batch", min=1)
    logging.getLogger("torch._export").setLevel(logging.ERROR)  # shape-specialisation chatter of the export
    program = torch.export.export(
        predictor, (torch.from_numpy(frames), torch.from_numpy(cond)), dynamic_shapes=({0: batch}, {0: batch})
    )
    torch.export.save(program, path)


class _PyfuncAndPytorch:
    """The flavour Model.log saves the winner with: MLflow's python_function from code (MODEL_CODE on the artifact
    "program") and its pytorch flavour on that same .pt2 file, in one MLmodel (mlflow.pytorch.log_model adds no
    python_function to a graph of two inputs)."""

    @staticmethod
    def save_model(path: str, mlflow_model: Any, **kwargs: Any) -> None:
        import mlflow

        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)
        program = Path(mlflow_model.flavors["python_function"]["artifacts"]["program"]["path"])
        assert program.name == PROGRAM_FILE, f"MLflow saved the program as {program}"  # what the flavour loads
        mlflow_model.add_flavor(
            "pytorch", model_data=str(program.parent), pytorch_version=str(torch.__version__), code=None
        )
        mlflow_model.save(str(Path(path) / "MLmodel"))


def log_model(ckpt: Path, name: str, into: Path) -> Any:
    """Log a best.pt to the active MLflow run as the servable predictor (see the module's docstring), the checkpoint
    beside it, and register it as a new version of `name`; returns MLflow's ModelInfo. `into`: a scratch folder."""
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    model, mcfg = load_model(ckpt)
    frames, cond = example(mcfg)
    export(Predictor(model.eval(), mcfg.eval.n_past, mcfg.eval.n_future), frames, cond, into / PROGRAM_FILE)
    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype("float32"), (-1, *frames.shape[1:]), "frames"),
                TensorSpec(np.dtype("float32"), (-1, *cond.shape[1:]), "cond"),
            ]
        ),
        outputs=Schema(
            [TensorSpec(np.dtype("float32"), (-1, mcfg.eval.n_future, *frames.shape[2:]), "predicted_frames")]
        ),
        params=ParamSchema([ParamSpec("seed", "long", 0)]),  # z's draw: the same request, the same frames
    )
    # stated requirements: MLflow's own inference imports the model in a subprocess (seconds per study)
    return Model.log(
        artifact_path=None,  # deprecated for name, still a required argument
        name="model",
        flavor=_PyfuncAndPytorch,
        python_model=str(MODEL_CODE),
        artifacts={"program": str(into / PROGRAM_FILE), "checkpoint": str(ckpt)},
        signature=signature,
        input_example=({"frames": frames[:1], "cond": cond[:1]}, {"seed": 0}),  # one sequence: a small example
        registered_model_name=name,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
    )


def register(study: optuna.Study, spec: StudySpec, cfg: Config) -> tuple[str, str, dict[str, Any]]:
    """Log the winner's best checkpoint as a servable model (log_model) and register it; returns (name, version,
    winner)."""
    import mlflow

    if not cfg.tracking.enabled:
        raise ConfigError("registering needs MLflow tracking (tracking.enabled=true)")
    client = make_client(cfg)
    w = winner(study, spec)
    name = model_name(spec.name)
    with tempfile.TemporaryDirectory(prefix="cvae-register-") as tmp:
        ckpt = _checkpoint(w, client, Path(tmp))
        status = client.get_run(w["run_id"]).info.status if w["run_id"] else "FINISHED"
        with (
            tracking(tracking_uri(cfg)),
            mlflow.start_run(run_id=w["run_id"]) if w["run_id"] else mlflow.start_run(run_name=f"{name} winner"),
        ):
            info = log_model(ckpt, name, Path(tmp))
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
