"""Replicates as a first-class idea: configurations, their seeds, and what a study still has to run (pure).

One Optuna trial is one (configuration, seed) run. Trials of one configuration share a `config_id`
(a hash of its parameters) and differ in `seed_index`; the configuration's value is the mean over its
seeds, computed by whoever reads the study (the report, the pruner, `--confirm`). This keeps every
seed a separate unit of work, so the seeds of one configuration run on different workers at the same
time, and a lost worker costs one seed, not the whole configuration.

Seeds: search-phase seed k runs with `run.seed = base + k`; confirmation seeds start at
`base + CONFIRM_SEED_OFFSET`, so they are never a seed the search already used. The data never
depends on run.seed (data.seed is separate).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sweeps import outcome

SEARCH, CONFIRM = "search", "confirm"
CONFIRM_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Run:
    """What a trial's user attributes say about it (None where a trial has not set them yet)."""

    number: int
    state: str  # Optuna's TrialState name
    config_id: str | None
    seed_index: int | None
    phase: str
    value: float | None
    params: Mapping[str, Any]
    outcome: str = outcome.PENDING
    """sweeps.outcome: trained, collapsed, diverged, pruned, lost or pending"""

    @property
    def result(self) -> float | None:
        """What the decisions read: the value of a trained run, NaN for a failed one, None for no result."""
        return outcome.result(self.outcome, self.value)


@dataclass(frozen=True)
class Score:
    """A configuration's results as rankings read them."""

    config_id: str
    score: float
    """mean of its results, each failure counted at the floor (sweeps.outcome.failure_floor)"""
    trained: tuple[float, ...]
    failed: int

    @property
    def results(self) -> int:
        return len(self.trained) + self.failed

    @property
    def mean_trained(self) -> float:
        return sum(self.trained) / len(self.trained) if self.trained else math.nan


def config_id(params: Mapping[str, Any]) -> str:
    """Stable 10-hex id of a configuration: the same parameters give the same id in every process."""
    blob = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def run_seed(base_seed: int, phase: str, seed_index: int) -> int:
    """run.seed of seed `seed_index` of a configuration in a phase."""
    return base_seed + seed_index + (CONFIRM_SEED_OFFSET if phase == CONFIRM else 0)


