"""One lock per run folder, so that two workers (threads, processes, SLURM jobs on other nodes, or two
``sampref_benchmark`` invocations on one results folder) never train the same run.

Every lock lives in ``{run_folder}.lock`` (beside the ``fold_k`` folder, so it is no run folder and tables never
see it) and holds a JSON record: ``host``, ``pid``, ``since``, ``mode`` and, for lock files, a ``heartbeat``.
Three kinds (``--lock-mode``, :data:`LOCK_MODES`; ``auto`` picks one per results folder, see
:func:`resolve_lock_policy`):

``flock`` (:class:`RunLock`)
    ``fcntl.flock`` on the file. The kernel releases it when its holder dies, so a crashed worker leaves no stale
    lock. Trustworthy on a local file system only: on NFS a ``flock`` may hold on one node only, and Lustre, GPFS,
    BeeGFS or SMB may refuse it (``ENOLCK``, ``EOPNOTSUPP``, ``ENOSYS``) or keep it node-local.
``lockfile`` (:class:`LockFile`)
    the file is created with ``O_CREAT | O_EXCL`` (atomic on NFSv3+, Lustre, GPFS, BeeGFS), so it holds across
    nodes. A daemon thread rewrites the ``heartbeat`` (the holder's ``time.time()``) every ``heartbeat_s`` while
    the run trains. The lock is *stale*, and taken over, when its holder is on this host and its PID is gone, or
    when its heartbeat (or the file's modification time, whichever is newer) is older than ``stale_s`` (default
    :data:`STALE_S`; at least three of the holder's heartbeat intervals), which must exceed the clock skew between
    nodes. Recoverers take turns through a short-lived ``{lock}.recover`` file (itself ``O_EXCL``); the one holding
    it checks that the lock is still the very file it judged stale (inode, token, still stale) and replaces it in
    one ``os.rename`` by a fully written file of its own, so the path is never empty (no plain taker slips in) and
    of two recoverers only one wins. What remains unguarded: a holder silent for longer than ``stale_s`` that wakes
    up (it finds its lock taken, ``lost``, and the grid says so), and a recoverer dying within the milliseconds of a
    take-over (its ``.recover`` file is removed after :data:`RECOVERY_STALE_S`).
``none`` (:class:`NoLock`)
    no lock at all: one ``sampref_benchmark`` command never starts a run twice by itself, but nothing keeps a second
    command on the same results folder from training the same run.

Every command sharing a results folder must use the same kind (``auto`` picks the same one for the same file
system). As a guard, a ``flock`` taker leaves alone a live lock file, and a lock-file taker treats a ``flock``
record as held unless its holder is a dead process on this host.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from sampref_bench.utilities.errors import SamprefError

#: The values of ``--lock-mode``.
LOCK_MODES = ("auto", "flock", "lockfile", "none")

#: File-system types whose ``flock`` may hold on one node only, or fail: ``auto`` uses lock files there. Any
#: ``fuse.*`` type counts too (its ``flock`` is whatever the FUSE daemon makes of it).
FLOCK_UNTRUSTED = frozenset({"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "9p", "afs",
                             "glusterfs", "panfs", "wekafs", "orangefs", "pvfs2"})

#: ``errno`` values of a ``flock`` the file system does not implement (Lustre mounted without ``flock`` gives ENOSYS).
FLOCK_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

#: Seconds between two heartbeats of a held lock file.
HEARTBEAT_S = 30.0
#: Default age (seconds) after which a lock file's heartbeat is stale (``--lock-stale``).
STALE_S = 600.0
#: Lock-file records are padded to this many bytes, so a heartbeat rewrites the file in place at one length.
RECORD_BYTES = 512


def lock_path(folder: Path) -> Path:
    """The lock file of a run folder: ``{folder}.lock``."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".lock")


def check_lock_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`LOCK_MODES`, else a :class:`SamprefError` naming the choices."""
    if mode not in LOCK_MODES:
        raise SamprefError(f"unknown lock mode {mode!r} (--lock-mode): choose one of {', '.join(LOCK_MODES)}")
    return mode


# ------------------------------------------------------------------------------------------------ file systems
def _unescape_mount(field: str) -> str:
    r"""A ``/proc/mounts`` field with its octal escapes (``\040`` space, ``\011`` tab, ``\134`` backslash) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and all(c in "01234567" for c in field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, file-system type)`` of every line of a ``/proc/mounts`` text, in the table's order."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append((_unescape_mount(fields[1]), fields[2]))
    return out


