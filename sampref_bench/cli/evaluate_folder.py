"""``sampref_evaluate_folder``: score a folder of predicted label maps against reference label maps."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from sampref_bench.cli.common import run_cli

EPILOG = """\
examples:
  sampref_evaluate_folder $SAMPREF_raw/Dataset003_BUSI/labelsTr predictions/ -np 8
  sampref_evaluate_folder labelsTr/ predictions/ --dataset-json $SAMPREF_raw/Dataset009_Spleen/dataset.json \\
      --hd95 --nsd 2 -o spleen_summary.json

Files are matched by name without ending (case.png, case.nii.gz). The summary.json follows nnU-Net's layout
(metric_per_case, mean per label, foreground_mean); Dice and IoU are NaN, and left out of means, where
reference and prediction are both empty. HD95 and surface Dice are in mm (pixels for PNG).
With --dataset-json, a value the dataset.json does not declare, in a reference or a prediction, is an error
naming the file and the values (it would otherwise count as background); so is a -l label that no file holds.
"""

SHOWN = ("Dice", "IoU", "HD95", "NSD")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_evaluate_folder``."""
    parser = argparse.ArgumentParser(prog="sampref_evaluate_folder", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="folder of reference label maps")
    parser.add_argument("prediction", type=Path, help="folder of predicted label maps")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="where to write summary.json (default: PREDICTION/summary.json)")
    parser.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                        help="label values to score (default: the dataset.json's foreground labels, "
                             "else every non-zero value in the references)")
    parser.add_argument("--dataset-json", type=Path, default=None, help="dataset.json naming the labels")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--hd95", action="store_true", help="add the 95th-percentile Hausdorff distance")
    parser.add_argument("--nsd", type=float, default=None, metavar="MM",
                        help="add normalized surface Dice at this tolerance in mm (pixels for PNG)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.4f}"


def format_means(summary: dict[str, Any]) -> str:
    """Per-label means and the foreground mean of a summary as an aligned text table."""
    names = {str(v): k for k, v in summary["labels"].items()}
    columns = [m for m in SHOWN if m in summary["foreground_mean"]]
    rows = [(f"{names.get(key, key)} ({key})", means) for key, means in summary["mean"].items()]
    rows.append(("foreground_mean", summary["foreground_mean"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'label':<{width}}  " + "  ".join(f"{m:>8}" for m in columns)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{_format(means[m]):>8}" for m in columns) for name, means in rows]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from sampref_bench.evaluation.evaluate_folder import evaluate_folders

    output = args.output if args.output is not None else args.prediction / "summary.json"
    summary = evaluate_folders(args.reference, args.prediction, labels=args.labels, output=output,
                               num_processes=args.num_processes, hd95=args.hd95, nsd_tolerance_mm=args.nsd,
                               dataset_json=args.dataset_json, progress=not args.quiet)
    print(f"{summary['n_cases']} case(s); distances in {summary['settings']['distance_unit']}")
    print(format_means(summary))
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_evaluate_folder``."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), "sampref_evaluate_folder")


if __name__ == "__main__":
    sys.exit(main())
