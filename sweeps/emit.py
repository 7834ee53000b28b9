"""`cvae sweep STUDY --emit slurm|ray-slurm`: a SLURM script that runs the study's workers (pure text, one write).

slurm: a job array, one GPU a task; task 0 runs `cvae sweep --workers 1` (creates or continues the study, and
works), the others `cvae worker`, which polls for the study; a task whose node fails is requeued (`--requeue`).
ray-slurm: a Ray head on the first node, one Ray worker holding all its GPUs on each other node (once the head
answers), an MLflow server on the head when no tracking URI is given, then `cvae sweep --ray` on the head.
Both need a study storage every node reaches (PostgreSQL). No password is written: a URL holding one is read at
run time from the environment sbatch carries, or from a 0600 file the script sources (--secrets).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cvae.atomic import write_text
from cvae.config import ConfigError

CPUS_PER_GPU = 4  # cores asked for each GPU: a worker's data loading and host side
WAIT_S = 600  # how long a script polls for the Ray head or its MLflow server before it gives up
_TIME = re.compile(r"(\d+-)?\d+(:\d\d?){0,2}")  # SLURM's M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_MEM = re.compile(r"[1-9]\d*[KMGT]")
_NAME = re.compile(r"[\w.+-]+(,[\w.+-]+)*", re.ASCII)
_q = shlex.quote


@dataclass(frozen=True)
class Job:
    """What the #SBATCH lines ask for and how every node gets its environment; checked once, when made."""

    kind: str
    """slurm (a job array, one GPU a task) or ray-slurm (one allocation of nodes, one Ray worker a node)"""
    array: int = 4
    """workers: array tasks (slurm) or nodes (ray-slurm)"""
    time: str = ""
    """time limit as SLURM writes it (02:00:00, 1-12:00:00); empty = the partition's default"""
    partition: str = ""
    account: str = ""
    mem: str = ""
    """memory per node (per array task with slurm), like 16G; empty = the partition's default"""
    gpus_per_node: int = 1
    """ray-slurm: each node's GPUs, all held by its one Ray worker; slurm: 1 (a task per GPU)"""
    setup: str | None = None
    """a command run on every node before cvae; None = activate the .venv beside the project (write)"""
    secrets: str = ""
    """a 0600 file the script sources for OPTUNA_STORAGE / MLFLOW_TRACKING_URI; empty = the environment only"""
    exclusive: bool = False

    def __post_init__(self) -> None:
        if self.time and (not _TIME.fullmatch(self.time) or not any(c in "123456789" for c in self.time)):
            raise ConfigError(f"--time {self.time!r}: give a time limit above 0 as MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
        if self.mem and not _MEM.fullmatch(self.mem):
            raise ConfigError(f"--mem {self.mem!r}: give the memory per node as a number and a unit, like 16G or 512M")
        for flag, value in (("--partition", self.partition), ("--account", self.account)):
            if value and not _NAME.fullmatch(value):
                raise ConfigError(f"{flag} {value!r}: a SLURM name is letters, digits and _.+- (commas between names)")
        if self.gpus_per_node < 1:
            raise ConfigError(f"--gpus-per-node {self.gpus_per_node}: must be at least 1")
        if self.kind == "slurm" and self.gpus_per_node != 1:
            raise ConfigError("--gpus-per-node is for --emit ray-slurm: a SLURM array task has one GPU (see --array)")


# helpers


def whole(flag: str, text: str | None) -> int:
    """A whole-number flag given as text (None: 1), in one line when it is not one."""
    if text is not None and not text.strip().lstrip("-").isdigit():
        raise ConfigError(f"{flag} {text!r}: give a whole number")
    return 1 if text is None else int(text)


def has_password(url: str) -> bool:
    """Whether a URL carries a password (user:pw@host, or ?password=...)."""
    parts = urlsplit(url)
    return bool(parts.password) or "password" in parse_qs(parts.query)


def _redact(url: str) -> str:
    return re.sub(r"(password=)[^&]*", r"\1***", re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url))


def _sbatch(job: Job, *flags: str) -> list[str]:
    """#SBATCH lines: the kind's own flags, then what was asked for; --exclusive only when asked."""
    asked = {"time": job.time, "partition": job.partition, "account": job.account, "mem": job.mem}
    flags += tuple(f"--{k}={v}" for k, v in asked.items() if v) + (("--exclusive",) if job.exclusive else ())
    return [f"#SBATCH {f}" for f in flags]


