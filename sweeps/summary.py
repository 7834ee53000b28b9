"""The study's summary: one row per configuration, the best one, the verdicts or the race, what is left."""

from __future__ import annotations

import optuna

from sweeps import plan, sequential
from sweeps.design import SEARCH, lost_runs
from sweeps.spec import StudySpec

def summary(study: optuna.Study, spec: StudySpec) -> str:
    """One row per configuration (its seeds' mean and spread), the best one, then where to look next."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"config": t.user_attrs.get("config_id", "-"), "phase": t.user_attrs.get("phase", SEARCH),
                     **{k.split(".", 1)[1] if "." in k else k: v for k, v in t.params.items()},
                     "state": t.state.name, "value": t.value, "degenerate": t.user_attrs.get("degenerate"),
                     "cond_gain": t.user_attrs.get("cond_gain"), "copy_last": t.user_attrs.get("copy_last_psnr"),
                     "note": t.user_attrs.get("fail_reason", "")})
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {s.name.lower()}" for s, n in plan.counts(study).items() if n)
             + " run(s), " + (f"seeds at looks {', '.join(map(str, spec.plan.looks))} (margin {spec.margin_db:g} dB)"
                              if spec.sequential else f"{spec.seeds} seed(s) per configuration")]
    if rows:
        df = pd.DataFrame(rows)
        keys = ["config", "phase"] + [c for c in df.columns if c not in ("config", "phase", "state", "value", "degenerate",
                                                                         "cond_gain", "copy_last", "note")]
        done = df[df.state == "COMPLETE"]
        agg = df.groupby(keys, dropna=False, sort=False).agg(runs=("state", "size")).join(
            done.groupby(keys, dropna=False, sort=False).agg(
                done=("value", "size"), mean=("value", "mean"), std=("value", "std"), min=("value", "min"),
                max=("value", "max"), cond_gain=("cond_gain", "mean"),
                degenerate=("degenerate", lambda d: int(sum(bool(x) for x in d)))), how="left").reset_index()
        agg = agg.sort_values("mean", ascending=spec.direction == "minimize", na_position="last")
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            lines.append(agg.to_string(index=False))
        search = agg[(agg.phase == SEARCH) & agg["mean"].notna()]
        if not search.empty:
            b = search.iloc[0]
            params = {k: b[k].item() if hasattr(b[k], "item") else b[k] for k in keys[2:]}
            lines.append(f"best configuration {b.config}: {spec.metric} mean {b['mean']:.2f} over {int(b.done)} seed(s) "
                         f"(copy-last {done.copy_last.mean():.2f}) params {params}")
            if spec.seeds < 2 and not spec.racing:
                lines.append("one seed per configuration: the ranking cannot be told apart from seed noise; "
                             f"`cvae sweep {spec.name} --confirm 3 --seeds 3` re-runs the top 3 with fresh seeds")
        failed = df[df.note.astype(bool)]
        for _, f in failed.iterrows():
            lines.append(f"  failed run of {f.config}: {f.note}")
    if spec.sequential and spec.grid:
        state = plan.seq_state(study, spec)
        through = state.look if state.done else state.look - 1
        if through:
            decisions = sequential.replay(plan.questions_of(spec), plan.usable_values(study), spec.plan, through)
            lines.append(f"verdicts after look {through} of {len(spec.plan.looks)}:")
            for name, d in decisions.items():
                more = (f", about {d.seeds_needed:.0f} seeds per configuration would decide"
                        if d.verdict == sequential.CANNOT_TELL and d.seeds_needed == d.seeds_needed else "")
                lo, hi = d.interval_equivalence if d.verdict == sequential.EQUIVALENT else d.interval
                lines.append(f"  {name}: {d.verdict}{' (' + d.margin + ')' if d.margin else ''} at look {d.look}, "
                             f"{d.diff:+.2f} [{lo:+.2f}, {hi:+.2f}], {d.runs} runs{more}")
    if spec.racing:
        lanes, order = plan.race_lanes(study, spec)
        lines.append(f"race (seeds {', '.join(map(str, spec.plan.looks))}, margin {spec.margin_db:g}): "
                     + "; ".join(f"{c} {lanes[c].status} at {lanes[c].target} seeds"
                                 + (f" vs {lanes[c].against} ({lanes[c].diff:+.2f})" if lanes[c].against else "")
                                 for c in order))
    lost = lost_runs(plan.runs_of(study))
    if lost:
        lines.append(f"{len(lost)} run(s) lost to kills or stops with no retry left (trials "
                     f"{', '.join(str(r.number) for r in lost)}): the same command again runs them")
    lines.append("next: `make ui` to browse the runs, `make report` for the comparison report")
    return "\n".join(lines)
