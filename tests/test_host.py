"""Process settings for CPU training: malloc keeps what a step frees (no page faults per step)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cvae.host import keep_freed_memory

# The demo model's training step, three times to warm up, then the page faults of seven more (a subprocess:
# the malloc setting is process-wide and cannot be undone).
SCRIPT = """
import resource, sys, torch
from cvae import config
from cvae.experiments import find_experiment
from cvae.host import keep_freed_memory
from cvae.model import CVAE
from cvae.step import eager_step, make_optimizer
if sys.argv[1] == "keep":
    assert keep_freed_memory()
cfg = config.load(find_experiment("demo"), {})
torch.manual_seed(0)
model = CVAE(cfg.model)
model.frames_per_call = 128
step = eager_step(model, make_optimizer(model, 1e-3, 0.9, False), 2, False, 0.0)
x, c = torch.rand(16, 12, 3, 64, 64), torch.randn(16, 12, 7)
for _ in range(3):
    step(x, c, 1e-4, True)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    step(x, c, 1e-4, True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_a_training_step_stops_faulting_pages_in_once_malloc_keeps_freed_memory() -> None:
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, timeout=300
            ).stdout
        )
        for mode in ("keep", "default")
    }
    # measured: 0-4,000 (a burst while the heap settles) against 13,000-30,000 in EVERY step (4 KiB each)
    assert faults["keep"] * 10 < faults["default"], faults


def test_keep_freed_memory_says_whether_it_applied() -> None:
    assert keep_freed_memory() is (sys.platform == "linux")
