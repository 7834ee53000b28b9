"""Checkpoints: state dicts + config + format version, written atomically and read back without running any
pickled code (`torch.load(weights_only=True)`); a file that is not one is one line saying so."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from cvae import config as config_mod, faults
from cvae.atomic import atomic_path
from cvae.config import Config
from cvae.model import CVAE

FORMAT_VERSION = 2  # 2: decoder stages hold their skip convolution apart (SkipStage)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        faults.point("checkpoint")  # the kill campaign's "while a checkpoint is written"


def _load_reason(e: Exception) -> str:
    """The informative sentence of torch.load's refusal, without its advice about weights_only."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip().removeprefix("WeightsUnpickler error:").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(advice)]
    if not lines:
        return type(e).__name__
    reason = lines[0].split(". ")[0].rstrip(".")[:160]
    return f"code or objects that are not plain data: {reason}" if "Weights only" in str(e) else reason


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by this trainer (state dicts + config + version), read without running any pickle
    code (`weights_only=True`: tensors and plain data only, which is all this trainer stores)."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise config_mod.ConfigError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - pickle and zip errors vary; one line says what the file is not
        raise config_mod.ConfigError(f"{path}: not a cvae checkpoint that loads safely ({_load_reason(e)})") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise config_mod.ConfigError(f"{path}: not a cvae checkpoint (no model state and format version)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise config_mod.ConfigError(
            f"{path}: checkpoint format {ckpt['format_version']} is not {FORMAT_VERSION} "
            "(written by another version of cvae-sweep)"
        )
    return ckpt


def load_state(model: CVAE, state: dict[str, Any], path: Path) -> None:
    """Load weights into `model`, or one line saying the checkpoint is for another model size."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        shapes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line]
        raise config_mod.ConfigError(
            f"{path}: checkpoint is for another model ({(shapes or [str(e).splitlines()[0]])[0][:160]})"
        ) from None


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[CVAE, Config]:
    """Model (eval mode) and config from best.pt / last.pt."""
    ckpt = load_checkpoint(Path(path))
    cfg = config_mod.from_dict(ckpt["config"])
    model = CVAE(cfg.model)
    load_state(model, ckpt["model"], Path(path))
    return model.to(device).eval(), cfg
