"""Per-case, per-label segmentation metrics on integer label maps.

Conventions (the overlap metrics match nnU-Net v2's ``compute_metrics``):

- A label map is an integer array of any number of dimensions (``(H, W)``, ``(Z, Y, X)``, ...). For a
  label value ``l`` the reference mask is ``reference == l`` and the predicted mask ``prediction == l``.
- ``TP``, ``FP``, ``FN``, ``TN`` count voxels; ``n_ref = TP + FN`` and ``n_pred = TP + FP``.
- ``Dice = 2 TP / (2 TP + FP + FN)`` and ``IoU = TP / (TP + FP + FN)``. Both are NaN when reference and
  prediction are both empty for the label (nothing to score; NaN is left out of means), and 0 when exactly
  one of them is empty.
- ``HD95`` (on request) is MONAI's symmetric 95th-percentile Hausdorff distance between the mask edges,
  ``max(p95(d(pred -> ref)), p95(d(ref -> pred)))`` with Euclidean distances, in the units of ``spacing``
  (millimetres when the spacing comes from a medical image; pixels/voxels when it is ``None``).
- ``NSD`` (on request) is MONAI's normalized surface Dice at a tolerance in the same units: the share of
  edge voxels of both masks that lie within the tolerance of the other mask's edge (edge voxels are counted,
  not sub-voxel surface areas).

Empty masks for the surface metrics are decided here rather than left to MONAI (whose 1.6 release returns
NaN for a percentile Hausdorff distance but ``inf`` for the plain maximum when one mask is empty):

============================  ======  =====
reference / prediction        HD95    NSD
============================  ======  =====
both empty                    NaN     NaN
exactly one empty             inf     0.0
both present                  MONAI   MONAI
============================  ======  =====

A distance to an empty set is infinite, so one ``inf`` case makes a label's mean HD95 ``inf``; read the
per-case values (or Dice, which is 0 there) to see which case it was.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Metric names in the order they appear in summary.json (nnU-Net's names for the overlap metrics).
OVERLAP_METRICS = ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
HD95 = "HD95"
NSD = "NSD"


def _validate_maps(reference: Any, prediction: Any) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference and prediction must have the same shape, got reference {reference.shape} "
                         f"and prediction {prediction.shape}")
    if reference.ndim == 0:
        raise ValueError("reference and prediction must be arrays with at least one dimension, got scalars")
    for what, array in (("reference", reference), ("prediction", prediction)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise ValueError(f"{what} must be an integer label map, got dtype {array.dtype}; "
                             "round and cast it (e.g. .astype(np.int16)) first")
    return reference, prediction


def _validate_labels(labels: Iterable[int]) -> list[int]:
    values: list[int] = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise ValueError(f"labels must be integers, got {label!r}")
        if label < 0:
            raise ValueError(f"labels must be non-negative, got {int(label)}")
        values.append(int(label))
    if not values:
        raise ValueError("labels is empty: name at least one label value to score")
    if len(set(values)) != len(values):
        raise ValueError(f"labels must be unique, got {values}")
    return values


def _validate_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing needs one value per array axis ({ndim}), got {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be positive and finite, got {values}")
    return values


def confusion_per_label(reference: np.ndarray, prediction: np.ndarray, labels: Iterable[int]
                        ) -> dict[int, dict[str, int]]:
    """Voxel counts per label value for two integer label maps of equal shape (any number of dimensions).

    Returns ``{label: {"TP", "FP", "FN", "TN", "n_ref", "n_pred"}}`` with Python ints, in the order of
    ``labels``. Raises ``ValueError`` for a shape mismatch (naming both shapes), non-integer maps, or labels
    that are empty, repeated, negative or not integers.
    """
    reference, prediction = _validate_maps(reference, prediction)
    values = _validate_labels(labels)
    total = int(reference.size)
    result: dict[int, dict[str, int]] = {}
    for label in values:
        in_ref = reference == label
        in_pred = prediction == label
        tp = int(np.count_nonzero(in_ref & in_pred))
        n_ref = int(np.count_nonzero(in_ref))
        n_pred = int(np.count_nonzero(in_pred))
        fp, fn = n_pred - tp, n_ref - tp
        result[label] = {"TP": tp, "FP": fp, "FN": fn, "TN": total - tp - fp - fn, "n_ref": n_ref, "n_pred": n_pred}
    return result


def overlap_scores(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """``(Dice, IoU)`` from voxel counts; both NaN when ``tp + fp + fn == 0`` (nnU-Net's convention)."""
    if tp + fp + fn == 0:
        return math.nan, math.nan
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def absent_label_metrics(n_voxels: int, hd95: bool = False, nsd: bool = False) -> dict[str, float | int]:
    """The metrics of a label found in neither the reference nor the prediction of a case of ``n_voxels``."""
    metrics: dict[str, float | int] = {"Dice": math.nan, "IoU": math.nan, "TP": 0, "FP": 0, "FN": 0,
                                       "TN": int(n_voxels), "n_pred": 0, "n_ref": 0}
    if hd95:
        metrics[HD95] = math.nan
    if nsd:
        metrics[NSD] = math.nan
    return metrics


def _crop_to_union(ref_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (clipped at the array's edge).

    MONAI crops the same box (padding with background beyond the edge, which erosion treats alike), so the
    results do not change; cropping here in numpy only saves MONAI's slower generic tensor code.
    """
    union = ref_mask | pred_mask
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    return ref_mask[tuple(box)], pred_mask[tuple(box)]


def _surface_metrics(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: tuple[float, ...] | None, hd95: bool,
                     tolerance: float | None) -> dict[str, float]:
    """HD95 and/or NSD of two boolean masks of shape ``(H, W)`` or ``(Z, Y, X)``; see the module table."""
    ref_any, pred_any = bool(ref_mask.any()), bool(pred_mask.any())
    out: dict[str, float] = {}
    if not (ref_any and pred_any):
        both_empty = not (ref_any or pred_any)
        if hd95:
            out[HD95] = math.nan if both_empty else math.inf
        if tolerance is not None:
            out[NSD] = math.nan if both_empty else 0.0
        return out
    import torch  # heavy imports only when surface metrics are asked for
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    ref_mask, pred_mask = _crop_to_union(ref_mask, pred_mask)
    ref_t = torch.from_numpy(np.ascontiguousarray(ref_mask))[None, None]
    pred_t = torch.from_numpy(np.ascontiguousarray(pred_mask))[None, None]
    spacing_arg = list(spacing) if spacing is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hd95:
            value = compute_hausdorff_distance(pred_t, ref_t, include_background=True, percentile=95,
                                               spacing=spacing_arg)
            out[HD95] = float(value.reshape(-1)[0])
        if tolerance is not None:
            value = compute_surface_dice(pred_t, ref_t, class_thresholds=[tolerance], include_background=True,
                                         spacing=spacing_arg)
            out[NSD] = float(value.reshape(-1)[0])
    return out


def case_metrics(reference: np.ndarray, prediction: np.ndarray, labels: Iterable[int],
                 spacing: Sequence[float] | None = None, hd95: bool = False,
                 surface_dice_tolerance_mm: float | None = None) -> dict[int, dict[str, float | int]]:
    """All metrics of one case, per label value.

    ``reference`` and ``prediction`` are integer label maps of equal shape (any dimensionality for the
    overlap metrics; ``(H, W)`` or ``(Z, Y, X)`` for the surface metrics). ``spacing`` is the voxel size
    per *array axis*, in the order of ``reference.shape`` (for a SimpleITK image that is
    ``reversed(image.GetSpacing())``), in mm; ``None`` measures distances in voxels. ``hd95`` adds ``"HD95"``;
    ``surface_dice_tolerance_mm`` (same units as the spacing) adds ``"NSD"``.

    Returns ``{label: {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref"[, "HD95"][, "NSD"]}}``; see the
    module docstring for the conventions on empty masks. Raises ``ValueError`` for invalid arguments.
    """
    reference, prediction = _validate_maps(reference, prediction)
    voxel_size = _validate_spacing(spacing, reference.ndim)
    tolerance = None if surface_dice_tolerance_mm is None else float(surface_dice_tolerance_mm)
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"surface_dice_tolerance_mm must be finite and >= 0, got {surface_dice_tolerance_mm}")
    surface = hd95 or tolerance is not None
    if surface and reference.ndim not in (2, 3):
        raise ValueError(f"HD95 and surface Dice need 2D or 3D label maps, got shape {reference.shape}")
    counts = confusion_per_label(reference, prediction, labels)
    result: dict[int, dict[str, float | int]] = {}
    for label, c in counts.items():
        dice, iou = overlap_scores(c["TP"], c["FP"], c["FN"])
        metrics: dict[str, float | int] = {"Dice": dice, "IoU": iou, "TP": c["TP"], "FP": c["FP"], "FN": c["FN"],
                                           "TN": c["TN"], "n_pred": c["n_pred"], "n_ref": c["n_ref"]}
        if surface:
            metrics.update(_surface_metrics(reference == label, prediction == label, voxel_size, hd95, tolerance))
        result[label] = metrics
    return result
