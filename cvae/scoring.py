"""`cvae eval`: a trained checkpoint scored the course's way on a whole split, written beside it and
logged to the MLflow run that trained it.

The protocol and its diagnostics are the Evaluator's (cvae/evaluate.py); this module checks the
request, runs it once and writes what it found: `eval_<tag>.json` (every number and the settings
behind them), `eval_<tag>_per_step.png`, `eval_<tag>.gif` and `eval_<tag>_strip.png`. The tag, also
the metrics' prefix, is the split, plus `_h<N>` when N frames are predicted instead of the
checkpoint's eval.n_future (`_p<N>` for other frames in): a 28-frame SVG score never replaces the
course's 10-frame one. Every check runs before anything is written; an MLflow store that cannot take
the scores is a note, not a failure.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cvae import config as config_mod
from cvae.config import Config, ConfigError
from cvae.data import SPLITS
from cvae.scoring_files import output_paths, report_data, write_outputs

if TYPE_CHECKING:
    pass

CHECKPOINT = "best.pt"
# sections whose overrides cannot change an evaluation: the weights fix the model, the rest is training
_TRAINING_ONLY = "training settings have no effect on an evaluation (its protocol is eval.*, --horizon, --samples)"
FIXED = {
    "model": "the checkpoint's weights fix the model",
    "train": _TRAINING_ONLY,
    "tf": _TRAINING_ONLY,
    "kl": _TRAINING_ONLY,
}
ARTIFACT_DIR = "eval"


@dataclass(frozen=True)
class Plan:
    """A checked request: what to evaluate, how, and where the results go; nothing written yet."""

    checkpoint: Path
    out_dir: Path
    cfg: Config
    split: str
    tag: str
    epoch: int
    run_id: str | None
    state: dict[str, Any] = field(repr=False)


@dataclass
class Outcome:
    """What `cvae eval` produced: the scores, the files and whether MLflow got them."""

    tag: str
    metrics: dict[str, float]
    sequences: int
    samples: int
    files: dict[str, Path]
    log_error: str | None = None
    """Why logging to a reachable run failed part-way (the files are written all the same)."""

    def summary(self) -> str:
        """The one line a user reads at the end."""
        m, p = self.metrics, self.tag
        best = f", best of {self.samples} {m[f'{p}/psnr_best']:.2f} dB" if self.samples > 1 else ""
        return (
            f"{p}/psnr={m[f'{p}/psnr']:.2f} dB (copy-last {m[f'{p}/psnr_copy_last']:.2f} dB{best}) "
            f"on {self.sequences} sequences -> {self.files['json']}"
        )


# checking the request


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line (library messages run to several)."""
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:limit]


