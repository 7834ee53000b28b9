"""Experiment tracking behind a thin interface, so the trainer never branches on "is MLflow on"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvae.config import Config


class Tracker:
    """Do-nothing tracker (`tracking.enabled=false`); MlflowTracker overrides every method."""

    run_id: str | None = None

    def start(self, cfg: Config, run_dir: Path, resume_run_id: str | None = None) -> None:
        """Open (or re-open) the run for this training."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-epoch scalars, `step` = epoch."""

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        """Copy one file into the run's artifacts."""

    def log_image(self, path: Path, key: str, step: int) -> None:
        """An image with a step, for the UI's image comparison."""

    def log_model(self, model: Any) -> None:
        """The model itself (mlflow.pytorch), when asked for."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """String tags on the run."""

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""


def exit_status(exc: BaseException) -> str:
    """Status of a run that ended by exception: Ctrl-C/SIGTERM = KILLED, else the exception's own or FAILED."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "KILLED"
    return getattr(exc, "tracking_status", "FAILED")
