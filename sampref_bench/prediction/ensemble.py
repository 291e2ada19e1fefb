"""Fold-ensemble prediction of new images: ``sampref_predict``'s work.

For each input case (:mod:`.inputs`):

1. the case is preprocessed by the planner's own :func:`~sampref_bench.planners.preprocessing.preprocess_image`
   (no label) into a temporary plan data folder, which the loaded trainers read through their label-free
   :class:`~sampref_bench.planners.data.PreprocessedData`; image embeddings and prompts of the case are computed
   by the trainer's own caches (:class:`~sampref_bench.planners.embedding_cache.EmbeddingCache`,
   :class:`~sampref_bench.prompts.store.PromptStore`) into that temporary folder, never into the dataset's;
2. every fold's model (:func:`~sampref_bench.trainers.registry.load_trained_run`) gives its probabilities at the
   preprocessed size: a SAM trainer ``(K, S, size, size)`` per foreground label
   (:meth:`~sampref_bench.trainers.sam.trainer.SAMTrainer.predict_probabilities`), a U-Net ``(K + 1, S, size,
   size)`` softmax classes with background first (:meth:`~sampref_bench.trainers.unet.trainer.UNet.predict_slices`);
   the folds' maps are averaged;
3. the average becomes one label map by the trainers' own rule
   (:func:`~sampref_bench.trainers.validation.merge_label_probabilities`: SAM: highest label wins, background below
   the run's ``threshold``; U-Net: argmax over classes) in the input's original geometry, written atomically as
   ``OUTPUT/{case}{ending}`` with the input's spacing, origin and direction; ``save_probabilities`` also writes
   ``OUTPUT/{case}.npz`` (``probabilities`` ``(C, *spatial)`` float32 in the original geometry, numpy order, and
   ``labels`` ``(C,)``: the label value of each channel, 0 for a U-Net's background).

With one fold the result is exactly that fold's final-validation prediction of the same image.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sampref_bench import paths
from sampref_bench.planners.pipeline import data_folder, signature_hash
from sampref_bench.planners.plans import fraction_key
from sampref_bench.planners.preprocessing import from_slices, preprocess_image
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.prediction.inputs import InputCase, check_output_folder, find_input_cases
from sampref_bench.trainers.validation import merge_label_probabilities
from sampref_bench.utilities.atomic import atomic_write, load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import Geometry, write_image

#: Marker of a temporary prediction data folder (beside ``signature_hash``, which trainers check).
PREDICTION_MARKER = "sampref_predict"


# ------------------------------------------------------------------------------------------------ run folders
def _train_command(dataset: str, trainer: str, fold: int | str, fraction: float, configuration: str,
                   run_name: str | None) -> str:
    command = f"sampref_train {dataset} {trainer} {fold} --fraction {fraction_key(fraction)}"
    if configuration != "2d":
        command += f" -c {configuration}"
    if run_name:
        command += f" --run-name {run_name}"
    return command


def resolve_run_dir(dataset_name: str, trainer: str, plans_name: str, fraction: float, configuration: str = "2d",
                    run_name: str | None = None) -> Path:
    """The run folder ``$SAMPREF_results/{dataset}/{trainer}__{plans}__{config}__f{fraction}`` (without ``fold_k``).

    Without ``run_name`` the configuration part is exactly ``configuration``. With it, a folder whose configuration
    part is ``run_name``, ``{configuration}-{run_name}``, or starts with ``{configuration}`` and ends with
    ``-{run_name}`` (a run tag after model choices, e.g. ``2d-tiny-{run_name}``) is taken; several matches are an
    error listing them. A missing folder is an error naming it, the configurations that exist and the training
    command.
    """
    root = paths.results_root() / dataset_name
    prefix, suffix = f"{trainer}__{plans_name}__", f"__f{fraction_key(fraction)}"
    existing = sorted(p.name[len(prefix):-len(suffix)] for p in root.glob(f"{prefix}*{suffix}") if p.is_dir()) \
        if root.is_dir() else []
    if run_name:
        matches = [c for c in existing if c in (run_name, f"{configuration}-{run_name}")
                   or (c.startswith(f"{configuration}-") and c.endswith(f"-{run_name}"))]
    else:
        matches = [c for c in existing if c == configuration]
    if len(matches) > 1:
        raise SamprefError(f"--run-name {run_name} matches several runs in {root}: {', '.join(matches)}; pass the "
                           "whole configuration part of the folder name as --run-name")
    if not matches:
        wanted = root / f"{prefix}{configuration}{'-' + run_name if run_name else ''}{suffix}"
        others = f" Runs of {trainer} at this fraction: {', '.join(existing)} (select one with --run-name)." \
            if existing else ""
        command = _train_command(dataset_name, trainer, 0, fraction, configuration, run_name)
        raise SamprefError(f"{wanted} does not exist: no run of {trainer} at fraction {fraction_key(fraction)}."
                           f"{others} Train it with `{command}` (one per fold).")
    return root / f"{prefix}{matches[0]}{suffix}"


def fold_dirs(run_dir: Path, folds: Sequence[int | str], dataset_name: str, trainer: str, fraction: float,
              configuration: str = "2d", run_name: str | None = None) -> list[Path]:
    """The finished ``fold_k`` folders of ``run_dir`` for ``folds`` (``["all"]``: every fold with a
    ``checkpoint_final.pth``); a missing or unfinished fold is an error naming the folder and the command."""
    if [str(f) for f in folds] == ["all"]:
        found = sorted((p for p in run_dir.glob("fold_*") if (p / "checkpoint_final.pth").is_file()),
                       key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)
        if not found:
            raise SamprefError(f"{run_dir} holds no finished fold (fold_k/checkpoint_final.pth); train one with "
                               f"`{_train_command(dataset_name, trainer, 0, fraction, configuration, run_name)}`")
        return found
    if "all" in [str(f) for f in folds]:
        raise SamprefError("-f all selects every finished fold; do not combine it with fold numbers")
    out = []
    for fold in dict.fromkeys(int(f) for f in folds):
        folder = run_dir / f"fold_{fold}"
        command = _train_command(dataset_name, trainer, fold, fraction, configuration, run_name)
        if not folder.is_dir():
            siblings = sorted(run_dir.glob("fold_*/config.json"))
            same = f" and the hyperparameters of {siblings[0]} (--set KEY=VALUE)" if siblings else ""
            raise SamprefError(f"{folder} does not exist: fold {fold} was not trained. Train it with `{command}`"
                               f"{same}, or leave it out of -f")
        if not (folder / "checkpoint_final.pth").is_file():
            raise SamprefError(f"{folder / 'checkpoint_final.pth'} is missing: fold {fold} has not finished. Finish "
                               f"it with `{command} --continue`, or leave it out of -f")
        out.append(folder)
    return out


# ------------------------------------------------------------------------------------------------ the ensemble
def rebind_data(trainer: Any, data: Any) -> None:
    """Point a loaded trainer at another label-free :class:`PreprocessedData` (the prediction inputs) through its
    :meth:`~sampref_bench.trainers.base.BaseTrainer.use_data` hook (caches are rebuilt beside ``data``)."""
    trainer.use_data(data)


@dataclass
class FoldEnsemble:
    """Loaded fold models of one run and how their averaged probabilities become a label map.

    ``kind`` is ``"sam"`` (per-label sigmoid probabilities, background where the best label is below ``threshold``)
    or ``"unet"`` (softmax classes, background first, argmax); ``channel_labels`` is the label value of each
    probability channel.
    """

    trainers: list[Any]
    run_dirs: list[Path]
    kind: str
    channel_labels: list[int]
    threshold: float
    plans: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, run_dirs: list[Path], device: str = "cpu") -> FoldEnsemble:
        """Load every fold with :func:`~sampref_bench.trainers.registry.load_trained_run`; folds must agree on
        trainer, plan and threshold."""
        from sampref_bench.trainers.registry import load_trained_run

        trainers = [load_trained_run(run_dir, device=device) for run_dir in run_dirs]
        first = trainers[0]
        if hasattr(first, "predict_probabilities"):
            kind, labels = "sam", list(first.labels)
            thresholds = {float(t.config["threshold"]) for t in trainers}
        elif hasattr(first, "predict_slices"):
            kind, labels, thresholds = "unet", [0, *first.labels], {0.0}
        else:
            raise SamprefError(f"{type(first).__name__} (run {run_dirs[0]}) gives no probabilities "
                               "(neither predict_probabilities nor predict_slices): it cannot be ensembled")
        if len(thresholds) > 1:
            raise SamprefError(f"the folds {', '.join(map(str, run_dirs))} use different thresholds "
                               f"{sorted(thresholds)}; ensemble folds of one configuration only")
        return cls(trainers, list(run_dirs), kind, labels, thresholds.pop(), first.plans)

    def fold_probabilities(self, trainer: Any, case: str) -> np.ndarray:
        """``(C, S, size, size)`` float32 probabilities of one fold for a preprocessed case of its data."""
        with torch.no_grad():
            if self.kind == "sam":
                return trainer.predict_probabilities(case)
            return trainer.predict_slices(case, trainer.data.all_slices(case))

    def probabilities(self, data: Any, case: str) -> np.ndarray:
        """``(C, S, size, size)`` float32: the mean over folds of :meth:`fold_probabilities` of ``case`` of ``data``."""
        total: np.ndarray | None = None
        for trainer in self.trainers:
            rebind_data(trainer, data)
            probs = self.fold_probabilities(trainer, case)
            total = probs.astype(np.float32) if total is None else total + probs
        assert total is not None
        return total / np.float32(len(self.trainers)) if len(self.trainers) > 1 else total

    def label_map(self, probabilities: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        """uint8 label map in the original geometry (numpy order) from averaged ``(C, S, size, size)`` maps."""
        return merge_label_probabilities(probabilities, SliceTransform.from_dict(meta["transform"]),
                                         self.channel_labels, self.threshold, meta["slicing_axis"])


def original_probabilities(probabilities: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """``(C, S, size, size)`` -> ``(C, *spatial)`` float32 in the case's original geometry (numpy order)."""
    transform = SliceTransform.from_dict(meta["transform"])
    back = np.stack([transform.inverse_probabilities(probabilities[:, k]) for k in range(probabilities.shape[1])],
                    axis=1)  # (C, S, H, W)
    return np.stack([from_slices(channel, meta["slicing_axis"]) for channel in back]).astype(np.float32)


