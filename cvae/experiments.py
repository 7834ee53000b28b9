"""Experiment files (experiments/*.yaml) and other named YAML files: a name or a path -> the file."""

from __future__ import annotations

from pathlib import Path

from cvae.config import ConfigError


def find_yaml(name: str, folders: list[Path]) -> Path | None:
    """'demo', 'demo.yaml' or a path -> the first existing file: as given, then in each folder."""
    p = Path(name)
    p = p if p.suffix in (".yaml", ".yml") else p.with_suffix(".yaml")
    return next((c for c in [p] + [f / p.name for f in folders] if c.is_file()), None)


EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


def find_experiment(name: str | None) -> Path | None:
    """An experiment file by name or path: cwd first, then ./experiments/, then the project's experiments/."""
    if name is None:
        return None
    path = find_yaml(name, [Path("experiments"), EXPERIMENTS_DIR])
    if path is None:
        raise ConfigError(f"experiment not found: {name} (looked in ., experiments/)")
    return path
