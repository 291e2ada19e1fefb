"""Score a folder of predicted label maps against a folder of reference label maps.

Files are matched by case name, the file name without its ending (double endings such as ``.nii.gz``
honoured); reference and prediction may use different formats. Any format SimpleITK reads works: PNG for
2D, NIfTI/NRRD/MHA for 2D or 3D. Each pair is read with SimpleITK, checked (single channel, integer
values, equal shapes) and scored with :func:`~sampref_bench.evaluation.metrics.case_metrics`; 3D volumes
are scored as whole volumes. With a dataset.json, a value it does not declare, in a reference or a prediction, is
refused (it would silently count as background); a label asked for by value that no file holds is refused too
(its Dice would be NaN in every case). Surface metrics use the reference's spacing in mm; PNG files carry no
physical spacing, so there they are in pixels.
"""

from __future__ import annotations

import math
import multiprocessing
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sampref_bench.dataset_conversion.dataset_json import foreground_labels, validate_dataset_json
from sampref_bench.evaluation.metrics import absent_label_metrics, case_metrics
from sampref_bench.evaluation.summary import CaseResult, build_summary, write_summary
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import VOLUME_ENDINGS, read_sitk, split_ending

#: Endings of label-map files that are matched (case-insensitive); other files (e.g. summary.json) are ignored.
LABEL_ENDINGS = (".png", *VOLUME_ENDINGS)
#: Endings without physical geometry: surface distances there are in pixels.
PIXEL_ENDINGS = (".png",)


def list_label_files(folder: Path, what: str) -> dict[str, Path]:
    """``{case: path}`` of the label-map files directly in ``folder`` (hidden files skipped).

    Raises :class:`SamprefError` when ``folder`` is missing or one case has files with two endings.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SamprefError(f"{what} folder {folder} does not exist or is not a folder.")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        stem, ending = split_ending(path, LABEL_ENDINGS)
        if ending and path.is_file() and not path.name.startswith("."):
            found.setdefault(stem, []).append(path)
    clashes = [f"{case}: {', '.join(p.name for p in paths)}" for case, paths in found.items() if len(paths) > 1]
    if clashes:
        raise SamprefError(f"{what} folder {folder} holds several files for one case ({'; '.join(clashes)}); "
                           "keep one file per case.")
    return {case: paths[0] for case, paths in found.items()}


def match_cases(references: Mapping[str, Path], predictions: Mapping[str, Path], ref_dir: Path, pred_dir: Path,
                cases: Sequence[str] | None = None) -> list[tuple[str, Path, Path]]:
    """``[(case, reference, prediction)]`` sorted by case; every problem is reported in one SamprefError.

    Without ``cases`` every reference needs a prediction and every prediction a reference; with ``cases``
    only those cases are evaluated (both files must exist) and other files are ignored.
    """
    wanted = sorted(references) if cases is None else sorted(dict.fromkeys(cases))
    problems: list[str] = []
    if not wanted:
        problems.append(f"no label maps ({', '.join(LABEL_ENDINGS)}) found in reference folder {ref_dir}")
    no_ref = [c for c in wanted if c not in references]
    if no_ref:
        problems.append(f"{len(no_ref)} case(s) have no reference in {ref_dir}: {', '.join(no_ref)}")
    no_pred = [c for c in wanted if c in references and c not in predictions]
    if no_pred:
        problems.append(f"{len(no_pred)} reference(s) have no prediction in {pred_dir}: "
                        + ", ".join(references[c].name for c in no_pred))
    if cases is None:
        extra = sorted(set(predictions) - set(references))
        if extra:
            problems.append(f"{len(extra)} prediction(s) have no reference in {ref_dir}: "
                            + ", ".join(predictions[c].name for c in extra))
    if problems:
        raise SamprefError("; ".join(problems) + ". Predictions are matched to references by file name "
                           "without its ending (case.png, case.nii.gz).")
    return [(c, references[c], predictions[c]) for c in wanted]


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Read a label map as an integer array (SimpleITK order) and its spacing ``(x, y[, z])`` in mm.

    The spacing is ``None`` for PNG files. Multi-channel images and non-integer values raise
    :class:`SamprefError` naming the file.
    """
    image = read_sitk(Path(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SamprefError(f"{path} has {image.GetNumberOfComponentsPerPixel()} channels per pixel; a label map "
                           "must be a single-channel image of integer label values (save it as grayscale).")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            raise SamprefError(f"{path} holds non-integer values; a label map holds integer label values only "
                               "(threshold or argmax the prediction before scoring).")
        array = array.astype(np.int32)
    _, ending = split_ending(path, LABEL_ENDINGS)
    spacing = None if ending in PIXEL_ENDINGS else tuple(float(s) for s in image.GetSpacing())
    return array, spacing


def label_values(array: np.ndarray) -> list[int]:
    """The sorted distinct values in an integer ``array``, background included (a counting pass for small
    non-negative values)."""
    if array.size and np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() < 65536:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel()))]
    return [int(v) for v in np.unique(array)]


