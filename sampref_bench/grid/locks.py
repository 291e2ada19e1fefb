"""One lock per run folder, so that two workers (threads, processes, or two ``sampref_benchmark`` invocations on
one file system) never train the same run.

The lock is ``fcntl.flock`` on ``{run_folder}.lock`` (beside the ``fold_k`` folder, so it is no run folder and
tables never see it). The kernel releases a ``flock`` when its holder dies, so a crashed worker leaves no stale
lock to clean up; the file only records the holder (host, PID, start time) for messages. The holder removes the
file while still holding it; a taker checks that the file it locked is still the one at the path (same inode), so
a lock is never taken on a file that was just removed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType


def lock_path(folder: Path) -> Path:
    """The lock file of a run folder: ``{folder}.lock``."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".lock")


class RunLock:
    """A non-blocking exclusive lock on one run folder; ``acquire()`` says whether it was taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (never waits); True when taken."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: take the new one
                os.close(fd)
                continue
            record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
            self._fd = fd
            return True
        return False

    def release(self) -> None:
        """Remove the lock file and let go of the lock (nothing when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def is_locked(folder: Path) -> bool:
    """True when some live holder has the lock of ``folder`` (a probe: takes and drops it when free)."""
    if not lock_path(folder).exists():
        return False
    probe = RunLock(folder)
    if probe.acquire():
        probe.release()
        return False
    return True


def lock_holder(folder: Path) -> str:
    """Who holds the lock of ``folder``, as text (``host pid 1234 since ...``), or ``""``."""
    try:
        record = json.loads(lock_path(folder).read_text() or "{}")
    except (OSError, ValueError):
        return ""
    if not record:
        return ""
    return f"{record.get('host', '?')} pid {record.get('pid', '?')} since {record.get('since', '?')}"
