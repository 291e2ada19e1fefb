"""What a run spent and used, as its ``config.json`` records it, for the results tables.

``data_use`` (written by every trainer since the semi-supervised baselines): ``pixel_labeled`` cases, their
``pixel_label_share`` of the fold's training cases, ``rated`` cases and ``unlabeled_used``, the images without
labels or ratings the trainer actually trained on. A run written before then has only ``cases``: its
``labeled`` and ``rated`` counts are taken from there, but its ``unlabeled`` count was the fold's unused
training cases, not what the trainer used, so ``unlabeled_used`` stays unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The :class:`DataUse` fields, in table order.
DATA_USE_FIELDS = ("pixel_labeled", "pixel_label_share", "rated", "unlabeled_used")


@dataclass(frozen=True)
class DataUse:
    """What one fold's run spent and used, from its ``config.json``; ``None`` where the record does not say.

    ``pixel_labeled``: cases whose pixel labels the trainer saw; ``pixel_label_share``: their share of the fold's
    training cases (0..1); ``rated``: cases whose labels only the simulated annotator saw (DPO); ``unlabeled_used``:
    images (fold cases without labels and ``imagesTrUnlabeled`` images) the trainer trained on without labels.
    """

    pixel_labeled: int | None = None
    pixel_label_share: float | None = None
    rated: int | None = None
    unlabeled_used: int | None = None


def _count(value: Any) -> int | None:
    """A case count as config.json records it: a non-negative JSON integer (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read_data_use(record: Mapping[str, Any]) -> DataUse:
    """The :class:`DataUse` of a parsed ``config.json``: from ``data_use`` when present, else the labeled and rated
    counts of an older run's ``cases`` (share = labeled over labeled + rated + unlabeled, the fold's training cases
    then; ``unlabeled_used`` unknown: that record's ``unlabeled`` counted the fold's unused cases). Ill-typed
    values (not a non-negative integer; a share outside 0..1) are unknown."""
    use = record.get("data_use")
    if isinstance(use, dict):
        share = use.get("pixel_label_share")
        valid_share = isinstance(share, (int, float)) and not isinstance(share, bool) and 0.0 <= share <= 1.0
        return DataUse(_count(use.get("pixel_labeled")), float(share) if valid_share else None,
                       _count(use.get("rated")), _count(use.get("unlabeled_used")))
    cases = record.get("cases")
    if not isinstance(cases, dict):
        return DataUse()
    labeled, rated, unused = (_count(cases.get(k)) for k in ("labeled", "rated", "unlabeled"))
    n_train = labeled + rated + unused if None not in (labeled, rated, unused) else 0
    return DataUse(labeled, round(labeled / n_train, 4) if n_train and labeled is not None else None, rated, None)


def data_use_range(uses: Sequence[DataUse], name: str) -> tuple[float, float] | None:
    """``(min, max)`` of field ``name`` over a row's folds; ``None`` when any fold does not know it (or none)."""
    values = [getattr(use, name) for use in uses]
    if not values or any(v is None for v in values):
        return None
    return min(values), max(values)
