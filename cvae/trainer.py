"""train(cfg) -> Result: the training loop, evaluation the course's way, checkpoints and run outputs.

One run folder holds metrics.csv, the course's four plots and a few more, GIFs/strips of fixed validation sequences,
config.yaml, best.pt and last.pt. `train(..., resume=True)` continues from last.pt bit-for-bit on CPU.
"""

from __future__ import annotations

import csv
import math
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from cvae import config as config_mod, faults
from cvae.atomic import atomic_path, ensure_writable, write_text
from cvae.checkpoints import FORMAT_VERSION, atomic_save, load_checkpoint, load_state
from cvae.config import Config
from cvae.data import load_split
from cvae.data.batches import Batches
from cvae.evaluate import Evaluation, Evaluator
from cvae.host import keep_freed_memory
from cvae.model import CVAE, count_parameters
from cvae.modules import frame_bytes
from cvae.plots import diagnostics_plot, per_step_plot, training_plots
from cvae.schedules import kl_beta, teacher_forcing_ratio
from cvae.step import load_optimizer, make_optimizer, make_step
from cvae.tracking import Tracker, exit_status
from cvae.video import save_gif, save_strip

LOG_EVERY = 50  # iterations between looks at the device's running sums (progress bar, divergence check)
# Plots are redrawn at the first evaluation, then at most this often, and at the end (or stop): drawing them
# takes about 0.8 s of CPU, which at every evaluation was 3/4 of a seconds-long run (measured: 26 s vs 6 s for
# 25 tiny epochs). MLflow has every epoch's values meanwhile.
PLOT_SECONDS = 30.0
METRIC_COLUMNS = [
    "epoch",
    "train/loss",
    "train/mse",
    "train/kld",
    "sched/beta",
    "sched/tfr",
    "train/lr",
    "val/psnr",
    "val/ssim",
    "val/psnr_copy_last",
    "val/ssim_copy_last",
    "val/psnr_best",
    "val/ssim_best",
    "val/psnr_moving",
    "val/psnr_moving_copy_last",
    "val/cond_gain",
    "val/kld",
    "val/active_dims",
    "perf/seq_per_s",
    "perf/epoch_seconds",
]
PER_STEP_COLUMNS = [
    "epoch",
    "frame",
    "psnr",
    "psnr_copy_last",
    "psnr_moving",
    "psnr_moving_copy_last",
    "cond_gain",
    "kld",
]


class Diverged(RuntimeError):
    """The loss became NaN/inf; last.pt (when an epoch completed) still holds the last good epoch."""

    last_checkpoint: Path | None = None


@dataclass
class Result:
    run_dir: Path
    best_psnr: float
    best_epoch: int
    copy_last_psnr: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None

    def summary(self) -> str:
        """The one line a user reads at the end."""
        return (
            f"best val/psnr={self.best_psnr:.2f} dB (copy-last {self.copy_last_psnr:.2f} dB) "
            f"at epoch {self.best_epoch} -> {self.run_dir}"
        )


# helpers


def resolve_device(name: str) -> torch.device:
    """auto = CUDA when present."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise config_mod.ConfigError("run.device: cuda requested but no CUDA device is available")
    return torch.device(name)


CPU_CALL_BYTES = 8 << 20
"""On a CPU, a batched encoder/decoder call holds at most this much of its widest feature map (float32).
Measured side by side (benchmarks, demo and lab sizes): VGG64 full at batch 4, 16 frames a call 1843 ms
a step vs 2297 ms for all 44 at once; width 0.25 at batch 12, 24-32 frames 644 ms vs 717 ms at 64 and
989 ms all at once; the DCGAN demo is flat from 64 frames to all 192 (its maps are 16x smaller)."""


def frames_per_call(setting: int, device: torch.device, m: config_mod.ModelCfg) -> int:
    """run.frames_per_call resolved: -1 = all frames in one call on CUDA, on a CPU as many as keep the
    widest feature map of a call within CPU_CALL_BYTES."""
    if setting >= 0:
        return setting
    if device.type == "cuda":
        return 0
    return max(1, CPU_CALL_BYTES // frame_bytes(m.arch, m.width))


def new_run_dir(cfg: Config) -> Path:
    """runs/<experiment>/<timestamp>-<random>: unique, sortable, no hyper-parameters in the name."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.out_dir) / cfg.run.name / f"{stamp}-{uuid.uuid4().hex[:4]}"


