"""`make bench-decisions`: the demo study's decision rule, its error rates measured by simulation (about 10 minutes).

Every simulated study runs through sweeps.sequential exactly as `make sweep` does (sweeps/simulate.py), with
noise fitted to the per-seed values a demo study measured (benchmarks/data/demo_seeds.json, written by
`python -m benchmarks.decisions --measure STUDY_DB`), for true main effects of 0, +-margin and 2 x margin,
under three noise models (normal, resampled residual rows, normal with a heavy lower tail). Writes
bench/decisions.json and prints the table the README shows; exit 1 when a target fails.
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

from sweeps.questions import main_effects
from sweeps import simulate as sim
from sweeps.design import config_id
from sweeps.spec import load_spec

DATA = Path(__file__).resolve().parent / "data" / "demo_seeds.json"
OUT = Path("bench") / "decisions.json"
STUDIES = 20_000


def measured(path: Path = DATA) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], float],
                                         set[tuple[str, int]], dict[str, Any]]:
    """(configs, values, degenerate runs, the file's header) of the measured demo study."""
    raw = json.loads(path.read_text())
    configs = {config_id(c["params"]): c["params"] for c in raw["configs"]}
    values = {(config_id(c["params"]), k): v for c in raw["configs"] for k, v in enumerate(c["values"]) if v is not None}
    bad = {(config_id(c["params"]), k) for c in raw["configs"] for k in c.get("degenerate_seeds", [])}
    return configs, values, bad, {k: v for k, v in raw.items() if k != "configs"}


def setup(study: str = "demo") -> tuple[dict[str, dict[str, Any]], Any, sim.Noise, dict[str, Any]]:
    """The shipped study's plan, its grid's configurations and the noise fitted to the measured values."""
    spec = load_spec(study)
    configs, values, bad, header = measured()
    if set(configs) != {config_id(p) for p in spec.design}:
        raise SystemExit(f"{DATA}: its configurations are not the {study} grid's; measure it again (--measure)")
    return configs, spec.plan, sim.fit(values, sorted(configs), bad), header


def _job(args: tuple[str, str, dict[str, float], int, int]) -> tuple[str, str, dict[str, Any]]:
    case, kind, effects, n, seed = args
    configs, plan, noise, _ = setup()
    return case, kind, sim.run_case(configs, plan, noise, kind, effects, n, seed)


def evaluate(studies: int, workers: int) -> dict[str, Any]:
    """Every case x noise model, the fixed design of equal power, and whether each target holds."""
    configs, plan, noise, header = setup()
    factors = sorted({q.factor for q in main_effects(configs)})
    jobs = [(case, kind, effects, studies, 1000 + i) for i, (case, effects) in
            enumerate(sim.cases(factors, plan.margin).items()) for kind in sim.NOISES]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(_job, jobs))
    results: list[dict[str, Any]] = []
    for case, kind, r in done:
        results.append({"case": case, **r, "judged": sim.judge(case, r, configs)})
    seq_power = next(r for r in results if r["case"] == "twice the margin" and r["noise"] == "normal")
    power = seq_power["judged"]["power"]["rate"]
    fixed = sim.fixed_design_runs(configs, plan, noise, "normal", seq_power["effects"], power,
                                  max(2000, studies // 5), 7)
    passed = all(j["pass"] for r in results for j in r["judged"].values())
    return {"plan": {"looks": list(plan.looks), "margin_db": plan.margin, "alpha": plan.alpha, "shape": plan.shape},
            "noise": {"measured": header, "seeds": int(noise.rows.shape[0]),
                      "covariance": noise.cov.round(4).tolist(), "configs": list(noise.configs),
                      "bad_p": noise.bad_p, "bad_db": noise.bad_db},
            "studies_per_case": studies, "results": results,
            "fixed_design": {**fixed, "sequential_mean_runs": seq_power["mean_runs"], "sequential_power": power},
            "pass": passed}


def table(report: dict[str, Any]) -> str:
    """The Markdown table of the README: one row per case and noise model."""
    lines = ["| true effects | noise | false better/worse (family) | false equivalent | power | mean runs | looks 1/2/3 |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        j = r["judged"]
        cell = lambda k: (f"{100 * j[k]['rate']:.2f}%" + (f" (<= {100 * j[k]['upper95']:.2f}%)" if "upper95" in j[k] else "")  # noqa: E731
                          + ("" if j[k]["pass"] else " FAIL")) if k in j else "-"
        looks = "/".join(f"{100 * v:.0f}%" for v in r["looks"].values())
        eff = ", ".join(f"{k.split('.')[0]} {v:+g}" for k, v in r["effects"].items())
        lines.append(f"| {r['case']} ({eff}) | {r['noise']} | {cell('false_difference')} | {cell('false_equivalent')} | "
                     f"{cell('power')} | {r['mean_runs']:.1f} | {looks} |")
    f = report["fixed_design"]
    lines.append("")
    lines.append(f"Fixed design of equal power (normal noise, twice the margin): {f['seeds']} seeds per configuration, "
                 f"{f['runs']} runs (power {f['power']:.3f}); the sequential design used {f['sequential_mean_runs']:.1f} "
                 f"runs on average (power {f['sequential_power']:.3f}).")
    return "\n".join(lines)


def measure(db: str, study: str, out: Path = DATA) -> None:
    """Write the per-seed values of a finished demo-grid study (e.g. the demo with `seeds: 8`) to `out`."""
    import optuna

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    by: dict[str, dict[str, Any]] = {}
    # degenerate runs (a model that ignores its condition) are kept: the report leaves them out of its verdicts,
    # the noise model keeps their tail, so the simulated rates are, if anything, pessimistic
    for t in s.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        c = by.setdefault(t.user_attrs["config_id"], {"params": dict(t.params), "values": {}, "degenerate": []})
        c["values"][int(t.user_attrs["seed_index"])] = t.value
        if t.user_attrs.get("degenerate"):
            c["degenerate"].append(int(t.user_attrs["seed_index"]))
    n = 1 + max(k for c in by.values() for k in c["values"])
    configs = [{"params": c["params"], "values": [c["values"].get(k) for k in range(n)],
                "degenerate_seeds": sorted(c["degenerate"])}
               for c in sorted(by.values(), key=lambda c: json.dumps(c["params"], sort_keys=True))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"study": study, "measured": time.strftime("%Y-%m-%d"),
                               "command": f"the demo grid with seeds: {n} (the demo spec with name: {study} and seeds: {n}; cvae sweep "
                                          f"{study}.yaml --workers 2), then "
                                          f"python -m benchmarks.decisions --measure {db} --study {study}",
                               "configs": configs}, indent=1) + "\n")
    print(f"wrote {out} ({len(configs)} configurations x {n} seeds)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decisions")
    p.add_argument("--studies", type=int, default=STUDIES, help="simulated studies per case and noise model")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--measure", metavar="OPTUNA_DB", help="write benchmarks/data/demo_seeds.json from a study instead")
    p.add_argument("--study", default="demo")
    ns = p.parse_args(argv)
    if ns.measure:
        measure(ns.measure, ns.study)
        return 0
    start = time.perf_counter()
    report = evaluate(ns.studies, ns.workers)
    report["seconds"] = time.perf_counter() - start
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"{'PASS' if report['pass'] else 'FAIL'}: {ns.studies} studies per case, {report['seconds']:.0f} s -> {OUT}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
