"""`make bench`: speed as side-by-side ratios, never absolute seconds (this machine's load drifts 2x).

- train step: the trainer's real step (batched encoder and decoder, sequence LSTMs, skip terms once per
  skip frame; benchmarks/reference.py is the course-order step on the same modules, weights and batch),
  timed alternately in this process, median of REPS after warm-up, min and max kept; three sizes;
- hardware: FLOPs per iteration of the full-size step (torch.utils.flop_counter), the FLOP/s it
  achieves, and the ratio to a float32 matmul peak measured in this run;
- data: sequences/s from a course PNG tree against the memory-mapped cache (cvae.data.speed, the code
  of `cvae data bench`);
- evaluation: sequences/s of the course protocol plus the diagnostics.
Writes benchmarks/results/speed.json and prints PASS/FAIL per ratio target; exit 1 when a target fails.
`make bench-sweep` (benchmarks/sweep.py) measures what pruning saves in the TPE demo study.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.reference import reference_forward
from cvae import config as config_mod
from cvae.data import course, load_split
from cvae.data.speed import measure
from cvae.evaluate import Evaluator
from cvae.experiments import find_experiment
from cvae.host import keep_freed_memory
from cvae.model import CVAE
from cvae.step import eager_step, make_optimizer
from cvae.trainer import frames_per_call

REPS = 11
OUT = Path(__file__).resolve().parent / "results" / "speed.json"
TARGETS = {  # key in results -> (minimum, what it means)
    "train_step.vgg_full.ratio": (1.4, "full paper-size step vs the course-order step"),
    "train_step.demo.ratio": (2.0, "demo model step vs the course-order step"),
    "hardware.utilisation": (0.6, "full-size step FLOP/s over the measured matmul peak"),
    "data.ratio": (20.0, "memory-mapped cache vs the PNG tree, sequences/s"),
}

# helpers


def _alternate(fns: dict[str, Callable[[], None]], reps: int = REPS) -> dict[str, list[float]]:
    """Seconds per call of each fn, called in turn (so a load spike hits all of them), after warm-up."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def _rates(times: list[float], n: int) -> dict[str, float]:
    """Items/s: median, and the slowest/fastest repetition."""
    return {"": n / statistics.median(times), "_min": n / max(times), "_max": n / min(times)}


def _cfg(exp: str, extra: dict[str, Any]) -> config_mod.Config:
    return config_mod.load(find_experiment(exp), {"data.name": "pushing", **extra})


def _steps(cfg: config_mod.Config, batch: int, seed: int = 0) -> dict[str, Callable[[], None]]:
    """The trainer's step and the reference step, each on its own copy of the same initial weights."""
    g = torch.Generator().manual_seed(seed)
    t = cfg.train.n_past + cfg.train.n_future
    x, c = torch.rand(batch, t, 3, 64, 64, generator=g), torch.randn(batch, t, 7, generator=g)
    torch.manual_seed(seed)
    ours_model = CVAE(cfg.model)
    ours_model.frames_per_call = frames_per_call(
        cfg.run.frames_per_call, torch.device("cpu"), cfg.model
    )  # as the trainer
    ref_model = CVAE(cfg.model)
    ref_model.load_state_dict(ours_model.state_dict())
    if cfg.run.channels_last != "off":  # as the trainer: both steps on the same modules in the same layout
        ours_model, ref_model = (m.to(memory_format=torch.channels_last) for m in (ours_model, ref_model))
    step = eager_step(ours_model, make_optimizer(ours_model, cfg.train.lr, cfg.train.beta1, False), 2, False, 0.0)
    ref_opt = make_optimizer(ref_model, cfg.train.lr, cfg.train.beta1, False)

    def reference() -> None:
        ref_opt.zero_grad(set_to_none=True)
        mse, kld = reference_forward(ref_model, x, c, cfg.train.n_past, True)
        (mse + 1e-4 * kld).backward()
        ref_opt.step()

    return {"ours": lambda: step(x, c, 1e-4, True), "reference": reference}


def train_steps(results: dict[str, Any]) -> None:
    sizes = {
        "demo": ("demo", {}, None),
        "vgg_w025": ("lab", {"model.width": 0.25}, 12),
        "vgg_full": ("lab", {}, 4 if not torch.cuda.is_available() else 12),
    }
    for name, (exp, extra, batch) in sizes.items():
        cfg = _cfg(exp, extra)
        b = batch or cfg.train.batch_size
        steps = _steps(cfg, b)
        flops = {k: _flops(fn) for k, fn in steps.items()}
        times = _alternate(steps)
        ours, ref = _rates(times["ours"], b), _rates(times["reference"], b)
        entry = {f"ours_seq_per_s{k}": v for k, v in ours.items()} | {
            f"reference_seq_per_s{k}": v for k, v in ref.items()
        }
        entry |= {
            "ratio": ours[""] / ref[""],
            "ratio_min": ours["_min"] / ref["_max"],
            "ratio_max": ours["_max"] / ref["_min"],
            "flops_per_iter": flops["ours"],
            "reference_flops_per_iter": flops["reference"],
            # what the batched order saves in work alone: the ratio a step at equal FLOP/s would reach
            "flop_ratio": flops["reference"] / flops["ours"],
            "batch": b,
            "frames": cfg.train.n_past + cfg.train.n_future,
            "teacher_forcing": True,
        }
        results["train_step"][name] = entry
        print(
            f"train step {name:9s} batch {b:2d}: ours {ours['']:7.2f} seq/s, reference {ref['']:7.2f} seq/s, "
            f"ratio {entry['ratio']:.2f} [{entry['ratio_min']:.2f}, {entry['ratio_max']:.2f}] "
            f"(FLOP ratio {entry['flop_ratio']:.2f})",
            flush=True,
        )


