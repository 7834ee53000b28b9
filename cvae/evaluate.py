"""Evaluation the course's way, plus the diagnostics that say whether a model learned the task.

Course protocol on fixed sequences of a split: n_past ground-truth frames in, n_future predicted, no
teacher forcing, z from the prior; PSNR/SSIM per frame, averaged over predicted frames and sequences.
Beside it, on the same sequences and the same noise:
- `psnr_moving`: PSNR over the pixels that move in the ground truth (metrics.moving_mask), next to
  copy-last's; full-frame PSNR rewards a blurred copy because most pixels never move;
- `cond_gain`: PSNR with the true condition minus PSNR with the conditions of other sequences
  (metrics.shuffled_index): 0 for a model that ignores its actions and positions;
- KL per step and per latent dimension of the posterior on the ground truth (teacher forcing), and the
  number of active dimensions (metrics.active_units): 0 when the posterior has collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cvae import faults
from cvae.config import Config
from cvae.data import Split, to_tensors
from cvae.metrics import active_units, masked_psnr, moving_mask, psnr, shuffled_index, ssim
from cvae.model import CVAE

EVAL_SEED_OFFSET = 100_003  # evaluation noise is its own stream: validation never shifts training's RNG


@dataclass
class Evaluation:
    metrics: dict[str, float]
    """Scalars: val/psnr, val/ssim, copy-last, val/psnr_moving(+copy-last), val/cond_gain, val/kld, val/active_dims."""
    per_step: dict[str, np.ndarray]
    """Per predicted frame: frame, psnr, psnr_copy_last, psnr_moving, psnr_moving_copy_last, cond_gain, ssim,
    ssim_copy_last, and with eval.samples > 1 psnr_best, ssim_best."""
    kld_step: np.ndarray
    """(n_past + n_future - 1,) KL per step (frames 1..), summed over latent dimensions."""
    kld_dim: np.ndarray
    """(z_dim,) KL per latent dimension, mean over steps."""
    mu_var: np.ndarray
    """(z_dim,) variance of the posterior mean over sequences and steps (active when above the threshold)."""
    gif: tuple[Tensor, Tensor]
    """(ground truth, prediction) of the GIF sequences, (n, T, 3, 64, 64) on the CPU."""


def _nanmean(x: Tensor) -> float:
    return float(torch.nanmean(x.double())) if x.numel() else float("nan")


class Evaluator:
    """Scores a model on the first `eval.sequences` sequences of a split; baselines are computed once."""

    def __init__(self, cfg: Config, split: Split, device: torch.device, prefix: str = "val"):
        self.cfg, self.device, self.prefix = cfg, device, prefix
        e = cfg.eval
        n = len(split) if e.sequences == 0 else min(e.sequences, len(split))
        self.x, self.cond = to_tensors(split, np.arange(n), e.n_past + e.n_future)
        self.cond_shuffled = self.cond[shuffled_index(n)]
        future = self.x[:, e.n_past :]
        last = self.x[:, e.n_past - 1 : e.n_past]
        copy = last.expand_as(future)
        self.mask = moving_mask(future, last)  # (N, n_future, 1, H, W)
        self.copy_psnr = psnr(copy, future)  # (N, n_future), fixed across epochs
        self.copy_ssim = ssim(copy, future)
        self.copy_psnr_moving = masked_psnr(copy, future, self.mask)

    def _score(self, model: CVAE, cond: Tensor, full: bool = True) -> dict[str, Tensor]:
        """Predict every sequence batch by batch; per (sequence, frame): psnr, and with `full` ssim, psnr_moving."""
        e = self.cfg.eval
        amp = self.cfg.run.amp and self.device.type == "cuda"
        out: dict[str, list[Tensor]] = {"psnr": [], "ssim": [], "psnr_moving": [], "gif": []}
        for i in range(0, len(self.x), e.batch_size):
            x = self.x[i : i + e.batch_size].to(self.device, non_blocking=True)
            c = cond[i : i + e.batch_size].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model.predict(x, c, e.n_past, e.n_future)
            pred, target = pred[:, e.n_past :].float().clamp_(0, 1), x[:, e.n_past :]
            out["psnr"].append(psnr(pred, target).cpu())
            if full:
                out["ssim"].append(ssim(pred, target).cpu())
                mask = self.mask[i : i + e.batch_size].to(self.device, non_blocking=True)
                out["psnr_moving"].append(masked_psnr(pred, target, mask).cpu())
                if i == 0:
                    out["gif"].append(pred[: e.gif_sequences].cpu())
        return {k: torch.cat(v) for k, v in out.items() if v}

    @torch.no_grad()
    def _posterior_stats(self, model: CVAE) -> tuple[Tensor, Tensor]:
        """KL per (step, dim) averaged over sequences, and the posterior means (N * steps, z)."""
        e = self.cfg.eval
        kl_sum, mus = None, []
        for i in range(0, len(self.x), e.batch_size):
            x = self.x[i : i + e.batch_size].to(self.device, non_blocking=True)
            c = self.cond[i : i + e.batch_size].to(self.device, non_blocking=True)
            terms = model(x, c, e.n_past, teacher_forcing=True)
            part = terms.kld_td.double().cpu() * len(x)
            kl_sum = part if kl_sum is None else kl_sum + part
            mus.append(terms.mu.float().flatten(0, 1).cpu())
        assert kl_sum is not None
        return kl_sum / len(self.x), torch.cat(mus)

    @torch.no_grad()
    def __call__(self, model: CVAE) -> Evaluation:
        e, p = self.cfg.eval, self.prefix
        seed = self.cfg.run.seed + EVAL_SEED_OFFSET
        was_training = model.training
        model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            faults.point("evaluate")
            runs = [self._score(model, self.cond) for _ in range(e.samples)]
            torch.manual_seed(seed)  # the same noise, other sequences' conditions
            p_shuffled = self._score(model, self.cond_shuffled, full=False)["psnr"]
            kl_td, mu = self._posterior_stats(model)
        model.train(was_training)

        ps = torch.stack([r["psnr"] for r in runs])  # (S, N, n_future)
        ss = torch.stack([r["ssim"] for r in runs])
        p0, moving = ps[0], runs[0]["psnr_moving"]
        mu_var, n_active = active_units(mu)
        metrics = {
            f"{p}/psnr": _nanmean(p0),
            f"{p}/ssim": _nanmean(ss[0]),
            f"{p}/psnr_copy_last": _nanmean(self.copy_psnr),
            f"{p}/ssim_copy_last": _nanmean(self.copy_ssim),
            f"{p}/psnr_moving": _nanmean(moving),
            f"{p}/psnr_moving_copy_last": _nanmean(self.copy_psnr_moving),
            f"{p}/cond_gain": _nanmean(p0) - _nanmean(p_shuffled),
            f"{p}/kld": float(kl_td.sum(1).mean()),
            f"{p}/active_dims": float(n_active),
        }
        if e.samples > 1:
            # SVG protocol: per sequence, keep the sample with the best mean SSIM
            best = ss.mean(2).argmax(0)
            idx = torch.arange(ps.shape[1])
            metrics[f"{p}/psnr_best"] = _nanmean(ps[best, idx])
            metrics[f"{p}/ssim_best"] = _nanmean(ss[best, idx])
        col = lambda t: torch.nanmean(t.double(), dim=0).numpy()  # noqa: E731 - mean over sequences per frame
        per_step = {
            "frame": np.arange(e.n_past, e.n_past + e.n_future),
            "psnr": col(p0),
            "psnr_copy_last": col(self.copy_psnr),
            "psnr_moving": col(moving),
            "psnr_moving_copy_last": col(self.copy_psnr_moving),
            "cond_gain": col(p0) - col(p_shuffled),
            "ssim": col(ss[0]),
            "ssim_copy_last": col(self.copy_ssim),
        }
        if e.samples > 1:
            per_step |= {"psnr_best": col(ps[best, idx]), "ssim_best": col(ss[best, idx])}
        n_gif = e.gif_sequences
        gif_pred = torch.cat([self.x[:n_gif, : e.n_past], runs[0]["gif"]], 1)
        return Evaluation(
            metrics=metrics,
            per_step=per_step,
            kld_step=kl_td.sum(1).numpy(),
            kld_dim=kl_td.mean(0).numpy(),
            mu_var=mu_var.numpy(),
            gif=(self.x[:n_gif], gif_pred),
        )
