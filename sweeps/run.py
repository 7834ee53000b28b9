"""`cvae sweep` / `cvae worker`: create a study once, run worker processes on it, print the outcome.

The coordinator validates the spec, creates the Optuna study, the MLflow experiment and the study's
parent run and the data cache, then starts N worker processes. Workers loop: under the ask lock, fail
stale trials (lost workers, via heartbeats), then take a retry or a new trial while the study is short
of its target. Running the same command again continues the study.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from cvae.atomic import WriteError, check_writable
from cvae.config import Config, ConfigError
from cvae.data import DataError, load_split
from cvae.trainer import Diverged
from sweeps.questions import Question, main_effects
from sweeps import racing, sequential
from sweeps.design import CONFIRM, SEARCH, Run, confirm_runs, config_id, lost_runs, missing_runs, search_configs
from sweeps.lock import AskLock
from sweeps.objective import Context, make_objective
from sweeps.progress import Progress
from sweeps.space import make_pruner, make_sampler
from sweeps.spec import SpecError, StudySpec, find_spec, load_spec

MAX_RETRY = 2
MAX_RESTARTS = 3  # replacements per worker slot when a local worker dies
STORAGE_ATTEMPTS = 5  # opening a study storage whose schema another process is creating at that moment
IDLE_POLL_S = 2  # a worker with nothing to take looks again this often
STUDY_WAIT_S = 600  # a worker waits this long for its study to be created by `cvae sweep`
STOP_GRACE_S = 25  # after Ctrl-C / SIGTERM, workers get this long to close their runs before SIGKILL
# heartbeats and stale-trial retries are "experimental" in Optuna 5; the warning repeats every trial
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# helpers


def storage_url(cfg: Config, storage: str | None) -> str:
    """--storage / $OPTUNA_STORAGE, else a SQLite file under run.out_dir."""
    url = storage or os.environ.get("OPTUNA_STORAGE", "")
    return url or f"sqlite:///{Path(cfg.run.out_dir).resolve() / 'optuna.db'}"


def _close_lost_runs(cfg: Config) -> Any:
    """Stale-trial callback: close the lost worker's MLflow runs FAILED, then retry the same params."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ids = trial.user_attrs.get("mlflow_run_ids", [])
        if ids and cfg.tracking.enabled:
            from cvae.mlflow_tracker import make_client

            client = make_client(cfg)
            for run_id in ids:
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_tag(run_id, "ended_by", "worker lost (no heartbeat)")
                    client.set_terminated(run_id, status="FAILED")
        retry(study, trial)

    return callback


def _schema_race(e: Exception) -> bool:
    """Whether opening a storage failed because another process created its schema at the same moment:
    a CREATE TABLE that finds the table (SQLite, PostgreSQL), or the schema's version row inserted twice
    (SQLite: UNIQUE constraint failed: alembic_version...; PostgreSQL: duplicate key)."""
    import sqlalchemy.exc

    return isinstance(e, sqlalchemy.exc.IntegrityError) or any(
        w in str(e) for w in ("already exists", "duplicate key", "UNIQUE constraint failed"))


def make_storage(url: str, spec: StudySpec, cfg: Config) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats; SQLite waits on locks instead of failing when workers collide."""
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_seconds,
                grace_period=3 * spec.heartbeat_seconds, heartbeat_stale_trial_callback=_close_lost_runs(cfg))
        except Exception as e:  # noqa: BLE001 - driver errors vary; the user needs one line
            # another process (a second sweep, a worker, a script reading the study) created the schema
            # between optuna's check and its CREATE TABLE or its version row: the tables now exist, open it again
            if attempt < STORAGE_ATTEMPTS and _schema_race(e):
                time.sleep(0.2 * attempt)  # let the winner finish writing the schema
                continue
            raise ConfigError(f"study storage {url}: {str(e).splitlines()[0][:200]}") from None


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    out = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def runs_of(study: optuna.Study) -> list[Run]:
    """Every trial as a design Run (configuration, seed, phase, state, value)."""
    return [Run(number=t.number, state=t.state.name, config_id=t.user_attrs.get("config_id"),
                seed_index=t.user_attrs.get("seed_index"), phase=t.user_attrs.get("phase", SEARCH),
                value=t.value, params=t.params, diverged="fail_reason" in t.user_attrs)
            for t in study.get_trials(deepcopy=False)]


def usable_values(study: optuna.Study) -> dict[tuple[str, int], float]:
    """(config_id, seed_index) -> value of every search run the verdicts may use: complete, finite, not degenerate."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("phase", SEARCH) == SEARCH and "config_id" in a and t.value is not None and not a.get("degenerate"):
            if t.value == t.value and abs(t.value) != float("inf"):
                out[(a["config_id"], int(a["seed_index"]))] = float(t.value)
    return out


