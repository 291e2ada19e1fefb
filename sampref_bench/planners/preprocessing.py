"""Preprocessing: normalized, SAM-sized 2D slices and labels stored as memory-mappable arrays.

For each case ``{case}.npy`` holds the images, shape ``(S, C, size, size)`` (``S`` slices, ``C`` source
channels, values in [0, 1] stored as float16, or as uint8 scaled by 255 when the plan says so);
``{case}_seg.npy`` holds the labels ``(S, size, size)`` uint8; ``{case}.json`` holds what is needed to
undo the transform (original shape and geometry, slicing axis, :class:`SliceTransform`) plus the slices
that enter training and the labels present in each slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sampref_bench.planners.fingerprint import case_seed, read_raw_case
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.utilities.arrays import save_npy_atomic
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.parallel import map_with_progress


def normalize(image: np.ndarray, plans: dict[str, Any]) -> tuple[np.ndarray, list[list[float]]]:
    """Scale a ``(C, *spatial)`` image to [0, 1] float32 as the plan says; also return the (lo, hi) used."""
    scheme = plans["normalization"]
    out = np.empty(image.shape, dtype=np.float32)
    bounds = []
    for c, channel in enumerate(image.astype(np.float32)):
        if scheme["scheme"] == "ct_dataset_clip":
            lo, hi = scheme["clip"][c]
        else:
            lo, hi = (float(v) for v in np.percentile(channel, scheme["percentiles"]))
        if hi <= lo:
            out[c] = 0.0
        else:
            out[c] = (np.clip(channel, lo, hi) - lo) / (hi - lo)
        bounds.append([float(lo), float(hi)])
    return out, bounds


def to_slices(image: np.ndarray, label: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(C, *spatial)``, ``(*spatial)`` -> ``(C, S, H, W)``, ``(S, H, W)`` (2D data: ``S == 1``)."""
    if axis is None:
        return image[:, None], label[None]
    return np.moveaxis(image, axis + 1, 1), np.moveaxis(label, axis, 0)


def from_slices(slices: np.ndarray, axis: int | None) -> np.ndarray:
    """Inverse of :func:`to_slices` for a label stack: ``(S, H, W)`` -> the case's spatial array."""
    return slices[0] if axis is None else np.moveaxis(slices, 0, axis)


def training_slices(label_slices: np.ndarray, share: float, case: str) -> list[int]:
    """Every slice with foreground plus a seeded ``share`` of the background slices (at least one if any)."""
    has_fg = label_slices.reshape(label_slices.shape[0], -1).any(axis=1)
    fg = np.flatnonzero(has_fg).tolist()
    bg = np.flatnonzero(~has_fg)
    if len(has_fg) == 1:
        return [0]
    n_bg = int(round(share * len(bg)))
    if share > 0 and len(bg) and n_bg == 0:
        n_bg = 1
    chosen = np.random.default_rng(case_seed(case, salt=1)).choice(bg, size=n_bg, replace=False) if n_bg else []
    return sorted(fg + [int(i) for i in chosen])


def preprocess_case(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], case: str,
                    out_dir: Path) -> dict[str, Any]:
    """Preprocess one case into ``out_dir`` and return its metadata (also written as ``{case}.json``)."""
    image, label, info = read_raw_case(raw_dir, dataset_json, case)
    normalized, bounds = normalize(image, plans)
    axis = plans["slicing_axis"]
    image_slices, label_slices = to_slices(normalized, label, axis)
    n_channels, n_slices, height, width = image_slices.shape
    transform = SliceTransform.for_shape((height, width), plans["image_size"])
    size = plans["image_size"]
    flat = image_slices.reshape(n_channels * n_slices, height, width)
    images = transform.image(flat).reshape(n_channels, n_slices, size, size).transpose(1, 0, 2, 3)
    labels = transform.label(label_slices)
    if plans["storage_dtype"] == "uint8":
        stored = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        stored = np.clip(images, 0.0, 1.0).astype(np.float16)
    save_npy_atomic(out_dir / f"{case}.npy", stored)
    save_npy_atomic(out_dir / f"{case}_seg.npy", labels)
    present = [sorted(int(v) for v in np.unique(s) if v != 0) for s in label_slices]
    meta = {
        "case": case,
        "original_shape": [int(s) for s in label.shape],
        **info,
        "slicing_axis": axis,
        "n_slices": int(n_slices),
        "transform": transform.to_dict(),
        "intensity_bounds": bounds,
        "train_slices": training_slices(label_slices, plans["background_slice_share"], case),
        "labels_per_slice": present,
    }
    write_json_atomic(out_dir / f"{case}.json", meta)
    return meta


def _preprocess_job(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], case: str,
                    out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    return preprocess_case(raw_dir, dataset_json, plans, case, out_dir)


def preprocess_dataset(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], cases: list[str],
                       out_dir: Path, num_processes: int = 2, progress: bool = True) -> list[dict[str, Any]]:
    """Preprocess ``cases`` into ``out_dir`` with ``num_processes`` workers; returns metadata in case order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(raw_dir, dataset_json, plans, case, out_dir) for case in cases]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-slice ops are small: waking a second intra-op thread costs more than it saves
    try:
        return map_with_progress(_preprocess_job, jobs, num_processes, "preprocess", progress)
    finally:
        torch.set_num_threads(threads)
