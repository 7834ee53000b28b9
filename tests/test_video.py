"""GIF/PNG writers: sizes, frame counts, exact pixels for solid colours, uint8 conversion."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from cvae.video import save_gif, save_strip, sequences_gif, to_uint8

# Distinct solid colours, one per frame, so GIF palettes reproduce them exactly and pillow never
# merges two identical consecutive frames.
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float32)
T, H, W = 5, 8, 6


# helpers


def _solid(colours: np.ndarray, h: int = H, w: int = W) -> np.ndarray:
    """(T, 3) colours in [0, 1] -> float video (T, 3, H, W) with one solid colour per frame."""
    return np.broadcast_to(colours[:, :, None, None], (len(colours), 3, h, w)).copy()


def _u8(colours: np.ndarray) -> np.ndarray:
    return (colours * 255).astype(np.uint8)


# to_uint8


def test_to_uint8_rounds_half_up_and_clamps():
    x = np.array([-0.5, 0.0, 0.5, 1.0, 1.5, 0.1, 2.5 / 255, 1.49 / 255], dtype=np.float64)
    frames = np.broadcast_to(x[None, :, None], (3, len(x), 1))  # (3, H=len, W=1)
    out = to_uint8(frames)
    assert out.dtype == np.uint8 and out.shape == (len(x), 1, 3)
    np.testing.assert_array_equal(out[:, 0, 0], [0, 0, 128, 255, 255, 26, 3, 1])


def test_to_uint8_torch_and_layout():
    video = torch.rand(2, 4, 3, 5, 7, requires_grad=True)
    out = to_uint8(video)
    assert out.shape == (2, 4, 5, 7, 3)
    np.testing.assert_array_equal(out, to_uint8(video.detach().numpy()))
    np.testing.assert_array_equal(out[1, 2, 3, 4], to_uint8(video[1, 2, :, 3:4, 4:5].detach().numpy())[0, 0])


# save_gif


def test_gif_two_columns_roundtrip(tmp_path):
    gt = torch.from_numpy(_solid(COLOURS[:T]))
    pred = _u8(COLOURS[1 : T + 1])[:, None, None, :].repeat(H, 1).repeat(W, 2)  # uint8 (T, H, W, 3)
    path = save_gif(tmp_path / "sub" / "pair.gif", [gt, pred], fps=4, border=2)
    assert path == tmp_path / "sub" / "pair.gif"
    assert [p.name for p in path.parent.iterdir()] == ["pair.gif"]  # no temp file left behind

    frames = iio.imread(path, index=None)[..., :3]
    assert frames.shape == (T, H, 2 * W + 2, 3)
    np.testing.assert_array_equal(frames[:, :, :W], np.broadcast_to(_u8(COLOURS[:T])[:, None, None], (T, H, W, 3)))
    np.testing.assert_array_equal(frames[:, :, W : W + 2], 255)  # white border
    np.testing.assert_array_equal(frames[:, :, W + 2 :], pred)

    meta = iio.immeta(path)
    assert meta["loop"] == 0 and meta["duration"] == 250  # ms per frame at 4 fps


def test_gif_mismatched_frames_raises(tmp_path):
    with pytest.raises(ValueError, match="same number of frames"):
        save_gif(tmp_path / "x.gif", [_solid(COLOURS[:5]), _solid(COLOURS[:4])])
    assert not any(tmp_path.iterdir())


def test_gif_mismatched_size_raises(tmp_path):
    with pytest.raises(ValueError, match="same frame size"):
        save_gif(tmp_path / "x.gif", [_solid(COLOURS[:5]), _solid(COLOURS[:5], w=W + 1)])


# save_strip


def test_strip_shape_and_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    gt, pred = rng.random((T, 3, H, W)), rng.random((T, 3, H, W))
    path = save_strip(tmp_path / "strip.png", [gt, torch.from_numpy(pred)], border=2)
    img = iio.imread(path)
    assert img.shape == (2 * H + 2, T * W + (T - 1) * 2, 3)
    for r, video in enumerate([gt, pred]):
        for t in range(T):
            y, x = r * (H + 2), t * (W + 2)
            np.testing.assert_array_equal(img[y : y + H, x : x + W], to_uint8(video[t]))
    np.testing.assert_array_equal(img[H : H + 2], 255)


def test_strip_mismatched_frames_raises(tmp_path):
    with pytest.raises(ValueError, match="same number of frames"):
        save_strip(tmp_path / "x.png", [_solid(COLOURS[:3]), _solid(COLOURS[:2])])


# sequences_gif


def test_sequences_gif_grid(tmp_path):
    videos = [_solid(np.roll(COLOURS, k, axis=0)[:T]) for k in range(5)]
    path = sequences_gif(tmp_path / "preview.gif", videos, ncols=3, fps=2)
    frames = iio.imread(path, index=None)[..., :3]
    assert frames.shape == (T, 2 * H + 2, 3 * W + 2 * 2, 3)
    # Fifth video sits in row 1, column 1; the empty sixth cell is white.
    np.testing.assert_array_equal(
        frames[:, H + 2 :, W + 2 : 2 * W + 2],
        np.broadcast_to(_u8(np.roll(COLOURS, 4, axis=0)[:T])[:, None, None], (T, H, W, 3)),
    )
    np.testing.assert_array_equal(frames[:, H + 2 :, 2 * (W + 2) :], 255)
    assert iio.immeta(path)["duration"] == 500