def read_mounts() -> str | None:
    """This process's mount table (``/proc/self/mounts``), or None where there is none (not Linux)."""
    for name in ("/proc/self/mounts", "/proc/mounts"):
        try:
            return Path(name).read_text()
        except OSError:
            continue
    return None


def filesystem_type(path: Path | str, mounts: str | None = None) -> str | None:
    """The file-system type of the mount holding ``path`` (the longest mount point above it; of two mounts on one
    point the later, which is on top), from ``mounts`` (a ``/proc/mounts`` text; default: this machine's), or None
    when the table is unknown."""
    mounts = read_mounts() if mounts is None else mounts
    if mounts is None:
        return None
    target = os.path.realpath(path)
    best, kind = -1, None
    for point, fs_type in parse_mounts(mounts):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), fs_type
    return kind


def flock_trusted(fs_type: str | None) -> bool:
    """False for a file-system type whose ``flock`` may not hold across nodes (:data:`FLOCK_UNTRUSTED`, ``fuse.*``)."""
    if fs_type is None:
        return True
    return fs_type not in FLOCK_UNTRUSTED and not fs_type.startswith("fuse.")


def probe_flock(directory: Path) -> OSError | None:
    """Try ``flock`` on a scratch file in ``directory`` (created if missing); the error it raised, or None."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".sampref-lock-probe-", dir=directory)
    except OSError as err:
        raise SamprefError(f"cannot write lock files in {directory}: {err}. Make the results folder writable "
                           "(SAMPREF_results).") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as err:
        return err
    finally:
        os.close(fd)
        os.unlink(name)
    return None


def _errno_text(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    return f"{name}: {err.strerror or err}"


@dataclass(frozen=True)
class LockPolicy:
    """The lock kind one grid uses for its runs (``flock``, ``lockfile`` or ``none``), with the stale timeout and
    heartbeat of lock files; ``note`` says why, when the choice is worth saying (printed once by the grid).
    Picklable: it travels to worker processes and SLURM jobs inside each run's call, so that all agree."""

    kind: str = "flock"
    stale_s: float = STALE_S
    heartbeat_s: float = HEARTBEAT_S
    note: str = ""

    def lock(self, folder: Path) -> AnyLock:
        """A lock of this kind on ``folder`` (not yet taken)."""
        if self.kind == "flock":
            return RunLock(folder)
        if self.kind == "lockfile":
            return LockFile(folder, stale_s=self.stale_s, heartbeat_s=self.heartbeat_s)
        if self.kind == "none":
            return NoLock(folder)
        raise SamprefError(f"unknown lock kind {self.kind!r}: choose one of flock, lockfile, none")

    def is_locked(self, folder: Path) -> bool:
        """True when a live holder has the lock of ``folder`` (see :func:`is_locked`)."""
        return is_locked(folder, self)


def heartbeat_for(stale_s: float) -> float:
    """The heartbeat interval used with a stale timeout: :data:`HEARTBEAT_S`, or a quarter of a shorter timeout."""
    return min(HEARTBEAT_S, stale_s / 4)