def parse_count(option: str, text: str | None) -> int | None:
    """--samples / --horizon: None when absent, else an integer >= 1 (one-line ConfigError otherwise)."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{option} {text}: expected an integer >= 1")
    return value


def find_checkpoint(target: str | Path) -> Path:
    """RUN_DIR -> RUN_DIR/best.pt; a file is taken as the checkpoint itself."""
    path = Path(target)
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise ConfigError(f"{path}: no {CHECKPOINT} in this folder (not a run folder, or no evaluation finished)")
        return path / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{path}: no such run folder or checkpoint")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by the trainer, or a one-line ConfigError saying why the file is not one."""
    # deferred: torch (and matplotlib) load only for the command that needs them
    from cvae.checkpoints import load_checkpoint

    try:
        state = load_checkpoint(path)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a foreign file
        raise ConfigError(f"{path}: not a cvae checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not {"model", "config", "epoch"} <= state.keys():
        raise ConfigError(f"{path}: not a cvae checkpoint (no model state, config and epoch)")
    return state


def saved_config(path: Path, state: dict[str, Any]) -> Config:
    """The training's config as the checkpoint holds it."""
    try:
        return config_mod.from_dict(state["config"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: its saved config is not valid here ({exc})") from None


def check_overrides(items: list[str]) -> dict[str, str]:
    """`section.key=value` overrides of the run, data, eval and tracking settings; refuses the others."""
    overrides = config_mod.parse_overrides(items)
    for key in overrides:
        reason = FIXED.get(key.partition(".")[0])
        if reason:
            raise ConfigError(f"{key}: cannot be overridden by `cvae eval`: {reason}")
    return overrides


def eval_config(saved: Config, overrides: dict[str, str], samples: int | None, horizon: int | None) -> Config:
    """The saved config with the whole split by default, the overrides, then --samples and --horizon."""
    for option, key, value in (("--samples", "eval.samples", samples), ("--horizon", "eval.n_future", horizon)):
        if value is not None and key in overrides:
            raise ConfigError(f"{option} and {key}: give one of them")
    base = config_mod.build({**saved.flat(), "eval.sequences": 0, **overrides})
    e, seq_len = base.eval, base.data.seq_len
    if horizon is not None and e.n_past + horizon > seq_len:
        raise ConfigError(
            f"--horizon {horizon}: {e.n_past} frames in + {horizon} predicted exceeds the "
            f"{seq_len} frames of each sequence (data.seq_len); at most --horizon {seq_len - e.n_past}"
        )
    extra = {"eval.samples": samples, "eval.n_future": horizon}
    return config_mod.build({**base.flat(), **{k: v for k, v in extra.items() if v is not None}})


def result_tag(split: str, saved: Config, cfg: Config) -> str:
    """Metric prefix and file stem: the split, plus _p<n_past>/_h<n_future> where the protocol differs."""
    tag = split
    if cfg.eval.n_past != saved.eval.n_past:
        tag += f"_p{cfg.eval.n_past}"
    if cfg.eval.n_future != saved.eval.n_future:
        tag += f"_h{cfg.eval.n_future}"
    return tag


def plan(
    target: str | Path,
    split: str = "test",
    samples: str | int | None = None,
    horizon: str | int | None = None,
    overrides: list[str] | None = None,
) -> Plan:
    """Check a `cvae eval` request without writing anything."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    n_samples = parse_count("--samples", None if samples is None else str(samples))
    n_future = parse_count("--horizon", None if horizon is None else str(horizon))
    overrides_ = check_overrides(overrides or [])
    if str(target).startswith("models:/"):  # a version of the study's winner in MLflow's Model Registry
        # deferred: MLflow loads only when tracking is on
        from cvae.mlflow_tracker import registered_checkpoint

        base = config_mod.build({**config_mod.Config().flat(), **overrides_})
        target = registered_checkpoint(str(target), base, Path(base.run.out_dir) / "registry")
    checkpoint = find_checkpoint(target)
    state = read_checkpoint(checkpoint)
    saved = saved_config(checkpoint, state)
    cfg = eval_config(saved, overrides_, n_samples, n_future)
    return Plan(
        checkpoint=checkpoint,
        out_dir=checkpoint.parent,
        cfg=cfg,
        split=split,
        tag=result_tag(split, saved, cfg),
        epoch=int(state["epoch"]),
        run_id=state.get("run_id"),
        state=state,
    )


# outputs


def settings_of(p: Plan, sequences: int, split_size: int, device: str) -> dict[str, Any]:
    """The settings behind the numbers, for the JSON file."""
    import torch

    # deferred: torch (and matplotlib) load only for the command that needs them
    from cvae.evaluate import EVAL_SEED_OFFSET

    e, d = p.cfg.eval, p.cfg.data
    return {
        "split": p.split,
        "tag": p.tag,
        "sequences": sequences,
        "split_sequences": split_size,
        "samples": e.samples,
        "n_past": e.n_past,
        "horizon": e.n_future,
        "batch_size": e.batch_size,
        "checkpoint": str(p.checkpoint.resolve()),
        "epoch": p.epoch,
        "best_epoch": p.state.get("best_epoch"),
        "run_id": p.run_id,
        "seed": p.cfg.run.seed,
        "noise_seed": p.cfg.run.seed + EVAL_SEED_OFFSET,
        "device": device,
        "amp": p.cfg.run.amp and device.startswith("cuda"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "data": {"name": d.name, "root": str(Path(d.root).resolve()) if d.root else "", "seq_len": d.seq_len},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# MLflow


@dataclass(frozen=True)
class RunTarget:
    """The training's MLflow run, reachable."""

    client: Any
    run_id: str
    uri: str


def tracking_target(cfg: Config, run_id: str | None) -> tuple[RunTarget | None, str]:
    """(the run to log into, "") or (None, why the scores stay out of MLflow); never creates a store."""
    if not cfg.tracking.enabled:
        return None, "tracking.enabled=false"
    if not run_id:
        return None, "the checkpoint holds no MLflow run id"
    # deferred: MLflow loads only when tracking is on
    from cvae.mlflow_tracker import make_client, tracking_uri

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None, (
            f"no MLflow store at {uri} (run from the folder you trained in, or give "
            "tracking.uri=... or run.out_dir=...)"
        )
    try:
        client = make_client(cfg)
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - unreachable server, unknown run: the scores are on disk anyway
        return None, f"run {run_id} not found in {uri} ({_first_line(exc)})"
    if run.info.lifecycle_stage != "active":
        return None, f"run {run_id} in {uri} is deleted"
    return RunTarget(client, run_id, uri), ""


def log_to_run(target: RunTarget, metrics: dict[str, float], step: int, files: dict[str, Path]) -> None:
    """Scores at the checkpoint's epoch and the files under eval/; the run's status is left as it is."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    target.client.log_batch(target.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
    for path in files.values():
        target.client.log_artifact(target.run_id, str(path), artifact_path=ARTIFACT_DIR)


# the command


def run(p: Plan, note: Callable[[str], None] = lambda message: None) -> Outcome:
    """Evaluate a checked plan, write its files, log them to the training's MLflow run."""
    import torch

    # deferred: torch (and matplotlib) load only for the command that needs them
    from cvae.data import load_split
    from cvae.evaluate import Evaluator
    from cvae.model import CVAE
    from cvae.trainer import resolve_device

    cfg = p.cfg
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    data = load_split(cfg.data, p.split)
    model = CVAE(cfg.model)
    try:
        model.load_state_dict(p.state["model"])
    except RuntimeError as exc:
        raise ConfigError(f"{p.checkpoint}: its weights do not fit its own model config ({_first_line(exc)})") from None
    model.to(device).eval()
    evaluator = Evaluator(cfg, data, device, prefix=p.tag)
    target, why_not = tracking_target(cfg, p.run_id)  # before the long part: a note now, not after an hour
    if target is None:
        note(f"scores not logged to MLflow: {why_not}")

    ev = evaluator(model)
    n = len(evaluator.x)
    metrics = {**ev.metrics, f"{p.tag}/sequences": float(n)}
    settings = settings_of(p, n, len(data), str(device))
    title = f"{p.split}: {n} sequences, {cfg.eval.n_past} in / {cfg.eval.n_future} predicted, epoch {p.epoch}"
    files = write_outputs(ev, report_data(ev, settings), output_paths(p.out_dir, p.tag), title)
    outcome = Outcome(tag=p.tag, metrics=ev.metrics, sequences=n, samples=cfg.eval.samples, files=files)
    if target is not None:
        try:
            log_to_run(target, metrics, p.epoch, files)
        except Exception as exc:  # noqa: BLE001 - a store failing now must not hide the scores on disk
            outcome.log_error = f"logging to MLflow run {target.run_id} failed: {_first_line(exc)}"
    return outcome


__all__ = ["Plan", "Outcome", "plan", "run", "eval_config", "result_tag", "tracking_target"]
