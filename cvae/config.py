"""Typed experiment config: defaults <- experiment YAML <- `section.key=value` overrides, validated once.

The dataclass defaults below are `experiments/base.yaml`; an experiment file holds only the keys it
changes. Everything below `load()` trusts these values and never mutates them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user-facing config problem; the message is one line naming the key."""


@dataclass(frozen=True)
class RunCfg:
    name: str = ""
    """Experiment name (MLflow experiment, run folder); empty = the YAML file's stem."""
    seed: int = 1
    """Seeds data sampling, init, noise and teacher-forcing draws."""
    out_dir: str = "runs"
    """Root of run folders, the MLflow store and the Optuna store."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when present, else CPU."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    cuda_graphs: bool = True
    """Capture each teacher-forcing branch's training step in a CUDA graph and replay it (ignored on CPU)."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """Channels-last convolutions; auto = on (measured faster on CUDA and, side by side, on a CPU)."""
    prefetch: int = 3
    """Training batches read ahead by a background thread (0 = read in the loop)."""
    frames_per_call: int = -1
    """Most frames per batched encoder/decoder call; -1 = auto (all at once on CUDA, on a CPU about 8 MiB of
    the widest feature map: 8 frames of VGG64, 32 at width 0.25, 128 of the demo), 0 = all."""
    threads: int = 0
    """torch CPU threads; 0 = torch's default."""


@dataclass(frozen=True)
class DataCfg:
    name: Literal["pushing", "bair", "tfrecord"] = "pushing"
    """pushing = built-in procedural scenes; bair = course PNG+CSV layout; tfrecord = original BAIR."""
    root: str = ""
    """Data folder for bair/tfrecord."""
    cache_dir: str = ".cache/data"
    """uint8 array cache so a second run starts instantly."""
    seed: int = 0
    """pushing only: generator seed (fixed apart from run.seed so that runs share data)."""
    n_train: int = 1024
    """pushing only: sequences per split."""
    n_val: int = 256
    n_test: int = 256
    seq_len: int = 30
    """Frames per stored sequence."""
    cond_norm: bool = False
    """Standardise each of the 7 condition values with the training split's mean/std (off = the course's raw values)."""


@dataclass(frozen=True)
class ModelCfg:
    arch: Literal["vgg", "dcgan"] = "vgg"
    """Frame encoder/decoder: VGG64 or DCGAN64, both with skips."""
    width: float = 1.0
    """Channel multiplier for the encoder/decoder (1.0 = paper size)."""
    g_dim: int = 128
    """Frame embedding size."""
    z_dim: int = 64
    """Latent size."""
    rnn_size: int = 256
    """LSTM width of posterior, prior and predictor."""
    posterior_layers: int = 1
    prior_layers: int = 1
    predictor_layers: int = 2
    cond_dim: int = 7
    """4 action values + 3 end-effector positions."""
    learned_prior: bool = False
    """SVG-LP: KL(q || p_psi) instead of KL(q || N(0, I))."""
    last_frame_skip: bool = False
    """Skips follow the newest input frame instead of x[n_past-1]."""


@dataclass(frozen=True)
class TrainCfg:
    lr: float = 0.002
    beta1: float = 0.9
    batch_size: int = 12
    niter: int = 300
    """Epochs."""
    epoch_size: int = 600
    """Iterations per epoch."""
    n_past: int = 2
    n_future: int = 10
    grad_clip: float = 0.0
    """Max gradient norm; 0 = off."""
    progress: bool = True
    """tqdm bar per epoch (silent when stderr is not a terminal)."""


@dataclass(frozen=True)
class TfCfg:
    ratio: float = 1.0
    """Teacher-forcing ratio before decay."""
    start_decay_epoch: int = 0
    decay_step: float = 0.0
    """Drop per epoch once decaying; 0 = linear to lower_bound by the last epoch."""
    lower_bound: float = 0.0