def _where(job: Job) -> str:
    return f"{job.secrets} or the environment sbatch runs in" if job.secrets else "the environment sbatch runs in"


def _uri(var: str, uri: str, what: str, job: Job) -> list[str]:
    """Export VAR from the secrets file or the environment sbatch carries, else the URL when it holds no password."""
    where = _where(job)
    if has_password(uri):
        return [
            f"# {var} ({what}): {_redact(uri)} holds a password,",
            f"# so it is not written here: it comes from {where}.",
            f'[ -n "${{{var}:-}}" ] || die {_q(f"set {var}={_redact(uri)} (with its password) in {where}")}',
            f"export {var}",
        ]
    default = f"default_{var.lower()}"
    return [
        f"# {var} ({what}): from {where}, else the URL below (it holds no password).",
        f"{default}={_q(uri)}",
        f'export {var}="${{{var}:-${default}}}"',
    ]


def _environment(url: str, tracking: str | None, job: Job, nodes: int) -> list[str]:
    """The setup line, the secrets file, OPTUNA_STORAGE and MLFLOW_TRACKING_URI: never a password."""
    if url.startswith("sqlite"):
        raise ConfigError(
            f"--emit: study storage {url} is a SQLite file, which the machines of a SLURM job cannot "
            "share; give --storage postgresql://user@host/db or journal:///shared/study.log"
        )
    lines = [
        'die() { echo "cvae-sweep: $*" >&2; exit 2; }',
        "# Environment: run on every node before cvae (--setup CMD; by default the .venv beside the project).",
        *(["# shellcheck disable=SC2016  # it expands where it runs"] if set("$`") & set(job.setup or "") else []),
        f"export CVAE_SETUP={_q(job.setup or '')}",
        'eval "$CVAE_SETUP"',
    ]
    if job.secrets:
        f, what = _q(job.secrets), f"{job.secrets} must exist, for its owner only (chmod 600 it): it holds passwords"
        lines += [
            f"# Secrets: none in this file. {job.secrets} (mode 0600) sets OPTUNA_STORAGE=... and, with a",
            "# password, MLFLOW_TRACKING_URI=...: plain NAME=value lines, exported as they are read.",
            f'[ -f {f} ] && [[ "$(stat -c %a {f})" == [4-7]00 ]] || die {_q(what)}',
            "set -a",
            "# shellcheck source=/dev/null",
            f"source {f}",
            "set +a",
        ]
    else:
        lines.append("# Secrets: none in this file; a URL with a password comes from the environment sbatch runs in.")
    lines += _uri("OPTUNA_STORAGE", url, "the study's storage", job)
    if tracking is None:
        return lines + ["# MLflow: off for this study (tracking.enabled false)."]
    if tracking and nodes > 1 and (tracking.startswith("sqlite") or urlsplit(tracking).scheme in ("", "file")):
        raise ConfigError(
            f"--emit: MLflow tracking URI {tracking} is a file, which each of the job's {nodes} nodes would write on "
            "its own; give an MLflow server (MLFLOW_TRACKING_URI=http://host:5000, or tracking.uri=...)"
            + (", or none: the script then starts one on the head node" if job.kind == "ray-slurm" else "")
        )
    if tracking:
        lines += _uri("MLFLOW_TRACKING_URI", tracking, "the MLflow server every run logs to", job)
    elif job.kind == "ray-slurm":
        lines.append(f"# MLFLOW_TRACKING_URI: from {_where(job)}; when empty, an MLflow server on the head (below).")
    elif nodes > 1:
        lines += [
            f"# MLFLOW_TRACKING_URI: from {_where(job)}; the array's tasks run on several nodes, which",
            "# cannot share a SQLite tracking file: give an `mlflow server` every node reaches (docs/scaling.md).",
            '[ -n "${MLFLOW_TRACKING_URI:-}" ] || die "set MLFLOW_TRACKING_URI=http://<mlflow server>:5000"',
        ]
    else:
        lines.append(f"# MLFLOW_TRACKING_URI: from {_where(job)}; else mlflow.db in the run.out_dir (one node).")
    if nodes > 1:  # one more look at run time: the environment may name a file
        lines.append(
            'case "${MLFLOW_TRACKING_URI:-}" in sqlite:* | file:* | /*) die "MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI'
            ' is a file each node would write on its own; give an http(s) MLflow server" ;; esac'
        )
    return lines


