"""Checking a raw dataset: every problem at once, each naming its file.

``verify_raw_dataset(folder)`` reads every case of ``imagesTr``/``labelsTr`` and reports: an image without a
label or a label without an image, a missing channel, files with the wrong ending, duplicate case names
(names that differ only in letter case), unreadable files, images whose shape, dimensionality or spacing
differs from their label or other channels, label values not declared in dataset.json, NaN/Inf
intensities, a ``numTraining`` that does not match, and ``case_groups`` naming unknown cases. Images
without labels (``imagesTrUnlabeled/``, ``imagesTs/``) are checked for their channel count,
dimensionality, shape and spacing agreeing across a case's channels, and NaN/Inf; an ``imagesTrUnlabeled``
case must not share its name (ignoring letter case) with a labeled case, since the planner preprocesses both
into one folder. It also collects per-label statistics for the report.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sampref_bench.dataset_conversion.dataset_json import load_dataset_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import Geometry, has_nonfinite, read_image, split_ending

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Problem:
    """One finding: the file (or folder) at fault and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    """Result of :func:`verify_raw_dataset`.

    ``label_cases[name]`` counts cases containing that label, ``label_voxels[name]`` its voxels (pixels).
    """

    folder: Path
    n_cases: int = 0
    n_unlabeled: int = 0
    n_test: int = 0
    problems: list[Problem] = field(default_factory=list)
    label_cases: dict[str, int] = field(default_factory=dict)
    label_voxels: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format_problems(self) -> str:
        """One problem per line."""
        return "\n".join(f"  - {p}" for p in self.problems)

    def summary(self) -> str:
        """Human-readable report: counts, label statistics and problems."""
        lines = [f"{self.folder}: {self.n_cases} labeled case(s), {self.n_unlabeled} unlabeled image(s)"
                 + (f", {self.n_test} test image(s)" if self.n_test else "")]
        for name, count in self.label_cases.items():
            lines.append(f"  label {name!r}: present in {count}/{self.n_cases} case(s), "
                         f"{self.label_voxels.get(name, 0)} voxels in all")
        if self.shapes:
            dims = np.array(list(self.shapes.values()))
            lines.append(f"  image shape min {tuple(int(x) for x in dims.min(0))}, "
                         f"max {tuple(int(x) for x in dims.max(0))}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.append(self.format_problems())
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _scan_channels(folder: Path, ending: str, report: VerifyReport) -> dict[str, dict[int, Path]]:
    """Map case -> channel index -> file for ``{case}_{XXXX}{ending}`` files in ``folder``."""
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    if not folder.is_dir():
        return cases
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem, found = split_ending(path)
        match = _CHANNEL_RE.match(stem)
        if found.lower() != ending or match is None:
            report.problems.append(Problem(str(path), f"unexpected file: images must be named "
                                                      f"CASE_XXXX{ending} (XXXX = channel number)"))
            continue
        cases[match["case"]][int(match["channel"])] = path
    return cases


def _check_array(path: Path, array: np.ndarray, report: VerifyReport) -> None:
    if has_nonfinite(path, array):
        report.problems.append(Problem(str(path), "contains NaN or Inf intensities; replace them (e.g. by the "
                                                  "minimum intensity) before converting"))


def _readable_channels(channels: dict[int, Path], report: VerifyReport) -> Iterator[tuple[Path, np.ndarray, Geometry]]:
    """``(path, image, geometry)`` of each channel file in index order, after :func:`_check_array`; a file
    that cannot be read is recorded as a :class:`Problem` and skipped. Images are ``(H, W)`` or ``(Z, Y, X)``."""
    for _index, path in sorted(channels.items()):
        try:
            image, geo = read_image(path)
        except SamprefError as err:
            report.problems.append(Problem(str(path), str(err)))
            continue
        _check_array(path, image, report)
        yield path, image, geo


@dataclass
class _Listing:
    """What :func:`_check_listing` found: dataset.json, channel files per case, label files, paired cases."""

    meta: dict
    images: dict[str, dict[int, Path]]
    labels: dict[str, Path]
    paired: list[str]


def _check_listing(folder: Path) -> tuple[VerifyReport, _Listing | None]:
    """The checks that read no image: dataset.json, file names and endings in ``imagesTr``/``labelsTr``,
    images without labels and labels without images, missing channels, duplicate names, ``numTraining``.
    The listing is ``None`` when dataset.json cannot be read."""
    report = VerifyReport(folder)
    try:
        meta = load_dataset_json(folder)
    except SamprefError as err:
        report.problems.append(Problem(str(folder / "dataset.json"), str(err)))
        return report, None
    ending = meta["file_ending"]
    n_channels = len(meta["channel_names"])
    report.label_cases = {k: 0 for k, v in meta["labels"].items() if v != 0}
    report.label_voxels = dict.fromkeys(report.label_cases, 0)

    images = _scan_channels(folder / "imagesTr", ending, report)
    labels: dict[str, Path] = {}
    label_dir = folder / "labelsTr"
    if not label_dir.is_dir():
        report.problems.append(Problem(str(label_dir), "folder is missing"))
    else:
        for path in sorted(label_dir.iterdir()):
            if path.name.startswith("."):
                continue
            stem, found = split_ending(path)
            if found.lower() != ending:
                report.problems.append(Problem(str(path), f"unexpected file: labels must be named CASE{ending}"))
                continue
            labels[stem] = path

    lowered: dict[str, list[str]] = defaultdict(list)
    for case in set(images) | set(labels):
        lowered[case.lower()].append(case)
    for group in lowered.values():
        if len(group) > 1:
            report.problems.append(Problem(str(folder), f"duplicate case names {sorted(group)} differ only in "
                                                        "letter case; rename one"))

    for case in sorted(set(labels) - set(images)):
        report.problems.append(Problem(str(labels[case]), f"label without image: imagesTr/{case}_0000{ending} "
                                                          "is missing; add the image or remove the label"))
    for case in sorted(set(images) - set(labels)):
        report.problems.append(Problem(str(images[case][min(images[case])]),
                                       f"image without label: labelsTr/{case}{ending} is missing; add the label "
                                       "or move the image to imagesTrUnlabeled/"))

    paired = sorted(set(images) & set(labels))
    report.n_cases = len(paired)
    if meta["numTraining"] != len(paired):
        report.problems.append(Problem(str(folder / "dataset.json"), f"numTraining is {meta['numTraining']} but "
                                                                      f"{len(paired)} labeled case(s) were found"))
    for case in paired:
        missing = [i for i in range(n_channels) if i not in images[case]]
        if missing:
            report.problems.append(Problem(str(folder / "imagesTr"), f"case {case} lacks channel(s) {missing}"))
    return report, _Listing(meta, images, labels, paired)


def verify_raw_listing(folder: Path) -> VerifyReport:
    """The checks of :func:`verify_raw_dataset` that read no image (see :func:`_check_listing`); cheap enough for
    ``sampref_plan`` to run every time. ``imagesTrUnlabeled``/``imagesTs`` are not looked at."""
    return _check_listing(Path(folder))[0]


def verify_raw_dataset(folder: Path, progress: bool = False) -> VerifyReport:
    """Verify a raw dataset folder and return a :class:`VerifyReport` listing every problem found."""
    folder = Path(folder)
    report, listing = _check_listing(folder)
    if listing is None:
        return report
    meta, images, labels, paired = listing.meta, listing.images, listing.labels, listing.paired
    ending = meta["file_ending"]
    n_channels = len(meta["channel_names"])
    label_names = {v: k for k, v in meta["labels"].items()}
    for case in tqdm(paired, desc="verify", unit="case", disable=not progress):
        _verify_case(case, images[case], labels[case], meta["dimensionality"], label_names, report)

    unlabeled = _scan_channels(folder / "imagesTrUnlabeled", ending, report)
    report.n_unlabeled = len(unlabeled)
    labeled_names = {case.lower(): case for case in sorted(set(images) | set(labels))}
    for case, channels in sorted(unlabeled.items()):
        if case.lower() in labeled_names:
            report.problems.append(Problem(str(channels[min(channels)]),
                                           f"case name {case!r} is also the labeled case "
                                           f"{labeled_names[case.lower()]!r}; rename the unlabeled image"))
        _verify_image_only(folder / "imagesTrUnlabeled", case, channels, n_channels, meta["dimensionality"], report)
    test = _scan_channels(folder / "imagesTs", ending, report)
    report.n_test = len(test)
    for case, channels in sorted(test.items()):
        _verify_image_only(folder / "imagesTs", case, channels, n_channels, meta["dimensionality"], report)

    groups = meta.get("case_groups") or {}
    unknown = sorted(set(groups) - set(paired) - set(unlabeled))
    if unknown:
        report.problems.append(Problem(str(folder / "dataset.json"),
                                       f"case_groups names unknown case(s) {unknown[:5]}"
                                       + (" ..." if len(unknown) > 5 else "")))
    return report


def _verify_case(case: str, channels: dict[int, Path], label_path: Path, dimensionality: int,
                 label_names: dict[int, str], report: VerifyReport) -> None:
    try:
        label, label_geo = read_image(label_path)
    except SamprefError as err:
        report.problems.append(Problem(str(label_path), str(err)))
        return
    if label.ndim != dimensionality:
        report.problems.append(Problem(str(label_path), f"label has {label.ndim} dimensions but dataset.json "
                                                        f"says dimensionality {dimensionality}"))
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        report.problems.append(Problem(str(label_path), "label holds non-integer values"))
    values = np.unique(label)
    undeclared = [int(v) for v in values if int(v) not in label_names]
    if undeclared:
        report.problems.append(Problem(str(label_path), f"label values {undeclared} are not declared in "
                                                        "dataset.json 'labels'; map them (e.g. --label-map 255:1) "
                                                        "or declare them"))
    for value in values:
        name = label_names.get(int(value))
        if name is not None and int(value) != 0:
            report.label_cases[name] += 1
            report.label_voxels[name] += int((label == value).sum())
    report.shapes[case] = tuple(label.shape)
    for path, image, geo in _readable_channels(channels, report):
        if image.shape != label.shape:
            report.problems.append(Problem(str(path), f"image shape {image.shape} differs from label shape "
                                                      f"{label.shape} ({label_path.name})"))
        elif not np.allclose(geo.spacing, label_geo.spacing, rtol=1e-5, atol=1e-6):
            report.problems.append(Problem(str(path), f"spacing {geo.spacing} differs from the label's "
                                                      f"{label_geo.spacing}"))


def _verify_image_only(folder: Path, case: str, channels: dict[int, Path], n_channels: int, dimensionality: int,
                       report: VerifyReport) -> None:
    """Check a case without label (``imagesTrUnlabeled``/``imagesTs``): channel files ``0..n_channels-1``,
    each with ``dimensionality`` axes, finite values, and the shape and spacing of channel 0."""
    missing = [i for i in range(n_channels) if i not in channels]
    extra = sorted(i for i in channels if i >= n_channels)
    if missing:
        report.problems.append(Problem(str(folder), f"case {case} lacks channel(s) {missing}; dataset.json "
                                                    f"names {n_channels} channel(s)"))
    if extra:
        report.problems.append(Problem(str(channels[extra[0]]), f"case {case} has channel(s) {extra} but "
                                                                f"dataset.json names only {n_channels}"))
    first: tuple[Path, np.ndarray, Geometry] | None = None
    for path, image, geo in _readable_channels(channels, report):
        if image.ndim != dimensionality:
            report.problems.append(Problem(str(path), f"image has {image.ndim} dimensions but dataset.json says "
                                                      f"dimensionality {dimensionality}"))
            continue
        if first is None:
            first = (path, image, geo)
        elif image.shape != first[1].shape:
            report.problems.append(Problem(str(path), f"image shape {image.shape} differs from {first[0].name}'s "
                                                      f"{first[1].shape}"))
        elif not np.allclose(geo.spacing, first[2].spacing, rtol=1e-5, atol=1e-6):
            report.problems.append(Problem(str(path), f"spacing {geo.spacing} differs from {first[0].name}'s "
                                                      f"{first[2].spacing}"))
