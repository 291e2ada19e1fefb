"""Converting a folder of 2D images plus a folder of masks, paired by file stem, to sampref's raw format.

``images/case7.jpg`` pairs with ``masks/case7{mask_suffix}.png`` (any of png, jpg, jpeg, bmp, tif, tiff on
either side). Images become single-channel PNGs: equal-channel colour files are reduced losslessly, real
colour to ITU-R BT.601 luma (recorded in ``conversion.json``). Mask values become label values ``0..N``
either directly or through ``label_map`` (``{255: 1}``); 0 stays background unless the map says otherwise.

Every problem in the source (missing or extra masks, unreadable files, size mismatches, mask values that
are not labels, name collisions, rows of the groups CSV) is collected and reported in one
:class:`SamprefError`; nothing is written unless the whole conversion succeeds.

The image helpers here (:func:`load_gray_image`, :func:`read_2d`, ...) are shared
with the other 2D converters.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sampref_bench.dataset_conversion.sources import raise_problems, require_folder, safe_case_name
from sampref_bench.dataset_conversion.verify import VerifyReport
from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import IMAGE_2D_ENDINGS, read_sitk, split_ending, to_grayscale

LUMA_NOTE = "colour image reduced to grayscale with BT.601 luma (0.299 R + 0.587 G + 0.114 B)"


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the 2D converters
# ----------------------------------------------------------------------------------------------------------


def read_2d(path: Path) -> np.ndarray:
    """Read a 2D image file as ``(H, W)`` or ``(H, W, C)`` (``C`` = colour/alpha components).

    Raises :class:`SamprefError` naming the file when it cannot be read or is not two-dimensional.
    """
    image = read_sitk(path)
    if image.GetDimension() != 2:
        raise SamprefError(f"{path} is a {image.GetDimension()}D image (size {image.GetSize()}); this "
                           "converter takes 2D images only. Use `sampref_convert nifti` for volumes.")
    return sitk.GetArrayFromImage(image)


def drop_alpha(array: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` without its alpha channel (C == 4 or C == 2); other shapes pass through."""
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        return array[..., :-1]
    return array


def single_channel(array: np.ndarray) -> np.ndarray | None:
    """``(H, W)`` from a gray array or a colour one with all channels equal (alpha ignored); else None."""
    array = drop_alpha(array)
    if array.ndim == 2:
        return array
    if all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
        return np.ascontiguousarray(array[..., 0])
    return None


def _to_png_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    """Cast ``array`` losslessly to ``uint8``/``uint16`` (what PNG holds), or raise naming ``path``."""
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.array_equal(array, np.round(array)))
    if integral and low >= 0 and high <= 65535:
        return array.astype(np.uint8 if high <= 255 else np.uint16)
    raise SamprefError(f"{path} holds {array.dtype} intensities in [{low:g}, {high:g}]; the raw format "
                       "stores 8- or 16-bit unsigned PNGs. Rescale it to 0..255 or 0..65535 and re-export.")


def load_gray_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read a 2D image as a ``(H, W)`` ``uint8``/``uint16`` array.

    Returns ``(gray, was_colour)``: equal-channel colour files are reduced losslessly (``was_colour`` False),
    real colour to BT.601 luma (``was_colour`` True; the caller records a note). Alpha is dropped.
    """
    gray, was_colour = to_grayscale(read_2d(path))
    return _to_png_dtype(gray, path), was_colour


def list_2d_files(folder: Path) -> dict[str, list[Path]]:
    """Map stem -> files in ``folder`` (not recursive) with a 2D image ending; hidden files are skipped."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, ending = split_ending(path, IMAGE_2D_ENDINGS)
        if ending:
            found[stem].append(path)
    return dict(found)


def name_collisions(names: dict[str, Iterable[Path]]) -> list[str]:
    """Problems for case names that coincide ignoring letter case; ``names`` maps case name -> its sources."""
    by_lower: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for case, sources in names.items():
        for source in sources:
            by_lower[case.lower()].append((case, source))
    problems = []
    for group in by_lower.values():
        if len(group) > 1:
            files = ", ".join(str(source) for _, source in group)
            problems.append(f"{files}: these map to the same case name {group[0][0]!r} (names are made "
                            "filesystem-safe and compared ignoring letter case); rename all but one")
    return problems


# ----------------------------------------------------------------------------------------------------------
# folder2d
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    """One image/mask pair and its output case name."""

    case: str
    stem: str
    image: Path
    mask: Path


