"""MLflow implementation of the Tracker: one MLflow run per training run, through MlflowClient only.

The client API (explicit run ids, no global active run) lets sweep workers and resumed runs share a
process safely. Default store: sqlite:///<out_dir>/mlflow.db with artifacts in <out_dir>/mlartifacts.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from cvae import faults
from cvae.config import Config, ConfigError, diff_from_defaults
from cvae.tracking import Tracker

PROJECT_DIR = Path(__file__).resolve().parents[1]
REACH_TIMEOUT_S = 5.0
# keep a dead server from stalling a run for minutes of retries; set before mlflow reads them
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# no "View run ... at: URL" from MLflow for every run a server ends: the sweep prints its own line per run
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class TrackingError(ConfigError):
    """The tracking store cannot be used (unreachable server, unwritable folder)."""


# helpers


def tracking_uri(cfg: Config) -> str:
    """tracking.uri > $MLFLOW_TRACKING_URI > sqlite store under run.out_dir."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return f"sqlite:///{Path(cfg.run.out_dir).resolve() / 'mlflow.db'}"


def artifact_root(cfg: Config) -> str | None:
    """Local artifact folder beside the default SQLite store; servers choose their own."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status >= 500:
                raise TrackingError(f"tracking server {uri} answered HTTP {r.status}")
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise TrackingError(f"tracking server {uri} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking server {uri} is unreachable ({reason})") from None


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """Experiment id, creating it once (a concurrent creator that wins the race is fine)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - lost a creation race to another worker
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def make_client(cfg: Config) -> Any:
    """MlflowClient on the configured store, which is created (and migrated) here when local."""
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or cfg.run.name


def _git_info() -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def run_name(cfg: Config, max_len: int = 120) -> str:
    """Experiment + the schedule settings first, then the rest that differ from base."""
    order = ("tf.", "kl.", "train.lr", "model.learned_prior", "train.", "model.", "data.", "eval.", "run.seed")
    diff = diff_from_defaults(cfg)
    keys = sorted(diff, key=lambda k: next((i for i, p in enumerate(order) if k.startswith(p)), len(order)))
    name = cfg.run.name
    for k in keys:
        part = f" {k}={diff[k]}"
        if len(name) + len(part) > max_len:
            break
        name += part
    return name


