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

Images that never had labels (``imagesTrUnlabeled/{case}_{XXXX}{ending}``) get a fingerprint of their own
(:func:`compute_unlabeled_fingerprint`): shape, spacing, channel count, source dtype and whole-image intensity
statistics per channel, nothing about labels. It is kept apart from the labeled fingerprint on purpose: the
plan (slicing axis, normalization, sizes) is made from the labeled cases alone, as nnU-Net does, so adding or
changing unlabeled images never changes the plan or its digest (finished runs stay valid), only the
preprocessed arrays.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import read_image
from sampref_bench.utilities.parallel import map_with_progress

#: Foreground voxels sampled per case and channel for the pooled intensity statistics.
SAMPLES_PER_CASE = 10_000
#: Version of what a fingerprint records; part of its inputs hash, so a change refingerprints old datasets.
#: 2: a case without foreground adds nothing to the intensity statistics.
FINGERPRINT_FORMAT = 2
#: Version of what an unlabeled-image fingerprint records; part of its inputs hash.
UNLABELED_FINGERPRINT_FORMAT = 1
#: The raw folder of training images that never had labels.
UNLABELED_FOLDER = "imagesTrUnlabeled"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


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


def unlabeled_case_files(raw_dir: Path, dataset_json: dict[str, Any], case: str) -> list[Path]:
    """Channel files ``imagesTrUnlabeled/{case}_{i:04d}{ending}`` of one image that never had a label."""
    ending = dataset_json["file_ending"]
    return [raw_dir / UNLABELED_FOLDER / f"{case}_{i:04d}{ending}" for i in range(len(dataset_json["channel_names"]))]


def list_unlabeled_cases(raw_dir: Path, dataset_json: dict[str, Any], labeled: Iterable[str] = ()) -> list[str]:
    """Sorted case names of ``raw_dir/imagesTrUnlabeled`` (``[]`` when the folder is absent or empty).

    Files not ending in the dataset's ``file_ending`` and hidden files are ignored (as in ``labelsTr``). Raises
    :class:`SamprefError` naming every file at fault when a file with that ending is not named
    ``CASE_XXXX{ending}``, a case lacks one of the channels dataset.json names or has more, or a case name is also
    a labeled case's (``labeled``; compared ignoring letter case, since both share the preprocessed folder).
    """
    folder = raw_dir / UNLABELED_FOLDER
    if not folder.is_dir():
        return []
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    found: dict[str, set[int]] = defaultdict(set)
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        match = _CHANNEL_RE.match(path.name[: -len(ending)])
        if match is None:
            problems.append(f"{path}: images must be named CASE_XXXX{ending} (XXXX = channel number)")
            continue
        found[match["case"]].add(int(match["channel"]))
    for case, channels in sorted(found.items()):
        missing = [i for i in range(n_channels) if i not in channels]
        extra = sorted(i for i in channels if i >= n_channels)
        if missing:
            problems.append(f"{folder / f'{case}_{missing[0]:04d}{ending}'}: missing; case {case} lacks channel(s) "
                            f"{missing} (dataset.json names {n_channels} channel(s))")
        if extra:
            problems.append(f"{folder / f'{case}_{extra[0]:04d}{ending}'}: case {case} has channel(s) {extra} but "
                            f"dataset.json names only {n_channels}; remove them or declare the channels")
    lowered = {case.lower(): case for case in labeled}
    for case in sorted(found):
        if case.lower() in lowered:
            problems.append(f"{folder / f'{case}_0000{ending}'}: case name {case!r} is also the labeled case "
                            f"{lowered[case.lower()]!r} in imagesTr; rename the unlabeled image")
    if problems:
        raise SamprefError(f"{folder} holds images the planner cannot use:\n" + "\n".join(f"  - {p}" for p in problems)
                           + f"\nFix them, or run `sampref_convert verify -d {raw_dir.name}` to list every problem.")
    return sorted(found)


def read_raw_image(channel_files: list[Path]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the channel files of one case: image ``(C, *spatial)`` (numpy order) and its geometry dict.

    The geometry holds ``spacing`` (numpy order, mm), ``spacing_xyz``, ``origin`` and ``direction`` in
    SimpleITK order, and the source ``dtype``. Channels whose shapes differ raise
    :class:`SamprefError` naming the file.
    """
    channels, geometry = [], None
    for path in channel_files:
        array, geo = read_image(path)
        if channels and array.shape != channels[0].shape:
            raise SamprefError(f"{path}: image shape {array.shape} differs from {channel_files[0].name}'s "
                               f"{channels[0].shape}; every channel of a case must have the same shape")
        geometry = geo
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


def _image_intensity(channel: np.ndarray) -> dict[str, float]:
    """Whole-image statistics of one channel ``(*spatial)``: mean, std, min, max, 0.5/99.5 percentiles."""
    values = channel.astype(np.float64).ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "p0_5": float(lo), "p99_5": float(hi)}


def fingerprint_unlabeled_case(raw_dir: Path, dataset_json: dict[str, Any], case: str) -> dict[str, Any]:
    """Fingerprint one image of ``imagesTrUnlabeled``: ``case``, ``shape`` (numpy order), ``spacing`` (mm, numpy
    order), ``n_channels``, ``dtype`` and ``image_intensity`` (per channel, over every voxel: there is no
    foreground to restrict to). An image whose dimensionality is not dataset.json's raises :class:`SamprefError`
    naming the file."""
    files = unlabeled_case_files(raw_dir, dataset_json, case)
    image, info = read_raw_image(files)
    dimensionality = int(dataset_json["dimensionality"])
    if image.ndim - 1 != dimensionality:
        raise SamprefError(f"{files[0]}: image has {image.ndim - 1} dimensions (shape {image.shape[1:]}) but "
                           f"dataset.json says dimensionality {dimensionality}; convert it like the labeled images "
                           "or remove it from imagesTrUnlabeled")
    return {"case": case, "shape": [int(s) for s in image.shape[1:]], "spacing": info["spacing"],
            "n_channels": int(image.shape[0]), "dtype": info["dtype"],
            "image_intensity": [_image_intensity(channel) for channel in image]}


def compute_unlabeled_fingerprint(raw_dir: Path, dataset_json: dict[str, Any], cases: list[str],
                                  num_processes: int = 2, progress: bool = True) -> dict[str, Any]:
    """Fingerprint the ``imagesTrUnlabeled`` images ``cases`` (see :func:`list_unlabeled_cases`) with
    ``num_processes`` workers: ``{"dataset_name", "dimensionality", "n_cases", "cases": [record, ...]}``, records
    as :func:`fingerprint_unlabeled_case` writes them, in ``cases`` order."""
    jobs = [(raw_dir, dataset_json, case) for case in cases]
    records = map_with_progress(fingerprint_unlabeled_case, jobs, num_processes, "fingerprint unlabeled", progress)
    return {"dataset_name": raw_dir.name, "dimensionality": int(dataset_json["dimensionality"]),
            "n_cases": len(cases), "cases": records}
