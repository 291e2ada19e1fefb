"""``sampref_candidates``: draw a DPO trainer's candidate masks as PNGs and write a preferences template for a
person to fill in."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from sampref_bench.cli.common import run_cli
from sampref_bench.utilities.errors import SamprefError

TEMPLATE_NAME = "preferences_template.json"
#: Options that belong to the training command this script prints, not to the candidates.
TRAINING_ONLY = ("annotator", "ratings_file")

EPILOG = """\
workflow (a lab's own judgements instead of the simulated annotator):
  1. generate: sampref_candidates -d 003 -t DPORanking -f 0 --fraction 0.2
     trains stage 1 if it is missing, computes the K candidate masks of every rated sample (case, slice,
     label) of that fold and fraction, and writes into OUTDIR (default: the run folder's candidates/):
       images/{case}_{slice}_l{label}_c{k}.png   the image with candidate k's outline (one per candidate)
       images/{case}_{slice}_l{label}_all.png    all K side by side, titled "candidate 0" .. "candidate K-1"
       preferences_template.json                 one entry per rated sample, ratings and ranking null
  2. fill in: per entry, look at its images and give EITHER
       "ratings": [3, 4, 2, 1]     one per candidate, 1 (bad) .. 4 (good), in candidate order, OR
       "ranking": [1, 0, [2, 3]]   candidate indices best to worst; a nested list is a tie
     and leave the other null. DPORating needs ratings; DPORanking and DPOBestOnly take either.
     Keep case, slice, label and candidates_sha as written.
  3. train: the command printed at the end, e.g.
       sampref_train 003 DPORanking 0 --fraction 0.2 --set annotator=file \\
           --set ratings_file=/path/to/preferences_template.json
     The run checks the file against its own candidates first and lists every problem at once (missing
     or unknown samples, values out of range, candidates that changed because stage 1 or a candidate
     setting changed: then generate a new template).

examples:
  sampref_candidates -d 003 -t DPORating -f 0 --fraction 0.2 -o ~/rating_session
  sampref_candidates -d 003 -t DPORanking -f 0 --fraction 0.2 --set candidates=jitter
  sampref_candidates -d 003 -t DPORanking -f 0 --fraction 0.2 --device cuda --no-overview

Pass the same --set options (candidates, thresholds, n_candidates, stage-1 settings ...) here and to
sampref_train: they decide the candidates, and a file made for other candidates is refused. A template that
already holds ratings or a ranking (someone's work) is never overwritten unless --force.
"""

INSTRUCTIONS = (
    "For each entry, look at its images (one PNG per candidate mask, in candidate order; the '_all' overview shows "
    "them side by side) and fill in EITHER 'ratings': one integer per candidate, 1 (bad) .. {scale} (good), in "
    "candidate order, e.g. [3, 4, 2, 1]; OR 'ranking': the candidate indices from best to worst, a nested list "
    "for candidates that tie, e.g. [1, 0, [2, 3]]. Leave the other one null. {trainer} {needs}. Do not change "
    "case, slice, label or candidates_sha. Then train with: {command}"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_candidates``."""
    parser = argparse.ArgumentParser(prog="sampref_candidates", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset: 3, 003 or Dataset003_BUSI")
    parser.add_argument("-t", "--trainer", required=True, help="DPO trainer: DPORanking, DPORating or DPOBestOnly")
    parser.add_argument("-f", "--fold", required=True, type=int, help="fold index, 0..4")
    parser.add_argument("--fraction", type=float, default=1.0, help="annotation fraction (planned; default 1.0)")
    parser.add_argument("-c", "--configuration", default="2d",
                        help="planned configuration: 2d (frozen image encoder, the default), 2d_partial, 2d_lora, "
                             "2d_full (plans.json states each one's reason and CPU cost; old *-unfrozen names are "
                             "2d_full)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any hyperparameter, value parsed as JSON (e.g. candidates=jitter); use the same ones "
                             "for sampref_train")
    parser.add_argument("--run-name", default=None, metavar="NAME",
                        help="run folder tag (the default OUTDIR lies in that run's folder; the printed training "
                             "command uses it too)")
    parser.add_argument("-o", "--output", default=None, metavar="OUTDIR",
                        help="where the PNGs and the template go (default: RUN_FOLDER/candidates)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--no-overview", action="store_true", help="no side-by-side overview PNG per sample")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a template that already holds ratings or rankings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def template_holds_work(path: Path) -> str | None:
    """Why the preferences file at ``path`` must not be overwritten (filled-in entries, or unreadable so that
    nobody can tell), or ``None`` when it is absent or blank."""
    from sampref_bench.utilities.atomic import load_json

    if not path.exists():
        return None
    try:
        content = load_json(path)
    except SamprefError as err:
        return f"it cannot be read ({err}), so it may hold someone's ratings"
    entries = content.get("entries") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        return "it is not a sampref preferences file, so it may hold someone's work"
    filled = [e for e in entries if not isinstance(e, dict) or e.get("ratings") is not None
              or e.get("ranking") is not None]
    if filled:
        return f"{len(filled)} of its {len(entries)} entries hold ratings or a ranking"
    return None


def refuse_overwrite(path: Path, force: bool) -> None:
    """Raise a :class:`SamprefError` when ``path`` holds a person's work and ``force`` is not given."""
    reason = None if force else template_holds_work(path)
    if reason:
        raise SamprefError(f"{path} already exists and {reason}. Train with it, move it away, or pass --force to "
                           "overwrite it with a blank template.")


def train_command(args: argparse.Namespace, template: Path) -> str:
    """The ``sampref_train`` command that trains ``args.trainer`` on the filled ``template``."""
    parts = ["sampref_train", args.dataset, args.trainer, str(args.fold), "--fraction", str(args.fraction)]
    if args.configuration != "2d":
        parts += ["-c", args.configuration]
    if args.device != "cpu":
        parts += ["--device", args.device]
    for item in args.overrides:
        parts += ["--set", item]
    parts += ["--set", "annotator=file", "--set", f"ratings_file={template.resolve()}"]
    if args.run_name:
        parts += ["--run-name", args.run_name]
    return shlex.join(parts)


def build_template(trainer: Any, entries: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The template's content: the top-level keys a DPO run writes into ``preferences.json``, the instructions
    and ``entries``."""
    from sampref_bench.trainers.dpo.annotators import FORMAT, SCALE

    needs = ("needs ratings (a ranking is refused)" if trainer.annotation_kind == "rating"
             else "takes ratings or rankings")
    return {
        "format": FORMAT, "dataset": trainer.dataset_name, "fold": trainer.fold, "fraction": trainer.fraction,
        "trainer": type(trainer).__name__, "scale": SCALE, "candidates": trainer.config["candidates"],
        "thresholds": list(trainer.thresholds),
        "instructions": INSTRUCTIONS.format(scale=SCALE, trainer=type(trainer).__name__, needs=needs,
                                            command=command),
        "train_command": command,
        "entries": entries,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_candidates``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        from tqdm import tqdm

        from sampref_bench.cli.train import _overrides
        from sampref_bench.evaluation.candidate_overlays import write_candidate_pngs
        from sampref_bench.trainers.dpo.annotators import preference_entry
        from sampref_bench.trainers.dpo.trainers import DPOTrainer
        from sampref_bench.trainers.registry import get_trainer
        from sampref_bench.utilities.atomic import write_json_atomic

        try:
            overrides = _overrides(args.overrides)
        except argparse.ArgumentTypeError as err:
            raise SamprefError(str(err)) from err
        given = sorted(set(overrides) & set(TRAINING_ONLY))
        if given:
            raise SamprefError(f"--set {', '.join(given)}: sampref_candidates writes the file a person fills in; "
                               "annotator=file and ratings_file go to the sampref_train command it prints")
        cls = get_trainer(args.trainer)
        if not issubclass(cls, DPOTrainer):
            raise SamprefError(f"{args.trainer} is not a DPO trainer (it judges no candidates); use DPORanking, "
                               "DPORating or DPOBestOnly")
        trainer = cls(args.dataset, args.fold, args.fraction, configuration=args.configuration, device=args.device,
                      overrides=overrides, progress=not args.no_progress, run_name=args.run_name)
        folder = Path(args.output).expanduser() if args.output else trainer.output_dir / "candidates"
        template = folder / TEMPLATE_NAME
        refuse_overwrite(template, args.force)  # before the (long) stage 1 and candidates

        trainer.annotate = False
        trainer.initialize()
        names = {int(value): name for name, value in trainer.plans["labels"].items()}
        images = folder / "images"
        entries = []
        for sample, cands, _ in tqdm(trainer.candidate_sets, desc="candidate PNGs", disable=args.no_progress):
            masks = cands.numpy().astype(bool)
            image = trainer.data.rgb(sample.case, [sample.slice])[0].transpose(1, 2, 0)
            stem = f"{sample.case}_{sample.slice:04d}_l{sample.label}"
            title = f"{sample.case} slice {sample.slice} label {names.get(sample.label, sample.label)}"
            pngs, overview = write_candidate_pngs(images, stem, image, masks, title, overview=not args.no_overview)
            entry = preference_entry(sample, masks, None, images=[p.relative_to(folder).as_posix() for p in pngs])
            if overview is not None:
                entry["overview"] = overview.relative_to(folder).as_posix()
            entries.append(entry)

        command = train_command(args, template)
        refuse_overwrite(template, args.force)  # someone may have started filling it in meanwhile
        write_json_atomic(template, build_template(trainer, entries, command))
        k = len(entries[0]["images"]) if entries else 0
        print(f"{len(entries)} rated sample(s) x {k} candidate(s): PNGs in {images}\n"
              f"template: {template}\n"
              "fill in ratings (1 bad .. 4 good per candidate) or a ranking (best to worst) per entry, then train:\n"
              f"  {command}")
        return 0

    return run_cli(body, "sampref_candidates")


if __name__ == "__main__":
    sys.exit(main())
