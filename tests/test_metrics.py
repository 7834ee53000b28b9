"""PSNR/SSIM against skimage, on exact hand cases and batched vs per-frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cvae.metrics import MOVING_THRESHOLD, active_units, masked_psnr, moving_mask, psnr, shuffled_index, ssim

# helpers


def _sk_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """Course PSNR of one (C, H, W) frame: mean over channels of skimage's per-channel PSNR."""
    return float(np.mean([peak_signal_noise_ratio(gt[c], pred[c], data_range=1) for c in range(gt.shape[0])]))


def _sk_ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """Course SSIM of one (C, H, W) frame via skimage."""
    return float(
        structural_similarity(
            np.moveaxis(gt, 0, -1),
            np.moveaxis(pred, 0, -1),
            data_range=1,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            win_size=11,
        )
    )


def _reference(fn, gt: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """Apply a per-frame skimage reference over (B, T, C, H, W) -> (B, T)."""
    b, t = gt.shape[:2]
    g, p = gt.numpy(), pred.numpy()
    return np.array([[fn(g[i, j], p[i, j]) for j in range(t)] for i in range(b)])


def _smooth(b: int, t: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Structured images: blobs and gradients with a per-frame shift, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, h, dtype=torch.float64), torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij"
    )
    out = torch.empty(b, t, 3, h, w, dtype=torch.float64)
    for i in range(b):
        cx, cy, freq = torch.rand(3, generator=gen, dtype=torch.float64)
        for j in range(t):
            blob = torch.exp(-((xx - cx - 0.05 * j) ** 2 + (yy - cy) ** 2) / 0.02)
            wave = 0.5 + 0.5 * torch.sin(2 * torch.pi * (1 + 3 * freq) * (xx + yy) + j)
            out[i, j] = torch.stack([blob, wave, 0.5 * blob + 0.5 * yy])
    return out.clamp(0, 1)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 3, 3, 24, 20, generator=gen, dtype=torch.float64)
    pred = (gt + 0.1 * torch.randn(gt.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return gt, pred


# PSNR


def test_psnr_matches_skimage_random(pair):
    gt, pred = pair
    np.testing.assert_allclose(psnr(pred, gt).numpy(), _reference(_sk_psnr, gt, pred), atol=1e-4)


def test_psnr_is_mean_of_channel_psnrs_not_psnr_of_mean_mse():
    gt = torch.zeros(1, 1, 3, 4, 4, dtype=torch.float64)
    pred = gt.clone()
    pred[:, :, 0] += 0.1  # channel mse 1e-2 -> 20 dB
    pred[:, :, 1] += 0.01  # 1e-4 -> 40 dB
    pred[:, :, 2] += 0.001  # 1e-6 -> 60 dB
    assert psnr(pred, gt).item() == pytest.approx(40.0, abs=1e-6)


@pytest.mark.parametrize("err, expected", [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * np.log10(4))])
def test_psnr_uniform_error(err, expected):
    gt = torch.full((2, 3, 3, 8, 8), 0.25, dtype=torch.float64)
    out = psnr(gt + err, gt)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.full((2, 3), expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_psnr_identical_is_100db_not_inf():
    x = torch.rand(2, 4, 3, 8, 8)
    out = psnr(x, x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((2, 4), 100.0))


def test_psnr_low_precision_inputs_are_upcast():
    gt = torch.full((1, 2, 3, 8, 8), 0.25)
    out = psnr((gt + 0.125).half(), gt.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((1, 2), -10 * np.log10(0.125**2), dtype=torch.float32))


# SSIM


def test_ssim_matches_skimage_random(pair):
    gt, pred = pair
    np.testing.assert_allclose(ssim(pred, gt).numpy(), _reference(_sk_ssim, gt, pred), atol=1e-5)


def test_ssim_matches_skimage_structured():
    gt = _smooth(3, 4, seed=0)
    pred = _smooth(3, 4, seed=1) * 0.7 + gt * 0.3
    ours = ssim(pred, gt).numpy()
    np.testing.assert_allclose(ours, _reference(_sk_ssim, gt, pred), atol=1e-5)
    assert ours.std() > 0.01  # the cases differ, so a constant answer would fail


def test_ssim_float32_close_to_skimage(pair):
    gt, pred = pair
    np.testing.assert_allclose(ssim(pred.float(), gt.float()).numpy(), _reference(_sk_ssim, gt, pred), atol=1e-5)


def test_ssim_identical_is_one():
    x = _smooth(2, 3)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 3, dtype=torch.float64))


