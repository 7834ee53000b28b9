"""GIFs and frame strips for predictions and dataset previews (imageio).

Videos come in as float (T, 3, H, W) in [0, 1] (torch or numpy) or uint8 (T, H, W, 3). Files are
written atomically (cvae.atomic: temp file in the same folder, then a rename) so an interrupted run never
leaves a half-written image behind.
"""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from cvae.atomic import atomic_path

WHITE = 255


# helpers


def _as_hwc(video: np.ndarray | Tensor) -> np.ndarray:
    """Any accepted video layout -> uint8 (T, H, W, 3)."""
    if isinstance(video, Tensor) and video.dtype == torch.uint8:
        video = video.cpu().numpy()
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"uint8 videos must be (T, H, W, 3), got shape {video.shape}")
        return video
    out = to_uint8(video)
    if out.ndim != 4:
        raise ValueError(f"videos must be (T, 3, H, W), got shape {tuple(video.shape)}")
    return out


def _as_videos(videos: list[np.ndarray | Tensor]) -> list[np.ndarray]:
    """Convert and check that all videos share T and frame size."""
    if not videos:
        raise ValueError("need at least one video")
    out = [_as_hwc(v) for v in videos]
    shapes = {v.shape for v in out}
    if len({s[0] for s in shapes}) > 1:
        raise ValueError(f"all videos must have the same number of frames, got {sorted({s[0] for s in shapes})}")
    if len(shapes) > 1:
        raise ValueError(f"all videos must have the same frame size, got {sorted({s[1:3] for s in shapes})}")
    return out


def _hcat(images: list[np.ndarray], border: int) -> np.ndarray:
    """Concatenate (..., H, W, 3) images along W with white gaps of `border` pixels."""
    gap = np.full((*images[0].shape[:-2], border, 3), WHITE, np.uint8)
    parts = [p for img in images for p in (gap, img)][1:]
    return np.concatenate(parts, axis=-2)


def _vcat(images: list[np.ndarray], border: int) -> np.ndarray:
    """Concatenate (..., H, W, 3) images along H with white gaps of `border` pixels."""
    *lead, _, w, _ = images[0].shape
    gap = np.full((*lead, border, w, 3), WHITE, np.uint8)
    parts = [p for img in images for p in (gap, img)][1:]
    return np.concatenate(parts, axis=-3)


def _write_atomic(path: str | Path, frames: np.ndarray, extension: str, **kwargs) -> Path:
    """Write with imageio to a temp file next to `path`, then rename it into place."""
    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, extension=extension, **kwargs)
    return path


def _write_gif(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    # The pillow plugin takes the per-frame duration in milliseconds; loop=0 repeats forever.
    # Pillow merges identical consecutive frames into one longer frame, so the timing is kept
    # but the frame count read back can be lower than T.
    return _write_atomic(path, frames, ".gif", duration=1000 / fps, loop=0)


# public API


def to_uint8(frames: Tensor | np.ndarray) -> np.ndarray:
    """(…, 3, H, W) float in [0,1] (torch or numpy) -> (…, H, W, 3) uint8."""
    if isinstance(frames, Tensor):
        frames = frames.detach().cpu().float().numpy()
    x = np.clip(np.asarray(frames, dtype=np.float64), 0.0, 1.0)
    # Round half up (0.5 -> 128): floor(x*255 + 0.5), so the mapping never depends on numpy's
    # round-half-to-even.
    x = np.floor(x * 255 + 0.5).astype(np.uint8)
    return np.moveaxis(x, -3, -1)


def save_gif(path: str | Path, columns: list[np.ndarray | Tensor], fps: int = 4, border: int = 2) -> Path:
    """Write a looping GIF with the videos side by side (e.g. ground truth | prediction)."""
    videos = _as_videos(columns)
    return _write_gif(path, _hcat(videos, border), fps)


def save_strip(path: str | Path, rows: list[np.ndarray | Tensor], border: int = 2) -> Path:
    """Write a PNG grid: one row per video (T frames side by side), e.g. ground truth over prediction."""
    videos = _as_videos(rows)
    lines = [_hcat(list(v), border) for v in videos]  # each (H, T*W + gaps, 3)
    return _write_atomic(path, _vcat(lines, border), ".png")


def sequences_gif(
    path: str | Path, videos: list[np.ndarray | Tensor], ncols: int = 4, fps: int = 4, border: int = 2
) -> Path:
    """Write a GIF of several sequences tiled in a grid of `ncols` columns (dataset previews)."""
    vids = _as_videos(videos)
    ncols = max(1, min(ncols, len(vids)))
    blank = np.full_like(vids[0], WHITE)  # fills the last row's empty cells
    vids += [blank] * (math.ceil(len(vids) / ncols) * ncols - len(vids))
    grid_rows = [_hcat(vids[i : i + ncols], border) for i in range(0, len(vids), ncols)]
    return _write_gif(path, _vcat(grid_rows, border), fps)
