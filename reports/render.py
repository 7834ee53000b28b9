"""results.json + figures -> report.md and one self-contained index.html (figures inlined, no network).

Both pages only render numbers that results.json already holds; nothing is computed here.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from reports.words import MAX_RUNS_HINT

# helpers


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(pair: Any, digits: int = 2) -> str:
    return "-" if not pair or pair[0] is None else f"[{_f(pair[0], digits)}, {_f(pair[1], digits)}]"


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


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
            _f(s.get("score")),
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
            _f(s.get("mean")),
            _f(s.get("std"), 3),
            _f(s.get("iqm")),
            _ci(s.get("ci")),
            ", ".join(f"{sd}: {_f(v)}" for sd, v in zip(s["seeds"], s["values"])),
            ", ".join(f"{f['seed']}: {f['outcome']}" for f in s["failed_runs"]) or "-",
            _f(s.get("cond_gain")),
            _f(s.get("score")),
        ]
        for s in results["settings"]
    ]
    if any(s.get("test_psnr") is not None for s in results["settings"]):  # `cvae eval --split test` was run
        head.append("test PSNR")
        for row, s in zip(rows, results["settings"]):
            row.append(_f(s.get("test_psnr")))
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
    return f"paired (r={_f(corr)}{change})"


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
            _f(c["failures"]["p_adjusted"], 3),
            f"{c['look']} of {c['looks']}",
            str(c["runs"]),
            _f(c["diff"], 3),
            _ci(c["interval"], 3),
            _pairing(c),
            _f(c["prob_improvement"]),
            _f(c["p_adjusted"], 3),
            _f(c.get("p_equivalence_adjusted"), 3),
            "-" if c.get("equivalence_bound") is None else f"+-{c['equivalence_bound']:.2f}",
            _f(c.get("sign_flip_p"), 3),
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
            f"{_f(c['search_score'])} ({c['search_n']})",
            _f(c["score"]),
            f"{_f(c['mean'])} ({c['n']})",
            _ci(c["ci"]),
            f"{c['failed']}/{c['results']}",
            _f(c["shrinkage"]),
        ]
        for c in results["confirm"]
    ]
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _md_inline(text: str) -> str:
    """**bold** and `code` of a verdict line as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _sections(results: dict[str, Any], figures: dict[str, Path], media: dict[str, Path]) -> list[tuple[str, list[Any]]]:
    """The report as (title, blocks); a block is text, ('table', head, rows), ('figure', key) or ('media', key)."""
    st, th = results["study"], results["thresholds"]
    comp = results["compute"]
    out: list[tuple[str, list[Any]]] = []
    seeds = (
        f"seeds per configuration at looks {', '.join(map(str, st['looks']))}, margin +-{st['margin_db']:g}, "
        f"decided through look {st['look']}"
        if len(st.get("looks") or []) > 1
        else f"{st.get('seeds')} seed(s) per configuration, margin +-{st.get('margin_db') or 0:g}"
    )
    intro = [
        f"{st.get('description') or ''}",
        f"Objective: best `{st['metric']}` on the validation split per run (the course's protocol: 2 frames in, "
        f"predicted frames scored, z from the prior); {seeds}; "
        f"{comp['runs']} runs: "
        + ", ".join(f"{comp[k]} {k}" for k in ("trained", "collapsed", "diverged", "pruned", "lost"))
        + ".",
    ]
    out.append(("", intro))
    answer = [f"- {line}" for line in results["answer"]] or [
        "No comparison is possible yet (fewer than two settings with a result)."
    ]
    answer.append(("table", *failures_table(results)))
    answer.append(
        "A collapsed run (it ignores its actions and positions: condition gain below "
        f"{th['degenerate_below']} dB) or a diverged one is a failure of its setting: " + th["failures"] + "."
    )
    answer.append(
        f"Verdict rule: {th['verdict']}. Test: {th['test']}. Intervals of a difference: repeated t "
        f"intervals at 1 - {th['alpha']}, valid at whichever look the study stopped; of a setting: "
        f"{th['bootstrap']['method']}, {th['bootstrap']['reps']} resamples, seed {th['bootstrap']['seed']}. "
        f"Seed-noise floor (pooled within-setting std): {_f(results['noise_floor'], 3)}."
    )
    out.append(("The answer", answer))
    out.append(("Every seed, per setting", [("table", *settings_table(results)), ("figure", "strip")]))
    out.append(("Comparisons", [("table", *comparisons_table(results["comparisons"]))]))
    if results.get("race"):
        out.append(
            (
                "The race",
                [
                    "Each new configuration ran its first seeds, then was tested against the leader on the seeds both "
                    "had (the same tests, boundary and margin as the comparisons): worse is out, better takes the "
                    "lead, equivalent stops (tied), open gets more seeds; after the last look it is undecided.",
                    (
                        "table",
                        ["setting", "status", "seeds", "decided against", "difference (dB)", "at look"],
                        [
                            [
                                r["label"],
                                r["status"],
                                str(r["target"]),
                                r.get("against_label") or "-",
                                _f(r.get("diff")),
                                str(r["look"]) if r.get("against") else "-",
                            ]
                            for r in results["race"]
                        ],
                    ),
                ],
            )
        )
    if results["confirm"]:
        out.append(
            (
                "Confirmation runs (fresh seeds)",
                [
                    "Search-time scores are chosen as the best, so they are biased upwards (the winner's curse); the "
                    "confirmed score comes from seeds the search never saw.",
                    ("table", *confirm_table(results)),
                ],
            )
        )
    out.append(("Learning curves", [("figure", "curves"), ("figure", "origin")]))
    out.append(("Per-frame PSNR and predictions", [("figure", "per_frame")] + [("media", k) for k in media]))
    failed = results["failed_runs"]
    out.append(
        (
            "Failed runs (collapsed or diverged)",
            [
                f"A run whose condition gain at its best epoch is below {th['degenerate_below']} dB ignores its "
                "actions and positions (collapsed); a run whose loss became non-finite diverged. Both are failures "
                "of their setting: "
                f"counted in its failure rate and in every comparison. {len(failed)} such run(s)"
                + (":" if failed else "."),
                *[
                    f"- trial {d['trial']} (configuration {d['config_id']}, seed {d['seed']}): {d['outcome']}"
                    + (
                        f", {_f(d['value'])} dB, condition gain {_f(d['cond_gain'])} dB"
                        if d["outcome"] == "collapsed"
                        else f" ({d['reason'] or 'non-finite value'})"
                    )
                    for d in failed
                ],
            ],
        )
    )
    lost = [
        f"- trial {f['trial']} ({f['config_id']}, seed {f['seed']}): lost (killed or crashed; the same command "
        "runs it again)"
        for f in results["lost_runs"]
    ]
    out.append(
        (
            "Pruning and compute",
            [
                f"{_f(comp['epochs_trained'], 0)} epochs trained of {_f(comp['epochs_planned'], 0)} planned; "
                "pruning saved "
                f"{_f(comp['epochs_saved_by_pruning'], 0)} epochs ({_f(100 * (comp['saved_fraction'] or 0), 0)}%); "
                f"{_f(comp['worker_hours'], 2)} worker-hours.",
                *lost,
            ],
        )
    )
    app = results.get("appendix", {})
    note = app.get("warning", "")
    out.append(
        (
            "Appendix: exploration",
            [
                f"Importances: {app.get('evaluator', '-')} over {app.get('n_complete', 0)} complete runs. {note}",
                ("figure", "history"),
                ("figure", "slices"),
                ("figure", "importance"),
            ],
        )
    )
    if results.get("cross_study"):
        out.append(("Across studies", [("table", *comparisons_table(results["cross_study"]))]))
    prov = results.get("provenance", {})
    out.append(("Provenance", [f"- {k}: `{v}`" for k, v in prov.items() if not isinstance(v, (dict, list))]))
    return out


