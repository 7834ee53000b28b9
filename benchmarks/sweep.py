"""`make bench-sweep`: what pruning buys in the TPE demo study (12-15 minutes on 2 cores).

Runs `demo_tpe` in temporary folders, as shipped (its pruner) and with `pruner: none`, same sampler seed
and number of configurations, for each of SAMPLER_SEEDS: what one study saves moves by +-10 points with
the draws and with the order in which two asynchronous workers reach each rung, so the target is judged
on the epochs pooled over the seeds, and the best-value gap on the worst seed. Writes bench/sweep.json
(make bench folds it into bench/results.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from sweeps.spec import find_spec

TARGET_SAVED, TARGET_GAP_DB = 0.4, 0.3
SAMPLER_SEEDS = (1, 2)


def run(spec: dict, folder: Path) -> dict:
    """Run one copy of the study (2 workers) in `folder`; epochs trained and the best configuration mean."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}.yaml"
    spec = {**spec, "overrides": {**spec.get("overrides", {}), "run.out_dir": str(folder / "runs"),
                                  "tracking.system_metrics": False}}
    path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps.run", "sweep", str(path), "--workers", "2"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=spec["name"], storage=f"sqlite:///{folder / 'runs' / 'optuna.db'}")
    trials = study.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials), "runs": len(trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "best_psnr": max((t.value for t in done), default=float("nan")), "seconds": seconds}


def main() -> int:
    spec = yaml.safe_load(find_spec("demo_tpe").read_text())
    by_seed = []
    with tempfile.TemporaryDirectory(prefix="cvae-bench-sweep-") as tmp:
        for seed in SAMPLER_SEEDS:
            seeded = {**spec, "sampler": {**spec["sampler"], "seed": seed}}
            with_p = run(seeded, Path(tmp) / f"with-{seed}")
            without = run({**seeded, "name": "demo_tpe_nopruning", "pruner": {"type": "none"}},
                          Path(tmp) / f"without-{seed}")
            by_seed.append({"sampler_seed": seed, "epochs_with_pruning": with_p["epochs"],
                            "epochs_without": without["epochs"], "saved_fraction": 1 - with_p["epochs"] / without["epochs"],
                            "best_psnr_with_pruning": with_p["best_psnr"], "best_psnr_without": without["best_psnr"],
                            "gap_db": without["best_psnr"] - with_p["best_psnr"], "pruned_runs": with_p["pruned"],
                            "seconds_with": with_p["seconds"], "seconds_without": without["seconds"]})
            print(json.dumps(by_seed[-1]), flush=True)
    total = {k: sum(r[k] for r in by_seed) for k in ("epochs_with_pruning", "epochs_without", "seconds_with", "seconds_without")}
    saved = 1 - total["epochs_with_pruning"] / total["epochs_without"]
    gap = max(r["gap_db"] for r in by_seed)
    mean = lambda k: sum(r[k] for r in by_seed) / len(by_seed)  # noqa: E731
    out = {**total, "saved_fraction": saved, "best_psnr_with_pruning": mean("best_psnr_with_pruning"),
           "best_psnr_without": mean("best_psnr_without"), "worst_gap_db": gap, "by_seed": by_seed}
    Path("bench").mkdir(exist_ok=True)
    (Path("bench") / "sweep.json").write_text(json.dumps(out, indent=1) + "\n")
    ok_saved, ok_gap = saved >= TARGET_SAVED, gap <= TARGET_GAP_DB
    each = ", ".join(f"{r['saved_fraction']:.0%}" for r in by_seed)
    print(f"{'PASS' if ok_saved else 'FAIL'}  pruning saves {saved:.0%} of the epochs over {len(by_seed)} sampler seeds "
          f"({each}) (>= {TARGET_SAVED:.0%})")
    print(f"{'PASS' if ok_gap else 'FAIL'}  best value at most {gap:+.2f} dB from the unpruned study's (<= {TARGET_GAP_DB} dB)")
    return 0 if ok_saved and ok_gap else 1


if __name__ == "__main__":
    sys.exit(main())
