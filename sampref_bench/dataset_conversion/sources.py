"""Checks every converter makes of its source: folders that must exist, safe case names, one error for all."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sampref_bench.utilities.errors import SamprefError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_case_name(stem: str) -> str:
    """``stem`` with each character outside ``[A-Za-z0-9_-]`` replaced by ``_`` (``a b(1)`` -> ``a_b_1_``)."""
    return _UNSAFE.sub("_", stem)


def require_folder(folder: Path, what: str) -> Path:
    """Return ``folder`` if it is a directory, else raise :class:`SamprefError` naming ``what``."""
    folder = Path(folder)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise SamprefError(f"{what} {folder} {state}; check the path (the folder that holds the files).")
    return folder


def raise_problems(problems: Sequence[str], what: str) -> None:
    """Raise one :class:`SamprefError` listing every problem (one per line); do nothing when there is none."""
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise SamprefError(f"{len(problems)} problem(s) in {what}; nothing was written:\n{listing}")
