"""Converting a Medical Segmentation Decathlon task folder (``TaskXX_Name``) to sampref's raw format.

An MSD task holds ``dataset.json`` (``modality`` {"0": "FLAIR", ...}, ``labels`` {"0": "background",
"1": "edema", ...} mapping value -> name, the inverse of nnU-Net v2's name -> value, ``training`` [{"image":
"./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], ``licence``/``license``, ``reference``,
``description``), ``imagesTr/`` with 3D or 4D ``(x, y, z, modality)`` NIfTI volumes and ``labelsTr/``.

Conversion:

- The ``training`` list names the cases (without it, every ``imagesTr/*.nii.gz`` is one); macOS ``._*``
  files are skipped. Case names are the image file stems.
- A 4D image is split along its 4th axis into ``{case}_0000.nii.gz``, ``{case}_0001.nii.gz``, ... 3D
  volumes that all carry the spatial geometry (spacing, origin, direction of the first three axes); a 3D
  image becomes ``{case}_0000.nii.gz``. The label keeps its values and gets the image's geometry.
- ``labels`` is inverted to name -> value with inner spaces in names replaced by ``_``
  ("enhancing tumour" -> ``enhancing_tumour``); value 0 is always ``background``. ``target_text`` maps each
  name to the original MSD name as a human phrase. ``modality`` becomes ``channel_names`` unchanged.
- ``imagesTs/`` is ignored: MSD's test images have no public labels (``conversion.json`` notes how many).

A missing ``dataset.json``, unreadable files, missing labels, wrong channel counts, shape mismatches and
undeclared label values are :class:`SamprefError`\\ s naming the file; problems of all cases are reported
together and nothing is written unless the whole conversion succeeds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sampref_bench.dataset_conversion.nifti import (
    label_key,
    read_channels,
    read_label,
)
from sampref_bench.dataset_conversion.sources import raise_problems, require_folder
from sampref_bench.dataset_conversion.verify import VerifyReport
from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import split_ending

_TASK_RE = re.compile(r"^Task\d+_(?P<name>.+)$")


@dataclass
class _Case:
    case: str
    image: Path
    label: Path


def default_name(source: Path) -> str:
    """The dataset name of an MSD folder: the part after ``TaskXX_`` (``Task09_Spleen`` -> ``Spleen``)."""
    match = _TASK_RE.match(Path(source).name)
    return match["name"] if match else Path(source).name


def read_msd_json(source: Path) -> dict[str, Any]:
    """Load ``source/dataset.json`` and check the keys the conversion needs."""
    path = Path(source) / "dataset.json"
    if not path.is_file():
        raise SamprefError(f"{path} does not exist; an MSD task folder (TaskXX_Name) holds dataset.json, "
                           "imagesTr/ and labelsTr/. Pass the task folder itself.")
    meta = load_json(path)
    problems = []
    if not isinstance(meta, dict):
        raise SamprefError(f"{path} must hold a JSON object, not {type(meta).__name__}.")
    for key in ("modality", "labels"):
        if not isinstance(meta.get(key), dict) or not meta[key]:
            problems.append(f"'{key}' must be a non-empty object")
    if "training" in meta and not isinstance(meta["training"], list):
        problems.append("'training' must be a list of {\"image\": ..., \"label\": ...} entries")
    if problems:
        raise SamprefError(f"{path}: " + "; ".join(problems)
                           + ". This does not look like an MSD dataset.json.")
    return meta


def _channel_names(meta: dict[str, Any], path: Path) -> dict[str, str]:
    modality = meta["modality"]
    if sorted(modality) != [str(i) for i in range(len(modality))]:
        raise SamprefError(f"{path}: 'modality' keys must be \"0\", \"1\", ...; got {sorted(modality)}.")
    return {str(i): str(modality[str(i)]) for i in range(len(modality))}


def msd_labels(raw: dict[str, str], path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Invert MSD's value -> name ``labels`` into ``(labels name -> value, target_text name -> phrase)``.

    Value 0 is named ``background`` whatever MSD calls it; other names get ``_`` for inner whitespace.
    """
    try:
        by_value = {int(v): str(n) for v, n in raw.items()}
    except ValueError as err:
        raise SamprefError(f"{path}: 'labels' keys must be integer values (\"0\", \"1\", ...); got "
                           f"{sorted(raw)}.") from err
    if 0 not in by_value:
        raise SamprefError(f"{path}: 'labels' has no entry for value \"0\" (background).")
    labels = {"background": 0}
    phrases = {}
    for value, text in sorted(by_value.items()):
        if value == 0:
            continue
        key = label_key(text)
        if not key or key in labels:
            raise SamprefError(f"{path}: label name {text!r} (value {value}) is empty or repeats another "
                               "name.")
        labels[key] = value
        phrases[key] = " ".join(text.split())
    return labels, phrases


