"""train(cfg) in-process: resume determinism, checkpoints, divergence, evaluation the course's way."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cvae import config as config_mod, trainer as trainer_mod
from cvae.checkpoints import FORMAT_VERSION, load_checkpoint, load_model
from cvae.config import Config
from cvae.data import load_split, to_tensors
from cvae.evaluate import EVAL_SEED_OFFSET, Evaluator
from cvae.experiments import find_experiment
from cvae.metrics import psnr, ssim
from cvae.model import CVAE, StepLoss
from cvae.trainer import METRIC_COLUMNS, Diverged, train

# helpers


class Stop(Exception):
    """Raised by an on_epoch callback to interrupt a run."""


def _with(cfg: Config, **overrides: object) -> Config:
    """cfg with {'section.key': value} replaced (and validated again)."""
    flat = {**cfg.flat(), **{k.replace("__", "."): v for k, v in overrides.items()}}
    return config_mod.build(flat)


def _comparable(row: dict[str, float]) -> dict[str, float]:
    """Every metric of a history row except the wall-clock timings."""
    return {k: v for k, v in row.items() if not k.startswith("perf/")}


def _state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# a whole run


def test_train_returns_the_best_epoch_and_writes_one_row_per_epoch(tiny_cfg: Config, tmp_path: Path) -> None:
    seen: list[int] = []
    result = train(tiny_cfg, run_dir=tmp_path / "run", on_epoch=lambda ep, row: seen.append(ep))
    assert seen == [1, 2, 3] and result.epochs_run == 3
    psnrs = [r["val/psnr"] for r in result.history]
    assert result.best_psnr == max(psnrs) and result.history[result.best_epoch - 1]["val/psnr"] == result.best_psnr
    assert all(math.isfinite(v) for r in result.history for v in r.values())
    with (tmp_path / "run" / "metrics.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == METRIC_COLUMNS
        rows = list(reader)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val/psnr"]) == pytest.approx(psnrs[-1], rel=1e-12)
    assert result.summary().startswith(f"best val/psnr={result.best_psnr:.2f} dB")


def test_evaluation_every_n_epochs_and_always_after_the_last(tiny_cfg: Config, tmp_path: Path) -> None:
    cfg = _with(tiny_cfg, eval__every=2)
    result = train(cfg, run_dir=tmp_path / "run")
    assert ["val/psnr" in r for r in result.history] == [False, True, True]
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["val/psnr"] == "" and rows[1]["val/psnr"] != ""
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.gif")) == ["epoch_0002.gif", "epoch_0003.gif"]


@pytest.mark.parametrize(
    "plot_seconds, stop_after, drawn",
    [
        (3600.0, None, [1, 4]),  # the first evaluation and the last
        (0.0, None, [1, 2, 3, 4]),  # every evaluation once PLOT_SECONDS have passed
        (3600.0, 2, [1, 2]),  # a stopped run's plots show where it stopped
    ],
)
def test_plots_are_drawn_first_then_at_most_every_plot_seconds_and_at_the_end(
    tiny_cfg: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plot_seconds: float,
    stop_after: int | None,
    drawn: list[int],
) -> None:
    seen: list[int] = []
    draw = trainer_mod._draw_plots

    def recorded(run_dir: Path, history: list[dict[str, float]], epoch: int, ev: Any) -> list[Path]:
        seen.append(epoch)
        return draw(run_dir, history, epoch, ev)

    def stop(epoch: int, row: dict[str, float]) -> None:
        if epoch == stop_after:
            raise Stop

    monkeypatch.setattr(trainer_mod, "_draw_plots", recorded)
    monkeypatch.setattr(trainer_mod, "PLOT_SECONDS", plot_seconds)
    with pytest.raises(Stop) if stop_after else contextlib.nullcontext():
        train(_with(tiny_cfg, train__niter=4), run_dir=tmp_path / "run", on_epoch=stop)
    assert seen == drawn
    with (tmp_path / "run" / "per_step.csv").open() as f:  # the CSVs still get every evaluation
        assert sorted({int(r["epoch"]) for r in csv.DictReader(f)}) == list(range(1, (stop_after or 4) + 1))
    assert (tmp_path / "run" / "psnr.png").stat().st_size > 0 and (tmp_path / "run" / "diagnostics.png").is_file()


def test_schedules_reach_the_history(tiny_cfg: Config, tmp_path: Path) -> None:
    cfg = _with(tiny_cfg, kl__mode="none", kl__beta=1e-4, tf__start_decay_epoch=1)
    result = train(cfg, run_dir=tmp_path / "run")
    assert [r["sched/beta"] for r in result.history] == [1e-4] * 3
    assert [r["sched/tfr"] for r in result.history] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert [r["train/lr"] for r in result.history] == [cfg.train.lr] * 3


# checkpoints and resume


def test_checkpoints_hold_state_config_and_rng(tiny_cfg: Config, tmp_path: Path) -> None:
    result = train(tiny_cfg, run_dir=tmp_path / "run")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["format_version"] == FORMAT_VERSION
    assert last["epoch"] == 3
    assert last["config"] == tiny_cfg.to_dict()
    assert {"state", "param_groups"} <= set(last["optimizer"])
    assert set(last["rng"]) >= {"sampler", "torch"}
    assert isinstance(last["rng"]["sampler"], torch.Tensor) and isinstance(last["rng"]["torch"], torch.Tensor)
    assert len(last["history"]) == 3
    model = CVAE(tiny_cfg.model)
    model.load_state_dict(last["model"])  # state dicts, not pickled modules

    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == result.best_epoch == best["best_epoch"]
    assert best["best_psnr"] == result.best_psnr
    loaded, cfg = load_model(tmp_path / "run" / "best.pt")
    assert cfg == tiny_cfg and not loaded.training
    assert _state_equal(loaded.state_dict(), best["model"])
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert not list((tmp_path / "run").glob(".*tmp*"))  # atomic writes leave no temp files


def test_resume_is_bit_for_bit(tiny_cfg: Config, tmp_path: Path) -> None:
    full = train(tiny_cfg, run_dir=tmp_path / "full")

    def stop_after_first(epoch: int, row: dict[str, float]) -> None:
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_cfg, run_dir=tmp_path / "cut", on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train(tiny_cfg, run_dir=tmp_path / "cut", resume=True)

    assert resumed.epochs_run == 3 and len(resumed.history) == 3
    assert [_comparable(r) for r in resumed.history] == [_comparable(r) for r in full.history]
    assert (resumed.best_psnr, resumed.best_epoch) == (full.best_psnr, full.best_epoch)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert _state_equal(a["model"], b["model"])
    with (tmp_path / "cut" / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


# divergence


def _nan_from_call(monkeypatch: pytest.MonkeyPatch, first_bad_call: int) -> None:
    """Make CVAE.forward return a NaN mse from its `first_bad_call`-th training call (1-based) on."""
    forward = CVAE.forward
    calls = [0]

    def patched(self: CVAE, *args: object, **kwargs: object) -> StepLoss:
        terms = forward(self, *args, **kwargs)
        calls[0] += self.training  # evaluation's posterior statistics run in eval mode
        if calls[0] >= first_bad_call:
            return dataclasses.replace(terms, mse=terms.mse * float("nan"))
        return terms

    monkeypatch.setattr(CVAE, "forward", patched)


def test_nan_loss_raises_diverged_and_keeps_the_last_good_epoch(
    tiny_cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_from_call(monkeypatch, first_bad_call=tiny_cfg.train.epoch_size + 2)  # epoch 2, iteration 2
    with pytest.raises(Diverged, match=r"^diverged at epoch 2, iteration 2$"):
        train(tiny_cfg, run_dir=tmp_path / "run")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    with (tmp_path / "run" / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1]


# evaluation


class _CopyLast(CVAE):
    """A model whose prediction repeats the last conditioning frame."""

    def predict(self, x: torch.Tensor, cond: torch.Tensor, n_past: int, n_future: int) -> torch.Tensor:
        return torch.cat([x[:, :n_past], x[:, n_past - 1 : n_past].expand(-1, n_future, -1, -1, -1)], 1)


def _hand_copy_last_psnr(cfg: Config) -> float:
    e = cfg.eval
    frames = np.array(load_split(cfg.data, "validate").frames[: e.sequences, : e.n_past + e.n_future])
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0
    future = x[:, e.n_past :]
    copy = x[:, e.n_past - 1 : e.n_past].repeat(1, e.n_future, 1, 1, 1)
    return psnr(copy, future).mean().item()


def test_copy_last_psnr_is_computed_by_hand(tiny_cfg: Config, tmp_path: Path) -> None:
    want = _hand_copy_last_psnr(tiny_cfg)
    result = train(_with(tiny_cfg, train__niter=1), run_dir=tmp_path / "run")
    assert result.copy_last_psnr == pytest.approx(want, rel=1e-6)
    assert result.history[0]["val/psnr_copy_last"] == pytest.approx(want, rel=1e-6)


def test_a_copy_last_model_scores_the_copy_last_baseline(tiny_cfg: Config) -> None:
    split = load_split(tiny_cfg.data, "validate")
    ev = Evaluator(tiny_cfg, split, torch.device("cpu"))(_CopyLast(tiny_cfg.model))
    metrics, per_step, (gt, pred) = ev.metrics, ev.per_step, ev.gif
    assert metrics["val/psnr"] == pytest.approx(metrics["val/psnr_copy_last"], rel=1e-6)
    assert metrics["val/ssim"] == pytest.approx(metrics["val/ssim_copy_last"], rel=1e-6)
    assert metrics["val/psnr"] == pytest.approx(_hand_copy_last_psnr(tiny_cfg), rel=1e-6)
    e = tiny_cfg.eval
    assert list(per_step["frame"]) == list(range(e.n_past, e.n_past + e.n_future))
    assert gt.shape == pred.shape == (e.gif_sequences, e.n_past + e.n_future, 3, 64, 64)


def test_best_of_n_samples(tiny_cfg: Config) -> None:
    cfg = _with(tiny_cfg, eval__samples=3)
    split = load_split(cfg.data, "validate")
    torch.manual_seed(0)
    model = CVAE(cfg.model)
    one = Evaluator(tiny_cfg, split, torch.device("cpu"))(model).metrics
    three = Evaluator(cfg, split, torch.device("cpu"))(model).metrics
    assert "val/psnr_best" not in one
    # the first sample is the plain course metric, whatever the number of samples
    assert three["val/psnr"] == one["val/psnr"] and three["val/ssim"] == one["val/ssim"]
    assert three["val/ssim_best"] >= three["val/ssim"] - 1e-7  # chosen by SSIM: never worse in SSIM

    # replay the protocol by hand: per sequence, the sample with the best mean SSIM
    e = cfg.eval
    x, c = to_tensors(split, np.arange(e.sequences), e.n_past + e.n_future)
    model.eval()
    torch.manual_seed(cfg.run.seed + EVAL_SEED_OFFSET)
    preds = [model.predict(x, c, e.n_past, e.n_future).clamp(0, 1)[:, e.n_past :] for _ in range(e.samples)]
    ps = torch.stack([psnr(p, x[:, e.n_past :]) for p in preds])  # (S, N, n_future)
    ss = torch.stack([ssim(p, x[:, e.n_past :]) for p in preds])
    best = ss.mean(2).argmax(0)
    idx = torch.arange(ps.shape[1])
    assert three["val/psnr"] == pytest.approx(ps[0].mean().item(), rel=1e-6)
    assert three["val/psnr_best"] == pytest.approx(ps[best, idx].mean().item(), rel=1e-6)
    assert three["val/ssim_best"] == pytest.approx(ss[best, idx].mean().item(), rel=1e-6)


def test_evaluation_does_not_shift_the_training_rng(tiny_cfg: Config) -> None:
    split = load_split(tiny_cfg.data, "validate")
    torch.manual_seed(0)
    model = CVAE(tiny_cfg.model)
    before = torch.get_rng_state()
    Evaluator(tiny_cfg, split, torch.device("cpu"))(model)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training  # handed back in train mode


def test_config_dataclass_is_unchanged_by_training(tiny_cfg: Config, tmp_path: Path) -> None:
    before = dataclasses.asdict(tiny_cfg)
    train(_with(tiny_cfg, train__niter=1), run_dir=tmp_path / "run")
    assert dataclasses.asdict(tiny_cfg) == before


class _IgnoresCondition(CVAE):
    """A model that never looks at its actions and positions: every sequence gets the same zero condition."""

    def predict(self, x: torch.Tensor, cond: torch.Tensor, n_past: int, n_future: int) -> torch.Tensor:
        return super().predict(x, torch.zeros_like(cond), n_past, n_future)


class _ReadsCondition(_IgnoresCondition):
    """The same, plus a brightness shift set by the first action value: its condition moves its pixels."""

    def predict(self, x: torch.Tensor, cond: torch.Tensor, n_past: int, n_future: int) -> torch.Tensor:
        shift = 0.1 * torch.tanh(cond[..., :1, None, None])  # (B, T, 1, 1, 1)
        return (super().predict(x, cond, n_past, n_future) + shift).clamp(0, 1)


def test_diagnostics_of_copy_last_and_of_a_model_that_ignores_its_condition(tiny_cfg: Config) -> None:
    split = load_split(tiny_cfg.data, "validate")
    ev = Evaluator(tiny_cfg, split, torch.device("cpu"))
    copy = ev(_CopyLast(tiny_cfg.model)).metrics
    assert copy["val/psnr_moving"] == pytest.approx(copy["val/psnr_moving_copy_last"], rel=1e-6)
    assert copy["val/psnr_moving_copy_last"] < copy["val/psnr_copy_last"]  # moving pixels are the hard ones
    assert copy["val/cond_gain"] == 0.0

    torch.manual_seed(0)
    blind = _IgnoresCondition(tiny_cfg.model)
    res = ev(blind)
    assert res.metrics["val/cond_gain"] == 0.0  # same noise, so exactly zero
    assert np.all(res.per_step["cond_gain"] == 0.0)
    seeing = _ReadsCondition(tiny_cfg.model)
    seeing.load_state_dict(blind.state_dict())
    assert ev(seeing).metrics["val/cond_gain"] != 0.0  # the same weights, reading their condition


def test_kl_diagnostics_per_step_and_dimension(tiny_cfg: Config) -> None:
    split = load_split(tiny_cfg.data, "validate")
    torch.manual_seed(0)
    res = Evaluator(tiny_cfg, split, torch.device("cpu"))(CVAE(tiny_cfg.model))
    e, z = tiny_cfg.eval, tiny_cfg.model.z_dim
    assert res.kld_step.shape == (e.n_past + e.n_future - 1,) and res.kld_dim.shape == res.mu_var.shape == (z,)
    assert res.metrics["val/kld"] == pytest.approx(res.kld_step.mean(), rel=1e-9)
    assert res.kld_dim.sum() == pytest.approx(res.kld_step.mean(), rel=1e-6)
    assert res.metrics["val/active_dims"] == float((res.mu_var > 0.01).sum())


# speed options: the same training wherever they apply on the CPU, a clean fallback where they do not


def test_prefetching_changes_nothing(tiny_cfg: Config, tmp_path: Path) -> None:
    a = train(_with(tiny_cfg, run__prefetch=0), run_dir=tmp_path / "a")
    b = train(_with(tiny_cfg, run__prefetch=3), run_dir=tmp_path / "b")
    assert [_comparable(r) for r in a.history] == [_comparable(r) for r in b.history]


def test_cuda_only_options_fall_back_to_the_same_cpu_training(tiny_cfg: Config, tmp_path: Path) -> None:
    off = train(_with(tiny_cfg, run__cuda_graphs=False, run__amp=False), run_dir=tmp_path / "off")
    on = train(_with(tiny_cfg, run__cuda_graphs=True, run__amp=True), run_dir=tmp_path / "on")
    assert [_comparable(r) for r in off.history] == [_comparable(r) for r in on.history]


def test_channels_last_gives_the_same_losses_on_cpu(tiny_cfg: Config, tmp_path: Path) -> None:
    cfg = _with(tiny_cfg, train__niter=1)
    plain = train(_with(cfg, run__channels_last="off"), run_dir=tmp_path / "plain")
    last = train(_with(cfg, run__channels_last="on"), run_dir=tmp_path / "last")
    for key in ("train/loss", "train/mse", "val/psnr"):
        assert last.history[0][key] == pytest.approx(plain.history[0][key], rel=1e-4), key


def test_the_optimizer_keeps_its_own_flags_when_it_resumes_a_state_saved_elsewhere() -> None:
    """On a CPU, Adam runs fused; a state written by a CUDA-graph run (capturable, not fused) resumes here
    with this process's flags and the saved moments, and steps as Adam does."""
    from cvae.step import load_optimizer, make_optimizer

    cfg = config_mod.load(find_experiment("demo"), {"model.width": 0.125, "model.rnn_size": 8})
    torch.manual_seed(0)
    model = CVAE(cfg.model)
    opt = make_optimizer(model, 1e-3, 0.9, capturable=False)
    assert opt.param_groups[0]["fused"] is True
    other = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), foreach=False)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    other.step()
    saved = other.state_dict()
    saved["param_groups"][0].update(capturable=True, fused=None)  # as a CUDA-graph run writes it
    load_optimizer(opt, saved)
    group = opt.param_groups[0]
    assert group["fused"] is True and group["capturable"] is False
    p = next(model.parameters())
    assert torch.equal(opt.state[p]["exp_avg"], other.state[p]["exp_avg"])
    before = p.detach().clone()
    opt.step()  # step 2 of Adam with these moments: lr * m_hat / (sqrt(v_hat) + eps), grads all ones
    assert torch.allclose(before - p.detach(), torch.full_like(p, 1e-3), rtol=1e-4)
