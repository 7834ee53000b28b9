"""Study specs (`sweeps/studies/*.yaml`): what to search, how, and for how long; validated once.

A spec names a base experiment plus overrides, the objective, the sampler and pruner, the number of
trials and seeds, and either a search space (config path -> distribution) or a grid.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvae import config as config_mod
from cvae.config import Config, ConfigError
from cvae.experiments import find_experiment, find_yaml
from sweeps.design import grid_points
from sweeps.sequential import Plan
from sweeps.spec_fields import Dist, SpecError, corners, parse_dist, parse_seeds, req

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
TOP_KEYS = {
    "name",
    "description",
    "experiment",
    "overrides",
    "objective",
    "trials",
    "seeds",
    "sampler",
    "pruner",
    "space",
    "grid",
    "heartbeat_seconds",
    "degenerate_below",
    "margin_db",
    "register",
}
RACE_MIN_SEEDS = 3
# The smallest difference that matters when a spec does not say: one grading bar of the course (>= 25 dB full
# marks, then one bar per dB). A spec states its own, with why, in `margin_db`.
MARGIN_DB = 1.0
# Settings that change where and how fast a study runs, not what it finds: free to differ between reruns.
IDENTITY_FREE = (
    "run.out_dir",
    "run.threads",
    "run.device",
    "run.prefetch",
    "train.progress",
    "tracking.uri",
    "tracking.system_metrics",
    "tracking.outage_wait_s",
    "data.cache_dir",
)
# A run whose val/cond_gain (true minus shuffled actions and positions, at its best epoch) is below this
# ignores its condition: it is tagged degenerate and the report ranks it apart.
DEGENERATE_BELOW_DB = 0.25


@dataclass(frozen=True)
class StudySpec:
    name: str
    experiment: str
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "val/psnr"
    direction: str = "maximize"
    trials: int = 10
    seeds: int = 1
    sampler: str = "tpe"
    sampler_seed: int = 1
    startup_trials: int = 4
    pruner: str = "median"
    warmup_epochs: int = 0
    pruner_startup_trials: int = 2
    space: dict[str, Dist] = field(default_factory=dict)
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    heartbeat_seconds: int = 10
    description: str = ""
    degenerate_below: float = DEGENERATE_BELOW_DB
    looks: tuple[int, ...] = ()
    """seeds per configuration at each look of a sequential design; () = `seeds` at one look"""
    margin_db: float = MARGIN_DB
    register: bool = True
    """put the winner in MLflow's Model Registry when the study finishes (`cvae register NAME` does it later)"""

    @property
    def sequential(self) -> bool:
        return len(self.looks) > 1

    @property
    def racing(self) -> bool:
        """A sampled study with a seed range: each new configuration races the leader on shared seeds."""
        return self.sequential and self.sampler != "grid"

    @property
    def max_seeds(self) -> int:
        return self.looks[-1] if self.looks else self.seeds

    @property
    def plan(self) -> Any:
        """The decision rule (sweeps.sequential.Plan): looks, margin."""

        return Plan(looks=self.looks or (self.seeds,), margin=self.margin_db, maximize=self.direction == "maximize")

    @property
    def design(self) -> list[dict[str, Any]]:
        """The grid's configurations in run order (empty for sampled studies); `trials` may cut it short."""

        return grid_points(self.grid)[: self.trials] if self.grid else []

    def base_config(self, extra: list[str] | None = None, params: dict[str, Any] | None = None) -> Config:
        """Experiment <- spec overrides <- command-line overrides <- trial params, validated."""
        values = dict(self.overrides)
        values.update(config_mod.parse_overrides(extra or []))
        values.update(params or {})
        values["run.name"] = self.name
        return config_mod.load(find_experiment(self.experiment), values)

    def identity(self, extra: list[str] | None = None) -> dict[str, Any]:
        """What the study optimises, in full: the resolved config every run starts from (the experiment file's
        content, the spec's overrides and the command line's), the space or grid, the objective and the seeds.
        A rerun whose identity differs would mix two different studies in one."""
        cfg = self.base_config(extra).flat()
        for key in IDENTITY_FREE:
            cfg.pop(key, None)
        return {
            "config": cfg,
            "space": {k: {f: v for f, v in vars(d).items()} for k, d in self.space.items()},
            "grid": {k: list(v) for k, v in self.grid.items()},
            "objective": [self.metric, self.direction],
            # a sequential design's margin decides which runs exist; a fixed one's only what the report says
            "seeds": {"looks": list(self.looks), "margin_db": self.margin_db} if self.sequential else self.seeds,
        }

    def fingerprint(self, extra: list[str] | None = None) -> str:
        """A short hash of identity()."""
        blob = json.dumps(self.identity(extra), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# helpers


def _check_paths(spec: StudySpec, extra: list[str] | None) -> None:
    """Every searched path exists in the config and every bound/choice gives a valid config."""
    try:
        spec.base_config(extra)
    except SpecError:
        raise
    except ConfigError as e:
        raise SpecError(f"study {spec.name}: base config: {e}") from None
    defaults = Config().flat()
    known = set(defaults)
    dims = {k: corners(d) for k, d in spec.space.items()} | {k: list(v) for k, v in spec.grid.items()}
    for path, values in dims.items():
        where = "grid" if path in spec.grid else "space"
        req(path in known, f"{where}.{path}: unknown config path")
        # bounds alone would validate (1.0 -> 1) while a sampled 2.5 fails mid-sweep
        req(
            where == "grid" or spec.space[path].type != "float" or type(defaults[path]) is not int,
            f"space.{path}: an integer setting; use type: int",
        )
        for v in values:
            try:
                spec.base_config(extra, {path: v})
            except ConfigError as e:
                raise SpecError(f"{where}.{path}: value {v!r} gives an invalid config ({e})") from None


def stored_spec(name: str, storage: str | None = None) -> Path | None:
    """The spec file a study of this name in the storage was started from (`cvae sweep my_study.yaml` records it):
    --storage, else $OPTUNA_STORAGE, else runs/optuna.db here. None when there is no such study or file."""
    import optuna

    url = storage or os.environ.get("OPTUNA_STORAGE", "")
    if not url:
        db = Path("runs") / "optuna.db"
        if not db.is_file():
            return None
        url = f"sqlite:///{db.resolve()}"
    elif url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    # deferred: Optuna's storages load only to look a study up
    from sweeps.backends import journal_path, open_url

    if (journal := journal_path(url)) is not None and not journal.is_file():
        return None
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        path = optuna.load_study(study_name=name, storage=open_url(url)).user_attrs.get("spec_path")
    except Exception:  # noqa: BLE001 - no such study, or a storage that does not answer: not found either way
        return None
    return Path(path) if path and Path(path).is_file() else None


def find_spec(name: str, storage: str | None = None) -> Path:
    """'demo', 'demo.yaml', a path, or the name of a study in the storage -> the spec file (cwd first, then
    sweeps/studies/, then the file the stored study was started from)."""
    path = find_yaml(name, [STUDIES_DIR]) or stored_spec(name, storage)
    if path is None:
        known = ", ".join(sorted(f.stem for f in STUDIES_DIR.glob("*.yaml")))
        raise SpecError(f"study not found: {name} (shipped: {known}; nor a study of that name in the storage)")
    return path


def load_spec(
    name: str, extra: list[str] | None = None, trials: int | None = None, storage: str | None = None
) -> StudySpec:
    """Read, parse and validate a study spec; `extra` are command-line config overrides."""
    path = find_spec(name, storage)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise SpecError(f"{path}: not valid YAML") from None
    req(isinstance(raw, dict), f"{path}: expected a mapping")
    unknown = set(raw) - TOP_KEYS
    req(not unknown, f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    req(isinstance(raw.get("experiment"), str), f"{path}: experiment: expected the base experiment's name")
    overrides = raw.get("overrides") or {}
    req(isinstance(overrides, dict), "overrides: expected a mapping of section.key: value")

    objective = raw.get("objective") or {}
    req(isinstance(objective, dict), "objective: expected {metric: val/psnr, direction: maximize}")
    metric = objective.get("metric", "val/psnr")
    req(metric in ("val/psnr", "val/ssim", "val/psnr_best"), f"objective.metric: {metric!r} is not a validation metric")
    direction = objective.get("direction", "maximize")
    req(direction in ("maximize", "minimize"), f"objective.direction: {direction!r} is not maximize or minimize")

    sampler = raw.get("sampler") or {}
    sampler = {"type": sampler} if isinstance(sampler, str) else sampler
    req(isinstance(sampler, dict), "sampler: expected a mapping like {type: tpe, seed: 1}")
    s_type = sampler.get("type", "tpe")
    req(s_type in SAMPLERS, f"sampler.type: {s_type!r} is not one of {', '.join(SAMPLERS)}")
    pruner = raw.get("pruner") or {}
    pruner = {"type": pruner} if isinstance(pruner, str) else pruner
    req(isinstance(pruner, dict), "pruner: expected a mapping like {type: median, warmup_epochs: 5}")
    p_type = pruner.get("type", "none")
    req(p_type in PRUNERS, f"pruner.type: {p_type!r} is not one of {', '.join(PRUNERS)}")

    space_raw = raw.get("space") or {}
    grid_raw = raw.get("grid") or {}
    req(isinstance(space_raw, dict) and isinstance(grid_raw, dict), "space/grid: expected mappings")
    if s_type == "grid":
        req(bool(grid_raw) and not space_raw, "sampler grid needs a `grid:` (path: [values]) and no `space:`")
        for k, v in grid_raw.items():
            req(isinstance(v, list) and len(v) > 0, f"grid.{k}: expected a non-empty list of values")
    else:
        req(bool(space_raw) and not grid_raw, f"sampler {s_type} needs a `space:` and no `grid:`")
    space = {k: parse_dist(k, v) for k, v in space_raw.items()}
    grid = {k: tuple(v) for k, v in grid_raw.items()}
    n_grid = 1
    for v in grid.values():
        n_grid *= len(v)

    n_trials = trials if trials is not None else raw.get("trials", n_grid if grid else 10)
    if grid:
        n_trials = min(n_trials, n_grid) if isinstance(n_trials, int) and not isinstance(n_trials, bool) else n_trials
    seeds, looks = parse_seeds(raw.get("seeds", 1))
    req(
        not looks or s_type != "grid" or p_type == "none",
        f"pruner.type: {p_type} with a sequential design: each "
        "look needs every run of its configurations (use pruner: none)",
    )
    # a race's first test at 2 seeds is a t on 1 degree of freedom, where the winner's curse is largest: the
    # selection simulation (docs/statistics.md) is run from 3
    req(
        not looks or s_type == "grid" or seeds >= RACE_MIN_SEEDS,
        f"seeds.min: a race (sampler {s_type} with a seed range) tests from {RACE_MIN_SEEDS} seeds a side, got {seeds}",
    )
    margin = raw.get("margin_db", MARGIN_DB)
    req(
        isinstance(margin, (int, float)) and not isinstance(margin, bool) and margin > 0,
        f"margin_db: expected a positive number of dB (the smallest difference that matters), got {margin!r}",
    )
    for key, v in (("trials", n_trials), ("heartbeat_seconds", raw.get("heartbeat_seconds", 10))):
        req(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{key}: expected a positive integer, got {v!r}")
    register = raw.get("register", True)
    req(isinstance(register, bool), f"register: expected true or false, got {register!r}")
    degenerate_below = raw.get("degenerate_below", DEGENERATE_BELOW_DB)
    req(
        isinstance(degenerate_below, (int, float)) and not isinstance(degenerate_below, bool),
        f"degenerate_below: expected a number of dB, got {degenerate_below!r}",
    )
    req(
        not (p_type in ("hyperband", "successive_halving") and (seeds > 1 or looks)),
        f"pruner.type: {p_type} judges single runs; with seeds > 1 use median (it judges configurations) or none",
    )
    ints = {
        "sampler.seed": sampler.get("seed", 1),
        "sampler.startup_trials": sampler.get("startup_trials", 4),
        "pruner.warmup_epochs": pruner.get("warmup_epochs", 0),
        "pruner.startup_trials": pruner.get("startup_trials", 2),
    }
    for key, v in ints.items():
        req(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{key}: expected an integer >= 0, got {v!r}")

    spec = StudySpec(
        name=str(raw.get("name", path.stem)),
        experiment=raw["experiment"],
        overrides=dict(overrides),
        metric=metric,
        direction=direction,
        trials=n_trials,
        seeds=seeds,
        sampler=s_type,
        sampler_seed=ints["sampler.seed"],
        startup_trials=ints["sampler.startup_trials"],
        pruner=p_type,
        warmup_epochs=ints["pruner.warmup_epochs"],
        pruner_startup_trials=ints["pruner.startup_trials"],
        space=space,
        grid=grid,
        heartbeat_seconds=raw.get("heartbeat_seconds", 10),
        description=str(raw.get("description", "")),
        degenerate_below=float(degenerate_below),
        looks=looks,
        margin_db=float(margin),
        register=register,
    )
    _check_paths(spec, extra)
    return spec
