"""Search space -> Optuna: trial suggestions as config overrides, samplers and pruners (pure builders)."""

from __future__ import annotations

from typing import Any

import optuna

from sweeps.pruning import ConfigMedianPruner
from sweeps.spec import Dist, StudySpec


def suggest(trial: optuna.Trial, space: dict[str, Dist]) -> dict[str, Any]:
    """One value per searched config path, named by the path itself (e.g. 'kl.cycles')."""
    params: dict[str, Any] = {}
    for path, d in space.items():
        if d.type == "categorical":
            params[path] = trial.suggest_categorical(path, list(d.choices))
        elif d.type == "int":
            params[path] = trial.suggest_int(path, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            params[path] = trial.suggest_float(path, d.low, d.high, step=d.step, log=d.log)
    return params


def grid_params(trial: optuna.Trial, grid: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """The grid point the GridSampler picked for this trial."""
    return {path: trial.suggest_categorical(path, list(values)) for path, values in grid.items()}


def trial_params(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Config overrides of this trial."""
    return grid_params(trial, spec.grid) if spec.sampler == "grid" else suggest(trial, spec.space)


def make_sampler(spec: StudySpec, worker: int = 0, start: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded sampler; each worker gets its own stream so parallel workers do not propose twins, and a worker
    joining a study that has `start` trials gets a stream of its own too (a restarted worker would otherwise
    replay its first proposals)."""
    seed = spec.sampler_seed + worker + 7919 * start
    if spec.sampler == "random" or spec.sampler == "grid":
        # a grid's runs are all queued with fixed parameters before the workers start (sweeps.coordinator.prepare):
        # the sampler never draws for them
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials, constant_liar=True)


def make_pruner(spec: StudySpec, niter: int) -> optuna.pruners.BasePruner:
    """Pruner that judges no trial before `warmup_epochs` (e.g. before its teacher-forcing decay starts)."""
    if spec.pruner == "median":
        # configurations, not seeds: a configuration's mean against the median of the others'
        return ConfigMedianPruner(n_startup_configs=spec.pruner_startup_trials, n_warmup_steps=spec.warmup_epochs)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup_epochs), max_resource=niter)
    if spec.pruner == "successive_halving":
        # Hyperband's most aggressive bracket alone: rungs at warmup, 3 x warmup, ...; the top third goes on
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, spec.warmup_epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()
