"""The prompt-quality report of a dataset: how good are the unsupervised boxes before any training?

For every (case, slice, label) pair where the label is present, the prompt box is compared with the
ground-truth box of that label on that slice. Figures (per label and pooled):

* ``box_iou``: mean (and median) IoU of the prompt box with the ground-truth bounding box;
* ``centre_inside``: share of prompt boxes whose centre pixel lies inside the target;
* ``points_inside``: share of interior points that lie inside the target;
* ``saliency_empty``: share of pairs where the saliency found nothing and the whole image became the box.

Reading labels here is a report, not training: nothing in it feeds a trainer. But a person who picks prompt
settings (saliency source, CRF, points) from it tunes on the cases it scored, so a report states which cases
those are (``scored``, :func:`scored_statement`): a fold's training cases (``prompt_quality_fold{K}.json``, the
report to choose settings from: that fold's validation cases stay unseen) or every case
(``prompt_quality.json``, which includes every fold's validation cases and serves as a description, not for
choosing). Both are written into the visual prompts' folder, with overlay PNGs (image, saliency, CRF mask,
boxes) of a few scored cases (``overlays/`` or ``overlays_fold{K}/``).

``prior``: a run's :class:`~sampref_bench.prompts.label_prior.LabelPrior` scores the prompts that run gives SAM
with ``component_choice="label_prior"`` (each label's own component) instead of the cached largest component; the
report records the prior's digest (``label_prior``). Such a prior comes from a run's labeled cases: score it on
cases outside them (its fold's validation cases) to see how it does on new images.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sampref_bench.planners.data import LabelStore, Sample
from sampref_bench.prompts.label_prior import LabelPrior
from sampref_bench.prompts.regions import mask_box
from sampref_bench.prompts.store import PromptStore, VisualPrompt
from sampref_bench.utilities.atomic import write_bytes_atomic, write_json_atomic


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``x0, y0, x1, y1`` pixel boxes with inclusive corners (a box of one pixel has area 1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def score_prompt(prompt: VisualPrompt, target: np.ndarray) -> dict[str, float]:
    """Figures of one prompt against its ``(S, S)`` bool target (which must not be empty)."""
    truth = mask_box(target)
    if truth is None:
        raise ValueError("score_prompt needs a non-empty target")
    cx = int(round((prompt.box[0] + prompt.box[2]) / 2))
    cy = int(round((prompt.box[1] + prompt.box[3]) / 2))
    inside = [bool(target[int(y), int(x)]) for x, y in prompt.points]
    return {"box_iou": box_iou(prompt.box, truth), "centre_inside": float(target[cy, cx]),
            "points_inside": float(np.mean(inside)) if inside else float("nan"),
            "saliency_empty": float(prompt.empty)}


def _visual(store: PromptStore, sample: Sample, prior: LabelPrior | None) -> VisualPrompt:
    """The visual prompt of ``sample`` (the label's chosen component with a ``prior``, else the cached one)."""
    if prior is None:
        return store.visual(sample.case, sample.slice, sample.label)
    return store.visual(sample.case, sample.slice, sample.label, prior)


def _summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    if not rows:
        return {"pairs": 0}
    out: dict[str, Any] = {"pairs": len(rows)}
    for key in ("box_iou", "centre_inside", "points_inside", "saliency_empty"):
        values = np.array([r[key] for r in rows], float)
        out[key] = round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else None
    out["box_iou_median"] = round(float(np.median([r["box_iou"] for r in rows])), 4)
    return out


def prompt_quality(store: PromptStore, labels: LabelStore, cases: Iterable[str], label_values: list[int],
                   progress: bool = True, prior: LabelPrior | None = None) -> dict[str, Any]:
    """Score the prompts of every (slice, label) pair of ``cases`` where the label is present (with ``prior``, the
    per-label components it chooses, see the module docstring).

    Returns ``{"settings", "folder", "label_prior", "pooled": {...}, "per_label": {name: {...}}, "cases": {case:
    [rows]}}`` (``label_prior``: the prior's digest, ``None`` without one).
    """
    samples = [Sample(case, k, v) for case in cases for k, present in enumerate(labels.labels_per_slice(case))
               for v in label_values if v in present]
    rows: dict[int, list[dict[str, float]]] = {v: [] for v in label_values}
    per_case: dict[str, list[dict[str, Any]]] = {}
    for s in tqdm(samples, desc="prompt quality", unit="pair", disable=not progress or not samples):
        row = score_prompt(_visual(store, s, prior), labels.mask(s))
        rows[s.label].append(row)
        per_case.setdefault(s.case, []).append({"slice": s.slice, "label": s.label, **row})
    pooled = [r for values in rows.values() for r in values]
    return {"saliency": store.settings["saliency"], "settings": store.saliency_source.settings(),
            "folder": str(store.visual_folder), "label_prior": None if prior is None else prior.digest(),
            "pooled": _summary(pooled),
            "per_label": {store.label_names[v]: _summary(rows[v]) for v in label_values}, "cases": per_case}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary_text(report: dict[str, Any]) -> str:
    """One line per label and the pooled figures, for the console (after the report's ``scored`` statement, when
    it has one)."""
    lines = [f"prompt quality ({report['saliency']}), against the ground-truth boxes:"]
    if report.get("scored"):
        lines.append(f"  {report['scored']}")
    for name, s in [*report["per_label"].items(), ("all labels", report["pooled"])]:
        if not s.get("pairs"):
            lines.append(f"  {name:<12} no present pair")
            continue
        lines.append(f"  {name:<12} pairs {s['pairs']:>5}  box IoU {s['box_iou']:.3f} "
                     f"(median {s['box_iou_median']:.3f})  centre inside {s['centre_inside']:.1%}  "
                     f"points inside {_percent(s['points_inside'])}  "
                     f"saliency empty {s['saliency_empty']:.1%}")
    return "\n".join(lines)


def write_overlays(store: PromptStore, labels: LabelStore, samples: list[Sample], folder: Path,
                   prior: LabelPrior | None = None) -> list[Path]:
    """One PNG per sample: the image, the saliency, the CRF mask (the component the prompt came from), and the image
    with the prompt box (red), its points (yellow) and the ground-truth box (green); ``prior`` as in
    :func:`prompt_quality`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for s in samples:
        prompt = _visual(store, s, prior)
        image = store.data.rgb(s.case, [s.slice])[0].transpose(1, 2, 0)
        truth = mask_box(labels.mask(s))
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
        panels = [(image, "image", None), (prompt.saliency, "saliency", "magma"), (prompt.mask, "CRF mask", "gray"),
                  (image, "boxes: prompt (red), truth (green)", None)]
        for ax, (array, title, cmap) in zip(axes, panels):
            ax.imshow(array, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        for box, colour in [(prompt.box, "red"), (truth, "lime")]:
            if box is not None:
                axes[3].add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                            edgecolor=colour, linewidth=1.5))
        if len(prompt.points):
            axes[3].scatter(prompt.points[:, 0], prompt.points[:, 1], c="yellow", s=12)
        fig.suptitle(f"{s.case} slice {s.slice} label {s.label}" + (" (saliency empty)" if prompt.empty else ""),
                     fontsize=9)
        path = folder / f"{s.case}_{s.slice:04d}_l{s.label}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        write_bytes_atomic(path, buffer.getvalue())
        written.append(path)
    return written


def scored_statement(n_cases: int, fold: int | None = None) -> str:
    """Which cases a report scored, as it states them: ``fold`` ``None`` means every case of the dataset."""
    if fold is not None:
        return f"scored: fold {fold} training cases ({n_cases})"
    return (f"scored: all {n_cases} cases, including every fold's validation cases; choose settings from a fold's "
            "training-case report (sampref_prompts --fold K)")


def report_names(fold: int | None = None) -> tuple[str, str]:
    """``(JSON file, overlay folder)`` names of the report of ``fold`` (``None``: every case)."""
    return ("prompt_quality.json", "overlays") if fold is None else (f"prompt_quality_fold{fold}.json",
                                                                     f"overlays_fold{fold}")


def write_quality_report(store: PromptStore, labels: LabelStore, cases: list[str], label_values: list[int],
                         n_overlays: int = 6, progress: bool = True,
                         fold: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Compute :func:`prompt_quality` of ``cases``, write it and overlays of ``n_overlays`` cases (spread evenly
    over the sorted case names) into the visual prompts' folder (:func:`report_names`); return the JSON path and
    the report.

    ``fold``: ``cases`` are that fold's training cases (``None``: every case of the dataset); the report records
    it (``fold``, ``n_scored_cases``) and states it (``scored``, :func:`scored_statement`).
    """
    report = prompt_quality(store, labels, cases, label_values, progress=progress)
    report["fold"] = fold
    report["n_scored_cases"] = len(cases)
    report["scored"] = scored_statement(len(cases), fold)
    json_name, overlay_name = report_names(fold)
    picked = []
    scored = sorted(report["cases"])
    spread = np.unique(np.linspace(0, len(scored) - 1, max(0, min(n_overlays, len(scored)))).round().astype(int))
    for case in [scored[i] for i in spread]:
        first = report["cases"][case][0]
        picked.append(Sample(case, first["slice"], first["label"]))
    report["overlays"] = [str(p) for p in write_overlays(store, labels, picked, store.visual_folder / overlay_name)]
    path = store.visual_folder / json_name
    write_json_atomic(path, report)
    return path, report
