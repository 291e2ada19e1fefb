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

The source is read and checked by :mod:`~sampref_bench.dataset_conversion.nnunet_source` (dataset.json,
case listing) and :mod:`~sampref_bench.dataset_conversion.nnunet_headers` (file headers); this module
decides the output format and converts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sampref_bench.dataset_conversion.nifti import check_finite, check_label_values
from sampref_bench.dataset_conversion.nnunet_headers import inspect_case
from sampref_bench.dataset_conversion.nnunet_source import (
    FileHeader,
    SourceCase,
    check_names,
    default_name,
    image_only_cases,
    listed_cases,
    read_nnunet_json,
    scanned_cases,
)
from sampref_bench.dataset_conversion.sources import raise_problems, require_folder
from sampref_bench.dataset_conversion.verify import VerifyReport
from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import read_sitk

_PNG_PIXELS = {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkVectorUInt8, sitk.sitkVectorUInt16}


def _target_text(meta: dict[str, Any], labels: dict[str, int]) -> dict[str, str]:
    """A sampref source's ``target_text`` when it covers every label, else label names with ``_`` as spaces."""
    given = meta.get("target_text")
    if isinstance(given, dict) and all(isinstance(given.get(k), str) for k, v in labels.items() if v != 0):
        return {k: given[k] for k, v in labels.items() if v != 0}
    return {k: " ".join(k.replace("_", " ").split()) for k, v in labels.items() if v != 0}


def _png_lossless(headers: list[FileHeader]) -> bool:
    """True when every 2D file is 8/16-bit unsigned with unit spacing, zero origin and identity direction."""
    for header in headers:
        geometry = header.geometry
        if (header.pixel_id not in _PNG_PIXELS or not np.allclose(geometry.spacing, 1.0)
                or not np.allclose(geometry.origin, 0.0)
                or not np.allclose(geometry.direction, np.eye(header.dimension).ravel())):
            return False
    return True


def _decide_format(training: list[SourceCase], others: list[SourceCase], problems: list[str]) -> tuple[int, str]:
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


def _read_channels(item: SourceCase) -> list[np.ndarray]:
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


def _convert_labeled(writer: RawDatasetWriter, item: SourceCase, allowed: list[int], fix: str) -> None:
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
        training = listed_cases(source, meta, problems)
        found_in = f"{json_path} 'dataset'"
    else:
        training = scanned_cases(source, ending, problems, strays)
        found_in = f"{source / 'imagesTr'}"
    test = image_only_cases(source / "imagesTs", ending, problems, strays)
    unlabeled = image_only_cases(source / "imagesTrUnlabeled", ending, problems, strays)
    if not problems and not training:
        problems.append(f"{found_in}: no training case with file ending {ending}"
                        + (f" (other image files there: {', '.join(p.name for p in strays[:3])}; is "
                           f"'file_ending' in {json_path} right?)" if strays else ""))
    elif not problems and meta["numTraining"] != len(training):
        problems.append(f"{json_path}: numTraining is {meta['numTraining']} but {found_in} holds {len(training)} "
                        f"case(s); set numTraining to {len(training)} or add the missing cases")
    check_names(training, source / "imagesTr", problems)
    check_names(test, source / "imagesTs", problems)
    check_names(unlabeled, source / "imagesTrUnlabeled", problems)
    raise_problems(problems, str(source))

    for item in tqdm(training + test + unlabeled, desc="inspect", unit="case", disable=None):
        inspect_case(item, n_channels, ending, problems, notes)
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
