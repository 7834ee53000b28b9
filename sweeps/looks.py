"""The looks of a sequential study: decide a look, give the open questions' configurations the next look's seeds,
replay the looks as they were made (pure). The coordinator calls `advance`, the report `replay`, and the
simulator both, through thousands of simulated studies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from sweeps.evidence import Values
from sweeps.questions import Question
from sweeps.sequential import OPEN, Decision, Plan, decide_look


def replay(questions: Iterable[Question], values: Values, plan: Plan, through: int) -> dict[str, Decision]:
    """The decisions after looks 1..through, made as the coordinator made them, one look at a time."""
    qs = list(questions)
    decisions: dict[str, Decision] = {}
    for look in range(1, through + 1):
        decisions = decide_look(qs, values, plan, look, decisions)
        if not any(d.verdict == OPEN for d in decisions.values()):
            break
    return decisions


def open_configs(questions: Iterable[Question], decisions: Mapping[str, Decision]) -> set[str]:
    """Configurations in at least one open question: the ones the next look gives more seeds."""
    out: set[str] = set()
    for q in questions:
        if decisions.get(q.name) is None or decisions[q.name].verdict == OPEN:
            out |= q.configs
    return out


@dataclass(frozen=True)
class State:
    """Where a sequential study stands: the look in progress, and each configuration's seed target."""

    look: int = 1
    targets: dict[str, int] = field(default_factory=dict)
    done: bool = False
    """the last look was decided: every question closed, or no seeds left to add"""

    def as_json(self) -> dict[str, Any]:
        return {"look": self.look, "targets": dict(sorted(self.targets.items())), "done": self.done}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, configs: Iterable[str], plan: Plan) -> "State":
        if not raw:
            return cls(look=1, targets={c: plan.looks[0] for c in configs})
        targets = {c: int(n) for c, n in raw.get("targets", {}).items()}
        for c in configs:  # a configuration the state never saw (e.g. a grid cut by --trials) starts at look 1
            targets.setdefault(c, plan.looks[0])
        return cls(look=int(raw["look"]), targets=targets, done=bool(raw.get("done", False)))


def advance(
    questions: Iterable[Question], values: Values, plan: Plan, state: State
) -> tuple[State, dict[str, Decision]]:
    """After look `state.look` is complete: decide it, and either give the open questions' configurations the
    next look's seeds or mark the study done. Returns the new state and the decisions so far."""
    qs = list(questions)
    decisions = replay(qs, values, plan, state.look)
    grow = open_configs(qs, decisions)
    if not grow or state.look >= len(plan.looks):
        return replace(state, done=True), decisions
    nxt = state.look + 1
    targets = {c: (plan.looks[nxt - 1] if c in grow else n) for c, n in state.targets.items()}
    return State(look=nxt, targets=targets, done=False), decisions
