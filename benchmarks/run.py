"""`make bench`: speed and memory targets, measured (never asserted inside timed tests).

Each line: what, the measured number, the target, and PASS/FAIL; exit 1 if any target fails.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

from cvae import config as config_mod
from cvae.data import pushing
from cvae.metrics import psnr, ssim
from cvae.model import CVAE


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    results: list[tuple[str, float, str, bool]] = []

    s = _time(lambda: pushing.generate(512, 0), repeat=3)
    results.append(("pushing generator, sequences/s (n=512)", 512 / s, ">= 500", 512 / s >= 500))

    cfg = config_mod.load(config_mod.find_experiment("demo"))
    model = CVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    t = cfg.train
    x = torch.rand(t.batch_size, t.n_past + t.n_future, 3, 64, 64)
    c = torch.randn(t.batch_size, t.n_past + t.n_future, 7)

    def step(tf: bool) -> None:
        terms = model(x, c, t.n_past, tf)
        opt.zero_grad()
        (terms.mse + 1e-4 * terms.kld).backward()
        opt.step()

    s_tf = _time(lambda: step(True), repeat=5)
    s_free = _time(lambda: step(False), repeat=5)
    results.append(("demo train step, teacher forcing, seq/s", t.batch_size / s_tf, ">= 40", t.batch_size / s_tf >= 40))
    results.append(("demo train step, free running, seq/s", t.batch_size / s_free, ">= 30", t.batch_size / s_free >= 30))

    model.eval()
    xe = torch.rand(64, 12, 3, 64, 64)
    ce = torch.randn(64, 12, 7)
    s_pred = _time(lambda: model.predict(xe, ce, 2, 10), repeat=3)
    results.append(("demo predict (course protocol), seq/s", 64 / s_pred, ">= 200", 64 / s_pred >= 200))

    a, b = torch.rand(64, 10, 3, 64, 64), torch.rand(64, 10, 3, 64, 64)
    s_m = _time(lambda: (psnr(a, b), ssim(a, b)), repeat=3)
    results.append(("PSNR+SSIM, frames/s", 640 / s_m, ">= 2000", 640 / s_m >= 2000))

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.append(("peak RSS of this benchmark, MB", rss_mb, "<= 4000", rss_mb <= 4000))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, numpy {np.__version__}")
    for name, value, target, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name:45s} {value:10.1f}  (target {target})")
    return 0 if all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
