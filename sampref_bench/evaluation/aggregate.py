"""Cross-fold aggregation of every run of a dataset: one table, paired tests against a baseline, a plot.

Runs are found by :mod:`.run_scan` (run folders, finished folds, run tags, prompt sources, data use; its
docstring says how). A row of the table is one (trainer, configuration, fraction) (and plans, should several
exist); each column is a foreground label's mean metric, or ``foreground_mean``, summarized as mean and std
(ddof=1, only with two or more folds) over the folds found, NaN folds left out.

The paired test compares per-case values of a row with the baseline trainer's row at the same plans,
configuration and fraction or, when the baseline has no run at that exact configuration and the row's
``configuration_base`` differs from it, at the row's base configuration (a tagged run against the untagged
baseline), over the cases (keyed by fold and case) both scored. The per-case value is the NaN-ignoring mean
over the foreground labels (``label="all"``) or the named label's value; cases that are NaN on either side
are dropped. The test is :func:`scipy.stats.wilcoxon` (two-sided; :mod:`.statistics`); with fewer than
``MIN_PAIRS`` pairs or only zero differences the p-value is NaN and a note says why. Every defined p-value
of the table is also given Holm-adjusted over all the table's comparisons (:func:`.statistics.holm_adjust`;
NaN p-values stay NaN and are not counted in the family).

Each row also keeps, for the paper tables, the per-fold values of its summary column (``foreground_mean``, or the
one ``--label``) and their mean and std for each of :data:`PAPER_METRICS` the summaries hold.

The baseline is a trainer (``SAMBoxOracle``: each row against the baseline at the row's own fraction, as above)
or a trainer and a fraction, ``SAMBaseline@0.1`` (see :func:`parse_baseline`): every row, at every fraction, is
then compared with the baseline's run at that one fraction (same plans and configuration rules, the same
pairing on the cases, keyed by fold and case, that both scored), which says, e.g., whether a method trained on
more annotations beats the baseline at 10 %. The baseline trainer's own rows at other fractions are compared
too; only its rows at the baseline fraction are the reference. A fraction the baseline trainer has no finished
run at is an error that lists the fractions it has.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sampref_bench.evaluation.data_use import DataUse
from sampref_bench.evaluation.run_scan import FoldResult, RunKey, RunScan, UnfinishedFold, merge_prompt_sources
from sampref_bench.evaluation.statistics import FoldStat, PairedTest, fold_stat, holm_adjust, paired_test
from sampref_bench.evaluation.summary import case_values, nanmean
from sampref_bench.utilities.errors import SamprefError

FOREGROUND = "foreground_mean"
#: The metrics the paper tables show, each where the summaries have it.
PAPER_METRICS = ("Dice", "IoU", "HD95")
_BASELINE_FRACTION_RE = re.compile(r"f?(\d+(?:\.\d*)?|\.\d+)")
#: Digits fractions are compared at (``0.1`` and ``0.10`` are one fraction).
_FRACTION_DIGITS = 6


@dataclass
class TableRow:
    """One (trainer, configuration, fraction) row; ``oracle``, ``configuration_base``, ``run_tag`` and
    ``prompt_source`` as in :class:`RunConfig`, merged over the row's folds (oracle if any fold is; the first
    fold that knows the base configuration or tag; the prompt source by :func:`merge_prompt_sources`: the
    first fold's that knows it, the distinct values joined with ``+`` should folds disagree)."""

    key: RunKey
    folds: list[int]
    values: dict[str, FoldStat]
    paired: PairedTest | None = None
    oracle: bool = False
    configuration_base: str | None = None
    run_tag: str | None = None
    prompt_source: str | None = None
    configuration_family: str | None = None
    #: One :class:`DataUse` per fold, in the order of :attr:`folds`.
    data_use: list[DataUse] = field(default_factory=list)
    #: The summary column's (the table's last) value of the table's metric per fold, in :attr:`folds` order.
    fold_values: list[float] = field(default_factory=list)
    #: The summary column's mean and std over folds for each of :data:`PAPER_METRICS` the summaries hold.
    metrics: dict[str, FoldStat] = field(default_factory=dict)


@dataclass
class ResultTable:
    """The aggregated table of a dataset; ``columns`` are label names and/or ``foreground_mean``.

    ``baseline`` is the baseline trainer (without any ``@fraction``), ``baseline_fraction`` the fraction every
    row is compared at (as the baseline's run folder spells it), ``None`` when each row is compared at its own.
    """

    dataset: str
    metric: str
    label: str
    baseline: str | None
    columns: list[str]
    rows: list[TableRow]
    unfinished: list[UnfinishedFold]
    skipped: list[str]
    baseline_fraction: str | None = None

    @property
    def baseline_name(self) -> str | None:
        """The baseline as ``--baseline`` writes it: ``SAMBoxOracle`` or ``SAMBaseline@0.1``."""
        if self.baseline is None:
            return None
        return self.baseline if self.baseline_fraction is None else f"{self.baseline}@{self.baseline_fraction}"


