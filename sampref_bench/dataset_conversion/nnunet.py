"""Importing an nnU-Net v2 raw dataset (``DatasetXXX_Name``) into sampref's raw format.

Source layout (nnU-Net v2): ``dataset.json`` with ``channel_names`` {"0": "CT", "1": "T2", ...},
``labels`` {name: value} holding ``"background": 0``, ``numTraining`` and ``file_ending``;
``imagesTr/{case}_{XXXX}{ending}`` (XXXX = 4-digit channel index), ``labelsTr/{case}{ending}`` and
optionally ``imagesTs/{case}_{XXXX}{ending}`` (images only). A ``dataset`` entry in dataset.json
({case: {"images": [one file per channel], "label": file}}, paths relative to the dataset folder unless
absolute, ``$VARS`` expanded) replaces the scan of ``imagesTr/`` and ``labelsTr/``, as in nnU-Net.

Conversion:

- Every channel file is one channel, in index order; a file with vector pixels (an RGB PNG, which
  nnU-Net's natural-image reader reads as three channels) gives one channel per component. The channel
  total must equal the number of ``channel_names``, which are kept, as are ``labels`` (name -> value) and
  ``name``/``description``/``license`` (or nnU-Net's ``licence``)/``reference``. ``target_text`` comes from
  the label names (``_`` as spaces), or is kept when the source is itself a sampref dataset, as is its
  ``case_groups``.
- 2D or 3D follows the images (the dimension of their files). 3D datasets are written as ``.nii.gz``;
  2D datasets as ``.png`` when PNG loses nothing (8- or 16-bit unsigned pixels, spacing 1, origin 0,
  identity direction), else as 2D ``.nii.gz``. Intensities keep their values and dtype; spacing, origin
  and direction are kept. A label must match its images' shape and spacing; a label whose origin or
  direction differs gets its images' geometry (noted in ``conversion.json``).
- 3D TIFFs take their spacing from nnU-Net's sidecar ``{file stem}.json`` (``{"spacing": [z, y, x]}``);
  without one, spacing 1 mm as nnU-Net assumes.
- ``imagesTs/`` is kept as ``imagesTs/``; ``imagesTrUnlabeled/`` (present when the source is a sampref
  dataset) is kept too. ``labelsTs/`` (not part of nnU-Net's layout) is not imported; it is noted.

Refused with a :class:`SamprefError` naming the file and the fix, before anything is written:
region-based labels (a label whose value is a list, or a ``regions_class_order`` key), nnU-Net's
``ignore`` label, label values outside 0..255, an unknown ``file_ending``, missing or extra channel files,
a label without images or images without a label, a ``numTraining`` that differs from the cases found,
images mixing 2D and 3D, shapes or spacings that disagree within a case, unreadable files and label files
holding undeclared values. The source folder is only ever read.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sampref_bench.dataset_conversion.nifti import check_finite, check_label_values
from sampref_bench.dataset_conversion.sources import raise_problems, require_folder, safe_case_name
from sampref_bench.dataset_conversion.verify import VerifyReport
from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import IMAGE_2D_ENDINGS, VOLUME_ENDINGS, Geometry, read_sitk, split_ending

#: nnU-Net ``file_ending`` values this converter reads (the endings sampref's imageio handles).
SUPPORTED_ENDINGS = VOLUME_ENDINGS + IMAGE_2D_ENDINGS
_DATASET_RE = re.compile(r"^Dataset\d{3}_(?P<name>.+)$")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_PNG_PIXELS = {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkVectorUInt8, sitk.sitkVectorUInt16}
_REGION_FIX = ("sampref needs one integer value per label (SAM segments one label map value at a time). "
               "Convert the regions to plain labels first: give every label in dataset.json 'labels' a single "
               "integer (e.g. {\"background\": 0, \"edema\": 1, \"non_enhancing\": 2, \"enhancing\": 3}), remove "
               "'regions_class_order', and make the label files hold those values")


@dataclass
class _File:
    """Header of one image file: dimension, size ``(x, y[, z])``, components per pixel, pixel type, geometry."""

    path: Path
    dimension: int
    size: tuple[int, ...]
    components: int
    pixel_id: int
    geometry: Geometry


@dataclass
class _Case:
    """One source case: output name, channel files in order, optional label file, and their headers."""

    name: str
    source_id: str
    images: list[Path]
    label: Path | None = None
    headers: list[_File] = field(default_factory=list)
    label_header: _File | None = None


def default_name(source: Path) -> str:
    """The dataset name of an nnU-Net folder: the part after ``DatasetXXX_`` (``Dataset004_Hippocampus`` ->
    ``Hippocampus``), else the folder name."""
    match = _DATASET_RE.match(Path(source).name)
    return match["name"] if match else Path(source).name


# ----------------------------------------------------------------------------------------------------------
# dataset.json
# ----------------------------------------------------------------------------------------------------------


def read_nnunet_json(source: Path) -> dict[str, Any]:
    """Load ``source/dataset.json`` and check what the import needs; raise :class:`SamprefError` otherwise.

    Checks ``channel_names`` (keys ``"0" .. "C-1"``), ``labels`` (plain integers 0..255 with
    ``background: 0``; region-based and ``ignore`` labels refused), ``numTraining`` and ``file_ending``.
    """
    path = Path(source) / "dataset.json"
    if not path.is_file():
        raise SamprefError(f"{path} does not exist; an nnU-Net v2 raw dataset folder (DatasetXXX_Name) holds "
                           "dataset.json, imagesTr/ and labelsTr/. Pass that folder itself.")
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise SamprefError(f"{path} must hold a JSON object, not {type(meta).__name__}.")
    if "channel_names" not in meta and "modality" in meta:
        raise SamprefError(f"{path} has 'modality' but no 'channel_names': this is an nnU-Net v1 or MSD "
                           "dataset.json. Convert an MSD task with `sampref_convert msd`, or an nnU-Net v1 task "
                           "with `nnUNetv2_convert_old_nnUNet_dataset` first.")
    _check_regions(meta, path)
    problems = []
    channels = meta.get("channel_names")
    if not isinstance(channels, dict) or not channels or sorted(channels, key=str) != sorted(
            str(i) for i in range(len(channels))):
        problems.append("'channel_names' must map \"0\", \"1\", ... (no gaps) to channel names such as \"CT\"")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        problems.append("'labels' must map label names to integer values and hold \"background\": 0")
    else:
        bad = {k: v for k, v in labels.items()
               if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255}
        if bad:
            problems.append(f"label values {bad} are not integers in 0..255 (sampref stores labels as 8-bit); "
                            "renumber the labels and their files")
        if len(set(labels.values())) != len(labels):
            problems.append(f"two label names share one value in {labels}")
        if len(labels) < 2:
            problems.append("'labels' needs at least one foreground label besides background")
    count = meta.get("numTraining")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        problems.append(f"'numTraining' must be the number of training cases, got {count!r}")
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or ending.lower() not in SUPPORTED_ENDINGS:
        hint = " (.gipl: re-save the images as .nii.gz first)" if ending == ".gipl" else ""
        problems.append(f"'file_ending' {ending!r} is not one sampref reads; use one of "
                        f"{', '.join(SUPPORTED_ENDINGS)}{hint}")
    if problems:
        raise SamprefError(f"{path}: " + "; ".join(problems) + ".")
    return meta


def _check_regions(meta: dict[str, Any], path: Path) -> None:
    """Refuse region-based label definitions and nnU-Net's ``ignore`` label."""
    labels = meta.get("labels")
    regions = {k: v for k, v in labels.items() if isinstance(v, list | tuple)} if isinstance(labels, dict) else {}
    if regions or "regions_class_order" in meta:
        what = (f"labels {regions} are regions (lists of values)" if regions
                else "it holds 'regions_class_order'")
        raise SamprefError(f"{path}: {what}: this is an nnU-Net region-based dataset. {_REGION_FIX}.")
    if isinstance(labels, dict) and "ignore" in labels:
        raise SamprefError(f"{path}: label 'ignore' (value {labels['ignore']}) marks unannotated pixels "
                           "(nnU-Net's sparse annotation); sampref needs dense labels. Set those pixels to "
                           "background or to a real label in the label files and remove 'ignore' from "
                           "dataset.json 'labels'.")


