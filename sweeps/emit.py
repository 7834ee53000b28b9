"""`cvae sweep STUDY --emit slurm|ray-slurm`: a SLURM script that runs the study's workers (pure text).

slurm: a job array, one `cvae worker` per array task on one GPU; task 0 runs `cvae sweep --workers 1`, which
creates (or continues) the study and is a worker too; the others wait for the study to exist. `--requeue`:
a task whose node fails is queued again by SLURM, and its lost run is failed by its heartbeat and re-run
with the same configuration and seed.
ray-slurm: the usual "Ray head + workers inside one allocation" script, then `cvae sweep --ray` on the head.
Both need a study storage every node reaches (PostgreSQL), and a shared MLflow tracking URI.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from cvae.config import ConfigError


def _q(s: str) -> str:
    return shlex.quote(s)


def _common(study: str, url: str, tracking: str) -> list[str]:
    if url.startswith("sqlite"):
        raise ConfigError(
            f"--emit: study storage {url} is a SQLite file, which the machines of a SLURM job cannot "
            "share; give --storage postgresql://user@host/db"
        )
    lines = ["set -euo pipefail", f"export OPTUNA_STORAGE={_q(url)}"]
    if tracking:
        lines.append(f"export MLFLOW_TRACKING_URI={_q(tracking)}")
    else:
        lines.append(
            "# MLflow: export MLFLOW_TRACKING_URI=http://<server>:5000 (an `mlflow server` every node reaches);"
            " without it each run logs to runs/mlflow.db under this folder"
        )
    return lines


def slurm(study: str, url: str, tracking: str, extra: list[str], array: int, cwd: str, cpus: int = 4) -> str:
    """An sbatch array script: `array` workers, one GPU each, requeued when their node fails."""
    ov = " ".join(_q(x) for x in extra)
    tail = f" -- {ov}" if ov else ""
    return "\n".join(
        [
            "#!/bin/bash",
            f"# cvae-sweep: study {study} as a SLURM job array of {array} worker(s). Submit it with sbatch.",
            "# Array task 0 creates (or continues) the study and works; the others wait for it, then work.",
            "# A task whose node fails is requeued; its run is failed by its missing heartbeat and re-run with the",
            "# same seed.",
            f"#SBATCH --job-name=cvae-{Path(study).stem}",
            f"#SBATCH --array=0-{array - 1}",
            "#SBATCH --gres=gpu:1",
            f"#SBATCH --cpus-per-task={cpus}",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append",
            f"#SBATCH --output=cvae-{Path(study).stem}-%A_%a.out",
            *_common(study, url, tracking),
            f"cd {_q(cwd)}",
            'if [ "${SLURM_ARRAY_TASK_ID:-0}" = 0 ]; then',
            f'  srun cvae sweep {_q(study)} --workers 1 --threads "${{SLURM_CPUS_PER_TASK:-{cpus}}}" '
            f'--storage "$OPTUNA_STORAGE"{tail}',
            "else",
            f'  srun cvae worker {_q(study)} --threads "${{SLURM_CPUS_PER_TASK:-{cpus}}}" --storage "$OPTUNA_STORAGE" '
            f'--worker-index "$SLURM_ARRAY_TASK_ID"{tail}',
            "fi",
            "",
        ]
    )


def ray_slurm(
    study: str,
    url: str,
    tracking: str,
    extra: list[str],
    nodes: int,
    cwd: str,
    gpus_per_node: int = 1,
    cpus: int = 8,
    port: int = 6379,
) -> str:
    """Ray head on the allocation's first node, a Ray worker on every other, then `cvae sweep --ray` on the head."""
    ov = " ".join(_q(x) for x in extra)
    tail = f" {ov}" if ov else ""
    return "\n".join(
        [
            "#!/bin/bash",
            f"# cvae-sweep: study {study} on a Ray cluster inside one SLURM allocation of {nodes} node(s).",
            "# Submit it with sbatch. One worker task per GPU; a lost node's task is run again by Ray.",
            f"#SBATCH --job-name=cvae-{Path(study).stem}-ray",
            f"#SBATCH --nodes={nodes}",
            "#SBATCH --exclusive",
            "#SBATCH --tasks-per-node=1",
            f"#SBATCH --gres=gpu:{gpus_per_node}",
            f"#SBATCH --cpus-per-task={cpus}",
            f"#SBATCH --output=cvae-{Path(study).stem}-ray-%j.out",
            *_common(study, url, tracking),
            f"cd {_q(cwd)}",
            'mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            "head_ip=$(srun --nodes=1 --ntasks=1 -w \"${hosts[0]}\" hostname --ip-address | awk '{print $1}')",
            f"port={port}",
            'srun --nodes=1 --ntasks=1 -w "${hosts[0]}" \\',
            '  ray start --head --node-ip-address="$head_ip" --port="$port" \\',
            f'  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus={gpus_per_node} --block &',
            "sleep 10",
            "for ((i = 1; i < ${#hosts[@]}; i++)); do",
            '  srun --nodes=1 --ntasks=1 -w "${hosts[$i]}" ray start --address="$head_ip:$port" \\',
            f'    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus={gpus_per_node} --block &',
            "  sleep 5",
            "done",
            f'cvae sweep {_q(study)} --ray "$head_ip:$port" --storage "$OPTUNA_STORAGE"{tail}',
            "",
        ]
    )


def write(
    kind: str, name: str, study_arg: str, url: str, tracking: str, extra: list[str], array: int, folder: Path
) -> Path:
    """Write the script for study `name` (run as `cvae sweep STUDY_ARG`: a name or a spec path) into `folder`
    as <name>.<kind>.sh, atomically; returns its path."""
    from cvae.atomic import write_text

    cwd = str(folder.resolve())
    text = (
        slurm(study_arg, url, tracking, extra, array, cwd)
        if kind == "slurm"
        else ray_slurm(study_arg, url, tracking, extra, array, cwd)
    )
    path = folder / f"{name}.{kind}.sh"
    write_text(path, text)
    path.chmod(0o755)
    return path