# the scripts

# The Ray part of a ray-slurm script, after its environment; @GPUS@ and @WAIT_S@ are filled in.
_RAY = r"""# wait_for WHAT PID CMD...: CMD every 5 s until it succeeds (no fixed sleep); give up when PID, the
# process that starts WHAT, has ended, or after @WAIT_S@ s
wait_for() {
  local what=$1 pid=$2 deadline=$((SECONDS + @WAIT_S@))
  shift 2
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$what ended before it answered (see its log)"
    ((SECONDS < deadline)) || die "$what did not answer within @WAIT_S@ s"
    sleep 5
  done
}
# on_node HOST CMD...: CMD as the job's one task on HOST, after the environment line
on_node() {
  local host=$1
  shift
  # shellcheck disable=SC2016  # $CVAE_SETUP and $@ expand in the step's shell, on HOST
  srun --nodes=1 --ntasks=1 -w "$host" bash -c 'eval "$CVAE_SETUP" && exec "$@"' on-node "$@"
}
# This script runs on the job's first node: the Ray head. Ports come from the job id, so two jobs sharing
# a node do not collide: Ray at $port (its client +1, its agent +2), MLflow at $port + 3; no dashboard.
mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_ip=$(srun --nodes=1 --ntasks=1 -w "${hosts[0]}" hostname --ip-address | awk '{print $1}')
port=$((20000 + SLURM_JOB_ID % 5000 * 4))
if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
  # An MLflow server on the head for this job's runs: every node logs to it over http (a file or SQLite
  # store would be one per node). Its backend is database mlflow on the study's PostgreSQL server (create
  # it once: createdb mlflow; the study's own database cannot hold both, each keeps an alembic_version
  # table), or $MLFLOW_BACKEND_STORE_URI, given through the environment, not the command line ps shows.
  # It serves the artifacts (--serve-artifacts), kept in ./mlartifacts; its log: mlflow-JOBID.log.
  base=${OPTUNA_STORAGE%%\?*}
  mlflow_db="${MLFLOW_BACKEND_STORE_URI:-${base%/*}/mlflow${OPTUNA_STORAGE#"$base"}}"
  MLFLOW_BACKEND_STORE_URI="$mlflow_db" mlflow server --host "$head_ip" --port $((port + 3)) \
    --allowed-hosts "$head_ip:$((port + 3))" --serve-artifacts \
    --artifacts-destination "$PWD/mlartifacts" >"mlflow-$SLURM_JOB_ID.log" 2>&1 &
  export MLFLOW_TRACKING_URI="http://$head_ip:$((port + 3))"
  wait_for "the MLflow server at $MLFLOW_TRACKING_URI" $! curl -fsS "$MLFLOW_TRACKING_URI/health"
fi
on_node "${hosts[0]}" ray start --head --node-ip-address="$head_ip" --port="$port" \
  --ray-client-server-port=$((port + 1)) --include-dashboard=false --dashboard-agent-listen-port=$((port + 2)) \
  --num-cpus="$SRUN_CPUS_PER_TASK" --num-gpus=@GPUS@ --block &
wait_for "the Ray head at $head_ip:$port" $! ray status --address="$head_ip:$port"
for host in "${hosts[@]:1}"; do
  on_node "$host" ray start --address="$head_ip:$port" --dashboard-agent-listen-port=$((port + 2)) \
    --num-cpus="$SRUN_CPUS_PER_TASK" --num-gpus=@GPUS@ --block &
done
# the sweep, here on the head: Ray starts a worker task on each GPU as its node joins
"""


def _script(head: list[str], flags: str, job: Job, cwd: str, env: list[str], body: list[str]) -> str:
    """#!/bin/bash, the header comment, the #SBATCH lines, the environment, the body."""
    return "\n".join(
        ["#!/bin/bash", *head, *_sbatch(job, *flags.split()), "set -euo pipefail", f"cd {_q(cwd)}"] + env + body + [""]
    )