def _write_mask(path: Path, mask: np.ndarray, meta: dict[str, Any], ending: str) -> None:
    """Write a label map with the input's geometry through a temporary sibling (same ending), then rename."""
    geometry = Geometry(tuple(meta["spacing_xyz"]), tuple(meta["origin"]), tuple(meta["direction"]))
    tmp = path.parent / f".{path.name[:-len(ending)] if ending else path.name}.tmp{ending}"
    try:
        write_image(tmp, mask, geometry)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _prediction_data(stage: Path, plans: dict[str, Any], case: InputCase) -> Any:
    """Preprocess ``case`` with the planner's code into a fresh data folder under ``stage``; its data object."""
    from sampref_bench.planners.data import PreprocessedData

    data_dir = data_folder(stage, plans)
    data_dir.mkdir(parents=True, exist_ok=True)
    preprocess_image(list(case.channel_files), None, plans, case.case, data_dir)
    write_json_atomic(data_dir / "preprocessing.json",
                      {PREDICTION_MARKER: True, "signature_hash": signature_hash(plans), "cases": [case.case],
                       "unlabeled_cases": []})
    return PreprocessedData(data_dir, plans)


@dataclass
class PredictionResult:
    """What :func:`predict_folder` did: the files written and the fold folders used."""

    written: list[Path]
    run_dirs: list[Path]


