"""Preprocessing: normalized, SAM-sized 2D slices (and labels, where a case has them) as memory-mappable arrays.

Per case, in the plan's data folder (``samprefPlans_2d/``):

- ``{case}.npy``: the images, shape ``(S, C, size, size)`` (``S`` slices, ``C`` source channels), values in
  [0, 1] stored as float16, or as uint8 scaled by 255 when the plan says so.
- ``{case}.json``: what the image path needs and nothing about labels: original shape and geometry, the
  slicing axis, the :class:`SliceTransform` to undo, the intensity bounds used, ``image_digest`` (SHA-256 of
  the stored image array, what image-embedding caches are keyed on) and ``slice_content`` (per slice, the
  share of pixels with a normalized intensity above :data:`CONTENT_LEVEL`; a label-free measure used to pick
  the slices of cases whose labels are hidden).
- ``{case}_seg.npy`` ``(S, size, size)`` uint8 and ``{case}_labels.json`` (``labels_per_slice``: the label
  values present in each slice), only for cases with a label file.

Images of ``imagesTrUnlabeled/`` (never labeled) go through the same transform and normalization into the same
folder, with ``{case}.npy`` and ``{case}.json`` (``has_label`` false) only; ``preprocessing.json`` lists them
under ``unlabeled_cases``.

Image and label files are separate so that whatever runs on images (prediction, embedding) cannot read
labels by accident: :class:`~sampref_bench.planners.data.LabelStore` is the only reader of the label files.
Which slices a run trains on is not decided here: trainers choose them from the per-case files and each
case's role, so a case can change role between runs without preprocessing again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sampref_bench.planners.fingerprint import raw_case_files, read_raw_image, unlabeled_case_files
from sampref_bench.planners.plans import CONTENT_LEVEL
from sampref_bench.planners.raw_record import RAW_FILES_KEY, raw_file_records
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.utilities.arrays import save_npy_atomic
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.imageio import read_image
from sampref_bench.utilities.oserrors import disk_full_error, disk_nearly_full
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


def image_to_slices(image: np.ndarray, axis: int | None) -> np.ndarray:
    """``(C, *spatial)`` -> ``(C, S, H, W)`` slices along ``axis`` (2D data, ``axis=None``: ``S == 1``)."""
    return image[:, None] if axis is None else np.moveaxis(image, axis + 1, 1)


def label_to_slices(label: np.ndarray, axis: int | None) -> np.ndarray:
    """``(*spatial)`` -> ``(S, H, W)`` slices along ``axis`` (2D data: ``S == 1``)."""
    return label[None] if axis is None else np.moveaxis(label, axis, 0)


def from_slices(slices: np.ndarray, axis: int | None) -> np.ndarray:
    """Inverse of :func:`label_to_slices` for a label stack: ``(S, H, W)`` -> the case's spatial array."""
    return slices[0] if axis is None else np.moveaxis(slices, 0, axis)


def slice_content(normalized_slices: np.ndarray) -> list[float]:
    """Per slice of ``(C, S, H, W)`` images in [0, 1]: share of pixels whose channel mean exceeds CONTENT_LEVEL."""
    mean = normalized_slices.mean(axis=0)
    return [round(float(v), 4) for v in (mean > CONTENT_LEVEL).mean(axis=(1, 2))]


