"""The pure parts of the sweeps: shipped study specs, suggestions keyed by config path, samplers, pruners."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial

from sweeps.pruning import ConfigMedianPruner
from sweeps.space import grid_params, make_pruner, make_sampler, suggest, trial_params
from sweeps.spec import STUDIES_DIR, Dist, StudySpec, load_spec

SPACE = {
    "train.lr": Dist(type="float", low=1e-4, high=1e-2, log=True),
    "kl.ratio": Dist(type="float", low=0.25, high=1.0, step=0.25),
    "kl.cycles": Dist(type="int", low=1, high=4),
    "tf.start_decay_epoch": Dist(type="int", low=0, high=10, step=5),
    "model.g_dim": Dist(type="int", low=16, high=256, log=True),
    "kl.mode": Dist(type="categorical", choices=("monotonic", "cyclical")),
}
GRID = {"tf.start_decay_epoch": (50, 75), "kl.mode": ("cyclical", "monotonic"), "model.learned_prior": (False, True)}

# helpers


def _spec(**kw: object) -> StudySpec:
    return StudySpec(**{"name": "t", "experiment": "demo", "space": SPACE, **kw})  # type: ignore[arg-type]


def _first_params(sampler: optuna.samplers.BaseSampler, space: dict[str, Dist], n: int = 3) -> list[dict]:
    study = optuna.create_study(sampler=sampler)
    return [suggest(study.ask(), space) for _ in range(n)]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# shipped studies


@pytest.mark.parametrize("name", sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
def test_every_shipped_study_loads(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name and spec.trials > 0
    assert bool(spec.space) != bool(spec.grid)


def test_the_shipped_studies_are_the_documented_ones() -> None:
    assert {p.stem for p in STUDIES_DIR.glob("*.yaml")} >= {"demo", "lab_grid", "lab_tpe"}


def test_lab_grid_has_eight_points_and_runs_each_once_by_default() -> None:
    spec = load_spec("lab_grid")
    assert spec.sampler == "grid" and math.prod(len(v) for v in spec.grid.values()) == 8
    assert spec.trials == 8
    assert spec.base_config().model.width == 1.0  # the paper-size model


def test_trials_argument_overrides_the_spec() -> None:
    assert load_spec("demo", trials=3).trials == 3


# suggestions


def test_suggest_with_a_fixed_trial_returns_its_values_keyed_by_config_path() -> None:
    fixed = {
        "train.lr": 0.001,
        "kl.ratio": 0.5,
        "kl.cycles": 3,
        "tf.start_decay_epoch": 5,
        "model.g_dim": 64,
        "kl.mode": "cyclical",
    }
    assert suggest(FixedTrial(fixed), SPACE) == fixed


def test_suggested_values_stay_within_bounds_and_types() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        p = suggest(trial, SPACE)
        assert set(p) == set(SPACE)
        assert 1e-4 <= p["train.lr"] <= 1e-2 and isinstance(p["train.lr"], float)
        assert p["kl.ratio"] in (0.25, 0.5, 0.75, 1.0)
        assert p["kl.cycles"] in (1, 2, 3, 4) and isinstance(p["kl.cycles"], int)
        assert p["tf.start_decay_epoch"] in (0, 5, 10)
        assert 16 <= p["model.g_dim"] <= 256 and isinstance(p["model.g_dim"], int)
        assert p["kl.mode"] in ("monotonic", "cyclical")
        study.tell(trial, 0.0)


def test_suggest_records_log_step_and_int_distributions() -> None:
    trial = optuna.create_study().ask()
    suggest(trial, SPACE)
    d = trial.distributions
    assert d["train.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["kl.ratio"] == FloatDistribution(0.25, 1.0, step=0.25)
    assert d["kl.cycles"] == IntDistribution(1, 4)
    assert d["tf.start_decay_epoch"] == IntDistribution(0, 10, step=5)
    assert d["model.g_dim"] == IntDistribution(16, 256, log=True)
    assert d["kl.mode"] == CategoricalDistribution(("monotonic", "cyclical"))


def test_log_scale_samples_small_values_far_more_often_than_linear() -> None:
    space = {"train.lr": Dist(type="float", low=1e-5, high=1e-1, log=True)}
    values = [p["train.lr"] for p in _first_params(optuna.samplers.RandomSampler(seed=3), space, 200)]
    assert sum(v < 1e-3 for v in values) > 80  # about half on a log scale, 1 % on a linear one


def test_grid_params_and_trial_params_follow_the_sampler() -> None:
    point = {"tf.start_decay_epoch": 75, "kl.mode": "monotonic", "model.learned_prior": True}
    assert grid_params(FixedTrial(point), GRID) == point
    assert trial_params(FixedTrial(point), _spec(sampler="grid", space={}, grid=GRID)) == point
    fixed = {"kl.cycles": 2}
    assert trial_params(FixedTrial(fixed), _spec(space={"kl.cycles": SPACE["kl.cycles"]})) == fixed


# samplers and pruners


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.RandomSampler),
    ],
)
def test_make_sampler_type(kind: str, cls: type) -> None:
    # a grid's runs are queued with fixed parameters (sweeps.plan.enqueue_grid): its sampler never draws
    spec = _spec(sampler=kind, space={} if kind == "grid" else SPACE, grid=GRID if kind == "grid" else {})
    assert isinstance(make_sampler(spec, 0), cls)


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_each_worker_gets_its_own_seed(kind: str) -> None:
    spec = _spec(sampler=kind, sampler_seed=7)
    w0, w0_again, w1 = (_first_params(make_sampler(spec, i), SPACE) for i in (0, 0, 1))
    assert w0 == w0_again  # seeded: reproducible per worker
    assert w0 != w1  # parallel workers do not propose twins


def test_make_pruner() -> None:
    median = make_pruner(_spec(pruner="median", warmup_epochs=3, pruner_startup_trials=2), niter=10)
    assert isinstance(median, ConfigMedianPruner)
    assert median.warmup == 3 and median.n_startup == 2
    hyper = make_pruner(_spec(pruner="hyperband", warmup_epochs=2), niter=10)
    assert isinstance(hyper, optuna.pruners.HyperbandPruner)
    assert hyper._min_resource == 2 and hyper._max_resource == 10
    sha = make_pruner(_spec(pruner="successive_halving", warmup_epochs=1), niter=6)
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    assert sha._min_resource == 1 and sha._reduction_factor == 3
    assert isinstance(make_pruner(_spec(pruner="none"), niter=10), optuna.pruners.NopPruner)


def test_spec_paths_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("experiment: demo\ntrials: 2\nsampler: random\nspace:\n  kl.cycles: {type: int, low: 1, high: 3}\n")
    spec = load_spec(str(path))
    assert spec.name == "mine" and spec.sampler == "random" and spec.space["kl.cycles"] == Dist("int", 1.0, 3.0)


def test_the_demo_studies_are_sequential_with_a_stated_margin() -> None:
    demo, tpe = load_spec("demo"), load_spec("demo_tpe")
    assert demo.sequential and not demo.racing and demo.plan.looks == (3, 4, 5) and demo.plan.margin == 1.0
    assert tpe.racing and tpe.plan.looks == (3, 4, 5) and tpe.pruner == "none"  # no rung ranks like the end
    assert demo.plan.shape == 0.0  # O'Brien-Fleming, as make bench-decisions measured
    assert demo.identity()["seeds"] == {"looks": [3, 4, 5], "margin_db": 1.0}
    assert load_spec("lab_grid").identity()["seeds"] == load_spec("lab_grid").seeds  # fixed designs keep their identity


def test_bench_sweep_rungs_correlate_and_are_judged() -> None:
    from benchmarks.sweep import judge_rungs, rung_correlations

    runs = [({1: 3.0, 2: 1.0}, 1.0), ({1: 2.0, 2: 2.0}, 2.0), ({1: 1.0, 2: 3.0}, 3.0)]
    rungs = rung_correlations(runs)
    assert rungs == {1: {"spearman": -1.0, "runs": 3}, 2: {"spearman": 1.0, "runs": 3}}
    assert judge_rungs(rungs, {"type": "none"}, 2)[0]
    assert not judge_rungs(rungs, {"type": "median", "warmup_epochs": 1}, 3)[0]  # would decide at epoch 1
    assert judge_rungs(rungs, {"type": "median", "warmup_epochs": 2}, 3)[0]
