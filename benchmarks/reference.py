"""The training step as the course template and SVG's code write it, on our modules: the yardstick for speed.

Per time step: the encoder on x[t-1] and on x[t], the posterior, the predictor, the decoder, and the
loss added step by step. Same modules, weights and math as `CVAE.forward`, only the order differs, so
`make bench` can time both on the same batch and `tests/test_model.py` can check they agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cvae.model import CVAE, frame_mse
from cvae.modules import kl_gaussians, kl_standard_normal, reparameterize


def reference_forward(
    model: CVAE, x: Tensor, cond: Tensor, n_past: int, teacher_forcing: bool, eps: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(sum over steps of MSE, sum over steps of KL) computed one time step at a time."""
    b, T = x.shape[:2]
    ref = x.new_zeros(b, 1)
    post = model.posterior.init_state(b, ref)
    pred = model.predictor.init_state(b, ref)
    prior = model.prior.init_state(b, ref) if model.prior is not None else None
    mse = kld = x.new_zeros(())
    x_prev, skip = x[:, 0], None
    for t in range(1, T):
        if t - 1 < n_past or teacher_forcing:
            x_prev = x[:, t - 1]
        h_prev, sk = model.encoder(x_prev)
        if skip is None or model.skip_source(t, n_past) == t - 1:
            skip = sk
        h_target, _ = model.encoder(x[:, t])
        _, mu, logvar, post = model.posterior(h_target, post)
        z = reparameterize(mu, logvar, None if eps is None else eps[:, t - 1])
        if prior is not None:
            _, mu_p, logvar_p, prior = model.prior(h_prev, prior)
            kld = kld + kl_gaussians(mu, logvar, mu_p, logvar_p)
        else:
            kld = kld + kl_standard_normal(mu, logvar)
        h_pred, pred = model.predictor(torch.cat([h_prev, z, cond[:, t]], 1), pred)
        x_pred = model.decoder(h_pred, skip)
        mse = mse + frame_mse(x_pred, x[:, t])  # F.mse_loss; the same function as ours (see its doc)
        x_prev = x_pred
    return mse, kld
