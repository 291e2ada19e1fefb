"""``sampref_evaluate``: one cross-fold table of every trainer, configuration and fraction of a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sampref_bench.cli.common import run_cli

EPILOG = """\
reads $SAMPREF_results/DatasetXXX_Name/{Trainer}__{plans}__{configuration}__f{fraction}/fold_{k}/validation/summary.json
of every finished fold (checkpoint_final.pth present); other folds are listed as unfinished and left out.
Each fold's config.json says whether the trainer is an oracle (prompts from the ground truth: an upper bound,
not a method; marked [oracle] in every output) and, for a tagged run (configuration 2d-lr0.0003), its base
configuration; a tagged run without a baseline run at its exact configuration is paired with the baseline
at its base configuration. A prompt-sourced trainer's config.json names its saliency source
(hyperparameters.saliency): rows show it as [saliency: dark-basin], folds that disagree as a+b.
Each row also says what its runs spent and used (config.json data_use): pixel labels (cases, and their share of
the fold's training cases), ratings (cases rated for DPO) and unlabeled images used (semi-supervised trainers;
0 for the others); a-b where folds differ, ? (text) or empty (CSV) where a run predates data_use: such a run's
pixel labels and ratings come from its 'cases', the unlabeled images it used are unknown.

--baseline TRAINER pairs each row with TRAINER's run at the row's own fraction. --baseline TRAINER@FRACTION
(e.g. SAMBaseline@0.1) pairs every row, at every fraction, with TRAINER's run at FRACTION (TRAINER's own rows
at other fractions included); a FRACTION at which TRAINER has no finished run is an error that lists TRAINER's.
Either way pairs are the validation cases (per fold) both runs scored, and the outputs name the baseline
trainer and fraction each p-value is against. The p-values are also given Holm-adjusted (step-down, over all
comparisons of the table; a NaN p-value, from fewer than 5 pairs, stays NaN and is not counted).

The grid is checked against $SAMPREF_preprocessed/DatasetXXX_Name/splits_final.json (its folds, and its planned
fractions; a DPO trainer only where a fraction buys rated cases), or without it against the folds and fractions
found in the results folder: a row with fewer folds, or a trainer/configuration that finished some planned
fractions but not others, is flagged incomplete in every output, with notes listing what is missing.

writes (atomically, into the dataset's results folder or -o DIR):
  summary_table.csv    one line per (trainer, configuration, fraction): oracle (true/false), base configuration
                       and run tag, per-label and foreground mean, each as mean and std over folds (std empty
                       with one fold), number of folds, and with --baseline the baseline's configuration, the
                       mean paired difference, pairs and Wilcoxon p-value, then prompt_source
                       (the saliency source; empty for trainers without one), and with --baseline
                       baseline_fraction (the fraction of the baseline run each row is compared with), then
                       pixel_labeled, pixel_label_share, rated, unlabeled_used, with --baseline p_holm, and last
                       complete (true/false), missing_folds, missing_fractions
  summary_table.json   the same (data_use: one value per fold, null when unknown; per-fold values; Dice, IoU,
                       HD95 mean and std where present; paired.p_holm), plus the unfinished folds, the top-level
                       baseline_fraction (null: each row against the baseline at its own fraction) and grid
                       (planned folds and fractions, their source, notes)
  summary_table.md     GitHub Markdown: trainer [oracle] [saliency: ...], configuration, fraction, folds
                       (found/planned), data use, mean ± std of Dice, IoU and HD95 (where the summaries have
                       them) of the foreground mean (or --label), with --baseline the difference, p and p (Holm),
                       Complete, then the notes
  summary_table.tex    the same as a LaTeX tabular with booktabs rules (needs the booktabs package); names
                       escaped (_ % & ...), notes as rows under the bottom rule
  dice_vs_fraction.png the foreground mean (or --label) against the fraction: one line per trainer and
                       configuration with a shaded band of mean ± std over folds, points at one fraction dodged,
                       oracle lines dashed and labelled (oracle); dice_vs_fraction.json: every drawn series
                       (fraction, dodged x, mean, std, band)
  dice_boxplots.png    per fraction, one box per trainer and configuration over its per-fold values;
                       dice_boxplots.json: each box's values, median, quartiles and whiskers

examples:
  sampref_evaluate -d 003
  sampref_evaluate -d Dataset003_BUSI --baseline SAMBoxOracle --label lesion -o tables/
  sampref_evaluate -d 003 --baseline SAMBaseline@0.1    # every row against SAMBaseline trained at fraction 0.1
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_evaluate``."""
    parser = argparse.ArgumentParser(prog="sampref_evaluate", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset: 3, 003 or Dataset003_BUSI")
    parser.add_argument("--baseline", default=None, metavar="TRAINER[@FRACTION]",
                        help="trainer to test every other row against (paired Wilcoxon signed-rank over cases): "
                             "at each row's own fraction, or with @FRACTION (SAMBaseline@0.1) at that fraction "
                             "for every row")
    parser.add_argument("--metric", default="Dice", help="metric of summary.json to aggregate (default: Dice)")
    parser.add_argument("--label", default="all", metavar="all|NAME",
                        help="'all': every foreground label plus foreground_mean (default); NAME: that label only")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="folder for the table and plot (default: $SAMPREF_results/DatasetXXX_Name)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from sampref_bench.evaluation.report import evaluate_dataset
    from sampref_bench.evaluation.table_output import format_table

    table, written = evaluate_dataset(args.dataset, metric=args.metric, label=args.label, baseline=args.baseline,
                                      output_dir=args.output)
    print(format_table(table))
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_evaluate``."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), "sampref_evaluate")


if __name__ == "__main__":
    sys.exit(main())
