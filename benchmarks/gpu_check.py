"""The GPU checks of the speed work, in one short script: `python3 -m benchmarks.gpu_check [--small]`.

Times the lab-size training step (VGG64, g128, z64, rnn 256, batch 12, 12 frames) side by side with
the course-order reference step, eager and replayed from CUDA graphs, teacher-forced and free-running;
checks that the graphed step trains like the eager one; then runs `train()` on the built-in data for a
few hundred iterations and compares its time per iteration with the bare step's. Writes
$OUT/gpu.json (or ./gpu.json). `--small` shrinks everything for a CPU dry run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.reference import reference_forward
from cvae import config as config_mod
from cvae.experiments import find_experiment
from cvae.model import CVAE
from cvae.step import eager_step, make_optimizer, make_step

SMALL = "--small" in sys.argv
OUT = Path(os.environ.get("OUT", "."))
REPEATS = 3 if SMALL else 30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int = REPEATS) -> dict[str, float]:
    """Median/min/max seconds of fn() after 3 warm-up calls."""
    for _ in range(3):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times)}


def lab_cfg(extra: list[str]) -> config_mod.Config:
    small = ["model.width=0.125", "model.g_dim=32", "model.z_dim=8", "model.rnn_size=32"] if SMALL else []
    return config_mod.load(find_experiment("lab"), ["data.name=pushing"] + small + extra)


def step_variants(device: torch.device, out: dict) -> None:
    cfg = lab_cfg([])
    b, T = cfg.train.batch_size, cfg.train.n_past + cfg.train.n_future
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, T, 3, 64, 64, generator=g).to(device)
    c = torch.randn(b, T, 7, generator=g).to(device)
    variants = {  # name: (amp, channels_last, graphs, teacher forcing, reference order)
        "reference_fp32_tf": (False, False, False, True, True),
        "eager_fp32_tf": (False, False, False, True, False),
        "eager_bf16_cl_tf": (True, True, False, True, False),
        "graphed_bf16_cl_tf": (True, True, True, True, False),
        "graphed_bf16_tf": (True, False, True, True, False),
        "graphed_fp32_tf": (False, False, True, True, False),
        "reference_fp32_free": (False, False, False, False, True),
        "eager_bf16_cl_free": (True, True, False, False, False),
        "graphed_bf16_cl_free": (True, True, True, False, False),
    }
    for name, (amp, cl, graphs, tf, ref) in variants.items():
        if graphs and device.type != "cuda":
            continue
        try:
            torch.manual_seed(0)
            model = CVAE(cfg.model).to(device)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            opt = make_optimizer(model, 1e-4, 0.9, capturable=graphs)
            if ref:

                def step() -> None:
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        mse, kld = reference_forward(model, x, c, 2, tf)
                    (mse + kld).backward()
                    opt.step()
            else:
                fn = make_step(model, opt, device, 2, amp, 0.0, graphs)

                def step() -> None:
                    fn(x, c, 1.0, tf)

            out["steps"][name] = timed(step, device)
        except Exception as e:  # noqa: BLE001 - a failed variant is a result too
            out["steps"][name] = {"error": f"{type(e).__name__}: {e}"[:400]}
        print(name, out["steps"][name], flush=True)


def graphed_trains_like_eager(device: torch.device, out: dict) -> None:
    """Same start, same fixed batch, 40 steps: the graphed and the eager losses must fall alike."""
    if device.type != "cuda":
        return
    cfg = lab_cfg([])
    b, T = cfg.train.batch_size, cfg.train.n_past + cfg.train.n_future
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, T, 3, 64, 64, generator=g).to(device)
    c = torch.randn(b, T, 7, generator=g).to(device)
    curves = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        model = CVAE(cfg.model).to(device).to(memory_format=torch.channels_last)
        opt = make_optimizer(model, 2e-4, 0.9, capturable=graphs)
        fn = make_step(model, opt, device, 2, True, 0.0, graphs) if graphs else eager_step(model, opt, 2, True, 0.0)
        curves[graphs] = [float(fn(x, c, 1e-4, True)[1]) for _ in range(40)]
    out["graphed_vs_eager_mse"] = {
        "eager": curves[False][::8],
        "graphed": curves[True][::8],
        "rel_diff_last": abs(curves[True][-1] - curves[False][-1]) / curves[False][-1],
    }
    print("graphed vs eager", out["graphed_vs_eager_mse"], flush=True)


def train_check(device: torch.device, out: dict) -> None:
    # deferred: torch loads after the device is known
    from cvae.trainer import train

    epoch_size = 5 if SMALL else 400  # long enough that each branch's one-time graph capture is amortised
    extra = [
        "tracking.enabled=false",
        "train.progress=false",
        "train.niter=2",
        f"train.epoch_size={epoch_size}",
        "eval.every=2",
        "eval.sequences=256",
        "eval.batch_size=256",
        "data.n_train=1024",
        "data.n_val=256",
        "run.out_dir=/tmp/gpu_check_runs",
        "data.cache_dir=/tmp/gpu_check_cache",
        "tf.start_decay_epoch=1",
    ]
    if SMALL:
        extra += ["eval.sequences=16", "data.n_train=32", "data.n_val=16"]
    cfg = lab_cfg(extra)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the step variants before ran in this process
    t = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t
    h = result.history
    out["train"] = {
        "iterations": cfg.total_iters,
        "wall_s": wall,
        "ms_per_iter_epoch1": 1000 * h[0]["perf/epoch_seconds"] / epoch_size,
        "ms_per_iter_epoch2": 1000 * h[1]["perf/epoch_seconds"] / epoch_size,
        "tfr": [r["sched/tfr"] for r in h],
        "val_psnr": h[-1].get("val/psnr"),
        "copy_last": h[-1].get("val/psnr_copy_last"),
        "cond_gain": h[-1].get("val/cond_gain"),
        "psnr_moving": h[-1].get("val/psnr_moving"),
        "psnr_moving_copy_last": h[-1].get("val/psnr_moving_copy_last"),
    }
    if device.type == "cuda":  # one lab-size trial's GPU memory: how many fit on one GPU (--gpus-per-worker)
        out["train"]["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["train"]["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    print("train", out["train"], flush=True)


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "small": SMALL,
        "steps": {},
    }
    torch.backends.cudnn.benchmark = True
    for part in (step_variants, graphed_trains_like_eager, train_check):
        try:
            part(device, out)
        except Exception as e:  # noqa: BLE001
            out[f"{part.__name__}_error"] = f"{type(e).__name__}: {e}"[:600]
            print(part.__name__, "failed:", e, flush=True)
        (OUT / "gpu.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
