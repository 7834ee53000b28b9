"""The report's tables as (header, rows) of text, from results.json alone: the failures at the top, every seed per
setting, the comparisons, the confirmation runs. report.md and index.html draw the same rows."""

from __future__ import annotations

import math
from typing import Any

from reports.words import MAX_RUNS_HINT


def number(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def interval(pair: Any, digits: int = 2) -> str:
    return "-" if not pair or pair[0] is None else f"[{number(pair[0], digits)}, {number(pair[1], digits)}]"


def _rate(s: dict[str, Any]) -> str:
    """'2/5 (40%, 5-85%)': failed over results, the rate and its exact interval."""
    if not s.get("results"):
        return "-"
    lo, hi = s["failure_ci"]
    return f"{s['failed']}/{s['results']} ({100 * s['failure_rate']:.0f}%, {100 * lo:.0f}-{100 * hi:.0f}%)"


def failures_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per setting, its runs by outcome and its failure rate with an exact interval: the first thing to read."""
    level = f"{results['thresholds']['level']:.0%}"
    head = ["setting", "trained", "collapsed", "diverged", "pruned", "lost", f"fails ({level} exact interval)", "score"]
    rows = [
        [
            s["label"],
            *(str(s["outcomes"][k]) for k in ("trained", "collapsed", "diverged", "pruned", "lost")),
            _rate(s),
            number(s.get("score")),
        ]
        for s in results["settings"]
    ]
    return head, rows


def settings_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-setting table: the trained seeds' values, and the failed ones."""
    head = [
        "setting",
        "config",
        "trained n",
        "mean",
        "std",
        "IQM",
        f"{results['thresholds']['level']:.0%} interval",
        "seeds: values",
        "failed seeds",
        "cond gain",
        "score",
    ]
    rows = [
        [
            s["label"],
            s["config_id"],
            str(s["n"]),
            number(s.get("mean")),
            number(s.get("std"), 3),
            number(s.get("iqm")),
            interval(s.get("ci")),
            ", ".join(f"{sd}: {number(v)}" for sd, v in zip(s["seeds"], s["values"])),
            ", ".join(f"{f['seed']}: {f['outcome']}" for f in s["failed_runs"]) or "-",
            number(s.get("cond_gain")),
            number(s.get("score")),
        ]
        for s in results["settings"]
    ]
    if any(s.get("test_psnr") is not None for s in results["settings"]):  # `cvae eval --split test` was run
        head.append("test PSNR")
        for row, s in zip(rows, results["settings"]):
            row.append(number(s.get("test_psnr")))
    return head, rows


def _runs_hint(c: dict[str, Any]) -> str:
    n, need = c.get("runs_needed"), c.get("seeds_needed")
    if c["verdict"] not in ("cannot tell yet", "open"):
        return ""
    if c["seeds"] >= c["max_seeds"] or need is None or need > c["max_seeds"]:
        return "beyond the spec's maximum"
    return (
        "-" if n is None or not math.isfinite(n) else (f"> {MAX_RUNS_HINT}" if n > MAX_RUNS_HINT else f"{math.ceil(n)}")
    )


def _pairing(c: dict[str, Any]) -> str:
    if not c.get("paired"):
        return "unpaired" if c.get("test") != "not run" else "-"
    corr = c.get("correlation")
    if corr is None:  # two seeds: a correlation of +-1 and a width ratio say nothing a reader can use
        return f"paired over {c['n_a']} seeds"
    narrower = c.get("narrower")
    change = (
        ""
        if narrower is None
        else f", {100 * narrower:.0f}% narrower"
        if narrower >= 0
        else f", {-100 * narrower:.0f}% wider"
    )  # little shared noise: the paired test's fewer df cost more
    return f"paired (r={number(corr)}{change})"


def comparisons_table(cmps: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = [
        "comparison",
        "verdict",
        "fails A vs B",
        "p (failures)",
        "look",
        "runs",
        "A - B",
        "interval",
        "pairing",
        "P(A>B)",
        "p (adjusted)",
        "p (TOST)",
        "equivalent within",
        "sign-flip p",
        "margin",
        "more runs to decide",
    ]
    rows = [
        [
            c["name"],
            _verdict(c),
            _fails(c),
            number(c["failures"]["p_adjusted"], 3),
            f"{c['look']} of {c['looks']}",
            str(c["runs"]),
            number(c["diff"], 3),
            interval(c["interval"], 3),
            _pairing(c),
            number(c["prob_improvement"]),
            number(c["p_adjusted"], 3),
            number(c.get("p_equivalence_adjusted"), 3),
            "-" if c.get("equivalence_bound") is None else f"+-{c['equivalence_bound']:.2f}",
            number(c.get("sign_flip_p"), 3),
            f"+-{c['margin_db']:g}",
            _runs_hint(c),
        ]
        for c in cmps
    ]
    return head, rows


def _verdict(c: dict[str, Any]) -> str:
    notes = [n for n in (c.get("margin_note"), "fails more often" if c.get("decided_by") == "failures" else "") if n]
    return c["verdict"] + (f" ({', '.join(notes)})" if notes else "")


def _fails(c: dict[str, Any]) -> str:
    f = c["failures"]
    return f"{f['a']}/{f['results_a']} vs {f['b']}/{f['results_b']}"


def confirm_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "setting",
        "search score (trained n)",
        "confirmed score",
        "confirmed trained mean (n)",
        "interval",
        "fails",
        "confirmed - search",
    ]
    rows = [
        [
            c["label"],
            f"{number(c['search_score'])} ({c['search_n']})",
            number(c["score"]),
            f"{number(c['mean'])} ({c['n']})",
            interval(c["ci"]),
            f"{c['failed']}/{c['results']}",
            number(c["shrinkage"]),
        ]
        for c in results["confirm"]
    ]
    return head, rows
