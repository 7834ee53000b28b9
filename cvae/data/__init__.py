"""Datasets as uint8 arrays on disk: every source is converted once into a cache, then memory-mapped.

A split is `Split(frames uint8 (N, T, 64, 64, 3), cond float32 (N, T, 7))`. Sources: the built-in
procedural `pushing` scenes, the course's PNG+CSV layout (`bair`) and the original TFRecords (`tfrecord`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from cvae.config import DataCfg
from cvae.data.errors import DataError

SPLITS = ("train", "validate", "test")
CACHE_VERSION = 1  # bump when a generator or reader changes what it produces


@dataclass(frozen=True)
class Split:
    frames: np.ndarray
    cond: np.ndarray

    def __len__(self) -> int:
        return self.frames.shape[0]


# helpers


def _split_seed(seed: int, split: str) -> list[int]:
    """Disjoint random streams per split (SeedSequence entropy), stable across runs."""
    return [seed, SPLITS.index(split), 7919]


def _n_for(cfg: DataCfg, split: str) -> int:
    return {"train": cfg.n_train, "validate": cfg.n_val, "test": cfg.n_test}[split]


def cache_key(cfg: DataCfg, split: str) -> str:
    """Folder name that changes whenever the cached content would."""
    if cfg.name == "pushing":
        from cvae.data import pushing

        return f"pushing-v{CACHE_VERSION}.{pushing.VERSION}-{split}-n{_n_for(cfg, split)}-s{cfg.seed}-T{cfg.seq_len}"
    root = str(Path(cfg.root).resolve())
    digest = hashlib.sha1(root.encode()).hexdigest()[:10]
    return f"{cfg.name}-v{CACHE_VERSION}-{split}-{digest}-T{cfg.seq_len}"


def _source(cfg: DataCfg, split: str) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """(count, iterator of (frames (T,64,64,3) uint8, cond (T,7) float32)) for a file-backed split."""
    if cfg.name == "bair":
        from cvae.data import course

        paths = course.list_sequences(cfg.root, split)
        return len(paths), (course.read_sequence(p, cfg.seq_len) for p in paths)
    from cvae.data import tfrecords

    files = tfrecords.list_files(cfg.root, split)
    return tfrecords.count_sequences(files), tfrecords.iter_sequences(files, cfg.seq_len)


def _build(cfg: DataCfg, split: str, tmp: Path) -> None:
    """Write frames.npy and cond.npy for one split into `tmp`."""
    if cfg.name == "pushing":
        from cvae.data import pushing

        frames, cond = pushing.generate(_n_for(cfg, split), _split_seed(cfg.seed, split), seq_len=cfg.seq_len)
        np.save(tmp / "frames.npy", frames)
        np.save(tmp / "cond.npy", cond)
        return
    n, seqs = _source(cfg, split)
    frames = np.lib.format.open_memmap(tmp / "frames.npy", "w+", np.uint8, (n, cfg.seq_len, 64, 64, 3))
    cond = np.lib.format.open_memmap(tmp / "cond.npy", "w+", np.float32, (n, cfg.seq_len, 7))
    for i, (f, c) in enumerate(tqdm(seqs, total=n, desc=f"caching {cfg.name}/{split}", disable=None)):
        frames[i], cond[i] = f, c
    frames.flush()
    cond.flush()
    del frames, cond


def load_split(cfg: DataCfg, split: str) -> Split:
    """Memory-mapped split, building the cache on first use (atomically: temp folder + rename)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    folder = Path(cfg.cache_dir) / cache_key(cfg, split)
    if not (folder / "cond.npy").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp"
        tmp.mkdir()
        try:
            _build(cfg, split, tmp)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not (folder / "cond.npy").is_file():  # not a concurrent builder that won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    frames = np.load(folder / "frames.npy", mmap_mode="r")
    cond = np.load(folder / "cond.npy")
    if frames.shape[0] == 0:
        raise DataError(f"{cfg.name} data: split {split!r} is empty")
    return Split(frames=frames, cond=cond)


def to_tensors(split: Split, idx: np.ndarray, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences `idx`, first n_frames: x (B, T, 3, 64, 64) float in [0, 1], cond (B, T, 7)."""
    order = np.sort(idx)  # memmaps read faster in file order; batches are unordered sets anyway
    frames = torch.from_numpy(np.ascontiguousarray(split.frames[order, :n_frames]))
    x = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)
    cond = torch.from_numpy(np.ascontiguousarray(split.cond[order, :n_frames]))
    return x, cond


__all__ = ["Split", "DataError", "SPLITS", "load_split", "to_tensors", "cache_key"]
