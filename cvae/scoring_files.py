"""What `cvae eval` writes beside a checkpoint: eval_<tag>.json (every number and the settings that produced
them), the per-frame plot, and a GIF and strip of its predictions, each file written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy arrays and the Evaluation arrive with the evaluation: the module itself starts light
    import numpy as np

    from cvae.evaluate import Evaluation

FORMAT_VERSION = 1  # of eval_<tag>.json


def output_paths(out_dir: Path, tag: str) -> dict[str, Path]:
    """Where one evaluation's files go."""
    stem = out_dir / f"eval_{tag}"
    return {
        "json": stem.with_suffix(".json"),
        "plot": out_dir / f"eval_{tag}_per_step.png",
        "gif": stem.with_suffix(".gif"),
        "strip": out_dir / f"eval_{tag}_strip.png",
    }


def _number(v: float) -> float | None:
    """JSON has no NaN: a frame without moving pixels gives null."""
    v = float(v)
    return v if math.isfinite(v) else None


def _numbers(a: np.ndarray) -> list[float | None] | list[int]:
    return [int(x) for x in a] if a.dtype.kind in "iu" else [_number(x) for x in a]


def report_data(ev: Evaluation, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything eval_<tag>.json holds: scalars, per-step arrays, KL diagnostics and the settings used."""
    return {
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "metrics": {k: _number(v) for k, v in ev.metrics.items()},
        "per_step": {k: _numbers(v) for k, v in ev.per_step.items()},
        "kld_step": _numbers(ev.kld_step),
        "kld_dim": _numbers(ev.kld_dim),
        "mu_var": _numbers(ev.mu_var),
    }


def per_step_figure(per_step: dict[str, np.ndarray], samples: int, path: Path, title: str) -> Path:
    """PSNR and SSIM per predicted frame: model, copy-last and (samples > 1) best of N by SSIM."""
    import matplotlib.pyplot as plt

    from cvae.plots import save_figure  # picks the headless backend before pyplot is imported

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, unit in zip(axes, ("psnr", "ssim"), ("dB", "SSIM")):
        lines = {"model": (metric, "-"), "copy last frame": (f"{metric}_copy_last", "-")}
        if samples > 1:  # dashed: an untrained model's samples coincide with sample 0
            lines[f"best of {samples} (by SSIM)"] = (f"{metric}_best", "--")
        for label, (key, style) in lines.items():
            ax.plot(per_step["frame"], per_step[key], style, marker="o", ms=3, label=label)
        ax.set(title=f"{metric.upper()} per frame", xlabel="frame index (predicted frames only)", ylabel=unit)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def write_outputs(ev: Evaluation, data: dict[str, Any], paths: dict[str, Path], title: str) -> dict[str, Path]:
    """JSON, per-step plot and (when there are GIF sequences) GIF + strip, each written atomically."""
    # deferred: torch (and matplotlib) load only for the command that needs them
    from cvae.data.cache import write_json
    from cvae.video import save_gif, save_strip

    written = {"json": paths["json"]}
    write_json(paths["json"], data)
    written["plot"] = per_step_figure(ev.per_step, data["settings"]["samples"], paths["plot"], title)
    gt, pred = ev.gif
    if len(gt):
        columns = [v for pair in zip(gt, pred) for v in pair]  # ground truth | prediction, per sequence
        written["gif"] = save_gif(paths["gif"], columns)
        written["strip"] = save_strip(paths["strip"], columns)
    return written
