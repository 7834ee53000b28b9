"""Study storages besides a database: a journal file on a shared filesystem, a gRPC proxy in front of a database.

Optuna gives neither a heartbeat (only RDBStorage implements its heartbeat interface), so both get ours through
that same interface: Optuna's heartbeat thread writes the running trial's beat (the worker's wall clock, in a
trial system attr) every `heartbeat_seconds`, and optuna.storages.fail_stale_trials fails a RUNNING trial whose
beat is older than the grace period and runs the stale-trial callback, as on a database. The beat compares the
clocks of the machines: they must agree (NTP) to well within the grace period. See docs/storages.md.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, GrpcStorageProxy, JournalStorage

# the interface fail_stale_trials and Optuna's heartbeat thread look for (RDBStorage's; optuna is pinned to 5.0)
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from cvae.atomic import WriteError, check_writable
from cvae.config import ConfigError

JOURNAL, GRPC = "journal://", "grpc://"
BEAT = "cvae:heartbeat"
"""trial system attr: [trial id, wall-clock seconds] of the trial's last beat (a retry inherits its lost trial's
system attrs, beat included: the id tells that beat apart from its own)"""
GRPC_WAIT_S = 20.0  # a proxy that does not answer within this long is one line, not a hang
GRPC_HINT = "pip install -e '.[grpc]' (grpcio, pinned as the project's `grpc` extra)"
Callback = Callable[[optuna.Study, FrozenTrial], None]


def journal_path(url: str) -> Path | None:
    """journal:///abs/study.log -> /abs/study.log; journal://rel/study.log -> <cwd>/rel/study.log; else None."""
    if not url.startswith(JOURNAL):
        return None
    rest = url.removeprefix(JOURNAL)
    if not rest.strip("/"):
        raise ConfigError(f"study storage {url}: no file named; give journal:///absolute/path/study.log")
    return Path(rest).absolute()


def grpc_address(url: str) -> tuple[str, int] | None:
    """grpc://host:port -> (host, port) of an Optuna gRPC storage proxy; else None."""
    if not url.startswith(GRPC):
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path.strip("/") or parts.query:
        raise ConfigError(f"study storage {url}: expected grpc://host:port (an Optuna gRPC storage proxy)")
    return (f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname), port


def _beat_of(t: FrozenTrial) -> float | None:
    """Wall-clock seconds of the trial's own last beat; None before its first one."""
    v = t.system_attrs.get(BEAT)
    return float(v[1]) if isinstance(v, list) and len(v) == 2 and v[0] == t._trial_id else None


class _Beat(BaseHeartbeat):
    """Optuna's heartbeat interface over plain storage calls. A trial not beaten yet is never stale, as on
    RDBStorage (its worker's first beat follows the ask at once)."""

    _interval: int | None = None
    _grace: float = 0.0
    _callback: Callback | None = None

    def beat_every(self, interval: int | None, grace: float, callback: Callback | None) -> Any:
        """This storage, beating every `interval` s (None: no beat), stale after `grace` s; returns self."""
        self._interval, self._grace, self._callback = interval, grace, callback
        return self

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, BEAT, [trial_id, time.time()])  # type: ignore[attr-defined]
        except UpdateFinishedTrialError:
            pass  # another worker failed this trial as stale: its next report ends this run
        except Exception as e:  # noqa: BLE001 - a missed beat (a proxy restarting) must not stop the next ones
            print(f"heartbeat of trial id {trial_id} not recorded: {str(e).splitlines()[0][:200]}", file=sys.stderr)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))  # type: ignore[attr-defined]
        return [t._trial_id for t in running if (b := _beat_of(t)) is not None and now - b > self._grace]

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callback | None:
        return self._callback


class BeatingJournalStorage(JournalStorage, _Beat):
    """Optuna's JournalStorage with our heartbeat."""


class BeatingGrpcStorageProxy(GrpcStorageProxy, _Beat):
    """Optuna's GrpcStorageProxy with our heartbeat (the database's own cannot be reached through the proxy)."""


def journal(path: Path, url: str) -> BeatingJournalStorage:
    """The journal file (its folder created), or one line naming it when it cannot be written (nothing created).

    Appends are serialised by Optuna's JournalFileOpenLock (an O_EXCL lock file beside the journal: atomic on local
    disks and NFSv3+, needs no symlinks, unlike the default JournalFileSymlinkLock).
    """
    try:
        if path.is_dir():
            raise WriteError(f"{path} is a folder")
        check_writable(path.parent)  # probes the nearest existing folder: creates nothing
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("ab").close()
        return BeatingJournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    except (OSError, WriteError, ValueError) as e:  # ValueError: a journal whose lines are not Optuna's log
        why = f"cannot write {path}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"study storage {url}: {why.splitlines()[0][:200]}") from None


def grpc(host: str, port: int) -> BeatingGrpcStorageProxy:
    """A client of the gRPC storage proxy at host:port, or one line: grpcio missing, or no proxy answering."""
    url = f"{GRPC}{host}:{port}"
    if importlib.util.find_spec("grpc") is None:
        raise ConfigError(f"study storage {url}: the gRPC storage proxy needs grpcio: {GRPC_HINT}")
    storage = BeatingGrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=GRPC_WAIT_S)
    except ConnectionError:
        raise ConfigError(
            f"study storage {url}: no gRPC storage proxy answered within {GRPC_WAIT_S:g} s "
            "(start one in front of the database: docs/storages.md)"
        ) from None
    return storage


def open_url(url: str) -> BaseStorage | str:
    """What optuna.load_study takes to read a study: a journal or a gRPC proxy opened here (without a beat:
    readers run no trial), else the URL itself (a database, opened by Optuna)."""
    if (path := journal_path(url)) is not None:
        return journal(path, url)
    if (address := grpc_address(url)) is not None:
        return grpc(*address)
    return url
