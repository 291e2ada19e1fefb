"""``sampref_predict``: predict new images or volumes with the fold ensemble of a finished run."""

from __future__ import annotations

import argparse
import json
import sys
import time

from sampref_bench.cli.common import run_cli
from sampref_bench.utilities.errors import SamprefError

EPILOG = """\
examples:
  sampref_predict -d 003 -t DPORanking --fraction 0.2 -i new_images/ -o predictions/
  sampref_predict -d 003 -t UNet --fraction 0.1 -f 0 -i imagesTs/ -o pred_unet/ --device cuda
  sampref_predict -d 003 -t SAMNoPrompt -f all -i imagesTs/ -o pred/ --run-name fastlr --save-probabilities

INPUT holds one file per channel and case, named as in a raw dataset's imagesTs: {case}_0000{ext},
{case}_0001{ext} ... (PNG, NIfTI or any format SimpleITK reads). Each case is preprocessed exactly as the plan
preprocesses training images; prompts and image embeddings are computed from the image alone. The folds'
probabilities are averaged (SAM trainers: per label; U-Nets: softmax classes) and OUTPUT/{case}{ext} gets the mask
in the input's geometry (size, spacing, origin, direction) and format; --save-probabilities adds {case}.npz
(probabilities (C, *spatial) in the original geometry, labels (C,)). The runs are read from
$SAMPREF_results/DatasetXXX_Name/{Trainer}__{plans}__{configuration}__f{fraction}/fold_{k}/; --run-name selects a
tagged configuration (2d-NAME, or a tag after model choices such as 2d-tiny-NAME).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_predict``."""
    parser = argparse.ArgumentParser(prog="sampref_predict", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="3, 003 or Dataset003_BUSI")
    parser.add_argument("-t", "--trainer", required=True, help="trainer class name, e.g. DPORanking")
    parser.add_argument("--fraction", type=float, default=1.0, help="annotation fraction of the run (default 1.0)")
    parser.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to ensemble (default 0 1 2 3 4); 'all': every finished fold")
    parser.add_argument("-i", "--input", required=True, help="folder of {case}_XXXX{ext} channel files")
    parser.add_argument("-o", "--output", required=True, help="folder for the masks (not the input folder)")
    parser.add_argument("-c", "--configuration", default="2d",
                        help="planned configuration: 2d (frozen image encoder, the default), 2d_partial, 2d_lora, "
                             "2d_full (plans.json states each one's reason and CPU cost; old *-unfrozen names are "
                             "2d_full)")
    parser.add_argument("--run-name", default=None, metavar="NAME", help="the run's tag (--run-name of sampref_train)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--save-probabilities", action="store_true", help="also write {case}.npz probabilities")
    parser.add_argument("--trainer-module", action="append", default=[],
                        help="import this module or .py file first so its trainers register")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _folds(values: list[str], parser: argparse.ArgumentParser) -> list[int | str]:
    if [v.lower() for v in values] == ["all"]:
        return ["all"]
    try:
        return [int(v) for v in values]
    except ValueError:
        parser.error(f"-f takes fold numbers or 'all', got {' '.join(values)}")
    raise AssertionError  # parser.error exits


#: Folds of a plan whose splits_final.json cannot be read (sampref_plan writes five).
DEFAULT_FOLDS = 5


def planned_folds(dataset: str) -> tuple[int, str]:
    """The number of folds of ``dataset``'s plan and where it comes from: its ``splits_final.json`` (a list with
    one entry per fold) when readable, else :data:`DEFAULT_FOLDS`."""
    from sampref_bench import paths

    fallback = (DEFAULT_FOLDS, f"sampref_plan's {DEFAULT_FOLDS} folds; no readable splits_final.json for dataset "
                               f"{dataset}")
    try:
        splits = paths.preprocessed_dataset_dir(dataset) / "splits_final.json"
        folds = json.loads(splits.read_text(encoding="utf-8"))
    except (SamprefError, OSError, ValueError):
        return fallback
    return (len(folds), str(splits)) if isinstance(folds, list) and folds else fallback


def check_folds(folds: list[int | str], dataset: str) -> None:
    """A :class:`SamprefError` naming the valid folds when a fold number is outside the plan's folds."""
    numbers = [f for f in folds if isinstance(f, int)]
    if not numbers:
        return
    count, source = planned_folds(dataset)
    wrong = [f for f in dict.fromkeys(numbers) if not 0 <= f < count]
    if wrong:
        raise SamprefError(f"-f {' '.join(map(str, wrong))}: there is no such fold; the folds are 0 to {count - 1} "
                           f"({source}). Pass fold numbers among {' '.join(map(str, range(count)))}, or -f all for "
                           "every finished fold.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_predict``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    folds = _folds(args.folds, parser)

    def body() -> int:
        check_folds(folds, args.dataset)  # before any model, input or output folder is looked at
        from sampref_bench.prediction.ensemble import predict_folder
        from sampref_bench.trainers.registry import import_trainer_module

        for module in args.trainer_module:
            import_trainer_module(module)
        start = time.perf_counter()
        result = predict_folder(args.dataset, args.trainer, args.input, args.output, folds=folds,
                                fraction=args.fraction, configuration=args.configuration, run_name=args.run_name,
                                device=args.device, save_probabilities=args.save_probabilities,
                                progress=not args.no_progress)
        masks = [p for p in result.written if p.suffix != ".npz"]
        print(f"{len(masks)} case(s) predicted with {len(result.run_dirs)} fold(s) of {result.run_dirs[0].parent} "
              f"into {args.output} in {time.perf_counter() - start:.1f} s")
        return 0

    return run_cli(body, "sampref_predict")


if __name__ == "__main__":
    sys.exit(main())
