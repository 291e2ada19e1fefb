"""Reading and checking the layout of an nnU-Net v2 raw dataset folder (``DatasetXXX_Name``).

``dataset.json`` is loaded and checked (``channel_names``, integer ``labels`` with ``background: 0``,
``numTraining``, ``file_ending``; region-based and ``ignore`` labels refused), and the cases are listed:
from dataset.json's ``dataset`` entry, else by pairing ``imagesTr/{case}_{XXXX}{ending}`` with
``labelsTr/{case}{ending}``, plus the image-only folders ``imagesTs/`` and ``imagesTrUnlabeled/``. Every
problem found is appended to a ``problems`` list (one message naming the file and the fix) so that the
converter (:mod:`sampref_bench.dataset_conversion.nnunet`) reports them all at once. Nothing is written.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampref_bench.dataset_conversion.sources import safe_case_name
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import IMAGE_2D_ENDINGS, VOLUME_ENDINGS, Geometry, split_ending

#: nnU-Net ``file_ending`` values this converter reads (the endings sampref's imageio handles).
SUPPORTED_ENDINGS = VOLUME_ENDINGS + IMAGE_2D_ENDINGS
_DATASET_RE = re.compile(r"^Dataset\d{3}_(?P<name>.+)$")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_REGION_FIX = ("sampref needs one integer value per label (SAM segments one label map value at a time). "
               "Convert the regions to plain labels first: give every label in dataset.json 'labels' a single "
               "integer (e.g. {\"background\": 0, \"edema\": 1, \"non_enhancing\": 2, \"enhancing\": 3}), remove "
               "'regions_class_order', and make the label files hold those values")


@dataclass
class FileHeader:
    """Header of one image file: dimension, size ``(x, y[, z])``, components per pixel, pixel type, geometry."""

    path: Path
    dimension: int
    size: tuple[int, ...]
    components: int
    pixel_id: int
    geometry: Geometry


@dataclass
class SourceCase:
    """One source case: output name, channel files in order, optional label file, and their headers."""

    name: str
    source_id: str
    images: list[Path]
    label: Path | None = None
    headers: list[FileHeader] = field(default_factory=list)
    label_header: FileHeader | None = None


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


def listed_cases(source: Path, meta: dict[str, Any], problems: list[str]) -> list[SourceCase]:
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
        item = SourceCase(safe_case_name(str(case)), str(case), [_resolve(source, p) for p in images],
                     _resolve(source, label))
        for path in [*item.images, item.label]:
            if not path.is_file():
                problems.append(f"{path}: listed for case {case!r} in {json_path} 'dataset' but does not "
                                "exist; add the file or fix the path")
        cases.append(item)
    return cases


def scanned_cases(source: Path, ending: str, problems: list[str], strays: list[Path]) -> list[SourceCase]:
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
    return [SourceCase(safe_case_name(case), case, _ordered_channels(images_dir, case, images[case], ending, problems),
                  labels[case])
            for case in sorted(set(images) & set(labels))]


def image_only_cases(folder: Path, ending: str, problems: list[str], strays: list[Path]) -> list[SourceCase]:
    """Cases of a folder holding images only (``imagesTs/``, ``imagesTrUnlabeled/``)."""
    found = _scan_channels(folder, ending, problems, strays)
    return [SourceCase(safe_case_name(case), case, _ordered_channels(folder, case, found[case], ending, problems))
            for case in sorted(found)]


def check_names(cases: list[SourceCase], where: Path, problems: list[str]) -> None:
    """Output case names must stay distinct, also ignoring letter case."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for item in cases:
        by_name[item.name.lower()].append(item.source_id)
    for ids in by_name.values():
        if len(ids) > 1:
            problems.append(f"{where}: cases {sorted(ids)} map to names that differ only in letter case or in "
                            "characters outside A-Z a-z 0-9 _ -; rename one")
