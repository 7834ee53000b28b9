"""The decision rule's error rates, measured: simulated demo studies through the real decision code.

The fast version of `make bench-decisions` (which runs 20,000 studies per case): a few thousand studies on
noise fitted to the measured demo seeds (benchmarks/data/demo_seeds.json), failing when a rate misses its
target. Also: the simulator itself (noise fit, true means, one study's bookkeeping).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import decisions as bench
from sweeps.questions import main_effects
from sweeps import sequential as seq
from sweeps import simulate as sim

# helpers


@pytest.fixture(scope="module")
def demo() -> tuple[dict, seq.Plan, sim.Noise]:
    configs, plan, noise, _ = bench.setup()
    return configs, plan, noise


# the simulator


def test_fit_centres_each_configuration_on_seeds_every_configuration_has():
    vals = {("a", 0): 1.0, ("a", 1): 3.0, ("a", 2): 2.0, ("a", 3): 9.0, ("b", 0): 10.0, ("b", 1): 14.0, ("b", 2): 12.0}
    noise = sim.fit(vals, ["a", "b"])  # seed 3 lacks b: left out
    assert noise.rows.tolist() == [[-1.0, -2.0], [1.0, 2.0], [0.0, 0.0]]
    assert noise.cov.tolist() == [[1.0, 2.0], [2.0, 4.0]]
    with pytest.raises(ValueError, match=">= 3 seeds"):
        sim.fit({("a", 0): 1.0, ("b", 0): 2.0}, ["a", "b"])


def test_true_means_make_each_main_effect_equal_its_effect(demo):
    configs, _, _ = demo
    effects = {"kl.mode": 0.4, "tf.start_decay_epoch": -1.5}
    means = sim.true_means(configs, effects)
    vals = {(c, k): m for c, m in means.items() for k in range(3)}
    for q in main_effects(configs):
        _, pa, pb, _, _ = seq.evidence(q, vals, 3)
        assert (pa - pb).mean() == pytest.approx(effects[q.factor])


def test_noise_models_keep_the_measured_spread(demo):
    _, _, noise = demo
    rng = np.random.default_rng(0)
    assert np.cov(noise.draw("normal", rng, 40_000), rowvar=False) == pytest.approx(noise.cov, abs=0.03)
    # resampled: measured rows (+ a little kernel noise); a run degenerate where measured is degenerate again (NaN)
    draws = noise.draw("resampled", rng, 40_000)
    assert np.isnan(draws).mean(axis=0) == pytest.approx(noise.degenerate.mean(axis=0), abs=0.01)
    kept = np.where(noise.degenerate, np.nan, noise.rows)
    n = (~noise.degenerate).sum(axis=0)
    assert np.nanmean(draws, axis=0) == pytest.approx(np.zeros(4), abs=0.02)  # centred on the kept runs
    var = np.nanvar(kept, axis=0, ddof=0) + (sim.SMOOTH ** 2) * np.nanvar(kept, axis=0, ddof=1)
    assert np.nanvar(draws, axis=0) == pytest.approx(var, rel=0.05) and (n >= 5).all()
    heavy = noise.draw("heavy", rng, 40_000)
    assert (heavy < -1.5).mean() > (noise.draw("normal", rng, 40_000) < -1.5).mean()
    with pytest.raises(ValueError, match="noise"):
        noise.draw("cauchy", rng, 1)


def test_a_simulated_study_uses_the_coordinators_looks(demo):
    configs, plan, noise = demo
    big = {f: 10.0 for f in ("kl.mode", "tf.start_decay_epoch")}  # decided at the first look
    decisions, runs = sim.study(configs, plan, noise, "normal", sim.true_means(configs, big), np.random.default_rng(0))
    assert runs == plan.looks[0] * len(configs) and all(d.verdict == seq.BETTER and d.look == 1 for d in decisions.values())
    flat = {f: 0.0 for f in big}
    tiny = seq.Plan(looks=plan.looks, margin=1e-6)  # nothing can be equivalent: every look is used
    decisions, runs = sim.study(configs, tiny, noise, "normal", sim.true_means(configs, flat), np.random.default_rng(0))
    assert runs == plan.looks[-1] * len(configs)


# the error rates (fast version of make bench-decisions)


@pytest.mark.slow
@pytest.mark.parametrize("case, kind, n", [("no difference", "heavy", 2000), ("no difference", "resampled", 1500),
                                           ("at the margin", "normal", 1000), ("twice the margin", "heavy", 600),
                                           ("one real, one null", "resampled", 800)])
def test_the_demo_rule_keeps_its_error_rates(demo, case, kind, n):
    configs, plan, noise = demo
    effects = sim.cases(sorted({q.factor for q in main_effects(configs)}), plan.margin)[case]
    result = sim.run_case(configs, plan, noise, kind, effects, n, seed=11)
    judged = sim.judge(case, result, configs)
    assert judged and all(j["pass"] for j in judged.values()), judged
