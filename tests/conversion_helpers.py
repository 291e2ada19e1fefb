"""Helpers shared by the 3D conversion tests: source snapshots and raw-root cleanliness checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def raw_entries(raw: Path) -> list[str]:
    """Names in the raw root, hidden ones (e.g. staging folders) included; [] when it does not exist."""
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """Array ``(Z, Y, X)`` and the SimpleITK image of ``path``."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def write_like(path: Path, array: np.ndarray, like: sitk.Image) -> None:
    """Write ``array`` to ``path`` with the geometry of ``like``."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path), True)
