"""Config: base.yaml = the dataclass defaults, experiment files load, overrides parse, bad input fails in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from helpers import BAD_OVERRIDES

from cvae import config as config_mod
from cvae.config import SECTIONS, Config, ConfigError, RunCfg

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


# helpers


def _one_line_naming(exc: ConfigError, key: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip(), msg
    assert key in msg, msg
    return msg


# base.yaml and the experiment files


def test_base_yaml_is_exactly_the_defaults() -> None:
    cfg = config_mod.load(EXPERIMENTS / "base.yaml")
    assert cfg == dataclasses.replace(Config(), run=RunCfg(name="base"))


def test_base_yaml_lists_every_field_and_nothing_else() -> None:
    data = yaml.safe_load((EXPERIMENTS / "base.yaml").read_text())
    assert set(data) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        assert set(data[section]) == {f.name for f in dataclasses.fields(cls)}, section


def test_base_yaml_values_are_the_dataclass_defaults_with_their_types() -> None:
    data = yaml.safe_load((EXPERIMENTS / "base.yaml").read_text())
    defaults = Config().to_dict()
    for section, body in data.items():
        for key, value in body.items():
            want = defaults[section][key]
            assert value == want and type(value) is type(want), f"{section}.{key}: {value!r} vs {want!r}"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_file_loads(path: Path) -> None:
    cfg = config_mod.load(path)
    assert cfg.run.name == path.stem


def test_demo_and_lab_values() -> None:
    demo = config_mod.load(EXPERIMENTS / "demo.yaml")
    assert (demo.model.arch, demo.model.width, demo.kl.beta) == ("dcgan", 0.25, 1e-4)
    lab = config_mod.load(EXPERIMENTS / "lab.yaml")
    assert (lab.model.arch, lab.model.width, lab.model.g_dim, lab.model.z_dim, lab.model.rnn_size) == (
        "vgg",
        1.0,
        128,
        64,
        256,
    )
    assert (lab.train.lr, lab.train.batch_size, lab.train.niter, lab.train.epoch_size) == (0.002, 12, 300, 600)
    assert (lab.tf.start_decay_epoch, lab.kl.mode, lab.kl.cycles, lab.kl.ratio) == (75, "cyclical", 4, 1.0)
    assert lab.total_iters == 300 * 600


# overrides


@pytest.mark.parametrize(
    "item, key, want",
    [
        ("train.batch_size=8", "train.batch_size", 8),
        ("train.lr=0.01", "train.lr", 0.01),
        ("train.lr=1", "train.lr", 1.0),
        ("kl.beta=1e-4", "kl.beta", 1e-4),
        ("kl.beta=1.5E-3", "kl.beta", 1.5e-3),
        ("run.amp=false", "run.amp", False),
        ("run.amp=true", "run.amp", True),
        ("model.learned_prior=true", "model.learned_prior", True),
        ("run.name=my-exp", "run.name", "my-exp"),
        ("run.name=123", "run.name", "123"),
        ("data.root=/data/bair processed", "data.root", "/data/bair processed"),
        ("kl.mode=cyclical", "kl.mode", "cyclical"),
        ("run.device=cpu", "run.device", "cpu"),
    ],
)
def test_override_types(item: str, key: str, want: object) -> None:
    value = config_mod.load(None, [item]).flat()[key]
    assert value == want and type(value) is type(want)


def test_overrides_apply_on_top_of_the_experiment_file() -> None:
    cfg = config_mod.load(EXPERIMENTS / "demo.yaml", ["train.lr=0.001", "kl.mode=cyclical", "run.name=x"])
    assert (cfg.train.lr, cfg.kl.mode, cfg.run.name, cfg.model.arch) == (0.001, "cyclical", "x", "dcgan")


def test_dict_overrides_take_typed_values_and_strings() -> None:
    cfg = config_mod.load(None, {"train.niter": 3, "kl.beta": "1e-4", "run.amp": False})
    assert (cfg.train.niter, cfg.kl.beta, cfg.run.amp) == (3, 1e-4, False)


def test_name_defaults() -> None:
    assert config_mod.load().run.name == "default"
    assert config_mod.load(EXPERIMENTS / "demo.yaml", ["run.name=mine"]).run.name == "mine"


def test_round_trip_through_to_dict_and_yaml(tiny_cfg: Config) -> None:
    assert config_mod.from_dict(tiny_cfg.to_dict()) == tiny_cfg
    assert config_mod.from_dict(yaml.safe_load(config_mod.dump(tiny_cfg))) == tiny_cfg


def test_config_is_frozen(tiny_cfg: Config) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_cfg.train.lr = 1.0  # type: ignore[misc]


def test_diff_from_defaults() -> None:
    cfg = config_mod.load(None, ["train.lr=0.001", "run.name=x", "run.out_dir=/tmp/y"])
    assert config_mod.diff_from_defaults(cfg) == {"train.lr": 0.001}


# bad input: ConfigError, one line, naming the key


@pytest.mark.parametrize("overrides, key", BAD_OVERRIDES)
def test_bad_override_raises_one_line_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(None, overrides)
    _one_line_naming(info.value, key)


def test_missing_experiment_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(tmp_path / "nope.yaml")
    _one_line_naming(info.value, "nope.yaml")


@pytest.mark.parametrize(
    "text, key",
    [
        pytest.param("train: [lr: 1\n", "bad.yaml", id="invalid-yaml"),
        pytest.param("train:\n  lr: 1\n\tbatch_size: 2\n", "bad.yaml", id="tab-indent"),
        pytest.param("- 1\n- 2\n", "bad.yaml", id="not-a-mapping"),
        pytest.param("trian:\n  lr: 0.1\n", "trian", id="unknown-section"),
        pytest.param("train: 3\n", "train", id="section-not-a-mapping"),
        pytest.param("train:\n  lr: fast\n", "train.lr", id="wrong-type"),
        pytest.param("train:\n  niter: 0\n", "train.niter", id="out-of-range"),
        pytest.param("kl:\n  mode: sometimes\n", "kl.mode", id="bad-literal"),
    ],
)
def test_bad_experiment_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    _one_line_naming(info.value, key)


def test_values_in_a_yaml_file_are_checked_like_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("kl:\n  beta: 1e-4\ntrain:\n  niter: 4\nrun:\n  amp: false\n")
    cfg = config_mod.load(path)
    assert (cfg.kl.beta, cfg.train.niter, cfg.run.amp, cfg.run.name) == (1e-4, 4, False, "exp")
