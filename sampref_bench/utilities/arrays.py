"""Atomic ``.npy`` writing and memory-mapped reading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary sibling and ``os.replace`` so readers never see half an array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """Load an ``.npy`` file, memory-mapped read-only by default."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