def seq_state(study: optuna.Study, spec: StudySpec) -> sequential.State:
    """The sequential design's look and seed targets as stored on the study (look 1 when none is stored)."""
    return sequential.State.from_json(study.user_attrs.get("sequential"), [config_id(p) for p in spec.design], spec.plan)


def questions_of(spec: StudySpec) -> list[Question]:
    """The design's questions: every main effect of the grid."""
    return main_effects({config_id(p): p for p in spec.design})


def enqueue_grid(study: optuna.Study, spec: StudySpec) -> int:
    """Queue every (grid point, seed) of the design (of its current look) that has no trial yet; returns how many."""
    targets = seq_state(study, spec).targets if spec.sequential else None
    todo = missing_runs(spec.design, spec.seeds, runs_of(study), targets)
    for params, k in todo:
        study.enqueue_trial(params, user_attrs={"config_id": config_id(params), "seed_index": k, "phase": SEARCH})
    return len(todo)


def look_line(state: sequential.State, decisions: dict[str, sequential.Decision], spec: StudySpec) -> str:
    """'look 1 (3 seeds): kl.mode: cyclical vs monotonic equivalent, ... -> 4 configurations get seed 4'."""
    done = state.done
    look = state.look if done else state.look - 1
    verdicts = ", ".join(f"{name} {d.verdict}" + (f" ({d.margin})" if d.margin else "") for name, d in decisions.items())
    head = f"study {spec.name}: look {look} of {len(spec.plan.looks)} ({spec.plan.looks[look - 1]} seeds): {verdicts}"
    if done:
        return head + " -> done"
    grown = sorted({c for c, n in state.targets.items() if n == spec.plan.looks[state.look - 1]})
    return head + f" -> {len(grown)} configuration(s) get {spec.plan.looks[state.look - 1]} seeds"


def advance_look(study: optuna.Study, spec: StudySpec) -> int:
    """A sequential study whose current look has all its runs: decide the look (sweeps.sequential.advance), store
    the new look and seed targets, queue its runs; returns how many were queued. Call under the ask lock."""
    if not spec.sequential or not spec.grid:  # a sampled study with a seed range races instead (advance_race)
        return 0
    state = seq_state(study, spec)
    if state.done:
        return 0
    runs = runs_of(study)
    busy = any(r.state in ("WAITING", "RUNNING") and r.phase == SEARCH for r in runs)
    if busy or missing_runs(spec.design, spec.seeds, runs, state.targets) or lost_runs(runs):
        return 0
    new, decisions = sequential.advance(questions_of(spec), usable_values(study), spec.plan, state)
    study.set_user_attr("sequential", new.as_json())
    print(look_line(new, decisions, spec), flush=True)
    return enqueue_grid(study, spec)


def race_lanes(study: optuna.Study, spec: StudySpec) -> tuple[dict[str, racing.Lane], list[str]]:
    """The race as stored on the study, every search configuration in it (a new one races from `min` seeds),
    and the configurations in the order the study started them."""
    raw = study.user_attrs.get("race") or {}
    lanes = {c: racing.Lane.from_json(v) for c, v in raw.items()}
    order: list[str] = []
    for r in sorted(runs_of(study), key=lambda r: r.number):
        if r.phase == SEARCH and r.config_id is not None and r.config_id not in order:
            order.append(r.config_id)
            lanes.setdefault(r.config_id, racing.Lane(target=spec.plan.looks[0]))
    return lanes, order


