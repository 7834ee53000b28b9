"""An Optuna pruner that judges configurations: every seed of a configuration stands or falls together."""

from __future__ import annotations

import math
from collections import defaultdict

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.design import CONFIRM, prune_config


class ConfigMedianPruner(optuna.pruners.BasePruner):
    """Median pruning over configuration means (sweeps.design.prune_config) after `warmup` epochs.

    At an epoch, a configuration's value is the mean over its seeds that reported that epoch (running
    ones included); the others' are means over their completed seeds, as Optuna's MedianPruner uses
    completed trials. Once one seed of a configuration is pruned, its other seeds are pruned at their
    next report. Confirmation runs are never pruned: they exist to be measured.
    """

    def __init__(self, n_startup_configs: int = 2, n_warmup_steps: int = 0):
        self.n_startup, self.warmup = n_startup_configs, n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        cid = trial.user_attrs.get("config_id")
        if step is None or step < self.warmup or trial.user_attrs.get("phase") == CONFIRM:
            return False
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if any(t.state == TrialState.PRUNED and t.user_attrs.get("config_id") == cid for t in trials):
            return True
        mine: list[float] = []
        others: dict[str, list[float]] = defaultdict(list)
        for t in trials:
            if t.user_attrs.get("phase") == CONFIRM:
                continue
            v = t.intermediate_values.get(step)
            if v is None or math.isnan(v):
                continue
            other = t.user_attrs.get("config_id")
            if other == cid:
                mine.append(v)
            elif t.state == TrialState.COMPLETE:
                others[other].append(v)
        return prune_config(
            mine, others, self.n_startup, maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE
        )
