"""Five-fold splits with nested annotation budgets (``splits_final.json``).

Folds come from scikit-learn's ``KFold(n_splits=5, shuffle=True, random_state=12345)`` over the sorted
cases, or over the sorted patient groups when dataset.json has ``case_groups`` (so one patient's images
never straddle a split). Inside each fold the training cases get a seeded permutation; annotation
fraction ``f`` labels its first ``ceil(f * n_train)`` cases, so smaller budgets are nested in larger ones
and every trainer at the same ``f`` sees the same labels.

``splits_final.json`` keeps nnU-Net's layout: a JSON list with one dict per fold whose first keys are
``train`` and ``val`` (sorted case names), followed by sampref's ``permutation``, ``labeled``
({fraction key -> cases}) and ``dpo_labeled``. nnU-Net reads the same file as
``load_json(path)[fold]["train"]`` and ignores the extra keys. File-level metadata (``inputs_hash``, the
split ``source``, ``sampref_version``) lives beside it in ``splits_final_info.json`` (:data:`SPLITS_INFO_FILE`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from sampref_bench.planners.plans import fraction_key
from sampref_bench.utilities.errors import SamprefError

N_FOLDS = 5
SPLIT_SEED = 12345
#: The folds, in nnU-Net's layout plus sampref's keys.
SPLITS_FILE = "splits_final.json"
#: Sidecar of :data:`SPLITS_FILE` with file-level metadata (inputs_hash, source, sampref_version, splits_hash).
SPLITS_INFO_FILE = "splits_final_info.json"


def _groups_of(cases: list[str], case_groups: dict[str, str] | None) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for case in cases:
        groups.setdefault((case_groups or {}).get(case, case), []).append(case)
    return groups


def kfold_splits(cases: list[str], case_groups: dict[str, str] | None = None, n_folds: int = N_FOLDS,
                 seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """``[{"train": [...], "val": [...]}, ...]`` over cases or patient groups, each list sorted."""
    groups = _groups_of(sorted(cases), case_groups)
    keys = sorted(groups)
    if len(keys) < n_folds:
        unit = "patient groups" if case_groups else "cases"
        raise SamprefError(f"{n_folds}-fold cross-validation needs at least {n_folds} {unit}, the dataset has "
                           f"{len(keys)}. Add cases or provide your own splits_final.json in the raw folder.")
    folds = []
    for train_idx, val_idx in KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(keys):
        train = sorted(c for i in train_idx for c in groups[keys[i]])
        val = sorted(c for i in val_idx for c in groups[keys[i]])
        folds.append({"train": train, "val": val})
    return folds


def add_budgets(folds: list[dict[str, Any]], fractions: list[float], dpo_labeled_fraction: float,
                seed: int = SPLIT_SEED) -> list[dict[str, Any]]:
    """Add ``permutation``, ``labeled`` {fraction key -> cases} and ``dpo_labeled`` to every fold.

    Each returned fold has the keys ``train``, ``val`` (both sorted), ``permutation``, ``labeled``,
    ``dpo_labeled``, in this order. Raises :class:`SamprefError` when a fraction buys less than one whole
    case in some fold, except ``dpo_labeled_fraction`` (the planner adds it to every plan), which buys at
    least one case.
    """
    completed = []
    for index, fold in enumerate(folds):
        train = sorted(fold["train"])
        n = len(train)
        rng = np.random.default_rng(seed + index)
        permutation = [train[i] for i in rng.permutation(n)]
        labeled = {}
        dpo_n = max(1, math.ceil(round(dpo_labeled_fraction * n, 9)))
        for fraction in sorted(fractions):
            if fraction_key(fraction) == fraction_key(dpo_labeled_fraction):
                labeled[fraction_key(fraction)] = permutation[:dpo_n]
                continue
            if fraction * n < 1:
                raise SamprefError(f"fraction {fraction} of fold {index}'s {n} training cases is less than one case; "
                                   f"the smallest usable fraction is {math.ceil(1e4 / n) / 1e4} (--fractions)")
            labeled[fraction_key(fraction)] = permutation[: math.ceil(round(fraction * n, 9))]
        completed.append({"train": train, "val": sorted(fold["val"]), "permutation": permutation,
                          "labeled": labeled, "dpo_labeled": permutation[:dpo_n]})
    return completed


def validate_user_splits(folds: Any, cases: list[str], case_groups: dict[str, str] | None, where: str) -> None:
    """Check a user-supplied splits list: known cases only, no train/val overlap, groups not straddling."""
    if not isinstance(folds, list) or not folds or not all(isinstance(f, dict) and {"train", "val"} <= set(f)
                                                           for f in folds):
        raise SamprefError(f"{where} must be a list of folds, each {{'train': [...], 'val': [...]}}")
    known = set(cases)
    for index, fold in enumerate(folds):
        train, val = set(fold["train"]), set(fold["val"])
        unknown = sorted((train | val) - known)
        if unknown:
            raise SamprefError(f"{where}: fold {index} names unknown case(s) {unknown[:5]}; fix the names or "
                               "delete the file to let sampref_plan make the splits")
        overlap = sorted(train & val)
        if overlap:
            raise SamprefError(f"{where}: fold {index} puts {overlap[:5]} in both train and val")
        if not train or not val:
            raise SamprefError(f"{where}: fold {index} has an empty train or val list")
        if case_groups:
            train_groups = {case_groups.get(c, c) for c in train}
            straddling = sorted({case_groups.get(c, c) for c in val} & train_groups)
            if straddling:
                raise SamprefError(f"{where}: fold {index} puts patient group(s) {straddling[:5]} on both sides")