def advance_race(study: optuna.Study, spec: StudySpec) -> int:
    """A racing study: decide every configuration whose seeds are all finished against the leader
    (sweeps.sequential.race), store the race, and queue the seeds it hands out; returns how many were queued.
    Call under the ask lock."""
    if not spec.racing:
        return 0
    lanes, order = race_lanes(study, spec)
    runs = [r for r in runs_of(study) if r.phase == SEARCH and r.config_id is not None]
    lost = {r.config_id for r in lost_runs(runs)}
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.config_id, []).append(r)

    def finished(c: str, target: int) -> bool:
        rs = by.get(c, [])
        have = {r.seed_index for r in rs}
        return (c not in lost and all(k in have for k in range(target))
                and not any(r.state in ("WAITING", "RUNNING") for r in rs))

    pruned = {c for c in order if any(r.state == "PRUNED" for r in by.get(c, []))}
    values = usable_values(study)
    new = lanes
    for _ in range(2 * len(order) + 1):  # a decision can hand out seeds that the next one waits on, or free a lead
        done = {c for c in order if finished(c, new[c].target)}
        again = racing.race(new, order, done, values, spec.plan, maximize=spec.direction == "maximize",
                                pruned=pruned)
        if again == new:
            break
        new = again
    if new != lanes or "race" not in study.user_attrs:
        study.set_user_attr("race", {c: lane.as_json() for c, lane in new.items()})
        for c in order:
            if new[c].status != lanes[c].status and new[c].status != racing.RACING:
                print(f"study {spec.name}: configuration {c} {new[c].status}"
                      + (f" (vs {new[c].against}, {new[c].diff:+.2f} at {new[c].target} seeds)" if new[c].against else ""),
                      flush=True)
    queued = 0
    params = {r.config_id: r.params for r in runs if r.params}
    for c in order:
        have = {r.seed_index for r in by.get(c, [])}
        for k in range(new[c].target):
            if k not in have and c in params:
                study.enqueue_trial(params[c], user_attrs={"config_id": c, "seed_index": k, "phase": SEARCH})
                queued += 1
    return queued


