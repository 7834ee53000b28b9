"""A split of a data set: frames and conditions as stored (uint8 frames, float32 conditions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    frames: np.ndarray
    cond: np.ndarray
    cond_mean: np.ndarray | None = None
    """data.cond_norm: the training split's per-dimension mean of the 7 condition values (already
    subtracted from `cond`), else None."""
    cond_std: np.ndarray | None = None
    """data.cond_norm: the training split's per-dimension standard deviation (`cond` is divided by it)."""

    def __len__(self) -> int:
        return self.frames.shape[0]
