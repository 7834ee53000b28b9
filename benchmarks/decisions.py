"""`make bench-decisions`: the demo study's decision rule, its error rates measured by simulation (about 15 minutes).

Every simulated study runs through sweeps.sequential exactly as `make sweep` does (sweeps/simulate.py), with
noise fitted to the per-seed values a demo study measured (benchmarks/data/demo_seeds.json, written by
`python -m benchmarks.decisions --measure STUDY_DB`): true main effects of 0, +-margin and 2 x margin under
every noise model, the ones that hurt included (one-sided outliers, one side failing 10% or 30% of its runs, the
study's own failures). Then the picks of sampled studies (sweeps/selection.py): races and fixed designs of the
same configurations. Writes benchmarks/results/decisions.json and prints the tables the README and
docs/statistics.md show; exit 1 when a target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sweeps import outcome, selection as sel, simulate as sim
from sweeps.design import config_id
from sweeps.questions import main_effects
from sweeps.spec import load_spec

DATA = Path(__file__).resolve().parent / "data" / "demo_seeds.json"
OUT = Path(__file__).resolve().parent / "results" / "decisions.json"
STUDIES = 20_000
SELECTION_STUDIES = 4_000
CONFIGS = 6  # demo_tpe's trials
POPULATIONS = (
    sel.Population("spread 0.5 dB", 0.5),
    sel.Population("spread 1 dB", 1.0),
    sel.Population("spread 2 dB", 2.0),
    sel.Population("spread 1 dB, a third fail 30%", 1.0, 1 / 3, 0.3),
)


def measured(
    path: Path = DATA,
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], float], set[tuple[str, int]], dict[str, Any]]:
    """(configs, values, failed runs, the file's header) of the measured demo study."""
    raw = json.loads(path.read_text())
    configs = {config_id(c["params"]): c["params"] for c in raw["configs"]}
    values = {
        (config_id(c["params"]), k): v for c in raw["configs"] for k, v in enumerate(c["values"]) if v is not None
    }
    bad = {(config_id(c["params"]), k) for c in raw["configs"] for k in c.get("degenerate_seeds", [])}
    return configs, values, bad, {k: v for k, v in raw.items() if k != "configs"}


def setup(study: str = "demo") -> tuple[dict[str, dict[str, Any]], Any, sim.Noise, dict[str, Any]]:
    """The shipped study's plan, its grid's configurations and the noise fitted to the measured values, its
    one-sided models acting on the second factor (the demo's teacher-forcing start)."""
    spec = load_spec(study)
    configs, values, bad, header = measured()
    if set(configs) != {config_id(p) for p in spec.design}:
        raise SystemExit(f"{DATA}: its configurations are not the {study} grid's; measure it again (--measure)")
    factors = sorted({q.factor for q in main_effects(configs)})
    return configs, spec.plan, sim.fit(values, sorted(configs), bad).sided(configs, factors[1]), header


def _job(args: tuple[str, str, dict[str, float], int, int]) -> tuple[str, str, dict[str, Any]]:
    case, kind, effects, n, seed = args
    configs, plan, noise, _ = setup()
    return case, kind, sim.run_case(configs, plan, noise, kind, effects, n, seed)


def _selection_job(args: tuple[sel.Population, float, float, float, int, int]) -> list[dict[str, Any]]:
    """Every design on one population: the shipped race, a race from 2 seeds, a fixed design of the race's runs,
    one seed a configuration, and one seed with the top 2 confirmed on 3 fresh seeds."""
    pop, sd, rho, margin, n, seed = args
    race = sel.run_selection(
        pop, sel.Design("race, 3 to 5 seeds (shipped)", looks=(3, 4, 5)), CONFIGS, sd, rho, margin, n, seed
    )
    equal = max(1, round(race["mean_runs"] / CONFIGS))
    designs = [
        sel.Design("race, 2 to 4 seeds", looks=(2, 3, 4)),
        sel.Design(f"fixed, {equal} seeds (the race's runs)", seeds=equal),
        sel.Design("one seed each", seeds=1),
        sel.Design("one seed, top 2 confirmed on 3", seeds=1, confirm=(2, 3)),
    ]
    return [race] + [sel.run_selection(pop, d, CONFIGS, sd, rho, margin, n, seed) for d in designs]


def evaluate(studies: int, workers: int, selection_studies: int = SELECTION_STUDIES) -> dict[str, Any]:
    """Every case x noise model, the fixed design of equal power, the picks, and whether each target holds."""
    configs, plan, noise, header = setup()
    factors = sorted({q.factor for q in main_effects(configs)})
    jobs = [
        (case, kind, effects, studies, 1000 + 10 * i + j)
        for j, kind in enumerate(sim.NOISES)
        for i, (case, effects) in enumerate(
            sim.cases(factors, plan.margin, sim.failure_signs(configs, noise, kind)).items()
        )
    ]
    sd = float(np.sqrt(np.diag(noise.cov)).mean())
    corr = noise.cov / np.outer(np.sqrt(np.diag(noise.cov)), np.sqrt(np.diag(noise.cov)))
    rho = float(corr[np.triu_indices_from(corr, 1)].mean())
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(_job, jobs))
        picks = [
            r
            for rs in pool.map(
                _selection_job,
                [(p, sd, rho, plan.margin, selection_studies, 7000 + i) for i, p in enumerate(POPULATIONS)],
            )
            for r in rs
        ]
    results: list[dict[str, Any]] = [
        {"case": case, **r, "judged": sim.judge(case, r, configs)} for case, kind, r in done
    ]
    seq_power = next(r for r in results if r["case"] == "twice the margin" and r["noise"] == "normal")
    power = seq_power["judged"]["power"]["rate"]
    fixed = sim.fixed_design_runs(
        configs, plan, noise, "normal", seq_power["effects"], power, max(2000, studies // 5), 7
    )
    passed = all(j["pass"] for r in results for j in r["judged"].values() if "pass" in j)
    return {
        "plan": {"looks": list(plan.looks), "margin_db": plan.margin, "alpha": plan.alpha, "shape": plan.shape},
        "noise": {
            "measured": header,
            "seeds": int(noise.rows.shape[0]),
            "covariance": noise.cov.round(4).tolist(),
            "configs": list(noise.configs),
            "failed_runs": int(noise.failed.sum()),
            "bad_p": noise.bad_p,
            "bad_db": noise.bad_db,
            "outlier_p": sim.OUTLIER_P,
            "outlier_sds": list(sim.OUTLIER_SDS),
            "side_a": [c for c, a in zip(noise.configs, noise.side_a) if a],
            "side_b": [c for c, b in zip(noise.configs, noise.side_b) if b],
        },
        "studies_per_case": studies,
        "results": results,
        "fixed_design": {**fixed, "sequential_mean_runs": seq_power["mean_runs"], "sequential_power": power},
        "selection": {
            "configurations": CONFIGS,
            "per_run_sd": sd,
            "seed_correlation": rho,
            "studies_per_design": selection_studies,
            "results": picks,
        },
        "pass": passed,
    }


def _pct(j: dict[str, Any], k: str) -> str:
    if k not in j:
        return "-"
    bound = f" (<= {100 * j[k]['upper95']:.2f}%)" if "upper95" in j[k] else ""
    return f"{100 * j[k]['rate']:.2f}%{bound}" + ("" if j[k].get("pass", True) else " FAIL")


def table(report: dict[str, Any]) -> str:
    """The Markdown tables of docs/statistics.md: one row per case and noise model, then the picks."""
    lines = [
        "| true effects | noise | false better/worse (family) | false equivalent | power | failure-only difference "
        "found | mean runs | looks 1/2/3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        j = r["judged"]
        looks = "/".join(f"{100 * v:.0f}%" for v in r["looks"].values())
        eff = ", ".join(f"{k.split('.')[0]} {v:+g}" for k, v in r["effects"].items())
        lines.append(
            f"| {r['case']} ({eff}) | {r['noise']} | {_pct(j, 'false_difference')} | "
            f"{_pct(j, 'false_equivalent')} | {_pct(j, 'power')} | {_pct(j, 'failure_found')} | "
            f"{r['mean_runs']:.1f} | {looks} |"
        )
    f = report["fixed_design"]
    lines += [
        "",
        f"Fixed design of equal power (normal noise, twice the margin): {f['seeds']} seeds per configuration, "
        f"{f['runs']} runs (power {f['power']:.3f}); the sequential design used {f['sequential_mean_runs']:.1f} "
        f"runs on average (power {f['sequential_power']:.3f}).",
        "",
    ]
    s = report["selection"]
    lines += [
        f"Picks of {s['configurations']} configurations (per-run SD {s['per_run_sd']:.2f} dB, seed correlation "
        f"{s['seed_correlation']:.2f}, {s['studies_per_design']:,} studies per row):",
        "",
        "| configurations | design | pick within the margin of the best | mean regret (dB) | 90% regret | "
        "mean runs | best put out |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["results"]:
        out = "-" if r["best_put_out"] is None else f"{100 * r['best_put_out']:.1f}%"
        lines.append(
            f"| {r['population']} | {r['design']} | {100 * r['within_margin']:.1f}% | {r['mean_regret']:.3f} | "
            f"{r['regret_p90']:.2f} | {r['mean_runs']:.1f} | {out} |"
        )
    return "\n".join(lines)


def measure(db: str, study: str, out: Path = DATA) -> None:
    """Write the per-seed values of a finished demo-grid study (e.g. the demo with `seeds: 8`) to `out`."""
    import optuna

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    by: dict[str, dict[str, Any]] = {}
    # collapsed runs keep their measured value and are listed: the noise model turns them into failures
    for t in s.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        c = by.setdefault(t.user_attrs["config_id"], {"params": dict(t.params), "values": {}, "degenerate": []})
        c["values"][int(t.user_attrs["seed_index"])] = t.value
        if outcome.of_trial(t) == outcome.COLLAPSED:
            c["degenerate"].append(int(t.user_attrs["seed_index"]))
    n = 1 + max(k for c in by.values() for k in c["values"])
    configs = [
        {
            "params": c["params"],
            "values": [c["values"].get(k) for k in range(n)],
            "degenerate_seeds": sorted(c["degenerate"]),
        }
        for c in sorted(by.values(), key=lambda c: json.dumps(c["params"], sort_keys=True))
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "study": study,
                "measured": time.strftime("%Y-%m-%d"),
                "command": f"the demo grid with seeds: {n} (the demo spec with name: {study} and seeds: {n}; "
                f"cvae sweep {study}.yaml --workers 2), then "
                f"python -m benchmarks.decisions --measure {db} --study {study}",
                "configs": configs,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out} ({len(configs)} configurations x {n} seeds)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decisions")
    p.add_argument("--studies", type=int, default=STUDIES, help="simulated studies per case and noise model")
    p.add_argument("--selection-studies", type=int, default=SELECTION_STUDIES, help="simulated studies per pick design")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--measure", metavar="OPTUNA_DB", help="write benchmarks/data/demo_seeds.json from a study instead")
    p.add_argument("--study", default="demo")
    ns = p.parse_args(argv)
    if ns.measure:
        measure(ns.measure, ns.study)
        return 0
    start = time.perf_counter()
    report = evaluate(ns.studies, ns.workers, ns.selection_studies)
    report["seconds"] = time.perf_counter() - start
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"{'PASS' if report['pass'] else 'FAIL'}: {ns.studies} studies per case, {report['seconds']:.0f} s -> {OUT}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
