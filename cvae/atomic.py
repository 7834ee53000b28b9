"""The one way files are written: to a temp sibling, renamed into place when complete.

A reader (a resumed run, a report, another worker) never sees half a file, whatever kills the writer.
An unwritable folder or a full disk becomes a one-line WriteError naming the file; the previous
version of the file is left as it was.
"""

from __future__ import annotations

import errno
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class WriteError(RuntimeError):
    """A file could not be written (no space, no permission, read-only): one line naming it."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path` to write; rename it over `path` on success, remove it on failure."""
    path = Path(path)
    # the temp name keeps the suffix (writers infer the format from it) and a leading dot (readers skip it);
    # not mkstemp: its 0600 mode would stick to the final file
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM):
            raise WriteError(f"cannot write {path}: {os.strerror(e.errno)}") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Text, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Bytes, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def ensure_writable(folder: str | Path) -> Path:
    """Create `folder` and prove a file can be written there, or a one-line WriteError (before any work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(folder / f".cvae-write-probe-{os.getpid()}", b"")
        (folder / f".cvae-write-probe-{os.getpid()}").unlink()
    except OSError as e:
        raise WriteError(f"cannot write in {folder}: {os.strerror(e.errno) if e.errno else e}") from None
    return folder


def check_writable(folder: str | Path) -> None:
    """A one-line WriteError when files could not be created in `folder` (probed in its nearest existing
    ancestor, so nothing is created by asking)."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        write_bytes(probe / f".cvae-write-probe-{os.getpid()}", b"")
        (probe / f".cvae-write-probe-{os.getpid()}").unlink()
    except OSError as e:
        raise WriteError(f"cannot write in {folder}: {os.strerror(e.errno) if e.errno else e}") from None
