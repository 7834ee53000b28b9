"""`cvae data convert`: the original TFRecords -> the course's PNG+CSV tree, or any source -> the cache.

To the course layout, each train/test file becomes one traj folder (validate = the train file that
`tfrecords.list_files` carves out), record k becoming sequence folder <k>. A folder is written under
a dot-prefixed temp name (which every reader ignores) and renamed when whole, so DEST never holds a
half-written sequence; DEST's marker file lists the finished files, which a second run skips.
To the cache, DEST is a cache folder that training finds with `data.cache_dir=DEST`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cvae.config import DataCfg
from cvae.data import cache, course, ensure_cache, sources, tfrecords
from cvae.data.errors import DamagedData, DataError

MARKER = ".cvae-convert.json"
MARKER_FORMAT = 1
CAMERAS = {"aux1": "image_aux1", "main": "image_main"}


@dataclass
class Report:
    """What a conversion did: per split, sequences written now and kept from an earlier run."""

    dest: Path
    written: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    seconds: float = 0.0


# helpers


def _claim(dest: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """DEST's marker (created when DEST is empty); refuses a DEST holding anything else."""
    marker = dest / MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text())
        except ValueError:
            raise DataError(f"{marker} is not readable JSON; remove it or choose another DEST") from None
        if data.get("settings") != settings:
            was = data.get("settings", {})
            diff = ", ".join(f"{k} {was.get(k)!r} (now {v!r})" for k, v in settings.items() if was.get(k) != v)
            raise DataError(f"{dest} holds an earlier conversion with other settings: {diff}; choose another DEST")
        return data
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(
            f"{dest} is not empty and holds no {MARKER} of an earlier `cvae data convert`; choose an empty or new DEST"
        )
    dest.mkdir(parents=True, exist_ok=True)
    data = {"format": MARKER_FORMAT, "settings": settings, "files": {}}
    cache.write_json(marker, data)
    return data


def _remove_temp_folders(dest: Path) -> None:
    """Drop what an interrupted run left (dot-prefixed temp folders of our naming) under DEST's splits."""
    for split in sources.SPLITS:
        folder = dest / split
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.startswith(".traj_") and entry.name.endswith(".convert-tmp"):
                    shutil.rmtree(entry, ignore_errors=True)


def _stat(path: Path) -> list[int]:
    """[size, mtime_ns] of a source file, as the marker records it."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _jobs(
    src: Path, dest: Path, validate: str | None, skip_bad: bool, report: Report, done: dict[str, Any]
) -> list[tuple[str, Path, Path, list[int]]]:
    """(split, source file, output folder, source stat) still to convert; finished ones count as kept."""
    jobs = []
    for split in sources.SPLITS:
        report.written.setdefault(split, 0)
        report.kept.setdefault(split, 0)
        try:
            files = tfrecords.list_files(src, split, validate)
        except DamagedData as exc:
            if not skip_bad:
                raise
            report.bad.append(str(exc))
            continue
        for path in files:
            out = dest / split / path.name
            entry, stat = done.get(f"{split}/{path.name}"), _stat(path)
            if entry and entry["source"] == stat and out.is_dir():
                report.kept[split] += entry["sequences"]
                continue
            jobs.append((split, path, out, stat))  # stat before reading: a change while reading shows next time
    return jobs


def _run_parallel(
    jobs: list[tuple[str, Path, Path, list[int]]],
    workers: int,
    camera: str,
    skip_bad: bool,
    seq_len: int,
    bar: tqdm,
    finished: Any,
) -> None:
    """convert_file over the jobs in worker processes; the first damage stops the rest (finished stay)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures: dict[Future, tuple[str, Path, Path, list[int]]] = {
            pool.submit(convert_file, job[1], job[2], CAMERAS[camera], skip_bad, seq_len): job for job in jobs
        }
        pending = set(futures)
        error: BaseException | None = None
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.cancelled():
                    continue
                if future.exception() is not None:
                    error = error or future.exception()
                    continue
                written, bad = future.result()
                bar.update(written + len(bad))
                finished(futures[future], written, bad)
            if error is not None:
                for future in pending:
                    future.cancel()  # running ones finish (and are recorded above on the next pass)
        if error is not None:
            raise error


