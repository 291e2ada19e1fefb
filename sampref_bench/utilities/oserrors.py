"""One sentence instead of a traceback for the file-system errors a user can fix: a full disk, a folder that
cannot be written, a root that is a file.

:func:`explain_os_errors` wraps a block that writes under one of the ``SAMPREF_*`` roots; an :class:`OSError`
with one of the errnos below becomes a :class:`~sampref_bench.utilities.errors.SamprefError` naming the file,
the root and its variable, and the fix. Other errors keep their traceback (they are bugs).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sampref_bench.utilities.errors import SamprefError

#: The disk (or the file-size or quota limit) is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
#: The folder exists but this user may not write it (or the file system is read-only).
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: A path that should be a folder is a file, or has a file among its parents.
NOT_A_FOLDER = frozenset({errno.ENOTDIR, errno.EEXIST})


def _blocking_file(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists and is not a folder, if any."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def existing_folder(path: Path) -> Path:
    """``path`` or its nearest parent that exists."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path(".")


def is_under(path: str | os.PathLike[str] | None, root: Path) -> bool:
    """Whether ``path`` lies under ``root`` (both made absolute; ``None`` is under nothing)."""
    if path is None:
        return False
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))
    except (TypeError, ValueError):
        return False


def describe_os_error(err: OSError, root: Path, variable: str) -> str | None:
    """The sentence for ``err``, raised while working under ``root`` (``$variable``); ``None`` when it is
    not a file-system problem a user can fix."""
    root = Path(root)
    where = err.filename if err.filename is not None else root
    named = f"{root} (${variable})"
    # numpy's tofile reports a short write as a bare OSError ("65536 requested and 57216 written", no errno)
    short_write = err.errno is None and disk_nearly_full(existing_folder(root))
    if err.errno in DISK_FULL or short_write:
        reason = err.strerror or "No space left on device"
        where = where if err.filename is not None or not short_write else f"under {root}"
        return (f"the disk holding {named} is full ({reason}) while writing {where}; nothing half-written was "
                f"kept. Free space on that disk, or point {variable} at a disk with room, and rerun.")
    if err.errno in NOT_A_FOLDER:
        blocker = _blocking_file(root)
        if blocker is None and is_under(where, root):
            blocker = _blocking_file(Path(where).parent)
        if blocker is not None:
            return (f"{named} must be a folder, but {blocker} is a file. Point {variable} at a folder (it is created "
                    "when missing) or move the file away, and rerun; nothing was written.")
        return None
    if err.errno in NOT_WRITABLE:
        if not is_under(where, root):
            return f"cannot read {where}: {err.strerror}. Make it readable for this user and rerun."
        return (f"cannot write {where}: {err.strerror}. {named} must be a folder this user can write: fix its "
                f"permissions or point {variable} at another folder, and rerun; nothing was written.")
    return None


@contextmanager
def explain_os_errors(root: Path, variable: str) -> Iterator[None]:
    """Turn the fixable :class:`OSError` of the block (see :func:`describe_os_error`) into a :class:`SamprefError`."""
    try:
        yield
    except OSError as err:
        message = describe_os_error(err, root, variable)
        if message is None:
            raise
        raise SamprefError(message) from err


def disk_nearly_full(folder: Path, needed_bytes: int = 0) -> bool:
    """Whether the disk of ``folder`` has less than ``needed_bytes`` plus 1 MiB free (for writers such as
    SimpleITK that report a full disk as a generic error)."""
    try:
        return shutil.disk_usage(folder).free < needed_bytes + 2**20
    except OSError:
        return False


def disk_full_error(path: Path) -> OSError:
    """The :class:`OSError` (``ENOSPC``) a full disk raises, for ``path``."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
