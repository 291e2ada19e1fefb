"""The data layer of every trainer: preprocessed slices, case roles and training samples.

A *sample* is one (case, slice, label) triple, as DESIGN.md's "Several target labels" says: SAM segments
one target at a time, so an image with two labels present gives two samples with their own prompts.
Case roles for a fold and annotation fraction: ``labeled`` (pixel labels visible to the trainer),
``rated`` (labels visible only to the simulated annotator of DPO trainers), ``unlabeled`` (the rest of
the fold's training cases) and ``val``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sampref_bench.planners.plans import fraction_key
from sampref_bench.utilities.arrays import load_npy
from sampref_bench.utilities.errors import SamprefError


@dataclass(frozen=True)
class Sample:
    """One training or validation target: slice ``slice`` of ``case``, foreground label value ``label``."""

    case: str
    slice: int
    label: int


@dataclass
class CaseRoles:
    """Which cases of a fold play which role at one annotation fraction."""

    train: list[str]
    val: list[str]
    labeled: list[str]
    rated: list[str]
    unlabeled: list[str]


def case_roles(splits: list[dict[str, Any]], fold: int, fraction: float, budget: str = "supervised") -> CaseRoles:
    """Case roles of ``fold`` at ``fraction``.

    ``budget="supervised"``: the fraction-f cases are labeled. ``budget="dpo"``: the first
    ``dpo_labeled_fraction`` of the permutation is labeled and the rest of the fraction-f cases are rated
    (DESIGN.md, "Budget accounting").
    """
    if not 0 <= fold < len(splits):
        raise SamprefError(f"fold {fold} does not exist: splits_final.json has folds 0..{len(splits) - 1}")
    entry = splits[fold]
    key = fraction_key(fraction)
    if key not in entry["labeled"]:
        raise SamprefError(f"fraction {fraction} was not planned (planned: {', '.join(entry['labeled'])}); rerun "
                           f"sampref_plan with --fractions including {key}")
    budgeted = list(entry["labeled"][key])
    if budget == "dpo":
        labeled = [c for c in entry["dpo_labeled"] if c in budgeted]
        rated = [c for c in budgeted if c not in labeled]
    elif budget == "supervised":
        labeled, rated = budgeted, []
    else:
        raise ValueError(f"unknown budget {budget!r}")
    used = set(labeled) | set(rated)
    return CaseRoles(list(entry["train"]), list(entry["val"]), labeled, rated,
                     [c for c in entry["permutation"] if c not in used])


class PreprocessedData:
    """Read access to a plan's preprocessed folder (``samprefPlans_2d``); arrays are memory-mapped."""

    def __init__(self, data_dir: Path, plans: dict[str, Any]) -> None:
        self.data_dir = Path(data_dir)
        if not (self.data_dir / "preprocessing.json").is_file():
            raise SamprefError(f"{self.data_dir} holds no finished preprocessing; run `sampref_plan -d "
                               f"{plans['dataset_name']}`")
        self.plans = plans
        self.rgb_channels = list(plans["channels_to_rgb"])
        self._meta: dict[str, dict[str, Any]] = {}
        self._images: dict[str, np.ndarray] = {}
        self._seg: dict[str, np.ndarray] = {}

    def meta(self, case: str) -> dict[str, Any]:
        """Per-case metadata written by preprocessing (transform, geometry, training slices ...)."""
        if case not in self._meta:
            path = self.data_dir / f"{case}.json"
            if not path.is_file():
                raise SamprefError(f"{path} is missing; rerun `sampref_plan -d {self.plans['dataset_name']} --clean`")
            self._meta[case] = json.loads(path.read_text())
        return self._meta[case]

    def images(self, case: str) -> np.ndarray:
        """``(S, C, size, size)`` stored images (uint8 scaled by 255, or float16 in [0, 1])."""
        if case not in self._images:
            self._images[case] = load_npy(self.data_dir / f"{case}.npy")
        return self._images[case]

    def seg(self, case: str) -> np.ndarray:
        """``(S, size, size)`` uint8 label maps."""
        if case not in self._seg:
            self._seg[case] = load_npy(self.data_dir / f"{case}_seg.npy")
        return self._seg[case]

    def rgb(self, case: str, slices: list[int] | slice | None = None) -> np.ndarray:
        """``(N, 3, size, size)`` float32 images in [0, 1] mapped to three channels as the plan says."""
        stack = self.images(case)
        picked = stack[slices if slices is not None else slice(None)]
        out = np.asarray(picked[:, self.rgb_channels], dtype=np.float32)
        if stack.dtype == np.uint8:
            out /= 255.0
        return out

    def samples(self, cases: list[str], labels: list[int], *, slices: str = "train",
                require_present: bool = True) -> list[Sample]:
        """Samples of ``cases`` for every label in ``labels``.

        ``slices="train"`` uses the planned training slices, ``"all"`` every slice. ``require_present``
        keeps only (slice, label) pairs where the label occurs in the slice.
        """
        out = []
        for case in cases:
            meta = self.meta(case)
            indices = meta["train_slices"] if slices == "train" else range(meta["n_slices"])
            for k in indices:
                present = set(meta["labels_per_slice"][k])
                for label in labels:
                    if not require_present or label in present:
                        out.append(Sample(case, int(k), int(label)))
        return out
