"""Finding the runs of a dataset: which folds finished, their validation summaries and what their
``config.json`` says (the input of :mod:`.aggregate`).

Runs live in ``$SAMPREF_results/DatasetXXX_Name/{Trainer}__{plans}__{configuration}__f{fraction}/fold_{k}/``.
A fold counts as finished when it holds ``checkpoint_final.pth`` and a readable ``validation/summary.json``;
any other fold is listed as unfinished and left out of the table.

A run with non-default hyperparameters carries a tag in its configuration part, ``2d-lr0.0003`` or
``2d-tiny-myrun`` (``-`` separated, never ``__``); its rows are apart from the untagged run's. The folder
name alone does not say where the tag starts (``2d-tiny`` may be a configuration of its own), so each finished
fold's ``config.json`` is read for ``configuration_base`` (the configuration without the tag) and ``run_tag``,
and for ``oracle``: true for a trainer whose prompts come from the ground truth (an upper bound, not a
method). A missing or unreadable ``config.json``, or a missing key, means not oracle and no known base
configuration. A row is oracle when any of its folds is.

A prompt-sourced trainer (SAMBaseline, SAMNoVQA, SAMBoxOnly, SAMTextOnly) records which saliency source made its
prompts as ``hyperparameters.saliency`` (``dark-basin``, ``biomedclip``); the table calls it the row's
``prompt_source``. Other trainers have no such key: ``None``, as for a missing or unreadable ``config.json`` or
a value that is not a non-empty string. A row's ``prompt_source`` is its folds' (the first fold that knows it);
should its folds disagree, it is their distinct values in fold order joined with ``+`` (``dark-basin+biomedclip``),
see :func:`merge_prompt_sources`.

Each fold's ``config.json`` also says what the run spent and used (:mod:`.data_use`); a row keeps its
folds' values in fold order (:attr:`.aggregate.TableRow.data_use`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampref_bench import paths
from sampref_bench.evaluation.data_use import DataUse, read_data_use
from sampref_bench.evaluation.summary import load_summary
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError

_FOLD_RE = re.compile(r"fold_(\d+)")
_FRACTION_RE = re.compile(r"f(\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class RunKey:
    """What a run folder's name says: ``{trainer}__{plans}__{configuration}__f{fraction}``."""

    trainer: str
    plans: str
    configuration: str
    fraction: str

    @property
    def fraction_value(self) -> float:
        """The annotation fraction as a number."""
        return float(self.fraction)

    def sort_key(self) -> tuple[str, str, float, str]:
        """Order of the table: trainer, configuration, fraction, plans."""
        return self.trainer, self.configuration, self.fraction_value, self.plans

    def folder_name(self) -> str:
        """The run folder's name."""
        return f"{self.trainer}__{self.plans}__{self.configuration}__f{self.fraction}"


@dataclass(frozen=True)
class RunConfig:
    """What the table needs from a fold's ``config.json``; the defaults stand for a missing file or key.

    ``oracle``: the trainer's prompts come from the ground truth. ``configuration_base``: the configuration
    without the run tag (``2d-tiny`` of ``2d-tiny-myrun``), ``None`` when unknown. ``run_tag``: the tag, or
    ``None`` for an untagged run or when unknown. ``prompt_source``: the saliency source that made a
    prompt-sourced trainer's prompts (``hyperparameters.saliency``), ``None`` for any other trainer or when
    unknown. ``configuration_family``: the configuration of the runs it is compared with when neither its
    configuration nor its base configuration has a baseline run (a DPO run's ``2d-paper`` compares with ``2d``).
    ``data_use``: see :class:`DataUse` and :func:`read_data_use`.
    """

    oracle: bool = False
    configuration_base: str | None = None
    run_tag: str | None = None
    prompt_source: str | None = None
    configuration_family: str | None = None
    data_use: DataUse = DataUse()


@dataclass
class FoldResult:
    """A finished fold of a run, its validation summary and what its ``config.json`` says."""

    key: RunKey
    fold: int
    summary: dict[str, Any]
    config: RunConfig = RunConfig()


