"""``sampref_plan``: fingerprint, plan, split and preprocess a converted dataset."""

from __future__ import annotations

import argparse
import sys

from sampref_bench.cli.common import run_cli
from sampref_bench.planners.plans import (
    DEFAULT_DPO_LABELED_FRACTION,
    DEFAULT_FRACTIONS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_THRESHOLDS,
)

EPILOG = """\
steps (each skipped when its output is current; --clean redoes all):
  fingerprint.json   shapes, spacings, foreground intensities, label sizes and objects per case
  plans.json         slicing axis (3D), normalization, 3-channel mapping, input size, batch size,
                     fractions, thresholds, each with its reason under "reasons"
  splits_final.json  5 folds (KFold, random_state=12345, patient groups kept together), a seeded
                     permutation per fold and the nested labeled cases of every fraction; a
                     splits_final.json you place in the raw dataset folder is validated and used
  samprefPlans_2d/   normalized, resized, padded slices (.npy, memory-mappable) and per-case metadata

example:
  sampref_plan -d 003
  sampref_plan -d 003 --fractions 0.05 0.1 1 --image-size 512 --clean
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_plan``."""
    parser = argparse.ArgumentParser(prog="sampref_plan", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset: 3, 003 or Dataset003_BUSI")
    parser.add_argument("--verify", action="store_true", help="verify the raw dataset before planning")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"model input size in px (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                        help="annotation fractions in (0, 1] (default %(default)s)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
                        help="DPO candidate thresholds, strictly increasing in (0, 1) (default %(default)s)")
    parser.add_argument("--dpo-labeled-fraction", type=float, default=DEFAULT_DPO_LABELED_FRACTION,
                        help="share of the permutation a DPO trainer labels with pixels (default %(default)s)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--clean", action="store_true", help="redo every step even when current")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_plan``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        from sampref_bench.planners.pipeline import plan_dataset

        outcome = plan_dataset(args.dataset, image_size=args.image_size, fractions=args.fractions,
                               thresholds=args.thresholds, dpo_labeled_fraction=args.dpo_labeled_fraction,
                               num_processes=args.num_processes, clean=args.clean, verify=args.verify)
        print(f"planned {outcome.folder}")
        print(f"  ran: {', '.join(outcome.ran) or 'nothing'}; current: {', '.join(outcome.skipped) or 'nothing'}")
        return 0

    return run_cli(body, "sampref_plan")


if __name__ == "__main__":
    sys.exit(main())
