"""`cvae ...` as a user types it: one subprocess per command, run in a temp folder."""

from __future__ import annotations

import csv
import io
import os
import pickle
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from helpers import BAD_OVERRIDES, run_cvae

from cvae import config as config_mod
from cvae.checkpoints import load_checkpoint
from cvae.data import SPLITS, course, load_split
from cvae.trainer import METRIC_COLUMNS, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Boom:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def _half_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"format_version": 2, "model": {"w": torch.zeros(1000)}}, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]  # a copy cut short


RAW_PICKLE = pickle.dumps(_Boom())
HALF_CHECKPOINT = _half_checkpoint()
SUMMARY = re.compile(r"^best val/psnr=\d+\.\d\d dB \(copy-last \d+\.\d\d dB\) at epoch \d+ -> (.+)$")
DOCUMENTED_COLUMNS = [
    "epoch",
    "train/loss",
    "train/mse",
    "train/kld",
    "sched/beta",
    "sched/tfr",
    "train/lr",
    "val/psnr",
    "val/ssim",
    "val/psnr_copy_last",
    "val/ssim_copy_last",
    "val/psnr_best",
    "val/ssim_best",
    "val/psnr_moving",
    "val/psnr_moving_copy_last",
    "val/cond_gain",
    "val/kld",
    "val/active_dims",
    "perf/seq_per_s",
    "perf/epoch_seconds",
]

# helpers


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused command."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cvae: error:"), lines[0]
    return lines[0]


# bad input: exit 2, one line naming the key, nothing written

BAD_INVOCATIONS = [
    *[pytest.param(["train", *p.values[0]], p.values[1], {}, id=p.id) for p in BAD_OVERRIDES],
    pytest.param(["train", "train.lr"], "train.lr", {}, id="first-override-without-equals"),
    pytest.param(["train", "nope"], "nope", {}, id="missing-experiment"),
    pytest.param(["train", "nope.yaml", "train.lr=0.1"], "nope.yaml", {}, id="missing-experiment-file"),
    pytest.param(["train", "bad.yaml"], "bad.yaml", {"bad.yaml": "train: [lr: 1\n"}, id="invalid-yaml"),
    pytest.param(["train", "exp.yaml"], "train.lr", {"exp.yaml": "train:\n  lr: fast\n"}, id="bad-value-in-file"),
    pytest.param(["train", "demo", "train.n_future=29"], "train.n_future", {}, id="bad-override-of-demo"),
    pytest.param(["train", "--resume", "nowhere"], "nowhere", {}, id="resume-without-run"),
    pytest.param(["schedules", "kl.mode=sometimes"], "kl.mode", {}, id="schedules-bad-literal"),
    # files that must not be trusted (issue "Nothing lost"): refused in one line, nothing they carry runs
    pytest.param(
        ["train", "evil.yaml"],
        "evil.yaml",
        {"evil.yaml": "train: !!python/object/apply:os.system ['touch pwned']\n"},
        id="yaml-with-python-tag",
    ),
    pytest.param(["eval", "raw.pt"], "raw.pt", {"raw.pt": RAW_PICKLE}, id="eval-raw-pickle"),
    pytest.param(["eval", "half.pt"], "half.pt", {"half.pt": HALF_CHECKPOINT}, id="eval-truncated-checkpoint"),
    pytest.param(
        ["train", "demo", "tracking.outage_wait_s=-1"], "tracking.outage_wait_s", {}, id="negative-outage-wait"
    ),
    pytest.param(["sweep", "repair", "demo"], "no study demo", {}, id="repair-of-a-study-never-run"),
    pytest.param(["data", "preview", "data.n_train=0"], "data.n_train", {}, id="preview-non-positive"),
    pytest.param(["data", "export", "model.z_dim=-1", "--out", "d"], "model.z_dim", {}, id="export-non-positive"),
]