def _label_spec(labels: Sequence[str], target_text: Sequence[str] | None,
                label_map: dict[int, int] | None) -> tuple[dict[str, int], dict[str, str]]:
    """dataset.json ``labels`` and ``target_text`` from the label names; checks the label map's targets."""
    labels = list(labels)
    if not labels:
        raise SamprefError("--labels needs at least one foreground label name, e.g. --labels lesion.")
    if len(set(labels)) != len(labels) or "background" in labels:
        raise SamprefError(f"--labels {labels} must be distinct names other than 'background' (value 0).")
    if target_text is not None and len(target_text) != len(labels):
        raise SamprefError(f"--target-text has {len(target_text)} phrase(s) but --labels has {len(labels)} "
                           "name(s); give one phrase per label, in the same order.")
    bad = sorted(f"{k}:{v}" for k, v in (label_map or {}).items() if not 0 <= v <= len(labels))
    if bad:
        raise SamprefError(f"--label-map targets {bad} are not label values 0..{len(labels)} (labels: "
                           f"{', '.join(labels)}); map each mask value to 0 (background) or a label number.")
    names = {"background": 0, **{name: i + 1 for i, name in enumerate(labels)}}
    phrases = dict(zip(labels, target_text or [n.replace("_", " ") for n in labels]))
    return names, phrases


def _pair_files(images: Path, masks: Path, mask_suffix: str) -> tuple[list[_Pair], list[str]]:
    """Pair images and masks by stem; returns the pairs and a problem per missing, extra or ambiguous file."""
    same_folder = images.resolve() == masks.resolve()
    if same_folder and not mask_suffix:
        raise SamprefError(f"--images and --masks are the same folder {images}; pass --mask-suffix "
                           "(e.g. _mask) so that masks can be told from images.")
    image_files = list_2d_files(images)
    mask_files = list_2d_files(masks)
    if same_folder:
        image_files = {s: p for s, p in image_files.items() if not s.endswith(mask_suffix)}
    if not image_files:
        raise SamprefError(f"no image files ({', '.join(IMAGE_2D_ENDINGS)}) in {images}; check --images.")
    problems: list[str] = []
    pairs: list[_Pair] = []
    for stem, files in sorted(image_files.items()):
        if len(files) > 1:
            problems.append(f"{', '.join(map(str, files))}: several images share the stem {stem!r}; keep one")
            continue
        found = mask_files.get(stem + mask_suffix, [])
        if not found:
            problems.append(f"{files[0]}: no mask {masks / (stem + mask_suffix)}.png (or .jpg/.bmp/.tif) "
                            "found; add the mask, fix --mask-suffix, or move the image away")
        elif len(found) > 1:
            problems.append(f"{', '.join(map(str, found))}: several masks for {files[0].name}; keep one")
        else:
            pairs.append(_Pair(safe_case_name(stem), stem, files[0], found[0]))
    for mask_stem, files in sorted(mask_files.items()):
        if same_folder and not mask_stem.endswith(mask_suffix):
            continue
        if not mask_stem.endswith(mask_suffix):
            problems.extend(f"{f}: mask name does not end with --mask-suffix {mask_suffix!r}, so no image "
                            "matches it; rename or remove it" for f in files)
            continue
        image_stem = mask_stem[: len(mask_stem) - len(mask_suffix)]
        if image_stem not in image_files:
            problems.extend(f"{f}: no image {images / image_stem}.* matches this mask; add the image or "
                            "remove the mask" for f in files)
    return pairs, problems


