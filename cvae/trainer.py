"""train(cfg) -> Result: the training loop, evaluation the course's way, checkpoints and run outputs.

One run folder holds metrics.csv, the four plots, GIFs/strips of fixed validation sequences,
config.yaml, best.pt and last.pt. `train(..., resume=True)` continues from last.pt bit-for-bit on CPU.
"""

from __future__ import annotations

import csv
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from cvae import config as config_mod
from cvae.config import Config
from cvae.data import Split, load_split, to_tensors
from cvae.metrics import psnr, ssim
from cvae.model import CVAE, count_parameters
from cvae.plots import per_step_plot, training_plots
from cvae.schedules import kl_beta, teacher_forcing_ratio
from cvae.tracking import Tracker, exit_status
from cvae.video import save_gif, save_strip

FORMAT_VERSION = 1
EVAL_SEED_OFFSET = 100_003  # evaluation noise is its own stream: validation never shifts training's RNG
METRIC_COLUMNS = ["epoch", "train/loss", "train/mse", "train/kld", "sched/beta", "sched/tfr", "train/lr",
                  "val/psnr", "val/ssim", "val/psnr_copy_last", "val/ssim_copy_last", "val/psnr_best",
                  "val/ssim_best", "perf/seq_per_s", "perf/epoch_seconds"]


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
        return (f"best val/psnr={self.best_psnr:.2f} dB (copy-last {self.copy_last_psnr:.2f} dB) "
                f"at epoch {self.best_epoch} -> {self.run_dir}")


# helpers


