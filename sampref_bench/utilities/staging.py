"""Staging folders that know their owner, and the removal of those a killed process left behind.

:func:`~sampref_bench.utilities.atomic.staged_directory` builds a folder in a hidden sibling
``.{name}.staging-{tag}`` and renames it into place; a process killed with ``kill -9`` (or a power cut) leaves
that sibling behind, and, when it died between the two renames of an overwrite, the renamed-away old folder
``.{name}.old-{tag}``. :func:`owned_staged_directory` records the owner (PID, host, start time) in the staging
folder as :data:`OWNER_FILE` and removes the record just before the folder is published, and every later call
first runs :func:`remove_stale_staging` on the same parent folder, which removes (and says so on stderr):

- a staging folder whose owner ran on this host and is no longer running;
- a staging folder older than :data:`STALE_AFTER_S` (an owner on another host, or a reused PID);
- a staging folder without an owner record (left by an older sampref) untouched for :data:`OWNERLESS_STALE_S`;
- an ``.old-`` folder whose final folder exists (the swap finished; only its deletion was cut short). An
  ``.old-`` folder without its final folder (the swap was cut between its renames) is renamed back into place
  after :data:`OWNERLESS_STALE_S`, so the previous complete version returns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sampref_bench.utilities.atomic import staged_directory

#: The owner record inside a staging folder (hidden, and without ``.json`` so no ``*.json`` listing sees it).
OWNER_FILE = ".sampref-owner"
#: A staging folder older than this is stale whoever owns it (an owner on another host, a reused PID).
STALE_AFTER_S = 2 * 24 * 3600.0
#: A staging folder without an owner record, or an interrupted ``.old-`` folder, untouched this long is stale.
OWNERLESS_STALE_S = 3600.0
_STAGED_RE = re.compile(r"^\.(?P<final>.+)\.(?P<kind>staging|old)-(?P<tag>[0-9a-f]{8})$")


def record_owner(staging: Path) -> None:
    """Write :data:`OWNER_FILE` into ``staging``: this process's PID, host name and the time."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
    (Path(staging) / OWNER_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def release_owner(staging: Path) -> None:
    """Remove the owner record of ``staging`` (before it is published)."""
    (Path(staging) / OWNER_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _size_mb(folder: Path) -> float:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            pass
    return total / 1e6


def _staging_verdict(folder: Path, now: float) -> str | None:
    """Why the staging folder ``folder`` is stale, or ``None`` while its owner may still be writing it."""
    owner = folder / OWNER_FILE
    try:
        record = json.loads(owner.read_text(encoding="utf-8"))
        pid, host, created = int(record["pid"]), str(record["host"]), float(record["created"])
    except (OSError, ValueError, KeyError, TypeError):
        age = now - folder.stat().st_mtime
        if age > OWNERLESS_STALE_S:
            return f"no owner record, untouched for {age / 3600:.1f} h"
        return None
    if host == socket.gethostname() and pid != os.getpid() and not pid_alive(pid):
        return f"left by process {pid}, which is no longer running"
    if now - created > STALE_AFTER_S:
        return f"started {(now - created) / 3600:.0f} h ago by process {pid} on {host}"
    return None


def remove_stale_staging(parent: Path, now: float | None = None) -> list[Path]:
    """Remove the stale staging and ``.old-`` folders in ``parent`` (see the module docstring); returns them.

    Each removal is reported on stderr with its size and reason. A folder that cannot be removed is left and
    reported too; nothing here raises.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    now = time.time() if now is None else now
    removed: list[Path] = []
    for folder in sorted(parent.iterdir()):
        match = _STAGED_RE.match(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        final = parent / match["final"]
        try:
            if match["kind"] == "staging":
                reason = _staging_verdict(folder, now)
                action = "removed"
            elif final.exists():
                reason, action = f"the swap into {final.name} had finished", "removed"
            elif now - folder.stat().st_ctime > OWNERLESS_STALE_S:  # ctime: when it was renamed away
                reason, action = f"{final.name} was missing: a swap was cut short", "restored"
            else:
                reason = None
        except OSError:
            continue  # removed meanwhile by its owner
        if reason is None:
            continue
        size = _size_mb(folder)
        if action == "restored":
            try:
                os.replace(folder, final)
            except OSError as err:
                print(f"sampref: cannot restore {folder} as {final} ({err.strerror}); rename it by hand",
                      file=sys.stderr)
                continue
            print(f"sampref: restored {final} from the interrupted swap {folder.name} ({reason})", file=sys.stderr)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            print(f"sampref: cannot remove the stale staging folder {folder} ({size:.1f} MB, {reason}); remove it "
                  "by hand", file=sys.stderr)
            continue
        print(f"sampref: removed the stale staging folder {folder} ({size:.1f} MB, {reason})", file=sys.stderr)
        removed.append(folder)
    return removed


@contextmanager
def owned_staged_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """:func:`~sampref_bench.utilities.atomic.staged_directory` that first removes stale staging beside
    ``final`` and records this process as the owner of its own staging folder until the block succeeds."""
    final = Path(final)
    remove_stale_staging(final.parent)
    with staged_directory(final, overwrite=overwrite) as stage:
        record_owner(stage)
        yield stage
        release_owner(stage)
