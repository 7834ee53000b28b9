"""MLflow tracking end to end: tiny trainings read back with MlflowClient (local SQLite and HTTP server),
resume, SIGTERM, an unreachable server and the do-nothing tracker."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import pytest
import torch
from helpers import CVAE, TINY, MlflowServer, as_args, clean_env, free_port, stop, wait_for
from mlflow import MlflowClient

from cvae import config as config_mod, trainer as trainer_mod
from cvae.config import Config
from cvae.mlflow_tracker import MlflowTracker, experiment_name, make_tracker, tracking_uri
from cvae.tracking import Tracker
from cvae.trainer import train

# helpers

EPOCH_METRICS = ["train/loss", "train/mse", "train/kld", "sched/beta", "sched/tfr", "train/lr", "perf/seq_per_s"]
EVAL_METRICS = [
    "val/psnr",
    "val/ssim",
    "val/psnr_copy_last",
    "val/psnr_moving",
    "val/psnr_moving_copy_last",
    "val/cond_gain",
    "val/kld",
    "val/active_dims",
]
BEST_METRICS = ["best/val_psnr", "best/epoch"]
REQUIRED_TAGS = ["dataset", "device", "torch", "mlflow", "command"]


def make_cfg(overrides: dict[str, str], **extra: str) -> Config:
    """overrides + extra keyword overrides, `section__key` standing for `section.key`."""
    return config_mod.load(None, {**overrides, **{k.replace("__", "."): v for k, v in extra.items()}})


def metric_steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    """{key: sorted steps} of every non-system metric."""
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out: list[str] = []
    for f in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def only_run(client: MlflowClient, cfg: Config) -> Any:
    exp = client.get_experiment_by_name(experiment_name(cfg))
    assert exp is not None, f"no experiment {experiment_name(cfg)!r} in {client.tracking_uri}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


# fixtures


@pytest.fixture(autouse=True)
def no_user_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write to their own stores, never to a server from the user's environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def overrides(tmp_path: Path, data_cache: Path) -> dict[str, str]:
    # three epochs, two GIF sequences, tracking on: the MLflow side is under test
    return {
        **TINY,
        "train.niter": 3,
        "eval.gif_sequences": 2,
        "tracking.enabled": True,
        "run.threads": 1,
        "run.out_dir": str(tmp_path / "runs"),
        "data.cache_dir": str(data_cache),
    }


# tests


def test_run_lands_complete_in_the_store(overrides: dict[str, str]) -> None:
    cfg = make_cfg(overrides, eval__every="2")  # epochs 2 and 3 evaluate, epoch 1 does not
    result = train(cfg, tracker=MlflowTracker(cfg))
    assert (Path(cfg.run.out_dir) / "mlflow.db").is_file()  # the default store: SQLite under run.out_dir
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(result.run_id)

    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(experiment_name(cfg))
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    tags = run.data.tags
    assert all(tags.get(k) for k in REQUIRED_TAGS), {k: tags.get(k) for k in REQUIRED_TAGS}
    assert tags["dataset"] == "pushing" and tags["device"] == "cpu" and tags["torch"] == torch.__version__
    if shutil.which("git") and (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")

    steps = metric_steps(client, result.run_id)
    niter = cfg.train.niter
    for key in EPOCH_METRICS:
        assert steps[key] == list(range(1, niter + 1)), key
    for key in EVAL_METRICS + BEST_METRICS:
        assert steps[key] == [2, 3], key
    assert all(len(s) == len(set(s)) for s in steps.values()), steps
    psnr = [m.value for m in client.get_metric_history(result.run_id, "val/psnr")]
    best = max(psnr)
    assert run.data.metrics["best/val_psnr"] == pytest.approx(best)
    assert run.data.metrics["best/epoch"] == 2 + psnr.index(best)
    assert result.best_psnr == pytest.approx(best)

    arts = artifact_paths(client, result.run_id)
    plots = [a for a in arts if a.startswith("plots/") and a.endswith(".png")]
    assert sorted(plots) == [
        f"plots/{n}.png"
        for n in ("cond_gain", "diagnostics", "kl_weight", "loss", "per_step_psnr", "psnr", "psnr_moving", "tfr")
    ]
    for epoch in (2, 3):
        assert f"samples/epoch_{epoch:04d}.gif" in arts and f"samples/epoch_{epoch:04d}_strip.png" in arts
    for name in ("per_step.csv", "kl_per_dim.csv", "config.yaml", "metrics.csv", "checkpoints/best.pt"):
        assert name in arts, name
    assert "model/MLmodel" not in arts  # tracking.log_model is off by default
    # log_image: one image per evaluation, keyed and stepped (MLflow encodes both in the file name)
    images = [a for a in arts if a.startswith("images/samples~strip+step+") and a.endswith(".png")]
    assert sorted(int(a.split("+step+")[1].split("+")[0]) for a in images) == [2, 3]
    assert tags.get("mlflow.loggedImages") == "True"

    import mlflow.artifacts

    gif = mlflow.artifacts.download_artifacts(
        run_id=result.run_id,
        artifact_path="samples/epoch_0003.gif",
        tracking_uri=tracking_uri(cfg),
        dst_path=str(Path(cfg.run.out_dir) / "dl"),
    )
    frames = iio.imread(gif, index=None)
    assert frames.ndim == 4 and frames.shape[0] == cfg.eval.n_past + cfg.eval.n_future
    csv_rows = (
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=result.run_id,
                artifact_path="metrics.csv",
                tracking_uri=tracking_uri(cfg),
                dst_path=str(Path(cfg.run.out_dir) / "dl"),
            )
        )
        .read_text()
        .strip()
        .splitlines()
    )
    assert len(csv_rows) == 1 + niter  # the final metrics.csv, not an earlier epoch's


class Stop(Exception):
    """Raised from inside training to end it early."""


class KillAfterLogging(MlflowTracker):
    """Ctrl-C right after epoch `at`'s metrics are logged, before its checkpoint is written."""

    def __init__(self, cfg: Config, at: int):
        super().__init__(cfg)
        self.at = at

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop_at", ["on_epoch", "before_logging", "after_logging"])
def test_resume_continues_the_same_run(
    overrides: dict[str, str], stop_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(overrides)
    if stop_at == "on_epoch":  # a raising callback after epoch 1 (how a sweep prunes)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            raise Stop(f"stop after epoch {epoch}")

        with pytest.raises(Stop):
            train(cfg, tracker=MlflowTracker(cfg), on_epoch=on_epoch)
        expected_status, expected_last = "FAILED", 1
    elif stop_at == "before_logging":  # Ctrl-C while epoch 2's outputs are written: its step must not go missing
        write_csv = trainer_mod.write_metrics_csv
        armed = [True]

        def interrupted_write(rows: list[dict[str, float]], path: Path) -> None:
            if len(rows) == 2 and armed and armed.pop():
                raise KeyboardInterrupt
            write_csv(rows, path)

        monkeypatch.setattr(trainer_mod, "write_metrics_csv", interrupted_write)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tracker=MlflowTracker(cfg))
        expected_status, expected_last = "KILLED", 1
    else:  # Ctrl-C right after epoch 2 is logged: on resume epoch 2 is trained again, its step logged once
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tracker=KillAfterLogging(cfg, at=2))
        expected_status, expected_last = "KILLED", 2
    client = MlflowClient(tracking_uri(cfg))
    first = only_run(client, cfg)
    assert first.info.status == expected_status
    assert first.data.tags["ended_by"].startswith(("Stop", "KeyboardInterrupt"))
    assert max(s[-1] for s in metric_steps(client, first.info.run_id).values()) == expected_last
    (run_dir,) = Path(cfg.run.out_dir, cfg.run.name).iterdir()

    result = train(cfg, run_dir=run_dir, resume=True, tracker=MlflowTracker(cfg))
    assert result.run_id == first.info.run_id
    run = only_run(client, cfg)  # still one run: the resume did not open a second one
    assert run.info.status == "FINISHED" and run.data.tags.get("resumed") == "true"
    steps = metric_steps(client, result.run_id)
    for key in EPOCH_METRICS + EVAL_METRICS + BEST_METRICS:
        assert steps[key] == [1, 2, 3], (key, steps[key])


