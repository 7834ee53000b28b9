"""The questions a study asks: every main effect of a grid, or one configuration against another (pure).

A question compares two sides: for a main effect, the configurations at one level of a factor against those at
another, matched cell by cell on every other factor; for a setting pair, one configuration against another.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping

MAIN_EFFECT, SETTING_PAIR = "main effect", "setting pair"
MAX_LEVELS = 4  # a setting with more distinct values than this is a continuous dimension, not a factor


@dataclass(frozen=True)
class Question:
    """Side A against side B. `cells`: (config on side A, config on side B) pairs equal in every other setting."""

    name: str
    kind: str
    factor: str | None
    a: str
    b: str
    side_a: tuple[str, ...]
    side_b: tuple[str, ...]
    cells: tuple[tuple[str, str], ...]

    @property
    def configs(self) -> set[str]:
        return set(self.side_a) | set(self.side_b)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main_effects(configs: Mapping[str, Mapping[str, Any]], max_levels: int = MAX_LEVELS) -> list[Question]:
    """Every pair of levels of every factor (a setting with 2..max_levels values among `configs`), its cells
    matched on all other settings. `configs`: config_id -> params."""
    keys = sorted({k for p in configs.values() for k in p})
    out = []
    for f in keys:
        levels = sorted({p[f] for p in configs.values() if f in p}, key=str)
        if not 2 <= len(levels) <= max_levels:
            continue
        by_rest: dict[str, dict[Any, str]] = {}
        for cid, p in sorted(configs.items()):
            rest = repr(sorted((k, str(v)) for k, v in p.items() if k != f))
            by_rest.setdefault(rest, {})[p.get(f)] = cid
        for a, b in combinations(levels, 2):
            cells = tuple((lv[a], lv[b]) for lv in by_rest.values() if a in lv and b in lv)
            side_a = tuple(sorted(c for c, p in configs.items() if p.get(f) == a))
            side_b = tuple(sorted(c for c, p in configs.items() if p.get(f) == b))
            out.append(
                Question(
                    name=f"{f}: {_fmt(a)} vs {_fmt(b)}",
                    kind=MAIN_EFFECT,
                    factor=f,
                    a=_fmt(a),
                    b=_fmt(b),
                    side_a=side_a,
                    side_b=side_b,
                    cells=cells,
                )
            )
    return out


def setting_pair(a: str, b: str, label_a: str, label_b: str) -> Question:
    """One configuration against another (their seeds pair by seed index)."""
    return Question(
        name=f"{label_a} vs {label_b}",
        kind=SETTING_PAIR,
        factor=None,
        a=label_a,
        b=label_b,
        side_a=(a,),
        side_b=(b,),
        cells=((a, b),),
    )
