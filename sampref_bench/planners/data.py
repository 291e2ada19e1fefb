"""The data layer of every trainer: case roles, label-free image access, gated label access, samples.

A *sample* is one (case, slice, label) triple: SAM segments one target at a time, so an image with two
labels present gives two samples, each with its own prompts.

Case roles for a fold and annotation fraction: ``labeled`` (pixel labels visible to the trainer),
``rated`` (labels visible only to the simulated annotator of DPO trainers), ``unlabeled`` (the rest of the
fold's training cases) and ``val``. Beside the folds, ``extra_unlabeled`` holds the images of
``imagesTrUnlabeled/`` (never labeled, preprocessed by the planner, listed in ``preprocessing.json`` as
``unlabeled_cases``): :func:`case_roles` leaves it empty and :func:`with_extra_unlabeled` fills it from a
:class:`PreprocessedData`.

Labels are reachable only through a :class:`LabelStore`, which is built for a named set of cases and
refuses every other case. :class:`PreprocessedData` serves images and image metadata and has no label
reader at all, so the prediction path (which gets only a :class:`PreprocessedData`) cannot see labels.
Which slices of a case enter training is chosen here from the case's role: all slices with foreground plus
a seeded share of background slices for a labeled case (its labels say which is which), and a label-free
rule on image content for a case whose labels are hidden (:func:`hidden_label_slices`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sampref_bench.planners.fingerprint import case_seed
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
    #: Images that never had labels (``imagesTrUnlabeled/``, preprocessed by the planner): in no fold, usable by
    #: every fold's semi-supervised trainers.
    extra_unlabeled: list[str] = field(default_factory=list)


def _dpo_fractions(entry: dict[str, Any]) -> list[str]:
    """Planned fraction keys of a fold at which a DPO trainer has at least one rated case."""
    n_pixel = len(entry["dpo_labeled"])
    return [key for key, cases in entry["labeled"].items() if len(cases) > n_pixel]


def case_roles(splits: list[dict[str, Any]], fold: int, fraction: float, budget: str = "supervised") -> CaseRoles:
    """Case roles of ``fold`` at ``fraction``.

    ``budget="supervised"``: the fraction-f cases are labeled. ``budget="dpo"``: the first
    ``dpo_labeled_fraction`` of the permutation is labeled and the rest of the fraction-f cases are rated
    (the paper's "10% labeled + 10% rated = 20%"); a fraction that leaves no case to rate is a :class:`SamprefError`
    naming the planned fractions at which DPO is possible.
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
        if not rated:
            possible = _dpo_fractions(entry)
            raise SamprefError(
                f"fraction {key} buys no rated case for a DPO trainer in fold {fold}: its {len(budgeted)} case(s) "
                f"are all spent as pixel labels (the first {len(entry['dpo_labeled'])} of the permutation, "
                f"dpo_labeled_fraction). DPO is possible at the planned fraction(s) "
                f"{', '.join(possible) or 'none: plan a larger fraction with sampref_plan --fractions'}.")
    elif budget == "supervised":
        labeled, rated = budgeted, []
    else:
        raise ValueError(f"unknown budget {budget!r}")
    used = set(labeled) | set(rated)
    return CaseRoles(list(entry["train"]), list(entry["val"]), labeled, rated,
                     [c for c in entry["permutation"] if c not in used])


def with_extra_unlabeled(roles: CaseRoles, data: PreprocessedData) -> CaseRoles:
    """``roles`` with ``extra_unlabeled`` set to ``data``'s :meth:`~PreprocessedData.extra_unlabeled_cases`
    (a copy; ``roles`` is unchanged). A name that is also one of the fold's cases is a :class:`SamprefError`:
    the planner never writes such a folder, so it was edited by hand."""
    extra = data.extra_unlabeled_cases()
    clash = sorted(set(extra) & (set(roles.train) | set(roles.val)))
    if clash:
        raise SamprefError(f"{data.data_dir / 'preprocessing.json'} lists {clash} as unlabeled images, but they are "
                           f"cases of the folds too; rerun `sampref_plan -d {data.plans['dataset_name']} --clean`")
    return replace(roles, extra_unlabeled=extra)


class LabelAccessError(SamprefError):
    """A label was asked for a case outside the set a :class:`LabelStore` was opened for."""


class PreprocessedData:
    """Label-free read access to a plan's preprocessed folder (``samprefPlans_2d``); arrays are memory-mapped.

    Serves images, image metadata and :meth:`rgb`. Labels come only from :meth:`label_store`.
    """

    def __init__(self, data_dir: Path, plans: dict[str, Any]) -> None:
        self.data_dir = Path(data_dir)
        if not (self.data_dir / "preprocessing.json").is_file():
            raise SamprefError(f"{self.data_dir} holds no finished preprocessing; run `sampref_plan -d "
                               f"{plans['dataset_name']}`")
        self.plans = plans
        self.rgb_channels = list(plans["channels_to_rgb"])
        self._meta: dict[str, dict[str, Any]] = {}
        self._images: dict[str, np.ndarray] = {}
        self._extra_unlabeled: list[str] | None = None

    def meta(self, case: str) -> dict[str, Any]:
        """Per-case image metadata written by preprocessing (transform, geometry, slice content ...)."""
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

    def rgb(self, case: str, slices: list[int] | slice | None = None) -> np.ndarray:
        """``(N, 3, size, size)`` float32 images in [0, 1] mapped to three channels as the plan says."""
        stack = self.images(case)
        picked = stack[slices if slices is not None else slice(None)]
        out = np.asarray(picked[:, self.rgb_channels], dtype=np.float32)
        if stack.dtype == np.uint8:
            out /= 255.0
        return out

    def label_store(self, cases: Iterable[str], purpose: str) -> LabelStore:
        """A :class:`LabelStore` that reads the labels of ``cases`` only; ``purpose`` names it in errors."""
        return LabelStore(self.data_dir, cases, purpose, self.plans["dataset_name"])

    def extra_unlabeled_cases(self) -> list[str]:
        """Names of the preprocessed ``imagesTrUnlabeled`` images (``preprocessing.json``'s ``unlabeled_cases``),
        sorted; ``[]`` for a dataset without any, or a folder preprocessed before the key existed."""
        if self._extra_unlabeled is None:
            path = self.data_dir / "preprocessing.json"
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise SamprefError(f"{path} is unreadable ({err}); rerun `sampref_plan -d "
                                   f"{self.plans['dataset_name']} --clean`") from None
            cases = record.get("unlabeled_cases", []) if isinstance(record, dict) else None
            if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
                raise SamprefError(f"{path}: 'unlabeled_cases' must be a list of case names; rerun `sampref_plan "
                                   f"-d {self.plans['dataset_name']} --clean`")
            self._extra_unlabeled = sorted(cases)
        return list(self._extra_unlabeled)

    def all_slices(self, case: str) -> list[int]:
        """Every slice index of a case (validation and prediction read all of them)."""
        return list(range(self.meta(case)["n_slices"]))


class LabelStore:
    """Labels of a fixed set of cases; any other case raises :class:`LabelAccessError`."""

    def __init__(self, data_dir: Path, cases: Iterable[str], purpose: str, dataset_name: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.cases = frozenset(cases)
        self.purpose = purpose
        self.dataset_name = dataset_name
        self._seg: dict[str, np.ndarray] = {}
        self._present: dict[str, list[list[int]]] = {}

    def _check(self, case: str) -> None:
        if case not in self.cases:
            raise LabelAccessError(f"the label of case {case!r} is not readable here: this label store serves "
                                   f"{self.purpose} ({len(self.cases)} case(s)). Inference and hidden-label cases "
                                   "never read labels.")

    def _file(self, case: str, suffix: str) -> Path:
        path = self.data_dir / f"{case}{suffix}"
        if not path.is_file():
            raise SamprefError(f"{path} is missing: case {case} has no preprocessed label. Give it a label file "
                               f"in labelsTr and rerun `sampref_plan -d {self.dataset_name}`.")
        return path

    def seg(self, case: str) -> np.ndarray:
        """``(S, size, size)`` uint8 label maps of ``case``."""
        self._check(case)
        if case not in self._seg:
            self._seg[case] = load_npy(self._file(case, "_seg.npy"))
        return self._seg[case]

    def labels_per_slice(self, case: str) -> list[list[int]]:
        """Label values present in each slice of ``case``."""
        self._check(case)
        if case not in self._present:
            self._present[case] = json.loads(self._file(case, "_labels.json").read_text())["labels_per_slice"]
        return self._present[case]

    def mask(self, sample: Sample) -> np.ndarray:
        """``(size, size)`` bool mask of ``sample.label`` in its slice."""
        return self.seg(sample.case)[sample.slice] == sample.label


# ------------------------------------------------------------------------------------------ slice selection
def labeled_slices(labels_per_slice: list[list[int]], share: float, case: str) -> list[int]:
    """Every slice with foreground plus a seeded ``share`` of the background slices (at least one if any).

    A single-slice (2D) case always gives ``[0]``.
    """
    if len(labels_per_slice) == 1:
        return [0]
    has_fg = np.array([bool(present) for present in labels_per_slice])
    fg = np.flatnonzero(has_fg).tolist()
    bg = np.flatnonzero(~has_fg)
    n_bg = int(round(share * len(bg)))
    if share > 0 and len(bg) and n_bg == 0:
        n_bg = 1
    chosen = np.random.default_rng(case_seed(case, salt=1)).choice(bg, size=n_bg, replace=False) if n_bg else []
    return sorted(fg + [int(i) for i in chosen])


def hidden_label_slices(content: list[float], min_content: float) -> list[int]:
    """Label-free choice for a case whose labels are hidden: slices with at least ``min_content`` image content.

    A single-slice (2D) case always gives ``[0]``; a volume with no slice above the bar gives all slices.
    """
    if len(content) == 1:
        return [0]
    chosen = [k for k, value in enumerate(content) if value >= min_content]
    return chosen or list(range(len(content)))


def labeled_samples(labels: LabelStore, cases: list[str], label_values: list[int], background_share: float,
                    require_present: bool = True) -> list[Sample]:
    """Training samples of labeled ``cases``: planned slices (:func:`labeled_slices`) times ``label_values``.

    ``require_present`` keeps only (slice, label) pairs where the label occurs in the slice.
    """
    out = []
    for case in cases:
        present = labels.labels_per_slice(case)
        for k in labeled_slices(present, background_share, case):
            out.extend(Sample(case, k, v) for v in label_values if not require_present or v in present[k])
    return out


def hidden_label_samples(data: PreprocessedData, cases: list[str], label_values: list[int]) -> list[Sample]:
    """Samples of cases whose labels are hidden (rated, unlabeled): label-free slices times ``label_values``."""
    min_content = float(data.plans["hidden_label_min_content"])
    out = []
    for case in cases:
        for k in hidden_label_slices(data.meta(case)["slice_content"], min_content):
            out.extend(Sample(case, k, v) for v in label_values)
    return out


def inference_samples(data: PreprocessedData, case: str, label_values: list[int]) -> list[Sample]:
    """Every (slice, label) pair of a case, as prediction needs them."""
    return [Sample(case, k, v) for k in data.all_slices(case) for v in label_values]