# pages


def markdown(results: dict[str, Any], figures: dict[str, Path], media: dict[str, Path]) -> str:
    """report.md: the same sections, figures as relative links."""
    lines = [f"# Study `{results['study']['name']}`", ""]
    for title, blocks in _sections(results, figures, media):
        if title:
            lines += [f"## {title}", ""]
        for b in blocks:
            if isinstance(b, str):
                lines += [b, ""] if not b.startswith("- ") else [b]
            elif b[0] == "table":
                lines += ["", _md_table(b[1], b[2]), ""]
            elif b[0] == "figure" and b[1] in figures:
                lines += ["", f"![{b[1]}]({figures[b[1]].name})", ""]
            elif b[0] == "media" and b[1] in media:
                lines += ["", f"{b[1]}: ![{b[1]}]({media[b[1]].name})", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;font-size:.82em;margin:.8em 0}th,td{border:1px solid #ccc;
padding:3px 6px;text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
code{background:#f5f5f5;padding:0 3px}.media{display:flex;gap:1em;flex-wrap:wrap}.media figure{margin:0}
figcaption{font-size:.8em;color:#555}"""


def page(results: dict[str, Any], figures: dict[str, Path], media: dict[str, Path]) -> str:
    """index.html: one file, every figure and GIF inlined as a data: URI, no script, no external reference."""
    body = [f"<h1>Study <code>{html.escape(results['study']['name'])}</code></h1>"]
    for title, blocks in _sections(results, figures, media):
        if title:
            body.append(f"<h2>{html.escape(title)}</h2>")
        items: list[str] = []
        for b in blocks:
            if isinstance(b, str):
                if b.startswith("- "):
                    items.append(f"<li>{_md_inline(b[2:])}</li>")
                    continue
                if items:
                    body.append("<ul>" + "".join(items) + "</ul>")
                    items = []
                if b:
                    body.append(f"<p>{_md_inline(b)}</p>")
            elif b[0] == "table":
                body.append(_html_table(b[1], b[2]))
            elif b[0] == "figure" and b[1] in figures:
                body.append(f'<img alt="{b[1]}" src="{_data_uri(figures[b[1]])}">')
            elif b[0] == "media" and b[1] in media:
                body.append(
                    f'<div class="media"><figure><img alt="{html.escape(b[1])}" '
                    f'src="{_data_uri(media[b[1]])}"><figcaption>{html.escape(b[1])}</figcaption></figure></div>'
                )
        if items:
            body.append("<ul>" + "".join(items) + "</ul>")
    title = html.escape(f"cvae-sweep report: {results['study']['name']}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
