"""The coordinator's bookkeeping: create (or reopen) a study once before its workers, close it after them.

`prepare` validates that a rerun asks for the same study, builds the data cache, creates the Optuna study and
the study's MLflow parent run, queues what the design still lacks; `finish_parent` records the outcome on the
parent run; `register_line` puts the winner in MLflow's Model Registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cvae.atomic import check_writable
from cvae.config import Config
from cvae.data import load_split
from sweeps import plan, space
from sweeps.lock import AskLock
from sweeps.provenance import code_fingerprint
from sweeps.spec import SpecError, StudySpec
from sweeps.storage import make_storage, repair


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


def prepare(
    spec: StudySpec, cfg: Config, extra: list[str], url: str, force_new: bool = False, spec_path: Path | None = None
) -> optuna.Study:
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
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        load_if_exists=True,
        sampler=space.make_sampler(spec),
        pruner=space.make_pruner(spec, cfg.train.niter),
    )
    old = study.user_attrs.get("identity")
    if old is not None and old != identity:
        raise SpecError(
            f"study {spec.name} in {url} was created with other settings ({what_changed(old, identity)}); "
            "give the study another name, or pass --force-new to start it again"
        )
    study.set_user_attr("identity", identity)
    if spec_path is not None:
        study.set_user_attr("spec_path", str(spec_path))  # `cvae report NAME` finds a study started from a path
    study.set_user_attr("fingerprint", spec.fingerprint(extra))
    code = code_fingerprint()
    if study.user_attrs.get("code", code) != code:
        print(
            f"study {spec.name}: the code changed since its last runs ({study.user_attrs['code']} -> {code}); "
            "the runs from now on are this code's",
            flush=True,
        )
    study.set_user_attr("code", code)  # workers with other code refuse to take its trials
    study.set_user_attr("n_trials", spec.trials)
    study.set_user_attr("seeds", spec.seeds)
    lock = AskLock(url, spec.name)
    lock.acquire()
    try:
        plan.requeue_lost(study)
        if spec.sampler == "grid":
            if spec.sequential and "sequential" not in study.user_attrs:
                study.set_user_attr("sequential", plan.seq_state(study, spec).as_json())
            plan.enqueue_grid(study, spec)
            plan.advance_look(study, spec)  # a look whose last run ended as the study was stopped
        plan.advance_race(study, spec)
    finally:
        lock.release()
    if cfg.tracking.enabled:
        # deferred: MLflow loads only when tracking is on
        from cvae.mlflow_tracker import artifact_root, ensure_experiment, make_client

        client = make_client(cfg)
        exp_id = ensure_experiment(client, spec.name, artifact_root(cfg))
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is None:
            run = client.create_run(
                exp_id,
                run_name=f"study {spec.name}",
                tags={"optuna.study": spec.name, "optuna.storage": url, "role": "study"},
            )
            parent = run.info.run_id
            study.set_user_attr("mlflow_parent_run_id", parent)
            client.log_param(parent, "sampler", spec.sampler)
            client.log_param(parent, "pruner", spec.pruner)
            client.log_param(parent, "space", ", ".join(spec.space or spec.grid))
        else:
            client.update_run(parent, status="RUNNING")
        closed = repair(study, cfg, client)  # runs a stopped worker could not close (e.g. its store was locked)
        if closed:
            print(
                f"study {spec.name}: closed {len(closed)} MLflow run(s) whose trial was over: "
                + ", ".join(f"trial {n}" for n, _, _ in closed),
                flush=True,
            )
    return study


def finish_parent(study: optuna.Study, spec: StudySpec, cfg: Config, status: str) -> None:
    """The study's outcome on its MLflow parent run: Optuna's trial states, the runs by outcome, and the pick
    (plan.best_config: the same configuration the summary names and the registry registers)."""
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent or not cfg.tracking.enabled:
        return
    # deferred: MLflow loads only when tracking is on
    from cvae.mlflow_tracker import make_client

    client = make_client(cfg)
    counts = plan.counts(study)
    client.log_metric(parent, "trials/complete", counts[TrialState.COMPLETE])
    client.log_metric(parent, "trials/pruned", counts[TrialState.PRUNED])
    client.log_metric(parent, "trials/failed", counts[TrialState.FAIL])
    runs = plan.runs_of(study)
    for kind, n in plan.outcomes(runs, phase=None).items():
        client.log_metric(parent, f"runs/{kind}", n)
    best = plan.best_config(study, spec, runs)
    if best is not None:
        client.log_metric(parent, "best/value", best.score)
        client.log_metric(parent, "best/failure_rate", best.failed / best.results)
        client.set_tag(parent, "best.config_id", best.config_id)
    client.set_terminated(parent, status=status)


def register_line(study: optuna.Study, spec: StudySpec, cfg: Config) -> str:
    # deferred: torch and MLflow's model flavours load only to register the winner
    from sweeps.registry import register

    name, version, w = register(study, spec, cfg)
    return (
        f"registered the winner as {name} version {version} (configuration {w['config_id']}, seed {w['seed']}: "
        f"{spec.metric} {w['value']:.2f}; its mean {w['mean']:.2f} over {w['seeds']} trained seed(s), fails "
        f"{w['failed']}/{w['results']}): "
        f"cvae eval models:/{name}/{version}"
    )
