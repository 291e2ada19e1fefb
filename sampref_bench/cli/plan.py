"""``sampref_plan``: fingerprint, plan, split and preprocess a converted dataset."""

from __future__ import annotations

import argparse
import sys

from sampref_bench.cli.common import run_cli
from sampref_bench.planners.plans import (
    BATCH_SIZE,
    DEFAULT_DPO_LABELED_FRACTION,
    DEFAULT_FRACTIONS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_THRESHOLDS,
    DPO_EPOCHS,
    EPOCHS,
    ITERATIONS_PER_EPOCH,
)

EPILOG = f"""\
steps (each skipped when its output is current; --clean redoes all):
  fingerprint.json   shapes, spacings, label sizes and objects per case; intensity statistics of
                     foreground voxels only (a case without foreground adds nothing)
  plans.json         every choice with its reason under "reasons": slicing axis (3D), normalization,
                     3-channel mapping, input size; the training length, the same at every
                     fraction: batch_size ({BATCH_SIZE} slices), epochs ({EPOCHS}), iterations_per_epoch
                     ({ITERATIONS_PER_EPOCH}), dpo_epochs ({DPO_EPOCHS}), dpo_iterations_per_epoch; fractions (always
                     including --dpo-labeled-fraction), dpo_fractions (the fractions above it,
                     where a DPO trainer has cases to rate) and thresholds
  splits_final.json  nnU-Net's layout: a list with one dict per fold, "train" and "val" (sorted
                     cases; 5 folds from KFold, random_state=12345, patient groups kept together),
                     then sampref's "permutation" (seeded, per fold), "labeled" (fraction -> the
                     nested labeled cases) and "dpo_labeled". nnU-Net reads it as
                     load_json(path)[fold]["train"]: copy it to nnUNet_preprocessed/DatasetXXX/
                     to train nnU-Net on the same folds. A splits_final.json (train/val per fold)
                     you place in the raw dataset folder is validated and used instead; a
                     planned splits_final.json edited by hand is refused (--clean rewrites it)
  splits_final_info.json
                     the splits' inputs_hash, source and sampref version
  samprefPlans_2d/   normalized, resized, padded slices (.npy, memory-mappable), per-case metadata
                     and preprocessing.json; rebuilt only when a plan key that changes the arrays
                     changes (not for other --fractions, --thresholds or training lengths)

The raw listing (the checks of `sampref_convert verify` that read no image) and the new plan and splits are
validated before anything is written: a refused call leaves plans.json and splits_final.json as they were.

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
                        help="share of the permutation a DPO trainer labels with pixels; always planned as one "
                             "of the fractions (default %(default)s)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--clean", action="store_true", help="redo every step even when current")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_plan``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        from sampref_bench.planners.pipeline import plan_dataset
        from sampref_bench.planners.plans import training_time_text
        from sampref_bench.utilities.atomic import load_json

        outcome = plan_dataset(args.dataset, image_size=args.image_size, fractions=args.fractions,
                               thresholds=args.thresholds, dpo_labeled_fraction=args.dpo_labeled_fraction,
                               num_processes=args.num_processes, clean=args.clean, verify=args.verify)
        print(f"planned {outcome.folder}")
        print(f"  ran: {', '.join(outcome.ran) or 'nothing'}; current: {', '.join(outcome.skipped) or 'nothing'}")
        plans = load_json(outcome.plans_file)
        schedule = training_time_text(plans["epochs"], plans["iterations_per_epoch"], plans["batch_size"])
        print(f"  every training run, at every fraction: {schedule}")
        print(f"  fractions {', '.join(map(str, plans['fractions']))}; DPO possible at "
              f"{', '.join(map(str, plans['dpo_fractions'])) or 'none'}")
        return 0

    return run_cli(body, "sampref_plan")


if __name__ == "__main__":
    sys.exit(main())