@dataclass(frozen=True)
class KlCfg:
    mode: Literal["none", "monotonic", "cyclical"] = "monotonic"
    cycles: int = 3
    """cyclical only: number of periods over the whole run."""
    ratio: float = 0.5
    """Fraction of each period spent rising from 0 to 1."""
    beta: float = 1.0
    """none: the fixed weight; otherwise the annealed weight's maximum."""


@dataclass(frozen=True)
class EvalCfg:
    every: int = 5
    """Validate every N epochs (and always after the last)."""
    n_past: int = 2
    n_future: int = 10
    sequences: int = 256
    """Validation sequences scored (0 = the whole split)."""
    batch_size: int = 64
    samples: int = 1
    """>1: also report the best of N samples per sequence by SSIM (SVG protocol)."""
    gif_sequences: int = 4
    """Fixed validation sequences drawn into the GIF and strip."""


@dataclass(frozen=True)
class TrackingCfg:
    enabled: bool = True
    uri: str = ""
    """Empty = $MLFLOW_TRACKING_URI, else sqlite:///<out_dir>/mlflow.db."""
    experiment: str = ""
    """MLflow experiment; empty = run.name."""
    log_model: bool = False
    """Also log the best model with mlflow.pytorch."""
    system_metrics: bool = True
    """CPU/memory (GPU) metrics when psutil is installed."""
    outage_wait_s: float = 300.0
    """A tracking server that stops answering mid-run: logging is queued and replayed once it is back; a run that
    ends during the outage waits this long for it, then leaves the run to `cvae sweep repair`."""


@dataclass(frozen=True)
class Config:
    run: RunCfg = field(default_factory=RunCfg)
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    tf: TfCfg = field(default_factory=TfCfg)
    kl: KlCfg = field(default_factory=KlCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)

    @property
    def total_iters(self) -> int:
        """Training iterations over the whole run (the KL schedule's horizon)."""
        return self.train.niter * self.train.epoch_size

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (YAML-ready)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{'section.key': value} for every field."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


# helpers


def _field_types(section: str) -> dict[str, Any]:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check (and for CLI strings, parse) one value against its declared type."""
    if isinstance(value, str) and typ is not str and typing.get_origin(typ) is not Literal:
        value = yaml.safe_load(value) if value != "" else value
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {typ}")  # a programming error, not a user one


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError) and "tag:yaml.org,2002:" in str(e.problem or ""):
            tag = "!!" + str(e.problem).split("tag:yaml.org,2002:", 1)[1].rstrip("'")
            raise ConfigError(
                f"{path}{where}: the tag {tag} is refused (plain values only: a tag could run code)"
            ) from None
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _flatten_yaml(data: dict[str, Any], origin: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for k, v in body.items():
            flat[f"{section}.{k}"] = v
    return flat


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['train.lr=0.01', ...] -> {'train.lr': '0.01'}; values are parsed against the schema later."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        out[key.strip()] = value.strip()
    return out


def build(values: dict[str, Any], name: str = "") -> Config:
    """Config from {'section.key': value}; unknown keys, wrong types and bad ranges raise ConfigError."""
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in values.items():
        section, _, k = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"{key}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        types_ = _field_types(section)
        if k not in types_:
            raise ConfigError(f"{key}: unknown key (known in {section}: {', '.join(types_)})")
        sections[section][k] = _coerce(key, value, types_[k])
    if not sections["run"].get("name"):
        sections["run"]["name"] = name or "default"
    cfg = Config(**{s: SECTIONS[s](**kw) for s, kw in sections.items()})
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults <- experiment file <- overrides, validated once."""
    values: dict[str, Any] = {}
    name = ""
    if path is not None:
        p = Path(path)
        values.update(_flatten_yaml(_read_yaml(p), str(p)))
        name = p.stem
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides:
        values.update(parse_overrides(overrides))
    return build(values, name=name)