def grid_points(grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid, in a fixed order (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


def missing_runs(
    points: Iterable[Mapping[str, Any]], seeds: int, runs: Iterable[Run], targets: Mapping[str, int] | None = None
) -> list[tuple[dict[str, Any], int]]:
    """(params, seed_index) of a design's search runs (every point x every seed) that have no trial yet.

    `targets`: config_id -> seeds of a sequential design's current look (a point not in it gets `seeds`).

    A trial of any state counts as present: WAITING/RUNNING ones will run, COMPLETE/PRUNED ones ran,
    and a FAIL is either a result (a diverged run: it would diverge again) or a lost run, which the
    stale-trial callback re-queues within a command and `lost_runs` at the next one.
    """
    have = {(r.config_id, r.seed_index) for r in runs if r.phase == SEARCH}
    points = list(points)
    want = {config_id(p): (targets or {}).get(config_id(p), seeds) for p in points}
    # seed by seed: the whole design with one seed first, so a stopped study is still balanced
    return [
        (dict(p), k)
        for k in range(max(want.values(), default=0))
        for p in points
        if k < want[config_id(p)] and (config_id(p), k) not in have
    ]


def lost_runs(runs: Iterable[Run]) -> list[Run]:
    """The last trial of every (configuration, seed, phase) that has nothing but lost trials: runs lost to a
    kill, a stop or a crash (also after the stale-trial callback's retries ran out), to be queued again so no
    (configuration, seed) is ever missing from a finished study. A diverged run is a result, not lost."""
    groups: dict[tuple[str, int, str], list[Run]] = defaultdict(list)
    for r in runs:
        if r.config_id is not None and r.seed_index is not None:
            groups[(r.config_id, r.seed_index, r.phase)].append(r)
    return sorted(
        (max(rs, key=lambda r: r.number) for rs in groups.values() if all(r.outcome == outcome.LOST for r in rs)),
        key=lambda r: r.number,
    )


def sibling_seeds(seeds: int, present: Iterable[int]) -> list[int]:
    """Seed indices of a configuration still to queue, given the ones it has."""
    have = set(present)
    return [k for k in range(seeds) if k not in have]


def search_configs(runs: Iterable[Run]) -> set[str]:
    """Configurations the search has started and not lost: every configuration with a run that is pending or
    finished as a result (trained, collapsed, diverged) or pruned. One whose runs were all lost does not count,
    so a sampled study draws another in its place; one that diverged does: divergence is its result."""
    return {r.config_id for r in runs if r.phase == SEARCH and r.config_id is not None and r.outcome != outcome.LOST}


def results(runs: Iterable[Run], phase: str = SEARCH) -> dict[tuple[str, int], float]:
    """(config_id, seed_index) -> result of every run of a phase that is one (sweeps.evidence.Values): a trained
    run's value, NaN for a collapsed or diverged one."""
    out = {}
    for r in sorted(runs, key=lambda r: r.number):
        v = r.result
        if r.phase == phase and v is not None and r.config_id is not None and r.seed_index is not None:
            out[(r.config_id, int(r.seed_index))] = v
    return out


def scored(res: Mapping[tuple[str, int], float], margin: float, maximize: bool = True) -> dict[str, Score]:
    """Every configuration of `res` ((config_id, seed_index) -> value, NaN for a failure) scored as rankings read
    it: the mean of its results with a failure at the floor (margin worse than the worst trained run of them all),
    its trained values, its failures."""
    floor = outcome.failure_floor((v for v in res.values() if not math.isnan(v)), margin, maximize)
    by: dict[str, list[float]] = defaultdict(list)
    for (cid, _), v in sorted(res.items()):
        by[cid].append(v)
    return {
        cid: Score(
            config_id=cid,
            score=sum(outcome.scored(v, floor) for v in vs) / len(vs),
            trained=tuple(v for v in vs if not math.isnan(v)),
            failed=sum(math.isnan(v) for v in vs),
        )
        for cid, vs in by.items()
    }


def scores(runs: Iterable[Run], margin: float, maximize: bool = True, phase: str = SEARCH) -> dict[str, Score]:
    """Every configuration with a result in a phase, scored (`scored`)."""
    return scored(results(runs, phase), margin, maximize)


def rank(
    scores_by_config: Mapping[str, Score], maximize: bool = True, among: Iterable[str] | None = None
) -> list[Score]:
    """The configurations a study may pick, best first: those with a trained run (a configuration that failed on
    every seed is never picked), by score; ties by id. `among`: only these (e.g. those still standing in a race)."""
    keep = set(among) if among is not None else None
    ranked = [s for s in scores_by_config.values() if s.trained and (keep is None or s.config_id in keep)]
    ranked.sort(key=lambda s: (-s.score if maximize else s.score, s.config_id))
    return ranked


def ranking(
    runs: Iterable[Run], margin: float, maximize: bool = True, phase: str = SEARCH, among: Iterable[str] | None = None
) -> list[Score]:
    """The study's ranking of a phase's configurations (`rank` of `scores`): the pick is its first."""
    return rank(scores(runs, margin, maximize, phase), maximize, among)


def confirm_runs(runs: list[Run], chosen: list[Score], seeds: int) -> list[tuple[dict[str, Any], str, int, float]]:
    """(params, config_id, seed_index, search score) of N fresh confirmation seeds for each chosen configuration
    (the top of `ranking`).

    Seed indices continue after the configuration's earlier confirmation seeds, so a second `--confirm`
    adds new seeds instead of repeating old ones.
    """
    params = {r.config_id: r.params for r in runs if r.config_id is not None}
    out = []
    for cid, mean in ((s.config_id, s.score) for s in chosen):
        used = [r.seed_index for r in runs if r.config_id == cid and r.phase == CONFIRM and r.seed_index is not None]
        start = max(used, default=-1) + 1
        out += [(dict(params[cid]), cid, start + j, mean) for j in range(seeds)]
    return out


# pruning a configuration, not a lucky seed


def prune_config(mine: list[float], others: Mapping[str, list[float]], n_startup: int, maximize: bool = True) -> bool:
    """Median rule over configurations at one epoch: this configuration's mean against the median of the
    other configurations' means (their completed seeds), once `n_startup` other configurations have one."""
    means = sorted(sum(v) / len(v) for v in others.values() if v)
    if not mine or len(means) < max(1, n_startup):
        return False
    mid = len(means) // 2
    median = means[mid] if len(means) % 2 else (means[mid - 1] + means[mid]) / 2
    own = sum(mine) / len(mine)
    return own < median if maximize else own > median
