"""Building blocks of SVG (Denton & Fergus 2018): frame encoders/decoders with skips and the LSTMs.

Frames are (B, 3, 64, 64) in [0, 1]. Encoders return (h (B, g_dim), four skip maps: 64/32/16/8 px for
VGG64, 32/16/8/4 px for DCGAN64);
decoders take (h, skips) and return (B, 3, 64, 64). `width` scales every channel count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# helpers


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def frame_bytes(arch: str, width: float) -> int:
    """float32 bytes of one frame's widest feature map: the first stage (64 channels at full width),
    64x64 in VGG64, 32x32 in DCGAN64."""
    side = 64 if arch == "vgg" else 32
    return _ch(64, width) * side * side * 4


def vgg_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv + BatchNorm + LeakyReLU(0.2), the unit of VGG64."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def dcgan_down(cin: int, cout: int) -> nn.Sequential:
    """4x4 stride-2 conv: halves the resolution."""
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def init_weights(m: nn.Module) -> None:
    """SVG init: conv/linear N(0, 0.02), BatchNorm N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# VGG64


class VGGEncoder(nn.Module):
    def __init__(self, g_dim: int, width: float = 1.0):
        super().__init__()
        c64, c128, c256, c512 = (_ch(c, width) for c in (64, 128, 256, 512))
        self.c1 = nn.Sequential(vgg_block(3, c64), vgg_block(c64, c64))  # 64x64
        self.c2 = nn.Sequential(vgg_block(c64, c128), vgg_block(c128, c128))  # 32x32
        self.c3 = nn.Sequential(vgg_block(c128, c256), vgg_block(c256, c256), vgg_block(c256, c256))  # 16x16
        self.c4 = nn.Sequential(vgg_block(c256, c512), vgg_block(c512, c512), vgg_block(c512, c512))  # 8x8
        self.c5 = nn.Sequential(nn.Conv2d(c512, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())  # 4x4 -> 1x1
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h1 = self.c1(x)
        h2 = self.c2(self.pool(h1))
        h3 = self.c3(self.pool(h2))
        h4 = self.c4(self.pool(h3))
        h5 = self.c5(self.pool(h4))
        return h5.flatten(1), [h1, h2, h3, h4]


class SkipStage(nn.Module):
    """One decoder stage on [d, skip]: conv(cat(d, skip)) computed as conv_d(d) + conv_s(skip), then `rest`.

    The same math as the concatenation (the weights are the two halves of the concatenated conv's),
    but the skip half can be computed once per skip frame: every frame predicted after the conditioning
    frames decodes with the skips of x[n_past-1], so their skip terms are one computation, not ten.
    """

    def __init__(self, conv: type[nn.Module], c_in: int, c_skip: int, c_out: int, rest: nn.Module, **kw: int):
        super().__init__()
        self.conv_d = conv(c_in, c_out, **kw)
        self.conv_s = conv(c_skip, c_out, bias=False, **kw)
        self.rest = rest

    def forward(self, d: Tensor, skip_term: Tensor | StepTerms) -> Tensor:
        y = self.conv_d(d)
        return self.rest(
            y + skip_term if isinstance(skip_term, Tensor) else _AddSteps.apply(y, skip_term.spans, *skip_term.terms)
        )


@dataclass
class StepTerms:
    """A stage's skip terms for a decoder call over whole time steps of b sequences (frames time-major):
    the steps [a, z) of each span get terms[i], shaped (z - a, b, C, h, w), or (1, b, C, h, w) where one
    skip frame serves every step of the span (broadcast, never copied out per frame)."""

    spans: list[tuple[int, int]]
    terms: list[Tensor]


class _AddSteps(torch.autograd.Function):
    """y (steps * b, C, h, w) + each span's terms, written once; the gradient passes to y as it is and to a
    broadcast term as its sum over the span (autograd's own broadcast add would do the same, but needs the
    terms of a call gathered into one tensor first: a copy forward and another backward)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, spans: list[tuple[int, int]], *terms: Tensor) -> Tensor:
        steps = spans[-1][1]
        out = torch.empty_like(y, dtype=functools.reduce(torch.promote_types, (t.dtype for t in terms), y.dtype))
        y5, out5 = y.view(steps, -1, *y.shape[1:]), out.view(steps, -1, *y.shape[1:])
        for (a, z), term in zip(spans, terms):
            torch.add(y5[a:z], term, out=out5[a:z])
        ctx.spans, ctx.rows = spans, [t.shape[0] for t in terms]
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        g5 = grad.reshape(ctx.spans[-1][1], -1, *grad.shape[1:])
        terms = [
            g5[a:z] if rows == z - a else g5[a:z].sum(0, keepdim=True) for (a, z), rows in zip(ctx.spans, ctx.rows)
        ]
        return (grad, None, *terms)


class SkipDecoder(nn.Module):
    """A decoder whose stages take skips: decoder(h, skips), or decode(h, skip_terms(skips)) to share skip work."""

    stages: nn.ModuleList

    def skip_terms(self, skips: list[Tensor]) -> list[Tensor]:
        """Each stage's skip half, from the encoder's skips [64/32/16/8 px or 32/16/8/4 px] (finest first)."""
        return [stage.conv_s(s) for stage, s in zip(self.stages, reversed(skips))]

    def forward(self, h: Tensor, skips: list[Tensor]) -> Tensor:
        return self.decode(h, self.skip_terms(skips))

    def decode(self, h: Tensor, terms: list[Tensor]) -> Tensor:
        raise NotImplementedError


class VGGDecoder(SkipDecoder):
    def __init__(self, g_dim: int, width: float = 1.0):
        super().__init__()
        c64, c128, c256, c512 = (_ch(c, width) for c in (64, 128, 256, 512))
        conv = dict(kernel_size=3, stride=1, padding=1)
        act = lambda c: [nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]  # noqa: E731
        self.upc1 = nn.Sequential(
            nn.ConvTranspose2d(g_dim, c512, 4, 1, 0), nn.BatchNorm2d(c512), nn.LeakyReLU(0.2, inplace=True)
        )  # 1 -> 4
        self.stages = nn.ModuleList(
            [
                SkipStage(
                    nn.Conv2d,
                    c512,
                    c512,
                    c512,
                    nn.Sequential(*act(c512), vgg_block(c512, c512), vgg_block(c512, c256)),
                    **conv,
                ),  # 8
                SkipStage(
                    nn.Conv2d,
                    c256,
                    c256,
                    c256,
                    nn.Sequential(*act(c256), vgg_block(c256, c256), vgg_block(c256, c128)),
                    **conv,
                ),  # 16
                SkipStage(nn.Conv2d, c128, c128, c128, nn.Sequential(*act(c128), vgg_block(c128, c64)), **conv),  # 32
                SkipStage(
                    nn.Conv2d,
                    c64,
                    c64,
                    c64,
                    nn.Sequential(*act(c64), nn.ConvTranspose2d(c64, 3, 3, 1, 1), nn.Sigmoid()),
                    **conv,
                ),  # 64
            ]
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def decode(self, h: Tensor, terms: list[Tensor]) -> Tensor:
        d = self.upc1(h[:, :, None, None])
        for stage, term in zip(self.stages, terms):
            d = stage(self.up(d), term)
        return d


# DCGAN64


class DCGANEncoder(nn.Module):
    def __init__(self, g_dim: int, width: float = 1.0):
        super().__init__()
        nf = _ch(64, width)
        self.c1 = dcgan_down(3, nf)  # 64 -> 32
        self.c2 = dcgan_down(nf, nf * 2)  # 32 -> 16
        self.c3 = dcgan_down(nf * 2, nf * 4)  # 16 -> 8
        self.c4 = dcgan_down(nf * 4, nf * 8)  # 8 -> 4
        self.c5 = nn.Sequential(nn.Conv2d(nf * 8, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())  # 4 -> 1

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h1 = self.c1(x)
        h2 = self.c2(h1)
        h3 = self.c3(h2)
        h4 = self.c4(h3)
        return self.c5(h4).flatten(1), [h1, h2, h3, h4]


class DCGANDecoder(SkipDecoder):
    def __init__(self, g_dim: int, width: float = 1.0):
        super().__init__()
        nf = _ch(64, width)
        up = dict(kernel_size=4, stride=2, padding=1)
        act = lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True))  # noqa: E731
        self.upc1 = nn.Sequential(
            nn.ConvTranspose2d(g_dim, nf * 8, 4, 1, 0), nn.BatchNorm2d(nf * 8), nn.LeakyReLU(0.2, inplace=True)
        )  # 1 -> 4
        self.stages = nn.ModuleList(
            [
                SkipStage(nn.ConvTranspose2d, nf * 8, nf * 8, nf * 4, act(nf * 4), **up),  # 4 -> 8
                SkipStage(nn.ConvTranspose2d, nf * 4, nf * 4, nf * 2, act(nf * 2), **up),  # 8 -> 16
                SkipStage(nn.ConvTranspose2d, nf * 2, nf * 2, nf, act(nf), **up),  # 16 -> 32
                SkipStage(nn.ConvTranspose2d, nf, nf, 3, nn.Sigmoid(), **up),  # 32 -> 64
            ]
        )

    def decode(self, h: Tensor, terms: list[Tensor]) -> Tensor:
        d = self.upc1(h[:, :, None, None])
        for stage, term in zip(self.stages, terms):
            d = stage(d, term)
        return d


ARCHS = {"vgg": (VGGEncoder, VGGDecoder), "dcgan": (DCGANEncoder, DCGANDecoder)}


# recurrent parts

LSTMState = list[tuple[Tensor, Tensor]]


class _StackedLSTM(nn.Module):
    """Linear embedding -> n LSTMCells; state is created per batch by init_state, never at build time."""

    def __init__(self, in_dim: int, hidden: int, layers: int):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.embed = nn.Linear(in_dim, hidden)
        self.cells = nn.ModuleList([nn.LSTMCell(hidden, hidden) for _ in range(layers)])

    def init_state(self, batch: int, ref: Tensor) -> LSTMState:
        z = ref.new_zeros(batch, self.hidden)
        return [(z, z) for _ in range(self.layers)]

    def _cells(self, h: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        new: LSTMState = []
        for cell, s in zip(self.cells, state):
            hc = cell(h, s)
            new.append(hc)
            h = hc[0]
        return h, new

    def _run(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        return self._cells(self.embed(x), state)

    def _run_sequence(self, xs: Tensor) -> Tensor:
        """(B, T, in) -> (B, T, hidden) from a zero state: the embedding in one call, then the cells over time.

        On a CPU the cells run as one fused multi-layer LSTM call on their own weights (nn.LSTM's math and
        gate order: the same numbers, forward and backward in one kernel each instead of a few small ops
        per cell and step: the demo's predictor 2.6 -> 0.9 ms a step). On CUDA the cells loop inside the
        captured graph, as measured there (cuDNN's LSTM wants its weights in one flat buffer).
        """
        e = self.embed(xs)
        if e.device.type == "cpu":
            weights = [w for cell in self.cells for w in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
            h0 = e.new_zeros(self.layers, e.shape[0], self.hidden)
            return torch.lstm(e, (h0, h0), weights, True, self.layers, 0.0, self.training, False, True)[0]
        state = self.init_state(xs.shape[0], e)
        out = []
        for t in range(xs.shape[1]):
            h, state = self._cells(e[:, t], state)
            out.append(h)
        return torch.stack(out, 1)


class GaussianLSTM(_StackedLSTM):
    """q(z_t | x_t) or the learned prior p(z_t | x_{t-1}): LSTM -> (mu, logvar) -> reparameterized z."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int):
        super().__init__(in_dim, hidden, layers)
        self.mu = nn.Linear(hidden, out_dim)
        self.logvar = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, Tensor, Tensor, LSTMState]:
        h, state = self._run(x, state)
        mu, logvar = self.mu(h), self.logvar(h)
        return reparameterize(mu, logvar), mu, logvar, state

    def sequence(self, xs: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """A whole known input sequence (B, T, in) -> z, mu, logvar (B, T, out); same math as step by step."""
        h = self._run_sequence(xs)
        mu, logvar = self.mu(h), self.logvar(h)
        return reparameterize(mu, logvar, eps), mu, logvar


class PredictorLSTM(_StackedLSTM):
    """Frame predictor: [h_{t-1}, z_t, cond_t] -> LSTMs -> linear -> tanh = next frame embedding."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int):
        super().__init__(in_dim, hidden, layers)
        self.out = nn.Sequential(nn.Linear(hidden, out_dim), nn.Tanh())

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, state = self._run(x, state)
        return self.out(h), state

    def sequence(self, xs: Tensor) -> Tensor:
        """A whole known input sequence (B, T, in) -> frame embeddings (B, T, out)."""
        return self.out(self._run_sequence(xs))


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    """z = mu + eps * sigma (Kingma & Welling 2014), differentiable in mu and logvar; eps ~ N(0, I) unless given."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_elementwise(mu: Tensor, logvar: Tensor, mu_p: Tensor | None = None, logvar_p: Tensor | None = None) -> Tensor:
    """KL(N(mu, sigma) || N(mu_p, sigma_p)) per element (the prior is N(0, I) when mu_p is None)."""
    if mu_p is None or logvar_p is None:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return 0.5 * (logvar_p - logvar) + (logvar.exp() + (mu - mu_p).pow(2)) / (2 * logvar_p.exp()) - 0.5


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, I)) summed over dims, divided by the batch size."""
    return kl_elementwise(mu, logvar).sum() / mu.shape[0]


def kl_gaussians(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N1 || N2) for diagonal Gaussians summed over dims, divided by the batch size (SVG-LP)."""
    return kl_elementwise(mu1, logvar1, mu2, logvar2).sum() / mu1.shape[0]