def predict_folder(dataset: str | int, trainer: str, input_dir: Path, output_dir: Path,
                   folds: Sequence[int | str] = (0, 1, 2, 3, 4), fraction: float = 1.0, configuration: str = "2d",
                   run_name: str | None = None, device: str = "cpu", save_probabilities: bool = False,
                   progress: bool = True) -> PredictionResult:
    """Predict every case of ``input_dir`` with the fold ensemble of a run; see the module docstring.

    Inputs and the output folder are checked before any model is loaded.
    """
    name = paths.resolve_dataset(dataset, paths.preprocessed_root(), paths.raw_root())
    preprocessed = paths.preprocessed_root() / name
    plans_path = preprocessed / "plans.json"
    if not plans_path.is_file():
        raise SamprefError(f"{plans_path} is missing: run `sampref_plan -d {name}` (and train) first")
    plans = load_json(plans_path)
    if configuration != plans["configuration"]:
        raise SamprefError(f"configuration {configuration!r} is not in the plan of {name} (it has "
                           f"{plans['configuration']!r})")
    dataset_json = load_json(preprocessed / "dataset.json")
    n_channels = len(dataset_json["channel_names"])
    cases = find_input_cases(Path(input_dir), n_channels, int(plans["dimensionality"]))
    output_dir = Path(output_dir)
    check_output_folder(Path(input_dir), output_dir, cases, save_probabilities)
    run_dir = resolve_run_dir(name, trainer, plans["plans_name"], fraction, configuration, run_name)
    run_dirs = fold_dirs(run_dir, folds, name, trainer, fraction, configuration, run_name)
    ensemble = FoldEnsemble.load(run_dirs, device)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="sampref_predict_") as tmp:
        for case in tqdm(cases, desc=f"predict ({len(run_dirs)} fold(s))", unit="case", disable=not progress):
            stage = Path(tmp) / "stage"
            data = _prediction_data(stage, plans, case)
            meta = data.meta(case.case)
            probabilities = ensemble.probabilities(data, case.case)
            path = output_dir / case.output_name()
            _write_mask(path, ensemble.label_map(probabilities, meta), meta, case.ending)
            written.append(path)
            if save_probabilities:
                arrays = {"probabilities": original_probabilities(probabilities, meta),
                          "labels": np.asarray(ensemble.channel_labels, np.int64)}
                npz = output_dir / f"{case.case}.npz"
                atomic_write(npz, lambda handle, a=arrays: np.savez_compressed(handle, **a))
                written.append(npz)
            shutil.rmtree(stage)  # embeddings and prompts of a volume can be large: one case at a time
    return PredictionResult(written, run_dirs)