def slurm(study: str, url: str, tracking: str | None, extra: list[str], cwd: str, job: Job) -> str:
    """An sbatch array script: `job.array` workers, one GPU each, requeued when their node fails."""
    name, n, threads = Path(study).stem, job.array, '--threads "$SRUN_CPUS_PER_TASK"'
    tail = "".join(f" {_q(x)}" for x in ["--", *extra]) if extra else ""
    head = [
        f"# cvae-sweep: study {study} as a SLURM job array of {n} worker(s), one GPU each. Submit it with sbatch.",
        "# Array task 0 creates (or continues) the study and works; the others poll for the study (up to 10",
        "# minutes: sweeps/worker.py), then work. A task whose node fails is requeued; its run is failed by its",
        "# missing heartbeat and re-run with the same seed.",
    ]
    flags = f"--job-name=cvae-{name} --array=0-{n - 1} --ntasks=1 --gres=gpu:1 --cpus-per-task={CPUS_PER_GPU}"
    flags += f" --requeue --open-mode=append --output=cvae-{name}-%A_%a.out"
    body = [
        "# the storage and tracking URIs reach cvae through the environment, not its command line (ps shows it)",
        f'export SRUN_CPUS_PER_TASK="${{SLURM_CPUS_PER_TASK:-{CPUS_PER_GPU}}}"  # Slurm >= 22.05: srun needs it',
        'if [ "${SLURM_ARRAY_TASK_ID:-0}" = 0 ]; then',
        f"  srun cvae sweep {_q(study)} --workers 1 {threads}{tail}",
        "else",
        f'  srun cvae worker {_q(study)} {threads} --worker-index "$SLURM_ARRAY_TASK_ID"{tail}',
        "fi",
    ]
    return _script(head, flags, job, cwd, _environment(url, tracking, job, n), body)


def ray_slurm(study: str, url: str, tracking: str | None, extra: list[str], cwd: str, job: Job) -> str:
    """Ray head on the allocation's first node, one Ray worker on every other (all its GPUs), an MLflow server on the
    head when none is given, then `cvae sweep --ray` on the head."""
    name, gpus, cpus = Path(study).stem, job.gpus_per_node, CPUS_PER_GPU * job.gpus_per_node
    head = [
        f"# cvae-sweep: study {study} on a Ray cluster inside one SLURM allocation of {job.array} node(s).",
        f"# Submit it with sbatch. One Ray worker a node holds its {gpus} GPU(s); Ray runs a cvae worker task",
        "# a GPU, and a lost node's task again on another.",
    ]
    flags = f"--job-name=cvae-{name}-ray --nodes={job.array} --ntasks-per-node=1 --gres=gpu:{gpus}"
    flags += f" --cpus-per-task={cpus} --output=cvae-{name}-ray-%j.out"
    body = [
        f'export SRUN_CPUS_PER_TASK="${{SLURM_CPUS_PER_TASK:-{cpus}}}"  # Slurm >= 22.05: srun needs it',
        _RAY.replace("@GPUS@", str(gpus)).replace("@WAIT_S@", str(WAIT_S)).rstrip("\n"),
        f'cvae sweep {_q(study)} --ray "$head_ip:$port"' + "".join(f" {_q(x)}" for x in extra),
    ]
    return _script(head, flags, job, cwd, _environment(url, tracking, job, job.array), body)


def _default_setup(folder: Path) -> str:
    """Activate the project's .venv (the folder's, else the one running cvae); nothing when there is none."""
    for venv in (folder.resolve() / ".venv", Path(sys.prefix)):
        if (venv / "bin" / "activate").is_file():
            return f"source {_q(str(venv / 'bin' / 'activate'))}"
    return ""


def write(name: str, study_arg: str, url: str, tracking: str | None, extra: list[str], job: Job, folder: Path) -> Path:
    """Write the script for study `name` (run as `cvae sweep STUDY_ARG`: a name or a spec path) into `folder` as
    <name>.<kind>.sh, atomically, mode 0755 (it holds no password); returns its path. `tracking`: the MLflow URI
    given, "" for none, None when tracking is off."""
    if job.secrets:
        secrets = Path(job.secrets).resolve()
        if secrets.exists() and secrets.stat().st_mode & 0o077:
            raise ConfigError(f"--secrets {secrets} can be read by others: chmod 600 it (it holds passwords)")
        job = replace(job, secrets=str(secrets))
    if job.setup is None:
        job = replace(job, setup=_default_setup(folder))
    make = slurm if job.kind == "slurm" else ray_slurm
    text = make(study_arg, url, tracking, extra, str(folder.resolve()), job)
    path = folder / f"{name}.{job.kind}.sh"
    write_text(path, text)
    path.chmod(0o755)
    return path