class StopWhileOpening(MlflowTracker):
    """A stop that lands just after the run is created (where a sweep's tracker records it on the trial), or
    a tag that cannot be written while a stopped run is closed."""

    def __init__(self, cfg: Config, where: str):
        super().__init__(cfg)
        self.where = where

    def start(self, cfg: Config, run_dir: Path, resume_run_id: str | None = None) -> None:
        super().start(cfg, run_dir, resume_run_id)
        if self.where == "start":
            raise KeyboardInterrupt

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if self.where == "tagging":
            raise KeyboardInterrupt

    def set_tags(self, tags: dict[str, str]) -> None:
        if "ended_by" in tags and self.where == "tagging":
            raise OSError("database is locked")
        super().set_tags(tags)


@pytest.mark.parametrize("where", ["start", "tagging"])
def test_a_stopped_run_is_closed_wherever_the_stop_lands(overrides: dict[str, str], where: str) -> None:
    cfg = make_cfg(overrides, train__niter="1")
    with pytest.raises((KeyboardInterrupt, OSError)):
        train(cfg, tracker=StopWhileOpening(cfg, where))
    run = only_run(MlflowClient(tracking_uri(cfg)), cfg)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    if where == "start":
        assert run.data.tags["ended_by"] == "KeyboardInterrupt: "


