"""Rendering a cross-fold :class:`ResultTable`: aligned text, CSV, JSON and the Dice-vs-fraction plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from sampref_bench.evaluation.aggregate import ResultTable, TableRow
from sampref_bench.evaluation.plots import plot_vs_fraction
from sampref_bench.utilities.atomic import write_bytes_atomic, write_json_atomic

#: The files :func:`write_outputs` writes into a dataset's results folder (or ``sampref_evaluate -o DIR``).
TABLE_CSV = "summary_table.csv"
TABLE_JSON = "summary_table.json"
PLOT_PNG = "dice_vs_fraction.png"


def _num(value: float | None, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else format(value, spec)


def _show_plans(table: ResultTable) -> bool:
    return len({row.key.plans for row in table.rows}) > 1


def _paired_scope(table: ResultTable) -> str:
    what = f"foreground mean {table.metric}" if table.label == "all" else f"{table.label} {table.metric}"
    return f"per-case {what}"


def format_table(table: ResultTable) -> str:
    """The table as aligned text, followed by notes on paired tests, unfinished and skipped folders."""
    head = ["trainer", *(["plans"] if _show_plans(table) else []), "configuration", "fraction", "folds"]
    head += table.columns
    if table.baseline:
        head += [f"diff vs {table.baseline}", "pairs", "p"]
    body = []
    for row in table.rows:
        cells = [row.key.trainer, *([row.key.plans] if _show_plans(table) else []), row.key.configuration,
                 row.key.fraction, str(len(row.folds))]
        cells += [f"{_num(row.values[c].mean):>6} ± {_num(row.values[c].std):<6}" for c in table.columns]
        if table.baseline:
            p = row.paired
            cells += ["(baseline)", "", ""] if p is None else [_num(p.mean_difference, "+.4f"), str(p.n_pairs),
                                                               _num(p.p_value, ".4g")]
        body.append(cells)
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    text_cols = 2 + _show_plans(table)
    lines = [f"{table.dataset}: {table.metric}, mean ± std over folds"]
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) if i < text_cols else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    lines += [f"  {note}" for note in _notes(table)]
    return "\n".join(lines)


def _notes(table: ResultTable) -> list[str]:
    notes = []
    if table.baseline:
        notes.append(f"paired: Wilcoxon signed-rank on {_paired_scope(table)}, row minus {table.baseline} at the "
                     "same configuration and fraction, over the cases both scored")
        notes += [f"{r.key.trainer} {r.key.configuration} f{r.key.fraction}: {r.paired.note}"
                  for r in table.rows if r.paired is not None and r.paired.note]
    notes += [f"unfinished (left out): {u.run}/fold_{u.fold}: {u.reason}" for u in table.unfinished]
    notes += [f"not a run folder (skipped): {name}" for name in table.skipped]
    return notes


def _row_record(table: ResultTable, row: TableRow) -> dict[str, Any]:
    record: dict[str, Any] = {"trainer": row.key.trainer, "plans": row.key.plans,
                              "configuration": row.key.configuration, "fraction": row.key.fraction,
                              "n_folds": len(row.folds), "folds": row.folds,
                              "values": {c: {"mean": row.values[c].mean, "std": row.values[c].std}
                                         for c in table.columns}}
    if table.baseline:
        p = row.paired
        record["paired"] = None if p is None else {"baseline": table.baseline, "mean_difference": p.mean_difference,
                                                   "n_pairs": p.n_pairs, "p_value": p.p_value, "note": p.note}
    return record


def table_to_json(table: ResultTable) -> dict[str, Any]:
    """The table as a JSON-ready dict (std ``null`` with one fold; NaN where a statistic is undefined)."""
    return {"dataset": table.dataset, "metric": table.metric, "label": table.label, "baseline": table.baseline,
            "paired_test": (f"scipy.stats.wilcoxon on {_paired_scope(table)}" if table.baseline else None),
            "columns": table.columns, "rows": [_row_record(table, row) for row in table.rows],
            "unfinished": [{"run": u.run, "fold": u.fold, "reason": u.reason} for u in table.unfinished],
            "skipped": table.skipped}


def table_to_csv(table: ResultTable) -> str:
    """The table as CSV: one line per row, ``{column}_mean``/``{column}_std`` (std empty with one fold)."""
    head = ["trainer", "plans", "configuration", "fraction", "n_folds", "folds"]
    head += [f"{c}_{s}" for c in table.columns for s in ("mean", "std")]
    if table.baseline:
        head += ["baseline", "mean_difference", "n_pairs", "p_value", "paired_note"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for row in table.rows:
        cells: list[Any] = [row.key.trainer, row.key.plans, row.key.configuration, row.key.fraction,
                            len(row.folds), ";".join(map(str, row.folds))]
        for c in table.columns:
            cells += [row.values[c].mean, "" if row.values[c].std is None else row.values[c].std]
        if table.baseline:
            p = row.paired
            cells += [table.baseline, "", "", "", "baseline"] if p is None else \
                [table.baseline, p.mean_difference, p.n_pairs, p.p_value, p.note]
        writer.writerow(cells)
    return buffer.getvalue()


def plot_table(table: ResultTable, path: Path) -> Path:
    """``dice_vs_fraction.png``: the foreground mean (or the chosen label) against the fraction, one line per
    (trainer, configuration), error bars = std over folds."""
    column = table.columns[-1]
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    for row in table.rows:
        name = f"{row.key.trainer} {row.key.configuration}" + (f" {row.key.plans}" if _show_plans(table) else "")
        stat = row.values[column]
        series.setdefault(name, []).append((row.key.fraction_value, stat.mean, stat.std))
    return plot_vs_fraction(series, path, title=f"{table.dataset}: {column} {table.metric} vs annotation fraction",
                            ylabel=f"{table.metric} ({column})")


def write_outputs(table: ResultTable, out_dir: Path) -> list[Path]:
    """Write ``summary_table.csv``, ``summary_table.json`` and ``dice_vs_fraction.png`` atomically into
    ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / TABLE_CSV, out_dir / TABLE_JSON
    write_bytes_atomic(csv_path, table_to_csv(table).encode("utf-8"))
    write_json_atomic(json_path, table_to_json(table))
    return [csv_path, json_path, plot_table(table, out_dir / PLOT_PNG)]
