"""The course's four training plots (loss, PSNR, KL weight, teacher-forcing ratio) and a few more."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

from cvae.atomic import atomic_path

matplotlib.use("Agg")  # headless: runs on servers and in workers
import matplotlib.pyplot as plt  # noqa: E402

# helpers


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Atomic PNG write (temp file + rename)."""
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


def _line(
    path: Path,
    title: str,
    ylabel: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str = "epoch",
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, (xs, ys) in series.items():
        pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and y == y]  # drop epochs without a value
        if pairs:
            ax.plot(*zip(*pairs), marker="o" if len(pairs) < 30 else None, ms=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(ax.get_lines()) > 1:
        ax.legend()
    return save_figure(fig, path)


def training_plots(rows: list[dict[str, float]], out_dir: Path) -> list[Path]:
    """The course's four (loss, psnr, kl_weight, tfr) and the diagnostics' curves, from per-epoch metric rows."""
    ep = [r["epoch"] for r in rows]
    col = lambda k: [r.get(k) for r in rows]  # noqa: E731
    return [
        _line(
            out_dir / "loss.png",
            "Training loss (per step)",
            "loss",
            {"loss": (ep, col("train/loss")), "mse": (ep, col("train/mse"))},
        ),
        _line(
            out_dir / "psnr.png",
            "Validation PSNR",
            "dB",
            {"model": (ep, col("val/psnr")), "copy last frame": (ep, col("val/psnr_copy_last"))},
        ),
        _line(
            out_dir / "psnr_moving.png",
            "Validation PSNR on moving pixels",
            "dB",
            {"model": (ep, col("val/psnr_moving")), "copy last frame": (ep, col("val/psnr_moving_copy_last"))},
        ),
        _line(
            out_dir / "cond_gain.png",
            "Condition gain (true minus shuffled actions/positions)",
            "dB",
            {"cond_gain": (ep, col("val/cond_gain"))},
        ),
        _line(out_dir / "kl_weight.png", "KL weight (beta, end of epoch)", "beta", {"beta": (ep, col("sched/beta"))}),
        _line(out_dir / "tfr.png", "Teacher-forcing ratio", "ratio", {"tfr": (ep, col("sched/tfr"))}),
    ]


def per_step_plot(
    steps: Sequence[int], model: Sequence[float], copy_last: Sequence[float], path: Path, title: str
) -> Path:
    """PSNR against the predicted time step, model vs copy-last-frame."""
    return _line(
        path,
        title,
        "dB",
        {"model": (steps, model), "copy last frame": (steps, copy_last)},
        xlabel="frame index (predicted frames only)",
    )


def schedule_plot(
    iters: Sequence[float], beta: Sequence[float], epochs: Sequence[int], tfr: Sequence[float], path: Path, title: str
) -> Path:
    """KL weight over iterations and teacher-forcing ratio over epochs, one figure."""
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 5))
    a.plot(iters, beta)
    a.set_ylabel("KL weight beta")
    a.set_xlabel("epoch (fractional, by iteration)")
    a.grid(alpha=0.3)
    b.step(epochs, tfr, where="post")
    b.set_ylabel("teacher-forcing ratio")
    b.set_xlabel("epoch")
    b.set_ylim(-0.05, 1.05)
    b.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def diagnostics_plot(ev: Any, path: Path, title: str) -> Path:
    """One evaluation's diagnostics: moving-pixel PSNR and condition gain per frame, KL per step and per dim."""
    ps = ev.per_step
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    a, b, c, d = axes.flat
    a.plot(ps["frame"], ps["psnr_moving"], marker="o", ms=3, label="model")
    a.plot(ps["frame"], ps["psnr_moving_copy_last"], marker="o", ms=3, label="copy last frame")
    a.set(title="PSNR on moving pixels", xlabel="frame", ylabel="dB")
    a.legend()
    b.plot(ps["frame"], ps["cond_gain"], marker="o", ms=3)
    b.axhline(0, color="grey", lw=0.8)
    b.set(title="Condition gain (true - shuffled)", xlabel="frame", ylabel="dB")
    c.plot(range(1, len(ev.kld_step) + 1), ev.kld_step, marker="o", ms=3)
    c.set(title="KL per step (posterior vs prior)", xlabel="frame", ylabel="nats")
    dims = range(len(ev.kld_dim))
    d.bar(dims, ev.kld_dim, color="steelblue")
    d.set(
        title=f"KL per latent dimension ({int(ev.metrics.get('val/active_dims', 0))} active)",
        xlabel="dimension",
        ylabel="nats (mean over steps)",
    )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)
