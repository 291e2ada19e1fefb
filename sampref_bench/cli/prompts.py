"""``sampref_prompts``: compute a dataset's unsupervised prompts into the cache and report their quality."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sampref_bench.cli.common import run_cli

EPILOG = """\
examples:
  sampref_prompts -d 003 --fold 0                         # every source, every case; report on fold 0's train cases
  sampref_prompts -d 003                                  # report on every case: a description, not for choosing
  sampref_prompts -d 003 --sources saliency               # boxes and points only
  sampref_prompts -d 003 --saliency biomedclip --clip-path ~/weights/BiomedCLIP
  OPENAI_API_KEY=... sampref_prompts -d 003 --sources llm  # ask the chat endpoint once, then cached

Prompts come from the image and each label's target_text (dataset.json), never from a label, so every case is
prompted, labeled or not. Sources:
  saliency  a saliency map (weights-free dark-basin depth by default; BiomedCLIP + gScoreCAM with weights),
            refined by a dense CRF; its largest component gives the box and interior points (with 2+ labels a
            training run picks each label's own component by its labeled cases, component_choice=label_prior;
            the candidate components are cached here, the report scores the largest)
  vqa       answers about the target's side, quadrant, size, shape and number of regions (from the saliency
            mask, or MedVInT with --vqa medvint and its weights)
  llm       a generic description of each target from an OpenAI-compatible endpoint (OPENAI_API_KEY,
            OPENAI_BASE_URL; temperature 0); without a key, dataset.json's target_text
Results are cached under $SAMPREF_preprocessed/DatasetXXX_Name/prompts/, keyed by the source, its settings and
weights and the preprocessed image (not by fractions or folds); trainers read the same cache and compute what
is missing. The quality report (prompt_quality.json, or prompt_quality_fold{K}.json with --fold K, and overlay
PNGs beside the prompts) compares the boxes with the ground truth of labeled cases: box IoU, box centre inside
the target, empty saliency. It states which cases it scored.