def foreground_values(array: np.ndarray) -> list[int]:
    """The sorted positive values in an integer ``array``."""
    return [v for v in label_values(array) if v > 0]


@dataclass
class _Task:
    case: str
    reference: Path
    prediction: Path
    labels: tuple[int, ...] | None
    hd95: bool
    nsd_tolerance: float | None
    #: Every value the dataset.json declares (background included), and that file; ``None``: no dataset.json.
    declared: dict[str, int] | None = None
    dataset_json: str = ""


def _values_text(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _declared_text(declared: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sorted(declared.items(), key=lambda kv: kv[1]))


def undeclared_problem(what: str, path: Path, values: Sequence[int], declared: Mapping[str, int],
                       dataset_json: str) -> str:
    """The sentence for a label map ``path`` (``what``: reference or prediction) holding ``values`` that
    ``dataset_json`` does not declare."""
    fix = ("map every value to a declared label (0 for background) before scoring, e.g. write a binary mask as "
           "0/1, not 0/255" if what == "prediction" else
           "fix the reference, or declare the label in the dataset.json (`sampref_convert verify` refuses such a "
           "label map in a raw dataset)")
    return (f"{what} {path} holds value(s) {_values_text(values)} that {dataset_json} does not declare (its labels: "
            f"{_declared_text(declared)}); they would count as background and lower the scores silently. "
            f"Nothing was scored: {fix}, and rerun.")


def _evaluate_case(task: _Task) -> tuple[CaseResult, list[int], int, list[int]]:
    """Score one pair: returns the result, the reference's foreground values, the number of voxels and the
    prediction's foreground values.

    Without ``task.labels`` every foreground value found in the reference or the prediction is scored; the
    caller keeps the reference values. With ``task.declared`` a value of either file that the dataset.json does
    not declare is a :class:`SamprefError` naming the file and the values.
    """
    reference, spacing = read_label_map(task.reference)
    prediction, pred_spacing = read_label_map(task.prediction)
    if reference.shape != prediction.shape:
        raise SamprefError(f"shape mismatch for case {task.case}: reference {task.reference} has shape "
                           f"{reference.shape}, prediction {task.prediction} has {prediction.shape} "
                           "(SimpleITK order (z, y, x)); resample the prediction onto the reference grid.")
    surface = task.hd95 or task.nsd_tolerance is not None
    if surface and spacing is not None and pred_spacing is not None and not np.allclose(
            spacing, pred_spacing, rtol=1e-3, atol=0):
        raise SamprefError(f"spacing mismatch for case {task.case}: reference {task.reference} has {spacing} mm, "
                           f"prediction {task.prediction} has {pred_spacing} mm; surface distances would be "
                           "ambiguous. Write the prediction with the reference's geometry.")
    ref_all, pred_all = label_values(reference), label_values(prediction)
    if task.declared is not None:
        allowed = set(task.declared.values())
        problems = [undeclared_problem(what, path, bad, task.declared, task.dataset_json)
                    for what, path, found in (("reference", task.reference, ref_all),
                                              ("prediction", task.prediction, pred_all))
                    if (bad := [v for v in found if v not in allowed])]
        if problems:
            raise SamprefError(f"case {task.case}: " + "; ".join(problems))
    ref_values = [v for v in ref_all if v > 0]
    pred_values = [v for v in pred_all if v > 0]
    labels = task.labels
    if labels is None:
        labels = tuple(sorted(set(ref_values) | set(pred_values)))
    metrics: dict[int, dict[str, float | int]] = {}
    if labels:
        metrics = case_metrics(reference, prediction, labels, spacing=None if spacing is None else spacing[::-1],
                               hd95=task.hd95, surface_dice_tolerance_mm=task.nsd_tolerance)
    result = CaseResult(task.case, str(task.reference), str(task.prediction), metrics, spacing)
    return result, ref_values, int(reference.size), pred_values


def declared_labels(dataset_json: Path | None) -> tuple[Path, dict[str, int]] | None:
    """``(path, labels)`` of a dataset.json (a file or the folder holding one): every label it declares,
    background included; ``None`` without one."""
    if dataset_json is None:
        return None
    path = Path(dataset_json)
    path = path / "dataset.json" if path.is_dir() else path
    data = load_json(path)
    validate_dataset_json(data, path)
    return path, dict(data["labels"])


def resolve_labels(labels: Sequence[int] | Mapping[str, int] | None, dataset_json: Path | None
                   ) -> dict[str, int] | None:
    """Label names -> values to score, from ``labels`` and/or a dataset.json (file or folder holding one).

    ``None`` means "every foreground value found in the references". With both, ``labels`` picks a subset
    of the dataset's labels by value.
    """
    declared = declared_labels(dataset_json)
    named = None if declared is None else foreground_labels({"labels": declared[1]})
    if labels is None:
        return named
    pairs = list(labels.items()) if isinstance(labels, Mapping) else [(None, v) for v in labels]
    raw = [v for _, v in pairs]
    if not pairs or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in raw):
        raise SamprefError(f"labels must be non-negative integers, got {raw}.")
    if len(set(int(v) for v in raw)) != len(raw):
        raise SamprefError(f"labels must be unique, got {raw}.")
    by_value = {v: k for k, v in (named or {}).items()}
    chosen = {str(k) if k is not None else by_value.get(int(v), f"label_{int(v)}"): int(v) for k, v in pairs}
    if named is not None:
        unknown = [v for v in chosen.values() if v not in named.values()]
        if unknown:
            raise SamprefError(f"label value(s) {unknown} are not foreground labels of {dataset_json} "
                               f"({named}).")
    return chosen


