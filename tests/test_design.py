"""Replicated designs (sweeps/design.py) and configuration-level pruning, on hand-made trial lists."""

from __future__ import annotations

import math

import optuna
import pytest

from cvae.config import ConfigError
from sweeps import outcome
from sweeps.design import (
    CONFIRM,
    CONFIRM_SEED_OFFSET,
    SEARCH,
    Run,
    config_id,
    confirm_runs,
    grid_points,
    lost_runs,
    missing_runs,
    prune_config,
    ranking,
    results,
    run_seed,
    scores,
    search_configs,
)
from sweeps.pruning import ConfigMedianPruner
from sweeps.spec import SpecError

A, B, C = (
    {"kl.mode": "monotonic", "tf.start_decay_epoch": 1},
    {"kl.mode": "cyclical", "tf.start_decay_epoch": 1},
    {"kl.mode": "monotonic", "tf.start_decay_epoch": 4},
)

# helpers


def run(
    number: int,
    params: dict,
    k: int,
    state: str = "COMPLETE",
    value: float | None = None,
    phase: str = SEARCH,
    diverged: bool = False,
    collapsed: bool = False,
) -> Run:
    """A Run whose outcome is decided by the one rule (sweeps.outcome) from what its trial would carry."""
    attrs = {"fail_reason": "diverged at epoch 1"} if diverged else {"degenerate": True} if collapsed else {}
    return Run(
        number=number,
        state=state,
        config_id=config_id(params),
        seed_index=k,
        phase=phase,
        value=value,
        params=params,
        outcome=outcome.outcome(state, value, attrs),
    )


# identities and seeds


def test_config_id_is_stable_and_ignores_key_order() -> None:
    assert config_id({"a": 1, "b": "x"}) == config_id({"b": "x", "a": 1})
    assert config_id(A) != config_id(B) and len(config_id(A)) == 10
    assert all(ch in "0123456789abcdef" for ch in config_id(A))  # a hex digest, not a counter


def test_run_seed_keeps_confirmation_seeds_apart_from_search_seeds() -> None:
    assert [run_seed(1, SEARCH, k) for k in range(3)] == [1, 2, 3]
    assert [run_seed(1, CONFIRM, k) for k in range(3)] == [1 + CONFIRM_SEED_OFFSET + k for k in range(3)]


def test_grid_points_in_order_first_key_slowest() -> None:
    assert grid_points({"x": [1, 2], "y": ["a", "b"]}) == [
        {"x": 1, "y": "a"},
        {"x": 1, "y": "b"},
        {"x": 2, "y": "a"},
        {"x": 2, "y": "b"},
    ]


# what a study still has to run


def test_missing_runs_go_seed_by_seed_and_skip_every_present_trial() -> None:
    runs = [
        run(0, A, 0, "COMPLETE", 24.0),
        run(1, B, 0, "FAIL"),
        run(2, A, 1, "WAITING"),
        run(3, C, 0, "RUNNING"),
        run(4, C, 1, "COMPLETE", 1.0, phase=CONFIRM),
    ]
    todo = missing_runs([A, B, C], seeds=2, runs=runs)
    # seed 0 of all three exists (a FAIL is a result or already re-queued); seed 1 of A is queued;
    # C's confirmation seed 1 is not its search seed 1
    assert todo == [(B, 1), (C, 1)]
    assert missing_runs([A, B, C], seeds=1, runs=[]) == [(A, 0), (B, 0), (C, 0)]
    assert missing_runs([A, B], seeds=2, runs=[]) == [(A, 0), (B, 0), (A, 1), (B, 1)]


def test_lost_runs_are_the_last_failure_of_a_seed_with_nothing_else() -> None:
    runs = [
        run(0, A, 0, "FAIL"),
        run(1, A, 0, "FAIL"),
        run(2, A, 0, "FAIL"),  # killed, retried twice, retries out
        run(3, A, 1, "FAIL"),
        run(4, A, 1, "COMPLETE", 23.0),  # killed, then done
        run(5, B, 0, "FAIL"),
        run(6, B, 0, "WAITING"),  # killed, its retry queued
        run(7, B, 1, "FAIL", diverged=True),  # a result: it would diverge again
        run(8, C, 0, "FAIL", diverged=True),
        run(9, C, 0, "FAIL"),  # diverged once: a result all the same
        run(10, C, 1, "FAIL"),
        run(11, C, 1, "FAIL", phase=CONFIRM),  # stopped, in both phases
        run(12, C, 2, "PRUNED"),
    ]
    assert [r.number for r in lost_runs(runs)] == [2, 10, 11]
    assert lost_runs([run(0, A, 0, "RUNNING")]) == []


def test_search_configs_drop_configurations_whose_every_run_was_lost_but_keep_diverged_ones() -> None:
    runs = [
        run(0, A, 0, "FAIL"),
        run(1, A, 0, "WAITING"),
        run(2, B, 0, "FAIL"),
        run(3, C, 0, "PRUNED"),
        run(4, B, 0, "COMPLETE", 1.0, phase=CONFIRM),
    ]
    assert search_configs(runs) == {config_id(A), config_id(C)}  # B was lost (killed): another takes its place
    assert search_configs(runs + [run(5, B, 1, "FAIL", diverged=True)]) == {config_id(A), config_id(B), config_id(C)}


