"""The registered predictor as MLflow serves it: MLflow's "models from code" copies this file into the model, and
`mlflow.pyfunc.load_model` / `mlflow models serve` run it where cvae-sweep need not be installed, so it imports
torch, numpy and MLflow only, never cvae or sweeps.

It loads the exported graph (torch.export, the model's artifact "program") and runs it on a request's
{"frames": (B, n_past, 3, 64, 64) in [0, 1], "cond": (B, n_past + n_future, 7)} float32 arrays -> the predicted
frames (B, n_future, 3, 64, 64). z comes from the prior, drawn from the request's `seed` (a parameter, default 0):
the same request gets the same answer.
"""

from __future__ import annotations

import threading
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext


class ExportedPredictor(PythonModel):
    """The exported graph of sweeps.registry.Predictor behind MLflow's pyfunc interface."""

    # the model's signature (named tensors) checks the inputs; MLflow's type-hint checks know lists of records only,
    # read a hint on model_input as one, and warn at every load when there is none: this is MLflow's own (private)
    # switch that turns them off; were it gone, only that warning would come back
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.program = torch.export.load(context.artifacts["program"]).module()
        self.seeding = threading.Lock()  # the scoring server predicts in threads; a seed holds for one request

    # model_input unannotated: see above
    def predict(self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        """{"frames", "cond"} float32 arrays -> predicted frames (B, n_future, 3, 64, 64) float32."""
        frames, cond = (torch.from_numpy(np.asarray(model_input[k], dtype=np.float32)) for k in ("frames", "cond"))
        # the graph draws z from torch's global generator: seed a fork of it, leave the server's own untouched
        with self.seeding, torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int((params or {}).get("seed", 0)))
            return self.program(frames, cond).numpy()


mlflow.models.set_model(ExportedPredictor())