def _target_text(meta: dict[str, Any], labels: dict[str, int]) -> dict[str, str]:
    """A sampref source's ``target_text`` when it covers every label, else label names with ``_`` as spaces."""
    given = meta.get("target_text")
    if isinstance(given, dict) and all(isinstance(given.get(k), str) for k, v in labels.items() if v != 0):
        return {k: given[k] for k, v in labels.items() if v != 0}
    return {k: " ".join(k.replace("_", " ").split()) for k, v in labels.items() if v != 0}


# ----------------------------------------------------------------------------------------------------------
# listing cases
# ----------------------------------------------------------------------------------------------------------


def _scan_channels(folder: Path, ending: str, problems: list[str], strays: list[Path]
                   ) -> dict[str, dict[int, Path]]:
    """``{case: {channel index: file}}`` of the ``{case}_{XXXX}{ending}`` files in ``folder``.

    Hidden files and non-image files (such as TIFF spacing sidecars) are skipped; image files with
    another ending are collected in ``strays``.
    """
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not path.name.endswith(ending):
            if split_ending(path)[1]:
                strays.append(path)
            continue
        stem = path.name[: -len(ending)]
        match = _CHANNEL_RE.match(stem)
        if match is None:
            problems.append(f"{path}: image files must be named CASE_XXXX{ending} with a 4-digit channel index "
                            f"(e.g. {stem}_0000{ending}); rename it")
            continue
        found[match["case"]][int(match["channel"])] = path
    return found