# public API


def convert_file(
    src: Path, out: Path, camera: str, skip_bad: bool, seq_len: int = 30, progress: Any = None
) -> tuple[int, list[str]]:
    """One TFRecord file -> traj folder `out` (written aside, renamed when whole); (sequences, damage)."""
    tmp = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.convert-tmp"
    tmp.mkdir(parents=True)
    written, bad = 0, []
    try:
        for record, item in tfrecords.read_file(src, seq_len, (camera,)):
            if progress is not None:
                progress.update()
            if isinstance(item, DamagedData):
                if not skip_bad:
                    raise item
                bad.append(str(item))
                continue
            frames, cond = item
            seq = tmp / str(record)  # k = the record's index, so a skipped record leaves a gap, not a shift
            seq.mkdir()
            course.write_sequence(seq, frames[camera], cond)
            written += 1
        course.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written, bad


def to_course(
    src: str | Path,
    dest: str | Path,
    camera: str = "aux1",
    validate: str | None = None,
    skip_bad: bool = False,
    workers: int = 1,
    seq_len: int = 30,
) -> Report:
    """The original TFRecords under src -> the course layout under dest (resumable, atomic per file)."""
    start = time.perf_counter()
    src, dest = Path(src), Path(dest)
    if camera not in CAMERAS:
        raise DataError(f"--camera {camera!r}: expected one of {', '.join(CAMERAS)}")
    if sources.detect(src) != "tfrecord":
        raise DataError(
            f"{src} is not the original TFRecords ({tfrecords.DATASET_DIR}/{{train,test}}/*.tfrecords); "
            "--to course converts those"
        )
    settings = {
        "to": "course",
        "source": str(src.resolve()),
        "camera": camera,
        "validate": validate,
        "seq_len": seq_len,
    }
    marker = _claim(dest, settings)
    _remove_temp_folders(dest)
    report = Report(dest=dest)
    jobs = _jobs(src, dest, validate, skip_bad, report, marker["files"])

    def finished(job: tuple[str, Path, Path, list[int]], written: int, bad: list[str]) -> None:
        split, path, _, stat = job
        report.written[split] += written
        report.bad.extend(bad)
        marker["files"][f"{split}/{path.name}"] = {"source": stat, "sequences": written, "skipped": bad}
        cache.write_json(dest / MARKER, marker)  # after the rename: a listed file is always whole

    total = sum(sources.count("tfrecord", job[1]) for job in jobs)
    with tqdm(total=total, desc=f"converting to {dest}", unit="seq", disable=None) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                finished(job, *convert_file(job[1], job[2], CAMERAS[camera], skip_bad, seq_len, bar))
        else:
            _run_parallel(jobs, workers, camera, skip_bad, seq_len, bar, finished)
    report.seconds = time.perf_counter() - start
    return report


def to_cache(src: str | Path, dest: str | Path, skip_bad: bool = False, seq_len: int = 30) -> Report:
    """Any source (TFRecords or course tree) -> its cache folders under dest, one per split."""

    start = time.perf_counter()
    src, dest = Path(src), Path(dest)
    kind = sources.detect(src)
    _claim(dest, {"to": "cache", "source": str(src.resolve()), "kind": kind, "seq_len": seq_len})
    cfg = DataCfg(name=kind, root=str(src), cache_dir=str(dest), seq_len=seq_len)
    report = Report(dest=dest)
    for split in sources.SPLITS:
        try:
            _, manifest, built = ensure_cache(cfg, split, skip_bad=skip_bad)
        except DamagedData as exc:
            if not skip_bad:
                raise
            report.bad.append(str(exc))  # a missing or empty split: the others are still converted
            continue
        (report.written if built else report.kept)[split] = manifest["sequences"]
        report.bad.extend(manifest["skipped"] if built else [])
    report.seconds = time.perf_counter() - start
    return report
