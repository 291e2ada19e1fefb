"""Is the grid of runs complete? Missing folds of a row, missing fractions of a (trainer, configuration).

The plan is the dataset's ``splits_final.json`` (``$SAMPREF_preprocessed/DatasetXXX_Name/``): its folds are
the folds every row should have, and the fraction keys of its ``labeled`` budgets the fractions every
(trainer, plans, configuration) should reach. A DPO trainer (a row whose folds rated cases) is planned only at the
fractions that buy rated cases in every fold (more budgeted cases than ``dpo_labeled``), as training refuses the
others. Without a readable ``splits_final.json`` the plan falls back to what the results folder shows: the folds
and fractions of every run folder found there, finished or not (a note says so).

A row is incomplete when it lacks some planned fold; a (trainer, plans, configuration) is incomplete when it has
finished at least one of its planned fractions but not all of them, and each of its rows then names the missing
fractions. :func:`grid_notes` says all of it in words for the text, Markdown and LaTeX tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampref_bench import paths
from sampref_bench.evaluation.aggregate import ResultTable, TableRow
from sampref_bench.evaluation.run_scan import RunKey, parse_run_name
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError

SPLITS_FILE = "splits_final.json"


def _fraction_id(fraction: str | float) -> float:
    return round(float(fraction), 6)


def _sorted_fractions(fractions: Iterable[str]) -> tuple[str, ...]:
    """Distinct fractions (``0.1`` and ``0.10`` once, the first spelling kept) in ascending order."""
    seen: dict[float, str] = {}
    for fraction in fractions:
        seen.setdefault(_fraction_id(fraction), fraction)
    return tuple(seen[k] for k in sorted(seen))


@dataclass(frozen=True)
class GridPlan:
    """The folds and fractions the runs should cover; ``source`` says where they come from."""

    folds: tuple[int, ...]
    fractions: tuple[str, ...]
    dpo_fractions: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class RowGrid:
    """What a row lacks: its planned folds without a finished run, its group's unfinished planned fractions."""

    missing_folds: tuple[int, ...] = ()
    missing_fractions: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether the row has every planned fold and its (trainer, configuration) every planned fraction."""
        return not self.missing_folds and not self.missing_fractions


@dataclass
class GridCheck:
    """The plan and, per row (by :class:`RunKey`), what is missing."""

    plan: GridPlan
    rows: dict[RunKey, RowGrid] = field(default_factory=dict)

    def of(self, row: TableRow) -> RowGrid:
        """The :class:`RowGrid` of ``row`` (complete when unknown)."""
        return self.rows.get(row.key, RowGrid())

    @property
    def complete(self) -> bool:
        """Whether every row is complete."""
        return all(r.complete for r in self.rows.values())


def _splits_plan(path: Path) -> GridPlan | None:
    """The plan of a ``splits_final.json``; ``None`` when it is missing or not a list of folds with budgets."""
    try:
        folds = load_json(path)
    except (SamprefError, OSError, ValueError):
        return None
    if not isinstance(folds, list) or not folds or not all(isinstance(f, dict) for f in folds):
        return None
    budgets = [f.get("labeled") for f in folds]
    if not all(isinstance(b, dict) and b for b in budgets):
        return GridPlan(tuple(range(len(folds))), (), (), str(path))
    fractions = _sorted_fractions(str(k) for k in budgets[0])
    dpo = tuple(k for k in fractions if all(len(b.get(k, ())) > len(f.get("dpo_labeled") or ())
                                            for f, b in zip(folds, budgets)))
    return GridPlan(tuple(range(len(folds))), fractions, dpo, str(path))


def _found_plan(table: ResultTable) -> GridPlan:
    folds = {k for row in table.rows for k in row.folds} | {u.fold for u in table.unfinished}
    fractions = [row.key.fraction for row in table.rows]
    fractions += [key.fraction for u in table.unfinished if (key := parse_run_name(u.run)) is not None]
    found = _sorted_fractions(fractions)
    return GridPlan(tuple(sorted(folds)), found, found, "results folder (no readable splits_final.json)")


def read_plan(table: ResultTable, splits: Path | None = None) -> GridPlan:
    """The plan of ``table``'s dataset: ``splits`` (default ``$SAMPREF_preprocessed/<dataset>/splits_final.json``)
    when readable, else the folds and fractions found in the results (see the module docstring). A
    ``splits_final.json`` without budgets gives its folds and the fractions found."""
    path = splits if splits is not None else paths.preprocessed_root() / table.dataset / SPLITS_FILE
    plan = _splits_plan(Path(path))
    if plan is None:
        return _found_plan(table)
    if not plan.fractions:
        found = _found_plan(table)
        return GridPlan(plan.folds, found.fractions, found.dpo_fractions, plan.source)
    return plan


def _is_dpo(rows: Sequence[TableRow]) -> bool:
    return any(use.rated for row in rows for use in row.data_use)


def check_grid(table: ResultTable, plan: GridPlan | None = None) -> GridCheck:
    """What every row of ``table`` misses against ``plan`` (default :func:`read_plan`)."""
    plan = plan if plan is not None else read_plan(table)
    groups: dict[tuple[str, str, str], list[TableRow]] = {}
    for row in table.rows:
        groups.setdefault((row.key.trainer, row.key.plans, row.key.configuration), []).append(row)
    check = GridCheck(plan)
    for rows in groups.values():
        planned = plan.dpo_fractions if _is_dpo(rows) else plan.fractions
        have = {_fraction_id(row.key.fraction) for row in rows}
        missing: tuple[str, ...] = ()
        if have & {_fraction_id(f) for f in planned}:
            missing = tuple(f for f in planned if _fraction_id(f) not in have)
        for row in rows:
            check.rows[row.key] = RowGrid(tuple(k for k in plan.folds if k not in row.folds), missing)
    return check


def _names(values: Iterable[Any]) -> str:
    return ", ".join(map(str, values))


def grid_notes(table: ResultTable, check: GridCheck) -> list[str]:
    """The grid in words: the plan, then one line per incomplete row and per incomplete (trainer, configuration)."""
    plan = check.plan
    notes = [f"grid: folds {_names(plan.folds) or 'none'}, fractions {_names(plan.fractions) or 'none'} planned "
             f"({plan.source}); complete: every planned fold finished, and every planned fraction of the trainer "
             "and configuration"]
    reported: set[tuple[str, str, str]] = set()
    for row in table.rows:
        state = check.of(row)
        name = f"{row.key.trainer} {row.key.configuration}" + (
            f" ({row.key.plans})" if len({r.key.plans for r in table.rows}) > 1 else "")
        if state.missing_folds:
            notes.append(f"incomplete: {name} f{row.key.fraction}: {len(row.folds)} of {len(plan.folds)} folds "
                         f"(missing fold {_names(state.missing_folds)})")
        group = (row.key.trainer, row.key.plans, row.key.configuration)
        if state.missing_fractions and group not in reported:
            reported.add(group)
            have = _names(r.key.fraction for r in table.rows
                          if (r.key.trainer, r.key.plans, r.key.configuration) == group)
            notes.append(f"incomplete grid: {name}: fraction {_names(state.missing_fractions)} not finished "
                         f"(finished: {have})")
    return notes