def write_metrics_csv(rows: list[dict[str, float]], path: Path) -> None:
    """Per-epoch metrics; columns are stable, empty where an epoch had no evaluation."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _write_samples(run_dir: Path, epoch: int, gt: torch.Tensor, pred: torch.Tensor) -> tuple[Path, Path]:
    """GIF (ground truth | prediction per sequence) and strip (ground-truth row over prediction row)."""
    cols: list[torch.Tensor] = []
    for g, p in zip(gt, pred):
        cols += [g, p]
    gif = save_gif(run_dir / "samples" / f"epoch_{epoch:04d}.gif", cols)
    strip = save_strip(run_dir / "samples" / f"epoch_{epoch:04d}_strip.png", cols)
    return gif, strip


def _append_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """Append rows to a CSV (header first when new): one block per evaluation."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerows(rows)


def _fmt(v: float) -> str:
    return "" if v != v else f"{v:.6g}"  # NaN (no moving pixel in a frame) stays empty


def _write_diagnostics(run_dir: Path, epoch: int, ev: Evaluation) -> None:
    """per_step.csv (one row per frame) and kl_per_dim.csv (one row per latent dim), appended each evaluation."""
    ps = ev.per_step
    steps = {int(f): i for i, f in enumerate(ps["frame"])}
    rows = []
    for t, kld in enumerate(ev.kld_step, start=1):  # KL covers every step from frame 1; PSNR the predicted ones
        i = steps.get(t)
        vals = [ps[k][i] if i is not None else float("nan") for k in PER_STEP_COLUMNS[2:-1]]
        rows.append([epoch, t] + [_fmt(v) for v in vals] + [_fmt(kld)])
    _append_rows(run_dir / "per_step.csv", PER_STEP_COLUMNS, rows)
    _append_rows(
        run_dir / "kl_per_dim.csv",
        ["epoch", "dim", "kld", "mu_var"],
        [[epoch, d, _fmt(k), _fmt(v)] for d, (k, v) in enumerate(zip(ev.kld_dim, ev.mu_var))],
    )


def _draw_plots(run_dir: Path, history: list[dict[str, float]], epoch: int, ev: Evaluation) -> list[Path]:
    """The run's plots as of the evaluation at `epoch`: its curves, PSNR per frame and diagnostics."""
    ps = ev.per_step
    return training_plots(history, run_dir) + [
        per_step_plot(
            ps["frame"],
            ps["psnr"],
            ps["psnr_copy_last"],
            run_dir / "per_step_psnr.png",
            f"Validation PSNR per frame, epoch {epoch}",
        ),
        diagnostics_plot(ev, run_dir / "diagnostics.png", f"Diagnostics, epoch {epoch}"),
    ]


# the loop


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    """Raise Diverged when an iteration of this epoch had a non-finite loss (one host sync, at logging points)."""
    bad = int(first_bad)
    if bad >= 0:
        raise Diverged(f"diverged at epoch {epoch}, iteration {bad + 1}")


