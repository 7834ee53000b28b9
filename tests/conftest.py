"""Shared fixtures: a seconds-long CPU config and its data cache (built once per session)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from helpers import TINY, as_args

from cvae import config as config_mod
from cvae.config import Config

# helpers


# fixtures


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Test tensors are tiny: one thread is as fast, and spares OpenMP spin-waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ambient stores, cwd = tmp_path; sweeps.cli.main installs a SIGTERM handler, which must not outlive the test
    (modules that call it in-process: pytestmark = pytest.mark.usefixtures("isolated"))."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the whole session, so the tiny dataset is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_overrides(tmp_path: Path, data_cache: Path) -> dict[str, Any]:
    """Overrides for a seconds-long CPU run writing under tmp_path/runs, no tracking (the trainer's tests: three
    epochs of three iterations, two GIF sequences); use as_args() for a CLI."""
    return {
        **TINY,
        "train.niter": 3,
        "train.epoch_size": 3,
        "eval.gif_sequences": 2,
        "tracking.enabled": False,
        "run.threads": 1,
        "run.out_dir": str(tmp_path / "runs"),
        "data.cache_dir": str(data_cache),
    }


@pytest.fixture
def tiny_cfg(tiny_overrides: dict[str, Any]) -> Config:
    """The validated Config of tiny_overrides."""
    return config_mod.load(None, tiny_overrides)


@pytest.fixture
def tiny_args(tiny_overrides: dict[str, Any]) -> list[str]:
    """tiny_overrides as command-line arguments."""
    return as_args(tiny_overrides)