def _ordered_channels(folder: Path, case: str, files: dict[int, Path], ending: str, problems: list[str]
                      ) -> list[Path]:
    """The channel files of ``case`` in index order; a gap in the numbering is a problem naming the file."""
    missing = [i for i in range(max(files) + 1) if i not in files]
    for index in missing:
        problems.append(f"{folder / f'{case}_{index:04d}{ending}'}: channel file missing (case {case} has "
                        f"{', '.join(files[i].name for i in sorted(files))}); add it or renumber the channels "
                        "0000, 0001, ... without gaps")
    return [files[i] for i in sorted(files)]


def _resolve(source: Path, text: str) -> Path:
    """A path from dataset.json's ``dataset`` entry: ``$VARS`` expanded, relative to ``source``."""
    path = Path(os.path.expandvars(text))
    return path if path.is_absolute() else source / path


def _listed_cases(source: Path, meta: dict[str, Any], problems: list[str]) -> list[_Case]:
    """Training cases from dataset.json's explicit ``dataset`` entry."""
    json_path = source / "dataset.json"
    entries = meta["dataset"]
    if not isinstance(entries, dict):
        problems.append(f"{json_path}: 'dataset' must map case names to {{\"images\": [...], \"label\": ...}}")
        return []
    cases = []
    for case, entry in entries.items():
        images = entry.get("images") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if (not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images)
                or not isinstance(label, str)):
            problems.append(f"{json_path}: 'dataset' entry {case!r} needs 'images' (a list of files, one per "
                            "channel file) and 'label' (one file)")
            continue
        item = _Case(safe_case_name(str(case)), str(case), [_resolve(source, p) for p in images],
                     _resolve(source, label))
        for path in [*item.images, item.label]:
            if not path.is_file():
                problems.append(f"{path}: listed for case {case!r} in {json_path} 'dataset' but does not "
                                "exist; add the file or fix the path")
        cases.append(item)
    return cases


def _scanned_cases(source: Path, ending: str, problems: list[str], strays: list[Path]) -> list[_Case]:
    """Training cases from ``imagesTr/`` and ``labelsTr/``, paired by case name."""
    images_dir, labels_dir = source / "imagesTr", source / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            problems.append(f"{folder}: folder is missing; an nnU-Net raw dataset holds imagesTr/ and labelsTr/")
    if problems:
        return []
    images = _scan_channels(images_dir, ending, problems, strays)
    labels: dict[str, Path] = {}
    for path in sorted(labels_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.name.endswith(ending):
            labels[path.name[: -len(ending)]] = path
        elif split_ending(path)[1]:
            strays.append(path)
    for case in sorted(set(images) - set(labels)):
        first = images[case][min(images[case])]
        problems.append(f"{first}: images without label: {labels_dir / (case + ending)} is missing; add the "
                        "label, or move the images to imagesTs/ if the case is unlabeled")
    for case in sorted(set(labels) - set(images)):
        problems.append(f"{labels[case]}: label without images: {images_dir / f'{case}_0000{ending}'} is "
                        "missing; add the case's images or remove the label")
    return [_Case(safe_case_name(case), case, _ordered_channels(images_dir, case, images[case], ending, problems),
                  labels[case])
            for case in sorted(set(images) & set(labels))]


def _image_only_cases(folder: Path, ending: str, problems: list[str], strays: list[Path]) -> list[_Case]:
    """Cases of a folder holding images only (``imagesTs/``, ``imagesTrUnlabeled/``)."""
    found = _scan_channels(folder, ending, problems, strays)
    return [_Case(safe_case_name(case), case, _ordered_channels(folder, case, found[case], ending, problems))
            for case in sorted(found)]


def _check_names(cases: list[_Case], where: Path, problems: list[str]) -> None:
    """Output case names must stay distinct, also ignoring letter case."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for item in cases:
        by_name[item.name.lower()].append(item.source_id)
    for ids in by_name.values():
        if len(ids) > 1:
            problems.append(f"{where}: cases {sorted(ids)} map to names that differ only in letter case or in "
                            "characters outside A-Z a-z 0-9 _ -; rename one")


# ----------------------------------------------------------------------------------------------------------
# headers: dimensionality, channel counts and geometry, before anything is written
# ----------------------------------------------------------------------------------------------------------


def _tiff_geometry(path: Path, ending: str, notes: list[str]) -> Geometry:
    """Geometry of a 3D TIFF from nnU-Net's sidecar ``{stem}.json`` (``spacing`` in ``[z, y, x]`` mm)."""
    sidecar = path.with_name(path.name[: -len(ending)] + ".json")
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if not sidecar.is_file():
        notes.append(f"{path}: no spacing file {sidecar.name}; spacing 1, 1, 1 mm assumed as nnU-Net does")
        return Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), identity)
    data = load_json(sidecar)
    spacing = data.get("spacing") if isinstance(data, dict) else None
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in spacing)):
        raise SamprefError(f"{sidecar}: 'spacing' must be three positive numbers [z, y, x] in mm (nnU-Net's "
                           f"TIFF spacing file), got {spacing!r}; fix the file.")
    return Geometry(tuple(float(v) for v in reversed(spacing)), (0.0, 0.0, 0.0), identity)


