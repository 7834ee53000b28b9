"""What a finished run is: the one rule every part of the study reads (pure).

A run (one Optuna trial: one configuration, one seed) is exactly one of:

- trained: it completed with a finite value and used its condition (val/cond_gain >= the study's
  `degenerate_below`, tagged by sweeps/objective.py);
- collapsed: it completed but ignores its actions and positions (tagged `degenerate`): a failure of the
  setting, whatever PSNR it scores (full-frame PSNR rewards a still background);
- diverged: its loss became non-finite (a FAIL with `fail_reason`, or a non-finite value): a failure too;
- pruned: the pruner stopped it (a decision of the study, not a result of the setting);
- lost: killed, stopped or crashed (a FAIL without `fail_reason`): re-run, never a result;
- pending: waiting or running.

Collapsed and diverged runs are outcomes of the setting, not missing data: the verdicts test the failure rates
and count a failure as a margin's difference before calling two settings equivalent (sweeps/sequential.py), the
rankings score a failure a margin below every trained run (`failure_floor`, `scored`), and no configuration is
picked for its collapsed or diverged runs. `result` turns an outcome into what the decision code reads.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

TRAINED, COLLAPSED, DIVERGED, PRUNED, LOST, PENDING = "trained", "collapsed", "diverged", "pruned", "lost", "pending"
OUTCOMES = (TRAINED, COLLAPSED, DIVERGED, PRUNED, LOST, PENDING)
FAILED = (COLLAPSED, DIVERGED)
"""outcomes that are failures of the setting"""
RESULTS = (TRAINED, COLLAPSED, DIVERGED)
"""outcomes that are results: what the verdicts, failure rates and picks are made of"""
FAILURE = math.nan
"""the value the decision code reads for a failed run"""


def outcome(state: str, value: float | None, attrs: Mapping[str, Any]) -> str:
    """The outcome of a trial from its state name (Optuna's TrialState), value and user attributes."""
    if state in ("WAITING", "RUNNING"):
        return PENDING
    if state == "PRUNED":
        return PRUNED
    if state == "FAIL":
        return DIVERGED if attrs.get("fail_reason") else LOST
    if value is None or not math.isfinite(value):
        return DIVERGED
    return COLLAPSED if attrs.get("degenerate") else TRAINED


def of_trial(t: Any) -> str:
    """The outcome of an Optuna FrozenTrial."""
    return outcome(t.state.name, t.value, t.user_attrs)


def result(kind: str, value: float | None) -> float | None:
    """What the decision code reads: a trained run's value, FAILURE (NaN) for a failed one, None for a run that
    is not a result (pruned, lost, pending)."""
    if kind == TRAINED:
        return float(value)  # type: ignore[arg-type]
    return FAILURE if kind in FAILED else None


def failure_floor(trained: Iterable[float], margin: float, maximize: bool = True) -> float:
    """What a failed run counts as where configurations are ranked: `margin` (the smallest difference that
    matters) worse than the worst trained value among them; NaN when none trained."""
    vals = list(trained)
    if not vals:
        return math.nan
    return min(vals) - margin if maximize else max(vals) + margin


def scored(value: float, floor: float) -> float:
    """A result as rankings read it: a trained value as it is, a failure (NaN) at the floor."""
    return floor if math.isnan(value) else value


def counts(kinds: Iterable[str]) -> dict[str, int]:
    """Runs per outcome, every outcome present (0 where none)."""
    c = Counter(kinds)
    return {k: c.get(k, 0) for k in OUTCOMES}


def describe(c: Mapping[str, int], with_pending: bool = True) -> str:
    """'12 runs: 9 trained, 2 collapsed, 1 diverged, 0 pruned, 0 lost' (+ pending when there are some)."""
    shown = [k for k in OUTCOMES if k != PENDING or (with_pending and c.get(PENDING))]
    total = sum(c.get(k, 0) for k in shown)
    return f"{total} run{'s' if total != 1 else ''}: " + ", ".join(f"{c.get(k, 0)} {k}" for k in shown)
