"""The conditional VAE (SVG-FP / SVG-LP with a per-frame condition): one step's forward returns its loss terms.

Shapes: x (B, T, 3, 64, 64) in [0, 1]; cond (B, T, cond_dim); frame t is predicted from
[h(x_{t-1}), z_t, cond_t], with skips from the last conditioning frame unless `last_frame_skip`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from cvae.config import ModelCfg
from cvae.modules import ARCHS, GaussianLSTM, PredictorLSTM, StepTerms, init_weights, kl_elementwise


@dataclass
class StepLoss:
    """Loss terms of one batch, summed over the predicted time steps (SVG: loss = sum_t MSE_t + beta KL_t).

    The per-step and per-dimension parts are what the diagnostics read (KL per step and per latent
    dimension, active units); the trainer only uses the sums.
    """

    mse: Tensor  # () sum over steps of the per-step mean squared error
    kld: Tensor  # () sum over steps and latent dims, batch mean
    mse_t: Tensor  # (T-1,) per predicted step
    kld_td: Tensor  # (T-1, z_dim) per step and latent dimension, batch mean
    mu: Tensor  # (B, T-1, z_dim) posterior means, for the active-units count


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

    frames_per_call = 0
    """Batched encoder/decoder calls take at most this many frames (0 = all in one call). On a CPU, calls of
    a few dozen frames keep the activations in cache (the trainer sets it from run.frames_per_call)."""

    def _chunks(self, b: int, t: int, keep: int) -> list[int]:
        """Time steps per batched call over t steps of b sequences: all in one call (frames_per_call 0, CUDA),
        or calls of whole time steps within frames_per_call, cut at `keep` so that the first `keep` steps
        fill calls of their own even when all would fit one call. (Sliced out of a call, the skips'
        gradient would be a zero-filled map of the whole call in the default memory layout; with
        channels-last the encoder's activation backward then mixes layouts and runs 5-10x slower: the
        sweep model's step 60 -> 53 ms cut, side by side.)"""
        n = self.frames_per_call
        if not n:
            return [t]
        k = max(1, n // b)
        cut = lambda m: [k] * (m // k) + [m % k] * (m % k > 0)  # noqa: E731
        return cut(keep) + cut(t - keep)

    def _per_frame(self, fn: Any, *xs: Tensor, keep: int | None = None) -> Any:
        """fn(*frames) over every frame of xs (each (b, t, ...)); outputs as (b, t, ...) strided views.

        Frames go in time-major order, in one call or in calls of whole time steps of EVERY sequence, so
        BatchNorm's training statistics always see the whole batch, as in one call or in the course's
        per-step loop, never two or three sequences' frames alone. Outputs stay time-major in memory (as
        strided (b, t) views): consumers that work per time step read them without a copy. For fn returning
        (h, [maps]) (the encoder), `keep` returns the maps of the first `keep` time steps only (the decoder's
        skips need n_past of them): they fill calls of their own, so the others are never gathered.
        """
        b, t = xs[0].shape[:2]
        keep = t if keep is None else keep
        sizes = self._chunks(b, t, keep)
        chunks = zip(*(x.transpose(0, 1).split(sizes) for x in xs))  # (k, b, ...) views
        parts = [fn(*(s.reshape(-1, *s.shape[2:]) for s in chunk)) for chunk in chunks]
        view = lambda y: y.view(-1, b, *y.shape[1:]).transpose(0, 1)  # noqa: E731
        cat = lambda ys: ys[0] if len(ys) == 1 else torch.cat(ys)  # noqa: E731
        if isinstance(parts[0], Tensor):
            return view(cat(parts))
        used = next(i + 1 for i, n in enumerate(itertools.accumulate(sizes)) if n >= keep)
        maps = [cat(m) for m in zip(*(p[1] for p in parts[:used]))]
        # one call for every step (CUDA): its first `keep` steps are a contiguous prefix of each map
        maps = [m if m.shape[0] == keep * b else m[: keep * b] for m in maps]
        return view(cat([p[0] for p in parts])), [view(m) for m in maps]

    def _time_major(self, x: Tensor) -> Tensor:
        """x (B, T, 3, H, W) copied once into time-major memory in the encoder's layout (channels-last when
        its weights are), returned as a (B, T, ...) view: batched calls then read their frames without a
        copy, and the loss reads targets in the decoder output's layout, so its gradient stays in it."""
        if next(self.encoder.parameters()).is_contiguous(memory_format=torch.channels_last):
            return x.permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)  # memory (T, B, H, W, C)
        return x.transpose(0, 1).contiguous().transpose(0, 1)

    def encode(self, x: Tensor, skip_steps: int | None = None) -> tuple[Tensor, list[Tensor]]:
        """All frames in batched encoder calls: (B, T, 3, H, W) -> h (B, T, g) and the skips [(B, S, C, h, w)]
        of the first S = skip_steps frames (default all)."""
        return self._per_frame(self.encoder, x, keep=skip_steps)

    def skip_source(self, t: int, n_past: int) -> int:
        """Index of the frame whose encoder skips decode frame t: x[t-1] while conditioning, then x[n_past-1]."""
        return t - 1 if self.cfg.last_frame_skip or t <= n_past else n_past - 1

    def forward(
        self, x: Tensor, cond: Tensor, n_past: int, teacher_forcing: bool, eps: Tensor | None = None
    ) -> StepLoss:
        """Training pass over T = x.shape[1] frames; without teacher forcing, predictions are fed back.

        `eps` (B, T-1, z_dim) fixes the posterior noise (tests); by default it is drawn here.
        """
        b, T = x.shape[:2]
        x = self._time_major(x)
        # the posterior needs every ground-truth frame anyway; the decoder only the skips of the frames it reads
        h_all, skips_all = self.encode(x, T - 1 if self.cfg.last_frame_skip else n_past)
        # q(z_t | x_t) depends on ground truth only: the whole sequence at once
        z, mu, logvar = self.posterior.sequence(h_all[:, 1:], eps)  # (B, T-1, z)
        if teacher_forcing:
            # nothing the decoder produces is fed back: recurrent part first, then batched decoder calls
            h_in = h_all[:, :-1]
            g = self.predictor.sequence(torch.cat([h_in, z, cond[:, 1:]], -1))  # (B, T-1, g)
            mse_t = self._decode_steps(g, skips_all, x, n_past)
        else:
            x_hat, h_in = self._free_run(h_all, skips_all, z, cond, n_past)
            mse_t = per_step_mse(x_hat, x[:, 1:].unbind(1))
        if self.prior is not None:
            _, mu_p, logvar_p = self.prior.sequence(h_in)  # p(z_t | x_{t-1}) on what the predictor saw
            kl = kl_elementwise(mu, logvar, mu_p, logvar_p)
        else:
            kl = kl_elementwise(mu, logvar)
        kld_td = _full(kl).mean(0)
        return StepLoss(mse=mse_t.sum(), kld=kld_td.sum(), mse_t=mse_t, kld_td=kld_td, mu=mu.detach())

    def _decode_steps(self, g: Tensor, skips: list[Tensor], x: Tensor, n_past: int) -> Tensor:
        """Teacher forcing: decode frames 1..T-1 from g (B, T-1, g_dim) in batched calls of whole time steps
        and return their per-step MSE against x (T-1,).

        Only distinct skip frames go through the skip convolutions: x[t-1] while conditioning, then
        x[n_past-1] for every later frame, unless last_frame_skip. Each call adds its steps' skip terms
        without copying them out per frame (StepTerms: a shared frame's terms are broadcast), and its frames
        are scored as they come, so no (B, T-1) frame or skip tensor is ever gathered.
        """
        b, n = g.shape[:2]
        s = skips[0].shape[1]  # skip frames: n_past, or T-1 with last_frame_skip
        # time-major: the skips come from the encoder that way, so this reshape copies nothing
        terms = self.decoder.skip_terms([m.transpose(0, 1).reshape(-1, *m.shape[2:]) for m in skips])
        terms = [term.view(s, b, *term.shape[1:]) for term in terms]
        own = n if self.cfg.last_frame_skip else n_past  # steps 0..own-1 read skip frame i; later ones the last
        sizes = self._chunks(b, n, n)
        mse, lo = [], 0
        for k, g_k in zip(sizes, g.transpose(0, 1).split(sizes)):
            spans = [(a - lo, z - lo) for a, z in ((lo, min(lo + k, own)), (max(lo, own), lo + k)) if a < z]
            chunk_terms = [
                StepTerms(spans, [term[a + lo : z + lo] if a + lo < own else term[-1:] for a, z in spans])
                for term in terms
            ]
            out = self.decoder.decode(g_k.reshape(k * b, -1), chunk_terms)
            mse.append(per_step_mse(out.split(b), x[:, lo + 1 : lo + k + 1].unbind(1)))
            lo += k
        return torch.cat(mse)

    def _free_run(
        self, h_all: Tensor, skips_all: list[Tensor], z: Tensor, cond: Tensor, n_past: int
    ) -> tuple[list[Tensor], Tensor]:
        """Feed the model's own predictions back after the conditioning frames: (the predicted frames, each
        (B, 3, H, W), and the predictor inputs h (B, T-1, g))."""
        b, T = h_all.shape[:2]
        state = self.predictor.init_state(b, h_all)
        frames, h_ins = [], []
        x_hat, terms = h_all.new_zeros(()), []
        for t in range(1, T):
            if t - 1 < n_past:
                h_in, sk = h_all[:, t - 1], [s[:, t - 1] for s in skips_all]
            else:
                h_in, sk = self.encoder(x_hat)
            if self.skip_source(t, n_past) == t - 1:
                terms = self.decoder.skip_terms(sk)  # frozen at x[n_past-1] from here on unless last_frame_skip
            g, state = self.predictor(torch.cat([h_in, z[:, t - 1], cond[:, t]], 1), state)
            x_hat = self.decoder.decode(g, terms)
            frames.append(x_hat)
            h_ins.append(h_in)
        return frames, torch.stack(h_ins, 1)

    @torch.no_grad()
    def predict(self, x: Tensor, cond: Tensor, n_past: int, n_future: int) -> Tensor:
        """Course protocol: n_past ground-truth frames in, n_future out, z from the prior; returns all frames."""
        b = x.shape[0]
        h_past, skips_past = self.encode(x[:, :n_past])
        post = self.posterior.init_state(b, h_past)
        pred = self.predictor.init_state(b, h_past)
        prior = self.prior.init_state(b, h_past) if self.prior is not None else None
        frames = [x[:, 0]]
        terms: list[Tensor] = []
        x_hat = x[:, 0]
        for t in range(1, n_past + n_future):
            if t - 1 < n_past:
                h_in, sk = h_past[:, t - 1], [s[:, t - 1] for s in skips_past]
            else:
                h_in, sk = self.encoder(x_hat)
            if self.skip_source(t, n_past) == t - 1 and t >= n_past:
                terms = self.decoder.skip_terms(sk)  # only frames from n_past on are decoded
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
                x_hat = self.decoder.decode(h_pred, terms)
            frames.append(x_hat)
        return torch.stack(frames, 1)


def per_step_mse(x_hat: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """(T,) mean squared error of each time step's frames (B, ...). Give the frames as views of one call's
    output (`split`: its backward is one cat, in the output's own memory layout) and targets in the same
    layout, so the gradient stays in it."""
    return torch.stack([frame_mse(a, b) for a, b in zip(x_hat, target)])


def frame_mse(pred: Tensor, target: Tensor) -> Tensor:
    """F.mse_loss (in at least float32) with a gradient in pred's own memory layout."""
    return _MSE.apply(_full(pred), _full(target))


class _MSE(torch.autograd.Function):
    """F.mse_loss whose gradient keeps the prediction's memory layout (mse_loss's backward returns the
    default layout: a channels-last decoder's last stage then runs its backward on mixed layouts)."""

    @staticmethod
    def forward(ctx: Any, pred: Tensor, target: Tensor) -> Tensor:
        diff = torch.sub(pred, target)
        ctx.save_for_backward(diff)
        return torch.linalg.vector_norm(diff).square() / diff.numel()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        (diff,) = ctx.saved_tensors
        g = diff * (2 * grad / diff.numel())
        return g, (-g if ctx.needs_input_grad[1] else None)


def _full(t: Tensor) -> Tensor:
    """Losses in at least float32: bf16 autocast outputs lose digits that move the loss visibly."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