def requeue_lost(study: optuna.Study) -> int:
    """Queue again every run lost to Ctrl-C / SIGTERM, a kill or a crash that has no retry left (design.lost_runs:
    same configuration, seed and phase, tagged `retry_of`); returns how many."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    lost = lost_runs(runs_of(study))
    for r in lost:
        t = trials[r.number]
        keep = {k: t.user_attrs[k] for k in ("config_id", "seed_index", "phase", "search_value") if k in t.user_attrs}
        study.enqueue_trial(t.params, user_attrs={**keep, "retry_of": t.number})
    return len(lost)


def enqueue_confirm(study: optuna.Study, spec: StudySpec, k: int, seeds: int) -> list[tuple[str, float]]:
    """Queue `seeds` fresh seeds for each of the top-k configurations; returns (config_id, search mean)."""
    todo = confirm_runs(runs_of(study), k, seeds, maximize=spec.direction == "maximize")
    if not todo:
        raise SpecError(f"study {spec.name} has no complete configuration to confirm yet: run `make sweep` first")
    for params, cid, idx, mean in todo:
        study.enqueue_trial(params, user_attrs={"config_id": cid, "seed_index": idx, "phase": CONFIRM,
                                                "search_value": mean})
    return list(dict.fromkeys((cid, mean) for _, cid, _, mean in todo))


def _spec_args(spec_name: str, extra: list[str], trials: int | None,
               storage: str | None = None) -> tuple[StudySpec, Config]:
    spec = load_spec(spec_name, extra, trials, storage)
    return spec, spec.base_config(extra)


# coordinator


def what_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'train.lr 0.002 -> 0.001, seeds 3 -> 2': the first differences between two study identities."""
    diffs = []
    for key in ("objective", "seeds", "space", "grid"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)} -> {new.get(key)}")
    a, b = old.get("config", {}), new.get("config", {})
    diffs += [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    return shown or "settings"


def prepare(spec: StudySpec, cfg: Config, extra: list[str], url: str, force_new: bool = False,
            spec_path: Path | None = None) -> optuna.Study:
    """Create (or reopen) the study, the MLflow parent run and the data cache, once, before workers.

    A study is reopened only with the identity it was created with (spec.identity: the resolved config,
    the experiment file's content included, the space, the objective, the seeds); `force_new` deletes the
    old study (its MLflow runs stay) and starts again.
    """
    check_writable(cfg.run.out_dir)
    for split in ("train", "validate"):
        load_split(cfg.data, split)  # build the cache once, not in every worker; missing data creates no study
    storage = make_storage(url, spec, cfg)
    identity = json.loads(json.dumps(spec.identity(extra), default=str))
    if force_new:
        try:
            optuna.delete_study(study_name=spec.name, storage=storage)
        except KeyError:
            pass
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction,
                                load_if_exists=True, sampler=make_sampler(spec), pruner=make_pruner(spec, cfg.train.niter))
    old = study.user_attrs.get("identity")
    if old is not None and old != identity:
        raise SpecError(f"study {spec.name} in {url} was created with other settings ({what_changed(old, identity)}); "
                        "give the study another name, or pass --force-new to start it again")
    study.set_user_attr("identity", identity)
    if spec_path is not None:
        study.set_user_attr("spec_path", str(spec_path))  # `cvae report NAME` finds a study started from a path
    study.set_user_attr("fingerprint", spec.fingerprint(extra))
    study.set_user_attr("n_trials", spec.trials)
    study.set_user_attr("seeds", spec.seeds)
    lock = AskLock(url, spec.name)
    lock.acquire()
    try:
        requeue_lost(study)
        if spec.sampler == "grid":
            if spec.sequential and "sequential" not in study.user_attrs:
                study.set_user_attr("sequential", seq_state(study, spec).as_json())
            enqueue_grid(study, spec)
            advance_look(study, spec)  # a look whose last run ended as the study was stopped
        advance_race(study, spec)
    finally:
        lock.release()
    if cfg.tracking.enabled:
        from cvae.mlflow_tracker import artifact_root, ensure_experiment, make_client

        client = make_client(cfg)
        exp_id = ensure_experiment(client, spec.name, artifact_root(cfg))
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is None:
            run = client.create_run(exp_id, run_name=f"study {spec.name}",
                                    tags={"optuna.study": spec.name, "optuna.storage": url, "role": "study"})
            parent = run.info.run_id
            study.set_user_attr("mlflow_parent_run_id", parent)
            client.log_param(parent, "sampler", spec.sampler)
            client.log_param(parent, "pruner", spec.pruner)
            client.log_param(parent, "space", ", ".join(spec.space or spec.grid))
        else:
            client.update_run(parent, status="RUNNING")
        closed = repair(study, cfg, client)  # runs a stopped worker could not close (e.g. its store was locked)
        if closed:
            print(f"study {spec.name}: closed {len(closed)} MLflow run(s) whose trial was over: "
                  + ", ".join(f"trial {n}" for n, _, _ in closed), flush=True)
    return study


def _die_with_parent() -> None:
    """In a worker, before exec (Linux): SIGTERM when the coordinator dies, even by SIGKILL, so no orphan
    keeps training unseen; its run then ends KILLED and its trial is queued again by the next `make sweep`.
    Elsewhere a lost coordinator's workers finish the study on their own."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(spec_name: str, extra: list[str], url: str, workers: int, threads: int,
                on_tick: Callable[[], None] = lambda: None) -> int:
    """Start `workers` worker processes and wait. A worker that dies (killed, crashed) is replaced, at most
    MAX_RESTARTS times per slot, so the sweep keeps its parallelism; its run is failed and retried through
    the heartbeats. Ctrl-C / SIGTERM stops them all: SIGTERM first (their runs end KILLED, their trials
    FAIL and are queued again by the next `make sweep`), SIGKILL after STOP_GRACE_S."""
    cmd = [sys.executable, "-m", "sweeps.run", "worker", spec_name, "--storage", url, "--threads", str(threads)]

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(cmd + ["--worker-index", str(i), "--"] + extra, preexec_fn=_die_with_parent)

    procs = {i: start(i) for i in range(workers)}
    restarts = {i: 0 for i in procs}
    codes: dict[int, int] = {}
    try:
        while procs:
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[i]
                if rc != 0 and restarts[i] < MAX_RESTARTS:
                    restarts[i] += 1
                    print(f"sweep: worker {i} died (exit {rc}); starting a replacement "
                          f"({restarts[i]}/{MAX_RESTARTS})", flush=True)
                    procs[i] = start(i)
                else:
                    codes[i] = rc
            on_tick()
            time.sleep(0.5)
    except (KeyboardInterrupt, SystemExit):
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    return max(codes.values(), default=0)


def unfinished(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether the study still lacks runs: queued or running ones, configurations not yet started, or runs
    lost with no retry left (the same command again queues them)."""
    c = _counts(study)
    runs = runs_of(study)
    if spec.grid:
        state = seq_state(study, spec) if spec.sequential else None
        short = bool(missing_runs(spec.design, spec.seeds, runs, state.targets if state else None))
        short |= state is not None and not state.done
    else:
        short = len(search_configs(runs)) < int(study.user_attrs.get("n_trials", spec.trials))
        if spec.racing:
            lanes, _ = race_lanes(study, spec)
            short |= any(lane.status == racing.RACING for lane in lanes.values())
    return bool(c[TrialState.WAITING] or c[TrialState.RUNNING]) or short or bool(lost_runs(runs))


