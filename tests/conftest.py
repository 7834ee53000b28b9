"""Shared fixtures: a seconds-long CPU config and its data cache (built once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from cvae import config as config_mod
from cvae.config import Config

# helpers

# A run of a few seconds on a 2-core CPU: small DCGAN, tiny LSTMs, a handful of iterations.
TINY: dict[str, str] = {
    "model.arch": "dcgan",
    "model.width": "0.125",
    "model.g_dim": "16",
    "model.z_dim": "4",
    "model.rnn_size": "16",
    "train.batch_size": "4",
    "train.niter": "3",
    "train.epoch_size": "3",
    "train.n_future": "3",
    "train.progress": "false",
    "eval.n_future": "3",
    "eval.sequences": "8",
    "eval.batch_size": "8",
    "eval.every": "1",
    "eval.gif_sequences": "2",
    "data.n_train": "16",
    "data.n_val": "8",
    "data.n_test": "8",
    "tracking.enabled": "false",
    "run.threads": "1",
}


def bair_samples() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, aux1 frames (30, 64, 64, 3) uint8, main-camera frames, actions (30, 4), positions (30, 3)) of
    BAIR-schema samples: one made from the built-in generator (always), and the real one of ../shared when it is
    there (cvae.data.sample.load, whose stand-in positions are the running sum of the actions)."""
    from cvae.data import pushing, sample

    frames, cond = pushing.generate(2, seed=7)
    out = [("generated", frames[0], frames[1], cond[0, :, :4].copy(), cond[0, :, 4:].copy())]
    if sample.SAMPLE.is_file():
        seq = sample.sequences(1)
        out.append(("real", seq["aux1"][0], seq["main"][0], seq["action"][0], seq["position"][0]))
    return out


def as_args(overrides: dict[str, str]) -> list[str]:
    """{'section.key': value} -> ['section.key=value', ...] for config.load or the command line."""
    return [f"{k}={v}" for k, v in overrides.items()]


# fixtures


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Test tensors are tiny: one thread is as fast, and spares OpenMP spin-waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the whole session, so the tiny dataset is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_overrides(tmp_path: Path, data_cache: Path) -> dict[str, str]:
    """Overrides for a seconds-long CPU run writing under tmp_path/runs; use as_args() for a CLI."""
    return {**TINY, "run.out_dir": str(tmp_path / "runs"), "data.cache_dir": str(data_cache)}


@pytest.fixture
def tiny_cfg(tiny_overrides: dict[str, str]) -> Config:
    """The validated Config of tiny_overrides."""
    return config_mod.load(None, tiny_overrides)


@pytest.fixture
def tiny_args(tiny_overrides: dict[str, str]) -> list[str]:
    """tiny_overrides as command-line arguments."""
    return as_args(tiny_overrides)