def _listed_cases(source: Path, meta: dict[str, Any], problems: list[str]) -> list[_Case]:
    """Cases of the ``training`` list (or of ``imagesTr/`` when there is none)."""
    json_path = source / "dataset.json"
    if "training" in meta:
        entries = []
        for index, entry in enumerate(meta["training"]):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                problems.append(f"{json_path}: training entry {index} lacks 'image' or 'label'")
                continue
            entries.append((source / entry["image"], source / entry["label"]))
    else:
        folder = source / "imagesTr"
        files = sorted(folder.glob("*.nii.gz")) if folder.is_dir() else []
        entries = [(p, source / "labelsTr" / p.name) for p in files]
    cases = []
    for image, label in entries:
        if image.name.startswith("._"):
            continue
        if not image.is_file():
            problems.append(f"{image}: image listed in {json_path} does not exist")
        elif not label.is_file():
            problems.append(f"{label}: missing label for image {image}; add it or remove the case from "
                            f"{json_path} 'training'")
        else:
            cases.append(_Case(split_ending(image)[0], image, label))
    if not entries:
        problems.append(f"{source}: no training cases ({json_path} lists none and imagesTr/ holds no "
                        ".nii.gz)")
    return cases


def convert_msd(source: Path, dataset_id: int, name: str | None = None,
                overwrite: bool = False) -> VerifyReport:
    """Convert the MSD task folder ``source`` to ``$SAMPREF_raw/Dataset{ID:03d}_{name}``.

    ``name`` defaults to the part after ``TaskXX_`` of the folder name. Returns the :class:`VerifyReport`
    of the published dataset (3D, ``.nii.gz``, one channel file per MSD modality).
    """
    source = require_folder(source, "MSD task folder")
    meta = read_msd_json(source)
    json_path = source / "dataset.json"
    channel_names = _channel_names(meta, json_path)
    labels, phrases = msd_labels(meta["labels"], json_path)
    problems: list[str] = []
    cases = _listed_cases(source, meta, problems)
    raise_problems(problems, str(source))
    fix = f"Declared in {json_path}: {meta['labels']}. Fix the label file or declare the value there."
    with RawDatasetWriter(dataset_id, name or default_name(source), file_ending=".nii.gz", dimensionality=3,
                          overwrite=overwrite) as writer:
        for item in tqdm(cases, desc="convert", unit="case", disable=None):
            try:
                _convert_case(writer, item, len(channel_names), labels.values(), fix)
            except SamprefError as err:
                problems.append(str(err))
        raise_problems(problems, str(source))
        n_test = len([p for p in (source / "imagesTs").glob("*.nii.gz") if not p.name.startswith(".")])
        if n_test:
            writer.note(f"imagesTs/ ignored: its {n_test} image(s) have no labels in the MSD release")
        writer.provenance = {"converter": "msd", "source": str(source.resolve()),
                             "cases": {c.case: {"image": c.image.name, "label": c.label.name} for c in cases}}
        writer.set_metadata(
            name=name or default_name(source),
            description=str(meta.get("description") or f"MSD task {source.name}"),
            channel_names=channel_names, labels=labels,
            license=str(meta.get("license") or meta.get("licence") or "unknown"),
            reference=str(meta.get("reference") or ""), target_text=phrases,
        )
    return writer.report


def _convert_case(writer: RawDatasetWriter, item: _Case, n_channels: int, allowed: Iterable[int],
                  fix: str) -> None:
    """Read one MSD case, split its channels, check its label and write it."""
    channels, geometry = read_channels(item.image)
    if len(channels) != n_channels:
        raise SamprefError(f"{item.image} has {len(channels)} channel(s) but dataset.json 'modality' names "
                           f"{n_channels}; fix the file or the 'modality' entry.")
    label, note = read_label(item.label, item.image, channels[0].shape, geometry, allowed, fix)
    if note:
        writer.note(note)
    writer.add_case(item.case, channels, label, geometry)