def parse_baseline(text: str) -> tuple[str, str | None]:
    """Split ``--baseline``: ``TRAINER`` gives ``(TRAINER, None)`` (each row against the trainer at the row's
    own fraction), ``TRAINER@FRACTION`` gives ``(TRAINER, FRACTION)`` (every row against the trainer at that
    fraction; ``0.1``, ``.1``, ``1`` or, as in a run folder's name, ``f0.1``, returned without the ``f``).

    Raises :class:`SamprefError` for an empty trainer or a fraction that is not a non-negative number.
    """
    if "@" not in text:
        return text, None
    trainer, _, fraction = text.rpartition("@")
    match = _BASELINE_FRACTION_RE.fullmatch(fraction.strip())
    if not trainer or match is None:
        raise SamprefError(f"--baseline {text!r}: write TRAINER or TRAINER@FRACTION, e.g. SAMBaseline or "
                           "SAMBaseline@0.1 (the fraction as in the run folder's name, f0.1).")
    return trainer, match.group(1)


def _fraction_id(fraction: str | float) -> float:
    """A fraction as compared: ``0.1``, ``0.10`` and ``.1`` are one."""
    return round(float(fraction), _FRACTION_DIGITS)


def _baseline_fraction(keys: Iterable[RunKey], trainer: str, fraction: str, dataset: str) -> str:
    """The baseline ``trainer``'s fraction equal to ``fraction`` as its run folders spell it (the first in sort
    order should two spellings exist); :class:`SamprefError` listing its fractions when it has none such."""
    found = sorted({key.fraction for key in keys if key.trainer == trainer}, key=lambda f: (float(f), f))
    matching = [f for f in found if _fraction_id(f) == _fraction_id(fraction)]
    if not matching:
        raise SamprefError(f"baseline {trainer!r} has no finished run at fraction {fraction} of {dataset}; "
                           f"fractions found for {trainer}: {', '.join(found)} (write e.g. "
                           f"--baseline {trainer}@{found[0]}, or --baseline {trainer} to pair each row at its "
                           "own fraction).")
    return matching[0]


# ------------------------------------------------------------------------------------------------ the table
def _summary_labels(summary: Mapping[str, Any]) -> dict[str, int]:
    """Foreground label name -> value of a summary (an nnU-Net summary without names uses the values)."""
    labels = summary.get("labels") or {key: int(key) for key in summary["mean"] if key.lstrip("-").isdigit()}
    return {str(name): int(value) for name, value in labels.items() if int(value) != 0}


def _dataset_labels(folds: Sequence[FoldResult]) -> dict[str, int]:
    found: dict[str, int] = {}
    for result in folds:
        for name, value in _summary_labels(result.summary).items():
            found.setdefault(name, value)
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def _metric_names(folds: Sequence[FoldResult]) -> set[str]:
    names: set[str] = set()
    for result in folds:
        names.update(result.summary.get("foreground_mean", {}))
        for means in result.summary.get("mean", {}).values():
            names.update(means)
    return names


def _check_metric(folds: Sequence[FoldResult], metric: str) -> None:
    names = _metric_names(folds)
    if metric not in names:
        raise SamprefError(f"metric {metric!r} is in no summary.json; metrics found: {', '.join(sorted(names))}. "
                           "HD95 and NSD exist only when the evaluation asked for them.")


def _fold_value(summary: Mapping[str, Any], column: str, labels: Mapping[str, int], metric: str) -> float:
    if column == FOREGROUND:
        return float(summary["foreground_mean"].get(metric, math.nan))
    return float(summary["mean"].get(str(labels[column]), {}).get(metric, math.nan))


def case_scores(summary: Mapping[str, Any], labels: Mapping[str, int], metric: str = "Dice") -> dict[str, float]:
    """``{case: value}``: the NaN-ignoring mean of ``metric`` over ``labels`` (name -> value) in each case."""
    per_label = [case_values(summary, value, metric) for value in labels.values()]
    cases = list(per_label[0]) if per_label else []
    return {case: nanmean([values.get(case, math.nan) for values in per_label]) for case in cases}


def _paired_scores(folds: Sequence[FoldResult], labels: Mapping[str, int], metric: str) -> dict[tuple, float]:
    return {(result.fold, case): value for result in folds
            for case, value in case_scores(result.summary, labels, metric).items()}


