"""Atomic writes: a reader sees either the old file (or folder) or the complete new one, never half of it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sampref_bench.utilities.errors import SamprefError


def atomic_write(path: Path, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Call ``write(handle)`` on a temporary sibling of ``path``, then ``os.replace`` it into place.

    A reader sees the old file or the complete new one; on any error the temporary file is removed.
    ``fsync`` flushes the data to disk before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
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