Choosing settings: prompt settings (--saliency, --points, ...) are chosen from training-case reports only.
--fold K scores only fold K's training cases (splits_final.json), so a setting chosen from that report has not
seen fold K's validation cases (the other folds' validation cases are among fold K's training cases: compare a
setting chosen on fold K on fold K's validation). Without --fold every case is scored, every fold's validation
cases included; that report describes the prompts and is not for choosing them.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_prompts``."""
    parser = argparse.ArgumentParser(prog="sampref_prompts", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset: 3, 003 or Dataset003_BUSI")
    parser.add_argument("--sources", nargs="+", default=["saliency", "vqa", "llm"],
                        choices=["saliency", "vqa", "llm"], help="which prompt sources to compute (default all)")
    parser.add_argument("--saliency", default=None, help="saliency source (default: the plan's, e.g. dark-basin; "
                        "others: bright-dome, basin-dome, biomedclip)")
    parser.add_argument("--vqa", default=None, choices=["mask", "medvint"], help="VQA backend (default: the plan's)")
    parser.add_argument("--points", type=int, default=None, help="interior points per box (default: the plan's)")
    parser.add_argument("--llm-model", default=None, help="chat model for the LLM text (default: the plan's)")
    parser.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint (else $OPENAI_BASE_URL)")
    parser.add_argument("--topk", type=int, default=None, help="gScoreCAM channels kept (default: the plan's, 300)")
    parser.add_argument("--layer", default=None, help="gScoreCAM target layer inside the visual tower (default: last "
                        "block)")
    parser.add_argument("--clip-path", default=None, help="local BiomedCLIP folder (else $SAMPREF_BIOMEDCLIP)")
    parser.add_argument("--medvint-path", default=None, help="local MedVInT folder (else $SAMPREF_MEDVINT)")
    parser.add_argument("--fold", type=int, default=None, metavar="K",
                        help="score only fold K's training cases (splits_final.json) in the report; settings are "
                        "chosen from training-case reports only (default: every case, for description)")
    parser.add_argument("--overlays", type=int, default=6, help="overlay PNGs in the report (default 6)")
    parser.add_argument("--no-report", action="store_true", help="skip the prompt-quality report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_prompts``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        from tqdm import tqdm

        from sampref_bench.evaluation.prompt_quality import summary_text, write_quality_report
        from sampref_bench.planners.data import inference_samples
        from sampref_bench.trainers.sam.prompted import dataset_prompt_store

        overrides = {"saliency": args.saliency, "vqa": args.vqa, "points": args.points, "llm_model": args.llm_model,
                     "llm_base_url": args.llm_base_url, "gscorecam_topk": args.topk, "gscorecam_layer": args.layer}
        store, cases = dataset_prompt_store(args.dataset, overrides, args.clip_path, args.medvint_path)
        report = not args.no_report and "saliency" in args.sources
        fold_train = fold_training_cases(store, args.fold) if args.fold is not None else None
        labels = sorted(store.label_names)
        per_case = {case: [(s.case, s.slice, s.label) for s in inference_samples(store.data, case, labels)]
                    for case in cases}
        triples = [t for case in cases for t in per_case[case]]
        missing = missing_prompts(store, triples, args.sources)
        for case in tqdm(cases, desc=f"prompts ({store.settings['saliency']})", unit="case",
                         disable=args.no_progress or not any(missing.values())):
            store.ensure(per_case[case], args.sources, progress=False)
        print(count_line(store, len(triples), len(cases), missing), flush=True)
        if "llm" in args.sources:
            for value in labels:
                answer = store.llm(value)
                print(f"LLM text of {store.label_names[value]!r} ({answer['source']}): {answer['text']}")
        if not report:
            return 0
        labeled = [c for c in cases if store.data.meta(c).get("has_label", True)]
        scored = labeled if fold_train is None else [c for c in labeled if c in fold_train]
        path, quality = write_quality_report(store, store.data.label_store(scored, "the prompt-quality report"),
                                             scored, labels, n_overlays=args.overlays,
                                             progress=not args.no_progress, fold=args.fold)
        print(summary_text(quality))
        print(f"report: {path}")
        return 0

    return run_cli(body, "sampref_prompts")


def fold_training_cases(store: Any, fold: int) -> set[str]:
    """The training cases of ``fold`` in the dataset's ``splits_final.json`` (a clear error for an unknown fold)."""
    from sampref_bench.planners.pipeline import load_splits
    from sampref_bench.planners.splits import SPLITS_FILE
    from sampref_bench.utilities.errors import SamprefError

    preprocessed = Path(store.data.data_dir).parent
    folds = load_splits(preprocessed)
    if not 0 <= fold < len(folds):
        raise SamprefError(f"--fold {fold}: {preprocessed / SPLITS_FILE} has folds 0..{len(folds) - 1}; "
                           f"choose one of them")
    return set(folds[fold]["train"])


def missing_prompts(store: Any, triples: list[tuple[str, int, int]], sources: list[str]) -> dict[str, int]:
    """How many of ``triples`` lack a cached box prompt and VQA answer (the files ``store.ensure`` will write):
    ``{"box prompts": n, "VQA answers": n}``, a key only for what ``sources`` compute (VQA needs the box prompt's
    mask, so ``vqa`` alone computes box prompts too)."""
    out = {}
    if {"saliency", "vqa"} & set(sources):
        out["box prompts"] = sum(not store.visual_path(*t).is_file() for t in triples)
    if "vqa" in sources:
        out["VQA answers"] = sum(not store.vqa_path(*t).is_file() for t in triples)
    return out


def count_line(store: Any, n_triples: int, n_cases: int, missing: dict[str, int]) -> str:
    """``prompt cache ROOT: N (case, slice, label) prompts of C cases; box prompts: a computed, b read from the
    cache; ...``: each kind of file counted against the same N."""
    parts = [f"{kind}: {new} computed, {n_triples - new} read from the cache" for kind, new in missing.items()]
    return "; ".join([f"prompt cache {store.root}: {n_triples} (case, slice, label) prompts of {n_cases} cases",
                      *parts])


if __name__ == "__main__":
    sys.exit(main())