def image_digest(stored: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of a stored image array (dtype, shape and bytes)."""
    hasher = hashlib.sha256(f"{stored.dtype.str}{stored.shape}".encode())
    hasher.update(np.ascontiguousarray(stored).tobytes())
    return hasher.hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """:func:`save_npy_atomic`; numpy reports a write cut short by a full disk as an OSError without errno
    ("65536 requested and 57216 written"), made the ``ENOSPC`` it is while the disk is still full."""
    try:
        save_npy_atomic(path, array)
    except OSError as err:
        if err.errno is None and disk_nearly_full(path.parent, array.nbytes):
            raise disk_full_error(path) from err
        raise


def preprocess_image(channel_files: list[Path], label_file: Path | None, plans: dict[str, Any], case: str,
                     out_dir: Path) -> dict[str, Any]:
    """Preprocess one case (its label only if ``label_file`` is given) into ``out_dir``; return its image meta.

    See the module docstring for the files written. The image side never reads ``label_file``.
    """
    image, info = read_raw_image(channel_files)
    normalized, bounds = normalize(image, plans)
    axis = plans["slicing_axis"]
    image_slices = image_to_slices(normalized, axis)
    n_channels, n_slices, height, width = image_slices.shape
    transform = SliceTransform.for_shape((height, width), plans["image_size"])
    size = plans["image_size"]
    flat = image_slices.reshape(n_channels * n_slices, height, width)
    images = transform.image(flat).reshape(n_channels, n_slices, size, size).transpose(1, 0, 2, 3)
    if plans["storage_dtype"] == "uint8":
        stored = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        stored = np.clip(images, 0.0, 1.0).astype(np.float16)
    _save_npy(out_dir / f"{case}.npy", stored)
    meta = {
        "case": case,
        "original_shape": [int(s) for s in image.shape[1:]],
        **info,
        "slicing_axis": axis,
        "n_slices": int(n_slices),
        "transform": transform.to_dict(),
        "intensity_bounds": bounds,
        "image_digest": image_digest(stored),
        "slice_content": slice_content(image_slices),
        "has_label": label_file is not None,
    }
    if label_file is not None:
        label, _ = read_image(label_file)
        label_slices = label_to_slices(label.astype(np.uint8), axis)
        _save_npy(out_dir / f"{case}_seg.npy", transform.label(label_slices))
        present = [sorted(int(v) for v in np.unique(s) if v != 0) for s in label_slices]
        write_json_atomic(out_dir / f"{case}_labels.json", {"case": case, "labels_per_slice": present})
    write_json_atomic(out_dir / f"{case}.json", meta)
    return meta


def preprocess_case(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], case: str,
                    out_dir: Path) -> dict[str, Any]:
    """Preprocess one case of ``raw_dir/imagesTr`` (with its label when ``labelsTr`` has one) into ``out_dir``."""
    channel_files, label_file = raw_case_files(raw_dir, dataset_json, case)
    return preprocess_image(channel_files, label_file if label_file.is_file() else None, plans, case, out_dir)


def preprocess_unlabeled_case(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], case: str,
                              out_dir: Path) -> dict[str, Any]:
    """Preprocess one image of ``raw_dir/imagesTrUnlabeled`` (it has no label) into ``out_dir``."""
    return preprocess_image(unlabeled_case_files(raw_dir, dataset_json, case), None, plans, case, out_dir)


def raw_files_of(raw_dir: Path, dataset_json: dict[str, Any], case: str, unlabeled: bool = False) -> list[Path]:
    """The raw files preprocessing reads for ``case``: its channel files, and its label file when it has one."""
    if unlabeled:
        return unlabeled_case_files(raw_dir, dataset_json, case)
    channel_files, label_file = raw_case_files(raw_dir, dataset_json, case)
    return [*channel_files, *([label_file] if label_file.is_file() else [])]


def _preprocess_job(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], case: str,
                    out_dir: Path, unlabeled: bool = False) -> dict[str, Any]:
    """Preprocess one case; the returned metadata also holds ``raw_files`` (see :mod:`.raw_record`), which
    ``{case}.json`` does not."""
    torch.set_num_threads(1)
    if unlabeled:
        meta = preprocess_unlabeled_case(raw_dir, dataset_json, plans, case, out_dir)
    else:
        meta = preprocess_case(raw_dir, dataset_json, plans, case, out_dir)
    return {**meta, RAW_FILES_KEY: raw_file_records(raw_dir, case, raw_files_of(raw_dir, dataset_json, case,
                                                                                  unlabeled))}


def preprocess_dataset(raw_dir: Path, dataset_json: dict[str, Any], plans: dict[str, Any], cases: list[str],
                       out_dir: Path, num_processes: int = 2, progress: bool = True,
                       unlabeled_cases: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Preprocess ``cases`` (``imagesTr``) and then ``unlabeled_cases`` (``imagesTrUnlabeled``) into ``out_dir``
    with ``num_processes`` workers; returns image metadata in that order (``cases`` first), each with the
    ``raw_files`` records of the case (:func:`~sampref_bench.planners.raw_record.raw_file_records`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(raw_dir, dataset_json, plans, case, out_dir, False) for case in cases]
    jobs += [(raw_dir, dataset_json, plans, case, out_dir, True) for case in unlabeled_cases]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-slice ops are small: waking a second intra-op thread costs more than it saves
    try:
        return map_with_progress(_preprocess_job, jobs, num_processes, "preprocess", progress)
    finally:
        torch.set_num_threads(threads)
