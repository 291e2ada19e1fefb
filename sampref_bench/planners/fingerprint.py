"""Dataset fingerprint: what the planner needs to know about every case, gathered once.

Per case (axes in numpy order: ``(H, W)`` for 2D, ``(Z, Y, X)`` for 3D; ``spacing`` in mm in the same
order): shape, spacing, channel count, source dtype, intensity statistics over a seeded sample of
foreground voxels per channel, voxel count, connected-object count and bounding-box extent (relative to
the image) per label, and, for 3D, the number of slices holding foreground along each axis. Dataset-wide:
pooled foreground intensity percentiles per channel (what CT normalization clips to), as nnU-Net does.

Only foreground voxels enter the intensity statistics, as in nnU-Net: a case without foreground has
``foreground_intensity`` ``[null, ...]`` (one ``null`` per channel) and adds no samples to the pooled
statistics. When no case has foreground the pooled entries hold ``null`` statistics with ``n_samples: 0``
(the planner then refuses the dataset: every label is empty).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sampref_bench.utilities.imageio import read_image
from sampref_bench.utilities.parallel import map_with_progress

#: Foreground voxels sampled per case and channel for the pooled intensity statistics.
SAMPLES_PER_CASE = 10_000
#: Version of what a fingerprint records; part of its inputs hash, so a change refingerprints old datasets.
#: 2: a case without foreground adds nothing to the intensity statistics.
FINGERPRINT_FORMAT = 2


def case_seed(case: str, salt: int = 0) -> int:
    """A seed that depends only on the case name (stable across processes, machines and orders)."""
    return (zlib.crc32(case.encode("utf-8")) + 7919 * salt) % (2**32)


def raw_case_files(raw_dir: Path, dataset_json: dict[str, Any], case: str) -> tuple[list[Path], Path]:
    """``(channel files, label file)`` of one raw case."""
    ending = dataset_json["file_ending"]
    channels = [raw_dir / "imagesTr" / f"{case}_{i:04d}{ending}" for i in range(len(dataset_json["channel_names"]))]
    return channels, raw_dir / "labelsTr" / f"{case}{ending}"


def list_raw_cases(raw_dir: Path, dataset_json: dict[str, Any]) -> list[str]:
    """Sorted names of the labeled cases of a raw dataset."""
    ending = dataset_json["file_ending"]
    return sorted(p.name[: -len(ending)] for p in (raw_dir / "labelsTr").iterdir()
                  if p.name.endswith(ending) and not p.name.startswith("."))


def read_raw_image(channel_files: list[Path]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the channel files of one case: image ``(C, *spatial)`` (numpy order) and its geometry dict.

    The geometry holds ``spacing`` (numpy order, mm), ``spacing_xyz``, ``origin`` and ``direction`` in
    SimpleITK order, and the source ``dtype``.
    """
    channels, geometry = [], None
    for path in channel_files:
        array, geometry = read_image(path)
        channels.append(array)
    assert geometry is not None
    info = {"spacing": [float(s) for s in reversed(geometry.spacing)], "spacing_xyz": list(geometry.spacing),
            "origin": list(geometry.origin), "direction": list(geometry.direction), "dtype": str(channels[0].dtype)}
    return np.stack(channels), info


def read_raw_case(raw_dir: Path, dataset_json: dict[str, Any], case: str
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one labeled case: image ``(C, *spatial)``, label ``(*spatial)`` uint8, geometry dict
    (see :func:`read_raw_image`)."""
    channel_files, label_file = raw_case_files(raw_dir, dataset_json, case)
    image, info = read_raw_image(channel_files)
    label, _ = read_image(label_file)
    return image, label.astype(np.uint8), info


def fingerprint_case(raw_dir: Path, dataset_json: dict[str, Any], case: str
                     ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Fingerprint one case; also return the sampled foreground intensities per channel (1D float64 arrays).

    A case without foreground returns empty sample arrays and ``foreground_intensity`` ``[None] * C``.
    """
    image, label, info = read_raw_case(raw_dir, dataset_json, case)
    foreground = label > 0
    rng = np.random.default_rng(case_seed(case))
    samples: list[np.ndarray] = []
    intensity: list[dict[str, float] | None] = []
    for channel in image:
        if not foreground.any():
            samples.append(np.empty(0, dtype=np.float64))
            intensity.append(None)
            continue
        values = channel[foreground].astype(np.float64)
        take = rng.choice(values.size, size=min(values.size, SAMPLES_PER_CASE), replace=False)
        samples.append(values[take])
        lo, hi = np.percentile(values, [0.5, 99.5])
        intensity.append({"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                          "max": float(values.max()), "p0_5": float(lo), "p99_5": float(hi)})
    labels: dict[str, dict[str, Any]] = {}
    for name, value in dataset_json["labels"].items():
        if value == 0:
            continue
        mask = label == value
        count = int(mask.sum())
        entry: dict[str, Any] = {"voxels": count, "objects": 0, "bbox_fraction": [0.0] * label.ndim}
        if count:
            _, entry["objects"] = ndimage.label(mask)
            entry["objects"] = int(entry["objects"])
            coords = np.nonzero(mask)
            entry["bbox_fraction"] = [float((c.max() - c.min() + 1) / n) for c, n in zip(coords, mask.shape)]
        labels[name] = entry
    record: dict[str, Any] = {
        "case": case,
        "shape": [int(s) for s in label.shape],
        "spacing": info["spacing"],
        "n_channels": int(image.shape[0]),
        "dtype": info["dtype"],
        "foreground_intensity": intensity,
        "labels": labels,
    }
    if label.ndim == 3:
        record["foreground_slices_per_axis"] = [
            int(foreground.any(axis=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3)
        ]
    return record, samples


def compute_fingerprint(raw_dir: Path, dataset_json: dict[str, Any], num_processes: int = 2,
                        progress: bool = True) -> dict[str, Any]:
    """Fingerprint every labeled case of ``raw_dir`` (``num_processes`` workers, progress bar on stderr)."""
    cases = list_raw_cases(raw_dir, dataset_json)
    jobs = [(raw_dir, dataset_json, case) for case in cases]
    results = map_with_progress(fingerprint_case, jobs, num_processes, "fingerprint", progress)
    n_channels = len(dataset_json["channel_names"])
    pooled = []
    for channel in range(n_channels):
        values = np.concatenate([samples[channel] for _, samples in results])
        if values.size == 0:
            pooled.append({"p0_5": None, "median": None, "p99_5": None, "mean": None, "std": None, "n_samples": 0})
            continue
        lo, median, hi = np.percentile(values, [0.5, 50.0, 99.5])
        pooled.append({"p0_5": float(lo), "median": float(median), "p99_5": float(hi),
                       "mean": float(values.mean()), "std": float(values.std()), "n_samples": int(values.size)})
    return {
        "dataset_name": raw_dir.name,
        "dimensionality": int(dataset_json["dimensionality"]),
        "n_cases": len(cases),
        "foreground_intensity_per_channel": pooled,
        "cases": [record for record, _ in results],
    }
