"""``sampref_prompts``: compute a dataset's unsupervised prompts into the cache and report their quality."""

from __future__ import annotations

import argparse
import sys

from sampref_bench.cli.common import run_cli

EPILOG = """\
examples:
  sampref_prompts -d 003                                  # every source, every case, then the quality report
  sampref_prompts -d 003 --sources saliency               # boxes and points only
  sampref_prompts -d 003 --saliency biomedclip --clip-path ~/weights/BiomedCLIP
  OPENAI_API_KEY=... sampref_prompts -d 003 --sources llm  # ask the chat endpoint once, then cached

Prompts come from the image and each label's target_text (dataset.json), never from a label, so every case is
prompted, labeled or not. Sources:
  saliency  a saliency map (weights-free dark-basin depth by default; BiomedCLIP + gScoreCAM with weights),
            refined by a dense CRF; its largest component gives the box and interior points
  vqa       answers about the target's side, quadrant, size, shape and number of regions (from the saliency
            mask, or MedVInT with --vqa medvint and its weights)
  llm       a generic description of each target from an OpenAI-compatible endpoint (OPENAI_API_KEY,
            OPENAI_BASE_URL; temperature 0); without a key, dataset.json's target_text
Results are cached under $SAMPREF_preprocessed/DatasetXXX_Name/prompts/, keyed by the source, its settings and
weights and the preprocessed image (not by fractions or folds); trainers read the same cache and compute what
is missing. The quality report (prompt_quality.json and overlay PNGs beside the prompts) compares the boxes
with the ground truth of the labeled cases: box IoU, box centre inside the target, empty saliency.
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
    parser.add_argument("--overlays", type=int, default=6, help="overlay PNGs in the report (default 6)")
    parser.add_argument("--no-report", action="store_true", help="skip the prompt-quality report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_prompts``."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        from sampref_bench.evaluation.prompt_quality import summary_text, write_quality_report
        from sampref_bench.trainers.data import inference_samples
        from sampref_bench.trainers.prompt_trainers import dataset_prompt_store

        overrides = {"saliency": args.saliency, "vqa": args.vqa, "points": args.points, "llm_model": args.llm_model,
                     "llm_base_url": args.llm_base_url, "gscorecam_topk": args.topk, "gscorecam_layer": args.layer}
        store, cases = dataset_prompt_store(args.dataset, overrides, args.clip_path, args.medvint_path)
        labels = sorted(store.label_names)
        triples = [(s.case, s.slice, s.label) for case in cases for s in inference_samples(store.data, case, labels)]
        store.ensure(triples, args.sources, progress=not args.no_progress)
        if "llm" in args.sources:
            for value in labels:
                answer = store.llm(value)
                print(f"LLM text of {store.label_names[value]!r} ({answer['source']}): {answer['text']}")
        if args.no_report or "saliency" not in args.sources:
            return 0
        labeled = [c for c in cases if store.data.meta(c).get("has_label", True)]
        path, report = write_quality_report(store, store.data.label_store(labeled, "the prompt-quality report"),
                                            labeled, labels, n_overlays=args.overlays,
                                            progress=not args.no_progress)
        print(summary_text(report))
        print(f"report: {path}")
        return 0

    return run_cli(body, "sampref_prompts")


if __name__ == "__main__":
    sys.exit(main())