def test_results_carry_failures_as_nan_and_leave_out_what_is_not_a_result() -> None:
    runs = [
        run(0, A, 0, value=24.0),
        run(1, A, 1, value=25.0, collapsed=True),
        run(2, B, 0, "FAIL", diverged=True),
        run(3, B, 1, "FAIL"),
        run(4, C, 0, "PRUNED", 30.0),
        run(5, C, 1, "RUNNING"),
        run(6, C, 2, value=99.0, phase=CONFIRM),
        run(7, C, 3, value=math.inf),
    ]
    got = results(runs)
    assert set(got) == {(config_id(A), 0), (config_id(A), 1), (config_id(B), 0), (config_id(C), 3)}
    assert got[(config_id(A), 0)] == 24.0 and all(math.isnan(got[k]) for k in got if k != (config_id(A), 0))
    assert results(runs, CONFIRM) == {(config_id(C), 2): 99.0}


def test_scores_count_a_failure_a_margin_below_the_worst_trained_run() -> None:
    runs = [
        run(0, A, 0, value=24.0),
        run(1, A, 1, value=25.0),
        run(2, B, 0, value=24.6),
        run(3, B, 1, value=30.0, collapsed=True),
        run(4, C, 0, value=23.0),
        run(5, C, 1, "PRUNED", 30.0),
    ]
    s = scores(runs, margin=1.0)
    # the floor is 23 - 1 = 22: B's collapsed 30 dB counts as 22, not as 30
    assert (s[config_id(B)].score, s[config_id(B)].failed, s[config_id(B)].trained) == (23.3, 1, (24.6,))
    assert s[config_id(A)].score == 24.5 and s[config_id(C)].score == 23.0 and s[config_id(C)].results == 1
    assert [x.config_id for x in ranking(runs, 1.0)] == [config_id(A), config_id(B), config_id(C)]
    assert [x.config_id for x in ranking(runs, 1.0, maximize=False)][0] == config_id(C)
    tie = [run(0, A, 0, value=1.0), run(1, B, 0, value=1.0)]
    assert [x.config_id for x in ranking(tie, 1.0)] == sorted([config_id(A), config_id(B)])
    assert [x.config_id for x in ranking(runs, 1.0, among={config_id(B), config_id(C)})] == [config_id(B), config_id(C)]


def test_no_pick_is_made_for_collapsed_or_diverged_runs() -> None:
    # the case: three runs of D at 25.0 that collapsed, three of G at 22.0 that trained
    d, g = {"x": "D"}, {"x": "G"}
    runs = [run(k, d, k, value=25.0, collapsed=True) for k in range(3)] + [
        run(3 + k, g, k, value=22.0) for k in range(3)
    ]
    assert [s.config_id for s in ranking(runs, 1.0)] == [config_id(g)]  # D has no trained run: never picked
    assert [cid for _, cid, _, _ in confirm_runs(runs, ranking(runs, 1.0)[:1], 3)] == [config_id(g)] * 3
    # one trained run among failures buys no lead: D's score counts its two failures at 21 (22 - 1): 21.67 < 22
    runs[0] = run(0, d, 0, value=23.0)
    assert [(s.config_id, round(s.score, 2)) for s in ranking(runs, 1.0)] == [
        (config_id(g), 22.0),
        (config_id(d), 21.67),
    ]
    diverged = [run(6 + k, {"x": "V"}, k, "FAIL", diverged=True) for k in range(3)]
    assert config_id({"x": "V"}) not in {s.config_id for s in ranking(runs + diverged, 1.0)}


def test_confirm_runs_give_fresh_seed_indices() -> None:
    runs = [run(0, A, 0, value=25.0), run(1, B, 0, value=24.0), run(2, C, 0, value=23.0)]
    first = confirm_runs(runs, ranking(runs, 1.0)[:2], seeds=2)
    assert [(cid, k, m) for _, cid, k, m in first] == [
        (config_id(A), 0, 25.0),
        (config_id(A), 1, 25.0),
        (config_id(B), 0, 24.0),
        (config_id(B), 1, 24.0),
    ]
    assert first[0][0] == A
    done = runs + [run(3 + i, A, k, value=24.0, phase=CONFIRM) for i, k in enumerate((0, 1))]
    again = confirm_runs(done, ranking(done, 1.0)[:1], seeds=2)  # search scores decide; confirmation seeds go on
    assert [(cid, k) for _, cid, k, _ in again] == [(config_id(A), 2), (config_id(A), 3)]


# pruning configurations