def resolve_lock_policy(mode: str, directory: Path, stale_s: float = STALE_S, mounts: str | None = None) -> LockPolicy:
    """The :class:`LockPolicy` of ``--lock-mode mode`` for run folders under ``directory``.

    ``auto``: lock files where the file system's type (``mounts``, default this machine's ``/proc/mounts``) is one
    whose ``flock`` may not hold across nodes (:func:`flock_trusted`), or where a probe ``flock`` fails with
    :data:`FLOCK_UNSUPPORTED`; ``flock`` elsewhere. ``flock``: refused with a :class:`SamprefError` where the probe
    fails. ``lockfile`` and ``none``: as asked."""
    check_lock_mode(mode)
    if not stale_s > 0:
        raise SamprefError(f"--lock-stale must be a positive number of seconds, got {stale_s}")
    directory = Path(directory)
    beat = heartbeat_for(stale_s)
    file_note = (f"lock files ({{run folder}}.lock with host, PID and a heartbeat every {beat:g} s; stale after "
                 f"{stale_s:g} s or when its process on this host is gone)")
    if mode == "none":
        return LockPolicy("none", stale_s, beat, "off (--lock-mode none): this command never starts a run twice, but "
                                                 "a second sampref_benchmark on this results folder could train the "
                                                 "same runs")
    if mode == "lockfile":
        return LockPolicy("lockfile", stale_s, beat, f"{file_note} (--lock-mode lockfile)")
    fs_type = filesystem_type(directory, mounts)
    if mode == "flock":
        failure = probe_flock(directory)
        if failure is not None:
            raise SamprefError(f"--lock-mode flock: flock does not work in {directory} ({_errno_text(failure)}). "
                               "Use --lock-mode lockfile (lock files with a heartbeat) or --lock-mode auto.")
        note = ""
        if not flock_trusted(fs_type):
            note = (f"flock (--lock-mode flock) on {fs_type}, where a flock may hold on one node only: runs on "
                    "other nodes are not kept out; --lock-mode lockfile is safe there")
        return LockPolicy("flock", stale_s, beat, note)
    if not flock_trusted(fs_type):
        return LockPolicy("lockfile", stale_s, beat, f"{directory} is on {fs_type}, where flock may hold on one node "
                                                     f"only or fail: using {file_note}")
    failure = probe_flock(directory)
    if failure is None:
        return LockPolicy("flock", stale_s, beat, "")
    if failure.errno in FLOCK_UNSUPPORTED:
        return LockPolicy("lockfile", stale_s, beat, f"flock is not supported in {directory} "
                                                     f"({_errno_text(failure)}): using {file_note}")
    raise SamprefError(f"flock failed in {directory} ({_errno_text(failure)}); use --lock-mode lockfile (lock files "
                       "with a heartbeat), or --lock-mode none if only this command uses the results folder")


# ------------------------------------------------------------------------------------------------ records
def _record(mode: str, **extra: Any) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "mode": mode, **extra}


@dataclass
class _Seen:
    """A lock file as read: its record (``{}`` when empty or unreadable), inode and modification time."""

    record: dict[str, Any]
    inode: int
    mtime: float


def _read(path: Path) -> _Seen | None:
    """The lock file at ``path`` as read now, or None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        record = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        record = {}
    return _Seen(record if isinstance(record, dict) else {}, stat.st_ino, stat.st_mtime)


def pid_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def staleness(seen: _Seen, stale_s: float, now: float | None = None) -> str | None:
    """Why the lock file ``seen`` is stale (its holder is a dead process on this host, or its heartbeat is older
    than ``stale_s``), or None while it is live. A ``flock`` record is stale only by a dead holder on this host."""
    record = seen.record
    pid = record.get("pid")
    if record.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return f"its holder, pid {pid} on this host, is no longer running"
    if record.get("mode") == "flock":
        return None
    now = time.time() if now is None else now
    beat = record.get("heartbeat")
    last = max(float(beat), seen.mtime) if isinstance(beat, (int, float)) else seen.mtime
    limit = max(stale_s, 3 * float(record.get("heartbeat_s") or 0))
    if now - last > limit:
        return f"its heartbeat is {now - last:.0f} s old (stale after {limit:.0f} s)"
    return None


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.pwrite(fd, data.ljust(max(RECORD_BYTES, len(data))), 0)
    os.fsync(fd)


# ------------------------------------------------------------------------------------------------ the locks
class AnyLock(Protocol):
    """What every lock kind offers."""

    folder: Path
    path: Path

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (never waits); True when taken."""

    def release(self) -> None:
        """Let go of the lock (nothing when not held)."""


