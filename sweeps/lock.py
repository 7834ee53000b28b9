"""A study-wide lock around "is there a trial left? then ask for it", so parallel workers never overshoot.

SQLite: an flock on a file beside the database. A journal: an flock on a file beside the journal (across machines
this needs a shared filesystem whose flock reaches every client: NFSv4, Lustre mounted with -o flock; the kernel
drops a dead holder's lock, where a lock file would need a grace period that can break a slow holder's).
PostgreSQL: a session advisory lock. Other storages (a gRPC proxy) run without one (Optuna alone may then start a
trial or two past the target).
"""

from __future__ import annotations

import fcntl
import zlib
from pathlib import Path
from typing import Any

from sweeps.backends import journal_path


class AskLock:
    """acquire() blocks; release() is idempotent, so the objective can release it as soon as it starts."""

    def __init__(self, storage_url: str, study_name: str):
        self.url, self.key = storage_url, zlib.crc32(study_name.encode())
        self._fh: Any = None
        self._conn: Any = None

    def acquire(self) -> None:
        journal = journal_path(self.url)
        if self.url.startswith("sqlite:///") or journal is not None:
            # a journal's: not <journal>.lock, the lock file Optuna's own append lock creates and deletes
            path = Path(f"{journal}.ask.lock") if journal else Path(self.url.removeprefix("sqlite:///") + ".lock")
            self._fh = path.open("a")
            fcntl.flock(self._fh, fcntl.LOCK_EX)
        elif self.url.startswith("postgresql"):
            import sqlalchemy as sa

            self._conn = sa.create_engine(self.url, poolclass=sa.pool.NullPool).connect()
            self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        if self._conn is not None:
            import sqlalchemy as sa

            self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.close()
            self._conn = None
