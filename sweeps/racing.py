"""Racing a sampled study: each new configuration against the leader, on the seeds both have (pure).

F-Race style (Birattari et al. 2002): a configuration runs its first look's seeds, then is tested against the
leader with the same paired test, boundary and margin as a grid's questions (sweeps.sequential.decide_look).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from sweeps.evidence import Values
from sweeps.questions import setting_pair
from sweeps.sequential import BETTER, CANNOT_TELL, EQUIVALENT, WORSE, Plan, decide_look

RACING, LEADS, OUT, TIED, UNDECIDED = "racing", "leads", "out", "tied", "undecided"


@dataclass(frozen=True)
class Lane:
    """One configuration of a race: its seed target, where it stands, and against whom it was decided."""

    target: int
    status: str = RACING
    against: str | None = None
    look: int = 1
    diff: float = math.nan
    """its mean minus the leader's on their shared seeds, at the decision"""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "against": self.against,
            "look": self.look,
            "diff": None if math.isnan(self.diff) else self.diff,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Lane":
        diff = raw.get("diff")
        return cls(
            target=int(raw["target"]),
            status=raw.get("status", RACING),
            against=raw.get("against"),
            look=int(raw.get("look", 1)),
            diff=math.nan if diff is None else float(diff),
        )


def trained(c: str, target: int, values: Values) -> bool:
    """Whether a configuration has a trained run (a value, not a failure) among its first `target` seeds."""
    return any(not math.isnan(values[(c, k)]) for k in range(target) if (c, k) in values)


def race(
    lanes: Mapping[str, Lane],
    order: list[str],
    done: set[str],
    values: Values,
    plan: Plan,
    pruned: set[str] = frozenset(),
    complete: bool = False,
) -> dict[str, Lane]:
    """One pass over the racing configurations whose seeds are all finished (`done`), in `order`: each is tested
    against the leader on the seeds both have, at the look its seed count is (the same tests, boundary and
    margin as a grid's questions, failures counted). Better: it leads, the old leader is out. Worse: out.
    Equivalent: tied (within the margin of the leader: no more seeds). Open: the next look's seeds. Cannot tell
    after the last look: undecided. A leader with fewer seeds than its challenger first gets seeds up to the
    challenger's. Only a configuration with a trained run can lead: one that failed on every seed waits for a
    leader to be tested against; `complete` (no configuration will join any more) with no leader at all leaves
    the waiting ones undecided."""
    out = dict(lanes)
    for c in order:
        lane = out[c]
        if lane.status != RACING or c not in done:
            continue
        if c in pruned:
            out[c] = replace(lane, status=OUT, against=None)
            continue
        leader = next((x for x in order if out[x].status == LEADS), None)
        if leader is None:
            if trained(c, lane.target, values):
                out[c] = replace(lane, status=LEADS)
            continue
        if out[leader].target < lane.target:
            out[leader] = replace(out[leader], target=lane.target)  # the leader needs the challenger's seeds
            continue
        if leader not in done:
            continue
        look = plan.looks.index(lane.target) + 1 if lane.target in plan.looks else len(plan.looks)
        q = setting_pair(c, leader, c, leader)
        d = decide_look([q], values, plan, look)[q.name]
        verdict = d.verdict
        decided = replace(lane, against=leader, look=look, diff=d.diff)
        if verdict == BETTER:
            out[c] = replace(decided, status=LEADS)
            out[leader] = replace(out[leader], status=OUT, against=c)
        elif verdict == WORSE:
            out[c] = replace(decided, status=OUT)
        elif verdict == EQUIVALENT:
            out[c] = replace(decided, status=TIED)
        elif verdict == CANNOT_TELL:
            out[c] = replace(decided, status=UNDECIDED)
        else:
            nxt = next(n for n in plan.looks if n > lane.target)
            out[c] = replace(decided, target=nxt)
    if complete and not any(lane.status == LEADS for lane in out.values()):
        out = {
            c: replace(lane, status=UNDECIDED) if lane.status == RACING and c in done else lane
            for c, lane in out.items()
        }
    return out
