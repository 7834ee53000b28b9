"""What a study's pick is worth, measured: how often it is within the margin of the true best, and its regret.

Sampled studies (TPE, random) end with a pick: the configuration the summary names, `--confirm` re-runs, the
MLflow parent run tags and the registry registers (sweeps.design.rank: the best score among configurations with
a trained run, in a race among those still standing). This simulates whole populations of configurations through
the same code: a race (sweeps.racing.race, driven as sweeps.plan.advance_race drives it: a configuration runs its
first look's seeds, is decided against the leader, gets the seeds it is handed) and fixed designs of the same
configurations with a given number of seeds each, on the noise measured for the demo (per-run spread and the
correlation of configurations on a shared seed). Pure and seeded.

A configuration's true worth (`utility`) counts its failures as the study's scores do: its mean where it
trains, a margin below the population's worst mean where it fails, weighted by its failure probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps import racing, sequential as seq
from sweeps.design import rank, scored

ROUNDS = 30  # race passes per new configuration, at most (a decision hands out seeds the next one waits on)


@dataclass(frozen=True)
class Population:
    """Configurations as a sampler proposes them: true means ~ N(0, spread^2); a share of them fail with
    probability fail_p on any seed, the others never."""

    name: str
    spread: float
    fail_share: float = 0.0
    fail_p: float = 0.0


@dataclass(frozen=True)
class Design:
    """How a study spends its runs: a race over plan.looks, or `seeds` fixed seeds a configuration; `confirm`
    re-runs the top k of the search with that many fresh seeds and picks on those (`make confirm`)."""

    name: str
    looks: tuple[int, ...] = ()
    seeds: int = 0
    confirm: tuple[int, int] = (0, 0)


def utility(means: np.ndarray, fail: np.ndarray, margin: float) -> np.ndarray:
    """Each configuration's true worth, failures counted a margin below the population's worst mean."""
    return (1 - fail) * means + fail * (means.min() - margin)


def _runs(
    means: np.ndarray, fail: np.ndarray, sd: float, rho: float, seeds: int, rng: np.random.Generator, offset: int = 0
) -> dict[tuple[str, int], float]:
    """Every configuration's first `seeds` results: a shared per-seed effect (correlation rho), its own noise,
    NaN where it failed; seed indices from `offset` (fresh seeds for a confirmation)."""
    n = means.size
    shared = rng.normal(0.0, sd * np.sqrt(rho), size=(seeds, 1))
    own = rng.normal(0.0, sd * np.sqrt(1 - rho), size=(seeds, n))
    failed = rng.random((seeds, n)) < fail
    vals = np.where(failed, np.nan, means + shared + own)
    return {(f"c{j}", offset + k): float(vals[k, j]) for k in range(seeds) for j in range(n)}


def race_pick(
    means: np.ndarray, fail: np.ndarray, sd: float, rho: float, plan: seq.Plan, rng: np.random.Generator
) -> tuple[str | None, int, set[str]]:
    """One race over the configurations in proposal order: (the pick, runs used, configurations put out)."""
    pool = _runs(means, fail, sd, rho, plan.looks[-1], rng)
    order: list[str] = []
    lanes: dict[str, racing.Lane] = {}
    values: dict[tuple[str, int], float] = {}
    for i in range(means.size):
        c = f"c{i}"
        order.append(c)
        lanes[c] = racing.Lane(target=plan.looks[0])
        for _ in range(ROUNDS):
            for x in order:
                for k in range(lanes[x].target):
                    values[(x, k)] = pool[(x, k)]
            new = racing.race(lanes, order, set(order), values, plan, complete=i == means.size - 1)
            if new == lanes:
                break
            lanes = new
    out = {c for c in order if lanes[c].status == racing.OUT}
    ranked = rank(scored(values, plan.margin, plan.maximize), plan.maximize, among=set(order) - out)
    return (ranked[0].config_id if ranked else None), len(values), out


def fixed_pick(
    means: np.ndarray, fail: np.ndarray, sd: float, rho: float, design: Design, margin: float, rng: np.random.Generator
) -> tuple[str | None, int]:
    """Every configuration with `design.seeds` seeds, picked by score; with a confirmation, the top k of that
    ranking again on fresh seeds and the pick among them by their confirmed score. (pick, runs used)."""
    values = _runs(means, fail, sd, rho, design.seeds, rng)
    ranked = rank(scored(values, margin, True), True)
    k, fresh = design.confirm
    if not ranked or not k:
        return (ranked[0].config_id if ranked else None), len(values)
    top = [s.config_id for s in ranked[:k]]
    idx = [int(c[1:]) for c in top]
    again = _runs(means[idx], fail[idx], sd, rho, fresh, rng, offset=1000)
    again = {(top[int(c[1:])], s): v for (c, s), v in again.items()}
    confirmed = rank(scored(again, margin, True), True)
    return (confirmed[0].config_id if confirmed else top[0]), len(values) + len(again)


def run_selection(
    pop: Population, design: Design, configs: int, sd: float, rho: float, margin: float, n: int, seed: int
) -> dict[str, Any]:
    """`n` studies of `configs` configurations drawn from `pop`: how often the pick is within the margin of the
    true best, its mean regret (true best minus the pick's true worth), the runs used, and for a race how often the
    true best was put out."""
    rng = np.random.default_rng(seed)
    plan = seq.Plan(looks=design.looks, margin=margin) if design.looks else None
    within, regret, runs, best_out = 0, [], [], 0
    for _ in range(n):
        means = rng.normal(0.0, pop.spread, configs)
        fail = np.where(rng.random(configs) < pop.fail_share, pop.fail_p, 0.0)
        u = utility(means, fail, margin)
        if plan is not None:
            pick, used, out = race_pick(means, fail, sd, rho, plan, rng)
            best_out += f"c{int(np.argmax(u))}" in out
        else:
            pick, used = fixed_pick(means, fail, sd, rho, design, margin, rng)
        got = u[int(pick[1:])] if pick is not None else u.min()
        within += u.max() - got <= margin
        regret.append(u.max() - got)
        runs.append(used)
    return {
        "population": pop.name,
        "design": design.name,
        "configs": configs,
        "studies": n,
        "within_margin": within / n,
        "mean_regret": float(np.mean(regret)),
        "regret_p90": float(np.quantile(regret, 0.9)),
        "mean_runs": float(np.mean(runs)),
        "best_put_out": best_out / n if plan is not None else None,
    }