def from_dict(nested: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict() (checkpoints, config.yaml)."""
    return build(_flatten_yaml(nested, "saved config"))


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    t, d, e = cfg.train, cfg.data, cfg.eval
    for key in (
        "train.lr",
        "train.batch_size",
        "train.niter",
        "train.epoch_size",
        "train.n_future",
        "model.width",
        "model.g_dim",
        "model.z_dim",
        "model.rnn_size",
        "model.posterior_layers",
        "model.prior_layers",
        "model.predictor_layers",
        "model.cond_dim",
        "data.seq_len",
        "eval.every",
        "eval.n_past",
        "eval.n_future",
        "eval.batch_size",
        "eval.samples",
    ):
        section, _, k = key.partition(".")
        v = getattr(getattr(cfg, section), k)
        _require(v > 0, f"{key}: must be positive, got {v}")
    _require(t.n_past >= 1, f"train.n_past: must be at least 1, got {t.n_past}")
    _require(0.0 <= t.beta1 < 1.0, f"train.beta1: must be in [0, 1), got {t.beta1}")
    _require(t.grad_clip >= 0, f"train.grad_clip: must be >= 0, got {t.grad_clip}")
    _require(
        t.n_past + t.n_future <= d.seq_len,
        f"train.n_past + train.n_future = {t.n_past + t.n_future} exceeds data.seq_len = {d.seq_len}",
    )
    _require(
        e.n_past + e.n_future <= d.seq_len,
        f"eval.n_past + eval.n_future = {e.n_past + e.n_future} exceeds data.seq_len = {d.seq_len}",
    )
    _require(d.seq_len <= 30, f"data.seq_len: BAIR sequences have 30 frames, got {d.seq_len}")
    for key in ("tf.ratio", "tf.lower_bound"):
        v = getattr(cfg.tf, key.split(".")[1])
        _require(0.0 <= v <= 1.0, f"{key}: must be in [0, 1], got {v}")
    _require(
        cfg.tf.lower_bound <= cfg.tf.ratio, f"tf.lower_bound: {cfg.tf.lower_bound} is above tf.ratio {cfg.tf.ratio}"
    )
    _require(cfg.tf.start_decay_epoch >= 0, f"tf.start_decay_epoch: must be >= 0, got {cfg.tf.start_decay_epoch}")
    _require(cfg.tf.decay_step >= 0, f"tf.decay_step: must be >= 0, got {cfg.tf.decay_step}")
    _require(cfg.kl.cycles >= 1, f"kl.cycles: must be at least 1, got {cfg.kl.cycles}")
    _require(0.0 < cfg.kl.ratio <= 1.0, f"kl.ratio: must be in (0, 1], got {cfg.kl.ratio}")
    _require(cfg.kl.beta >= 0, f"kl.beta: must be >= 0, got {cfg.kl.beta}")
    for key in ("data.n_train", "data.n_val", "data.n_test"):
        v = getattr(d, key.split(".")[1])
        _require(v > 0, f"{key}: must be positive, got {v}")
    _require(e.sequences >= 0, f"eval.sequences: must be >= 0, got {e.sequences}")
    _require(e.gif_sequences >= 0, f"eval.gif_sequences: must be >= 0, got {e.gif_sequences}")
    _require(cfg.run.threads >= 0, f"run.threads: must be >= 0, got {cfg.run.threads}")
    _require(cfg.run.prefetch >= 0, f"run.prefetch: must be >= 0, got {cfg.run.prefetch}")
    _require(
        cfg.run.frames_per_call >= -1,
        f"run.frames_per_call: must be -1 (auto), 0 (all) or more, got {cfg.run.frames_per_call}",
    )
    _require(cfg.tracking.outage_wait_s >= 0, f"tracking.outage_wait_s: must be >= 0, got {cfg.tracking.outage_wait_s}")
    if d.name in ("bair", "tfrecord"):
        _require(bool(d.root), f"data.root: required for data.name={d.name}")


def dump(cfg: Config) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def diff_from_defaults(cfg: Config) -> dict[str, Any]:
    """{'section.key': value} for the settings that differ from base (run names, readable tags)."""
    base = Config().flat()
    skip = {"run.name", "run.out_dir", "tracking.uri", "tracking.experiment"}
    return {k: v for k, v in cfg.flat().items() if base[k] != v and k not in skip}
