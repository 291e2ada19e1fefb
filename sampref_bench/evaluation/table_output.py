"""Rendering a cross-fold :class:`ResultTable`: aligned text, CSV, JSON and the Dice-vs-fraction plot.

Oracle rows (prompts from the ground truth) are marked in all four: ``[oracle]`` after the trainer and a note in
the text, an ``oracle`` column (``true``/``false``) in the CSV, an ``oracle`` field in the JSON, a dashed line
labelled ``(oracle)`` in the plot.

A prompt-sourced trainer's rows name the saliency source that made their prompts (``prompt_source``, see
:mod:`~sampref_bench.evaluation.aggregate`; ``a+b`` when folds disagree) in all four: ``[saliency: dark-basin]``
after the trainer (after ``[oracle]`` on a row that has both) and a note in the text, a ``prompt_source``
column in the CSV (the last one, so every older column keeps its place; empty when unknown), a
``prompt_source`` field in the JSON (``null`` when unknown), and the same mark in the plot's line name.

With a baseline, every output says which baseline run each p-value is against, trainer and fraction: the text
table's ``diff vs SAMBoxOracle`` (each row at its own fraction) or ``diff vs SAMBaseline@0.1`` (every row against
that fraction) column and its ``paired:`` note; the CSV's ``baseline`` (the trainer) and ``baseline_fraction``
columns (the last one, after ``prompt_source``, so every older column keeps its place); the JSON's top-level
``baseline`` and ``baseline_fraction`` (``null``: each row's own) and each row's ``paired.baseline_fraction``.

Every row says what its runs spent and used, read from each fold's ``config.json`` (see
:class:`~sampref_bench.evaluation.data_use.DataUse`): the cases with pixel labels (and their share of the fold's
training cases), the rated cases and the unlabeled images trained on. The text table shows them after ``folds``
as ``pixel labels`` (``8 (20%)``), ``ratings`` and ``unlabeled used``; folds that differ show a range (``8-9``),
and ``?`` marks a count some fold's config.json does not record (a run written before ``data_use``: its pixel
labels and ratings come from ``cases``, the unlabeled images it used are unknown). The CSV appends
``pixel_labeled``, ``pixel_label_share``, ``rated`` and ``unlabeled_used`` after every older column (a number,
``lo-hi`` when folds differ, empty when unknown); the JSON gives each row ``data_use``, one value per fold (in
``folds`` order, ``null`` when unknown).

Where a box came from is data use too (:func:`~sampref_bench.evaluation.data_use.read_box_source`): when some row's
SAM box and point came from a learned source, ``learned`` (a head trained with SAM on the run's pixel-labeled cases)
or ``cascade:UNet`` (a finished UNet run of the same fold and fraction, trained on the same pixel-labeled cases), the
text and paper tables add a ``box prompts`` column after ``unlabeled used`` (``saliency`` for the unsupervised
source, ``cascade:UNet (+UNet 50x250)`` with the cascade's extra UNet training in epochs x iterations per epoch,
``-`` for a row without box prompts) and a note saying that neither learned source uses a label beyond the pixel
labels column. A table without a learned source keeps its columns. The CSV always appends ``box_source`` and
``box_source_training`` after every older column; the JSON gives each row ``box_source`` and
``box_source_training``, one value per fold.

With a baseline, the p-values are also given Holm-adjusted over every defined p-value of the table (NaN ones stay
NaN, outside the family): the text's ``p Holm`` column after ``p``, the CSV's ``p_holm`` (appended after the data
use), the JSON's ``paired.p_holm`` and top-level ``paired_correction``.

Every output says whether the grid is complete (:mod:`~sampref_bench.evaluation.grid`): the text table's last
column ``complete`` (``yes``/``no``) and its ``grid:``/``incomplete`` notes; the CSV's last columns ``complete``
(``true``/``false``), ``missing_folds`` and ``missing_fractions`` (``;``-separated); the JSON's per-row
``complete``, ``missing_folds``, ``missing_fractions`` and top-level ``grid`` (the plan, its source, the notes).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from sampref_bench.evaluation.aggregate import PAPER_METRICS, ResultTable, TableRow
from sampref_bench.evaluation.data_use import (
    DATA_USE_FIELDS,
    box_sources_text,
    data_use_range,
    shows_box_sources,
)
from sampref_bench.evaluation.grid import GridCheck, check_grid, grid_notes
from sampref_bench.evaluation.paper_tables import PaperTable, to_latex, to_markdown
from sampref_bench.evaluation.plots import Box, Point, plot_boxplots, plot_vs_fraction
from sampref_bench.evaluation.run_scan import merge_prompt_sources
from sampref_bench.evaluation.statistics import FoldStat
from sampref_bench.utilities.atomic import write_bytes_atomic, write_json_atomic

#: The files :func:`write_outputs` writes into a dataset's results folder (or ``sampref_evaluate -o DIR``).
TABLE_CSV = "summary_table.csv"
TABLE_JSON = "summary_table.json"
TABLE_MD = "summary_table.md"
TABLE_TEX = "summary_table.tex"
PLOT_PNG = "dice_vs_fraction.png"
BOXPLOT_PNG = "dice_boxplots.png"
#: What the ``[oracle]`` mark means, as the text table's note says it.
ORACLE_MARK = "[oracle]"
ORACLE_NOTE = f"{ORACLE_MARK}: prompts come from the ground truth; an upper bound, not a method"
#: What the ``[saliency: SOURCE]`` mark means, as the text table's note says it.
PROMPT_SOURCE_NOTE = ("[saliency: SOURCE]: the saliency source that made a prompt-sourced trainer's prompts "
                      "(config.json hyperparameters.saliency); a+b: its folds used different sources")

#: The text table's data-use columns, after ``folds``.
DATA_USE_HEAD = ["pixel labels", "ratings", "unlabeled used"]
DATA_USE_NOTE = ("pixel labels (share of the fold's training cases), ratings, unlabeled used: per fold, as each run's "
                 "config.json records them, the pixel-labeled cases, the rated cases and the images trained on "
                 "without labels or ratings; a-b: the folds differ")
#: The text table's box-source column (after the data use), shown when some row's boxes came from a learned source.
BOX_SOURCE_HEAD = "box prompts"
BOX_SOURCE_NOTE = ("box prompts: where SAM's box and point came from (config.json data_use.box_source): saliency "
                   "(unsupervised, reads no label); learned (a coarse-mask head trained with SAM on the run's "
                   "pixel-labeled cases); cascade:UNet (the finished UNet run of the same fold and fraction, trained "
                   "on the same pixel-labeled cases; +UNet ExI: the extra training it costs, epochs x iterations per "
                   "epoch); neither learned source uses a label beyond the pixel labels column; -: no box prompt")
UNKNOWN_USE_NOTE = ("?: not recorded in some fold's config.json (a run written before config.json had data_use "
                    "does not say how many unlabeled images it used; an older one nothing at all)")


def _span_text(span: tuple[float, float] | None, percent: bool = False) -> str:
    """``8``, ``8-9`` (folds differ), ``20%``/``20-22%`` with ``percent`` (a share 0..1), ``?`` when unknown."""
    if span is None:
        return "?"
    lo, hi = (round(v * 100) if percent else v for v in span)
    text = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
    return text + "%" if percent else text


def data_use_cells(row: TableRow) -> list[str]:
    """The text table's data-use cells of ``row`` (see :data:`DATA_USE_HEAD`)."""
    labeled = data_use_range(row.data_use, "pixel_labeled")
    share = data_use_range(row.data_use, "pixel_label_share")
    pixel = _span_text(labeled) + (f" ({_span_text(share, percent=True)})" if labeled and share else "")
    return [pixel, _span_text(data_use_range(row.data_use, "rated")),
            _span_text(data_use_range(row.data_use, "unlabeled_used"))]


