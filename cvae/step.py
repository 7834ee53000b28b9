"""One training iteration (forward, loss, backward, clip, Adam step), eager or replayed from CUDA graphs.

`make_step(...)` returns a callable `step(x, cond, beta, teacher_forcing) -> tensor([loss, mse, kld])`
that never waits on the host. On CUDA with `run.cuda_graphs`, the whole iteration of each
teacher-forcing branch is captured once (Adam with `capturable=True`, the KL weight a device tensor)
and replayed: the GPU then runs the step without a Python launch per kernel. Anywhere else (CPU,
option off, a batch of another shape such as a short last batch) the same math runs eagerly.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from cvae.model import CVAE

Step = Callable[[Tensor, Tensor, float, bool], Tensor]
WARMUP = 3  # eager iterations on a side stream before capture (cuDNN picks its algorithms, Adam makes its state)


def make_optimizer(model: CVAE, lr: float, beta1: float, capturable: bool) -> torch.optim.Adam:
    """Adam as the course sets it; `capturable` keeps its step count on the device (needed inside a graph).

    On a CPU the fused update (one kernel per parameter instead of about ten ops: the demo's 1.6 -> 0.4 ms
    a step); on CUDA the default multi-tensor update, as measured there.
    """
    cpu = next(model.parameters()).device.type == "cpu"
    return torch.optim.Adam(
        model.parameters(),
        lr=lr,
        betas=(beta1, 0.999),
        capturable=capturable,
        fused=True if cpu and not capturable else None,
    )


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Resume an optimizer's state, keeping how THIS process runs it: torch restores the saved group flags
    (fused, capturable), which belong to the device the checkpoint was written on."""
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, kept in zip(opt.param_groups, flags):
        group.update(kept)


def _iteration(
    model: CVAE,
    opt: torch.optim.Optimizer,
    x: Tensor,
    c: Tensor,
    beta: Tensor | float,
    n_past: int,
    tf: bool,
    amp: bool,
    grad_clip: float,
) -> Tensor:
    """The iteration's math, shared by the eager and the captured step: returns [loss, mse, kld] (detached)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        terms = model(x, c, n_past, tf)
    loss = terms.mse + beta * terms.kld
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return torch.stack([loss.detach(), terms.mse.detach(), terms.kld.detach()]).double()


def eager_step(model: CVAE, opt: torch.optim.Optimizer, n_past: int, amp: bool, grad_clip: float) -> Step:
    """The plain step: Python drives every kernel."""

    def step(x: Tensor, c: Tensor, beta: float, tf: bool) -> Tensor:
        opt.zero_grad(set_to_none=True)
        return _iteration(model, opt, x, c, beta, n_past, tf, amp, grad_clip)

    return step


class GraphedStep:
    """One CUDA graph per teacher-forcing branch, captured at the first batch of that branch and replayed.

    Inputs are copied into static tensors before each replay; batches of any other shape fall back to
    the eager step (same parameters, same optimizer state).
    """

    def __init__(self, model: CVAE, opt: torch.optim.Optimizer, n_past: int, amp: bool, grad_clip: float):
        self.model, self.opt, self.n_past, self.amp, self.grad_clip = model, opt, n_past, amp, grad_clip
        self.eager = eager_step(model, opt, n_past, amp, grad_clip)
        self.graphs: dict[bool, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, Tensor]] = {}
        self.shape: tuple[torch.Size, torch.Size] | None = None

    def _capture(self, x: Tensor, c: Tensor, tf: bool) -> None:
        sx, sc = x.clone(), c.clone()
        sbeta = torch.zeros((), device=x.device)
        weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        moments = {p: {k: v.clone() for k, v in st.items()} for p, st in self.opt.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up iterations: cuDNN settles, Adam creates its state
            for _ in range(WARMUP):
                self.opt.zero_grad(set_to_none=True)
                _iteration(self.model, self.opt, sx, sc, sbeta, self.n_past, tf, self.amp, self.grad_clip)
        torch.cuda.current_stream().wait_stream(side)
        # undo the warm-up in place (the graph records these very tensors): training goes on as if eager
        self.model.load_state_dict(weights)
        for p, st in self.opt.state.items():
            for k, v in st.items():
                if not torch.is_tensor(v):
                    continue
                if p in moments:
                    v.copy_(moments[p][k])
                else:
                    v.zero_()
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)  # the graph allocates (and then overwrites) its own gradients
        with torch.cuda.graph(graph):
            out = _iteration(self.model, self.opt, sx, sc, sbeta, self.n_past, tf, self.amp, self.grad_clip)
        self.graphs[tf] = (graph, sx, sc, sbeta, out)

    def __call__(self, x: Tensor, c: Tensor, beta: float, tf: bool) -> Tensor:
        shape = (x.shape, c.shape)
        if self.shape is None:
            self.shape = shape
        if shape != self.shape:
            return self.eager(x, c, beta, tf)
        if tf not in self.graphs:
            self._capture(x, c, tf)
        graph, sx, sc, sbeta, out = self.graphs[tf]
        sx.copy_(x, non_blocking=True)
        sc.copy_(c, non_blocking=True)
        sbeta.fill_(beta)
        graph.replay()
        return out.clone()


def make_step(
    model: CVAE,
    opt: torch.optim.Optimizer,
    device: torch.device,
    n_past: int,
    amp: bool,
    grad_clip: float,
    cuda_graphs: bool,
) -> Step:
    """The fastest step that applies: graphed on CUDA when asked for, eager otherwise."""
    if cuda_graphs and device.type == "cuda":
        return GraphedStep(model, opt, n_past, amp, grad_clip)
    return eager_step(model, opt, n_past, amp, grad_clip)
