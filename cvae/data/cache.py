"""One cached split on disk: frames.npy (uint8), cond.npy (float32) and manifest.json, memory-mapped.

The arrays are streamed to disk with plain writes, one sequence at a time, so building a 43,000
sequence (16 GB) split keeps the process small: a memory map being written would count every
touched page in the process's resident memory. The manifest records the source and its fingerprint
(file sizes and mtimes), the counts, the format version, the skipped items and the training
statistics of the 7 condition values.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cvae.atomic import write_text

FORMAT = 2  # bump when the cache's content or layout changes: old caches are then rebuilt
MANIFEST = "manifest.json"
FRAMES = "frames.npy"
COND = "cond.npy"


class _NpyWriter:
    """An .npy file written item by item; its header gets the final count when closed."""

    def __init__(self, path: Path, dtype: np.dtype, item_shape: tuple[int, ...]):
        self.path, self.dtype, self.item_shape, self.count = path, np.dtype(dtype), item_shape, 0
        self.file: BinaryIO = open(path, "wb")
        self.header = self._header(0)
        self.file.write(self.header)

    def _header(self, n: int) -> bytes:
        """The .npy header for n items (numpy pads it to one length whatever n is)."""
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer,
            {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n, *self.item_shape)},
        )
        return buffer.getvalue()

    def append(self, item: np.ndarray) -> None:
        """Write one item of item_shape."""
        if item.shape != self.item_shape:
            raise ValueError(f"{self.path.name}: item of shape {item.shape}, expected {self.item_shape}")
        self.file.write(np.ascontiguousarray(item, self.dtype).data)
        self.count += 1

    def close(self) -> None:
        """Put the final count into the header and close the file."""
        header = self._header(self.count)
        if len(header) != len(self.header):  # numpy leaves room for 21 digits; never expected to differ
            raise RuntimeError(f"{self.path}: .npy header grew from {len(self.header)} to {len(header)} bytes")
        self.file.seek(0)
        self.file.write(header)
        self.file.close()


class _Moments:
    """Per-column mean and variance of many row blocks (Chan et al.'s parallel update, in float64)."""

    def __init__(self, columns: int):
        self.n, self.mean, self.m2 = 0, np.zeros(columns), np.zeros(columns)

    def add(self, rows: np.ndarray) -> None:
        """Fold in a (rows, columns) block."""
        rows = np.asarray(rows, np.float64)
        n_b = rows.shape[0]
        if n_b == 0:
            return
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def std(self) -> np.ndarray:
        """Population standard deviation; a constant column gets 1 so that dividing by it is harmless."""
        std = np.sqrt(self.m2 / max(self.n, 1))
        return np.where(std > 0, std, 1.0)


# public API


def write(
    folder: Path,
    sequences: Iterable[tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    source: dict[str, Any],
    skipped: Iterable[str] = (),
) -> dict[str, Any]:
    """Stream (frames (T,64,64,3) uint8, cond (T,7)) pairs into folder; returns the manifest written.

    `skipped` is read after `sequences` is exhausted, so a generator may fill it while it runs.
    """
    frames = _NpyWriter(folder / FRAMES, np.uint8, (seq_len, 64, 64, 3))
    cond = _NpyWriter(folder / COND, np.float32, (seq_len, 7))
    moments = _Moments(7)
    try:
        for f, c in sequences:
            frames.append(f)
            cond.append(c)
            moments.add(c)
    finally:
        frames.close()
        cond.close()
    manifest = {
        "format": FORMAT,
        "source": source,
        "sequences": frames.count,
        "seq_len": seq_len,
        "skipped": list(skipped),
        # the 7 condition values' statistics over every frame of this split (data.cond_norm uses train's)
        "cond_mean": moments.mean.tolist(),
        "cond_std": moments.std().tolist(),
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp sibling + os.replace)."""

    write_text(path, json.dumps(data, indent=1) + "\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a cache folder, or None when absent, unreadable or of another format."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    return manifest


def open_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, cond) memory-mapped read-only: nothing is read until indexed."""
    return np.load(folder / FRAMES, mmap_mode="r"), np.load(folder / COND, mmap_mode="r")
