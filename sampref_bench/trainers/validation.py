"""Final validation of a run: predictions in original geometry, written as label files, then scored.

Two phases that never mix: first every validation case is predicted from its images alone (the trainer's
:meth:`predict_case` returns a label map in the raw image's geometry; 3D slices are restacked into the
volume) and written to ``validation/{case}{file_ending}`` with the raw image's spacing, origin and
direction; only then are the written predictions scored against the raw labels per volume, and all cases
go into ``validation/summary.json`` in nnU-Net's layout (with the trainer's ``oracle`` flag beside it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sampref_bench import paths
from sampref_bench.evaluation.metrics import case_metrics
from sampref_bench.evaluation.summary import CaseResult, build_summary, write_summary
from sampref_bench.planners.plans import EPOCH_VAL_SAMPLES
from sampref_bench.planners.preprocessing import from_slices
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.utilities.imageio import Geometry, read_image, write_image

#: At most this many validation samples are scored after each epoch (a fixed, seeded subset), unless the plan's
#: configuration says fewer (``epoch_val_samples``: an encoder that runs at every validation).
MAX_EPOCH_VAL_SAMPLES = EPOCH_VAL_SAMPLES


def epoch_validation_subset(items: list[Any], seed: int, limit: int = MAX_EPOCH_VAL_SAMPLES) -> list[Any]:
    """The fixed subset of ``items`` scored after each epoch: at most ``limit`` of them, drawn by a permutation
    seeded with ``seed``, in their original order (a smaller limit keeps a prefix of the same permutation)."""
    keep = np.random.default_rng(int(seed)).permutation(len(items))[:int(limit)]
    return [items[i] for i in sorted(keep)]


def write_prediction(trainer: Any, case: str, out_dir: Path, ending: str) -> tuple[Path, np.ndarray]:
    """Predict ``case`` from its images and write it atomically as ``out_dir/{case}{ending}``."""
    prediction = trainer.predict_case(case)
    meta = trainer.data.meta(case)
    geometry = Geometry(tuple(meta["spacing_xyz"]), tuple(meta["origin"]), tuple(meta["direction"]))
    pred_path = out_dir / f"{case}{ending}"
    tmp = out_dir / f".{case}.tmp{ending}"
    write_image(tmp, prediction, geometry)
    tmp.replace(pred_path)
    return pred_path, prediction


def validate_cases(trainer: Any, out_dir: Path, cases: list[str] | None = None) -> dict[str, Any]:
    """Predict, write and score ``cases`` (default: the fold's validation cases); returns the summary."""
    raw_dir = paths.raw_root() / trainer.dataset_name
    ending = trainer.plans.get("file_ending") or _file_ending(raw_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.network.eval()
    cases = list(cases or trainer.roles.val)
    predictions = [write_prediction(trainer, case, out_dir, ending)
                   for case in tqdm(cases, desc="validation", unit="case", disable=not trainer.progress)]
    results = []
    for case, (pred_path, prediction) in zip(cases, predictions):
        meta = trainer.data.meta(case)
        ref_path = raw_dir / "labelsTr" / f"{case}{ending}"
        reference, _ = read_image(ref_path)
        spacing = meta["spacing"] if trainer.plans["dimensionality"] == 3 else None
        metrics = case_metrics(reference, prediction, trainer.labels, spacing=spacing)
        results.append(CaseResult(case, str(ref_path), str(pred_path), metrics,
                                  tuple(meta["spacing_xyz"]) if spacing else None))
    names = {k: v for k, v in trainer.plans["labels"].items() if v != 0}
    summary = build_summary(results, names, {"trainer": type(trainer).__name__, "fold": trainer.fold,
                                             "fraction": trainer.fraction, "oracle": bool(type(trainer).oracle)})
    write_summary(out_dir / "summary.json", summary)
    return summary


def _file_ending(raw_dir: Path) -> str:
    from sampref_bench.dataset_conversion.dataset_json import load_dataset_json

    return load_dataset_json(raw_dir)["file_ending"]


def merge_label_probabilities(probs: np.ndarray, transform: SliceTransform, labels: list[int], threshold: float,
                              axis: int | None) -> np.ndarray:
    """``(K, S, size, size)`` per-label probabilities -> one uint8 label map in the original geometry.

    Each label's probabilities are mapped back to the original slice size; at every pixel the label with the
    highest probability wins, and the pixel is background when that probability is below ``threshold``.
    Slices are restacked along ``axis`` (``None`` for 2D).
    """
    back = np.stack([transform.inverse_probabilities(probs[:, k]) for k in range(probs.shape[1])], axis=1)
    best = back.argmax(axis=0)
    values = np.asarray(labels, dtype=np.uint8)[best]
    label_slices = np.where(back.max(axis=0) >= threshold, values, 0).astype(np.uint8)
    return from_slices(label_slices, axis)