class MlflowTracker(Tracker):
    def __init__(self, cfg: Config, parent_run_id: str | None = None, tags: dict[str, str] | None = None):
        self.cfg = cfg
        self.client = make_client(cfg)
        self.parent_run_id = parent_run_id
        self.extra_tags = tags or {}
        self.run_id: str | None = None
        self._monitor: Any = None
        self._logged_steps: dict[str, int] = {}
        self._pending: list[tuple[Callable[..., Any], tuple, dict[str, Any]]] = []
        self._finished, self._wait_s = False, cfg.tracking.outage_wait_s

    # a server that stops answering: queue, replay in order once it is back

    def _server_down(self) -> bool:
        try:
            check_reachable(self.client.tracking_uri, timeout=2.0)
            return False
        except TrackingError:
            return True

    def _flush(self) -> None:
        """Replay queued calls in order while the server answers."""
        while self._pending:
            fn, args, kwargs = self._pending[0]
            try:
                fn(*args, **kwargs)
            except Exception:
                if self._server_down():
                    return
                raise
            self._pending.pop(0)
        print(
            f"tracking: {self.client.tracking_uri} answers again; queued logging of run {self.run_id} replayed",
            file=sys.stderr,
            flush=True,
        )

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """One logging call. While an http(s) server is unreachable, calls queue (training goes on; metrics.csv,
        checkpoints and plots are written locally as always) and replay in order at the next call that finds it
        back. Other errors (a bad value, a refused request) raise as before."""
        if self._pending and not self._server_down():
            self._flush()
        if not self._pending:
            try:
                fn(*args, **kwargs)
                return
            except Exception:
                if not self._server_down():
                    raise
                print(
                    f"tracking: {self.client.tracking_uri} unreachable; training goes on and the logging of run "
                    f"{self.run_id} is queued until it answers",
                    file=sys.stderr,
                    flush=True,
                )
        self._pending.append((fn, args, kwargs))
        if self._finished:
            self._wait_for_server()

    def _wait_for_server(self) -> None:
        """At the run's end: wait up to tracking.outage_wait_s for the server, replay, or say what is missing."""
        deadline = time.monotonic() + self._wait_s
        while self._pending and time.monotonic() < deadline:
            if not self._server_down():
                self._flush()
            if self._pending:
                time.sleep(2.0)
        if self._pending:
            print(
                f"tracking: {self.client.tracking_uri} still unreachable after {self._wait_s:g} s; "
                f"{len(self._pending)} logging call(s) of run {self.run_id} are lost there (the run folder has "
                "everything); `cvae sweep repair STUDY` closes the run once the server is back",
                file=sys.stderr,
                flush=True,
            )
            self._pending.clear()

    def start(self, cfg: Config, run_dir: Path, resume_run_id: str | None = None) -> None:
        """Open the run (or re-open a resumed one). The trainer calls this inside its try, so a stop that lands
        here once run_id is set still ends the run with the right status."""
        if resume_run_id:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            self.client.set_tag(resume_run_id, "resumed", "true")
            self._logged_steps = self._last_steps(resume_run_id)
        else:
            exp_id = ensure_experiment(self.client, experiment_name(cfg), artifact_root(cfg))
            tags = {
                "dataset": cfg.data.name if not cfg.data.root else f"{cfg.data.name}:{cfg.data.root}",
                "run_dir": str(Path(run_dir).resolve()),
                "command": shlex.join(sys.argv),
                "torch": _version("torch"),
                "mlflow": _version("mlflow"),
                **_git_info(),
                **self.extra_tags,
            }
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self.client.create_run(exp_id, tags=tags, run_name=run_name(cfg))
            self.run_id = run.info.run_id
            self._log_params(cfg)
            if (Path(run_dir) / "config.yaml").is_file():  # there from the start, so failed runs have it too
                self.log_artifact(Path(run_dir) / "config.yaml")
        self._start_system_metrics()

    def _last_steps(self, run_id: str) -> dict[str, int]:
        """Last logged step per metric: a resumed epoch that was logged before the kill is not logged twice."""
        keys = [k for k in self.client.get_run(run_id).data.metrics if not k.startswith("system/")]
        return {k: max(m.step for m in self.client.get_metric_history(run_id, k)) for k in keys}

    def _log_params(self, cfg: Config) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in cfg.flat().items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _start_system_metrics(self) -> None:
        if not self.cfg.tracking.system_metrics:
            return
        try:
            import psutil  # noqa: F401 - mlflow's monitor needs it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return
        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=10,
            samples_before_logging=1,
            resume_logging=True,
            tracking_uri=self.client.tracking_uri,
        )
        self._monitor.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and step > self._logged_steps.get(k, -1)
        ]
        if batch:
            self._call(self.client.log_batch, self.run_id, metrics=batch)
            faults.point("mlflow")  # the epoch's metrics are in, its files not yet

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path=subdir)

    def log_image(self, path: Path, key: str, step: int) -> None:
        import imageio.v3 as iio

        self._call(self.client.log_image, self.run_id, iio.imread(path), key=key, step=step)

    def log_model(self, model: Any) -> None:
        import mlflow.pytorch

        # pickle: torch.export ('pt2', MLflow 3's default) cannot trace the recurrent forward; loading it
        # back needs MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true. Explicit requirements skip MLflow's slow
        # inference subprocess; a CPU copy loads on machines without CUDA.
        quiet = [logging.getLogger(n) for n in ("mlflow.pytorch", "mlflow.utils.requirements_utils")]
        levels = [q.level for q in quiet]
        try:
            for q in quiet:
                q.setLevel(logging.ERROR)
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.pytorch.save_model(
                    copy.deepcopy(model).cpu(),
                    os.path.join(tmp, "model"),
                    serialization_format="pickle",
                    pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
                )
                self.client.log_artifacts(self.run_id, os.path.join(tmp, "model"), artifact_path="model")
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call(self.client.set_tag, self.run_id, k, v)

    def finish(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # noqa: BLE001 - metrics of the monitor must never mask the run's own status
                pass
            self._monitor = None
        if self.run_id is not None:
            # a stopped or failed run does not wait for a server (a Ctrl-C must end within seconds)
            self._finished, self._wait_s = True, self.cfg.tracking.outage_wait_s if status == "FINISHED" else 0.0
            self._call(self.client.set_terminated, self.run_id, status=status)


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


__all__ = [
    "MlflowTracker",
    "TrackingError",
    "tracking_uri",
    "artifact_root",
    "make_client",
    "ensure_experiment",
    "check_reachable",
    "experiment_name",
    "run_name",
]


# the Model Registry (sweeps/registry.py registers; `cvae eval models:/...` reads)

REGISTERED_CHECKPOINT = "best.pt"


def registered_checkpoint(uri: str, cfg: Config, into: Path) -> Path:
    """`models:/NAME/VERSION|latest` -> the registered version's best.pt, copied to into/NAME-vVERSION/best.pt
    (where `cvae eval` then writes its results)."""
    import shutil

    parts = uri.removeprefix("models:/").split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{uri}: expected models:/NAME/VERSION or models:/NAME/latest")
    name, ver = parts
    client = make_client(cfg)
    try:
        if ver == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ConfigError(f"{uri}: no registered model {name}")
            ver = str(max(int(v.version) for v in versions))
        mv = client.get_model_version(name, ver)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow's not-found errors vary
        raise ConfigError(f"{uri}: {str(e).splitlines()[0][:200]}") from None
    import mlflow

    with tempfile.TemporaryDirectory(prefix="cvae-model-") as tmp:
        # the version's own artifact location, read through this store (a models:/ URI would be resolved
        # against MLflow's global registry URI, not this configuration's)
        location = client.get_model_version_download_uri(name, str(mv.version))
        got = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=client.tracking_uri)
        )
        found = sorted(got.rglob(REGISTERED_CHECKPOINT))
        if not found:
            raise ConfigError(
                f"{uri}: version {mv.version} holds no {REGISTERED_CHECKPOINT} (not registered by cvae-sweep)"
            )
        folder = into / f"{name}-v{mv.version}"
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / REGISTERED_CHECKPOINT
        shutil.copyfile(found[0], dest)
    return dest


def make_tracker(cfg: Config) -> Tracker:
    """The tracker the config asks for: MLflow, or the do-nothing Tracker when tracking is off."""
    return MlflowTracker(cfg) if cfg.tracking.enabled else Tracker()
