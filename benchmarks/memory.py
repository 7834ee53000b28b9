"""Memory per trial, for packing trials onto a GPU (`--gpus-per-worker 0.5`) or a node: `make bench-memory`.

Each experiment trains for a few iterations (one evaluation included) in a fresh process, as one sweep trial
does, and reports the process's peak resident memory and, on CUDA, PyTorch's peak allocated and reserved GPU
memory (what another trial on the same GPU cannot use). Writes benchmarks/results/memory.json.
`python -m benchmarks.memory --one EXP` measures one experiment in this process and prints its JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cvae import config as config_mod
from cvae.experiments import find_experiment
from cvae.trainer import train

EXPERIMENTS = ("demo", "lab")
OUT = Path("benchmarks/results/memory.json")
MIB = 2**20


def measure(exp: str, workdir: str) -> dict:
    """Train `exp` for 2 epochs of 3 iterations here; this process's peak memory and, on CUDA, the GPU's."""
    overrides = [
        "tracking.enabled=false",
        "train.progress=false",
        "train.niter=2",
        "train.epoch_size=3",
        "eval.every=1",
        "tf.start_decay_epoch=1",  # the second epoch free-running, the costlier branch
        f"run.out_dir={workdir}/runs",
        f"data.cache_dir={workdir}/cache",
    ]
    if exp == "lab":
        overrides += ["data.name=pushing", "data.n_train=64", "data.n_val=16", "eval.sequences=16"]
    cfg = config_mod.load(find_experiment(exp), overrides)
    train(cfg)
    out = {
        "experiment": exp,
        "model": f"{cfg.model.arch} x{cfg.model.width:g} g{cfg.model.g_dim} z{cfg.model.z_dim} rnn{cfg.model.rnn_size}",
        "batch_size": cfg.train.batch_size,
        "frames": cfg.train.n_past + cfg.train.n_future,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
    }
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
        out["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
    else:
        out["device"] = "cpu"
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"] and len(argv) == 2:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(measure(argv[1], d)))
        return 0
    results = []
    for exp in EXPERIMENTS:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--one", exp], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(f"memory: {exp} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    header = {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()}
    OUT.write_text(json.dumps({**header, "trials": results}, indent=1) + "\n")
    print(f"memory: wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