def _flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call (torch.utils.flop_counter: matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def hardware(results: dict[str, Any]) -> None:
    """FLOPs of the full-size step, what it achieves, and a float32 matmul peak measured now."""
    b = results["train_step"]["vgg_full"]["batch"]
    flops = results["train_step"]["vgg_full"]["flops_per_iter"]
    # the best of several float32 GEMM sizes: the machine's practical peak in this run
    peak = 0.0
    for n in (1024, 2048, 3072):
        a, m = torch.randn(n, n), torch.randn(n, n)
        mm = _alternate({"mm": lambda: a @ m}, reps=5)["mm"]
        peak = max(peak, 2 * n**3 / min(mm))
    achieved = flops * results["train_step"]["vgg_full"]["ours_seq_per_s"] / b
    results["hardware"] = {
        "flops_per_iter": flops,
        "achieved_flops_per_s": achieved,
        "peak_matmul_flops_per_s": peak,
        "utilisation": achieved / peak,
        "threads": torch.get_num_threads(),
    }
    print(
        f"full-size step: {flops / 1e9:.1f} GFLOP/iteration (batch {b}), {achieved / 1e9:.1f} GFLOP/s achieved, "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s -> {achieved / peak:.0%}",
        flush=True,
    )


def data(results: dict[str, Any]) -> None:
    """A course PNG tree written from the built-in data, read back through `cvae data bench`'s code."""

    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        cfg = config_mod.load(find_experiment("demo"), {"data.cache_dir": f"{tmp}/cache"})
        split = load_split(cfg.data, "validate")
        course.write_split(
            Path(tmp) / "tree", "train", np.asarray(split.frames[:256]), np.asarray(split.cond[:256]), start=512
        )
        r = measure(
            Path(tmp) / "tree", split="train", sequences=256, batch_size=12, n_frames=12, threads=1, tmp_dir=tmp
        )
    results["data"] = {
        "png_seq_per_s": r["source_seq_per_s"],
        "cache_seq_per_s": r["cache_seq_per_s"],
        "ratio": r["cache_seq_per_s"] / r["source_seq_per_s"],
        "loader": r["loader"],
    }
    print(
        f"data: PNG tree {r['source_seq_per_s']:.0f} seq/s, cache {r['cache_seq_per_s']:.0f} seq/s "
        f"-> {results['data']['ratio']:.0f}x",
        flush=True,
    )


def evaluation(results: dict[str, Any]) -> None:

    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        cfg = config_mod.load(find_experiment("demo"), {"data.cache_dir": f"{tmp}/cache"})
        ev = Evaluator(cfg, load_split(cfg.data, "validate"), torch.device("cpu"))
        torch.manual_seed(0)
        model = CVAE(cfg.model)
        if cfg.run.channels_last != "off":  # as the trainer
            model = model.to(memory_format=torch.channels_last)
        times = _alternate({"eval": lambda: ev(model)}, reps=3)["eval"]
    n = len(ev.x)
    results["eval"] = {
        "seq_per_s": n / statistics.median(times),
        "sequences": n,
        "what": "course protocol (2 in, 10 out) + shuffled-condition pass + posterior pass, PSNR/SSIM",
    }
    print(f"evaluation: {results['eval']['seq_per_s']:.0f} sequences/s ({n} sequences, demo model)", flush=True)


def _get(results: dict[str, Any], key: str) -> float | None:
    node: Any = results
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "train_step": {},
        # as the trainer does on a CPU; one process, so both steps of each pair get it
        "malloc_keeps_freed_memory": device == "cpu" and keep_freed_memory(),
    }
    start = time.perf_counter()
    for part in (train_steps, hardware, data, evaluation):
        part(results)
    results["seconds"] = time.perf_counter() - start
    sweep = OUT.with_name("sweep.json")
    if sweep.is_file():
        results["sweep"] = json.loads(sweep.read_text())
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    ok = True
    print(f"\n{results['device']}, torch {results['torch']}; {results['seconds']:.0f} s; -> {OUT}")
    for key, (low, what) in TARGETS.items():
        v = _get(results, key)
        passed = v is not None and v >= low
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {key:28s} {v if v is None else round(v, 2)!s:>8}  (>= {low}: {what})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
