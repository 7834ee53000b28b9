"""`cvae eval`: the lab recipe trained on a converted real-schema BAIR fixture, then scored on its test split.

One module fixture converts BAIR-schema TFRecords (real pixels, cvae/data/sample.py) into the course
tree and trains the issue's command on it with MLflow on (a temp SQLite store). Cheap overrides beside
the issue's `train.niter=1 train.epoch_size=2 model.width=0.25`: a small fixture (4 train, 4 validate,
6 test sequences), run.out_dir/data.cache_dir in the temp folder, no progress bar, no system metrics,
one torch thread (two OpenMP threads thrash on a shared 2-core machine; the saved config passes it on to eval).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import run_cvae

from cvae import config as config_mod
from cvae.checkpoints import load_checkpoint
from cvae.cli import main
from cvae.data import course, sample
from cvae.scoring import eval_config, result_tag

REPO = Path(__file__).resolve().parents[1]
LAYOUT = {"train/traj_256_to_511": 4, "train/traj_512_to_767": 4, "test/traj_0_to_255": 6}  # 256_to_511 = validate
TEST_SEQUENCES = 6
SUMMARY = re.compile(r"^test/psnr=(\d+\.\d\d) dB \(copy-last (\d+\.\d\d) dB\) on (\d+) sequences -> (.+)$")
PER_STEP_KEYS = [
    "frame",
    "psnr",
    "psnr_copy_last",
    "psnr_moving",
    "psnr_moving_copy_last",
    "cond_gain",
    "ssim",
    "ssim_copy_last",
]
SCALARS = [
    "psnr",
    "ssim",
    "psnr_copy_last",
    "ssim_copy_last",
    "psnr_moving",
    "psnr_moving_copy_last",
    "cond_gain",
    "kld",
    "active_dims",
]


# helpers


def snapshot(*folders: Path) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every file and folder below `folders`: what "nothing written" compares."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in [f, *f.rglob("*")]}


def copy_last_psnr(root: Path, split: str, n_past: int, n_future: int) -> float:
    """The copy-last baseline by hand from the PNG files: per-channel PSNR, mean over channels, frames, sequences."""
    scores = []
    for path in course.list_sequences(root, split):
        frames, _ = course.read_sequence(path, 30)
        x = frames.astype(np.float64) / 255
        for t in range(n_past, n_past + n_future):
            mse = ((x[t] - x[n_past - 1]) ** 2).mean(axis=(0, 1))  # one per channel
            scores.append(np.mean(-10 * np.log10(np.maximum(mse, 1e-10))))
    return float(np.mean(scores))


def mlflow_client(run_dir: Path) -> Any:
    """A client on the run's temp SQLite store (runs/mlflow.db)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_dir.parents[1] / 'mlflow.db'}")


