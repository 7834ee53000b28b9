"""A study spec's fields, checked one by one (pure): search dimensions, seeds; each problem a SpecError that names
the field. sweeps/spec.py puts them together into a StudySpec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cvae.config import ConfigError

DIST_TYPES = ("int", "float", "categorical")


class SpecError(ConfigError):
    """A user-facing problem in a study spec; one line naming the field."""


@dataclass(frozen=True)
class Dist:
    """One search dimension: int/float (optionally log) in [low, high], or categorical choices."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


def req(cond: bool, msg: str) -> None:
    if not cond:
        raise SpecError(msg)


def number(where: str, v: Any) -> float:
    req(isinstance(v, (int, float)) and not isinstance(v, bool), f"{where}: expected a number, got {v!r}")
    return float(v)


def parse_dist(path: str, raw: Any) -> Dist:
    where = f"space.{path}"
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    req(isinstance(raw, dict), f"{where}: expected a mapping like {{type: float, low: .., high: ..}}")
    unknown = set(raw) - {"type", "low", "high", "log", "step", "choices"}
    req(not unknown, f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    kind = raw.get("type")
    req(kind in DIST_TYPES, f"{where}.type: {kind!r} is not one of {', '.join(DIST_TYPES)}")
    if kind == "categorical":
        choices = raw.get("choices")
        req(isinstance(choices, list) and len(choices) > 0, f"{where}.choices: expected a non-empty list")
        return Dist(type=kind, choices=tuple(choices))
    req("low" in raw and "high" in raw, f"{where}: int/float need low and high")
    low, high = number(f"{where}.low", raw["low"]), number(f"{where}.high", raw["high"])
    if kind == "int":
        req(low.is_integer() and high.is_integer(), f"{where}: int bounds must be integers, got {low}, {high}")
    req(low < high if kind == "float" else low <= high, f"{where}: empty range [{raw['low']}, {raw['high']}]")
    log = raw.get("log", False)
    req(isinstance(log, bool), f"{where}.log: expected true/false")
    req(not log or low > 0, f"{where}: log scale needs low > 0, got {raw['low']}")
    step = raw.get("step")
    if step is not None:
        req(number(f"{where}.step", step) > 0, f"{where}.step: must be positive")
        req(kind == "float" or float(step).is_integer(), f"{where}.step: int steps must be integers, got {step}")
        req(not log, f"{where}: log and step cannot be combined")  # Optuna refuses it at the first trial
    return Dist(type=kind, low=low, high=high, log=log, step=step)


def parse_seeds(raw: Any) -> tuple[int, tuple[int, ...]]:
    """`seeds: 3` (one look) or `seeds: {min: 3, max: 5, step: 1}` (looks at 3, 4, 5 seeds) -> (first, looks)."""
    if isinstance(raw, dict):
        unknown = set(raw) - {"min", "max", "step"}
        req(not unknown, f"seeds: unknown field(s) {', '.join(sorted(unknown))} (expected min, max, step)")
        vals = {k: raw.get(k, 1 if k == "step" else None) for k in ("min", "max", "step")}
        for k, v in vals.items():
            req(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                f"seeds.{k}: expected a positive integer, got {v!r}",
            )
        lo, hi, step = vals["min"], vals["max"], vals["step"]
        req(lo >= 2, f"seeds.min: a sequential design needs at least 2 seeds at its first look, got {lo}")
        req(hi > lo, f"seeds: max ({hi}) must be above min ({lo}); for a fixed number write `seeds: {lo}`")
        looks = list(range(lo, hi + 1, step))
        if looks[-1] != hi:
            looks.append(hi)
        return lo, tuple(looks)
    req(
        isinstance(raw, int) and not isinstance(raw, bool) and raw > 0,
        f"seeds: expected a positive integer or {{min: 3, max: 6}}, got {raw!r}",
    )
    return raw, ()


def corners(d: Dist) -> list[Any]:
    """Values whose config must validate: bounds or every choice."""
    if d.type == "categorical":
        return list(d.choices)
    return [int(d.low), int(d.high)] if d.type == "int" else [d.low, d.high]