def _read_groups(groups_csv: Path, pairs: list[_Pair], problems: list[str]) -> dict[str, str]:
    """``{case: patient}`` from a CSV with columns ``case,patient`` (``case`` = image stem or case name)."""
    if not Path(groups_csv).is_file():
        raise SamprefError(f"--groups-csv {groups_csv} does not exist; give a CSV with header case,patient.")
    by_key = {p.stem: p.case for p in pairs} | {p.case: p.case for p in pairs}
    groups: dict[str, str] = {}
    with open(groups_csv, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = {h.strip().lower(): h for h in reader.fieldnames or []}
        if "case" not in header or "patient" not in header:
            raise SamprefError(f"{groups_csv}: the header must name columns 'case' and 'patient', found "
                               f"{reader.fieldnames}; the case is the image file name without its ending.")
        for line, row in enumerate(reader, start=2):
            key, patient = (row[header["case"]] or "").strip(), (row[header["patient"]] or "").strip()
            case = by_key.get(key)
            if case is None:
                problems.append(f"{groups_csv} line {line}: case {key!r} is not an image stem in --images")
            elif not patient:
                problems.append(f"{groups_csv} line {line}: case {key!r} has an empty patient")
            elif groups.setdefault(case, patient) != patient:
                problems.append(f"{groups_csv} line {line}: case {key!r} is given two patients "
                                f"({groups[case]!r} and {patient!r})")
    missing = [p.stem for p in pairs if p.case not in groups]
    if missing:
        problems.append(f"{groups_csv}: no patient for {len(missing)} image(s): {', '.join(missing)}; "
                        "add a row case,patient for each")
    return groups


def _map_mask(mask: np.ndarray, label_map: dict[int, int] | None, n_labels: int) -> tuple[np.ndarray, list]:
    """Label array ``(H, W)`` uint8 from raw mask values; also returns the raw values that are not allowed."""
    values = np.unique(mask)
    if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        return mask, [float(v) for v in values if v != round(v)]
    values = [int(v) for v in values]
    mapping = {0: 0, **(label_map or {})} if label_map is not None else {v: v for v in range(n_labels + 1)}
    bad = [v for v in values if v not in mapping]
    label = np.zeros(mask.shape, np.uint8)
    for value in values:
        if value in mapping and mapping[value]:
            label[mask == value] = mapping[value]
    return label, bad


def _load_pair(pair: _Pair, label_map: dict[int, int] | None, n_labels: int,
               bad_values: dict[tuple, list[Path]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Read one pair as ``(image, label, was_colour)``; a bad pair raises :class:`SamprefError`.

    Masks with values that are neither labels nor mapped are collected in ``bad_values`` (value tuple ->
    files) instead, and the returned label is then meaningless.
    """
    image, was_colour = load_gray_image(pair.image)
    raw = read_2d(pair.mask)
    mask = single_channel(raw)
    if mask is None:
        raise SamprefError(f"{pair.mask}: colour mask whose channels differ; re-save it as a grayscale mask "
                           "with one gray value per label and map those values with --label-map (e.g. "
                           "0:0,128:1,255:2)")
    if mask.shape != image.shape:
        raise SamprefError(f"{pair.mask}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its "
                           f"image {pair.image} ({image.shape[1]}x{image.shape[0]}); re-export the mask "
                           "at the image's size")
    label, bad = _map_mask(mask, label_map, n_labels)
    if bad:
        bad_values[tuple(bad)].append(pair.mask)
    return image, label, was_colour


def _value_problems(bad_values: dict[tuple, list[Path]], label_map: dict[int, int] | None,
                    n_labels: int) -> list[str]:
    """One problem per set of offending mask values, listing every file holding it."""
    allowed = (f"in --label-map {','.join(f'{k}:{v}' for k, v in label_map.items())} (0 maps to 0)"
               if label_map is not None else f"label values 0..{n_labels}")
    return [f"{', '.join(map(str, files))}: mask values {list(values)} are not {allowed}; map them to "
            "labels, e.g. --label-map 255:1 for 0/255 masks" for values, files in sorted(bad_values.items())]


def convert_folder2d(
    images: Path,
    masks: Path,
    dataset_id: int,
    name: str,
    *,
    modality: str,
    mask_suffix: str = "",
    label_map: dict[int, int] | None = None,
    labels: Sequence[str] = ("lesion",),
    target_text: Sequence[str] | None = None,
    groups_csv: Path | None = None,
    license: str = "unknown",
    reference: str = "",
    overwrite: bool = False,
) -> VerifyReport:
    """Convert ``images/`` + ``masks/`` (2D files paired by stem) into ``$SAMPREF_raw/Dataset{ID}_{name}``.

    Images are written as ``(H, W)`` uint8/uint16 PNGs, labels as ``(H, W)`` uint8 PNGs with values
    ``0..len(labels)``. ``label_map`` maps raw mask values to label values (0 -> 0 is implied);
    ``groups_csv`` (``case,patient``) becomes dataset.json ``case_groups``. Raises :class:`SamprefError`
    listing every problem found; the source folders are only read. Returns the published dataset's report.
    """
    images = require_folder(images, "--images folder")
    masks = require_folder(masks, "--masks folder")
    label_names, phrases = _label_spec(labels, target_text, label_map)
    n_labels = len(label_names) - 1
    pairs, problems = _pair_files(images, masks, mask_suffix)
    sources: dict[str, list[Path]] = defaultdict(list)
    for pair in pairs:
        sources[pair.case].append(pair.image)
    problems += name_collisions(sources)
    groups = _read_groups(groups_csv, pairs, problems) if groups_csv is not None else {}
    bad_values: dict[tuple, list[Path]] = defaultdict(list)
    writer = RawDatasetWriter(dataset_id, name, file_ending=".png", dimensionality=2, overwrite=overwrite)
    with writer:
        for pair in pairs:
            try:
                image, label, was_colour = _load_pair(pair, label_map, n_labels, bad_values)
            except SamprefError as err:
                problems.append(str(err))
                continue
            if was_colour:
                writer.note(f"{pair.image}: {LUMA_NOTE}")
            if not problems and not bad_values:
                writer.add_case(pair.case, [image], label)
        raise_problems(problems + _value_problems(bad_values, label_map, n_labels), f"{images} / {masks}")
        writer.provenance = {
            "converter": "folder2d", "images": str(images.resolve()), "masks": str(masks.resolve()),
            "mask_suffix": mask_suffix,
            "label_map": {str(k): v for k, v in label_map.items()} if label_map is not None else None,
            "groups_csv": str(Path(groups_csv).resolve()) if groups_csv is not None else None,
            "cases": {p.case: {"image": p.image.name, "mask": p.mask.name} for p in pairs},
        }
        writer.set_metadata(
            name=name, description=f"2D {modality} images from {images.name}/ with masks from {masks.name}/, "
                                   "converted by sampref_convert folder2d",
            channel_names={"0": modality}, labels=label_names, target_text=phrases, license=license,
            reference=reference, case_groups=groups or None)
    return writer.report

