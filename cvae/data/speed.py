"""`cvae data bench` (and `make bench`): sequences/s read from the source files and from the cache."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cvae.data import Split, cache, sources, to_tensors
from cvae.data.errors import DamagedData


def _first(kind: sources.Kind, units: list[Path], n: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split's first n sequences, read as the loader reads them; damage raises."""
    for unit in units:
        for _, item in sources.read_unit(kind, unit, seq_len):
            if isinstance(item, DamagedData):
                raise item
            yield item
            n -= 1
            if n == 0:
                return


def measure(
    root: str | Path,
    split: str = "train",
    sequences: int = 256,
    batch_size: int = 12,
    n_frames: int = 12,
    seq_len: int = 30,
    threads: int = 1,
    seed: int = 0,
    tmp_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Read `sequences` sequences from root's split, cache them in a temp folder, draw random batches
    from that cache with to_tensors as the trainer does; both speeds and the settings used.

    threads: torch threads while batching (one is fastest for these small copies; on a busy machine
    several threads spin-wait on each other and the figure drops tenfold).
    """
    import torch

    kind = sources.detect(root)
    units = sources.units(kind, root, split)
    folder = Path(tempfile.mkdtemp(prefix="cvae-bench-", dir=tmp_dir))
    try:
        reader = _first(kind, units, sequences, seq_len)
        read_s = 0.0

        def timed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            nonlocal read_s
            while True:
                start = time.perf_counter()
                item = next(reader, None)
                read_s += time.perf_counter() - start
                if item is None:
                    return
                yield item  # the cache write happens outside the timed span

        manifest = cache.write(folder, timed(), seq_len, {"kind": kind, "root": str(root), "bench": True})
        n = manifest["sequences"]
        frames, cond = cache.open_arrays(folder)
        split_ = Split(frames=frames, cond=cond)
        rng = np.random.default_rng(seed)
        draws = max(n, 20 * batch_size)  # enough batches for a steady figure on a small sample
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            to_tensors(split_, np.arange(min(n, batch_size)), n_frames)  # warm-up: torch's first-call costs
            start = time.perf_counter()
            for _ in range(-(-draws // batch_size)):
                to_tensors(split_, rng.integers(0, n, batch_size), n_frames)
            cache_s = time.perf_counter() - start
        finally:
            torch.set_num_threads(before)
        del frames, cond, split_
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "root": str(root),
        "source": kind,
        "split": split,
        "sequences": n,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "n_frames": n_frames,
        "threads": threads,
        "loader": "in-process to_tensors on the memory-mapped cache, as the trainer reads (no worker processes)",
        "source_seq_per_s": n / max(read_s, 1e-9),
        "cache_seq_per_s": -(-draws // batch_size) * batch_size / max(cache_s, 1e-9),
        "cache_note": "page cache warm (just written); a cold first epoch reads from disk",
    }
