"""The two file-backed sources seen alike: units of work (TFRecord files, course traj folders), their
sequences, and a fingerprint that tells when a source changed.

A unit is what a worker, the progress bar and `cvae data convert`'s resume step handle at once: one
`traj_<a>_to_<b>.tfrecords` file of the original, or one such folder of the course layout.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from cvae.data import course, tfrecords
from cvae.data.errors import DamagedData, DataError

Kind = Literal["bair", "tfrecord"]
SPLITS = ("train", "validate", "test")
KIND_NAMES = {"bair": "course PNG+CSV tree", "tfrecord": "original BAIR TFRecords"}


def detect(root: str | Path) -> Kind:
    """Which layout root holds: 'tfrecord' (softmotion30_44k files) or 'bair' (course folders)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} does not exist or is not a folder")
    if tfrecords.is_dataset(root):
        return "tfrecord"
    if any((root / split).is_dir() for split in SPLITS):
        return "bair"
    raise DataError(
        f"{root} is neither a course tree ({'/, '.join(SPLITS)}/ folders) "
        f"nor the original TFRecords ({tfrecords.DATASET_DIR}/{{train,test}}/*.tfrecords)"
    )


def units(kind: Kind, root: str | Path, split: str, validate: str | None = None) -> list[Path]:
    """A split's units in order; a missing or empty split raises DamagedData."""
    if kind == "tfrecord":
        return tfrecords.list_files(root, split, validate)
    folders = course.traj_folders(root, split)
    if not any(course.sequence_folders(traj) for traj in folders):
        course.list_sequences(root, split)  # raises its one-line "empty split" damage
    return folders


def count(kind: Kind, unit: Path) -> int:
    """Sequences a unit holds, without decoding them (records of a broken file: up to the damage)."""
    if kind == "bair":
        return len(course.sequence_folders(unit))
    try:
        return tfrecords.count_sequences([unit])
    except DamagedData:
        return 0  # only for progress totals: reading the unit reports the damage itself


def read_unit(
    kind: Kind, unit: Path, seq_len: int = 30, camera: str = "image_aux1"
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray] | DamagedData]]:
    """(index in the unit, (frames, cond) or its damage) per sequence, damage yielded, not raised."""
    if kind == "tfrecord":
        for record, item in tfrecords.read_file(unit, seq_len, (camera,)):
            yield record, item if isinstance(item, DamagedData) else (item[0][camera], item[1])
        return
    for seq in course.sequence_folders(unit):
        try:
            yield int(seq.name), course.read_sequence(seq, seq_len)
        except DamagedData as exc:
            yield int(seq.name), exc


def fingerprint(kind: Kind, root: str | Path, files: list[Path]) -> dict:
    """Sizes and mtimes of a split's files, so a cache can tell that its source changed.

    TFRecords: every file listed. Course tree (about 1.4 million files for the full set): the count,
    total size and a digest of every (path, size, mtime), one scandir per sequence folder.
    """
    root = Path(root)  # units are paths under root as given: no resolve(), symlinked trees stay inside
    if kind == "tfrecord":
        stats = [(p, p.stat()) for p in files]
        return {"files": [[str(p.relative_to(root)), st.st_size, st.st_mtime_ns] for p, st in stats]}
    digest = hashlib.sha1()
    n_files, n_bytes = 0, 0
    for traj in files:
        for seq in course.sequence_folders(traj):
            with os.scandir(seq) as entries:
                listing = sorted((e.name, e.stat()) for e in entries if not e.name.startswith("."))
            rel = str(seq.relative_to(root))
            for name, st in listing:
                digest.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                n_files += 1
                n_bytes += st.st_size
    return {"files": n_files, "bytes": n_bytes, "digest": digest.hexdigest()}


def describe_change(old: dict, new: dict) -> str:
    """A few words on how two fingerprints differ (for the one-line 'source changed' message)."""
    if isinstance(old.get("files"), list) and isinstance(new.get("files"), list):
        before = {f[0]: f[1:] for f in old["files"]}
        after = {f[0]: f[1:] for f in new["files"]}
        for name in sorted(before.keys() | after.keys()):
            if name not in after:
                return f"{name} is gone"
            if name not in before:
                return f"{name} is new"
            if before[name] != after[name]:
                return f"{name} changed (size {before[name][0]} -> {after[name][0]} bytes, or its mtime)"
    if old.get("files") != new.get("files"):
        return f"{old.get('files')} -> {new.get('files')} files"
    return "a file's size or mtime changed"
