"""``sampref_evaluate``'s whole job as one call: resolve a dataset, aggregate its runs, write the outputs.

Imports run one way: ``report`` -> ``table_output`` -> ``aggregate`` (and ``plots``); nothing imports
``report`` but the command line.
"""

from __future__ import annotations

from pathlib import Path

from sampref_bench import paths
from sampref_bench.evaluation.aggregate import ResultTable, build_table
from sampref_bench.evaluation.run_scan import scan_runs
from sampref_bench.evaluation.table_output import write_outputs


def evaluate_dataset(dataset: str | int, metric: str = "Dice", label: str = "all", baseline: str | None = None,
                     output_dir: Path | None = None) -> tuple[ResultTable, list[Path]]:
    """Resolve ``dataset`` (3, 003 or Dataset003_BUSI), aggregate its runs and write the table and plot into
    ``output_dir`` (default ``$SAMPREF_results/DatasetXXX_Name``). ``baseline`` is ``TRAINER`` or
    ``TRAINER@FRACTION`` (see :func:`~sampref_bench.evaluation.aggregate.parse_baseline`). Returns the table and
    the written paths (``summary_table.csv``, ``.json``, ``.md``, ``.tex``, ``dice_vs_fraction.png`` and
    ``dice_boxplots.png`` with their ``.json`` sidecars; see
    :func:`~sampref_bench.evaluation.table_output.write_outputs`), the grid checked against the dataset's
    ``splits_final.json`` (:func:`~sampref_bench.evaluation.grid.check_grid`). Every row carries
    its runs' data use (pixel labels, ratings, unlabeled images used) from their ``config.json``, see
    :class:`~sampref_bench.evaluation.data_use.DataUse`."""
    name = paths.resolve_dataset(dataset, paths.raw_root(), paths.preprocessed_root(), paths.results_root())
    scan = scan_runs(name)
    table = build_table(scan, metric=metric, label=label, baseline=baseline)
    return table, write_outputs(table, output_dir if output_dir is not None else scan.folder)
