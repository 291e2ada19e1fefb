"""Converting generic 3D image/label pairs (NIfTI, NRRD, MHA/MHD, or DICOM series) to sampref's raw format.

Volumes: ``images/case7.nii.gz`` pairs with ``labels/case7{any ending}`` by file stem, double endings such
as ``.nii.gz`` honoured; any of ``.nii.gz .nii .nrrd .nhdr .mha .mhd`` may appear on either side. Image
stems that all end in ``_0000`` (nnU-Net's channel suffix) are matched without it. Hidden files (including
macOS ``._*`` files) and files with other endings (e.g. the ``.raw`` data of ``.mhd`` headers) are ignored.

DICOM (``dicom=True``): each direct subfolder of ``images`` is one DICOM series read with SimpleITK's
``ImageSeriesReader``; its label is ``labels/{folder name}{any volume ending}``. When a folder holds several
series, the one with the most files is taken and the others are named in ``conversion.json`` (the shape
check against the label catches a wrong pick).

Every case is written as ``imagesTr/{case}_0000.nii.gz`` and ``labelsTr/{case}.nii.gz`` with the image's
spacing, origin and direction unchanged. A label must lie on its image's voxel grid (same shape); when its
header geometry differs (a label saved without geometry, say) the image's geometry is kept and the
difference noted in ``conversion.json``. All problems of the source are collected and reported in one
:class:`SamprefError`; nothing is written unless the whole conversion succeeds.

The volume helpers here (:func:`read_volume`, :func:`read_label`, :func:`spatial_geometry`, ...) are shared
with the MSD converter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sampref_bench.dataset_conversion.sources import raise_problems, require_folder, safe_case_name
from sampref_bench.dataset_conversion.verify import VerifyReport
from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import (
    IMAGE_2D_ENDINGS,
    VOLUME_ENDINGS,
    Geometry,
    has_nonfinite,
    read_sitk,
    split_ending,
)

_ENDINGS_TEXT = " ".join(VOLUME_ENDINGS)


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the 3D converters
# ----------------------------------------------------------------------------------------------------------


def label_key(name: str) -> str:
    """A label name as dataset.json key: surrounding space dropped, inner whitespace runs -> ``_``."""
    return "_".join(str(name).split())


def spatial_geometry(image: sitk.Image) -> Geometry:
    """Geometry of the first three (spatial) axes of a 3D or 4D SimpleITK image.

    For 4D images (x, y, z, channel) the spacing and origin are cut to ``(x, y, z)`` and the direction to
    the upper-left 3x3 block of the row-major 4x4 matrix.
    """
    dim = image.GetDimension()
    if dim == 3:
        return Geometry.of(image)
    direction = image.GetDirection()
    cosines = tuple(direction[row * dim + col] for row in range(3) for col in range(3))
    return Geometry(tuple(image.GetSpacing()[:3]), tuple(image.GetOrigin()[:3]), cosines)


def _dimension_error(image: sitk.Image, path: Path, what: str) -> SamprefError:
    size = image.GetSize()
    if image.GetDimension() == 2:
        return SamprefError(f"{path} is a 2D {what} (size {size}); this converter takes 3D volumes. For 2D "
                            "data use `sampref_convert folder2d --images ... --masks ...`.")
    return SamprefError(f"{path} is a {image.GetDimension()}D {what} with "
                        f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel (size {size}); a "
                        "single-channel 3D volume is expected. Split multi-channel images into one volume "
                        "per channel, or convert MSD-style 4D tasks with `sampref_convert msd`.")


def check_finite(array: np.ndarray, path: Path) -> None:
    """Raise :class:`SamprefError` naming ``path`` if ``array`` (read from ``path``) holds NaN or Inf.

    NIfTI files are checked from their stored values (see :func:`has_nonfinite`): SimpleITK reads NaN as 0.
    """
    if has_nonfinite(path, array):
        raise SamprefError(f"{path} contains NaN or Inf intensities; replace them (e.g. by the image's "
                           "minimum) before converting.")


def read_channels(path: Path) -> tuple[list[np.ndarray], Geometry]:
    """Read a 3D volume, a 4D ``(x, y, z, channel)`` volume or a 3D vector-pixel volume as 3D channels.

    Returns ``([channel_0, channel_1, ...], geometry)``: each channel ``(Z, Y, X)`` in the file's dtype,
    and the spatial :class:`Geometry` (``(x, y, z)`` spacing/origin in mm, 3x3 direction) all channels share.
    """
    image = read_sitk(path)
    components = image.GetNumberOfComponentsPerPixel()
    dim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    if dim == 3 and components == 1:
        channels = [array]
    elif dim == 3:
        channels = [np.ascontiguousarray(array[..., c]) for c in range(components)]
    elif dim == 4 and components == 1:
        channels = [np.ascontiguousarray(array[c]) for c in range(array.shape[0])]
    else:
        raise _dimension_error(image, path, "image")
    for channel in channels:
        check_finite(channel, path)
    return channels, spatial_geometry(image)


def read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a single-channel 3D volume ``(Z, Y, X)`` plus its :class:`Geometry`; anything else is an error."""
    image = read_sitk(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise _dimension_error(image, path, "image")
    array = sitk.GetArrayFromImage(image)
    check_finite(array, path)
    return array, Geometry.of(image)


def read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry, str | None]:
    """Read the DICOM series in ``folder`` as ``(Z, Y, X)`` array, :class:`Geometry` and an optional note.

    When the folder holds several series, the one with the most files is read (ties: the smallest
    series UID) and the note names the others.
    """
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    except RuntimeError as err:
        raise SamprefError(f"cannot scan {folder} for DICOM series: {err}".strip()) from err
    if not series:
        raise SamprefError(f"{folder} holds no readable DICOM series; each subfolder of the images folder "
                           "must hold the slices of one series (or run without --dicom for NIfTI/NRRD/MHA "
                           "files).")
    chosen = max(sorted(series), key=lambda uid: len(files[uid]))
    note = None
    if len(series) > 1:
        others = [f"{uid} ({len(files[uid])} files)" for uid in sorted(series) if uid != chosen]
        note = (f"{folder}: {len(series)} DICOM series; took {chosen} ({len(files[chosen])} files), "
                f"ignored {', '.join(others)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise SamprefError(f"cannot read the DICOM series {chosen} in {folder}: {reason}. Check that the "
                           "slices are complete.") from err
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise _dimension_error(image, folder, "DICOM series")
    array = sitk.GetArrayFromImage(image)
    check_finite(array, folder)
    return array, Geometry.of(image), note


