"""Datasets as uint8 arrays on disk: every source is converted once into a cache, then memory-mapped.

A split is `Split(frames uint8 (N, T, 64, 64, 3), cond float32 (N, T, 7))`. Sources: the built-in
procedural `pushing` scenes, the course's PNG+CSV layout (`bair`) and the original TFRecords (`tfrecord`).
A cache folder (cvae/data/cache.py) holds a manifest with the source's fingerprint: when the source's
files change, the next load rebuilds it (one line on stderr says why); when the source is gone, the
cache is used as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cvae.config import DataCfg
from cvae.data import cache
from cvae.data.errors import DamagedData, DataError
from cvae.data.split import Split

if TYPE_CHECKING:  # torch is imported where tensors are made: the data commands start without it
    import torch

SPLITS = ("train", "validate", "test")
CACHE_VERSION = cache.FORMAT

log = logging.getLogger(__name__)


# helpers


def _split_seed(seed: int, split: str) -> list[int]:
    """Disjoint random streams per split (SeedSequence entropy), stable across runs."""
    return [seed, SPLITS.index(split), 7919]


def _n_for(cfg: DataCfg, split: str) -> int:
    return {"train": cfg.n_train, "validate": cfg.n_val, "test": cfg.n_test}[split]


def cache_key(cfg: DataCfg, split: str) -> str:
    """Folder name that changes whenever the cached content would."""
    if cfg.name == "pushing":
        # deferred: a source's reader loads only when that source is read
        from cvae.data import pushing

        return f"pushing-v{CACHE_VERSION}.{pushing.VERSION}-{split}-n{_n_for(cfg, split)}-s{cfg.seed}-T{cfg.seq_len}"
    root = str(Path(cfg.root).resolve())
    digest = hashlib.sha1(root.encode()).hexdigest()[:10]
    return f"{cfg.name}-v{CACHE_VERSION}-{split}-{digest}-T{cfg.seq_len}"


def _source(cfg: DataCfg, split: str) -> tuple[dict[str, Any], list[Path]]:
    """(the manifest's description of the source, the units to read) for one split."""
    if cfg.name == "pushing":
        # deferred: a source's reader loads only when that source is read
        from cvae.data import pushing

        return {"kind": "pushing", "version": pushing.VERSION, "seed": cfg.seed, "n": _n_for(cfg, split)}, []
    # deferred: a source's reader loads only when that source is read
    from cvae.data import sources

    units = sources.units(cfg.name, cfg.root, split)
    return {
        "kind": cfg.name,
        "root": str(Path(cfg.root).resolve()),
        "split": split,
        "fingerprint": sources.fingerprint(cfg.name, cfg.root, units),
    }, units


def _read(
    cfg: DataCfg, split: str, units: list[Path], skip_bad: bool, skipped: list[str]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split's sequences in order; damage raises, or with skip_bad is appended to `skipped`."""
    if cfg.name == "pushing":
        # deferred: a source's reader loads only when that source is read
        from cvae.data import pushing

        frames, cond = pushing.generate(_n_for(cfg, split), _split_seed(cfg.seed, split), seq_len=cfg.seq_len)
        yield from zip(frames, cond)
        return
    # deferred: a source's reader loads only when that source is read
    from cvae.data import sources

    total = sum(sources.count(cfg.name, unit) for unit in units)
    with tqdm(total=total, desc=f"caching {cfg.name}/{split}", unit="seq", disable=None) as bar:
        for unit in units:
            for _, item in sources.read_unit(cfg.name, unit, cfg.seq_len):
                if isinstance(item, DamagedData):
                    if not skip_bad:
                        raise item
                    skipped.append(str(item))
                    continue
                yield item
                bar.update()


def _install(tmp: Path, folder: Path) -> None:
    """Rename a finished temp folder to folder, replacing an older one without a half-written moment."""
    try:
        os.rename(tmp, folder)
        return
    except OSError:
        if not folder.exists():
            raise
    # rename() cannot replace a non-empty folder: park the old one first, then drop it (a reader's
    # memory maps of the old files stay valid until it closes them)
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.rename(folder, old / folder.name)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def build_cache(cfg: DataCfg, split: str, skip_bad: bool = False) -> tuple[Path, dict[str, Any]]:
    """Convert one split into its cache folder (temp folder + rename); returns (folder, manifest)."""
    folder = Path(cfg.cache_dir) / cache_key(cfg, split)
    source, units = _source(cfg, split)  # fingerprinted before reading: a change while reading shows next time
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp"
    tmp.mkdir()
    try:
        skipped: list[str] = []
        manifest = cache.write(tmp, _read(cfg, split, units, skip_bad, skipped), cfg.seq_len, source, skipped)
        _install(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, manifest


def ensure_cache(cfg: DataCfg, split: str, skip_bad: bool = False) -> tuple[Path, dict[str, Any], bool]:
    """(folder, manifest, built now): the split's cache, built when missing or when its source changed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    folder = Path(cfg.cache_dir) / cache_key(cfg, split)
    manifest = cache.read_manifest(folder)
    if manifest is not None:
        if cfg.name == "pushing":
            return folder, manifest, False
        if not Path(cfg.root).exists():
            log.warning(f"cvae: {cfg.root} is gone; using its cache {folder} as built")
            return folder, manifest, False
        # deferred: a source's reader loads only when that source is read
        from cvae.data import sources

        source, _ = _source(cfg, split)
        if source == manifest["source"]:
            return folder, manifest, False
        change = sources.describe_change(manifest["source"].get("fingerprint", {}), source["fingerprint"])
        log.warning(f"cvae: {cfg.root} changed since its {split} cache was built ({change}); rebuilding {folder}")
    folder, manifest = build_cache(cfg, split, skip_bad)
    return folder, manifest, True


def load_split(cfg: DataCfg, split: str) -> Split:
    """Memory-mapped split, building (or rebuilding a stale) cache on first use."""
    folder, manifest, _ = ensure_cache(cfg, split)
    frames, cond = cache.open_arrays(folder)
    if frames.shape[0] == 0:
        raise DamagedData(f"{cfg.name} data: split {split!r} is empty (cache {folder})")
    if not cfg.cond_norm:
        return Split(frames=frames, cond=cond)
    # standardised here, once, with the training split's statistics: every reader of split.cond
    # (training batches, evaluation, previews) sees the same values; 36 MB for the full train split
    stats = manifest if split == "train" else ensure_cache(cfg, "train")[1]
    mean, std = np.asarray(stats["cond_mean"], np.float32), np.asarray(stats["cond_std"], np.float32)
    return Split(frames=frames, cond=(np.asarray(cond) - mean) / std, cond_mean=mean, cond_std=std)


def to_tensors(split: Split, idx: np.ndarray, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences `idx`, first n_frames: x (B, T, 3, 64, 64) float in [0, 1], cond (B, T, 7), on the CPU."""
    import torch  # deferred: the data commands run without torch

    from cvae.data.batches import gather, to_model_input  # deferred with torch, which it imports

    return to_model_input(*gather(split, idx, n_frames), torch.device("cpu"))


__all__ = [
    "Split",
    "DataError",
    "DamagedData",
    "SPLITS",
    "load_split",
    "to_tensors",
    "cache_key",
    "ensure_cache",
    "build_cache",
]