def build_table(scan: RunScan, metric: str = "Dice", label: str = "all", baseline: str | None = None) -> ResultTable:
    """Aggregate the finished folds of ``scan`` into a :class:`ResultTable` (see the module docstring).

    ``label`` is ``"all"`` (every foreground label plus ``foreground_mean``) or one label's name.
    ``baseline`` is ``TRAINER`` (each row against it at the row's fraction) or ``TRAINER@FRACTION`` (every row
    against it at that fraction), see :func:`parse_baseline`.
    Raises :class:`SamprefError` when nothing is finished, or the metric, label, baseline or baseline fraction
    is unknown (the last listing the baseline's fractions).
    """
    if not scan.finished:
        hint = f" ({len(scan.unfinished)} unfinished fold(s) found)" if scan.unfinished else ""
        raise SamprefError(f"no finished run of {scan.dataset} in {scan.folder}{hint}. Train one first, e.g. "
                           f"`sampref_train {scan.dataset} SAMBoxOracle 0`, and rerun sampref_evaluate.")
    _check_metric(scan.finished, metric)
    labels = _dataset_labels(scan.finished)
    if label == "all":
        columns, paired_labels = [*labels, FOREGROUND], labels
    elif label in labels:
        columns, paired_labels = [label], {label: labels[label]}
    else:
        raise SamprefError(f"label {label!r} is in no summary.json; labels found: {', '.join(labels) or 'none'} "
                           "(or pass --label all).")
    groups: dict[RunKey, list[FoldResult]] = {}
    for result in scan.finished:
        groups.setdefault(result.key, []).append(result)
    trainers = sorted({key.trainer for key in groups})
    baseline_fraction = None
    if baseline is not None:
        baseline, asked_fraction = parse_baseline(baseline)
        if baseline not in trainers:
            raise SamprefError(f"baseline {baseline!r} has no finished run of {scan.dataset}; "
                               f"trainers found: {', '.join(trainers)}.")
        if asked_fraction is not None:
            baseline_fraction = _baseline_fraction(groups, baseline, asked_fraction, scan.dataset)
    rows = []
    paper_metrics = [m for m in PAPER_METRICS if m in _metric_names(scan.finished)]
    for key in sorted(groups, key=RunKey.sort_key):
        folds = sorted(groups[key], key=lambda r: r.fold)
        values = {column: fold_stat([_fold_value(r.summary, column, labels, metric) for r in folds])
                  for column in columns}
        per_metric = {m: [_fold_value(r.summary, columns[-1], labels, m) for r in folds] for m in paper_metrics}
        configs = [r.config for r in folds]
        rows.append(TableRow(key, [r.fold for r in folds], values, oracle=any(c.oracle for c in configs),
                             configuration_base=next((c.configuration_base for c in configs
                                                      if c.configuration_base is not None), None),
                             run_tag=next((c.run_tag for c in configs if c.run_tag is not None), None),
                             prompt_source=merge_prompt_sources(c.prompt_source for c in configs),
                             configuration_family=next((c.configuration_family for c in configs
                                                        if c.configuration_family is not None), None),
                             data_use=[c.data_use for c in configs],
                             fold_values=[_fold_value(r.summary, columns[-1], labels, metric) for r in folds],
                             metrics={m: fold_stat(v) for m, v in per_metric.items()}))
    if baseline is not None:
        _add_paired_tests(rows, groups, baseline, paired_labels, metric, baseline_fraction)
        tested = [row for row in rows if row.paired is not None]
        for row, p_holm in zip(tested, holm_adjust([row.paired.p_value for row in tested])):
            row.paired = replace(row.paired, p_holm=p_holm)
    return ResultTable(scan.dataset, metric, label, baseline, columns, rows, scan.unfinished, scan.skipped,
                       baseline_fraction)


def _add_paired_tests(rows: list[TableRow], groups: Mapping[RunKey, list[FoldResult]], baseline: str,
                      labels: Mapping[str, int], metric: str, fraction: str | None = None) -> None:
    """Set ``row.paired`` of every row but the baseline's own: against the baseline at the row's fraction, or
    at ``fraction`` when given (then the baseline's rows at other fractions are tested too)."""
    references = {(k.plans, k.configuration, _fraction_id(k.fraction)): k
                  for k in groups if k.trainer == baseline}
    reference_scores: dict[RunKey, dict[tuple, float]] = {}
    for row in rows:
        key, base = row.key, row.configuration_base
        wanted = key.fraction if fraction is None else fraction
        if key.trainer == baseline and (fraction is None or _fraction_id(key.fraction) == _fraction_id(fraction)):
            continue
        candidates = list(dict.fromkeys(c for c in (key.configuration, base, row.configuration_family)
                                        if c is not None))
        found = [references[r] for c in candidates if (r := (key.plans, c, _fraction_id(wanted))) in references]
        if not found:
            row.paired = PairedTest(math.nan, 0, math.nan, f"no {baseline} run at configuration "
                                    f"{' or '.join(candidates)}, fraction {wanted}; no test",
                                    baseline_fraction=wanted)
            continue
        reference = found[0]
        if reference not in reference_scores:
            reference_scores[reference] = _paired_scores(groups[reference], labels, metric)
        paired = paired_test(_paired_scores(groups[key], labels, metric), reference_scores[reference])
        configuration = reference.configuration
        fallback = (f"paired with {baseline} at base configuration {configuration} (none at {key.configuration})"
                    if configuration != key.configuration else "")
        row.paired = replace(paired, note="; ".join(filter(None, [fallback, paired.note])),
                             baseline_configuration=configuration, baseline_fraction=reference.fraction)