def train(
    cfg: Config,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    new_run: bool = False,
    tracker: Tracker | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Result:
    """Train per cfg; returns the best validation PSNR. `on_epoch` may raise to stop (sweeps prune that way).

    resume: continue from run_dir/last.pt, in the tracker run it names; with new_run, in a new tracker run
    (a retried sweep trial's own, its run folder a copy of the lost one's) that first gets the epochs so far."""
    tracker = tracker or Tracker()
    t, e = cfg.train, cfg.eval
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    if device.type == "cpu":
        keep_freed_memory()
    amp = cfg.run.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same shape: pick the fastest kernels once
    train_split = load_split(cfg.data, "train")
    evaluator = Evaluator(cfg, load_split(cfg.data, "validate"), device)

    torch.manual_seed(cfg.run.seed)
    model = CVAE(cfg.model).to(device)
    if cfg.run.channels_last != "off":  # auto: measured faster on CUDA and on a CPU
        model = model.to(memory_format=torch.channels_last)
    model.frames_per_call = frames_per_call(cfg.run.frames_per_call, device, cfg.model)
    graphs = cfg.run.cuda_graphs and device.type == "cuda"
    opt = make_optimizer(model, t.lr, t.beta1, capturable=graphs)
    step = make_step(model, opt, device, t.n_past, amp, t.grad_clip, graphs)
    gen = torch.Generator().manual_seed(cfg.run.seed)  # batch draws and teacher-forcing coin flips

    history: list[dict[str, float]] = []
    best_psnr, best_epoch, start_epoch, run_id = -math.inf, 0, 1, None
    if resume:
        assert run_dir is not None, "resume needs the run folder"
        ckpt = load_checkpoint(run_dir / "last.pt")
        load_state(model, ckpt["model"], run_dir / "last.pt")
        load_optimizer(opt, ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["sampler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        history, run_id = ckpt["history"], None if new_run else ckpt.get("run_id")
        best_psnr, best_epoch, start_epoch = ckpt["best_psnr"], ckpt["best_epoch"], ckpt["epoch"] + 1
    run_dir = ensure_writable(Path(run_dir) if run_dir is not None else new_run_dir(cfg))
    write_text(run_dir / "config.yaml", config_mod.dump(cfg))

    n_frames = t.n_past + t.n_future
    epoch = start_epoch - 1
    undrawn: tuple[int, Evaluation] | None = None  # the last evaluation not yet in the plots
    drawn_at: float | None = None
    try:
        # inside the try: a stop that lands while (or right after) the run is opened still closes it
        tracker.start(cfg, run_dir, resume_run_id=run_id)
        tracker.set_tags({"device": str(device), "params": str(count_parameters(model))})
        if resume and new_run:  # the new run's curves start at epoch 1 like any other's
            tracker.set_tags({"resumed_at_epoch": str(start_epoch - 1)})
            for row in history:
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        for epoch in range(start_epoch, t.niter + 1):
            tfr = teacher_forcing_ratio(epoch, cfg.tf, t.niter)
            # the epoch's draws up front: the sampler's state at the epoch's end is what a resume needs,
            # whatever the prefetcher has read ahead
            idx = torch.randint(len(train_split), (t.epoch_size, t.batch_size), generator=gen).numpy()
            use_tf = (torch.rand(t.epoch_size, generator=gen) < tfr).tolist()
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, mse, kld: read at logging points
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            start = time.perf_counter()
            bar = tqdm(
                total=t.epoch_size, desc=f"epoch {epoch}/{t.niter}", leave=False, disable=None if t.progress else True
            )
            with Batches(train_split, idx, n_frames, device, prefetch=cfg.run.prefetch) as batches:
                for i, (x, c) in enumerate(batches):
                    beta = kl_beta((epoch - 1) * t.epoch_size + i, cfg.total_iters, cfg.kl)
                    terms = step(x, c, beta, use_tf[i])  # [loss, mse, kld] on the device
                    faults.point("train")
                    sums += terms
                    # no host sync in the loop: the first non-finite iteration is remembered on the device
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(terms[0]), i, first_bad)
                    if (i + 1) % LOG_EVERY == 0 or i + 1 == t.epoch_size:
                        _check_finite(first_bad, epoch)
                        bar.update((i + 1) - bar.n)
                        bar.set_postfix(
                            loss=f"{float(sums[0]) / (i + 1) / (n_frames - 1):.5f}",
                            seq_s=f"{(i + 1) * t.batch_size / (time.perf_counter() - start):.1f}",
                        )
            bar.close()
            seconds = time.perf_counter() - start
            mean = (sums / (t.epoch_size * (n_frames - 1))).tolist()  # logged per predicted step, as SVG does
            row: dict[str, float] = {
                "epoch": epoch,
                "train/loss": mean[0],
                "train/mse": mean[1],
                "train/kld": mean[2],
                "sched/beta": beta,
                "sched/tfr": tfr,
                "train/lr": opt.param_groups[0]["lr"],
                "perf/seq_per_s": t.batch_size * t.epoch_size / seconds,
                "perf/epoch_seconds": seconds,
            }
            evaluated = epoch % e.every == 0 or epoch == t.niter
            if evaluated:
                ev = evaluator(model)
                row.update(ev.metrics)
                gif, strip = _write_samples(run_dir, epoch, *ev.gif)
                _write_diagnostics(run_dir, epoch, ev)
                undrawn = (epoch, ev)
            history.append(row)
            state = {
                "format_version": FORMAT_VERSION,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "config": cfg.to_dict(),
                "history": history,
                "run_id": tracker.run_id,
                "best_psnr": best_psnr,
                "best_epoch": best_epoch,
                "rng": {
                    "sampler": gen.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                },
            }
            if evaluated and row["val/psnr"] > best_psnr:
                best_psnr, best_epoch = row["val/psnr"], epoch
                state.update(best_psnr=best_psnr, best_epoch=best_epoch)
                atomic_save(state, run_dir / "best.pt")
                tracker.log_artifact(run_dir / "best.pt", "checkpoints")
                if cfg.tracking.log_model:
                    tracker.log_model(model)
            write_metrics_csv(history, run_dir / "metrics.csv")
            plots: list[Path] = []
            if evaluated and (drawn_at is None or epoch == t.niter or time.monotonic() - drawn_at >= PLOT_SECONDS):
                plots, undrawn, drawn_at = _draw_plots(run_dir, history, epoch, ev), None, time.monotonic()

            scalars = {k: v for k, v in row.items() if k != "epoch"}
            if best_epoch:
                scalars |= {"best/val_psnr": best_psnr, "best/epoch": best_epoch}
            tracker.log_metrics(scalars, step=epoch)
            # after logging: a kill in between re-runs this epoch on resume (the tracker skips logged steps)
            # instead of leaving the step missing
            atomic_save(state, run_dir / "last.pt")
            if evaluated:
                for p in (gif, strip):
                    tracker.log_artifact(p, "samples")
                tracker.log_image(strip, "samples/strip", step=epoch)
                for name in ("per_step.csv", "kl_per_dim.csv"):
                    tracker.log_artifact(run_dir / name)
                for p in plots:
                    tracker.log_artifact(p, "plots")
                tracker.log_artifact(run_dir / "metrics.csv")
            if on_epoch is not None:
                on_epoch(epoch, row)
        tracker.log_artifact(run_dir / "metrics.csv")
        tracker.finish("FINISHED")
    except BaseException as exc:
        if isinstance(exc, Diverged) and (run_dir / "last.pt").is_file():
            exc.last_checkpoint = run_dir / "last.pt"
        if history:
            write_metrics_csv(history, run_dir / "metrics.csv")
        if undrawn:  # a stopped, pruned or diverged run's plots show where it ended
            try:
                for p in _draw_plots(run_dir, history, *undrawn):
                    tracker.log_artifact(p, "plots")
            except Exception as plot_error:  # noqa: BLE001 - the run's own end matters more than its plots
                warnings.warn(f"plots not redrawn at the stop: {plot_error}", stacklevel=1)
        if tracker.run_id is not None:
            try:
                tracker.set_tags(
                    {**getattr(exc, "tracking_tags", {}), "ended_by": f"{type(exc).__name__}: {exc}"[:500]}
                )
            finally:  # a tag that cannot be written must not leave the run RUNNING
                tracker.finish(exit_status(exc))
        raise
    return Result(
        run_dir=run_dir,
        best_psnr=best_psnr,
        best_epoch=best_epoch,
        copy_last_psnr=float(evaluator.copy_psnr.mean()),
        epochs_run=epoch,
        history=history,
        run_id=tracker.run_id,
    )
