"""Atomic ``.npy`` writing and memory-mapped reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sampref_bench.utilities.atomic import atomic_write


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary sibling and ``os.replace`` so readers never see half an array."""
    atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """Load an ``.npy`` file, memory-mapped read-only by default."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