@pytest.mark.parametrize(
    "mine, others, startup, maximize, want",
    [
        ([20.0], {"b": [21.0], "c": [22.0], "d": [19.0]}, 2, True, True),  # median of 19, 21, 22 is 21 -> 20 < 21
        ([20.0, 23.0], {"b": [21.0], "c": [22.0], "d": [19.0]}, 2, True, False),  # mean 21.5 >= 21
        ([20.0], {"b": [21.0], "c": [22.0]}, 2, True, True),  # median (21 + 22) / 2 = 21.5
        ([20.0], {"b": [21.0]}, 2, True, False),  # one other configuration: still starting up
        ([20.0], {"b": [21.0, 19.0], "c": [30.0], "d": [10.0]}, 2, True, False),  # b's mean is 20: median 20, not below
        ([20.0], {"b": [21.0], "c": [22.0]}, 2, False, False),  # minimising: 20 is better than 21.5
        ([25.0], {"b": [21.0], "c": [22.0]}, 2, False, True),
        ([], {"b": [21.0], "c": [22.0]}, 2, True, False),
    ],
)
def test_prune_config(mine: list[float], others: dict, startup: int, maximize: bool, want: bool) -> None:
    assert prune_config(mine, others, startup, maximize) is want


def _study_with(others: dict[str, list[float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=ConfigMedianPruner(n_startup_configs=2, n_warmup_steps=2))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for cid, values in others.items():
        for v in values:
            study.add_trial(
                optuna.trial.create_trial(
                    params={"x": 0.5},
                    distributions=dist,
                    value=v,
                    intermediate_values={3: v},
                    user_attrs={"config_id": cid, "phase": SEARCH},
                )
            )
    return study


def _running(study: optuna.Study, cid: str, value: float, step: int = 3, phase: str = SEARCH) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr("config_id", cid)
    trial.set_user_attr("phase", phase)
    trial.report(value, step)
    return trial


def test_config_pruner_judges_the_configuration_mean_not_one_seed() -> None:
    study = _study_with({"b": [21.0, 21.0], "c": [22.0]})  # configuration means 21 and 22 -> median 21.5
    lucky = _running(study, "a", 23.0)
    assert not lucky.should_prune()
    unlucky = _running(study, "a", 19.0)  # a's seeds so far: 23 and 19 -> mean 21 < 21.5
    assert unlucky.should_prune()
    alone = _running(study, "e", 21.2)  # 21.2 < 21.5, its own
    assert alone.should_prune()


def test_config_pruner_warmup_confirmation_and_pruned_siblings() -> None:
    study = _study_with({"b": [21.0], "c": [22.0]})
    assert not _running(study, "a", 10.0, step=1).should_prune()  # before warmup_epochs
    assert not _running(study, "a", 10.0, phase=CONFIRM).should_prune()  # confirmation runs are measured, not judged
    first = _running(study, "f", 10.0)
    assert first.should_prune()
    study.tell(first, state=optuna.trial.TrialState.PRUNED)
    assert _running(study, "f", 99.0).should_prune()  # a configuration stands or falls with all its seeds


# the study's pick: one function for the summary, --confirm, the MLflow parent, the registry


def _study_of(trials: list[tuple[str, int, str, float | None, dict]]) -> optuna.Study:
    """An in-memory study of (config, seed, state, value, attrs) trials, as a sweep would have stored them."""
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.CategoricalDistribution(["D", "G", "V"])}
    for cid, k, state, value, attrs in trials:
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": cid},
                distributions=dist,
                state=optuna.trial.TrialState[state],
                value=value,
                user_attrs={"config_id": cid, "seed_index": k, "phase": SEARCH, "seed": 1 + k, **attrs},
            )
        )
    return study


def test_every_pick_of_a_study_skips_collapsed_and_diverged_runs() -> None:
    from sweeps import plan, registry
    from sweeps.spec import load_spec
    from sweeps.summary import summary

    # D: three runs at 25.0 that collapsed; G: three trained runs at 22.0; V: three that diverged
    study = _study_of(
        [("D", k, "COMPLETE", 25.0, {"degenerate": True}) for k in range(3)]
        + [("G", k, "COMPLETE", 22.0 + 0.1 * k, {}) for k in range(3)]
        + [("V", k, "FAIL", None, {"fail_reason": "diverged at epoch 1"}) for k in range(3)]
    )
    spec = load_spec("demo_tpe")  # a sampled study: maximize, margin 1 dB
    assert plan.best_config(study, spec).config_id == "G"
    assert [cid for cid, _ in plan.enqueue_confirm(study, spec, k=3, seeds=2)] == ["G"]  # only G can be confirmed
    assert registry.winner(study, spec)["config_id"] == "G"
    text = summary(study, spec)
    assert "best configuration G:" in text and "fails 0/3" in text
    assert "study demo_tpe: 11 runs: 3 trained, 3 collapsed, 3 diverged, 0 pruned, 0 lost, 2 pending" in text
    # nothing trained: nothing is picked, confirmed or registered
    dead = _study_of([("D", k, "COMPLETE", 25.0, {"degenerate": True}) for k in range(3)])
    assert plan.best_config(dead, spec) is None
    with pytest.raises(SpecError, match="no configuration with a trained run"):
        plan.enqueue_confirm(dead, spec, k=1, seeds=2)
    with pytest.raises(ConfigError, match="no trained run to register"):
        registry.winner(dead, spec)