def _init_worker() -> None:
    """One thread per worker process: the pool already uses the cores, and torch/ITK threads would fight."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"  # read by torch if the surface metrics import it later
    if "torch" in sys.modules:  # preloaded by the fork server
        sys.modules["torch"].set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _pool_context(surface: bool) -> BaseContext:
    """A ``forkserver`` context where available (else ``spawn``): workers fork from one clean server process.

    The server imports this module, and MONAI when surface metrics are asked for, once; spawned workers would
    each import MONAI (about 10 s apiece on a small machine). A server already running keeps its preloads.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__] + (["monai.metrics"] if surface else []))
    return context


_Outcome = tuple[CaseResult, list[int], int, list[int]]


def _run_tasks(tasks: list[_Task], num_processes: int, progress: bool) -> list[_Outcome]:
    """Run :func:`_evaluate_case` over ``tasks`` (in-process for one process); results in task order."""
    results: dict[int, _Outcome] = {}
    errors: list[str] = []
    bar = tqdm(total=len(tasks), desc="evaluating", unit="case", disable=not progress)
    if num_processes <= 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            try:
                results[index] = _evaluate_case(task)
            except SamprefError as err:
                errors.append(str(err))
            bar.update()
    else:
        workers = min(num_processes, len(tasks))
        context = _pool_context(tasks[0].hd95 or tasks[0].nsd_tolerance is not None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
            futures = {pool.submit(_evaluate_case, task): index for index, task in enumerate(tasks)}
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except SamprefError as err:
                    errors.append(str(err))
                bar.update()
    bar.close()
    if errors:
        raise SamprefError(f"{len(errors)} case(s) could not be scored:\n  " + "\n  ".join(sorted(errors)))
    return [results[i] for i in range(len(tasks))]


def _check_requested_present(chosen: Mapping[str, int], outcomes: Sequence[_Outcome], ref_dir: Path, pred_dir: Path,
                             declared: tuple[Path, dict[str, int]] | None) -> None:
    """A :class:`SamprefError` when a label asked for by value occurs in no reference and no prediction: its
    Dice would be NaN in every case, a table that says nothing."""
    present = sorted({v for _, ref_values, _, pred_values in outcomes for v in (*ref_values, *pred_values)})
    absent = [v for v in sorted(chosen.values()) if v not in present]
    if not absent:
        return
    names = {v: k for k, v in chosen.items()}
    asked = ", ".join(f"{v} ({names[v]})" if not names[v].startswith("label_") else str(v) for v in absent)
    where = (f"; {declared[0]} declares {_declared_text({k: v for k, v in declared[1].items() if v})}"
             if declared is not None else "")
    raise SamprefError(
        f"label(s) {asked} asked for (-l) occur in no reference in {ref_dir} and no prediction in {pred_dir}: "
        f"their Dice would be NaN in every case. Labels present in these files: "
        f"{_values_text(present) if present else 'none'}{where}. Ask for labels that occur, or check that these "
        "are the folders you meant; nothing was scored.")


def evaluate_folders(ref_dir: Path, pred_dir: Path, labels: Sequence[int] | Mapping[str, int] | None = None,
                     output: Path | None = None, num_processes: int = 2, hd95: bool = False,
                     nsd_tolerance_mm: float | None = None, dataset_json: Path | None = None,
                     cases: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Score every prediction in ``pred_dir`` against its reference in ``ref_dir``; return summary.json's dict.

    ``labels`` are the label values to score (a list, or a ``{name: value}`` mapping); by default the
    foreground labels of ``dataset_json`` (a dataset.json file or its folder) when given, else every
    non-zero value found in the references. ``hd95`` and ``nsd_tolerance_mm`` add HD95 and normalized surface
    Dice in mm (pixels for PNG). ``cases`` restricts the evaluation to those case names (e.g. one fold's
    validation cases against a full ``labelsTr``); without it the two folders must hold the same cases.
    ``output``, when given, receives summary.json atomically. Work is spread over ``num_processes`` worker
    processes forked from a clean fork server (spawned where there is none; 1: in this process). Every
    missing file, shape mismatch, unreadable file or (with ``dataset_json``) value the dataset.json does not
    declare is reported in one :class:`SamprefError` naming the files; so is a label given in ``labels`` that
    occurs in no reference and no prediction. A declared label that some case lacks in both files keeps the
    nnU-Net semantic (NaN there, left out of the means).
    """
    if int(num_processes) < 1:
        raise SamprefError(f"the number of processes must be at least 1, got {num_processes}.")
    if nsd_tolerance_mm is not None and not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise SamprefError(f"the surface Dice tolerance must be a finite number of mm >= 0, got {nsd_tolerance_mm}.")
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    chosen = resolve_labels(labels, dataset_json)
    declared = declared_labels(dataset_json)
    pairs = match_cases(list_label_files(ref_dir, "reference"), list_label_files(pred_dir, "prediction"),
                        ref_dir, pred_dir, cases)
    values = None if chosen is None else tuple(sorted(chosen.values()))
    tasks = [_Task(case, ref, pred, values, hd95, nsd_tolerance_mm,
                   None if declared is None else declared[1], "" if declared is None else str(declared[0]))
             for case, ref, pred in pairs]
    outcomes = _run_tasks(tasks, int(num_processes), progress)
    if chosen is None:
        found = sorted({v for _, ref_values, _, _ in outcomes for v in ref_values})
        if not found:
            raise SamprefError(f"the references in {ref_dir} hold no foreground label; name the labels to score "
                               "(-l 1 2, or --dataset-json).")
        chosen = {f"label_{v}": v for v in found}
    elif labels is not None:
        _check_requested_present(chosen, outcomes, ref_dir, pred_dir, declared)
    scored = sorted(chosen.values())
    results = []
    for result, _, n_voxels, _ in outcomes:
        result.metrics = {label: result.metrics.get(label) or absent_label_metrics(
            n_voxels, hd95, nsd_tolerance_mm is not None) for label in scored}
        results.append(result)
    settings = {"hd95": hd95, "nsd_tolerance": nsd_tolerance_mm, "reference_folder": str(ref_dir),
                "prediction_folder": str(pred_dir)}
    summary = build_summary(results, chosen, settings)
    if output is not None:
        write_summary(Path(output), summary)
    return summary
