"""`make bench-sweep`: what pruning buys in the TPE demo study (about 8 minutes on 2 cores).

Runs `demo_tpe` twice in temporary folders, as shipped (its pruner) and with
`pruner: none`, same sampler seed and number of configurations; records the epochs trained and the best
configuration value each way in bench/sweep.json (make bench folds it into bench/results.json).
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
    with tempfile.TemporaryDirectory(prefix="cvae-bench-sweep-") as tmp:
        with_p = run(spec, Path(tmp) / "with")
        without = run({**spec, "name": "demo_tpe_nopruning", "pruner": {"type": "none"}}, Path(tmp) / "without")
    saved = 1 - with_p["epochs"] / without["epochs"]
    out = {"epochs_with_pruning": with_p["epochs"], "epochs_without": without["epochs"], "saved_fraction": saved,
           "best_psnr_with_pruning": with_p["best_psnr"], "best_psnr_without": without["best_psnr"],
           "seconds_with": with_p["seconds"], "seconds_without": without["seconds"], "pruned_runs": with_p["pruned"]}
    Path("bench").mkdir(exist_ok=True)
    (Path("bench") / "sweep.json").write_text(json.dumps(out, indent=1) + "\n")
    gap = without["best_psnr"] - with_p["best_psnr"]
    print(json.dumps(out, indent=1))
    ok_saved, ok_gap = saved >= TARGET_SAVED, gap <= TARGET_GAP_DB
    print(f"{'PASS' if ok_saved else 'FAIL'}  pruning saves {saved:.0%} of the epochs (>= {TARGET_SAVED:.0%})")
    print(f"{'PASS' if ok_gap else 'FAIL'}  best value {gap:+.2f} dB from the unpruned study's (<= {TARGET_GAP_DB} dB)")
    return 0 if ok_saved and ok_gap else 1


if __name__ == "__main__":
    sys.exit(main())