@pytest.fixture(scope="module")
def bad_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path, set[str]]]:
    """Every bad invocation, run concurrently (each subprocess mostly waits on imports)."""
    jobs = {}
    for p in BAD_INVOCATIONS:
        args, _, files = p.values
        cwd = tmp_path_factory.mktemp("bad")
        for name, content in files.items():
            (cwd / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        jobs[p.id] = (args, cwd, _files(cwd))
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = dict(zip(jobs, pool.map(lambda job: run_cvae(*job[0], cwd=job[1]), jobs.values())))
    return {k: (procs[k], jobs[k][1], jobs[k][2]) for k in jobs}


@pytest.mark.parametrize("args, key, files", BAD_INVOCATIONS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    bad_runs: dict, request: pytest.FixtureRequest, args: list[str], key: str, files: dict
) -> None:
    proc, cwd, before = bad_runs[request.node.callspec.id]
    line = _error_line(proc)
    assert key in line
    assert proc.stdout == ""
    assert _files(cwd) == before  # no runs/, no .cache/, no export folder


def test_resume_refuses_extra_arguments(tiny_cfg: config_mod.Config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config_mod.build({**tiny_cfg.flat(), "train.niter": 1}), run_dir=run)
    before = _files(run)
    proc = run_cvae("train", "--resume", str(run), "train.lr=0.1", cwd=tmp_path)
    assert "--resume" in _error_line(proc)
    assert _files(run) == before


# train


def test_train_writes_a_complete_run_folder(tiny_args: list[str], tiny_cfg: config_mod.Config, tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = run_cvae("train", *tiny_args, cwd=tmp_path)
    print(f"cvae train (tiny, {tiny_cfg.train.niter} epochs): {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr
    match = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout
    run = Path(match.group(1))
    assert run.parent == tmp_path / "runs" / "default" and run.is_dir()
    assert set(p.name for p in tmp_path.iterdir()) == {"runs"}  # nothing else lands in the working folder

    with (run / "metrics.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == DOCUMENTED_COLUMNS == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(1, tiny_cfg.train.niter + 1))
    for name in (
        "loss.png",
        "psnr.png",
        "kl_weight.png",
        "tfr.png",
        "per_step_psnr.png",
        "psnr_moving.png",
        "cond_gain.png",
        "diagnostics.png",
    ):
        assert _is_png(run / name), name
    gifs = sorted((run / "samples").glob("*.gif"))
    assert len(gifs) == tiny_cfg.train.niter  # eval.every=1
    frames = iio.imread(gifs[-1], index=None)
    assert frames.ndim == 4 and frames.shape[0] == tiny_cfg.eval.n_past + tiny_cfg.eval.n_future
    strips = sorted((run / "samples").glob("*_strip.png"))
    assert strips and all(_is_png(p) for p in strips)
    assert config_mod.from_dict(yaml.safe_load((run / "config.yaml").read_text())) == tiny_cfg
    assert load_checkpoint(run / "last.pt")["epoch"] == tiny_cfg.train.niter
    assert load_checkpoint(run / "best.pt")["epoch"] == int(re.search(r"at epoch (\d+)", proc.stdout).group(1))
    e = tiny_cfg.eval
    with (run / "per_step.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert len(steps) == tiny_cfg.train.niter * (e.n_past + e.n_future - 1)  # KL from frame 1, PSNR predicted only
    assert {int(r["frame"]) for r in steps} == set(range(1, e.n_past + e.n_future))
    predicted = [r for r in steps if int(r["frame"]) >= e.n_past]
    assert all(r["psnr"] and r["cond_gain"] and r["kld"] for r in predicted)
    with (run / "kl_per_dim.csv").open() as f:
        dims = list(csv.DictReader(f))
    assert len(dims) == tiny_cfg.train.niter * tiny_cfg.model.z_dim


def test_train_resume(tiny_cfg: config_mod.Config, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop(epoch: int, row: dict) -> None:
        raise Stop

    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny_cfg, run_dir=run, on_epoch=stop)
    proc = run_cvae("train", "--resume", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SUMMARY.match(proc.stdout.strip().splitlines()[-1]).group(1) == str(run)
    with (run / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_resume_from_another_folder_finds_the_run_s_own_store(tiny_args: list[str], tmp_path: Path) -> None:
    """A relative run.out_dir means: relative to where the run started, not to where it is resumed."""
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    args = [a for a in tiny_args if not a.startswith(("run.out_dir=", "tracking.enabled="))] + [
        "run.out_dir=runs",
        "train.niter=1",
        "tracking.enabled=true",
    ]
    proc = run_cvae("train", *args, cwd=start)
    assert proc.returncode == 0, proc.stderr
    run = Path(SUMMARY.match(proc.stdout.strip().splitlines()[-1]).group(1))
    proc = run_cvae("train", "--resume", str(start / run), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert not any(elsewhere.iterdir())  # no second store, no second run folder
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{start / 'runs' / 'mlflow.db'}")
    (only,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert only.data.tags.get("resumed") == "true" and only.info.status == "FINISHED"


def test_diverged_run_exits_nonzero_with_one_line(
    tiny_args: list[str], tiny_cfg: config_mod.Config, tmp_path: Path
) -> None:
    # NaN loss from the first iteration of epoch 2, in the child process
    prelude = (
        "import dataclasses\n"
        "from cvae.model import CVAE\n"
        "_fwd, _n = CVAE.forward, [0]\n"
        "def _nan(self, *a, **k):\n"
        "    t = _fwd(self, *a, **k); _n[0] += self.training\n"
        f"    return dataclasses.replace(t, mse=t.mse * float('nan')) if _n[0] > {tiny_cfg.train.epoch_size} else t\n"
        "CVAE.forward = _nan"
    )
    proc = run_cvae("train", *tiny_args, cwd=tmp_path, prelude=prelude)
    assert proc.returncode not in (0, 2), proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "diverged at epoch 2, iteration 1" in lines[0]
    (run,) = (tmp_path / "runs" / "default").iterdir()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


# schedules and data tools


def test_schedules_demo_writes_a_png(tmp_path: Path) -> None:
    proc = run_cvae("schedules", "demo", "--out", "x.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _is_png(tmp_path / "x.png")
    assert iio.imread(tmp_path / "x.png").ndim == 3
    assert _files(tmp_path) == {"x.png"}


def test_data_preview_writes_a_gif_and_a_png(tiny_args: list[str], tmp_path: Path) -> None:
    proc = run_cvae("data", "preview", *tiny_args, "--out", "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    gifs, pngs = list((tmp_path / "d").glob("*.gif")), list((tmp_path / "d").glob("*.png"))
    assert len(gifs) == 1 and len(pngs) == 1
    assert iio.imread(gifs[0], index=None).shape[0] == 30
    assert _is_png(pngs[0])


def test_overrides_are_taken_after_options_too(tiny_args: list[str], tmp_path: Path) -> None:
    # `cvae data preview demo -n 4 data.seed=3`: an override after an option
    proc = run_cvae("data", "preview", "-n", "2", "--out", "d", *tiny_args, "data.seed=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "d").glob("*.gif"))
    bad = run_cvae("data", "preview", "-n", "2", "--nope", *tiny_args, cwd=tmp_path)
    assert bad.returncode == 2 and "unrecognized arguments: --nope" in bad.stderr


def test_data_export_round_trips_pixel_exact(tiny_args: list[str], tiny_cfg: config_mod.Config, tmp_path: Path) -> None:
    proc = run_cvae("data", "export", *tiny_args, "--out", "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for split in SPLITS:
        cached = load_split(tiny_cfg.data, split)
        paths = course.list_sequences(tmp_path / "d", split)
        assert len(paths) == len(cached)
        for i, path in enumerate(paths):
            frames, cond = course.read_sequence(path, tiny_cfg.data.seq_len)
            assert np.array_equal(frames, cached.frames[i]), (split, i)
            assert np.array_equal(cond, cached.cond[i]), (split, i)
    assert (tmp_path / "d" / "test" / "traj_0_to_255.tfrecords").is_dir()
    assert (tmp_path / "d" / "validate" / "traj_256_to_511.tfrecords").is_dir()

    before = _files(tmp_path / "d")
    again = run_cvae("data", "export", *tiny_args, "--out", "d", cwd=tmp_path)
    assert "--force" in _error_line(again)
    assert _files(tmp_path / "d") == before