def summary(study: optuna.Study, spec: StudySpec) -> str:
    """One row per configuration (its seeds' mean and spread), the best one, then where to look next."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"config": t.user_attrs.get("config_id", "-"), "phase": t.user_attrs.get("phase", SEARCH),
                     **{k.split(".", 1)[1] if "." in k else k: v for k, v in t.params.items()},
                     "state": t.state.name, "value": t.value, "degenerate": t.user_attrs.get("degenerate"),
                     "cond_gain": t.user_attrs.get("cond_gain"), "copy_last": t.user_attrs.get("copy_last_psnr"),
                     "note": t.user_attrs.get("fail_reason", "")})
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {s.name.lower()}" for s, n in _counts(study).items() if n)
             + " run(s), " + (f"seeds at looks {', '.join(map(str, spec.plan.looks))} (margin {spec.margin_db:g} dB)"
                              if spec.sequential else f"{spec.seeds} seed(s) per configuration")]
    if rows:
        df = pd.DataFrame(rows)
        keys = ["config", "phase"] + [c for c in df.columns if c not in ("config", "phase", "state", "value", "degenerate",
                                                                         "cond_gain", "copy_last", "note")]
        done = df[df.state == "COMPLETE"]
        agg = df.groupby(keys, dropna=False, sort=False).agg(runs=("state", "size")).join(
            done.groupby(keys, dropna=False, sort=False).agg(
                done=("value", "size"), mean=("value", "mean"), std=("value", "std"), min=("value", "min"),
                max=("value", "max"), cond_gain=("cond_gain", "mean"),
                degenerate=("degenerate", lambda d: int(sum(bool(x) for x in d)))), how="left").reset_index()
        agg = agg.sort_values("mean", ascending=spec.direction == "minimize", na_position="last")
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            lines.append(agg.to_string(index=False))
        search = agg[(agg.phase == SEARCH) & agg["mean"].notna()]
        if not search.empty:
            b = search.iloc[0]
            params = {k: b[k].item() if hasattr(b[k], "item") else b[k] for k in keys[2:]}
            lines.append(f"best configuration {b.config}: {spec.metric} mean {b['mean']:.2f} over {int(b.done)} seed(s) "
                         f"(copy-last {done.copy_last.mean():.2f}) params {params}")
            if spec.seeds < 2 and not spec.racing:
                lines.append("one seed per configuration: the ranking cannot be told apart from seed noise; "
                             f"`cvae sweep {spec.name} --confirm 3 --seeds 3` re-runs the top 3 with fresh seeds")
        failed = df[df.note.astype(bool)]
        for _, f in failed.iterrows():
            lines.append(f"  failed run of {f.config}: {f.note}")
    if spec.sequential and spec.grid:
        state = seq_state(study, spec)
        through = state.look if state.done else state.look - 1
        if through:
            decisions = sequential.replay(questions_of(spec), usable_values(study), spec.plan, through)
            lines.append(f"verdicts after look {through} of {len(spec.plan.looks)}:")
            for name, d in decisions.items():
                more = (f", about {d.seeds_needed:.0f} seeds per configuration would decide"
                        if d.verdict == sequential.CANNOT_TELL and d.seeds_needed == d.seeds_needed else "")
                lo, hi = d.interval_equivalence if d.verdict == sequential.EQUIVALENT else d.interval
                lines.append(f"  {name}: {d.verdict}{' (' + d.margin + ')' if d.margin else ''} at look {d.look}, "
                             f"{d.diff:+.2f} [{lo:+.2f}, {hi:+.2f}], {d.runs} runs{more}")
    if spec.racing:
        lanes, order = race_lanes(study, spec)
        lines.append(f"race (seeds {', '.join(map(str, spec.plan.looks))}, margin {spec.margin_db:g}): "
                     + "; ".join(f"{c} {lanes[c].status} at {lanes[c].target} seeds"
                                 + (f" vs {lanes[c].against} ({lanes[c].diff:+.2f})" if lanes[c].against else "")
                                 for c in order))
    lost = lost_runs(runs_of(study))
    if lost:
        lines.append(f"{len(lost)} run(s) lost to kills or stops with no retry left (trials "
                     f"{', '.join(str(r.number) for r in lost)}): the same command again runs them")
    lines.append("next: `make ui` to browse the runs, `make report` for the comparison report")
    return "\n".join(lines)


def finish_parent(study: optuna.Study, cfg: Config, status: str) -> None:
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent or not cfg.tracking.enabled:
        return
    from cvae.mlflow_tracker import make_client

    client = make_client(cfg)
    counts = _counts(study)
    client.log_metric(parent, "trials/complete", counts[TrialState.COMPLETE])
    client.log_metric(parent, "trials/pruned", counts[TrialState.PRUNED])
    client.log_metric(parent, "trials/failed", counts[TrialState.FAIL])
    from sweeps.design import top_configs

    best = top_configs(runs_of(study), 1, maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    if best:
        cid, mean = best[0]
        client.log_metric(parent, "best/value", mean)
        client.set_tag(parent, "best.config_id", cid)
    client.set_terminated(parent, status=status)


# worker


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
                raise SpecError(f"no study {spec.name} in {url} after {STUDY_WAIT_S} s: start it with "
                                f"`cvae sweep {spec.name} --storage ...`") from None
            time.sleep(2)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, index, start),
                              pruner=make_pruner(spec, cfg.train.niter))
    lock = AskLock(url, spec.name)
    ctx = Context(spec=spec, extra=extra, parent_run_id=study.user_attrs.get("mlflow_parent_run_id"),
                  threads=threads, on_start=lock.release)
    objective = make_objective(ctx)
    ran = 0
    while True:
        target = int(study.user_attrs.get("n_trials", spec.trials))
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)
            advance_race(study, spec)  # seeds the race hands out are queued before anything else is asked
            c = _counts(study)
            if c[TrialState.FAIL] >= (MAX_RETRY + 1) * target * spec.max_seeds:  # failed runs do not count: never-ending
                print(f"worker {index}: giving up after {c[TrialState.FAIL]} failed runs", flush=True)
                return ran
            runs = runs_of(study)
            new_config = spec.sampler != "grid" and len(search_configs(runs)) < target
            if new_config and sum(r.phase == SEARCH for r in runs) >= 3 * target * spec.max_seeds:
                print(f"worker {index}: the space gave the same configurations again and again; stopping at "
                      f"{len(search_configs(runs))} of {target} configurations", flush=True)
                return ran
            if c[TrialState.WAITING] or new_config:
                wait = False
                study.optimize(objective, n_trials=1, catch=(Diverged,))
                ran += 1
            elif c[TrialState.RUNNING]:
                wait = True  # someone else is running the last runs: stay to retry them if their worker dies
            elif advance_look(study, spec) or advance_race(study, spec):
                wait = False  # this look's runs are done: the next look's seeds are queued
            else:
                return ran
        finally:
            lock.release()
        if wait:  # short: the next look's seeds may be queued any moment by the worker that ends the look
            time.sleep(min(spec.heartbeat_seconds, IDLE_POLL_S))


def repair(study: optuna.Study, cfg: Config, client: Any = None) -> list[tuple[int, str, str]]:
    """Close the MLflow runs that outlived their trial: (trial, run id, why) of each run closed FAILED.

    First fails the trials whose worker stopped beating (as a worker would); then every run of the study
    still RUNNING in MLflow whose trial is not RUNNING any more is closed: the case the stale-trial callback
    cannot see, e.g. a study that finished while a run was orphaned, a coordinator killed with its workers,
    or a worker killed between creating its run and recording it on the trial. `client`: an MLflow client
    the caller already holds (else one is made).
    """
    optuna.storages.fail_stale_trials(study)
    if not cfg.tracking.enabled:
        return []
    if client is None:
        from cvae.mlflow_tracker import make_client

        client = make_client(cfg)
    exp = client.get_experiment_by_name(study.study_name)
    if exp is None:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 max_results=50000)
    closed = []
    for run in running:
        tags = run.data.tags
        if tags.get("optuna.study") != study.study_name or "optuna.trial" not in tags:
            continue  # the study's parent run, or another study's run in the same experiment
        t = trials.get(int(tags["optuna.trial"]))
        if t is not None and t.state == TrialState.RUNNING:
            continue
        why = f"repair: trial {tags['optuna.trial']} is {t.state.name if t is not None else 'gone'}"
        client.set_tag(run.info.run_id, "ended_by", why)
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append((int(tags["optuna.trial"]), run.info.run_id, why))
    return closed


def existing_study(spec: StudySpec, url: str, storage: Any = None) -> optuna.Study:
    """The study as stored, or one line saying there is none (and nothing created, not even a SQLite file)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SpecError(f"no study {spec.name} in {url} (no such file): run `make sweep STUDY={spec.name}` first")
    try:
        return optuna.load_study(study_name=spec.name, storage=storage or url)
    except KeyError:
        raise SpecError(f"no study {spec.name} in {url}: run `make sweep STUDY={spec.name}` first") from None


