"""Building, validating and reading ``dataset.json``, the description of a raw dataset.

The layout follows nnU-Net v2's ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``,
``file_ending``) with sampref's additions: ``modality``, ``dimensionality``, ``license``,
``reference``, ``target_text`` (label name -> short phrase for text prompts) and optional ``case_groups``
(case -> patient, so that one patient's images never straddle a split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import RAW_ENDINGS

REQUIRED_KEYS = ("name", "channel_names", "labels", "numTraining", "file_ending", "dimensionality")


def make_dataset_json(
    *,
    name: str,
    description: str,
    channel_names: dict[str, str],
    labels: dict[str, int],
    num_training: int,
    file_ending: str,
    dimensionality: int,
    license: str,
    reference: str,
    target_text: dict[str, str] | None = None,
    case_groups: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble and validate a dataset.json dict.

    ``labels`` maps names to integer values and must hold ``background: 0``. ``target_text`` defaults to the
    label name with underscores as spaces for every foreground label.
    """
    if target_text is None:
        target_text = {k: k.replace("_", " ") for k, v in labels.items() if v != 0}
    modality = channel_names.get("0", "")
    data: dict[str, Any] = {
        "name": name,
        "description": description,
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "modality": modality,
        "labels": dict(labels),
        "numTraining": int(num_training),
        "file_ending": file_ending,
        "dimensionality": int(dimensionality),
        "license": license,
        "reference": reference,
        "target_text": dict(target_text),
    }
    if case_groups:
        data["case_groups"] = dict(sorted(case_groups.items()))
    if extra:
        data.update(extra)
    validate_dataset_json(data, "dataset.json")
    return data


def validate_dataset_json(data: dict[str, Any], where: str | Path) -> None:
    """Raise :class:`SamprefError` naming ``where`` and every problem found in ``data``."""
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(data), type(data).__name__)
        raise SamprefError(f"{where} holds {kind}, not a JSON object ({{\"name\": ..., \"channel_names\": ..., "
                           "\"labels\": ..., ...}). Restore the dataset.json the converter wrote, or reconvert the "
                           "dataset with `sampref_convert`.")
    problems: list[str] = []
    for key in REQUIRED_KEYS:
        if key not in data:
            problems.append(f"missing key {key!r}")
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or labels.get("background") != 0:
        problems.append("'labels' must be a dict holding 'background': 0")
    else:
        values = list(labels.values())
        if any(not isinstance(v, int) or v < 0 or v > 255 for v in values):
            problems.append("label values must be integers in 0..255")
        if len(set(values)) != len(values):
            problems.append("two label names share one value")
        if len(values) < 2:
            problems.append("at least one foreground label is needed")
    if data.get("file_ending") not in RAW_ENDINGS:
        problems.append(f"'file_ending' must be one of {RAW_ENDINGS}, got {data.get('file_ending')!r}")
    if data.get("dimensionality") not in (2, 3):
        problems.append("'dimensionality' must be 2 or 3")
    channels = data.get("channel_names", {})
    if not isinstance(channels, dict) or not channels or sorted(channels) != [str(i) for i in range(len(channels))]:
        problems.append("'channel_names' must map '0', '1', ... to modality names")
    target = data.get("target_text", {})
    if isinstance(labels, dict) and isinstance(target, dict):
        missing = [k for k, v in labels.items() if v != 0 and k not in target]
        if missing:
            problems.append(f"'target_text' has no phrase for label(s) {missing}")
    if problems:
        raise SamprefError(f"{where}: " + "; ".join(problems) + ". Fix the file or reconvert the dataset.")


def load_dataset_json(folder: Path) -> dict[str, Any]:
    """Read and validate ``folder/dataset.json``."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise SamprefError(
            f"{path} does not exist: {folder} is not a converted sampref dataset. Convert it with `sampref_convert`."
        )
    data = load_json(path)
    validate_dataset_json(data, path)
    return data


def foreground_labels(dataset_json: dict[str, Any]) -> dict[str, int]:
    """The labels other than background, in ascending value order."""
    return {k: v for k, v in sorted(dataset_json["labels"].items(), key=lambda kv: kv[1]) if v != 0}
