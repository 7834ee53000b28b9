"""Training batches read ahead in a background thread, so the step never waits for the disk or the host.

The thread gathers each batch from the memory-mapped uint8 cache (pinned when the model is on CUDA);
the consumer copies it with `non_blocking=True` and converts to float on the device, which moves a
quarter of the bytes a float batch would. Batch contents depend only on the index array given, so
prefetching changes nothing in what the model sees.
"""

from __future__ import annotations

import queue
import threading
from types import TracebackType
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from cvae.data.split import Split

PREFETCH = 3  # batches read ahead


def gather(split: Split, idx: np.ndarray, n_frames: int) -> tuple[Tensor, Tensor]:
    """Sequences `idx`, first n_frames, as stored: frames uint8 (B, T, H, W, 3), cond float32 (B, T, 7)."""
    order = np.sort(idx)  # memmaps read faster in file order; a batch is an unordered set anyway
    frames = torch.from_numpy(np.ascontiguousarray(split.frames[order, :n_frames]))
    cond = torch.from_numpy(np.ascontiguousarray(split.cond[order, :n_frames]))
    return frames, cond


def to_model_input(frames: Tensor, cond: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W) in [0, 1] on `device`; the copy is asynchronous when pinned."""
    x = frames.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)
    return x, cond.to(device, non_blocking=True)


class Batches:
    """`with Batches(split, idx (iters, B), n_frames, device) as b: for x, c in b: ...`, read ahead by a thread
    (`prefetch` batches; 0 = no thread, each batch read when asked for)."""

    def __init__(self, split: Split, idx: np.ndarray, n_frames: int, device: torch.device, prefetch: int = PREFETCH):
        self.split, self.idx, self.n_frames, self.device, self.prefetch = split, idx, n_frames, device, prefetch
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="cvae-batches", daemon=True)
        self._pin = device.type == "cuda"

    def _produce(self) -> None:
        try:
            for rows in self.idx:
                frames, cond = gather(self.split, rows, self.n_frames)
                if self._pin:
                    frames, cond = frames.pin_memory(), cond.pin_memory()
                if not self._put((frames, cond)):
                    return
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Batches:
        if self.prefetch:
            self._thread.start()
        return self

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.prefetch:  # read in the loop
            for rows in self.idx:
                yield to_model_input(*gather(self.split, rows, self.n_frames), self.device)
            return
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield to_model_input(*item, self.device)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
