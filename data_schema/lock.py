"""The corpus lock: one writer per corpus at a time.

``generate`` (local pool or Ray driver) and ``analyze`` (it writes ``runs.parquet`` and the
dataset card) hold an exclusive advisory lock (``fcntl.flock``) on ``<corpus>/.lock``
while they write. The lock file holds the holder's PID, host and command, so a second
writer gets one line naming them. The kernel releases a ``flock`` when its holder's
file descriptor closes, including when the process is killed, so a lock is never stale.
Readers (``status``, ``query``, ``verify``, notebooks) never take it.

``flock`` is per host on most network filesystems; on NFS (Linux >= 2.6.12) it is
emulated with POSIX byte-range locks and therefore also excludes writers on other nodes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from stabilitybench.data_schema.errors import OutputPathError, StabilityBenchError

LOCK_FILE = ".lock"


class CorpusLockedError(StabilityBenchError):
    """Another process holds the corpus lock."""


class CorpusLock:
    """``with CorpusLock(corpus, "generate"):`` holds the corpus's writer lock, or raises :class:`CorpusLockedError`.

    The corpus folder must exist. Re-entrant within one object (``acquire`` twice is a no-op).
    """

    def __init__(self, corpus: str | os.PathLike[str], command: str) -> None:
        self.path = Path(corpus, LOCK_FILE)
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> CorpusLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputPathError(f"{self.path.parent}: cannot take the corpus's writer lock ({exc.strerror or exc})"
                                  ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CorpusLockedError(
                f"{self.path.parent}: in use by `{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}); one writer per corpus: wait for it to finish, or stop it") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError:  # e.g. a full disk: the lock is held all the same, only the holder's name is missing
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> CorpusLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, object]:
    try:
        return dict(json.loads(os.pread(fd, 4096, 0) or b"{}"))
    except (ValueError, TypeError, OSError):
        return {}
