"""summary.json in nnU-Net v2's layout, plus a few sampref extras; building, writing and reading it.

Layout (keys nnU-Net tools read are marked *)::

    {
      "labels": {"lesion": 1},                  # label name -> value of every scored label
      "n_cases": 2,
      "settings": {"hd95": false, "nsd_tolerance": null, ..., "distance_unit": "mm"},
      "foreground_mean": {"Dice": 0.8, ...},    # * mean over labels != 0 of the per-label means
      "mean": {"1": {"Dice": 0.8, ...}},        # * per label (key: the value as a string), mean over cases
      "metric_per_case": [                      # * one entry per case
        {"reference_file": ".../case.png", "prediction_file": ".../case.png",
         "metrics": {"1": {"Dice": ..., "IoU": ..., "TP": ..., ...}},
         "case": "case", "spacing": [0.8, 0.8, 3.0] | null}
      ]
    }

``mean`` ignores NaN (a label absent from both reference and prediction of a case does not count for that
label); a label whose every case is NaN has a NaN mean. ``foreground_mean`` is the plain mean of the
per-label means as in nnU-Net, so it is NaN when one label's mean is NaN and ``inf`` when one label's HD95
mean is ``inf``. ``spacing`` is SimpleITK's ``(x, y[, z])`` voxel size in mm, ``null`` where the file
carries none (PNG: distances in pixels). NaN and inf are written as JSON ``NaN``/``Infinity``, as nnU-Net and
Python's ``json`` do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sampref_bench.utilities.atomic import load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError

NNUNET_KEYS = ("metric_per_case", "mean", "foreground_mean")


@dataclass
class CaseResult:
    """The metrics of one case: ``metrics[label][metric]`` as returned by :func:`case_metrics`.

    ``spacing`` is the reference's voxel size in SimpleITK order ``(x, y[, z])`` in mm, or ``None``
    when the file has no physical geometry (PNG).
    """

    case: str
    reference_file: str
    prediction_file: str
    metrics: dict[int, dict[str, float | int]]
    spacing: tuple[float, ...] | None = None


def nanmean(values: Sequence[float]) -> float:
    """Mean of ``values`` leaving out NaN (``inf`` stays); NaN when nothing is left. No warnings."""
    array = np.asarray(values, dtype=np.float64)
    kept = array[~np.isnan(array)]
    return float(kept.mean()) if kept.size else math.nan


def _metric_names(per_label: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for metrics in per_label:
        names += [name for name in metrics if name not in names]
    return names


def label_means(cases: Sequence[CaseResult], labels: Sequence[int]) -> dict[int, dict[str, float]]:
    """``{label: {metric: NaN-ignoring mean over cases}}``; a case lacking a label or metric counts as NaN."""
    means: dict[int, dict[str, float]] = {}
    for label in labels:
        rows = [case.metrics.get(label, {}) for case in cases]
        means[label] = {name: nanmean([row.get(name, math.nan) for row in rows]) for name in _metric_names(rows)}
    return means


def foreground_mean(means: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """``{metric: mean over labels != 0 of the label means}``, NaN-propagating as in nnU-Net."""
    foreground = [m for label, m in means.items() if int(label) != 0]
    return {name: float(np.mean([m.get(name, math.nan) for m in foreground])) if foreground else math.nan
            for name in _metric_names(foreground)}


def distance_unit(cases: Sequence[CaseResult]) -> str:
    """``"mm"`` when every case had a physical spacing, ``"pixel"`` when none had, else ``"mixed"``."""
    known = {case.spacing is not None for case in cases}
    return "mm" if known == {True} else "pixel" if known == {False} else "mixed"


def build_summary(cases: Sequence[CaseResult], labels: Mapping[str, int],
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble summary.json (see the module docstring) from per-case results.

    ``labels`` maps label names to the values that were scored, e.g. ``{"liver": 1, "tumour": 2}``; the
    summary's label keys are the values as strings, in ascending order. ``settings`` is recorded as given,
    with ``distance_unit`` added.
    """
    values = sorted(int(v) for v in labels.values())
    means = label_means(cases, values)
    return {
        "labels": {name: int(value) for name, value in sorted(labels.items(), key=lambda kv: kv[1])},
        "n_cases": len(cases),
        "settings": {**dict(settings or {}), "distance_unit": distance_unit(cases)},
        "foreground_mean": foreground_mean(means),
        "mean": {str(label): m for label, m in means.items()},
        "metric_per_case": [
            {"reference_file": case.reference_file, "prediction_file": case.prediction_file,
             "metrics": {str(label): dict(case.metrics[label]) for label in values if label in case.metrics},
             "case": case.case, "spacing": list(case.spacing) if case.spacing is not None else None}
            for case in cases
        ],
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` to ``path`` atomically (readers never see half a file); returns ``path``."""
    write_json_atomic(Path(path), dict(summary))
    return Path(path)


def load_summary(path: Path) -> dict[str, Any]:
    """Read a summary.json written by sampref or nnU-Net; a missing or malformed one is a SamprefError."""
    data = load_json(Path(path))
    missing = [key for key in NNUNET_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise SamprefError(f"{path} is not a summary.json: missing {missing}. Re-run the evaluation to rebuild it.")
    return data


def case_values(summary: Mapping[str, Any], label: int | str, metric: str = "Dice") -> dict[str, float]:
    """``{case: value}`` of one metric and label across ``metric_per_case`` (NaN where a case lacks it).

    The case name is the entry's ``case`` or, in an nnU-Net summary, the prediction file's name.
    """
    out: dict[str, float] = {}
    for entry in summary["metric_per_case"]:
        name = entry.get("case") or Path(entry["prediction_file"]).name
        out[name] = float(entry["metrics"].get(str(label), {}).get(metric, math.nan))
    return out
