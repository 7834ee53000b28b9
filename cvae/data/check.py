"""`cvae data check`: read every file and every record of a course tree or TFRecord folder, with the
loader's own rules (course.read_sequence, tfrecords.decode), and list what is damaged."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cvae.data import sources, tfrecords
from cvae.data.errors import DamagedData


@dataclass
class Report:
    """Good sequences per split, every damaged item's one-line message, and the time taken."""

    kind: sources.Kind
    root: Path
    sequences: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    bad_per_split: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 1

    @property
    def ok(self) -> bool:
        """Nothing damaged."""
        return not self.bad

    @property
    def per_second(self) -> float:
        """Sequences (good or bad) checked per second."""
        return (sum(self.sequences.values()) + len(self.bad)) / max(self.seconds, 1e-9)


def check_unit(kind: sources.Kind, unit: Path, seq_len: int) -> tuple[int, list[str]]:
    """(good sequences, damage messages) of one TFRecord file or traj folder."""
    if kind == "tfrecord":  # both cameras: a check covers every key a conversion might read
        items = tfrecords.read_file(unit, seq_len, tfrecords.CAMERAS)
    else:
        items = sources.read_unit(kind, unit, seq_len)
    good, bad = 0, []
    for _, item in items:
        if isinstance(item, DamagedData):
            bad.append(str(item))
        else:
            good += 1
    return good, bad


def check(root: str | Path, seq_len: int = 30, workers: int = 1, on_bad: Callable[[str], None] | None = None) -> Report:
    """Check every split under root; on_bad sees each damage message as soon as it is found."""
    start = time.perf_counter()
    root = Path(root)
    kind = sources.detect(root)
    report = Report(kind=kind, root=root, workers=workers)
    jobs: list[tuple[str, Path]] = []

    def found(split: str, messages: list[str]) -> None:
        report.bad.extend(messages)
        report.bad_per_split[split] += len(messages)
        for message in messages:
            if on_bad is not None:
                on_bad(message)

    for split in sources.SPLITS:
        report.sequences[split], report.bad_per_split[split] = 0, 0
        try:
            jobs.extend((split, unit) for unit in sources.units(kind, root, split))
        except DamagedData as exc:  # a missing or empty split
            found(split, [str(exc)])
    total = sum(sources.count(kind, unit) for _, unit in jobs)
    with tqdm(total=total, desc=f"checking {root}", unit="seq", disable=None) as bar:
        if workers <= 1 or len(jobs) <= 1:
            results = (check_unit(kind, unit, seq_len) for _, unit in jobs)
            _collect(jobs, results, report, found, bar)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(check_unit, [kind] * len(jobs), [u for _, u in jobs], [seq_len] * len(jobs))
                _collect(jobs, results, report, found, bar)
    report.seconds = time.perf_counter() - start
    return report


def _collect(
    jobs: list[tuple[str, Path]],
    results: Iterable[tuple[int, list[str]]],
    report: Report,
    found: Callable[[str, list[str]], None],
    bar: tqdm,
) -> None:
    """Fold each unit's result into the report, in order."""
    for (split, _), (good, bad) in zip(jobs, results):
        report.sequences[split] += good
        found(split, bad)
        bar.update(good + len(bad))
