"""One comparison of results.json as one sentence: the verdict, what it rests on, by how much, with its interval."""

from __future__ import annotations

import math
from typing import Any

from sweeps import sequential

MAX_RUNS_HINT = 1000  # a power hint above this says the difference is too small to chase

# helpers


def _signed(v: Any, unit: str) -> str:
    return "-" if v is None else f"{v:+.2f}{unit}"


def failures(c: dict[str, Any]) -> str:
    """'fails 3/5 vs 0/5' (each side's collapsed and diverged runs over its results), '' when neither failed."""
    f = c["failures"]
    return f"fails {f['a']}/{f['results_a']} vs {f['b']}/{f['results_b']}" if f["a"] or f["b"] else ""


def _failure_test(c: dict[str, Any]) -> str:
    f = c["failures"]
    seeds = (
        f"{max(f['seeds_a_more'], f['seeds_b_more'])} of {f['seeds_a_more'] + f['seeds_b_more']} discordant "
        "seeds one way, "
        if f["test"] == sequential.PAIRED_FAILURES
        else ""
    )
    return f"{f['test']}: {seeds}adjusted p={f['p_adjusted']:.3g}"


def verdict_line(c: dict[str, Any], metric: str) -> str:
    """One sentence: the verdict, by how much, with its interval, how it was tested, and at which look."""
    unit = " dB" if "psnr" in metric else ""
    head = f"**{c['factor']}**: {c['a']} vs {c['b']}" if c["kind"] == "main effect" else f"**{c['a']}** vs {c['b']}"
    fails = failures(c)
    tail = f"; {fails}" if fails else ""
    if c["decided_by"] == sequential.BY_FAILURES:
        word = "better" if c["verdict"] == sequential.BETTER else "worse"
        side = c["a"] if word == "worse" else c["b"]
        diff = f"; value difference {_signed(c['diff'], unit)} with failures counted" if c["diff"] is not None else ""
        return f"{head}: **{c['a']} is {word}: {side} fails more often** ({fails}; {_failure_test(c)}){diff}."
    if c["reason"] and c["verdict"] != sequential.EQUIVALENT:
        return (
            f"{head}: cannot tell yet ({c['reason']}); difference {_signed(c['diff'], unit)} "
            f"(n={c['n_a']} vs {c['n_b']}){tail}."
        )
    lo, hi = c["interval"]
    corr = f", correlation {c['correlation']:.2f}" if c["correlation"] is not None else ""
    how = f"paired over {c['n_a']} seeds{corr}" if c["paired"] else f"unpaired, n={c['n_a']} vs {c['n_b']}"
    where = f"look {c['look']} of {c['looks']}, {c['runs']} runs" if c["looks"] > 1 else f"{c['runs']} runs"
    if c["verdict"] == sequential.EQUIVALENT:  # judged on the per-seed differences with failures counted
        how = "per seed, a failure a margin worse than the run it meets" if fails else how
        lo, hi = c["interval_equivalence"]
        nums = f"{_signed(c['diff_counted'], unit)} [{lo:+.2f}, {hi:+.2f}] ({how}; {where})"
    else:
        nums = f"{_signed(c['diff'], unit)} [{lo:+.2f}, {hi:+.2f}] ({how}; {where})"
    if c["verdict"] in (sequential.BETTER, sequential.WORSE):
        note = {
            "beyond the margin": f", more than the {c['margin_db']:g}{unit} margin",
            "within the margin": f", less than the {c['margin_db']:g}{unit} margin",
        }.get(c["margin_note"] or "", "")
        return (
            f"{head}: **{c['a']} is {c['verdict']}**{note}: {nums}, P(A>B)={c['prob_improvement']:.2f}, "
            f"adjusted p={c['p_adjusted']:.3g}{tail}."
        )
    bound = c.get("equivalence_bound")
    supports = f" (the data support +-{bound:.2f}{unit})" if bound is not None else ""
    if c["verdict"] == sequential.EQUIVALENT:
        return (
            f"{head}: **equivalent within +-{c['margin_db']:g}{unit}**{supports}: {nums}, "
            f"TOST p={c['p_equivalence_adjusted']:.3g}{tail}."
        )
    if c["verdict"] == sequential.OPEN:
        return f"{head}: open after {nums}: the next look adds seeds{tail}."
    more, need = c["runs_needed"], c["seeds_needed"]
    if c["seeds"] >= c["max_seeds"]:
        hint = f"; the spec's maximum of {c['max_seeds']} seeds per configuration is reached"
    elif more is None or need is None or need > c["max_seeds"] or more > MAX_RUNS_HINT:
        hint = f"; no verdict is within reach of the spec's {c['max_seeds']} seeds per configuration at this noise"
    else:
        target = max(int(math.ceil(need)), c["seeds"] + 1)
        hint = f"; about {int(math.ceil(more))} more runs ({target} seeds per configuration) would likely decide it"
    return f"{head}: cannot tell yet: {nums}, adjusted p={c['p_adjusted']:.3g}{tail}{hint}."