def _register_line(study: optuna.Study, spec: StudySpec, cfg: Config) -> str:
    from sweeps.registry import register

    name, version, w = register(study, spec, cfg)
    return (f"registered the winner as {name} version {version} (configuration {w['config_id']}, seed {w['seed']}: "
            f"{spec.metric} {w['value']:.2f}; its mean {w['mean']:.2f} over {w['seeds']} seed(s)): "
            f"cvae eval models:/{name}/{version}")


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # Optuna records the trial FAILED, the trainer closes its run KILLED


def _stop_once(signum: int, frame: object) -> None:
    """A worker's Ctrl-C / SIGTERM: stop, and ignore the SIGTERM that follows (a terminal's Ctrl-C reaches the
    worker and then the coordinator's SIGTERM does), so closing the run and failing the trial are not cut
    short. A second Ctrl-C still forces the worker out; the coordinator's SIGKILL after STOP_GRACE_S ends
    one that hangs."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`cvae sweep STUDY [--workers N] [--trials N] [--storage URL] [-- overrides]` and `cvae worker ...`."""
    p = argparse.ArgumentParser(prog="cvae sweep")
    p.add_argument("mode", choices=["sweep", "worker", "repair", "register"])
    p.add_argument("study", nargs="?", default="demo", help="study name (sweeps/studies/<name>.yaml) or path")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--trials", type=int, default=None, help="target of complete + pruned trials")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite under run.out_dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = cores / workers)")
    p.add_argument("--force-new", action="store_true",
                   help="delete this study (its MLflow runs stay) and start it again with the current settings")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help="re-run the top K configurations of the study with fresh seeds (with --seeds N)")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per configuration for --confirm (default 3)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run the workers as Ray tasks (auto = the running cluster, local = a new one on this machine, "
                        "or host:port / ray://host:10001); needs pip install -e '.[ray]'")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="with --ray on a cluster without GPUs (default 1)")
    p.add_argument("--emit", choices=["slurm", "ray-slurm"], default=None,
                   help="write a SLURM script for this study instead of running it (sweeps/emit.py)")
    p.add_argument("--array", type=int, default=4, help="with --emit: workers (array tasks, or Ray worker nodes)")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, section.key=value")
    ns = p.parse_intermixed_args(argv)
    if ns.mode == "worker":
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _stop_once)
    else:
        signal.signal(signal.SIGTERM, _on_sigterm)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        if ns.workers < 1 or (ns.trials is not None and ns.trials < 1) or ns.cpus_per_worker < 1 or ns.array < 1:
            raise SpecError("--workers, --trials, --cpus-per-worker and --array must be positive")
        if ns.ray is not None:
            from sweeps import ray_launch

            ray_launch.import_ray()  # before anything is created: one line when Ray is not installed
        if ns.confirm is not None and (ns.confirm < 1 or ns.seeds < 2):
            raise SpecError("--confirm K needs K >= 1 and --seeds N >= 2 (one seed cannot confirm anything)")
        spec, cfg = _spec_args(ns.study, ns.overrides, ns.trials, ns.storage)
        url = storage_url(cfg, ns.storage)
        threads = ns.threads or max(1, (os.cpu_count() or 1) // ns.workers)
        if ns.emit is not None:
            from sweeps import emit
            from sweeps.ray_launch import tracking_env

            tracking = tracking_env(cfg).get("MLFLOW_TRACKING_URI", "") if cfg.tracking.uri or \
                os.environ.get("MLFLOW_TRACKING_URI") else ""
            study_arg = str(Path(ns.study).resolve()) if Path(ns.study).is_file() else ns.study
            path = emit.write(ns.emit, spec.name, study_arg, url, tracking, ns.overrides, ns.array, Path.cwd())
            print(f"wrote {path}: sbatch {path.name}")
            return 0
        if ns.mode == "worker":
            n = worker_loop(spec, cfg, ns.overrides, url, ns.worker_index, threads)
            print(f"worker {ns.worker_index}: ran {n} trial(s)", flush=True)
            return 0
        if ns.mode == "register":
            print(_register_line(existing_study(spec, url), spec, cfg))
            return 0
        if ns.mode == "repair":
            existing_study(spec, url)  # one line, and no storage made, when there is none
            study = existing_study(spec, url, make_storage(url, spec, cfg))  # with heartbeats, to fail stale trials
            closed = repair(study, cfg)
            for trial, run_id, why in closed:
                print(f"closed MLflow run {run_id} FAILED ({why})")
            print(f"study {spec.name}: {len(closed)} orphaned run(s) closed; " + summary(study, spec).splitlines()[0])
            return 0
        study = prepare(spec, cfg, ns.overrides, url, force_new=ns.force_new,
                        spec_path=find_spec(ns.study, ns.storage).resolve())
        if ns.confirm is not None:
            chosen = enqueue_confirm(study, spec, ns.confirm, ns.seeds)
            print(f"study {spec.name}: confirming {len(chosen)} configuration(s) with {ns.seeds} fresh seed(s) each: "
                  + ", ".join(f"{cid} (search mean {m:.2f})" for cid, m in chosen), flush=True)
        what = f"{len(spec.design)} configurations" if spec.grid else f"{spec.trials} configurations"
        seeds = (f"{spec.seeds} to {spec.max_seeds} seeds ({'a race' if spec.racing else 'looks'} at "
                 f"{', '.join(map(str, spec.plan.looks))}, margin {spec.margin_db:g})" if spec.sequential
                 else f"{spec.seeds} seed(s)")
        print(f"study {spec.name}: {what} x {seeds}, {ns.workers} worker(s) x {threads} thread(s), "
              f"storage {url}", flush=True)
        status = "FINISHED"
        progress = Progress(spec, ns.workers)
        tick = lambda: progress.tick(study)  # noqa: E731
        try:
            if ns.ray is not None:
                from sweeps import ray_launch

                code = ray_launch.run(ns.study, spec, cfg, ns.overrides, url, ns.ray, ns.cpus_per_worker, study, tick)
            else:
                code = run_workers(ns.study, ns.overrides, url, ns.workers, threads, tick)
        except (KeyboardInterrupt, SystemExit):
            status, code = "KILLED", 130
        if status == "FINISHED":
            progress.tick(study, every=0)  # the last runs' lines; a stopped study goes straight to closing
        progress.close()
        if status == "FINISHED" and (code or unfinished(study, spec)):
            status = "FAILED"
        finish_parent(study, cfg, status)
        print(summary(study, spec))
        if status == "FINISHED" and cfg.tracking.enabled and ns.confirm is None:
            try:  # the study's answer is in; its winner goes to the Model Registry
                print(_register_line(study, spec, cfg))
            except (ConfigError, OSError) as e:
                print(f"cvae: note: the winner was not registered ({e}); `cvae register {spec.name}` tries again",
                      file=sys.stderr)
        return code or int(status == "FAILED")
    except (ConfigError, DataError) as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