def box_source_cell(row: TableRow) -> str:
    """The tables' box-source cell of ``row`` (see :data:`BOX_SOURCE_HEAD`): ``-`` when no fold records one."""
    return box_sources_text(row.data_use) or "-"


def _shows_box_sources(table: ResultTable) -> bool:
    return shows_box_sources(row.data_use for row in table.rows)


def _csv_span(span: tuple[float, float] | None) -> Any:
    """A data-use CSV cell: the value, ``lo-hi`` when folds differ, empty when unknown."""
    if span is None:
        return ""
    return span[0] if span[0] == span[1] else f"{span[0]}-{span[1]}"


def prompt_source_mark(source: str) -> str:
    """The text table's and plot's mark of a row whose prompts came from saliency ``source``."""
    return f"[saliency: {source}]"


def _num(value: float | None, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else format(value, spec)


def _show_plans(table: ResultTable) -> bool:
    return len({row.key.plans for row in table.rows}) > 1


def _trainer_cell(row: TableRow) -> str:
    marks = ([ORACLE_MARK] if row.oracle else []) + \
        ([prompt_source_mark(row.prompt_source)] if row.prompt_source is not None else [])
    return " ".join([row.key.trainer, *marks])


def _paired_scope(table: ResultTable) -> str:
    what = f"foreground mean {table.metric}" if table.label == "all" else f"{table.label} {table.metric}"
    return f"per-case {what}"


def format_table(table: ResultTable, grid: GridCheck | None = None) -> str:
    """The table as aligned text, followed by notes on paired tests, the grid (``grid``, default
    :func:`~sampref_bench.evaluation.grid.check_grid`), unfinished and skipped folders."""
    grid = grid if grid is not None else check_grid(table)
    head = ["trainer", *(["plans"] if _show_plans(table) else []), "configuration", "fraction", "folds"]
    head += DATA_USE_HEAD + ([BOX_SOURCE_HEAD] if _shows_box_sources(table) else [])
    head += table.columns
    if table.baseline:
        head += [f"diff vs {table.baseline_name}", "pairs", "p", "p Holm"]
    head.append("complete")
    body = []
    for row in table.rows:
        cells = [_trainer_cell(row), *([row.key.plans] if _show_plans(table) else []), row.key.configuration,
                 row.key.fraction, str(len(row.folds)), *data_use_cells(row)]
        cells += [box_source_cell(row)] if _shows_box_sources(table) else []
        cells += [f"{_num(row.values[c].mean):>6} ± {_num(row.values[c].std):<6}" for c in table.columns]
        if table.baseline:
            p = row.paired
            cells += ["(baseline)", "", "", ""] if p is None else [
                _num(p.mean_difference, "+.4f"), str(p.n_pairs), _num(p.p_value, ".4g"), _num(p.p_holm, ".4g")]
        cells.append("yes" if grid.of(row).complete else "no")
        body.append(cells)
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    text_cols = 2 + _show_plans(table)
    lines = [f"{table.dataset}: {table.metric}, mean ± std over folds"]
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) if i < text_cols else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    lines += [f"  {note}" for note in _notes(table, grid)]
    return "\n".join(lines)