def resolve_device(name: str) -> torch.device:
    """auto = CUDA when present."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise config_mod.ConfigError("run.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def new_run_dir(cfg: Config) -> Path:
    """runs/<experiment>/<timestamp>-<random>: unique, sortable, no hyper-parameters in the name."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.out_dir) / cfg.run.name / f"{stamp}-{uuid.uuid4().hex[:4]}"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics_csv(rows: list[dict[str, float]], path: Path) -> None:
    """Per-epoch metrics; columns are stable, empty where an epoch had no evaluation."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by this trainer (state dicts + config + version)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise config_mod.ConfigError(f"{path}: checkpoint format {ckpt.get('format_version')} is not {FORMAT_VERSION}")
    return ckpt


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[CVAE, Config]:
    """Model (eval mode) and config from best.pt / last.pt."""
    ckpt = load_checkpoint(Path(path))
    cfg = config_mod.from_dict(ckpt["config"])
    model = CVAE(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


class Evaluator:
    """Course protocol on fixed validation sequences: n_past frames in, n_future predicted, z from the prior."""

    def __init__(self, cfg: Config, split: Split, device: torch.device):
        self.cfg, self.device = cfg, device
        e = cfg.eval
        n = len(split) if e.sequences == 0 else min(e.sequences, len(split))
        self.x, self.cond = to_tensors(split, np.arange(n), e.n_past + e.n_future)
        future = slice(e.n_past, e.n_past + e.n_future)
        copy = self.x[:, e.n_past - 1 : e.n_past].expand_as(self.x[:, future])
        self.copy_psnr = psnr(copy, self.x[:, future])  # (N, n_future), fixed across epochs
        self.copy_ssim = ssim(copy, self.x[:, future])

    def __call__(self, model: CVAE) -> tuple[dict[str, float], dict[str, np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
        """(scalar metrics, per-step PSNR, (ground truth, prediction) of the GIF sequences)."""
        e = self.cfg.eval
        future = slice(e.n_past, e.n_past + e.n_future)
        model.eval()
        amp = self.cfg.run.amp and self.device.type == "cuda"
        ps, ss, gif_pred = [], [], None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.run.seed + EVAL_SEED_OFFSET)
            for s in range(e.samples):
                p_list, s_list = [], []
                for i in range(0, len(self.x), e.batch_size):
                    x = self.x[i : i + e.batch_size].to(self.device)
                    c = self.cond[i : i + e.batch_size].to(self.device)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                        pred = model.predict(x, c, e.n_past, e.n_future).float().clamp_(0, 1)
                    p_list.append(psnr(pred[:, future], x[:, future]).cpu())
                    s_list.append(ssim(pred[:, future], x[:, future]).cpu())
                    if s == 0 and i == 0:
                        gif_pred = pred[: e.gif_sequences].cpu()
                ps.append(torch.cat(p_list))
                ss.append(torch.cat(s_list))
        model.train()
        p, s_ = ps[0], ss[0]  # (N, n_future): the first sample is the plain course metric
        metrics = {"val/psnr": p.mean().item(), "val/ssim": s_.mean().item(),
                   "val/psnr_copy_last": self.copy_psnr.mean().item(),
                   "val/ssim_copy_last": self.copy_ssim.mean().item()}
        if e.samples > 1:
            # SVG protocol: per sequence, keep the sample with the best mean SSIM
            all_p, all_s = torch.stack(ps), torch.stack(ss)  # (S, N, n_future)
            best = all_s.mean(2).argmax(0)
            idx = torch.arange(all_p.shape[1])
            metrics["val/psnr_best"] = all_p[best, idx].mean().item()
            metrics["val/ssim_best"] = all_s[best, idx].mean().item()
        per_step = {"frame": np.arange(e.n_past, e.n_past + e.n_future), "psnr": p.mean(0).numpy(),
                    "psnr_copy_last": self.copy_psnr.mean(0).numpy()}
        return metrics, per_step, (self.x[: e.gif_sequences], gif_pred)


def _write_samples(run_dir: Path, epoch: int, gt: torch.Tensor, pred: torch.Tensor) -> tuple[Path, Path]:
    """GIF (ground truth | prediction per sequence) and strip (ground-truth row over prediction row)."""
    cols: list[torch.Tensor] = []
    for g, p in zip(gt, pred):
        cols += [g, p]
    gif = save_gif(run_dir / "samples" / f"epoch_{epoch:04d}.gif", cols)
    strip = save_strip(run_dir / "samples" / f"epoch_{epoch:04d}_strip.png", cols)
    return gif, strip


def _append_per_step(path: Path, epoch: int, per_step: dict[str, np.ndarray]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["epoch", "frame", "psnr", "psnr_copy_last"])
        for fr, a, b in zip(per_step["frame"], per_step["psnr"], per_step["psnr_copy_last"]):
            w.writerow([epoch, int(fr), f"{a:.4f}", f"{b:.4f}"])


# the loop


def train(cfg: Config, *, run_dir: Path | None = None, resume: bool = False, tracker: Tracker | None = None,
          on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Result:
    """Train per cfg; returns the best validation PSNR. `on_epoch` may raise to stop (sweeps prune that way)."""
    tracker = tracker or Tracker()
    t, e = cfg.train, cfg.eval
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    amp = cfg.run.amp and device.type == "cuda"
    train_split = load_split(cfg.data, "train")
    evaluator = Evaluator(cfg, load_split(cfg.data, "validate"), device)

    torch.manual_seed(cfg.run.seed)
    model = CVAE(cfg.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=(t.beta1, 0.999))
    gen = torch.Generator().manual_seed(cfg.run.seed)  # batch draws and teacher-forcing coin flips

    history: list[dict[str, float]] = []
    best_psnr, best_epoch, start_epoch, run_id = -math.inf, 0, 1, None
    if resume:
        assert run_dir is not None, "resume needs the run folder"
        ckpt = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["sampler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        history, run_id = ckpt["history"], ckpt.get("run_id")
        best_psnr, best_epoch, start_epoch = ckpt["best_psnr"], ckpt["best_epoch"], ckpt["epoch"] + 1
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_mod.dump(cfg))

    tracker.start(cfg, run_dir, resume_run_id=run_id)
    n_frames = t.n_past + t.n_future
    epoch = start_epoch - 1
    try:
        tracker.set_tags({"device": str(device), "params": str(count_parameters(model))})
        for epoch in range(start_epoch, t.niter + 1):
            tfr = teacher_forcing_ratio(epoch, cfg.tf, t.niter)
            sums = torch.zeros(3, dtype=torch.float64)
            start = time.perf_counter()
            bar = tqdm(range(t.epoch_size), desc=f"epoch {epoch}/{t.niter}", leave=False,
                       disable=None if t.progress else True)
            for i in bar:
                it = (epoch - 1) * t.epoch_size + i
                beta = kl_beta(it, cfg.total_iters, cfg.kl)
                idx = torch.randint(len(train_split), (t.batch_size,), generator=gen).numpy()
                use_tf = torch.rand((), generator=gen).item() < tfr
                x, c = to_tensors(train_split, idx, n_frames)
                x, c = x.to(device, non_blocking=True), c.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    terms = model(x, c, t.n_past, use_tf)
                loss = terms.mse + beta * terms.kld
                if not torch.isfinite(loss):
                    raise Diverged(f"diverged at epoch {epoch}, iteration {i + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                sums += torch.stack([loss.detach(), terms.mse.detach(), terms.kld.detach()]).double().cpu()
                if i % 10 == 0:
                    done = (i + 1) * t.batch_size / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{loss.item():.4f}", seq_s=f"{done:.1f}")
            seconds = time.perf_counter() - start
            mean = (sums / (t.epoch_size * (n_frames - 1))).tolist()  # logged per predicted step, as SVG does
            row: dict[str, float] = {"epoch": epoch, "train/loss": mean[0], "train/mse": mean[1], "train/kld": mean[2],
                                     "sched/beta": beta, "sched/tfr": tfr, "train/lr": opt.param_groups[0]["lr"],
                                     "perf/seq_per_s": t.batch_size * t.epoch_size / seconds,
                                     "perf/epoch_seconds": seconds}
            evaluated = epoch % e.every == 0 or epoch == t.niter
            if evaluated:
                metrics, per_step, (gt, pred) = evaluator(model)
                row.update(metrics)
                gif, strip = _write_samples(run_dir, epoch, gt, pred)
                _append_per_step(run_dir / "per_step_psnr.csv", epoch, per_step)
                step_plot = per_step_plot(per_step["frame"], per_step["psnr"], per_step["psnr_copy_last"],
                                          run_dir / "per_step_psnr.png", f"Validation PSNR per frame, epoch {epoch}")
            history.append(row)
            state = {"format_version": FORMAT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch, "config": cfg.to_dict(), "history": history, "run_id": tracker.run_id,
                     "best_psnr": best_psnr, "best_epoch": best_epoch,
                     "rng": {"sampler": gen.get_state(), "torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}}
            if evaluated and row["val/psnr"] > best_psnr:
                best_psnr, best_epoch = row["val/psnr"], epoch
                state.update(best_psnr=best_psnr, best_epoch=best_epoch)
                atomic_save(state, run_dir / "best.pt")
                tracker.log_artifact(run_dir / "best.pt", "checkpoints")
                if cfg.tracking.log_model:
                    tracker.log_model(model)
            write_metrics_csv(history, run_dir / "metrics.csv")
            plots = training_plots(history, run_dir)

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
                tracker.log_artifact(run_dir / "per_step_psnr.csv")
                tracker.log_artifact(step_plot, "plots")
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
        tracker.set_tags({**getattr(exc, "tracking_tags", {}), "ended_by": f"{type(exc).__name__}: {exc}"[:500]})
        tracker.finish(exit_status(exc))
        raise
    return Result(run_dir=run_dir, best_psnr=best_psnr, best_epoch=best_epoch,
                  copy_last_psnr=evaluator.copy_psnr.mean().item(), epochs_run=epoch, history=history,
                  run_id=tracker.run_id)
