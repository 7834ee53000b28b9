"""What a running study has done, for people: a study-level bar in a terminal, one line per finished run in logs.

The coordinator calls `Progress.tick(study)` every couple of seconds while its workers run. In a terminal
(tqdm): runs done / planned, running, failed, the best configuration so far with its interval, elapsed and
an estimate of the time left. Elsewhere (CI logs, nohup, a file): one line per finished run (configuration,
seed, value, condition gain, minutes); the look lines come from the coordinator's decisions.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

import optuna
from optuna.trial import TrialState

from sweeps import outcome, plan, stats
from sweeps.design import SEARCH, Run, results
from sweeps.outcome import failure_floor, scored
from sweeps.plan import race_lanes, seq_state

FINAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# helpers


def planned_runs(study: optuna.Study, spec: Any, runs: list[Run] | None = None, attrs: dict | None = None) -> int:
    """Runs the study plans now: a grid's current seed targets, a race's lanes, else configurations x seeds.
    `runs`, `attrs`: the study's, already read."""
    attrs = attrs if attrs is not None else study.user_attrs
    if spec.grid:
        if spec.sequential:
            return sum(seq_state(study, spec, attrs).targets.values())
        return len(spec.design) * spec.seeds
    target = int(attrs.get("n_trials", spec.trials))
    if spec.racing:
        lanes, order = race_lanes(study, spec, runs, attrs)
        return sum(lane.target for lane in lanes.values()) + max(0, target - len(order)) * spec.seeds
    return target * spec.seeds


def best_so_far(
    study: optuna.Study, spec: Any, runs: list[Run], attrs: dict | None = None
) -> tuple[str, float, tuple[float, float], int] | None:
    """(config_id, score, 95% t interval of its scored results, results) of the study's pick so far
    (plan.best_config: failures count a margin below the worst trained run)."""
    best = plan.best_config(study, spec, runs, attrs)
    if best is None:
        return None
    res = results(runs)
    floor = failure_floor((v for v in res.values() if not math.isnan(v)), spec.margin_db, spec.direction == "maximize")
    vals = [scored(v, floor) for (c, _), v in res.items() if c == best.config_id]
    if len(vals) < 2:
        return best.config_id, best.score, (math.nan, math.nan), len(vals)
    return best.config_id, best.score, stats.interval(stats.mean_estimate(vals)), len(vals)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered on exit) where the platform can; elsewhere nothing changes."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    old = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


class Progress:
    """Polls a study; draws a bar (terminal) or prints a line per finished run (otherwise)."""

    def __init__(self, spec: Any, workers: int, out: TextIO | None = None, tty: bool | None = None):
        self.spec, self.workers = spec, max(1, workers)
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.start = time.monotonic()
        self.seen: set[int] = set()
        self.bar: Any = None
        self.last = 0.0

    def tick(self, study: optuna.Study, every: float = 2.0) -> None:
        """At most once per `every` seconds: read the study and report. Ctrl-C / SIGTERM wait until the read is
        done: a KeyboardInterrupt inside a SQLite query can leave its lock held, and the stop that follows (which
        reads the study again) then waits on it for the storage's whole lock timeout."""
        now = time.monotonic()
        if now - self.last < every:
            return
        self.last = now
        with _signals_deferred():
            self._tick(study)

    def _tick(self, study: optuna.Study) -> None:
        every = study.get_trials(deepcopy=False)  # one read of the trials and one of the study's attributes
        attrs = study.user_attrs
        trials = [t for t in every if t.user_attrs.get("phase", SEARCH) == SEARCH]
        done = [t for t in trials if t.state in FINAL]
        running = sum(t.state == TrialState.RUNNING for t in trials)
        runs = plan.runs_of(study, every)
        kinds = plan.outcomes(runs)
        failed = kinds[outcome.COLLAPSED] + kinds[outcome.DIVERGED]
        planned = max(planned_runs(study, self.spec, runs, attrs), len(done) + running)
        best = best_so_far(study, self.spec, runs, attrs)
        if self.tty:
            self._bar(len(done), planned, running, failed, best, done)
        else:
            for t in sorted(done, key=lambda t: t.number):
                if t.number not in self.seen:
                    self.seen.add(t.number)
                    self.out.write(self._line(t, len(self.seen), planned) + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # views

    def _line(self, t: optuna.trial.FrozenTrial, n: int, planned: int) -> str:
        a = t.user_attrs
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        value = f"{t.value:.2f}" if t.value is not None else "-"
        gain = a.get("cond_gain")
        minutes = t.duration.total_seconds() / 60 if t.duration else math.nan
        return (
            f"run {n}/{planned}: {a.get('config_id', '-')} ({params}) seed {a.get('seed_index', '-')}: "
            f"{outcome.of_trial(t)}, {self.spec.metric} {value}"
            + (f", cond_gain {gain:.2f}" if isinstance(gain, float) else "")
            + f", {minutes:.1f} min"
        )

    def _bar(self, n: int, planned: int, running: int, failed: int, best: Any, done: list[Any]) -> None:
        from tqdm import tqdm

        if self.bar is None:
            # a terminal that reports no size (a fresh pseudo-terminal) gets 100 x 24, not a hidden bar
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(
                total=planned,
                desc=f"study {self.spec.name}",
                unit="run",
                file=self.out,
                ncols=size.columns,
                nrows=max(size.lines, 2),
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}]{postfix}",
            )
        self.bar.total = planned
        self.bar.n = n
        post = f"{running} running, {failed} failed"
        if best is not None:
            cid, mean, (lo, hi), k = best
            post += f", best {mean:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if k > 1 else "") + f" n={k}"
        self.bar.set_postfix_str(post, refresh=False)
        self.bar.refresh()