def test_ssim_too_small_raises():
    x = torch.rand(1, 1, 3, 10, 10)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, x)


# shapes and batching


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_batch_equals_per_frame_calls(fn, pair):
    gt, pred = pair
    batched = fn(pred, gt)
    assert batched.shape == gt.shape[:2]
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            single = fn(pred[i : i + 1, j : j + 1], gt[i : i + 1, j : j + 1])
            assert single.shape == (1, 1)
            torch.testing.assert_close(single[0, 0], batched[i, j])


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_four_dim_input_gives_per_image_scores(fn, pair):
    gt, pred = pair
    out = fn(pred[:, 0], gt[:, 0])
    assert out.shape == (gt.shape[0],)
    torch.testing.assert_close(out, fn(pred, gt)[:, 0])


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="shapes differ"):
        fn(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 3, 3, 16, 16))


# diagnostics


def test_moving_mask_marks_pixels_that_differ_from_the_last_input_frame() -> None:
    last = torch.zeros(1, 1, 3, 2, 2, dtype=torch.float64)
    target = torch.zeros(1, 2, 3, 2, 2, dtype=torch.float64)
    target[0, 0, 1, 0, 0] = 0.06  # one channel over the threshold is enough
    target[0, 0, 2, 1, 1] = MOVING_THRESHOLD  # exactly at the threshold: not moving
    target[0, 1, 0, 0, 1] = -0.2  # darker counts too
    mask = moving_mask(target, last)
    assert mask.shape == (1, 2, 1, 2, 2) and mask.dtype == torch.bool
    assert mask[0, 0, 0].tolist() == [[True, False], [False, False]]
    assert mask[0, 1, 0].tolist() == [[False, True], [False, False]]


def test_masked_psnr_scores_only_the_masked_pixels() -> None:
    target = torch.zeros(1, 2, 3, 2, 2, dtype=torch.float64)
    pred = target.clone()
    pred[0, 0, :, 0, 0] = 0.1  # masked pixel: mse 0.01 per channel -> 20 dB
    pred[0, 0, :, 1, 1] = 0.9  # unmasked pixel: ignored
    pred[0, 0, 0, 0, 1] = 0.1  # second masked pixel, first channel only: channel 0 mse (0.01 + 0.01) / 2
    mask = torch.zeros(1, 2, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0, :] = True  # frame 0: two pixels; frame 1: none
    got = masked_psnr(pred, target, mask)
    # channel 0: mse 0.01 -> 20 dB; channels 1, 2: (0.01 + 0) / 2 = 0.005 -> 23.0103 dB
    want = (20.0 + 2 * -10 * np.log10(0.005)) / 3
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(want, abs=1e-9)
    assert torch.isnan(got[0, 1])  # no moving pixel in frame 1


def test_masked_psnr_with_a_full_mask_is_psnr(pair) -> None:
    gt, pred = pair
    full = torch.ones(*gt.shape[:2], 1, *gt.shape[-2:], dtype=torch.bool)
    assert torch.allclose(masked_psnr(pred, gt, full), psnr(pred, gt), rtol=1e-12)


def test_shuffled_index_is_a_fixed_derangement() -> None:
    assert shuffled_index(4).tolist() == [1, 2, 3, 0]
    assert shuffled_index(1).tolist() == [0]
    idx = shuffled_index(7)
    assert sorted(idx.tolist()) == list(range(7)) and all(i != j for i, j in enumerate(idx.tolist()))


def test_active_units_counts_dimensions_whose_posterior_mean_varies() -> None:
    mu = torch.tensor([[0.0, 1.0, 5.0], [0.0, -1.0, 5.1], [0.0, 1.0, 4.9], [0.0, -1.0, 5.0]], dtype=torch.float64)
    var, n = active_units(mu)
    # dim 0 constant; dim 1 +-1 -> population variance 1; dim 2 values 5, 5.1, 4.9, 5 -> variance 0.005
    assert var.tolist() == pytest.approx([0.0, 1.0, 0.005])
    assert n == 1
