"""results.json + figures -> report.md and one self-contained index.html (figures inlined, no network).

Both pages only render numbers that results.json already holds; nothing is computed here.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from reports.tables import comparisons_table, confirm_table, failures_table, number, settings_table

# helpers


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


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
        f"Seed-noise floor (pooled within-setting std): {number(results['noise_floor'], 3)}."
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
                                number(r.get("diff")),
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
                        f", {number(d['value'])} dB, condition gain {number(d['cond_gain'])} dB"
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
                f"{number(comp['epochs_trained'], 0)} epochs trained of {number(comp['epochs_planned'], 0)} planned; "
                "pruning saved "
                f"{number(comp['epochs_saved_by_pruning'], 0)} epochs "
                f"({number(100 * (comp['saved_fraction'] or 0), 0)}%); "
                f"{number(comp['worker_hours'], 2)} worker-hours.",
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
    shown = [f"- {k}: `{v}`" for k, v in prov.items() if not isinstance(v, (dict, list))]
    out.append(("Provenance", shown))
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