class RunLock:
    """``flock`` on ``{folder}.lock``: a non-blocking exclusive lock; ``acquire()`` says whether it was taken.

    The holder removes the file while still holding it; a taker checks that the file it locked is still the one at
    the path (same inode), so a lock is never taken on a file that was just removed. A ``flock`` the file system
    does not implement is a :class:`SamprefError` naming the file and ``--lock-mode lockfile``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self._fd: int | None = None
        #: Why the last ``acquire()`` that failed did so, when not plainly another flock holder.
        self.refusal = ""

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
                hint = ("this file system does not implement flock" if err.errno in FLOCK_UNSUPPORTED
                        else "flock failed")
                raise SamprefError(f"cannot lock {self.path}: {hint} ({_errno_text(err)}). Run the grid with "
                                   "--lock-mode lockfile (lock files with a heartbeat) or --lock-mode auto.") from err
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: take the new one
                os.close(fd)
                continue
            existing = _read(self.path)
            if (existing is not None and existing.record.get("mode") == "lockfile"
                    and staleness(existing, STALE_S) is None):
                # a live lock file of a command using --lock-mode lockfile: not ours to take
                os.close(fd)
                self.refusal = "a live lock file (another command uses --lock-mode lockfile on this folder)"
                return False
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_record("flock")).encode())
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


class LockFile:
    """An ``O_CREAT | O_EXCL`` lock file with a heartbeat (see the module docstring): holds across nodes.

    ``recovered`` says which stale lock the last ``acquire()`` took over; ``lost`` turns True when the heartbeat
    finds the file gone or replaced while held (another command judged it stale)."""

    def __init__(self, folder: Path, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        if not stale_s > 0 or not heartbeat_s > 0:
            raise SamprefError(f"lock file of {folder}: stale_s and heartbeat_s must be positive, got {stale_s} and "
                               f"{heartbeat_s}")
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self.stale_s = float(stale_s)
        self.heartbeat_s = float(heartbeat_s)
        self.recovered = ""
        self.lost = False
        self._fd: int | None = None
        self._record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Create the lock file, or take over a stale one; never waits. True when taken."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.recovered = ""
        for _ in range(10):
            created = self._new_file(self.path)
            if created is not None:
                self._hold(*created)
                return True
            seen = _read(self.path)
            if seen is None:  # released meanwhile: try again
                continue
            reason = staleness(seen, self.stale_s)
            if reason is None:
                return False
            outcome = self._take_over(seen)
            if outcome == "held":
                self.recovered = f"{_holder_text(seen.record)}: {reason}"
                return True
            if outcome == "busy":
                return False
        return False

    def _new_file(self, path: Path) -> tuple[int, dict[str, Any]] | None:
        """Create ``path`` with ``O_EXCL`` holding a fresh record of ours (None when it exists)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        record = _record("lockfile", heartbeat=round(time.time(), 2), heartbeat_s=self.heartbeat_s,
                         token=uuid.uuid4().hex)
        try:
            _write_record(fd, record)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd, record

    def _hold(self, fd: int, record: dict[str, Any]) -> None:
        self._fd, self._record, self.lost = fd, record, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(fd, self._stop), daemon=True,
                                        name=f"heartbeat {self.path.name}")
        self._thread.start()

    def _take_over(self, judged: _Seen) -> str:
        """Replace the stale lock file ``judged`` by ours: ``held``, ``busy`` (another recoverer, or the lock is no
        longer the stale one) or ``retry`` (released meanwhile).

        Recoverers take turns through ``{lock}.recover`` (itself an ``O_EXCL`` file). Under it the file at the path is
        checked to be the one judged stale (inode, token, still stale), and replaced in one ``os.rename`` by a fully
        written file of ours: the path is never empty, so no plain taker slips in, and no two recoverers both win."""
        mutex = self.path.with_name(self.path.name + ".recover")
        token = _take_mutex(mutex)
        if token is None:
            return "busy"
        try:
            current = _read(self.path)
            if current is None:
                return "retry"
            if (current.inode != judged.inode or current.record.get("token") != judged.record.get("token")
                    or staleness(current, self.stale_s) is None):
                return "busy"
            fresh = self.path.with_name(f"{self.path.name}.new-{uuid.uuid4().hex[:12]}")
            created = self._new_file(fresh)
            if created is None:
                return "busy"
            fd, record = created
            try:
                os.rename(fresh, self.path)  # atomic: the stale file is replaced, the path is never empty
            except OSError:
                os.close(fd)
                fresh.unlink(missing_ok=True)
                raise
            self._hold(fd, record)
            return "held"
        finally:
            _drop_mutex(mutex, token)

    def _beat(self, fd: int, stop: threading.Event) -> None:
        inode = os.fstat(fd).st_ino
        while not stop.wait(self.heartbeat_s):
            try:
                if os.stat(self.path).st_ino != inode:
                    self.lost = True
                    return
                self._record["heartbeat"] = round(time.time(), 2)
                _write_record(fd, self._record)  # our own inode: never someone else's file
            except FileNotFoundError:
                self.lost = True
                return
            except OSError:  # a transient error of a network file system: beat again next time
                continue

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file when it is still ours (nothing when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                self.path.unlink(missing_ok=True)
            else:  # taken over while we held it: the file is someone else's lock now
                self.lost = True
        except FileNotFoundError:
            self.lost = True
        finally:
            os.close(fd)

    def __enter__(self) -> LockFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


#: Seconds after which a take-over's ``{lock}.recover`` file (a recoverer that died within milliseconds of work)
#: may be removed.
RECOVERY_STALE_S = 60.0


def _take_mutex(mutex: Path) -> str | None:
    """Create the recovery file ``mutex`` (``O_EXCL``); its token, or None while another recoverer has it. A mutex
    of a dead process on this host, or older than :data:`RECOVERY_STALE_S`, is removed first (rename, then check)."""
    for attempt in range(2):
        token = uuid.uuid4().hex
        try:
            fd = os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            seen = _read(mutex)
            if seen is None:
                continue
            if attempt or staleness(seen, RECOVERY_STALE_S) is None:
                return None
            side = mutex.with_name(f"{mutex.name}.stale-{token[:12]}")
            try:
                os.rename(mutex, side)
            except FileNotFoundError:
                continue
            taken = _read(side)
            if taken is not None and (taken.inode, taken.record.get("token")) != (seen.inode,
                                                                                   seen.record.get("token")):
                _put_back(side, mutex)  # a fresh mutex of another recoverer
                return None
            side.unlink(missing_ok=True)
            continue
        try:
            _write_record(fd, _record("recover", token=token))
        finally:
            os.close(fd)
        return token
    return None


def _drop_mutex(mutex: Path, token: str) -> None:
    seen = _read(mutex)
    if seen is not None and seen.record.get("token") == token:
        mutex.unlink(missing_ok=True)


def _put_back(side: Path, path: Path) -> None:
    """Move ``side`` back to ``path`` without replacing a file that appeared there meanwhile."""
    try:
        os.link(side, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system
        if not path.exists():
            os.rename(side, path)
            return
    side.unlink(missing_ok=True)


class NoLock:
    """``--lock-mode none``: every ``acquire()`` succeeds; nothing is written."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self._held = False

    @property
    def held(self) -> bool:
        """True between ``acquire()`` and ``release()``."""
        return self._held

    def acquire(self) -> bool:
        """Always True."""
        self._held = True
        return True

    def release(self) -> None:
        """Nothing to remove."""
        self._held = False


# ------------------------------------------------------------------------------------------------ probes
def is_locked(folder: Path, policy: LockPolicy | None = None) -> bool:
    """True when some live holder has the lock of ``folder`` under ``policy`` (default: ``flock``).

    ``flock``: a probe that takes and drops the lock when free (a :class:`SamprefError` when the file system has no
    ``flock``). ``lockfile``: the file exists and is not stale. ``none``: never."""
    kind = policy.kind if policy is not None else "flock"
    if kind == "none" or not lock_path(folder).exists():
        return False
    if kind == "lockfile":
        seen = _read(lock_path(folder))
        return seen is not None and staleness(seen, policy.stale_s if policy else STALE_S) is None
    probe = RunLock(folder)
    if probe.acquire():
        probe.release()
        return False
    return True


def _holder_text(record: dict[str, Any]) -> str:
    if not record:
        return ""
    text = f"{record.get('host', '?')} pid {record.get('pid', '?')} since {record.get('since', '?')}"
    beat = record.get("heartbeat")
    if isinstance(beat, (int, float)):
        text += f", heartbeat {max(0.0, time.time() - beat):.0f} s ago"
    if record.get("mode") == "flock":
        text += " (flock)"
    return text


def lock_holder(folder: Path) -> str:
    """Who holds the lock of ``folder``, as text (``host pid 1234 since ..., heartbeat 5 s ago``), or ``""``."""
    try:
        seen = _read(lock_path(folder))
    except OSError:
        return ""
    return _holder_text(seen.record) if seen is not None else ""
