"""KL weight and teacher-forcing ratio: exact values, table-driven (REFERENCE.md's definitions)."""

from __future__ import annotations

import pytest

from cvae.config import KlCfg, TfCfg
from cvae.schedules import kl_beta, teacher_forcing_ratio, tf_decay_step

TOL = 1e-12

# KL annealing (Fu et al. 2019): `cycles` equal periods over the run, linear 0 -> 1 over the first
# `ratio` of each, then flat at 1; monotonic = one cycle.

KL_TABLE = [
    # (mode, cycles, ratio, total_iters, it, expected)
    ("monotonic", 3, 0.5, 100, 0, 0.0),
    ("monotonic", 3, 0.5, 100, 25, 0.5),
    ("monotonic", 3, 0.5, 100, 50, 1.0),
    ("monotonic", 3, 0.5, 100, 99, 1.0),
    ("monotonic", 3, 1.0, 100, 10, 0.1),
    ("cyclical", 3, 0.5, 300, 0, 0.0),
    ("cyclical", 3, 0.5, 300, 25, 0.5),
    ("cyclical", 3, 0.5, 300, 50, 1.0),
    ("cyclical", 3, 0.5, 300, 99, 1.0),
    ("cyclical", 3, 0.5, 300, 100, 0.0),
    ("cyclical", 3, 0.5, 300, 125, 0.5),
    ("cyclical", 3, 0.5, 300, 200, 0.0),
    ("cyclical", 3, 0.5, 300, 250, 1.0),
    ("cyclical", 3, 0.5, 300, 299, 1.0),
    # the 25.92 dB report: 4 cycles, ratio 1 (a saw-tooth)
    ("cyclical", 4, 1.0, 400, 0, 0.0),
    ("cyclical", 4, 1.0, 400, 50, 0.5),
    ("cyclical", 4, 1.0, 400, 99, 0.99),
    ("cyclical", 4, 1.0, 400, 100, 0.0),
    ("cyclical", 4, 1.0, 400, 350, 0.5),
]


@pytest.mark.parametrize("mode, cycles, ratio, total, it, expected", KL_TABLE)
def test_kl_beta_table(mode: str, cycles: int, ratio: float, total: int, it: int, expected: float) -> None:
    kl = KlCfg(mode=mode, cycles=cycles, ratio=ratio, beta=1.0)
    assert kl_beta(it, total, kl) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("beta", [1e-4, 1.0, 0.0])
@pytest.mark.parametrize("it", [0, 1, 50, 299])
def test_kl_none_is_the_fixed_beta(beta: float, it: int) -> None:
    assert kl_beta(it, 300, KlCfg(mode="none", beta=beta)) == beta


@pytest.mark.parametrize(
    "mode, total, it, unit",
    [
        ("monotonic", 100, 25, 0.5),
        ("monotonic", 100, 80, 1.0),
        ("cyclical", 300, 125, 0.5),
        ("cyclical", 300, 250, 1.0),
    ],
)
def test_kl_beta_scales_the_annealed_maximum(mode: str, total: int, it: int, unit: float) -> None:
    kl = KlCfg(mode=mode, cycles=3, ratio=0.5, beta=1e-4)
    assert kl_beta(it, total, kl) == pytest.approx(1e-4 * unit, rel=1e-12, abs=1e-18)


def test_kl_beta_stays_in_range_over_a_whole_run() -> None:
    kl = KlCfg(mode="cyclical", cycles=3, ratio=0.5, beta=1.0)
    values = [kl_beta(it, 300, kl) for it in range(300)]
    assert min(values) == 0.0 and max(values) == 1.0
    assert all(0.0 <= v <= 1.0 for v in values)


# Teacher forcing: flat through start_decay_epoch (epochs are 1-based), then down by one step per
# epoch to the lower bound; decay_step 0 = linear to the lower bound by the last epoch.

TF_TABLE = [
    # (ratio, start, step, lower, niter, epoch, expected)
    # explicit step
    *[
        (1.0, 2, 0.25, 0.2, 10, ep, want)
        for ep, want in [(1, 1.0), (2, 1.0), (3, 0.75), (4, 0.5), (5, 0.25), (6, 0.2), (10, 0.2)]
    ],
    # automatic step, decaying from the first epoch: epoch k -> 1 - k/10
    *[(1.0, 0, 0.0, 0.0, 10, k, 1 - k / 10) for k in range(1, 11)],
    # automatic step after 5 flat epochs, down to 0.5 at the last epoch
    *[(1.0, 5, 0.0, 0.5, 10, ep, 1.0) for ep in range(1, 6)],
    (1.0, 5, 0.0, 0.5, 10, 6, 0.9),
    (1.0, 5, 0.0, 0.5, 10, 8, 0.7),
    (1.0, 5, 0.0, 0.5, 10, 10, 0.5),
    # start beyond niter: never decays
    *[(0.8, 20, 0.0, 0.0, 10, ep, 0.8) for ep in (1, 5, 10)],
    (1.0, 10, 0.0, 0.0, 10, 10, 1.0),
]


@pytest.mark.parametrize("ratio, start, step, lower, niter, epoch, expected", TF_TABLE)
def test_teacher_forcing_table(
    ratio: float, start: int, step: float, lower: float, niter: int, epoch: int, expected: float
) -> None:
    tf = TfCfg(ratio=ratio, start_decay_epoch=start, decay_step=step, lower_bound=lower)
    assert teacher_forcing_ratio(epoch, tf, niter) == pytest.approx(expected, abs=TOL)


def test_automatic_step_reaches_the_lower_bound_exactly_at_the_last_epoch() -> None:
    tf = TfCfg(ratio=1.0, start_decay_epoch=75, decay_step=0.0, lower_bound=0.1)
    assert tf_decay_step(tf, 300) == pytest.approx(0.9 / 225, abs=TOL)
    values = [teacher_forcing_ratio(ep, tf, 300) for ep in range(1, 301)]
    assert values[:75] == [1.0] * 75
    assert values[-1] == pytest.approx(0.1, abs=1e-9)
    assert values[-2] > values[-1]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_schedules_are_pure() -> None:
    kl = KlCfg(mode="cyclical", cycles=4, ratio=1.0)
    tf = TfCfg(ratio=1.0, start_decay_epoch=2, decay_step=0.25, lower_bound=0.2)
    assert [kl_beta(50, 400, kl) for _ in range(3)] == [0.5] * 3
    assert [teacher_forcing_ratio(4, tf, 10) for _ in range(3)] == [0.5] * 3
    assert kl == KlCfg(mode="cyclical", cycles=4, ratio=1.0)
    assert tf == TfCfg(ratio=1.0, start_decay_epoch=2, decay_step=0.25, lower_bound=0.2)
