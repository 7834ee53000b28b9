"""sweeps.sequential: questions of a design, paired evidence, verdicts per look, and the look schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweeps import evidence, looks, sequential as seq, stats
from sweeps.design import config_id, grid_points
from sweeps.questions import Question, main_effects, setting_pair

GRID = {"tf.start_decay_epoch": [1, 4], "kl.mode": ["monotonic", "cyclical"]}
POINTS = grid_points(GRID)
CONFIGS = {config_id(p): p for p in POINTS}
CID = {(p["tf.start_decay_epoch"], p["kl.mode"]): config_id(p) for p in POINTS}
TF, KL = "tf.start_decay_epoch: 1 vs 4", "kl.mode: cyclical vs monotonic"

# helpers


def values_of(table: dict[tuple[int, str], list[float]]) -> dict[tuple[str, int], float]:
    return {(CID[c], k): v for c, vs in table.items() for k, v in enumerate(vs) if v is not None}


def q(name: str) -> Question:
    return next(x for x in main_effects(CONFIGS) if x.name == name)


# questions


def test_main_effects_of_a_two_by_two_grid_pair_cells_matched_on_the_other_factor():
    qs = main_effects(CONFIGS)
    assert [x.name for x in qs] == [KL, TF]  # factors sorted by name, levels as strings
    kl = q(KL)
    assert set(kl.cells) == {
        (CID[(1, "cyclical")], CID[(1, "monotonic")]),
        (CID[(4, "cyclical")], CID[(4, "monotonic")]),
    }
    assert set(kl.side_a) == {CID[(1, "cyclical")], CID[(4, "cyclical")]} and kl.configs == set(CONFIGS)
    assert (kl.kind, kl.factor, kl.a, kl.b) == ("main effect", "kl.mode", "cyclical", "monotonic")


def test_three_levels_give_three_questions_and_continuous_settings_none():
    three = {config_id({"x": v}): {"x": v} for v in (1, 2, 3)}
    assert [x.name for x in main_effects(three)] == ["x: 1 vs 2", "x: 1 vs 3", "x: 2 vs 3"]
    many = {config_id({"lr": v}): {"lr": v} for v in (0.1, 0.2, 0.3, 0.4, 0.5)}
    assert main_effects(many) == []


# evidence


def test_evidence_averages_the_cells_of_each_seed_and_skips_missing_pairs():
    vals = values_of(
        {
            (1, "cyclical"): [24.0, 25.0, 26.0],
            (1, "monotonic"): [23.0, 24.5, None],
            (4, "cyclical"): [22.0, 23.0, 21.0],
            (4, "monotonic"): [22.0, 22.0, 20.0],
        }
    )
    ev = evidence.evidence(q(KL), vals, 3, margin=1.0)
    # seed 0: cells (24-23) and (22-22); seed 1: (25-24.5), (23-22); seed 2: only tf=4 has both sides
    assert ev.seeds == [0, 1, 2]
    assert ev.a.tolist() == [23.0, 24.0, 21.0] and ev.b.tolist() == [22.5, 23.25, 20.0]
    assert sorted(ev.all_a.tolist()) == [21.0, 22.0, 23.0, 24.0, 25.0, 26.0] and len(ev.all_b) == 5
    assert (ev.failed_a, ev.failed_b, ev.more_a, ev.more_b, ev.results) == (0, 0, 0, 0, 3)
    assert ev.counted.tolist() == pytest.approx((ev.a - ev.b).tolist())  # nothing failed: the same differences
    assert evidence.evidence(q(KL), vals, 2, margin=1.0).seeds == [0, 1]


# verdicts at one look


def test_a_clear_difference_is_better_beyond_the_margin():
    tf1 = [25.0, 25.4, 24.8, 25.2, 25.1]
    tf4 = [22.0, 22.3, 21.9, 22.2, 22.05]
    wiggle = [0.1, -0.1, 0.05, -0.05, 0.0]
    vals = values_of(
        {
            (1, "cyclical"): tf1,
            (1, "monotonic"): [v + w for v, w in zip(tf1, wiggle)],
            (4, "cyclical"): tf4,
            (4, "monotonic"): [v - w for v, w in zip(tf4, wiggle)],
        }
    )
    plan = seq.Plan(looks=(5,), margin=1.0)
    d = seq.decide_look(main_effects(CONFIGS), vals, plan, 1)
    assert d[TF].verdict == seq.BETTER and d[TF].margin == "beyond the margin" and d[TF].test == stats.PAIRED_T
    assert d[TF].diff == pytest.approx(np.mean(tf1) - np.mean(tf4))
    # the KL effect is 0 dB, +-0.1 dB from seed to seed: equivalent within +-1 dB
    assert d[KL].verdict == seq.EQUIVALENT and d[KL].p_equivalence < 0.05
    assert (d[TF].look, d[TF].seeds, d[TF].runs) == (1, 5, 20)


def test_holm_within_the_family_and_the_verdict_flips_at_alpha():
    rng = np.random.default_rng(0)
    table = {c: (25 + rng.normal(0, 0.3, 6)).tolist() for c in CID}
    vals = values_of(table)
    plan = seq.Plan(looks=(6,), margin=0.01)
    d = seq.decide_look(main_effects(CONFIGS), vals, plan, 1)
    raw = [d[KL].p_sequential, d[TF].p_sequential]
    assert [d[KL].p_adjusted, d[TF].p_adjusted] == pytest.approx(stats.holm(raw).tolist())
    assert [d[KL].p_sequential, d[TF].p_sequential] == pytest.approx([d[KL].p_value, d[TF].p_value])  # one look
    p = d[TF].p_adjusted
    at = seq.decide_look([q(TF), q(KL)], vals, seq.Plan(looks=(6,), margin=0.01, alpha=p), 1)
    below = seq.decide_look([q(TF), q(KL)], vals, seq.Plan(looks=(6,), margin=0.01, alpha=p * 0.999), 1)
    assert at[TF].verdict in (seq.BETTER, seq.WORSE) and below[TF].verdict == seq.CANNOT_TELL


def test_a_question_closed_as_equivalent_keeps_its_share_of_alpha():
    vals = values_of({c: [25.0 + 0.1 * k for k in range(4)] for c in CID})
    plan = seq.Plan(looks=(3, 4), margin=1.0)
    prior = {KL: seq.Decision(name=KL, verdict=seq.EQUIVALENT, look=1, seeds=3, runs=12, test=stats.PAIRED_T)}
    d = seq.decide_look(main_effects(CONFIGS), vals, plan, 2, prior)
    assert d[KL] is prior[KL]
    assert d[TF].p_adjusted == pytest.approx(min(1.0, 2 * d[TF].p_sequential))  # m = 2, not 1


def test_fewer_than_two_seeds_a_side_is_not_tested_and_says_why():
    a, b = CID[(1, "cyclical")], CID[(1, "monotonic")]
    vals = {(a, 0): 25.0, (b, 0): 24.0, (b, 1): 24.5}
    (d,) = seq.decide_look([setting_pair(a, b, "A", "B")], vals, seq.Plan(looks=(2,), margin=1.0), 1).values()
    assert d.test == "not run" and "fewer than 2 trained seeds" in d.reason and d.verdict == seq.CANNOT_TELL
    assert math.isnan(d.p_adjusted) and (d.n_a, d.n_b) == (1, 2)
    # one seed of a 2 x 2 grid: a main effect still compares two configurations a side, unpaired
    one = values_of(
        {(1, "cyclical"): [25.0], (1, "monotonic"): [24.0], (4, "cyclical"): [23.0], (4, "monotonic"): [22.5]}
    )
    d = seq.decide_look(main_effects(CONFIGS), one, seq.Plan(looks=(1,), margin=1.0), 1)
    assert d[KL].test == stats.WELCH_T and d[KL].diff == pytest.approx(0.75)


def test_unpaired_fallback_when_the_sides_share_no_seed():
    a, b = config_id({"x": 1}), config_id({"x": 2})
    vals = {(a, 0): 25.0, (a, 1): 25.2, (a, 2): 25.1, (b, 3): 24.0, (b, 4): 24.1, (b, 5): 23.9}
    (d,) = seq.decide_look([setting_pair(a, b, "x=1", "x=2")], vals, seq.Plan(looks=(6,), margin=0.5), 1).values()
    assert d.test == stats.WELCH_T and d.diff == pytest.approx(1.1) and math.isnan(d.width_paired)


def test_pairing_width_and_correlation_are_reported():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 1.0, 6)
    a, b = config_id({"x": 1}), config_id({"x": 2})
    vals = {(a, k): 25 + s + rng.normal(0, 0.1) for k, s in enumerate(seed_effect)}
    vals |= {(b, k): 24.5 + s + rng.normal(0, 0.1) for k, s in enumerate(seed_effect)}
    (d,) = seq.decide_look([setting_pair(a, b, "x=1", "x=2")], vals, seq.Plan(looks=(6,), margin=0.2), 1).values()
    assert d.test == stats.PAIRED_T and d.correlation > 0.95 and d.width_paired < 0.2 * d.width_unpaired
    assert d.verdict == seq.BETTER


# looks


def test_open_questions_grow_only_their_configurations_and_the_last_look_closes_them():
    three = {config_id({"x": v}): {"x": v} for v in (1, 2, 3)}
    c1, c2, c3 = (config_id({"x": v}) for v in (1, 2, 3))
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.02, (3, 8))  # 3 seeds are a t on 2 df: a first-look verdict needs |t| in the hundreds
    vals = {(c, k): m + noise[i, k] for i, (c, m) in enumerate(((c1, 30.0), (c2, 20.0), (c3, 20.02))) for k in range(8)}
    plan = seq.Plan(looks=(3, 5, 8), margin=0.005)
    questions = main_effects(three)
    state = looks.State.from_json(None, list(three), plan)
    assert state.targets == {c1: 3, c2: 3, c3: 3} and state.look == 1
    state, decisions = looks.advance(questions, vals, plan, state)
    # 1 vs 2 and 1 vs 3 differ by 10 dB: decided at look 1; 2 vs 3 (0.02 dB apart, margin 0.005) stays open
    assert decisions["x: 1 vs 2"].verdict == seq.BETTER and decisions["x: 2 vs 3"].verdict == seq.OPEN
    assert state.look == 2 and state.targets == {c1: 3, c2: 5, c3: 5} and not state.done
    state, decisions = looks.advance(questions, vals, plan, state)
    state, decisions = looks.advance(questions, vals, plan, state) if not state.done else (state, decisions)
    assert state.done and decisions["x: 1 vs 2"].look == 1
    assert decisions["x: 2 vs 3"].verdict in (seq.WORSE, seq.CANNOT_TELL)
    # the decisions replayed from scratch are the ones made look by look
    assert looks.replay(questions, vals, plan, state.look) == decisions


def test_state_round_trips_and_a_rerun_continues_the_same_look():
    plan = seq.Plan(looks=(3, 4, 5), margin=1.0)
    state = looks.State(look=2, targets={"a": 4, "b": 3}, done=False)
    again = looks.State.from_json(state.as_json(), ["a", "b", "c"], plan)
    assert again.look == 2 and again.targets == {"a": 4, "b": 3, "c": 3} and not again.done


def test_plan_checks_its_looks_and_margin():
    with pytest.raises(ValueError, match="increasing"):
        seq.Plan(looks=(3, 3), margin=1.0)
    with pytest.raises(ValueError, match="margin"):
        seq.Plan(looks=(3,), margin=0.0)


# failures count: collapsed and diverged runs are outcomes of their setting

NAN = float("nan")
PAIR = seq.Plan(looks=(3, 4, 5), margin=1.0)


def _race_of(a: list[float], b: list[float]) -> tuple[Question, dict[tuple[str, int], float]]:
    """One setting against another (a grid of two levels of one factor), seed k of each side paired."""
    configs = {"a": {"x": 1}, "b": {"x": 2}}
    (question,) = main_effects(configs)
    return question, {("a", k): v for k, v in enumerate(a)} | {("b", k): v for k, v in enumerate(b)}


def _final(question: Question, vals: dict[tuple[str, int], float], plan: seq.Plan = PAIR) -> seq.Decision:
    state = looks.State.from_json(None, sorted(question.configs), plan)
    while not state.done:
        state, decisions = looks.advance([question], vals, plan, state)
    return decisions[question.name]


def test_a_setting_that_collapses_on_most_seeds_is_worse_not_cannot_tell():
    # the study: one level trained on all 5 seeds (22.86-23.32 dB), the other collapsed on 3 of 5 and
    # its two trained seeds were lower still (21.34, 21.56); dropping the collapsed runs said "cannot tell yet"
    question, vals = _race_of([22.86, 23.32, 23.05, 23.17, 22.98], [NAN, 21.34, NAN, 21.56, NAN])
    d = _final(question, vals)
    assert d.verdict == seq.BETTER and d.decided_by == seq.BY_VALUES  # A (x=1) trained everywhere: B is worse
    # decided at its second look (4 seeds a side), the two failures among them counted; B's two trained runs pair
    # with A's on 2 seeds only, so its trained values are compared unpaired
    assert (d.look, d.failed_a, d.results_a, d.failed_b, d.results_b) == (2, 0, 4, 2, 4)
    assert d.test == stats.WELCH_T and d.diff == pytest.approx(np.mean([22.86, 23.32, 23.05, 23.17]) - 21.45)
    assert d.diff_counted > 1.0  # B lost two seeds of four, each a margin behind A's trained run: never equivalent


def test_a_setting_that_fails_on_every_seed_or_most_seeds_is_worse():
    trains = [23.1, 22.9, 23.3, 23.0, 22.8]
    for dead in ([NAN] * 5, [NAN, NAN, NAN, NAN, 23.0]):
        question, vals = _race_of(dead, trains)
        d = _final(question, vals)
        assert d.verdict == seq.WORSE and d.decided_by == seq.BY_FAILURES, d
        assert d.failed_a == sum(v != v for v in dead[: d.seeds]) and d.failed_b == 0
        assert d.diff_counted == pytest.approx(-1.0)  # each of its seeds a margin worse: never equivalent


def test_a_side_that_fails_significantly_more_often_is_worse_whatever_its_survivors_score():
    # 7 of 8 seeds fail on A, none on B; A's one trained run is the best of all: the value test cannot run
    # (one trained run against eight), the exact test on 7 discordant seeds of 8 decides
    question, vals = _race_of([NAN] * 7 + [30.0], [23.0, 22.9, 23.2, 22.8, 23.1, 23.0, 22.95, 23.05])
    d = seq.decide_look([question], vals, seq.Plan(looks=(8,), margin=1.0), 1)[question.name]
    assert d.verdict == seq.WORSE and d.decided_by == seq.BY_FAILURES and d.fail_test == seq.PAIRED_FAILURES
    assert (d.more_a, d.more_b) == (7, 0) and d.p_fail == pytest.approx(stats.failure_test_paired(7, 0, 8))
    assert d.test == "not run"  # one trained run of A: nothing for the value test to compare


def test_an_exact_test_that_cannot_reach_its_level_costs_the_value_tests_nothing():
    # 3 seeds of two cells: the failure test cannot go below 2 (5/16)^3 = 0.061 > 0.05, so the two value tests
    # share alpha as Holm alone would
    vals = values_of(
        {
            (1, "cyclical"): [25.0, NAN, 25.2],
            (1, "monotonic"): [24.0, 24.1, 24.3],
            (4, "cyclical"): [23.0, 23.4, 23.1],
            (4, "monotonic"): [22.1, 22.0, 22.4],
        }
    )
    d = seq.decide_look(main_effects(CONFIGS), vals, seq.Plan(looks=(3,), margin=1.0), 1)
    assert stats.failure_test_paired_min_p(3, 2) > 0.05
    assert [d[KL].p_adjusted, d[TF].p_adjusted] == pytest.approx(
        stats.holm([d[KL].p_sequential, d[TF].p_sequential]).tolist()
    )
    assert d[KL].p_fail_adjusted > 0.05 and d[KL].fail_test == seq.PAIRED_FAILURES


def test_two_settings_that_compute_the_same_function_are_never_told_apart():
    rng = np.random.default_rng(5)
    for _ in range(50):
        same = [NAN if rng.random() < 0.3 else 23 + rng.normal(0, 0.3) for _ in range(5)]
        question, vals = _race_of(same, same)
        d = _final(question, vals)
        assert d.verdict not in (seq.BETTER, seq.WORSE) and d.more_a == d.more_b == 0


def test_equivalence_is_adjusted_across_the_family_and_reports_the_margin_the_data_support():
    rng = np.random.default_rng(8)
    vals = values_of({c: (25.0 + rng.normal(0, 0.1, 4)).tolist() for c in CID})
    plan = seq.Plan(looks=(4,), margin=1.0)
    d = seq.decide_look(main_effects(CONFIGS), vals, plan, 1)
    ps = [d[KL].p_equivalence, d[TF].p_equivalence]
    assert [d[KL].p_equivalence_adjusted, d[TF].p_equivalence_adjusted] == pytest.approx(stats.holm(ps).tolist())
    for x in (d[KL], d[TF]):
        assert x.verdict == seq.EQUIVALENT and 0 < x.equivalence_bound < 1.0
        # the bound is where TOST at the question's Holm level just passes
        tight = seq.decide_look(main_effects(CONFIGS), vals, seq.Plan(looks=(4,), margin=x.equivalence_bound * 0.99), 1)
        assert tight[x.name].verdict != seq.EQUIVALENT


def test_two_seeds_are_compared_unpaired_three_paired():
    # a paired t on 2 seeds has 1 degree of freedom, and their correlation is always +-1: it says nothing
    question, vals = _race_of([23.0, 23.5, 23.2], [22.0, 22.1, 22.3])
    two = seq.decide_look([question], vals, seq.Plan(looks=(2,), margin=1.0), 1)[question.name]
    three = seq.decide_look([question], vals, seq.Plan(looks=(3,), margin=1.0), 1)[question.name]
    assert two.test == stats.WELCH_T and math.isnan(two.correlation)
    assert three.test == stats.PAIRED_T and not math.isnan(three.correlation)