@dataclass(frozen=True)
class UnfinishedFold:
    """A fold folder left out of the table, and why."""

    run: str
    fold: int
    reason: str


@dataclass
class RunScan:
    """Everything found in one dataset's results folder."""

    dataset: str
    folder: Path
    finished: list[FoldResult] = field(default_factory=list)
    unfinished: list[UnfinishedFold] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def parse_run_name(name: str) -> RunKey | None:
    """Split ``{trainer}__{plans}__{configuration}__f{fraction}``; the configuration may hold ``__`` and a run
    tag (``2d-lr0.0003``, or ``2d-namex_`` ending in ``_``), which stays part of it.

    Returns ``None`` for a name that is not a run folder's.
    """
    head, sep, tail = name.rpartition("__")
    parts = head.split("__", 2)
    if not sep or len(parts) < 3 or not all(parts) or not _FRACTION_RE.fullmatch(tail):
        return None
    return RunKey(parts[0], parts[1], parts[2], tail[1:])


def _missing_reason(fold_dir: Path) -> str | None:
    if not (fold_dir / "checkpoint_final.pth").is_file():
        return "no checkpoint_final.pth (training not finished)"
    if not (fold_dir / "validation" / "summary.json").is_file():
        return "no validation/summary.json (final validation missing)"
    return None


def _optional_name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def read_run_config(fold_dir: Path) -> RunConfig:
    """The oracle flag, base configuration, run tag, prompt source and data use of ``fold_dir/config.json``.

    A missing, unreadable or malformed file, or a missing or ill-typed key, gives the :class:`RunConfig`
    default for it (not oracle, unknown base configuration, tag, prompt source and data use); only a JSON
    ``true`` marks an oracle, and only a non-empty string at ``hyperparameters.saliency`` names a prompt source.
    """
    try:
        record = load_json(Path(fold_dir) / "config.json")
    except (SamprefError, OSError, ValueError):
        return RunConfig()
    if not isinstance(record, dict):
        return RunConfig()
    hyperparameters = record.get("hyperparameters")
    saliency = hyperparameters.get("saliency") if isinstance(hyperparameters, dict) else None
    return RunConfig(record.get("oracle") is True, _optional_name(record.get("configuration_base")),
                     _optional_name(record.get("run_tag")), _optional_name(saliency),
                     _optional_name(record.get("configuration_family")), read_data_use(record))


def merge_prompt_sources(sources: Iterable[str | None]) -> str | None:
    """One prompt source for several folds (or rows): ``None`` when none is known, else the distinct known
    values in first-seen order joined with ``+`` (a single source when they agree). A value already joined
    with ``+`` counts as its parts, so merging merged values gives no repeats."""
    distinct: dict[str, None] = {}
    for source in sources:
        if source is not None:
            distinct.update(dict.fromkeys(part for part in source.split("+") if part))
    return "+".join(distinct) or None


def scan_runs(dataset: str, results_root: Path | None = None) -> RunScan:
    """Find every fold of every run of ``dataset`` (a folder name) under ``results_root`` (default
    ``$SAMPREF_results``); finished folds come with their summary and :func:`read_run_config`, others with the
    reason they are left out."""
    folder = (results_root if results_root is not None else paths.results_root()) / dataset
    scan = RunScan(dataset, folder)
    run_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []
    for run_dir in run_dirs:
        key = parse_run_name(run_dir.name)
        if key is None:
            scan.skipped.append(run_dir.name)
            continue
        folds = sorted((int(m.group(1)), p) for p in run_dir.iterdir()
                       if p.is_dir() and (m := _FOLD_RE.fullmatch(p.name)))
        for fold, fold_dir in folds:
            reason = _missing_reason(fold_dir)
            if reason is None:
                try:
                    summary = load_summary(fold_dir / "validation" / "summary.json")
                    scan.finished.append(FoldResult(key, fold, summary, read_run_config(fold_dir)))
                    continue
                except SamprefError as err:
                    reason = f"unreadable validation/summary.json: {err}"
            scan.unfinished.append(UnfinishedFold(run_dir.name, fold, reason))
    return scan
