"""The worker loop (`cvae worker`): take queued runs and new configurations until the study has its target."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from cvae.config import Config
from cvae.trainer import Diverged
from sweeps import outcome, plan, space
from sweeps.design import SEARCH, search_configs
from sweeps.lock import AskLock
from sweeps.objective import Context, make_objective
from sweeps.provenance import code_mismatch
from sweeps.spec import SpecError, StudySpec
from sweeps.storage import MAX_RETRY, make_storage

IDLE_POLL_S = 2  # a worker with nothing to take looks again this often
STUDY_WAIT_S = 600  # a worker waits this long for its study to be created by `cvae sweep`


def worker_loop(spec: StudySpec, cfg: Config, extra: list[str], url: str, index: int, threads: int) -> int:
    """Run queued runs and new configurations until the study has its target; returns runs done here.

    Queued (WAITING) runs go first: the other seeds of a configuration, a grid's design, confirmation
    seeds, retries of lost runs. A sampled study then starts new configurations until `trials` of them
    exist. A worker with nothing to take stays while others run, to retry their runs if they die.
    """
    storage = make_storage(url, spec, cfg)
    deadline = time.monotonic() + STUDY_WAIT_S
    while True:  # a worker started with (or before) its coordinator, e.g. a SLURM array, waits for the study
        try:
            start = len(optuna.load_study(study_name=spec.name, storage=storage).get_trials(deepcopy=False))
            break
        except KeyError:
            if time.monotonic() > deadline:
                raise SpecError(
                    f"no study {spec.name} in {url} after {STUDY_WAIT_S} s: start it with "
                    f"`cvae sweep {spec.name} --storage ...`"
                ) from None
            time.sleep(2)
    study = optuna.load_study(
        study_name=spec.name,
        storage=storage,
        sampler=space.make_sampler(spec, index, start),
        pruner=space.make_pruner(spec, cfg.train.niter),
    )
    refusal = code_mismatch(study.user_attrs.get("code"), spec.name)
    if refusal:
        raise SpecError(refusal)
    lock = AskLock(url, spec.name)
    ctx = Context(
        spec=spec,
        extra=extra,
        parent_run_id=study.user_attrs.get("mlflow_parent_run_id"),
        threads=threads,
        on_start=lock.release,
    )
    objective = make_objective(ctx)
    ran = 0
    while True:
        target = int(study.user_attrs.get("n_trials", spec.trials))
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)
            plan.advance_race(study, spec)  # seeds the race hands out are queued before anything else is asked
            c = plan.counts(study)
            runs = plan.runs_of(study)
            lost = plan.outcomes(runs, phase=None)[outcome.LOST]
            if lost >= (MAX_RETRY + 1) * target * spec.max_seeds:  # runs that crash every time: never-ending
                print(f"worker {index}: giving up after {lost} lost runs (killed or crashed)", flush=True)
                return ran
            new_config = spec.sampler != "grid" and len(search_configs(runs)) < target
            if new_config and sum(r.phase == SEARCH for r in runs) >= 3 * target * spec.max_seeds:
                print(
                    f"worker {index}: the space gave the same configurations again and again; stopping at "
                    f"{len(search_configs(runs))} of {target} configurations",
                    flush=True,
                )
                return ran
            if c[TrialState.WAITING] or new_config:
                wait = False
                study.optimize(objective, n_trials=1, catch=(Diverged,))
                ran += 1
            elif c[TrialState.RUNNING]:
                wait = True  # someone else is running the last runs: stay to retry them if their worker dies
            elif plan.advance_look(study, spec) or plan.advance_race(study, spec):
                wait = False  # this look's runs are done: the next look's seeds are queued
            else:
                return ran
        finally:
            lock.release()
        if wait:  # short: the next look's seeds may be queued any moment by the worker that ends the look
            time.sleep(min(spec.heartbeat_seconds, IDLE_POLL_S))