def _notes(table: ResultTable, grid: GridCheck) -> list[str]:
    notes = [ORACLE_NOTE] if any(row.oracle for row in table.rows) else []
    if any(row.prompt_source is not None for row in table.rows):
        notes.append(PROMPT_SOURCE_NOTE)
    notes.append(DATA_USE_NOTE)
    if _shows_box_sources(table):
        notes.append(BOX_SOURCE_NOTE)
    if any("?" in cell for row in table.rows for cell in data_use_cells(row)):
        notes.append(UNKNOWN_USE_NOTE)
    if table.baseline:
        if table.baseline_fraction is not None:
            notes.append(f"paired: Wilcoxon signed-rank on {_paired_scope(table)}, row (any fraction) minus "
                         f"{table.baseline} at fraction {table.baseline_fraction}, at the same configuration (else "
                         "a tagged run's base configuration), over the cases (fold, case) both scored")
        else:
            notes.append(f"paired: Wilcoxon signed-rank on {_paired_scope(table)}, row minus {table.baseline} at "
                         "the same configuration (else a tagged run's base configuration) and fraction, over the "
                         "cases both scored")
        notes.append("p Holm: the p-values Holm-adjusted over every defined p-value of this table (NaN ones left out)")
        notes += [f"{r.key.trainer} {r.key.configuration} f{r.key.fraction}: {r.paired.note}"
                  for r in table.rows if r.paired is not None and r.paired.note]
    notes += grid_notes(table, grid)
    notes += [f"unfinished (left out): {u.run}/fold_{u.fold}: {u.reason}" for u in table.unfinished]
    notes += [f"not a run folder (skipped): {name}" for name in table.skipped]
    return notes


