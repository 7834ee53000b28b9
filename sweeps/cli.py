"""`cvae sweep` / `cvae worker` / `cvae sweep --confirm` / repair / register: create a study once, run worker
processes on it (here, on Ray, or as a SLURM script), print the outcome.

The coordinator validates the spec, creates the Optuna study, the MLflow experiment and the study's
parent run and the data cache (sweeps.coordinator), then starts N worker processes (sweeps.local, or
sweeps.ray_launch). Workers loop (sweeps.worker): under the ask lock, fail stale trials (lost workers, via
heartbeats), then take a retry or a new trial while the study is short of its target. Running the same
command again continues the study.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import optuna

from cvae.atomic import WriteError
from cvae.config import Config, ConfigError
from cvae.data import DataError
from sweeps import coordinator, emit, local, plan, ray_launch, storage
from sweeps.progress import Progress
from sweeps.ray_launch import tracking_env
from sweeps.spec import SpecError, StudySpec, find_spec, load_spec
from sweeps.summary import summary
from sweeps.worker import worker_loop

# heartbeats and stale-trial retries are "experimental" in Optuna 5; the warning repeats every trial
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _spec_args(
    spec_name: str, extra: list[str], trials: int | None, storage: str | None = None
) -> tuple[StudySpec, Config]:
    spec = load_spec(spec_name, extra, trials, storage)
    return spec, spec.base_config(extra)


def main(argv: list[str] | None = None) -> int:
    """`cvae sweep STUDY [--workers N] [--trials N] [--storage URL] [-- overrides]` and `cvae worker ...`."""
    p = argparse.ArgumentParser(prog="cvae sweep")
    p.add_argument("mode", choices=["sweep", "worker", "repair", "register"])
    p.add_argument("study", nargs="?", default="demo", help="study name (sweeps/studies/<name>.yaml) or path")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--trials", type=int, default=None, help="target of complete + pruned trials")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite under run.out_dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = cores / workers)")
    p.add_argument(
        "--force-new",
        action="store_true",
        help="delete this study (its MLflow runs stay) and start it again with the current settings",
    )
    p.add_argument(
        "--confirm",
        type=int,
        default=None,
        metavar="K",
        help="re-run the top K configurations of the study with fresh seeds (with --seeds N)",
    )
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per configuration for --confirm (default 3)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="run the workers as Ray tasks (auto = the running cluster, local = a new one on this machine, "
        "or host:port / ray://host:10001); needs pip install -e '.[ray]'",
    )
    p.add_argument("--cpus-per-worker", type=int, default=1, help="with --ray on a cluster without GPUs (default 1)")
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="with --ray: GPUs per worker (default: 1 when the cluster has GPUs); a fraction packs small models "
        "(0.25 = four per GPU; docs/scaling.md); give it for an autoscaling GPU cluster that starts empty",
    )
    p.add_argument(
        "--max-workers", type=int, default=0, help="with --ray: at most this many workers (default: as many as useful)"
    )
    p.add_argument(
        "--emit",
        choices=["slurm", "ray-slurm"],
        default=None,
        help="write a SLURM script for this study instead of running it (sweeps/emit.py)",
    )
    p.add_argument("--array", type=int, default=4, help="with --emit: workers (array tasks, or Ray worker nodes)")
    p.add_argument("--time", default="", help="with --emit: the job's time limit (02:00:00, 1-12:00:00)")
    p.add_argument("--partition", default="", help="with --emit: the SLURM partition")
    p.add_argument("--account", default="", help="with --emit: the SLURM account")
    p.add_argument("--mem", default="", help="with --emit: memory per node, like 16G")
    p.add_argument(
        "--gpus-per-node", default=None, help="with --emit ray-slurm: each node's GPUs, all for its Ray worker (1)"
    )
    p.add_argument(
        "--setup",
        default=None,
        metavar="CMD",
        help="with --emit: run on every node before cvae (default: activate the .venv beside the project)",
    )
    p.add_argument(
        "--secrets",
        default="",
        metavar="FILE",
        help="with --emit: a 0600 file the script sources for OPTUNA_STORAGE / MLFLOW_TRACKING_URI with passwords",
    )
    p.add_argument("--exclusive", action="store_true", help="with --emit: ask SLURM for whole nodes")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, section.key=value")
    ns = p.parse_intermixed_args(argv)
    if ns.mode == "worker":
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, local.stop_once)
    else:
        signal.signal(signal.SIGTERM, local.on_sigterm)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        if ns.workers < 1 or (ns.trials is not None and ns.trials < 1) or ns.cpus_per_worker < 1 or ns.array < 1:
            raise SpecError("--workers, --trials, --cpus-per-worker and --array must be positive")
        g = ns.gpus_per_worker
        if (g is not None and not (0 < g <= 1 or (g > 1 and g.is_integer()))) or ns.max_workers < 0:
            raise SpecError("--gpus-per-worker must be a fraction in (0, 1] or a whole number; --max-workers >= 0")
        if ns.ray is not None:
            ray_launch.import_ray()  # before anything is created: one line when Ray is not installed
        if ns.confirm is not None and (ns.confirm < 1 or ns.seeds < 2):
            raise SpecError("--confirm K needs K >= 1 and --seeds N >= 2 (one seed cannot confirm anything)")
        spec, cfg = _spec_args(ns.study, ns.overrides, ns.trials, ns.storage)
        url = storage.storage_url(cfg, ns.storage)
        threads = ns.threads or max(1, (os.cpu_count() or 1) // ns.workers)
        if ns.emit is not None:
            given = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
            # the URI given, "" when none is (ray-slurm then starts a server), None when tracking is off
            tracking = (tracking_env(cfg)["MLFLOW_TRACKING_URI"] if given else "") if cfg.tracking.enabled else None
            job = emit.Job(
                kind=ns.emit,
                array=ns.array,
                time=ns.time,
                partition=ns.partition,
                account=ns.account,
                mem=ns.mem,
                gpus_per_node=emit.whole("--gpus-per-node", ns.gpus_per_node),
                setup=ns.setup,
                secrets=ns.secrets,
                exclusive=ns.exclusive,
            )
            study_arg = str(Path(ns.study).resolve()) if Path(ns.study).is_file() else ns.study
            path = emit.write(spec.name, study_arg, url, tracking, ns.overrides, job, Path.cwd())
            print(f"wrote {path}: sbatch {path.name}")
            return 0
        if ns.mode == "worker":
            n = worker_loop(spec, cfg, ns.overrides, url, ns.worker_index, threads)
            print(f"worker {ns.worker_index}: ran {n} trial(s)", flush=True)
            return 0
        if ns.mode == "register":
            print(coordinator.register_line(storage.existing_study(spec, url), spec, cfg))
            return 0
        if ns.mode == "repair":
            storage.existing_study(spec, url)  # one line, and no storage made, when there is none
            study = storage.existing_study(
                spec, url, storage.make_storage(url, spec, cfg)
            )  # with heartbeats, to fail stale trials
            closed = storage.repair(study, cfg)
            for trial, run_id, why in closed:
                print(f"closed MLflow run {run_id} FAILED ({why})")
            print(f"study {spec.name}: {len(closed)} orphaned run(s) closed; " + summary(study, spec).splitlines()[0])
            return 0
        study = coordinator.prepare(
            spec, cfg, ns.overrides, url, force_new=ns.force_new, spec_path=find_spec(ns.study, ns.storage).resolve()
        )
        if ns.confirm is not None:
            chosen = plan.enqueue_confirm(study, spec, ns.confirm, ns.seeds)
            print(
                f"study {spec.name}: confirming {len(chosen)} configuration(s) with {ns.seeds} fresh seed(s) each: "
                + ", ".join(f"{cid} (search mean {m:.2f})" for cid, m in chosen),
                flush=True,
            )
        what = f"{len(spec.design)} configurations" if spec.grid else f"{spec.trials} configurations"
        seeds = (
            f"{spec.seeds} to {spec.max_seeds} seeds ({'a race' if spec.racing else 'looks'} at "
            f"{', '.join(map(str, spec.plan.looks))}, margin {spec.margin_db:g})"
            if spec.sequential
            else f"{spec.seeds} seed(s)"
        )
        where = "workers placed by Ray" if ns.ray is not None else f"{ns.workers} worker(s) x {threads} thread(s)"
        print(f"study {spec.name}: {what} x {seeds}, {where}, storage {url}", flush=True)
        status = "FINISHED"
        progress = Progress(spec, ns.workers)
        tick = lambda: progress.tick(study)  # noqa: E731
        try:
            if ns.ray is not None:
                where = ray_launch.Placement(ns.ray, ns.cpus_per_worker, ns.gpus_per_worker, ns.max_workers)
                code = ray_launch.run(ns.study, spec, cfg, ns.overrides, url, where, study, tick)
            else:
                code = local.run_workers(ns.study, ns.overrides, url, ns.workers, threads, tick)
        except (KeyboardInterrupt, SystemExit):
            status, code = "KILLED", 130
        if status == "FINISHED":
            progress.tick(study, every=0)  # the last runs' lines; a stopped study goes straight to closing
        progress.close()
        if status == "FINISHED" and (code or plan.unfinished(study, spec)):
            status = "FAILED"
        coordinator.finish_parent(study, spec, cfg, status)
        print(summary(study, spec))
        if status == "FINISHED" and cfg.tracking.enabled and ns.confirm is None and spec.register:
            try:  # the study's answer is in; its winner goes to the Model Registry
                print(coordinator.register_line(study, spec, cfg))
            except (ConfigError, OSError) as e:
                print(
                    f"cvae: note: the winner was not registered ({e}); `cvae register {spec.name}` tries again",
                    file=sys.stderr,
                )
        return code or int(status == "FAILED")
    except (ConfigError, DataError) as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"cvae: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
