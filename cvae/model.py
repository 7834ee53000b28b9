"""The conditional VAE (SVG-FP / SVG-LP with a per-frame condition): one step's forward returns its loss terms.

Shapes: x (B, T, 3, 64, 64) in [0, 1]; cond (B, T, cond_dim); frame t is predicted from
[h(x_{t-1}), z_t, cond_t], with skips from the last conditioning frame unless `last_frame_skip`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvae.config import ModelCfg
from cvae.modules import ARCHS, GaussianLSTM, PredictorLSTM, init_weights, kl_gaussians, kl_standard_normal


@dataclass
class StepLoss:
    """Loss terms of one batch, summed over the predicted time steps (SVG: loss = sum_t MSE_t + beta KL_t)."""

    mse: Tensor
    kld: Tensor


class CVAE(nn.Module):
    def __init__(self, m: ModelCfg):
        super().__init__()
        enc, dec = ARCHS[m.arch]
        self.cfg = m
        self.encoder = enc(m.g_dim, m.width)
        self.decoder = dec(m.g_dim, m.width)
        self.posterior = GaussianLSTM(m.g_dim, m.z_dim, m.rnn_size, m.posterior_layers)
        self.prior = GaussianLSTM(m.g_dim, m.z_dim, m.rnn_size, m.prior_layers) if m.learned_prior else None
        self.predictor = PredictorLSTM(m.g_dim + m.z_dim + m.cond_dim, m.g_dim, m.rnn_size, m.predictor_layers)
        self.apply(init_weights)

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """All frames in ONE batched encoder call: (B, T, 3, H, W) -> h (B, T, g), skips [(B, T, C, h, w)]."""
        b, t = x.shape[:2]
        h, skips = self.encoder(x.flatten(0, 1))
        return h.view(b, t, -1), [s.view(b, t, *s.shape[1:]) for s in skips]

    def forward(self, x: Tensor, cond: Tensor, n_past: int, teacher_forcing: bool) -> StepLoss:
        """Training pass over T = x.shape[1] frames; without teacher forcing, predictions are fed back."""
        b, T = x.shape[:2]
        h_all, skips_all = self.encode(x)  # the posterior needs every ground-truth frame anyway
        post = self.posterior.init_state(b, h_all)
        pred = self.predictor.init_state(b, h_all)
        prior = self.prior.init_state(b, h_all) if self.prior is not None else None
        mse = kld = h_all.new_zeros(())
        x_hat = x[:, 0]
        skip = [s[:, 0] for s in skips_all]
        for t in range(1, T):
            fed_back = t - 1 >= n_past and not teacher_forcing
            if fed_back:
                h_in, sk = self.encoder(x_hat)
            else:
                h_in, sk = h_all[:, t - 1], [s[:, t - 1] for s in skips_all]
            if self.cfg.last_frame_skip or t <= n_past:
                skip = sk  # frozen at x[n_past-1] from here on unless last_frame_skip
            z, mu, logvar, post = self.posterior(h_all[:, t], post)
            if prior is not None:
                _, mu_p, logvar_p, prior = self.prior(h_in, prior)
                kld = kld + kl_gaussians(mu, logvar, mu_p, logvar_p)
            else:
                kld = kld + kl_standard_normal(mu, logvar)
            h_pred, pred = self.predictor(torch.cat([h_in, z, cond[:, t]], 1), pred)
            x_hat = self.decoder(h_pred, skip)
            mse = mse + F.mse_loss(x_hat.float(), x[:, t].float())
        return StepLoss(mse=mse, kld=kld)

    @torch.no_grad()
    def predict(self, x: Tensor, cond: Tensor, n_past: int, n_future: int) -> Tensor:
        """Course protocol: n_past ground-truth frames in, n_future out, z from the prior; returns all frames."""
        b = x.shape[0]
        h_past, skips_past = self.encode(x[:, :n_past])
        post = self.posterior.init_state(b, h_past)
        pred = self.predictor.init_state(b, h_past)
        prior = self.prior.init_state(b, h_past) if self.prior is not None else None
        frames = [x[:, 0]]
        skip = [s[:, 0] for s in skips_past]
        x_hat = x[:, 0]
        for t in range(1, n_past + n_future):
            if t - 1 < n_past:
                h_in, sk = h_past[:, t - 1], [s[:, t - 1] for s in skips_past]
            else:
                h_in, sk = self.encoder(x_hat)
            if self.cfg.last_frame_skip or t <= n_past:
                skip = sk
            if prior is not None:
                z_p, _, _, prior = self.prior(h_in, prior)
            if t < n_past:
                # warm the recurrent states up on the conditioning frames; their output is the ground truth
                z, _, _, post = self.posterior(h_past[:, t], post)
                _, pred = self.predictor(torch.cat([h_in, z, cond[:, t]], 1), pred)
                x_hat = x[:, t]
            else:
                z = z_p if prior is not None else torch.randn(b, self.cfg.z_dim, device=x.device, dtype=h_in.dtype)
                h_pred, pred = self.predictor(torch.cat([h_in, z, cond[:, t]], 1), pred)
                x_hat = self.decoder(h_pred, skip)
            frames.append(x_hat)
        return torch.stack(frames, 1)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
