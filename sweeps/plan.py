"""The study's plan, read from and written to its storage: runs, looks, the race, retries and confirmation.

The decisions themselves are pure (sweeps.sequential, sweeps.racing, sweeps.design); this module turns the
stored trials into their inputs and queues the runs they hand out. Call the functions that queue under the
ask lock (sweeps.lock).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sweeps import looks, outcome, racing, sequential
from sweeps.design import (
    CONFIRM,
    SEARCH,
    Run,
    Score,
    config_id,
    confirm_runs,
    lost_runs,
    missing_runs,
    ranking,
    results,
    search_configs,
)
from sweeps.questions import Question, main_effects
from sweeps.spec import SpecError, StudySpec


def counts(study: optuna.Study) -> dict[TrialState, int]:
    """Trials per Optuna state (what the workers schedule by)."""
    out = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def runs_of(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> list[Run]:
    """Every trial as a design Run (configuration, seed, phase, state, value, outcome); `trials`: ones already read."""
    return [
        Run(
            number=t.number,
            state=t.state.name,
            config_id=t.user_attrs.get("config_id"),
            seed_index=t.user_attrs.get("seed_index"),
            phase=t.user_attrs.get("phase", SEARCH),
            value=t.value,
            params=t.params,
            outcome=outcome.of_trial(t),
        )
        for t in (trials if trials is not None else study.get_trials(deepcopy=False))
    ]


def outcomes(runs: list[Run], phase: str | None = SEARCH) -> dict[str, int]:
    """Runs per outcome (trained, collapsed, diverged, pruned, lost, pending) of a phase (None: every phase)."""
    return outcome.counts(r.outcome for r in runs if phase is None or r.phase == phase)


def standing(study: optuna.Study, attrs: dict | None = None) -> set[str] | None:
    """In a race, the configurations not shown worse (None outside a race): the ones a study may pick from."""
    lanes = (attrs if attrs is not None else study.user_attrs).get("race")
    return None if not lanes else {c for c, lane in lanes.items() if lane.get("status") != racing.OUT}


def best_config(
    study: optuna.Study, spec: StudySpec, runs: list[Run] | None = None, attrs: dict | None = None
) -> Score | None:
    """The study's pick: the best-scoring configuration with a trained run (design.ranking), among those still
    standing in a race. The summary, the MLflow parent run, --confirm's order and the registry all take this.
    `runs`, `attrs`: the study's, already read."""
    ranked = ranking(
        runs if runs is not None else runs_of(study),
        spec.margin_db,
        spec.direction == "maximize",
        among=standing(study, attrs),
    )
    return ranked[0] if ranked else None


def seq_state(study: optuna.Study, spec: StudySpec, attrs: dict | None = None) -> looks.State:
    """The sequential design's look and seed targets as stored on the study (look 1 when none is stored)."""
    raw = (attrs if attrs is not None else study.user_attrs).get("sequential")
    return looks.State.from_json(raw, [config_id(p) for p in spec.design], spec.plan)


def questions_of(spec: StudySpec) -> list[Question]:
    """The design's questions: every main effect of the grid."""
    return main_effects({config_id(p): p for p in spec.design})


def enqueue_grid(study: optuna.Study, spec: StudySpec) -> int:
    """Queue every (grid point, seed) of the design (of its current look) that has no trial yet; returns how many."""
    targets = seq_state(study, spec).targets if spec.sequential else None
    todo = missing_runs(spec.design, spec.seeds, runs_of(study), targets)
    for params, k in todo:
        study.enqueue_trial(params, user_attrs={"config_id": config_id(params), "seed_index": k, "phase": SEARCH})
    return len(todo)


def look_line(state: looks.State, decisions: dict[str, sequential.Decision], spec: StudySpec) -> str:
    """'look 1 (3 seeds): kl.mode: cyclical vs monotonic equivalent, ... -> 4 configurations get seed 4'."""
    done = state.done
    look = state.look if done else state.look - 1
    verdicts = ", ".join(
        f"{name} {d.verdict}" + (f" ({d.margin})" if d.margin else "") for name, d in decisions.items()
    )
    head = f"study {spec.name}: look {look} of {len(spec.plan.looks)} ({spec.plan.looks[look - 1]} seeds): {verdicts}"
    if done:
        return head + " -> done"
    grown = sorted({c for c, n in state.targets.items() if n == spec.plan.looks[state.look - 1]})
    return head + f" -> {len(grown)} configuration(s) get {spec.plan.looks[state.look - 1]} seeds"


def advance_look(study: optuna.Study, spec: StudySpec) -> int:
    """A sequential study whose current look has all its runs: decide the look (sweeps.looks.advance), store
    the new look and seed targets, queue its runs; returns how many were queued. Call under the ask lock."""
    if not spec.sequential or not spec.grid:  # a sampled study with a seed range races instead (advance_race)
        return 0
    state = seq_state(study, spec)
    if state.done:
        return 0
    runs = runs_of(study)
    busy = any(r.outcome == outcome.PENDING and r.phase == SEARCH for r in runs)
    if busy or missing_runs(spec.design, spec.seeds, runs, state.targets) or lost_runs(runs):
        return 0
    new, decisions = looks.advance(questions_of(spec), results(runs), spec.plan, state)
    study.set_user_attr("sequential", new.as_json())
    print(look_line(new, decisions, spec), flush=True)
    return enqueue_grid(study, spec)