def _read_header(path: Path, ending: str, notes: list[str]) -> _File:
    """Read the header of ``path`` (no pixel data); unreadable files raise :class:`SamprefError`."""
    if not path.is_file():
        raise SamprefError(f"{path} does not exist or is not a file.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise SamprefError(f"cannot read {path}: {reason}. Check that the file is complete and really a "
                           f"{ending} image; re-export or remove it.") from err
    geometry = Geometry(tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
    if ending.lower() in (".tif", ".tiff") and reader.GetDimension() == 3:
        geometry = _tiff_geometry(path, ending, notes)
    return _File(path, reader.GetDimension(), tuple(reader.GetSize()), reader.GetNumberOfComponents(),
                 reader.GetPixelID(), geometry)


def _shape(header: _File) -> tuple[int, ...]:
    """Numpy-order shape of a header's spatial grid."""
    return tuple(reversed(header.size))


def _same_spacing(a: Geometry, b: Geometry) -> bool:
    return len(a.spacing) == len(b.spacing) and bool(np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-6))


def _inspect_case(item: _Case, n_channels: int, ending: str, problems: list[str], notes: list[str]) -> None:
    """Read the headers of one case and check channel count, dimension, shape and spacing agreement."""
    for path in item.images:
        try:
            item.headers.append(_read_header(path, ending, notes))
        except SamprefError as err:
            problems.append(str(err))
    if item.label is not None:
        try:
            item.label_header = _read_header(item.label, ending, notes)
        except SamprefError as err:
            problems.append(str(err))
    if len(item.headers) != len(item.images):
        return
    first = item.headers[0]
    for header in item.headers:
        if header.dimension not in (2, 3):
            problems.append(f"{header.path} is a {header.dimension}D image; nnU-Net datasets hold 2D or 3D "
                            "images with one file per channel. Split it into one file per channel (4D tasks in "
                            "MSD layout convert with `sampref_convert msd`)")
        elif header.dimension != first.dimension or header.size != first.size:
            problems.append(f"{header.path}: shape {_shape(header)} differs from {first.path.name}'s "
                            f"{_shape(first)}; all channels of a case must lie on one grid (resample them)")
        elif not _same_spacing(header.geometry, first.geometry):
            problems.append(f"{header.path}: spacing {header.geometry.spacing} differs from {first.path.name}'s "
                            f"{first.geometry.spacing}; all channels of a case must lie on one grid (resample "
                            "them)")
    total = sum(h.components for h in item.headers)
    if total != n_channels:
        folder = item.images[0].parent
        counts = ", ".join(f"{h.path.name} ({h.components})" for h in item.headers)
        last = f"{item.source_id}_{len(item.images) - 1:04d}{ending}"
        if total < n_channels and all(h.components == 1 for h in item.headers) and item.images[-1].name == last:
            missing = folder / f"{item.source_id}_{len(item.images):04d}{ending}"
            problems.append(f"{missing}: channel file missing: dataset.json 'channel_names' names {n_channels} "
                            f"channel(s) but case {item.source_id} has {counts}; add the file or fix "
                            "'channel_names'")
        else:
            problems.append(f"{folder}: case {item.source_id} has {total} channel(s) ({counts}, components per "
                            f"file in brackets) but dataset.json 'channel_names' names {n_channels}; add or "
                            "remove channel files, or fix 'channel_names'")
    label = item.label_header
    if label is None:
        return
    if label.components != 1:
        problems.append(f"{label.path} has {label.components} components per pixel; a label map holds one "
                        "integer per pixel. Save it as a single-channel (grayscale) image")
    elif label.dimension != first.dimension or label.size != first.size:
        problems.append(f"shape mismatch: {first.path} is {_shape(first)} but its label {label.path} is "
                        f"{_shape(label)}; the label must lie on its images' grid (resample it or pair the "
                        "right files)")
    elif not _same_spacing(label.geometry, first.geometry):
        problems.append(f"spacing mismatch: {first.path} has spacing {first.geometry.spacing} but its label "
                        f"{label.path} has {label.geometry.spacing}; resample the label onto the image grid")
    elif not (np.allclose(label.geometry.origin, first.geometry.origin, atol=1e-3)
              and np.allclose(label.geometry.direction, first.geometry.direction, atol=1e-4)):
        notes.append(f"{label.path}: origin/direction differ from {first.path.name}; the image's geometry was kept")


