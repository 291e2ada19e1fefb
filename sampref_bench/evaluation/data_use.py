"""What a run spent and used, as its ``config.json`` records it, for the results tables.

``data_use`` (written by every trainer since the semi-supervised baselines): ``pixel_labeled`` cases, their
``pixel_label_share`` of the fold's training cases, ``rated`` cases and ``unlabeled_used``, the images without
labels or ratings the trainer actually trained on. A run written before then has only ``cases``: its
``labeled`` and ``rated`` counts are taken from there, but its ``unlabeled`` count was the fold's unused
training cases, not what the trainer used, so ``unlabeled_used`` stays unknown.

Where a SAM trainer's box and point came from is part of what it used: ``data_use.box_source`` is ``saliency``
(the unsupervised saliency of the prompt cache, which reads no label), ``learned`` (a coarse-mask head trained
with SAM on the run's pixel-labeled cases: ``SAMSelfPrompt``, ``box_source=learned``) or ``cascade:UNet``
(``box_source=run:UNet``: the masks of the finished UNet run of the same fold and fraction, trained on the same
pixel-labeled cases). Both learned sources are budget-honest, spending no label beyond ``pixel_labeled``; the
cascade costs that UNet run's training, which ``data_use.box_source_training`` states (its run folder, epochs,
iterations per epoch and pixel-labeled cases). A record written before ``box_source`` was recorded is read from its
``trainer``, ``hyperparameters.box_source`` and ``cascade_run`` instead; a trainer without box prompts has ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The :class:`DataUse` count fields, in table order.
DATA_USE_FIELDS = ("pixel_labeled", "pixel_label_share", "rated", "unlabeled_used")
#: ``data_use.box_source`` by the ``box_source`` hyperparameter of the prompt-sourced SAM trainers.
BOX_SOURCE_NAMES = {"saliency": "saliency", "learned": "learned", "run:UNet": "cascade:UNet"}
#: The box sources trained on the run's pixel-labeled cases (the saliency reads no label at all).
LEARNED_BOX_SOURCES = ("learned", "cascade:UNet")
#: Trainers that give SAM no box or point whatever their ``box_source`` says (read from records lacking the field).
_NO_BOX_TRAINERS = ("SAMTextOnly",)


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
    #: ``saliency``, ``learned`` or ``cascade:UNet`` (see the module docstring); ``None``: no box prompt, or unknown.
    box_source: str | None = None
    #: The cascade's UNet run (``run``, ``trainer``, ``epochs``, ``iterations_per_epoch``, ``pixel_labeled``).
    box_source_training: dict[str, Any] | None = None


def _count(value: Any) -> int | None:
    """A case count as config.json records it: a non-negative JSON integer (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read_data_use(record: Mapping[str, Any]) -> DataUse:
    """The :class:`DataUse` of a parsed ``config.json``: from ``data_use`` when present, else the labeled and rated
    counts of an older run's ``cases`` (share = labeled over labeled + rated + unlabeled, the fold's training cases
    then; ``unlabeled_used`` unknown: that record's ``unlabeled`` counted the fold's unused cases). Ill-typed
    values (not a non-negative integer; a share outside 0..1) are unknown."""
    use = record.get("data_use")
    source, training = read_box_source(record)
    if isinstance(use, dict):
        share = use.get("pixel_label_share")
        valid_share = isinstance(share, (int, float)) and not isinstance(share, bool) and 0.0 <= share <= 1.0
        return DataUse(_count(use.get("pixel_labeled")), float(share) if valid_share else None,
                       _count(use.get("rated")), _count(use.get("unlabeled_used")), source, training)
    cases = record.get("cases")
    if not isinstance(cases, dict):
        return DataUse(box_source=source, box_source_training=training)
    labeled, rated, unused = (_count(cases.get(k)) for k in ("labeled", "rated", "unlabeled"))
    n_train = labeled + rated + unused if None not in (labeled, rated, unused) else 0
    return DataUse(labeled, round(labeled / n_train, 4) if n_train and labeled is not None else None, rated, None,
                   source, training)


def read_box_source(record: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """``(box_source, box_source_training)`` of a parsed ``config.json``: ``data_use``'s when it records them, else
    read from an older record's ``trainer``, ``hyperparameters.box_source`` and ``cascade_run`` (the cascade's
    training then names its run only); ``(None, None)`` for a trainer without box prompts or an unknown value."""
    use = record.get("data_use")
    if isinstance(use, dict) and "box_source" in use:
        source = use.get("box_source")
        training = use.get("box_source_training")
        return (source if source in BOX_SOURCE_NAMES.values() else None,
                dict(training) if isinstance(training, dict) else None)
    trainer = record.get("trainer")
    hyper = record.get("hyperparameters")
    if trainer == "SAMSelfPrompt":
        return "learned", None
    if not isinstance(hyper, dict) or trainer in _NO_BOX_TRAINERS:
        return None, None
    value = hyper.get("box_source")
    source = BOX_SOURCE_NAMES.get(value) if isinstance(value, str) else None
    run = record.get("cascade_run")
    if source == "cascade:UNet" and isinstance(run, str) and run:
        parts = Path(run).parts
        return source, {"run": "/".join(parts[-2:]), "trainer": "UNet", "epochs": None,
                        "iterations_per_epoch": None, "pixel_labeled": None}
    return source, None


def box_source_text(use: DataUse) -> str | None:
    """A fold's box source as the tables show it: ``saliency``, ``learned``, ``cascade:UNet`` and, with the cascade's
    training length known, ``cascade:UNet (+UNet 50x250)`` (epochs x iterations per epoch); ``None`` when unknown."""
    if use.box_source is None:
        return None
    training = use.box_source_training or {}
    epochs, iterations = training.get("epochs"), training.get("iterations_per_epoch")
    if use.box_source == "cascade:UNet" and isinstance(epochs, int) and isinstance(iterations, int):
        return f"{use.box_source} (+{training.get('trainer') or 'UNet'} {epochs}x{iterations})"
    return use.box_source


def box_sources_text(uses: Sequence[DataUse]) -> str | None:
    """A row's box source: its folds' distinct :func:`box_source_text` values in fold order joined with ``+``
    (``None`` when no fold records one)."""
    distinct = dict.fromkeys(t for t in (box_source_text(u) for u in uses) if t is not None)
    return "+".join(distinct) or None


def shows_box_sources(rows_uses: Iterable[Sequence[DataUse]]) -> bool:
    """Whether a table shows its box-source column: when some fold's box came from a learned source (a table of
    saliency and non-SAM rows alone keeps its columns)."""
    return any(u.box_source in LEARNED_BOX_SOURCES for uses in rows_uses for u in uses)


def data_use_range(uses: Sequence[DataUse], name: str) -> tuple[float, float] | None:
    """``(min, max)`` of field ``name`` over a row's folds; ``None`` when any fold does not know it (or none)."""
    values = [getattr(use, name) for use in uses]
    if not values or any(v is None for v in values):
        return None
    return min(values), max(values)
