"""The decision rule's error rates, measured: simulated demo studies through the real decision code.

The fast version of `make bench-decisions` (which runs 20,000 studies per case): a few thousand studies on
noise fitted to the measured demo seeds (benchmarks/data/demo_seeds.json), the contaminated noise models among
them (one-sided outliers, one side failing, the study's own failures), failing when a rate misses its target.
Also: the simulator itself (noise fit, noise models, true means and truths, one study's bookkeeping) and the
picks of sampled studies (sweeps/selection.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import decisions as bench
from sweeps import evidence, selection as sel, sequential as seq, simulate as sim
from sweeps.questions import main_effects

NAN = math.nan

# helpers


@pytest.fixture(scope="module")
def demo() -> tuple[dict, seq.Plan, sim.Noise]:
    configs, plan, noise, _ = bench.setup()
    return configs, plan, noise


# the simulator


def test_fit_centres_each_configuration_on_its_trained_runs_and_keeps_failures():
    vals = {("a", 0): 1.0, ("a", 1): 3.0, ("a", 2): 2.0, ("a", 3): 9.0, ("b", 0): 10.0, ("b", 1): 14.0, ("b", 2): 99.0}
    noise = sim.fit(vals, ["a", "b"], failed={("b", 2)})  # seed 3 lacks b: left out; b's seed 2 collapsed
    assert noise.rows[:, 0].tolist() == [-1.0, 1.0, 0.0]
    assert noise.rows[:2, 1].tolist() == [-2.0, 2.0] and math.isnan(noise.rows[2, 1])
    assert noise.failed.tolist() == [[False, False], [False, False], [False, True]]
    # pairwise complete (b's two trained seeds against a's), projected onto the PSD cone: [[1, 4], [4, 8]] is not
    assert np.linalg.eigvalsh(noise.cov).min() >= -1e-12 and noise.cov[0, 1] == noise.cov[1, 0] > 0
    complete = sim.fit(vals, ["a", "b"])  # nothing failed: the plain sample covariance of the rows
    assert complete.cov.ravel().tolist() == pytest.approx(np.cov(complete.rows, rowvar=False).ravel().tolist())
    with pytest.raises(ValueError, match=">= 3 seeds"):
        sim.fit({("a", 0): 1.0, ("b", 0): 2.0}, ["a", "b"])


def test_true_means_make_each_main_effect_equal_its_effect(demo):
    configs, plan, _ = demo
    effects = {"kl.mode": 0.4, "tf.start_decay_epoch": -1.5}
    means = sim.true_means(configs, effects)
    vals = {(c, k): m for c, m in means.items() for k in range(3)}
    for q in main_effects(configs):
        ev = evidence.evidence(q, vals, 3, plan.margin)
        assert (ev.a - ev.b).mean() == pytest.approx(effects[q.factor])


def test_noise_models_keep_the_measured_spread_and_fail_where_they_should(demo):
    configs, _, noise = demo
    rng = np.random.default_rng(0)
    assert np.cov(noise.draw("normal", rng, 40_000), rowvar=False) == pytest.approx(noise.cov, abs=0.01)
    # resampled: measured rows, their failures where they were measured
    draws = noise.draw("resampled", rng, 40_000)
    assert np.isnan(draws).mean(axis=0) == pytest.approx(noise.failed.mean(axis=0), abs=0.01)
    assert np.nanmean(draws, axis=0) == pytest.approx(np.zeros(4), abs=0.02)  # centred on the trained runs
    # shuffled: as many failures a row as measured, at any configuration
    shuffled = np.isnan(noise.draw("shuffled", rng, 40_000)).mean(axis=0)
    assert shuffled == pytest.approx(np.full(4, noise.failed.mean()), abs=0.01)
    side_a, side_b = np.array(noise.side_a), np.array(noise.side_b)
    assert side_a.sum() == side_b.sum() == 2 and not (side_a & side_b).any()
    for p in (0.1, 0.3):
        failed = np.isnan(noise.draw(f"failures {p:.0%}", rng, 40_000)).mean(axis=0)
        assert failed == pytest.approx(np.where(side_a, p, 0.0), abs=0.01)
    # outliers: one run in 12 of side B falls 2-3 SDs; side A untouched
    low = (noise.draw("outliers", rng, 40_000) < -2 * np.sqrt(np.diag(noise.cov))).mean(axis=0)
    assert low[side_b] == pytest.approx([sim.OUTLIER_P] * 2, abs=0.01) and (low[side_a] < 0.03).all()
    heavy = noise.draw("heavy", rng, 40_000)
    assert (heavy < -1.5).mean() > (noise.draw("normal", rng, 40_000) < -1.5).mean()
    with pytest.raises(ValueError, match="noise"):
        noise.draw("cauchy", rng, 1)


def test_truth_follows_the_value_effect_else_the_side_that_fails_more(demo):
    configs, _, noise = demo
    kl, tf = main_effects(configs)  # kl.mode: cyclical vs monotonic; tf.start_decay_epoch: 1 vs 4
    fail = dict(zip(noise.configs, noise.fail_rates("failures 30%")))
    assert sim.truth(tf, {"kl.mode": 0.0, "tf.start_decay_epoch": 0.0}, fail) == -1  # start 1 fails: it is worse
    assert sim.truth(kl, {"kl.mode": 0.0, "tf.start_decay_epoch": 0.0}, fail) == 0  # both KL modes fail alike
    assert sim.truth(kl, {"kl.mode": 1.0, "tf.start_decay_epoch": 0.0}, fail) == 1
    assert sim.failure_signs(configs, noise, "failures 30%") == {"tf.start_decay_epoch": -1}
    assert sim.failure_signs(configs, noise, "normal") == {}


def test_a_simulated_study_uses_the_coordinators_looks(demo):
    configs, plan, noise = demo
    big = {f: 10.0 for f in ("kl.mode", "tf.start_decay_epoch")}  # decided at the first look
    decisions, runs = sim.study(configs, plan, noise, "normal", sim.true_means(configs, big), np.random.default_rng(0))
    assert runs == plan.looks[0] * len(configs) and all(
        d.verdict == seq.BETTER and d.look == 1 for d in decisions.values()
    )
    flat = {f: 0.0 for f in big}
    tiny = seq.Plan(looks=plan.looks, margin=1e-6)  # nothing can be equivalent: every look is used
    decisions, runs = sim.study(configs, tiny, noise, "normal", sim.true_means(configs, flat), np.random.default_rng(0))
    assert runs == plan.looks[-1] * len(configs)


# the error rates (fast version of make bench-decisions)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, kind, n",
    [
        ("no difference", "shuffled", 1500),
        ("no difference", "outliers", 1500),
        ("at the margin", "failures 30%", 800),
        ("no difference", "heavy", 1000),
        ("twice the margin", "shuffled", 500),
        ("one real, one null", "resampled", 600),
        ("at the margin", "normal", 600),
    ],
)
def test_the_demo_rule_keeps_its_error_rates(demo, case, kind, n):
    configs, plan, noise = demo
    factors = sorted({q.factor for q in main_effects(configs)})
    effects = sim.cases(factors, plan.margin, sim.failure_signs(configs, noise, kind))[case]
    result = sim.run_case(configs, plan, noise, kind, effects, n, seed=11)
    judged = sim.judge(case, result, configs)
    assert judged and all(j["pass"] for j in judged.values() if "pass" in j), judged


# picks of sampled studies


def test_utility_counts_failures_a_margin_below_the_worst_mean():
    means, fail = np.array([1.0, 0.0, -1.0]), np.array([0.0, 0.5, 0.0])
    assert sel.utility(means, fail, 1.0).tolist() == [1.0, 0.5 * 0.0 + 0.5 * -2.0, -1.0]


def test_a_race_picks_among_those_standing_and_a_dead_configuration_never_wins():
    plan = seq.Plan(looks=(3, 4, 5), margin=1.0)
    rng = np.random.default_rng(3)
    # c1 is 3 dB above the others; c2 fails on every seed; noise small
    pick, runs, out = sel.race_pick(
        np.array([0.0, 3.0, 10.0, 0.2]), np.array([0.0, 0.0, 1.0, 0.0]), 0.1, 0.5, plan, rng
    )
    assert pick == "c1" and "c0" in out and runs >= 4 * 3
    pick, runs = sel.fixed_pick(
        np.array([0.0, 3.0, 10.0]), np.array([0.0, 0.0, 1.0]), 0.1, 0.5, sel.Design("fixed", seeds=3), 1.0, rng
    )
    assert pick == "c1" and runs == 9


@pytest.mark.slow
def test_the_shipped_race_picks_as_well_as_a_fixed_design_of_its_runs(demo):
    _, plan, noise = demo
    pop = sel.Population("spread 1 dB, a third fail 30%", 1.0, 1 / 3, 0.3)
    race = sel.run_selection(pop, sel.Design("race", looks=plan.looks), 6, 0.27, 0.3, plan.margin, 300, 5)
    fixed = sel.run_selection(
        pop, sel.Design("fixed", seeds=round(race["mean_runs"] / 6)), 6, 0.27, 0.3, plan.margin, 300, 5
    )
    single = sel.run_selection(pop, sel.Design("one seed", seeds=1), 6, 0.27, 0.3, plan.margin, 300, 5)
    assert race["within_margin"] >= 0.95 and race["mean_regret"] <= fixed["mean_regret"] + 0.05
    assert race["mean_regret"] < single["mean_regret"]