def _png_lossless(headers: list[_File]) -> bool:
    """True when every 2D file is 8/16-bit unsigned with unit spacing, zero origin and identity direction."""
    for header in headers:
        geometry = header.geometry
        if (header.pixel_id not in _PNG_PIXELS or not np.allclose(geometry.spacing, 1.0)
                or not np.allclose(geometry.origin, 0.0)
                or not np.allclose(geometry.direction, np.eye(header.dimension).ravel())):
            return False
    return True


def _decide_format(training: list[_Case], others: list[_Case], problems: list[str]) -> tuple[int, str]:
    """``(dimensionality, output file ending)`` from the images' headers; mixed 2D/3D is a problem."""
    headers = [h for item in training + others for h in item.headers]
    by_dim: dict[int, Path] = {}
    for header in headers:
        by_dim.setdefault(header.dimension, header.path)
    if len(by_dim) > 1:
        problems.append("images mix dimensions: " + ", ".join(f"{p} is {d}D" for d, p in sorted(by_dim.items()))
                        + "; a dataset is either 2D or 3D, convert them separately")
        return 0, ""
    dimensionality = next(iter(by_dim), 3)
    if dimensionality == 2 and _png_lossless(headers):
        return 2, ".png"
    return dimensionality, ".nii.gz"


# ----------------------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------------------


def _read_channels(item: _Case) -> list[np.ndarray]:
    """The case's channels in order, each in numpy order ``(H, W)`` or ``(Z, Y, X)`` and its file's dtype."""
    channels: list[np.ndarray] = []
    for header in item.headers:
        image = read_sitk(header.path)
        array = sitk.GetArrayFromImage(image)
        parts = [array] if header.components == 1 else [np.ascontiguousarray(array[..., c])
                                                        for c in range(header.components)]
        for part in parts:
            check_finite(part, header.path)
        channels.extend(parts)
    return channels


def _relative(path: Path | None, source: Path) -> str:
    """``path`` relative to ``source`` where it lies inside it (for conversion.json)."""
    return "" if path is None else str(path.relative_to(source) if path.is_relative_to(source) else path)


def _convert_labeled(writer: RawDatasetWriter, item: _Case, allowed: list[int], fix: str) -> None:
    assert item.label is not None
    channels = _read_channels(item)
    label = sitk.GetArrayFromImage(read_sitk(item.label))
    check_label_values(label, item.label, allowed, fix)
    writer.add_case(item.name, channels, label, item.headers[0].geometry)