def _row_record(table: ResultTable, row: TableRow, grid: GridCheck) -> dict[str, Any]:
    record: dict[str, Any] = {"trainer": row.key.trainer, "oracle": row.oracle,
                              "prompt_source": row.prompt_source, "plans": row.key.plans,
                              "configuration": row.key.configuration,
                              "configuration_base": row.configuration_base, "run_tag": row.run_tag,
                              "fraction": row.key.fraction, "n_folds": len(row.folds), "folds": row.folds,
                              "values": {c: {"mean": row.values[c].mean, "std": row.values[c].std}
                                         for c in table.columns},
                              "data_use": {name: [getattr(use, name) for use in row.data_use]
                                           for name in DATA_USE_FIELDS},
                              "box_source": [use.box_source for use in row.data_use],
                              "box_source_training": [use.box_source_training for use in row.data_use],
                              "fold_values": row.fold_values,
                              "metrics": {m: {"mean": s.mean, "std": s.std} for m, s in row.metrics.items()},
                              "complete": grid.of(row).complete, "missing_folds": list(grid.of(row).missing_folds),
                              "missing_fractions": list(grid.of(row).missing_fractions)}
    if table.baseline:
        p = row.paired
        record["paired"] = None if p is None else {
            "baseline": table.baseline, "baseline_configuration": p.baseline_configuration,
            "baseline_fraction": p.baseline_fraction, "mean_difference": p.mean_difference, "n_pairs": p.n_pairs,
            "p_value": p.p_value, "p_holm": p.p_holm, "note": p.note}
    return record


def table_to_json(table: ResultTable, grid: GridCheck | None = None) -> dict[str, Any]:
    """The table as a JSON-ready dict (std ``null`` with one fold; NaN where a statistic is undefined); each row
    has ``oracle`` (bool), ``prompt_source``, ``configuration_base`` and ``run_tag`` (``null`` when its
    config.json does not say) and ``data_use`` (``{pixel_labeled, pixel_label_share, rated, unlabeled_used}``, each
    a list with one value per fold in ``folds`` order, ``null`` where that fold's config.json does not say).
    ``baseline`` is the baseline trainer, ``baseline_fraction`` the fraction every row is compared at (``null``:
    each row at its own); a row's ``paired.baseline_fraction`` is the fraction of the baseline run that row is
    compared with. ``paired.p_holm`` is the Holm-adjusted p-value. ``box_source`` and ``box_source_training`` give
    each fold's box source and a cascade's UNet training (``null`` where unknown or without box prompts). Each row
    has ``fold_values`` (the summary column's value per fold), ``metrics`` (mean and std of Dice, IoU, HD95 where
    present), ``complete``,
    ``missing_folds`` and ``missing_fractions``; ``grid`` is the plan they are checked against (default
    :func:`~sampref_bench.evaluation.grid.check_grid`) and its notes."""
    grid = grid if grid is not None else check_grid(table)
    plan = grid.plan
    return {"dataset": table.dataset, "metric": table.metric, "label": table.label, "baseline": table.baseline,
            "baseline_fraction": table.baseline_fraction,
            "paired_test": (f"scipy.stats.wilcoxon on {_paired_scope(table)}" if table.baseline else None),
            "paired_correction": "holm" if table.baseline else None,
            "columns": table.columns, "rows": [_row_record(table, row, grid) for row in table.rows],
            "grid": {"folds": list(plan.folds), "fractions": list(plan.fractions),
                     "dpo_fractions": list(plan.dpo_fractions), "source": plan.source, "complete": grid.complete,
                     "notes": grid_notes(table, grid)},
            "unfinished": [{"run": u.run, "fold": u.fold, "reason": u.reason} for u in table.unfinished],
            "skipped": table.skipped}


