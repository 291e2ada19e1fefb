"""Atomic writes: a reader sees either the old file (or folder) or the complete new one, never half of it.

A write that fails because the disk is full (or the file too large for its file system, or a quota exceeded)
leaves the old file as it was and no temporary file, and raises a :class:`DiskFullError`: a
:class:`~sampref_bench.utilities.errors.SamprefError` whose message names the file, its folder and file system,
and the fix, and still an :class:`OSError` with the original ``errno`` and file name, so that code which explains
file-system errors for one ``SAMPREF_*`` root (:mod:`sampref_bench.utilities.oserrors`) keeps doing so. New files
get the mode ``open()`` gives (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sampref_bench import paths
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.oserrors import DISK_FULL, disk_nearly_full, existing_folder, is_under


class DiskFullError(SamprefError, OSError):
    """A write refused for lack of room (``ENOSPC``, ``EFBIG``, ``EDQUOT``): a user error with a sentence, and the
    :class:`OSError` it was (``errno``, ``strerror``, ``filename``)."""

    sentence = ""

    def __str__(self) -> str:
        return self.sentence or OSError.__str__(self)


def _mount_point(folder: Path) -> Path:
    """The mount point of the file system holding ``folder`` (or its nearest existing parent)."""
    current = existing_folder(Path(os.path.abspath(folder)))
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def _free_text(folder: Path) -> str:
    try:
        free = shutil.disk_usage(_mount_point(folder)).free
    except OSError:
        return ""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free now"
    return f"{free} bytes free now"


def _root_hint(path: Path, where: str = "a disk with room") -> str:
    """``point SAMPREF_x (now ...) at {where}`` when ``path`` lies under one of the roots, else ``write to {where}``."""
    for variable, root in (("SAMPREF_results", paths.results_root()), ("SAMPREF_preprocessed",
                                                                        paths.preprocessed_root()),
                           ("SAMPREF_raw", paths.raw_root())):
        if is_under(path, root):
            return f"point {variable} (now {root}) at {where}"
    return f"write to {where}"


def disk_full_message(path: Path, err: OSError | None = None, detail: str = "") -> str:
    """The sentence for a write of ``path`` that failed for lack of room (``err``, or ``detail`` when the writer
    hid the :class:`OSError`, as ``torch.save`` does); the old file is intact and no temporary file is left."""
    path = Path(path)
    code = err.errno if err is not None and err.errno is not None else errno.ENOSPC
    reason = detail or (err.strerror if err is not None and err.strerror else os.strerror(code))
    mount = _mount_point(path.parent)
    free = _free_text(path.parent)
    where = f"{path.parent} (the file system mounted at {mount}{', ' + free if free else ''})"
    kept = (f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written") + \
        " and no temporary file was left"
    hint = _root_hint(path)
    if err is None:  # the writer hid the error: a full disk, most likely, or a file-size limit
        return (f"writing {path} failed ({detail or 'a write that did not reach the disk'}): the disk holding "
                f"{where} is most likely full, or the file too large for it (`ulimit -f`); {kept}. Free space on "
                f"that disk or {hint}, and rerun.")
    if code == errno.EFBIG:
        return (f"{path} is too large for its file system ({reason}): {where} or a file-size limit (`ulimit -f`) "
                f"caps the size of one file; {kept}. Raise the limit or "
                f"{_root_hint(path, 'a file system that allows larger files')}, and rerun.")
    if code == errno.EDQUOT:
        return (f"the disk quota of {where} is exhausted ({reason}) while writing {path}; {kept}. Free space "
                f"within the quota or {hint}, and rerun.")
    return (f"the disk holding {where} is full ({reason}) while writing {path}; {kept}. Free space on that disk "
            f"or {hint}, and rerun.")


def _is_disk_full(err: OSError, folder: Path) -> bool:
    """``err`` is a full disk: an errno of :data:`DISK_FULL`, or a short write without errno (numpy's
    ``tofile``) while the disk is nearly full."""
    return err.errno in DISK_FULL or (err.errno is None and disk_nearly_full(folder))


def as_disk_full_error(path: Path, err: OSError | None = None, detail: str = "") -> DiskFullError:
    """A :class:`DiskFullError` for ``path`` (see :func:`disk_full_message`)."""
    code = err.errno if err is not None and err.errno in DISK_FULL else errno.ENOSPC
    out = DiskFullError(code, (err.strerror if err is not None and err.strerror else None) or os.strerror(code),
                        str(path))
    out.sentence = disk_full_message(path, err, detail)
    return out


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where ``/proc/self/status`` says it (Linux 4.7+); elsewhere
    set and restored under a lock (a file created meanwhile by another thread could get a wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Call ``write(handle)`` on a temporary sibling of ``path``, then ``os.replace`` it into place.

    A reader sees the old file or the complete new one; on any error the temporary file is removed. A full disk
    (or a file too large for its file system) is a :class:`DiskFullError` naming ``path`` and where it lies.
    ``fsync`` flushes the data to disk before the rename. The file gets mode ``0o666`` less the umask.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise as_disk_full_error(path, err) from err
        raise
    try:
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        except OSError:  # a file system without modes (some network or FUSE mounts): keep mkstemp's
            pass
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except DiskFullError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err, path.parent):
            raise as_disk_full_error(path, err) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    atomic_write(path, lambda handle: handle.write(data), fsync=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-ordered-as-given JSON, atomically."""
    text = json.dumps(obj, indent=2, allow_nan=True) + "\n"
    write_bytes_atomic(Path(path), text.encode("utf-8"))


def load_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file is a :class:`SamprefError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise SamprefError(f"{path} does not exist.") from err
    except json.JSONDecodeError as err:
        raise SamprefError(f"{path} is not valid JSON ({err}); fix or delete it and rerun.") from err


@contextmanager
def staged_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it to ``final`` only when the block succeeds.

    Yields the temporary folder. If the block raises, the temporary folder is removed and ``final`` is
    untouched. If ``final`` exists, it is replaced only when ``overwrite`` is true (the old folder is
    renamed away first and deleted after the new one is in place); otherwise a :class:`SamprefError`
    is raised before anything is written.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise SamprefError(
            f"{final} already exists. Pass --overwrite to replace it, or choose another dataset ID."
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging = final.parent / f".{final.name}.staging-{tag}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{tag}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