# fixtures


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course tree converted by `cvae data convert` from real-schema TFRecords."""
    base = tmp_path_factory.mktemp("bair")
    sample.write_dataset(base / "src", LAYOUT)
    assert main(["data", "convert", str(base / "src"), str(base / "course"), "--workers", "1"]) == 0
    return base / "course"


@pytest.fixture(scope="module")
def trained(fixture_root: Path) -> Path:
    """The issue's training command on the fixture, MLflow on; returns its run folder."""
    base = fixture_root.parent
    start = time.perf_counter()
    proc = run_cvae(
        "train",
        REPO / "experiments/lab.yaml",
        f"data.root={fixture_root}",
        "train.niter=1",
        "train.epoch_size=2",
        "model.width=0.25",
        f"run.out_dir={base / 'runs'}",
        f"data.cache_dir={base / 'cache'}",
        "train.progress=false",
        "tracking.system_metrics=false",
        "run.threads=1",
        cwd=base,
    )
    print(f"cvae train lab (width 0.25, 2 iterations, MLflow on): {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1].rpartition(" -> ")[2])


# the acceptance: train, then eval writes and logs its scores


def test_eval_of_a_trained_run_writes_and_logs_the_course_scores(trained: Path, fixture_root: Path) -> None:
    client = mlflow_client(trained)
    run_id = load_checkpoint(trained / "best.pt")["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    start = time.perf_counter()
    proc = run_cvae("eval", trained, "--split", "test", cwd=fixture_root.parent)
    print(f"cvae eval --split test: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr
    assert "note" not in proc.stderr, proc.stderr  # MLflow took the scores
    print(proc.stdout.strip())
    match = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout
    assert int(match.group(3)) == TEST_SEQUENCES and Path(match.group(4)) == trained / "eval_test.json"

    report = json.loads((trained / "eval_test.json").read_text())
    s, m, steps = report["settings"], report["metrics"], report["per_step"]
    ckpt = load_checkpoint(trained / "best.pt")
    assert (s["split"], s["sequences"], s["split_sequences"], s["samples"], s["n_past"], s["horizon"]) == (
        "test",
        TEST_SEQUENCES,
        TEST_SEQUENCES,
        1,
        2,
        10,
    )
    assert (s["checkpoint"], s["epoch"], s["run_id"]) == (str((trained / "best.pt").resolve()), ckpt["epoch"], run_id)
    assert (s["device"], s["torch"], s["seed"]) == ("cpu", torch.__version__, 1)
    assert sorted(m) == sorted(f"test/{k}" for k in SCALARS)
    assert m["test/psnr_copy_last"] == pytest.approx(copy_last_psnr(fixture_root, "test", 2, 10), abs=1e-4)
    assert f"{m['test/psnr']:.2f}" == match.group(1) and f"{m['test/psnr_copy_last']:.2f}" == match.group(2)
    assert list(steps) == PER_STEP_KEYS
    assert steps["frame"] == list(range(2, 12)) and all(len(v) == 10 for v in steps.values())
    assert np.mean(steps["psnr"]) == pytest.approx(m["test/psnr"], rel=1e-9)  # every sequence has every frame
    assert len(report["kld_step"]) == 11 and len(report["kld_dim"]) == 64
    print(
        f"eval_test.json: test/psnr {m['test/psnr']:.3f} dB, test/ssim {m['test/ssim']:.4f}, copy-last "
        f"{m['test/psnr_copy_last']:.3f} dB / {m['test/ssim_copy_last']:.4f} (by hand "
        f"{copy_last_psnr(fixture_root, 'test', 2, 10):.3f} dB), cond_gain {m['test/cond_gain']:.3g} dB"
    )

    assert iio.imread(trained / "eval_test_per_step.png").ndim == 3
    assert iio.imread(trained / "eval_test.gif", index=None).shape[0] == 12  # 2 given + 10 predicted
    assert iio.imread(trained / "eval_test_strip.png").ndim == 3

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # logging the scores does not reopen the run
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    assert logged == pytest.approx({**m, "test/sequences": TEST_SEQUENCES})
    assert {h.step for h in client.get_metric_history(run_id, "test/psnr")} == {ckpt["epoch"]}
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert artifacts == {
        "eval/eval_test.json",
        "eval/eval_test_per_step.png",
        "eval/eval_test.gif",
        "eval/eval_test_strip.png",
    }
    copy = Path(client.download_artifacts(run_id, "eval/eval_test.json", str(fixture_root.parent / "dl")))
    assert json.loads(copy.read_text()) == report
    shutil.rmtree(fixture_root.parent / "dl")


def test_best_of_n_samples_over_a_longer_horizon(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["eval", str(trained), "--samples", "3", "--horizon", "28", "eval.sequences=3", "tracking.enabled=false"])
        == 0
    )
    out, err = capsys.readouterr()
    assert err.strip() == "cvae: note: scores not logged to MLflow: tracking.enabled=false"
    assert re.match(
        r"^test_h28/psnr=\d+\.\d\d dB \(copy-last \d+\.\d\d dB, best of 3 \d+\.\d\d dB\) on 3 sequences", out.strip()
    )
    report = json.loads((trained / "eval_test_h28.json").read_text())  # beside, not over, the course's eval_test
    m, steps = report["metrics"], report["per_step"]
    assert (report["settings"]["samples"], report["settings"]["horizon"], report["settings"]["sequences"]) == (3, 28, 3)
    assert list(steps) == [*PER_STEP_KEYS, "psnr_best", "ssim_best"]
    assert steps["frame"] == list(range(2, 30)) and all(len(v) == 28 for v in steps.values())
    assert m["test_h28/ssim_best"] >= m["test_h28/ssim"]  # sample 0 is among the candidates
    assert np.mean(steps["ssim_best"]) == pytest.approx(m["test_h28/ssim_best"], rel=1e-9)
    assert iio.imread(trained / "eval_test_h28.gif", index=None).shape[0] == 30
    run = mlflow_client(trained).get_run(load_checkpoint(trained / "best.pt")["run_id"])
    assert not [k for k in run.data.metrics if k.startswith("test_h28/")]


def test_a_checkpoint_outside_a_run_folder_writes_beside_it(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(trained / "best.pt")
    torch.save({**state, "run_id": None}, tmp_path / "model.pt")
    assert main(["eval", str(tmp_path / "model.pt"), "eval.sequences=2", "eval.gif_sequences=0"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == "cvae: note: scores not logged to MLflow: the checkpoint holds no MLflow run id"
    assert out.strip().endswith(f"on 2 sequences -> {tmp_path / 'eval_test.json'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_test.json", "eval_test_per_step.png", "model.pt"]


def test_a_store_that_is_not_there_is_a_note_and_is_not_created(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "eval",
                str(trained),
                "--split",
                "validate",
                "eval.sequences=1",
                f"run.out_dir={tmp_path / 'other'}",
                "eval.gif_sequences=0",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert err.startswith(f"cvae: note: scores not logged to MLflow: no MLflow store at sqlite:///{tmp_path / 'other'}")
    assert len(err.splitlines()) == 1 and not (tmp_path / "other").exists()
    assert out.startswith("validate/psnr=") and (trained / "eval_validate.json").is_file()


# bad input: one line naming the problem, exit 2, nothing written

BAD = [
    pytest.param(["{tmp}/nowhere"], "nowhere", id="missing-run-dir"),
    pytest.param(["{tmp}/empty"], "best.pt", id="folder-without-best-pt"),
    pytest.param(["{tmp}/notes.pt"], "not a cvae checkpoint", id="not-a-checkpoint"),
    pytest.param(["{tmp}/tensor.pt"], "not a cvae checkpoint", id="a-tensor-not-a-checkpoint"),
    pytest.param(["{run}", "--split", "valid"], "--split 'valid'", id="unknown-split"),
    pytest.param(["{run}", "--samples", "0"], "--samples 0", id="zero-samples"),
    pytest.param(["{run}", "--samples", "many"], "--samples many", id="samples-not-a-number"),
    pytest.param(["{run}", "--horizon", "29"], "--horizon 29", id="horizon-beyond-30-frames"),
    pytest.param(["{run}", "--horizon", "3", "eval.n_future=5"], "--horizon and eval.n_future", id="horizon-twice"),
    pytest.param(["{run}", "model.width=0.5"], "model.width", id="model-override"),
    pytest.param(["{run}", "train.n_future=28"], "train.n_future", id="training-override"),
    pytest.param(["{run}", "eval.bogus=1"], "eval.bogus", id="unknown-key"),
    pytest.param(["{run}", "--sampels", "3"], "--sampels", id="misspelt-option"),
    pytest.param(["{run}", "data.root={tmp}/gone"], "gone", id="unreachable-data"),
]


@pytest.mark.parametrize("args, key", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    trained: Path, tmp_path: Path, args: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    args = [a.format(tmp=tmp_path, run=trained) for a in args]
    before = snapshot(tmp_path, trained.parents[2])  # the run, the MLflow store, the data and its cache
    assert main(["eval", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvae: error:"), err
    assert key.format(tmp=tmp_path) in lines[0]
    assert snapshot(tmp_path, trained.parents[2]) == before


# the settings an evaluation runs with (pure)


def test_eval_config_defaults_to_the_whole_split_and_keeps_the_model(tiny_cfg: config_mod.Config) -> None:
    cfg = eval_config(tiny_cfg, {"eval.batch_size": "2"}, samples=4, horizon=5)
    assert (cfg.eval.sequences, cfg.eval.batch_size, cfg.eval.samples, cfg.eval.n_future) == (0, 2, 4, 5)
    assert cfg.model == tiny_cfg.model and cfg.train == tiny_cfg.train
    assert eval_config(tiny_cfg, {"eval.sequences": "3"}, None, None).eval.sequences == 3
    assert eval_config(tiny_cfg, {}, None, None).eval.n_future == tiny_cfg.eval.n_future


@pytest.mark.parametrize(
    "n_past, n_future, tag", [(2, 3, "test"), (2, 28, "test_h28"), (3, 3, "test_p3"), (1, 5, "test_p1_h5")]
)
def test_result_tag_marks_a_protocol_other_than_the_checkpoints(
    tiny_cfg: config_mod.Config, n_past: int, n_future: int, tag: str
) -> None:
    cfg = config_mod.build({**tiny_cfg.flat(), "eval.n_past": n_past, "eval.n_future": n_future})
    assert result_tag("test", tiny_cfg, cfg) == tag