def check_label_values(label: np.ndarray, path: Path, allowed: Iterable[int], fix: str) -> None:
    """Raise :class:`SamprefError` naming ``path`` when ``label`` holds non-integer or unlisted values.

    ``fix`` finishes the message with what the user should do.
    """
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise SamprefError(f"{path} holds non-integer label values; a label map must hold integers. "
                               f"{fix}")
    allowed = set(allowed)
    bad = [v.item() for v in np.unique(label) if int(v) not in allowed]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise SamprefError(f"{path} holds label value(s) {shown} outside the declared {sorted(allowed)}. "
                           f"{fix}")


def read_label(path: Path, image_path: Path, shape: tuple[int, ...], geometry: Geometry,
               allowed: Iterable[int], fix: str) -> tuple[np.ndarray, str | None]:
    """Read a 3D label map ``(Z, Y, X)`` and check it against its image.

    Raises :class:`SamprefError` when the file is unreadable, not 3D, shaped unlike ``shape`` (naming both
    files) or holds values outside ``allowed``. Returns ``(label, note)``: ``note`` describes a header
    geometry that differs from the image's ``geometry`` (the image's is kept), else ``None``.
    """
    image = read_sitk(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise _dimension_error(image, path, "label")
    label = sitk.GetArrayFromImage(image)
    if label.shape != tuple(shape):
        raise SamprefError(f"shape mismatch: image {image_path} is (Z, Y, X) = {tuple(shape)} but label "
                           f"{path} is {label.shape}; the label must be drawn on its image's voxel grid "
                           "(resample it onto the image, or pair the right files).")
    check_label_values(label, path, allowed, fix)
    own = Geometry.of(image)
    note = None
    if not (np.allclose(own.spacing, geometry.spacing, rtol=1e-4, atol=1e-6)
            and np.allclose(own.origin, geometry.origin, atol=1e-3)
            and np.allclose(own.direction, geometry.direction, atol=1e-4)):
        note = (f"{path}: header geometry (spacing {own.spacing}, origin {own.origin}) differs from image "
                f"{image_path.name} (spacing {geometry.spacing}, origin {geometry.origin}); the image's "
                "was kept")
    return label, note


def label_names_spec(names: Sequence[str], target_text: Sequence[str] | None
                     ) -> tuple[dict[str, int], dict[str, str]]:
    """``labels`` and ``target_text`` for dataset.json from foreground names in value order 1, 2, ...

    Names are stored with inner spaces as underscores; the default phrase is the name with underscores as
    spaces. Raises :class:`SamprefError` for an empty list, a name ``background``, duplicates, or a
    ``target_text`` list of another length.
    """
    keys = [label_key(n) for n in names]
    problems = []
    if not keys or any(not k for k in keys):
        problems.append("give at least one non-empty foreground label name")
    if any(k.lower() == "background" for k in keys):
        problems.append("'background' is value 0 already; list only the foreground labels (values 1, 2, ...)")
    if len(set(keys)) != len(keys):
        problems.append(f"label names {keys} repeat a name")
    if target_text is not None and len(target_text) != len(keys):
        problems.append(f"--target-text gives {len(target_text)} phrase(s) for {len(keys)} label(s); give "
                        "one per label")
    if problems:
        raise SamprefError("invalid label names: " + "; ".join(problems) + ".")
    phrases = list(target_text) if target_text is not None else [k.replace("_", " ") for k in keys]
    return ({"background": 0, **{k: v for v, k in enumerate(keys, start=1)}},
            dict(zip(keys, (" ".join(str(p).split()) for p in phrases))))


# ----------------------------------------------------------------------------------------------------------
# pairing
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    case: str
    image: Path  # a volume file, or a DICOM series folder
    label: Path


def _list_volumes(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Volume files of ``folder`` by stem; 2D files and repeated stems become problems."""
    found: dict[str, Path] = {}
    two_d: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, ending = split_ending(path)
        if ending in IMAGE_2D_ENDINGS:
            two_d.append(path.name)
        elif ending in VOLUME_ENDINGS:
            if stem in found:
                problems.append(f"{path} and {found[stem].name} share the stem {stem!r}; keep one of them")
            found[stem] = path
    if two_d:
        shown = ", ".join(two_d[:3]) + (" ..." if len(two_d) > 3 else "")
        problems.append(f"{folder} holds 2D image files ({shown}); this converter reads 3D volumes. For 2D "
                        "data use `sampref_convert folder2d`.")
    return found


def _list_series(folder: Path, problems: list[str]) -> dict[str, Path]:
    """DICOM series folders (direct, non-hidden subfolders) of ``folder`` by name."""
    found = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not found:
        problems.append(f"{folder} has no subfolders; with --dicom each subfolder holds one DICOM series and "
                        "is named like its label file (labels/NAME.nii.gz for images/NAME/)")
    return found


def _strip_channel_suffix(images: dict[str, Path], labels: dict[str, Path]) -> dict[str, Path]:
    """Drop nnU-Net's ``_0000`` from image stems when every image stem has it and no label stem does."""
    if images and all(s.endswith("_0000") for s in images) and not any(s.endswith("_0000") for s in labels):
        return {s[:-5]: p for s, p in images.items()}
    return images


def _pair_volumes(images: Path, labels: Path, dicom: bool) -> list[_Pair]:
    """Pair image files (or series folders) with label files by stem; raise listing every problem."""
    problems: list[str] = []
    label_files = _list_volumes(labels, problems)
    image_items = _list_series(images, problems) if dicom else _list_volumes(images, problems)
    if not dicom and not image_items:
        dicom_like = any(p.is_dir() or p.suffix.lower() == ".dcm" for p in images.iterdir())
        hint = " For DICOM (one subfolder per series) pass --dicom." if dicom_like else ""
        problems.append(f"{images} holds no volume files ({_ENDINGS_TEXT}).{hint}")
    image_items = _strip_channel_suffix(image_items, label_files)
    what = "series folder" if dicom else "image"
    for stem in sorted(set(image_items) - set(label_files)):
        problems.append(f"{image_items[stem]}: missing label: no {stem}.* in {labels} (endings "
                        f"{_ENDINGS_TEXT}); add it or remove the {what}")
    for stem in sorted(set(label_files) - set(image_items)):
        expected = f"{images / stem}{'/' if dicom else '.*'}"
        problems.append(f"{label_files[stem]}: label without {what} ({expected} is missing); add it or "
                        "remove the label")
    pairs = [_Pair(safe_case_name(stem), image_items[stem], label_files[stem])
             for stem in sorted(set(image_items) & set(label_files))]
    by_case: dict[str, list[str]] = defaultdict(list)
    for pair in pairs:
        by_case[pair.case.lower()].append(pair.image.name)
    for names in by_case.values():
        if len(names) > 1:
            problems.append(f"{images}: {sorted(names)} map to case names that differ only in letter case "
                            "or in characters outside A-Z a-z 0-9 _ -; rename one")
    raise_problems(problems, f"{images} and {labels}")
    return pairs


# ----------------------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------------------


def convert_nifti(images: Path, labels: Path, dataset_id: int, name: str, *, modality: str,
                  dicom: bool = False, label_names: Sequence[str] = ("lesion",),
                  target_text: Sequence[str] | None = None, license: str = "unknown", reference: str = "",
                  overwrite: bool = False) -> VerifyReport:
    """Convert 3D image/label pairs (or DICOM series with label volumes) to ``$SAMPREF_raw/DatasetXXX_name``.

    Args:
        images: folder of volumes (NIfTI, NRRD, MHA/MHD), or with ``dicom`` a folder of DICOM series folders.
        labels: folder of label volumes named like the images (or like the series folders).
        dataset_id, name: the output ``Dataset{ID:03d}_{name}``.
        modality: the channel name written to ``channel_names["0"]`` (``CT``, ``MR``, ...).
        dicom: read each subfolder of ``images`` as one DICOM series.
        label_names: foreground label names for values 1, 2, ...; other label values are an error.
        target_text: one short phrase per label for text prompts (default: the names, ``_`` as spaces).
        license, reference: copied to dataset.json.
        overwrite: replace a dataset that already has this ID.

    Returns:
        The :class:`VerifyReport` of the published dataset (3D, ``.nii.gz``, one channel).
    """
    images = require_folder(images, "images folder")
    labels = require_folder(labels, "labels folder")
    label_map, phrases = label_names_spec(label_names, target_text)
    pairs = _pair_volumes(images, labels, dicom)
    allowed = range(len(label_map))
    fix = (f"Declared: {label_map}. Pass one name per foreground value with --label-names (e.g. "
           "--label-names liver tumor for values 1 and 2), or remap the label file.")
    with RawDatasetWriter(dataset_id, name, file_ending=".nii.gz", dimensionality=3,
                          overwrite=overwrite) as writer:
        problems: list[str] = []
        for pair in tqdm(pairs, desc="convert", unit="case", disable=None):
            try:
                notes = _convert_pair(writer, pair, dicom, allowed, fix)
            except SamprefError as err:
                problems.append(str(err))
                continue
            for note in notes:
                writer.note(note)
        raise_problems(problems, f"{images} and {labels}")
        writer.provenance = {
            "converter": "nifti", "images": str(images.resolve()), "labels": str(labels.resolve()),
            "dicom": dicom, "cases": {p.case: {"image": p.image.name, "label": p.label.name} for p in pairs},
        }
        kind = "DICOM series" if dicom else "volumes"
        writer.set_metadata(
            name=name, description=f"3D {modality} {kind} from {images.name}/ with labels from "
                                   f"{labels.name}/, converted by sampref_convert nifti",
            channel_names={"0": modality}, labels=label_map, license=license, reference=reference,
            target_text=phrases,
        )
    return writer.report


def _convert_pair(writer: RawDatasetWriter, pair: _Pair, dicom: bool, allowed: Iterable[int],
                  fix: str) -> list[str]:
    """Read, check and write one case; return notes for ``conversion.json``."""
    notes = []
    if dicom:
        image, geometry, note = read_dicom_series(pair.image)
        notes.append(note)
    else:
        image, geometry = read_volume(pair.image)
    label, note = read_label(pair.label, pair.image, image.shape, geometry, allowed, fix)
    notes.append(note)
    writer.add_case(pair.case, [image], label, geometry)
    return [n for n in notes if n]