def convert_nnunet(source: Path, dataset_id: int, name: str | None = None, overwrite: bool = False
                   ) -> VerifyReport:
    """Import the nnU-Net v2 raw dataset folder ``source`` as ``$SAMPREF_raw/Dataset{ID:03d}_{name}``.

    Args:
        source: the ``DatasetXXX_Name`` folder (dataset.json, imagesTr/, labelsTr/, optional imagesTs/).
        dataset_id: the output dataset ID, 1..999.
        name: the output name; defaults to the part after ``DatasetXXX_`` of the folder name.
        overwrite: replace a dataset that already has this ID.

    Returns:
        The :class:`VerifyReport` of the published dataset: channels as in the source (one file per
        channel), 2D as ``.png`` when lossless else ``.nii.gz``, 3D as ``.nii.gz``, geometry kept.
    """
    source = require_folder(source, "nnU-Net dataset folder")
    meta = read_nnunet_json(source)
    json_path = source / "dataset.json"
    ending = meta["file_ending"]
    n_channels = len(meta["channel_names"])
    channel_names = {str(i): str(meta["channel_names"][str(i)]) for i in range(n_channels)}
    labels = {str(k): int(v) for k, v in meta["labels"].items()}
    problems: list[str] = []
    notes: list[str] = []
    strays: list[Path] = []
    if "dataset" in meta:
        training = _listed_cases(source, meta, problems)
        found_in = f"{json_path} 'dataset'"
    else:
        training = _scanned_cases(source, ending, problems, strays)
        found_in = f"{source / 'imagesTr'}"
    test = _image_only_cases(source / "imagesTs", ending, problems, strays)
    unlabeled = _image_only_cases(source / "imagesTrUnlabeled", ending, problems, strays)
    if not problems and not training:
        problems.append(f"{found_in}: no training case with file ending {ending}"
                        + (f" (other image files there: {', '.join(p.name for p in strays[:3])}; is "
                           f"'file_ending' in {json_path} right?)" if strays else ""))
    elif not problems and meta["numTraining"] != len(training):
        problems.append(f"{json_path}: numTraining is {meta['numTraining']} but {found_in} holds {len(training)} "
                        f"case(s); set numTraining to {len(training)} or add the missing cases")
    _check_names(training, source / "imagesTr", problems)
    _check_names(test, source / "imagesTs", problems)
    _check_names(unlabeled, source / "imagesTrUnlabeled", problems)
    raise_problems(problems, str(source))

    for item in tqdm(training + test + unlabeled, desc="inspect", unit="case", disable=None):
        _inspect_case(item, n_channels, ending, problems, notes)
    raise_problems(problems, str(source))
    dimensionality, out_ending = _decide_format(training, test + unlabeled, problems)
    raise_problems(problems, str(source))

    if strays:
        shown = ", ".join(str(p) for p in strays[:5]) + (" ..." if len(strays) > 5 else "")
        notes.append(f"{len(strays)} image file(s) not ending in {ending} were ignored, as nnU-Net does: {shown}")
    if (source / "labelsTs").is_dir():
        notes.append("labelsTs/ was not imported: nnU-Net's raw layout has no test labels")
    if out_ending != ending:
        notes.append(f"images re-saved from {ending} to {out_ending} (sampref's raw formats are .png and .nii.gz); "
                     "values, dtype and geometry unchanged")
    name = name or default_name(source)
    fix = f"Declared in {json_path}: {labels}. Fix the label file or declare the value there."
    allowed = sorted(labels.values())
    groups = meta.get("case_groups")
    renamed = {item.source_id: item.name for item in training}
    with RawDatasetWriter(dataset_id, name, file_ending=out_ending, dimensionality=dimensionality,
                          overwrite=overwrite) as writer:
        for item in tqdm(training, desc="convert", unit="case", disable=None):
            try:
                _convert_labeled(writer, item, allowed, fix)
            except SamprefError as err:
                problems.append(str(err))
        for item, add in [(i, writer.add_test) for i in test] + [(i, writer.add_unlabeled) for i in unlabeled]:
            try:
                add(item.name, _read_channels(item), item.headers[0].geometry)
            except SamprefError as err:
                problems.append(str(err))
        raise_problems(problems, str(source))
        for message in notes:
            writer.note(message)
        writer.provenance = {
            "converter": "nnunet", "source": str(source.resolve()), "source_file_ending": ending,
            "cases": {item.name: {"images": [_relative(p, source) for p in item.images],
                                  "label": _relative(item.label, source)} for item in training},
            "test": {item.name: [_relative(p, source) for p in item.images] for item in test},
        }
        writer.set_metadata(
            name=str(meta.get("name") or name),
            description=str(meta.get("description") or f"nnU-Net raw dataset {source.name}"),
            channel_names=channel_names, labels=labels,
            license=str(meta.get("license") or meta.get("licence") or "unknown"),
            reference=str(meta.get("reference") or ""), target_text=_target_text(meta, labels),
            case_groups={renamed[c]: str(g) for c, g in groups.items() if c in renamed}
            if isinstance(groups, dict) else None,
        )
    return writer.report
