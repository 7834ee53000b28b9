"""Modules and the CVAE: KL terms, reparameterization, shapes, one batched encoder call, gradients, init."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from cvae.config import ModelCfg
from cvae.model import CVAE, count_parameters
from cvae.modules import (
    ARCHS,
    GaussianLSTM,
    PredictorLSTM,
    StepTerms,
    _AddSteps,
    frame_bytes,
    kl_gaussians,
    kl_standard_normal,
    reparameterize,
)
from cvae.trainer import frames_per_call

TINY_MODEL = {k.split(".")[1]: v for k, v in TINY.items() if k.startswith("model.") and k != "model.arch"}
N_PAST, N_FUTURE = 2, 3

# helpers


def _model(arch: str = "dcgan", **kw: object) -> CVAE:
    torch.manual_seed(0)
    return CVAE(ModelCfg(arch=arch, **{**TINY_MODEL, **kw}))  # type: ignore[arg-type]


def _batch(
    b: int = 3, t: int = N_PAST + N_FUTURE, cond_dim: int = 7, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, 64, 64, generator=g), torch.randn(b, t, cond_dim, generator=g)


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# KL and reparameterization


def test_kl_standard_normal_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.randn(5, 8, generator=g, dtype=torch.float64),
        torch.randn(5, 8, generator=g, dtype=torch.float64),
    )
    want = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum() / 5
    assert torch.allclose(kl_standard_normal(mu, logvar), want, rtol=1e-10, atol=1e-12)


def test_kl_standard_normal_is_zero_at_the_prior() -> None:
    assert kl_standard_normal(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_kl_gaussians_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    mu1, lv1, mu2, lv2 = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4))
    want = kl_divergence(Normal(mu1, torch.exp(0.5 * lv1)), Normal(mu2, torch.exp(0.5 * lv2))).sum() / 6
    assert torch.allclose(kl_gaussians(mu1, lv1, mu2, lv2), want, rtol=1e-10, atol=1e-12)
    # against N(0, I) it is the fixed-prior KL
    zeros = torch.zeros_like(mu1)
    assert torch.allclose(kl_gaussians(mu1, lv1, zeros, zeros), kl_standard_normal(mu1, lv1), rtol=1e-12)


def test_reparameterize_gradients_reach_mu_and_logvar() -> None:
    torch.manual_seed(0)
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    (reparameterize(mu, logvar) ** 2).sum().backward()
    for grad in (mu.grad, logvar.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_reparameterize_statistics() -> None:
    torch.manual_seed(0)
    n = 200_000
    mu = torch.tensor([1.5, -2.0]).expand(n, 2)
    logvar = torch.log(torch.tensor([4.0, 0.25])).expand(n, 2)
    z = reparameterize(mu, logvar)
    assert torch.allclose(z.mean(0), torch.tensor([1.5, -2.0]), atol=0.02)
    assert torch.allclose(z.std(0), torch.tensor([2.0, 0.5]), rtol=0.02)


# encoders and decoders


@pytest.mark.parametrize("arch, sizes", [("vgg", (64, 32, 16, 8)), ("dcgan", (32, 16, 8, 4))])
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_encoder_decoder_shapes(arch: str, sizes: tuple[int, ...], width: float) -> None:
    enc_cls, dec_cls = ARCHS[arch]
    enc, dec = enc_cls(16, width), dec_cls(16, width)
    x = torch.rand(2, 3, 64, 64)
    h, skips = enc(x)
    assert h.shape == (2, 16)
    assert [s.shape[-1] for s in skips] == list(sizes)
    assert [s.shape[-2] for s in skips] == list(sizes)
    assert all(s.shape[0] == 2 for s in skips)
    out = dec(h, skips)
    assert out.shape == (2, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output
    assert h.abs().max() <= 1  # tanh embedding


@pytest.mark.parametrize("arch, base", [("vgg", (64, 128, 256, 512)), ("dcgan", (64, 128, 256, 512))])
def test_width_scales_channel_counts(arch: str, base: tuple[int, ...]) -> None:
    enc_cls, _ = ARCHS[arch]
    x = torch.rand(2, 3, 64, 64)
    for width in (0.125, 0.5):
        _, skips = enc_cls(16, width)(x)
        assert [s.shape[1] for s in skips] == [int(c * width) for c in base]


def test_encode_is_one_batched_call_equal_to_per_frame() -> None:
    model = _model("vgg").eval()
    x, _ = _batch(b=2, t=4)
    calls = _count_calls(model.encoder)
    with torch.no_grad():
        h, skips = model.encode(x)
        assert calls[0] == 1
        assert h.shape == (2, 4, 16)
        for t in range(4):
            h_t, skips_t = model.encoder(x[:, t])
            assert torch.allclose(h[:, t], h_t, atol=1e-5)
            for s, s_t in zip(skips, skips_t):
                assert torch.allclose(s[:, t], s_t, atol=1e-5)


def test_calls_cut_into_whole_time_steps_of_every_sequence() -> None:
    """frames_per_call on a CPU: each call holds all b sequences at some time steps (BatchNorm's training
    statistics see the whole batch), frames time-major, and the outputs come back as (b, t) views."""
    model = _model("dcgan")
    seen: list[list[int]] = []

    def fn(x: Tensor) -> Tensor:
        seen.append(x[:, 0].tolist())
        return x * 2

    x = torch.arange(12.0).view(3, 4, 1)  # b=3 sequences x t=4 steps: value = 4 * sequence + step
    model.frames_per_call = 7  # 6 frames (2 whole steps) per call
    assert torch.equal(model._per_frame(fn, x), 2 * x)
    assert seen == [[0, 4, 8, 1, 5, 9], [2, 6, 10, 3, 7, 11]]
    seen.clear()
    model.frames_per_call = 2  # fewer than b: one whole step per call all the same
    model._per_frame(fn, x)
    assert seen == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    seen.clear()
    model.frames_per_call = 12
    assert torch.equal(model._per_frame(fn, x), 2 * x)
    assert seen == [[0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]]


def test_the_skip_frames_fill_calls_of_their_own() -> None:
    """The encoder's skips are kept for the first `keep` steps only: calls are cut there, so no call's maps
    are sliced (a slice's backward is a zero-filled map of the whole call)."""
    model = _model("dcgan")
    model.frames_per_call = 8 * 16
    assert model._chunks(16, 12, 2) == [2, 8, 2]
    assert model._chunks(16, 12, 11) == [8, 3, 1]
    assert model._chunks(16, 12, 12) == [8, 4]
    assert model._chunks(16, 8, 2) == [2, 6]  # would fit one call: cut all the same
    assert model._chunks(16, 8, 8) == [8]
    model.frames_per_call = 0  # CUDA: one call, the skips sliced from it
    assert model._chunks(16, 12, 2) == [12]
    x = torch.rand(3, 5, 3, 64, 64)
    for fpc in (0, 6):  # one call (maps sliced), calls of 2 steps (maps of their own)
        model.frames_per_call = fpc
        h, maps = model.encode(x, 2)
        assert h.shape[:2] == (3, 5) and all(m.shape[:2] == (3, 2) for m in maps)


@pytest.mark.parametrize("teacher_forcing", [True, False])
@pytest.mark.parametrize("last_frame_skip", [False, True])
@pytest.mark.parametrize("frames", [4, 7, 9])  # 1, 2 and 3 time steps of 3 sequences per call
def test_chunked_calls_compute_the_same_loss_in_eval_mode(
    teacher_forcing: bool, last_frame_skip: bool, frames: int
) -> None:
    model = _model("vgg", last_frame_skip=last_frame_skip).eval()
    x, c = _batch(b=3, t=6)
    eps = torch.randn(3, 5, model.cfg.z_dim)
    whole = model(x, c, N_PAST, teacher_forcing, eps=eps)
    (whole.mse + whole.kld).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.frames_per_call = frames
    chunked = model(x, c, N_PAST, teacher_forcing, eps=eps)
    (chunked.mse + chunked.kld).backward()
    assert torch.allclose(whole.mse, chunked.mse, rtol=1e-5) and torch.allclose(whole.kld, chunked.kld, rtol=1e-5)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("channels_last", [False, True])
def test_step_terms_add_like_a_broadcast_add(channels_last: bool) -> None:
    """A decoder call over 5 steps of b=2 sequences: steps 0-1 read their own skip terms, 2-4 one shared
    frame's; the same values and gradients as gathering the terms per frame and adding them."""
    g = torch.Generator().manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.randn(10, 3, 4, 4, generator=g, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    own = torch.randn(2, 2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    shared = torch.randn(1, 2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    gathered = lambda y, own, shared: y + torch.cat([own, shared.expand(3, -1, -1, -1, -1)]).flatten(0, 1)  # noqa: E731
    ours = lambda y, own, shared: _AddSteps.apply(y, [(0, 2), (2, 5)], own, shared)  # noqa: E731
    assert torch.equal(ours(y, own, shared), gathered(y, own, shared))
    assert torch.autograd.gradcheck(ours, (y, own, shared))
    grad = torch.randn(10, 3, 4, 4, generator=g, dtype=torch.float64)
    a = torch.autograd.grad(ours(y, own, shared), (y, own, shared), grad)
    b = torch.autograd.grad(gathered(y, own, shared), (y, own, shared), grad)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert isinstance(StepTerms([(0, 5)], [shared]), StepTerms)


def test_frame_mse_is_mse_loss_with_a_gradient_in_the_prediction_s_layout() -> None:
    import torch.nn.functional as F

    from cvae.model import frame_mse

    g = torch.Generator().manual_seed(5)
    pred = torch.rand(4, 3, 8, 8, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    target = torch.rand(4, 3, 8, 8, generator=g)
    ours, (g_ours,) = frame_mse(pred, target), torch.autograd.grad(frame_mse(pred, target), pred)
    ref, (g_ref,) = F.mse_loss(pred, target), torch.autograd.grad(F.mse_loss(pred, target), pred)
    assert torch.allclose(ours, ref, rtol=1e-6) and torch.allclose(g_ours, g_ref, rtol=1e-6)
    assert g_ours.is_contiguous(memory_format=torch.channels_last) and not g_ref.is_contiguous(
        memory_format=torch.channels_last
    )
    both = torch.rand(4, 3, 8, 8, generator=g, requires_grad=True)
    assert torch.allclose(
        torch.autograd.grad(frame_mse(pred.detach(), both), both)[0],
        torch.autograd.grad(F.mse_loss(pred.detach(), both), both)[0],
        rtol=1e-6,
    )


@pytest.mark.parametrize("cls, layers", [(GaussianLSTM, 1), (PredictorLSTM, 2)])
def test_sequence_lstms_equal_their_cells_step_by_step(cls: type, layers: int) -> None:
    """On a CPU a known input sequence runs as one fused LSTM call: the same outputs and gradients (float32)
    as the cells stepped one time step at a time, which is how the course, predict() and CUDA run them."""
    torch.manual_seed(0)
    lstm = cls(10, 6, 16, layers).train()
    xs = torch.randn(4, 7, 10, requires_grad=True)

    def stepped() -> Tensor:
        state, out = lstm.init_state(4, xs), []
        for t in range(7):
            o = lstm(xs[:, t], state)
            out.append(torch.cat(o[1:3], -1) if cls is GaussianLSTM else o[0])  # mu and logvar, or the embedding
            state = o[-1]
        return torch.stack(out, 1)

    fused = torch.cat(lstm.sequence(xs)[1:], -1) if cls is GaussianLSTM else lstm.sequence(xs)
    grad = torch.randn_like(fused)
    g_fused = torch.autograd.grad(fused, [xs, *lstm.parameters()], grad)
    ref = stepped()
    g_ref = torch.autograd.grad(ref, [xs, *lstm.parameters()], grad)
    assert torch.allclose(fused, ref, atol=1e-6)
    for a, b in zip(g_fused, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "vgg"])
@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_channels_last_computes_the_same_loss_and_gradients(arch: str, teacher_forcing: bool) -> None:
    """The CPU default layout (channels-last, calls of 2 steps): the same numbers as the default layout."""
    plain = _model(arch).eval()
    last = _model(arch).eval().to(memory_format=torch.channels_last)
    x, c = _batch(b=3, t=6)
    eps = torch.randn(3, 5, plain.cfg.z_dim)
    losses = []
    for model in (plain, last):
        model.frames_per_call = 7
        terms = model(x, c, N_PAST, teacher_forcing, eps=eps)
        (terms.mse + terms.kld).backward()
        losses.append(terms.mse.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for p, q in zip(plain.parameters(), last.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_frames_per_call_on_a_cpu_keeps_a_call_within_its_memory_budget() -> None:
    """-1 resolves to all frames on CUDA and, on a CPU, to 8 MiB of the widest feature map per call."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    demo, lab_quarter, lab = ModelCfg(arch="dcgan", width=0.25), ModelCfg(arch="vgg", width=0.25), ModelCfg(arch="vgg")
    assert frame_bytes("dcgan", 0.25) == 16 * 32 * 32 * 4 and frame_bytes("vgg", 1.0) == 64 * 64 * 64 * 4
    assert [frames_per_call(-1, cpu, m) for m in (demo, lab_quarter, lab)] == [128, 32, 8]
    assert frames_per_call(-1, cuda, lab) == 0
    assert frames_per_call(0, cpu, lab) == 0 and frames_per_call(5, cuda, demo) == 5


# the CVAE forward


@pytest.mark.parametrize("arch", ["vgg", "dcgan"])
@pytest.mark.parametrize("learned_prior", [False, True])
@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_forward_is_finite_and_every_part_gets_gradients(arch: str, learned_prior: bool, teacher_forcing: bool) -> None:
    model = _model(arch, learned_prior=learned_prior).train()
    x, c = _batch()
    terms = model(x, c, N_PAST, teacher_forcing)
    assert terms.mse.dim() == 0 and terms.kld.dim() == 0
    assert torch.isfinite(terms.mse) and torch.isfinite(terms.kld)
    assert terms.mse > 0 and terms.kld >= 0
    (terms.mse + terms.kld).backward()
    parts = ["encoder", "decoder", "posterior", "predictor"] + (["prior"] if learned_prior else [])
    for name in parts:
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads, f"{name} got no gradient"
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert (model.prior is not None) == learned_prior


@pytest.mark.parametrize("teacher_forcing, t", [(True, 5), (True, 8), (False, 5), (False, 8)])
def test_encoder_calls_per_forward(teacher_forcing: bool, t: int) -> None:
    model = _model()
    x, c = _batch(b=2, t=t)
    calls = _count_calls(model.encoder)
    model(x, c, N_PAST, teacher_forcing)
    assert calls[0] == (1 if teacher_forcing else 1 + (t - 1 - N_PAST))


@pytest.mark.parametrize("learned_prior", [False, True])
def test_predict_shape_and_conditioning_frames(learned_prior: bool) -> None:
    model = _model(learned_prior=learned_prior).eval()
    x, c = _batch(b=2, t=N_PAST + N_FUTURE)
    out = model.predict(x, c, N_PAST, N_FUTURE)
    assert out.shape == (2, N_PAST + N_FUTURE, 3, 64, 64)
    assert torch.equal(out[:, :N_PAST], x[:, :N_PAST])
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_predict_reencodes_only_predicted_frames() -> None:
    model = _model().eval()
    x, c = _batch(b=2, t=N_PAST + N_FUTURE)
    calls = _count_calls(model.encoder)
    model.predict(x, c, N_PAST, N_FUTURE)
    assert calls[0] == 1 + (N_FUTURE - 1)


def test_lstm_state_is_created_per_batch() -> None:
    model = _model(learned_prior=True)
    for b in (2, 5, 2):
        x, c = _batch(b=b)
        model.train()
        terms = model(x, c, N_PAST, teacher_forcing=False)
        (terms.mse + terms.kld).backward()
        model.eval()
        assert model.predict(x, c, N_PAST, N_FUTURE).shape[0] == b


def test_condition_changes_the_prediction() -> None:
    model = _model().eval()
    x, c = _batch(b=2)
    torch.manual_seed(3)
    a = model.predict(x, c, N_PAST, N_FUTURE)
    torch.manual_seed(3)
    b = model.predict(x, c + 1.0, N_PAST, N_FUTURE)
    assert not torch.equal(a[:, N_PAST:], b[:, N_PAST:])


# init and size


def test_init_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = CVAE(ModelCfg(arch="vgg", width=0.5, g_dim=64, z_dim=16, rnn_size=64))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    conv_w = torch.cat([m.weight.flatten() for m in convs])
    lin_w = torch.cat([m.weight.flatten() for m in linears])
    bn_w = torch.cat([m.weight.flatten() for m in norms])
    assert conv_w.std().item() == pytest.approx(0.02, rel=0.02)
    assert abs(conv_w.mean().item()) < 1e-3
    assert lin_w.std().item() == pytest.approx(0.02, rel=0.05)
    assert bn_w.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn_w.std().item() == pytest.approx(0.02, rel=0.2)
    for m in convs + linears + norms:
        assert m.bias is None or torch.count_nonzero(m.bias) == 0, m


def test_full_size_vgg64_builds() -> None:
    model = CVAE(ModelCfg(arch="vgg", width=1.0, g_dim=128, z_dim=64, rnn_size=256))
    n = count_parameters(model)
    print(f"paper-size VGG64 CVAE: {n:,} parameters")
    assert n > 10_000_000
    model.eval()  # BatchNorm in train mode needs more than one value per channel at 1x1
    h, skips = model.encoder(torch.rand(1, 3, 64, 64))
    assert h.shape == (1, 128) and [s.shape[1] for s in skips] == [64, 128, 256, 512]


# the fast step against the course-order reference step


@pytest.mark.parametrize("arch", ["vgg", "dcgan"])
@pytest.mark.parametrize("learned_prior", [False, True])
@pytest.mark.parametrize("teacher_forcing", [True, False])
@pytest.mark.parametrize("last_frame_skip", [False, True])
def test_forward_equals_the_reference_step_loss_and_gradients(
    arch: str, learned_prior: bool, teacher_forcing: bool, last_frame_skip: bool
) -> None:
    """Batched encoder/decoder and sequence LSTMs compute the same loss and gradients as the per-step order.

    BatchNorm in eval mode (batch statistics differ by construction when frames are batched) and the
    same posterior noise for both.
    """
    from benchmarks.reference import reference_forward

    model = _model(arch, learned_prior=learned_prior, last_frame_skip=last_frame_skip).double().eval()
    x, c = _batch(b=3, t=6)
    x, c = x.double(), c.double()
    eps = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def loss_and_grads(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        mse, kld = fn()
        loss = mse + 0.5 * kld
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ours, g_ours = loss_and_grads(lambda: (lambda s: (s.mse, s.kld))(model(x, c, N_PAST, teacher_forcing, eps=eps)))
    ref, g_ref = loss_and_grads(lambda: reference_forward(model, x, c, N_PAST, teacher_forcing, eps=eps))
    assert torch.allclose(ours, ref, rtol=1e-10, atol=0)
    assert len(g_ours) == len(g_ref)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_forward_per_step_terms_add_up() -> None:
    model = _model().train()
    x, c = _batch(b=3, t=6)
    terms = model(x, c, N_PAST, True)
    assert terms.mse_t.shape == (5,) and terms.kld_td.shape == (5, 4) and terms.mu.shape == (3, 5, 4)
    assert torch.allclose(terms.mse, terms.mse_t.sum()) and torch.allclose(terms.kld, terms.kld_td.sum())
    assert (terms.kld_td >= 0).all()