def race_lanes(
    study: optuna.Study, spec: StudySpec, runs: list[Run] | None = None, attrs: dict | None = None
) -> tuple[dict[str, racing.Lane], list[str]]:
    """The race as stored on the study, every search configuration in it (a new one races from `min` seeds),
    and the configurations in the order the study started them. `runs`, `attrs`: the study's, already read."""
    raw = (attrs if attrs is not None else study.user_attrs).get("race") or {}
    lanes = {c: racing.Lane.from_json(v) for c, v in raw.items()}
    order: list[str] = []
    for r in sorted(runs if runs is not None else runs_of(study), key=lambda r: r.number):
        if r.phase == SEARCH and r.config_id is not None and r.config_id not in order:
            order.append(r.config_id)
            lanes.setdefault(r.config_id, racing.Lane(target=spec.plan.looks[0]))
    return lanes, order


def advance_race(study: optuna.Study, spec: StudySpec) -> int:
    """A racing study: decide every configuration whose seeds are all finished against the leader
    (sweeps.sequential.race), store the race, and queue the seeds it hands out; returns how many were queued.
    Call under the ask lock."""
    if not spec.racing:
        return 0
    lanes, order = race_lanes(study, spec)
    runs = [r for r in runs_of(study) if r.phase == SEARCH and r.config_id is not None]
    lost = {r.config_id for r in lost_runs(runs)}
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.config_id, []).append(r)

    def finished(c: str, target: int) -> bool:
        rs = by.get(c, [])
        have = {r.seed_index for r in rs}
        return (
            c not in lost
            and all(k in have for k in range(target))
            and not any(r.outcome == outcome.PENDING for r in rs)
        )

    pruned = {c for c in order if any(r.outcome == outcome.PRUNED for r in by.get(c, []))}
    values = results(runs)
    complete = len(order) >= int(study.user_attrs.get("n_trials", spec.trials))  # no configuration joins any more
    new = lanes
    for _ in range(2 * len(order) + 1):  # a decision can hand out seeds that the next one waits on, or free a lead
        done = {c for c in order if finished(c, new[c].target)}
        again = racing.race(new, order, done, values, spec.plan, pruned=pruned, complete=complete)
        if again == new:
            break
        new = again
    if new != lanes or "race" not in study.user_attrs:
        study.set_user_attr("race", {c: lane.as_json() for c, lane in new.items()})
        for c in order:
            if new[c].status != lanes[c].status and new[c].status != racing.RACING:
                print(
                    f"study {spec.name}: configuration {c} {new[c].status}"
                    + (
                        f" (vs {new[c].against}, {new[c].diff:+.2f} at {new[c].target} seeds)" if new[c].against else ""
                    ),
                    flush=True,
                )
    queued = 0
    params = {r.config_id: r.params for r in runs if r.params}
    for c in order:
        have = {r.seed_index for r in by.get(c, [])}
        for k in range(new[c].target):
            if k not in have and c in params:
                study.enqueue_trial(params[c], user_attrs={"config_id": c, "seed_index": k, "phase": SEARCH})
                queued += 1
    return queued


def requeue_lost(study: optuna.Study) -> int:
    """Queue again every run lost to Ctrl-C / SIGTERM, a kill or a crash that has no retry left (design.lost_runs:
    same configuration, seed and phase, tagged `retry_of`); returns how many."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    lost = lost_runs(runs_of(study))
    for r in lost:
        t = trials[r.number]
        keep = {k: t.user_attrs[k] for k in ("config_id", "seed_index", "phase", "search_value") if k in t.user_attrs}
        study.enqueue_trial(t.params, user_attrs={**keep, "retry_of": t.number})
    return len(lost)


def enqueue_confirm(study: optuna.Study, spec: StudySpec, k: int, seeds: int) -> list[tuple[str, float]]:
    """Queue `seeds` fresh seeds for each of the top-k configurations (best_config's ranking); returns
    (config_id, search score)."""
    runs = runs_of(study)
    chosen = ranking(runs, spec.margin_db, spec.direction == "maximize", among=standing(study))[:k]
    todo = confirm_runs(runs, chosen, seeds)
    if not todo:
        raise SpecError(
            f"study {spec.name} has no configuration with a trained run to confirm yet: run `make sweep` first"
        )
    for params, cid, idx, mean in todo:
        study.enqueue_trial(
            params, user_attrs={"config_id": cid, "seed_index": idx, "phase": CONFIRM, "search_value": mean}
        )
    return list(dict.fromkeys((cid, mean) for _, cid, _, mean in todo))


def unfinished(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether the study still lacks runs: queued or running ones, configurations not yet started, or runs
    lost with no retry left (the same command again queues them)."""
    c = counts(study)
    runs = runs_of(study)
    if spec.grid:
        state = seq_state(study, spec) if spec.sequential else None
        short = bool(missing_runs(spec.design, spec.seeds, runs, state.targets if state else None))
        short |= state is not None and not state.done
    else:
        short = len(search_configs(runs)) < int(study.user_attrs.get("n_trials", spec.trials))
        if spec.racing:
            lanes, _ = race_lanes(study, spec)
            short |= any(lane.status == racing.RACING for lane in lanes.values())
    return bool(c[TrialState.WAITING] or c[TrialState.RUNNING]) or short or bool(lost_runs(runs))


def wanted_workers(study: optuna.Study, spec: StudySpec) -> int:
    """How many workers the study can keep busy now: its queued and running runs, its lost runs (queued again
    at the end of a round) and, in a sampled study, the first seeds of the configurations not started yet. What a
    cluster's autoscaler is asked for (sweeps.ray_launch)."""
    c = counts(study)
    runs = runs_of(study)
    n = c[TrialState.WAITING] + c[TrialState.RUNNING] + len(lost_runs(runs))
    if not spec.grid:
        left = int(study.user_attrs.get("n_trials", spec.trials)) - len(search_configs(runs))
        n += max(0, left) * spec.seeds
    return n