def table_to_csv(table: ResultTable, grid: GridCheck | None = None) -> str:
    """The table as CSV: one line per row, ``oracle`` as ``true``/``false``, ``configuration_base`` and
    ``run_tag`` (empty when unknown), ``{column}_mean``/``{column}_std`` (std empty with one fold), the paired
    test's columns with a baseline, then ``prompt_source`` (empty when unknown; appended after every older
    column so that readers by position still find those where they were), and with a baseline last
    ``baseline_fraction`` (the fraction of the baseline run the row is compared with; a baseline row's own),
    appended after it for the same reason, and last the data use (:data:`~sampref_bench.evaluation.aggregate.
    DATA_USE_FIELDS`: ``pixel_labeled``, ``pixel_label_share``, ``rated``, ``unlabeled_used``; the folds' common
    value, ``lo-hi`` when they differ, empty when some fold's config.json does not say), then with a baseline
    ``p_holm`` (the Holm-adjusted p-value), then ``complete`` (``true``/``false``), ``missing_folds`` and
    ``missing_fractions`` (``;``-separated) against ``grid`` (default
    :func:`~sampref_bench.evaluation.grid.check_grid`), and last, appended after those, ``box_source`` (the row's
    box source as the text table shows it, empty when no fold records one) and ``box_source_training`` (a cascade's
    UNet run and its epochs x iterations, see :func:`_csv_training`)."""
    grid = grid if grid is not None else check_grid(table)
    head = ["trainer", "oracle", "plans", "configuration", "configuration_base", "run_tag", "fraction", "n_folds",
            "folds"]
    head += [f"{c}_{s}" for c in table.columns for s in ("mean", "std")]
    if table.baseline:
        head += ["baseline", "baseline_configuration", "mean_difference", "n_pairs", "p_value", "paired_note"]
    head.append("prompt_source")
    if table.baseline:
        head.append("baseline_fraction")
    head += list(DATA_USE_FIELDS)
    head += (["p_holm"] if table.baseline else []) + ["complete", "missing_folds", "missing_fractions"]
    head += ["box_source", "box_source_training"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for row in table.rows:
        cells: list[Any] = [row.key.trainer, "true" if row.oracle else "false", row.key.plans, row.key.configuration,
                            row.configuration_base or "", row.run_tag or "", row.key.fraction, len(row.folds),
                            ";".join(map(str, row.folds))]
        for c in table.columns:
            cells += [row.values[c].mean, "" if row.values[c].std is None else row.values[c].std]
        if table.baseline:
            p = row.paired
            cells += [table.baseline, "", "", "", "", "baseline"] if p is None else \
                [table.baseline, p.baseline_configuration or "", p.mean_difference, p.n_pairs, p.p_value, p.note]
        cells.append(row.prompt_source or "")
        if table.baseline:
            cells.append(row.key.fraction if row.paired is None else row.paired.baseline_fraction or "")
        cells += [_csv_span(data_use_range(row.data_use, name)) for name in DATA_USE_FIELDS]
        if table.baseline:
            cells.append("" if row.paired is None else row.paired.p_holm)
        state = grid.of(row)
        cells += ["true" if state.complete else "false", ";".join(map(str, state.missing_folds)),
                  ";".join(state.missing_fractions)]
        cells += [box_sources_text(row.data_use) or "", _csv_training(row)]
        writer.writerow(cells)
    return buffer.getvalue()


def _csv_training(row: TableRow) -> str:
    """The CSV's ``box_source_training`` cell: each distinct cascade run of the row's folds, ``RUN (E epochs x I
    iterations)`` (``?`` where its record does not say), ``;``-separated; empty without a cascade."""
    runs = []
    for use in row.data_use:
        training = use.box_source_training
        if training is None:
            continue
        length = [training.get("epochs"), training.get("iterations_per_epoch")]
        shown = [str(v) if isinstance(v, int) else "?" for v in length]
        runs.append(f"{training.get('run')} ({shown[0]} epochs x {shown[1]} iterations)")
    return ";".join(dict.fromkeys(runs))


def _mean_std(stat: FoldStat | None, spec: str) -> str:
    """``0.8000 ± 0.1000``; the mean alone with one fold or an undefined std (an infinite HD95 among the folds),
    ``n/a`` without a value."""
    if stat is None or math.isnan(stat.mean):
        return "n/a"
    shown = stat.std is not None and math.isfinite(stat.std)
    return format(stat.mean, spec) + (f" ± {format(stat.std, spec)}" if shown else "")


def paper_metrics(table: ResultTable) -> list[str]:
    """The metric columns of the paper tables: the table's metric, then the other :data:`PAPER_METRICS` the rows
    have (in that order)."""
    found = {m for row in table.rows for m in row.metrics}
    return [table.metric, *(m for m in PAPER_METRICS if m in found and m != table.metric)]


def paper_table(table: ResultTable, grid: GridCheck | None = None) -> PaperTable:
    """The rows of ``summary_table.md`` and ``.tex``: trainer (with its marks), configuration, fraction, folds
    (found/planned), data use, mean ± std over folds of each :func:`paper_metrics` in the summary column
    (``foreground_mean`` or ``--label``; HD95 with two decimals, the others with four), with a baseline the mean
    paired difference, p and Holm-adjusted p (``n/a`` where undefined), and ``Complete``; the text table's notes
    below."""
    grid = grid if grid is not None else check_grid(table)
    metrics, column, n_planned = paper_metrics(table), table.columns[-1], len(grid.plan.folds)
    head = ["Trainer", *(["Plans"] if _show_plans(table) else []), "Configuration", "Fraction", "Folds",
            "Pixel labels", "Ratings", "Unlabeled used", *(["Box prompts"] if _shows_box_sources(table) else []),
            *metrics]
    if table.baseline:
        head += [f"Δ{table.metric} vs {table.baseline_name}", "p", "p (Holm)"]
    head.append("Complete")
    rows = []
    for row in table.rows:
        cells = [_trainer_cell(row), *([row.key.plans] if _show_plans(table) else []), row.key.configuration,
                 row.key.fraction, f"{len(row.folds)}/{n_planned}" if n_planned else str(len(row.folds)),
                 *data_use_cells(row), *([box_source_cell(row)] if _shows_box_sources(table) else [])]
        cells += [_mean_std(row.values[column] if m == table.metric else row.metrics.get(m),
                            ".2f" if m == "HD95" else ".4f") for m in metrics]
        if table.baseline:
            p = row.paired
            cells += ["(baseline)", "", ""] if p is None else [
                _num(p.mean_difference, "+.4f"), _num(p.p_value, ".4g"), _num(p.p_holm, ".4g")]
        cells = ["n/a" if cell == "nan" else cell for cell in cells]
        cells.append("yes" if grid.of(row).complete else "no")
        rows.append(cells)
    first_numeric = 2 + _show_plans(table)
    title = f"{table.dataset}: {column}, mean ± std over folds (the mean alone with one fold)"
    return PaperTable(title, head, rows, set(range(first_numeric, len(head) - 1)), _notes(table, grid))


def _series_rows(table: ResultTable) -> tuple[dict[str, list[TableRow]], set[str]]:
    """The rows of each plotted series (one per trainer, configuration[, plans]) by legend name, and the oracle
    series' names (see :func:`plot_series`)."""
    groups: dict[tuple[str, str, str], list[TableRow]] = {}
    for row in table.rows:
        groups.setdefault((row.key.trainer, row.key.configuration, row.key.plans), []).append(row)
    named: dict[str, list[TableRow]] = {}
    oracle: set[str] = set()
    for (trainer, configuration, plans), rows in groups.items():
        name = f"{trainer} {configuration}" + (f" {plans}" if _show_plans(table) else "")
        source = merge_prompt_sources(row.prompt_source for row in rows)
        if source is not None:
            name += f" {prompt_source_mark(source)}"
        if any(row.oracle for row in rows):
            name += " (oracle)"
            oracle.add(name)
        named[name] = rows
    return named, oracle


def plot_series(table: ResultTable) -> tuple[dict[str, list[Point]], set[str]]:
    """The lines of ``dice_vs_fraction.png``: ``{legend name: [(fraction, mean, std or None), ...]}`` of the
    foreground mean (or the chosen label), one per (trainer, configuration[, plans]), and the names of the oracle
    lines (a line is oracle when any of its rows is; its name ends in ``(oracle)``). A line whose rows name a
    prompt source carries its mark before that (``SAMBaseline 2d [saliency: dark-basin]``; rows that disagree
    merged as in :func:`~sampref_bench.evaluation.run_scan.merge_prompt_sources`)."""
    column = table.columns[-1]
    named, oracle = _series_rows(table)
    return {name: [(row.key.fraction_value, row.values[column].mean, row.values[column].std) for row in rows]
            for name, rows in named.items()}, oracle


def box_series(table: ResultTable) -> tuple[dict[str, list[Box]], set[str]]:
    """The boxes of ``dice_boxplots.png``: per series of :func:`plot_series` (same names) its rows' per-fold
    values of the summary column, ``[(fraction, [value per fold]), ...]``, and the oracle series' names."""
    named, oracle = _series_rows(table)
    return {name: [(row.key.fraction_value, list(row.fold_values)) for row in rows]
            for name, rows in named.items()}, oracle


def plot_table(table: ResultTable, path: Path) -> Path:
    """``dice_vs_fraction.png`` (and its ``.json`` sidecar): the lines of :func:`plot_series`, a band of mean ±
    std over folds, points at one fraction dodged, oracle lines dashed."""
    column = table.columns[-1]
    series, oracle = plot_series(table)
    return plot_vs_fraction(series, path, title=f"{table.dataset}: {column} {table.metric} vs annotation fraction",
                            ylabel=f"{table.metric} ({column})", dashed=oracle)


def plot_boxes(table: ResultTable, path: Path) -> Path:
    """``dice_boxplots.png`` (and its ``.json`` sidecar): per fraction, a box per series of :func:`box_series`."""
    column = table.columns[-1]
    boxes, oracle = box_series(table)
    return plot_boxplots(boxes, path, title=f"{table.dataset}: per-fold {column} {table.metric} by annotation "
                         "fraction", ylabel=f"{table.metric} ({column}) per fold", dashed=oracle)


def write_outputs(table: ResultTable, out_dir: Path, grid: GridCheck | None = None) -> list[Path]:
    """Write ``summary_table.csv``, ``.json``, ``.md``, ``.tex``, ``dice_vs_fraction.png`` and
    ``dice_boxplots.png`` (each plot with its ``.json`` sidecar) atomically into ``out_dir``, the grid checked
    against ``grid`` (default :func:`~sampref_bench.evaluation.grid.check_grid`); returns their paths."""
    out_dir = Path(out_dir)
    grid = grid if grid is not None else check_grid(table)
    paper = paper_table(table, grid)
    texts = {TABLE_CSV: table_to_csv(table, grid), TABLE_MD: to_markdown(paper), TABLE_TEX: to_latex(paper)}
    for name, text in texts.items():
        write_bytes_atomic(out_dir / name, text.encode("utf-8"))
    write_json_atomic(out_dir / TABLE_JSON, table_to_json(table, grid))
    plots = [plot_table(table, out_dir / PLOT_PNG), plot_boxes(table, out_dir / BOXPLOT_PNG)]
    return [*(out_dir / name for name in (TABLE_CSV, TABLE_JSON, TABLE_MD, TABLE_TEX)),
            *(path for plot in plots for path in (plot, plot.with_suffix(".json")))]