def test_sigterm_closes_the_run_as_killed(tmp_path: Path, overrides: dict[str, str]) -> None:
    args = as_args({**overrides, "run.out_dir": "runs", "train.niter": "50", "eval.every": "5"})
    with (tmp_path / "out.log").open("w") as out:
        proc = subprocess.Popen(
            [*CVAE, "train", *args],
            cwd=tmp_path,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # last.pt appears after epoch 1, by which time the run has long been created (and migrations are done)
        wait_for(lambda: any((tmp_path / "runs").glob("default/*/last.pt")), 90, "epoch 1", proc)
        client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
        cfg = make_cfg(overrides)
        assert only_run(client, cfg).info.status == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        stop(proc)
    run = only_run(client, cfg)
    assert rc != 0, (tmp_path / "out.log").read_text()[-2000:]
    assert run.info.status == "KILLED"
    assert run.data.tags["ended_by"].startswith("SystemExit")
    assert run.info.end_time is not None


@pytest.mark.parametrize("via", ["override", "env"])
def test_unreachable_server_fails_fast_in_one_line(tmp_path: Path, overrides: dict[str, str], via: str) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    ov = {**overrides, "run.out_dir": "runs"}
    if via == "override":
        ov["tracking.uri"] = uri
    start = time.monotonic()
    proc = subprocess.run(
        [*CVAE, "train", *as_args(ov)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**({"MLFLOW_TRACKING_URI": uri} if via == "env" else {})),
    )
    seconds = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cvae: error: tracking server {uri} is unreachable (")
    assert seconds < 15
    assert list(tmp_path.iterdir()) == []  # no run folder, no store, nothing


def test_system_metrics_are_logged(overrides: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psutil")
    # MLflow samples every 10 s; its own variable makes a seconds-long run get several samples
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    cfg = make_cfg(overrides, tracking__system_metrics="true")
    result = train(cfg, tracker=make_tracker(cfg))
    metrics = MlflowClient(tracking_uri(cfg)).get_run(result.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_disabled_tracking_writes_no_store(
    tmp_path: Path, overrides: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(overrides, tracking__enabled="false")
    tracker = make_tracker(cfg)
    assert type(tracker) is Tracker
    result = train(cfg, tracker=tracker)
    assert result.run_id is None and (result.run_dir / "metrics.csv").is_file()
    found = [p for p in tmp_path.rglob("*") if p.name in ("mlflow.db", "mlartifacts", "mlruns")]
    assert found == []


def test_log_model_is_loadable(overrides: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pytorch

    cfg = make_cfg(overrides, tracking__log_model="true", train__niter="1")
    result = train(cfg, tracker=MlflowTracker(cfg))
    client = MlflowClient(tracking_uri(cfg))
    assert "model/MLmodel" in artifact_paths(client, result.run_id)
    # saved with pickle (torch.export cannot trace the recurrent forward), which MLflow 3 loads only when allowed
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    model = mlflow.pytorch.load_model(f"{client.get_run(result.run_id).info.artifact_uri}/model")
    best = torch.load(result.run_dir / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert set(model.state_dict()) == set(best)
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Any:
    """A real `mlflow server` on a free loopback port, storing under tmp_path; yields its URL."""
    server = MlflowServer(f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "srv-art", tmp_path / "server.log")
    try:
        server.start(timeout=60)
        yield server.url
    finally:
        server.stop()


@pytest.mark.slow
def test_training_against_an_http_server(
    tmp_path: Path, overrides: dict[str, str], mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = make_cfg(overrides, train__niter="2")
    assert tracking_uri(cfg) == mlflow_server
    result = train(cfg, tracker=make_tracker(cfg))
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    assert all(s == [1, 2] for k, s in metric_steps(client, result.run_id).items()), metric_steps(client, result.run_id)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to the local default store

    gif = mlflow.artifacts.download_artifacts(
        run_id=result.run_id,
        artifact_path="samples/epoch_0002.gif",
        tracking_uri=mlflow_server,
        dst_path=str(tmp_path / "dl"),
    )
    assert iio.imread(gif, index=None).ndim == 4
    # the endpoint the UI's artifact view uses
    query = urllib.parse.urlencode({"path": "samples/epoch_0002.gif", "run_uuid": result.run_id})
    with urllib.request.urlopen(f"{mlflow_server}/get-artifact?{query}", timeout=30) as r:
        body = r.read()
    assert body[:6] in (b"GIF87a", b"GIF89a") and body == Path(gif).read_bytes()
    assert list((tmp_path / "srv-art").rglob("epoch_0002.gif"))  # stored by the server, proxied to us
    assert not math.isnan(run.data.metrics["val/psnr"])
