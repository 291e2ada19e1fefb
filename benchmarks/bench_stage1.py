"""Stage-1 SAM settings on the full BUSI set against the U-Net: which prompts (and, later, which encoder
configuration and augmentation) close the gap to ``UNet`` at the same labeled budget.

Trains, on fold 0 at the given fractions, the listed SAM trainers with their planned schedule (LiteMedSAM, frozen
image encoder: the CPU-feasible configuration ``2d``) and reports their validation Dice beside the planned-schedule
``UNet`` of the same fold and fraction, read from ``benchmarks/results/ssl_busi_planned_cpu_unet.json`` (the CPU
run of ``bench_ssl_busi --schedule planned``) when it is there, with the paired difference per case.

This first version measures prompt sources with the default configuration: ``SAMSelfPrompt`` (learned prompts
from the labeled budget), ``SAMBaseline`` (weights-free saliency), and the bounds ``SAMNoPrompt`` and
``SAMBoxOracle``. The encoder configurations and augmentation of the stage-1 issue add rows here as they land.
Validation cases are the fold's test set: nothing here chooses a default on them.

Usage: .venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 [--fractions 0.1] [--trainers ...]
       [--no-plan] [--json PATH]
Writes benchmarks/results/stage1_busi.json (raw) and benchmarks/results/stage1_busi.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import wilcoxon

from benchmarks.bench_prompts import prepare, train
from benchmarks.report import REPO, RESULTS, markdown_table, set_roots, write_markdown
from sampref_bench.utilities.atomic import write_json_atomic

#: ``SAMBaseline`` is its default (the learned box since the inner split chose it); ``box_source=saliency`` its
#: weights-free saliency box, the default before.
TRAINERS = ["SAMSelfPrompt", "SAMBaseline", "SAMBaseline:box_source=saliency", "SAMNoPrompt", "SAMBoxOracle"]
#: The commands behind the committed table (stated in it).
COMMANDS = [
    "cd <a checkout of the commit> && .venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --inner "
    "--fractions 0.2 --trainers SAMBaseline:epochs=45 --inner-json /tmp/st1/stage1_busi_inner.json "
    "(plan format 4, 15 planned epochs: hence the explicit 45)",
    ".venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --inner --fractions 0.2 --trainers "
    "SAMBaseline:box_source=learned --inner-json /tmp/st1/stage1_busi_inner.json (stopped after 15 of 45 epochs)",
    ".venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --no-plan --fractions 0.1 --trainers SAMSelfPrompt "
    "--json /tmp/st1/stage1_busi.json",
    ".venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --no-plan --fractions 0.1 --trainers "
    "SAMBaseline:box_source=learned --json /tmp/st1/stage1_busi.json",
    "(2026-12-04, at commit 3429161) .venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --inner "
    "--fractions 0.2 --trainers UNet SAMBaseline:box_source=run:UNet,epochs=15 "
    "SAMBaseline:box_source=learned,epochs=15 "
    "SAMBaseline:box_source=learned,augment_views=3,epochs=15 --inner-json benchmarks/results/stage1_busi_inner.json",
    "(2026-12-04, at commit 3429161) .venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --no-plan "
    "--fractions 0.2 --trainers SAMSelfPrompt --json /tmp/st1/stage1_busi_outer02.json (committed as "
    "benchmarks/results/stage1_busi.json)",
    ".venv/bin/python -m benchmarks.bench_stage1 --workdir /tmp/st1 --report-only --inner-json "
    "benchmarks/results/stage1_busi_inner.json",
]
UNET_JSON = RESULTS / "ssl_busi_planned_cpu_unet.json"
#: Mean validation Dice of the planned-schedule UNet of fold 0 by fraction, from benchmarks/results/ssl_busi.md
#: (its CPU row), used when the per-case JSON of that run is not on this machine (the difference is then unpaired).
UNET_MEAN = {0.1: 0.6087}
#: Rows of the previous schedule (15 epochs, plan format 4), measured 2026-12-02 on this machine type with the same
#: code path for these trainers; kept in the table for comparison (their per-case JSON is not in the repository).
PREVIOUS_ROWS = [
    ["SAMSelfPrompt (15 epochs)", "0.1", "0.5395", "-0.0692 (p 0.2)", "69.2 % / 0.428 / 0.8 %", "260.7", "52"],
    ["SAMBaseline (15 epochs)", "0.1", "0.5075", "-0.1011 (p 0.0017)", "57.7 % / 0.136 / 0.0 %", "908.6", "52"],
    ["SAMBaseline:box_source=learned (15 epochs)", "0.1", "0.5379", "-0.0708 (p 0.18)", "70.0 % / 0.427 / 0.8 %",
     "268.1", "52"],
    ["SAMBaseline:box_source=run:UNet (15 epochs)", "0.1", "0.6682", "+0.0595 (p 7.7e-10)",
     "80.8 % / 0.553 / 0.0 %", "257.1", "52"],
    ["SAMNoPrompt (15 epochs)", "0.1", "0.4745", "-0.1342 (p 4.6e-07)", "-", "237.9", "52"],
    ["SAMBoxOracle [oracle] (15 epochs)", "0.1", "0.9127", "+0.3041 (p 8.3e-23)", "-", "652.0", "52"],
]
#: Outer rows of the 45-epoch plan measured 2026-12-03 whose per-case JSON did not survive the machine (label,
#: fraction) -> (table row, mean Dice); a row in --json replaces its recorded one.
RECORDED_ROWS = {
    ("SAMSelfPrompt", 0.1): (["SAMSelfPrompt", "0.1", "0.5427", "-0.0660 (unpaired, vs 0.6087)",
                              "70.0 % / 0.431 / 0.0 %", "3616.6", "52"], 0.5427),
    ("SAMBaseline:box_source=learned", 0.1): (["SAMBaseline:box_source=learned", "0.1", "0.5527",
                                               "-0.0560 (unpaired, vs 0.6087)", "69.2 % / 0.431 / 0.0 %", "3453.3",
                                               "52"], 0.5527),
}
#: Inner rows measured 2026-12-03 (plan format 5), kept as recorded (their JSON did not survive): label -> row.
RECORDED_INNER_ROWS = {
    "SAMBaseline:box_source=learned": ["SAMBaseline:box_source=learned (2026-12-03)", "0.2",
                                       "- (stopped after 15 epochs)", "0.5742", "-", "-", "-", "1345.2", "83"],
    "SAMBaseline:epochs=45": ["SAMBaseline:epochs=45 (saliency box, 2026-12-03)", "0.2", "0.5275", "0.5067",
                              "0.5293", "0.5346", "51.9 % / 0.064", "2502.5", "83"],
}
#: The row label of each trainer's chosen default: SAMBaseline's prompt source chosen on the inner split is the
#: learned head (``box_source=learned``), configuration 2d, no views; SAMSelfPrompt keeps its defaults.
DEFAULT_LABELS = {"SAMBaseline": "SAMBaseline:box_source=learned", "SAMSelfPrompt": "SAMSelfPrompt"}


def unet_reference(fraction: float) -> dict[str, float] | None:
    """Per-case Dice of the planned-schedule UNet of fold 0 at ``fraction``: the finished run in this workdir
    (default configuration), else the SSL benchmark's record, if there is one."""

    from benchmarks.bench_prompts import case_dice
    from sampref_bench.planners.plans import fraction_key

    local = (Path(os.environ.get("SAMPREF_results", "")) / "Dataset003_BUSI"
             / f"UNet__samprefPlans__2d__f{fraction_key(fraction)}" / "fold_0" / "validation" / "summary.json")
    if os.environ.get("SAMPREF_results") and local.is_file():
        return case_dice(json.loads(local.read_text()))
    if not UNET_JSON.is_file():
        return None
    for run in json.loads(UNET_JSON.read_text()).get("runs", []):
        same = abs(float(run.get("fraction", -1)) - fraction) < 1e-9
        if run.get("trainer") == "UNet" and run.get("fold") == 0 and same:
            return {k: float(v) for k, v in run["dice"].items()}
    return None


def parse_spec(spec: str) -> tuple[str, dict[str, Any], str]:
    """``NAME[@CONFIGURATION][:key=value,key=value]`` -> (trainer, overrides, row label); values parsed as JSON,
    the configuration (default ``2d``) passed as the override ``_configuration``."""
    name, _, rest = spec.partition(":")
    name, _, configuration = name.partition("@")
    overrides: dict[str, Any] = {"_configuration": configuration} if configuration else {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides, spec


def _boxes_of(trainer: Any, chunk: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The inference boxes of a finished run's prompt source and whether it found one: the learned head, the
    cascade's U-Net, or the saliency cache; None for a trainer without box prompts from a source."""
    if getattr(trainer, "cascaded", False):
        boxes, _, found = trainer.cascade.prompts(chunk)
        return boxes, found
    if hasattr(trainer, "coarse_prompts") and getattr(trainer, "learned", True):
        prompts, found = trainer.coarse_prompts(trainer.head_logits(chunk, trainer.embeddings(chunk)))
        return prompts["boxes"].cpu().numpy(), found
    if getattr(trainer, "uses_box", False):
        boxes = np.stack([box for box, _ in trainer.saliency_boxes(chunk)])  # the label's own region where chosen
        return boxes, np.ones(len(chunk), bool)
    return None


@torch.no_grad()
def box_quality(run_dir: Path, device: str = "cpu") -> dict[str, float] | None:
    """For a finished run with box prompts from a source (learned head, cascade, saliency): on its validation
    slices that hold the label, the share whose box centre lies inside the lesion, the median IoU of the box with
    the lesion's box, and the share without a box (scoring only; nothing is chosen on these cases)."""
    from sampref_bench.planners.data import labeled_samples
    from sampref_bench.trainers.registry import load_trained_run
    from sampref_bench.trainers.sam.trainer import boxes_from_masks

    trainer = load_trained_run(run_dir, device=device)
    store = trainer.data.label_store(trainer.roles.val, "scoring the learned boxes")
    samples = labeled_samples(store, trainer.roles.val, trainer.labels, 0.0, require_present=True)
    inside, ious, missed = [], [], []
    for start in range(0, len(samples), 16):
        chunk = samples[start:start + 16]
        made = _boxes_of(trainer, chunk)
        if made is None:
            return None
        boxes, found = made
        masks = np.stack([store.mask(s) for s in chunk])
        truth = boxes_from_masks(torch.from_numpy(masks)).numpy()
        for box, gt, mask, hit in zip(boxes, truth, masks, found):
            missed.append(not hit)
            if not hit:
                inside.append(False)
                ious.append(0.0)
                continue
            cx, cy = int(round((box[0] + box[2]) / 2)), int(round((box[1] + box[3]) / 2))
            inside.append(bool(mask[min(cy, mask.shape[0] - 1), min(cx, mask.shape[1] - 1)]))
            w = max(0.0, min(box[2], gt[2]) - max(box[0], gt[0]) + 1)
            h = max(0.0, min(box[3], gt[3]) - max(box[1], gt[1]) + 1)
            union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - w * h
            ious.append(float(w * h / union))
    return {"centre_inside": float(np.mean(inside)), "median_box_iou": float(np.median(ious)),
            "no_box": float(np.mean(missed)), "slices": len(samples)}


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows: trainer, fraction, Dice, difference to UNet (paired, Wilcoxon p), train seconds."""
    out = []
    for result in results:
        dice = result["dice"]
        mean = float(np.mean(list(dice.values())))
        unet = unet_reference(result["fraction"])
        gap = "-"
        if unet is None and result["fraction"] in UNET_MEAN:
            gap = f"{mean - UNET_MEAN[result['fraction']]:+.4f} (unpaired, vs {UNET_MEAN[result['fraction']]})"
        if unet is not None:
            cases = sorted(set(dice) & set(unet))
            diff = np.array([dice[c] - unet[c] for c in cases])
            p = wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
            gap = f"{diff.mean():+.4f} (p {p:.2g}, {len(cases)} cases)"
        quality = result.get("box_quality")
        boxes = (f"{100 * quality['centre_inside']:.1f} % / {quality['median_box_iou']:.3f} / "
                 f"{100 * quality['no_box']:.1f} %" if quality else "-")
        out.append([result.get("label", result["trainer"]) + (" [oracle]" if result["oracle"] else ""),
                    str(result["fraction"]), f"{mean:.4f}", gap, boxes, str(result["train_s"]),
                    str(result["n_labeled"])])
    return out


#: Dataset ID of the inner split of fold 0's training cases (:mod:`benchmarks.inner_split`).
INNER_ID = 903


def run_inner(workdir: Path, fractions: list[float], specs: list[str], json_path: Path, device: str = "cpu") -> None:
    """Train each spec on inner fold 0 of dataset :data:`INNER_ID` and record its per-case Dice, its per-epoch
    validation Dice (the inner validation subset) and its box quality, in ``json_path``."""
    import csv

    from benchmarks.bench_prompts import train

    previous = json.loads(json_path.read_text())["runs"] if json_path.is_file() else []
    results = {(r["label"], r["fraction"]): r for r in previous}
    for fraction in fractions:
        for spec in specs:
            name, overrides, label = parse_spec(spec)
            result = {**train(name, 0, fraction, overrides, dataset=INNER_ID, device=device), "fraction": fraction,
                      "label": label}
            run_dir = workdir / "results" / "Dataset903_BUSIinner" / result["run"]
            log = run_dir / "training_log.csv"
            result["val_dice_per_epoch"] = ([float(row.get("val_dice") or "nan") for row in csv.DictReader(log.open())]
                                            if log.is_file() else [])
            result["box_quality"] = box_quality(run_dir, device)
            results[(label, fraction)] = result
            write_json_atomic(json_path, {"runs": list(results.values())})
            print(f"inner {label}@{fraction}: Dice {np.mean(list(result['dice'].values())):.4f}, "
                  f"{result['train_s']} s, boxes {result['box_quality']}", flush=True)


#: Candidate planned lengths (stage-1 epochs at the planned 10 iterations of 8 slices): the plan's 15, and two and
#: three times it. The lr halves every 10 epochs whatever the length, so epoch E of a longer run is the end of an
#: E-epoch run, and one long run's per-epoch validation curve scores every candidate.
EPOCH_CANDIDATES = (15, 30, 45)
#: A candidate length "converges" when its smoothed per-epoch inner Dice is within this of the curve's best.
CONVERGED_WITHIN = 0.005


def smoothed(curve: list[float], epoch: int, width: int = 3) -> float:
    """Mean per-epoch validation Dice over epochs ``epoch - width + 1 .. epoch`` (1-based) of ``curve``."""
    values = [v for v in curve[max(0, epoch - width):epoch] if v == v]
    return float(np.mean(values)) if values else float("nan")


def choose_epochs(curve: list[float]) -> tuple[int | None, str]:
    """The shortest of :data:`EPOCH_CANDIDATES` whose smoothed Dice is within :data:`CONVERGED_WITHIN` of the best
    smoothed value of the curve (None when the curve is shorter than the longest candidate), and why."""
    if len(curve) < max(EPOCH_CANDIDATES):
        return None, f"the curve has {len(curve)} of {max(EPOCH_CANDIDATES)} epochs"
    best = max(smoothed(curve, e) for e in range(3, len(curve) + 1))
    for epochs in EPOCH_CANDIDATES:
        value = smoothed(curve, epochs)
        if value >= best - CONVERGED_WITHIN:
            return epochs, (f"smoothed inner Dice {value:.4f} at epoch {epochs}, best {best:.4f} "
                            f"(within {CONVERGED_WITHIN})")
    return max(EPOCH_CANDIDATES), f"no candidate within {CONVERGED_WITHIN} of the best {best:.4f}"


def inner_section(path: Path) -> list[str]:
    """Markdown lines of the inner-split runs (where defaults are chosen): per run its final inner Dice, its
    per-epoch inner Dice at every candidate length, and its box quality; then the chosen length."""
    if not path.is_file():
        return []
    runs = json.loads(path.read_text())["runs"]
    rows = [row for label, row in RECORDED_INNER_ROWS.items() if not any(r["label"] == label for r in runs)]
    for run in sorted(runs, key=lambda r: (r["fraction"], r["label"])):
        curve = run.get("val_dice_per_epoch", [])
        quality = run.get("box_quality")
        boxes = (f"{100 * quality['centre_inside']:.1f} % / {quality['median_box_iou']:.3f}" if quality else "-")
        final = (f"{np.mean(list(run['dice'].values())):.4f}" if run.get("dice") else
                 f"- (stopped after {run.get('stopped_after')} epochs)")
        rows.append([run["label"], str(run["fraction"]), final,
                     *[f"{smoothed(curve, e):.4f}" if len(curve) >= e else "-" for e in EPOCH_CANDIDATES],
                     boxes, str(run["train_s"]), str(run["n_labeled"])])
    table = markdown_table(["run (inner fold 0)", "fraction", "final Dice (inner val cases)",
                            *[f"epoch-{e} inner Dice (per-epoch subset, 3-epoch mean)" for e in EPOCH_CANDIDATES],
                            "boxes: centre inside / median IoU", "train s", "labeled cases"], rows)
    lines = ["", "## Inner split: where the defaults are chosen", "",
             "Dataset 903 holds fold 0's 517 training cases only (`benchmarks/inner_split.py`); its own fold 0 splits "
             "them 413/104, and its fractions label the first cases of its own permutation (0.1: 42 cases, 0.2: 83). "
             "Nothing below reads a validation case of the outer fold 0. 'final Dice' is the run's final validation "
             "on the 104 inner validation cases; the epoch columns are its per-epoch pseudo Dice on the fixed "
             "64-sample validation subset, averaged over the three epochs ending there.", "", table]
    for run in runs:
        if run["trainer"] == "SAMBaseline" and run["label"].endswith(":epochs=45"):
            chosen, why = choose_epochs(run.get("val_dice_per_epoch", []))
            lines += ["", f"Length from `{run['label']}` at {run['fraction']}: {chosen} epochs ({why})."]
    lines += source_choice(runs)
    lines += inner_choices(runs)
    return lines


def _final(runs: list[dict[str, Any]], label: str) -> float | None:
    run = next((r for r in runs if r["label"] == label and r["fraction"] == 0.2 and r.get("dice")), None)
    return float(np.mean(list(run["dice"].values()))) if run else None


def inner_choices(runs: list[dict[str, Any]]) -> list[str]:
    """The 15-epoch comparisons at 0.2 on the inner split: augmented views and the cascade against the learned box
    (final Dice on the 104 inner validation cases, and the per-epoch subset's 3-epoch mean at epoch 15)."""
    learned = "SAMBaseline:box_source=learned,epochs=15"
    base = _final(runs, learned)
    curve = {r["label"]: r.get("val_dice_per_epoch", []) for r in runs}
    out = []
    for label, what in (("SAMBaseline:box_source=learned,augment_views=3,epochs=15", "3 augmented views"),
                        ("SAMBaseline:box_source=run:UNet,epochs=15", "the cascade box (finished UNet run)")):
        other = _final(runs, label)
        if base is None or other is None:
            continue
        sub = (f", per-epoch subset {smoothed(curve[label], 15):.4f} vs {smoothed(curve[learned], 15):.4f}"
               if "run:UNet" not in label else "")
        out.append(f"- {what}: final inner Dice {other:.4f} vs {base:.4f} for the learned box without views "
                   f"({other - base:+.4f}){sub}.")
    unet = _final(runs, "UNet")
    if unet is not None:
        out.append(f"- the inner UNet@0.2 itself (planned 50 x 50 schedule, the cascade's source): {unet:.4f}.")
    return ["", "15-epoch comparisons at 0.2 (the learned-box curve plateaus by epoch 6-9; `epochs=15` runs equal "
            "the first 15 epochs of a 45-epoch run, whose lr also halves every 10 epochs: the stopped 45-epoch "
            "views run and the `epochs=15` one have the same per-epoch curve):", "", *out] if out else []


def source_choice(runs: list[dict[str, Any]]) -> list[str]:
    """The prompt-source choice of ``SAMBaseline`` on the inner split at 0.2: saliency against the learned head, at
    the longest length both curves reach, beside the saliency curve's best over its whole length."""
    by_label = {(r["label"], r["fraction"]): r for r in runs}
    saliency = by_label.get(("SAMBaseline:epochs=45", 0.2))
    learned = by_label.get(("SAMBaseline:box_source=learned", 0.2))
    if saliency is None or learned is None:  # the 2026-12-03 runs, as recorded then
        return ["", "Length from `SAMBaseline:epochs=45` at 0.2 (2026-12-03): 45 epochs (smoothed inner Dice 0.5346 "
                "at epoch 45, best 0.5346 (within 0.005)).", "",
                "Prompt source of SAMBaseline, inner split at 0.2 (2026-12-03): after 15 epochs the learned head's "
                "box gives 0.5742 and the saliency box 0.5067 (3-epoch means); the learned curve is above the "
                "saliency one at 14 of epochs 2..15, and the saliency curve's best over all 45 epochs is 0.5346. "
                "Chosen: **learned** (reproduced 2026-12-04: `SAMBaseline:box_source=learned,epochs=15` has the same "
                "0.5742 at epoch 15)."]
    a, b = saliency["val_dice_per_epoch"], learned["val_dice_per_epoch"]
    common = min(len(a), len(b))
    best = max(smoothed(a, e) for e in range(3, len(a) + 1))
    ahead = sum(y > x for x, y in zip(a[1:common], b[1:common]))
    winner = "learned" if smoothed(b, common) > smoothed(a, common) else "saliency"
    return ["", f"Prompt source of SAMBaseline, inner split at 0.2: after {common} epochs the learned head's box gives "
            f"{smoothed(b, common):.4f} and the saliency box {smoothed(a, common):.4f} (3-epoch means); the learned "
            f"curve is above the saliency one at {ahead} of epochs 2..{common}, and the saliency curve's best over "
            f"all {len(a)} epochs is {best:.4f}. Chosen: **{winner}**."]


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets" / "BUSI")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sampref_bench_stage1"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1])
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--no-plan", action="store_true", help="the workdir is converted and planned already")
    parser.add_argument("--json", type=Path, default=RESULTS / "stage1_busi.json")
    parser.add_argument("--report-only", action="store_true", help="rewrite stage1_busi.md from the JSON")
    parser.add_argument("--inner", action="store_true",
                        help="train on the inner split of fold 0's training cases (dataset 903, its fold 0), where "
                             "defaults are chosen; results go to --inner-json")
    parser.add_argument("--inner-json", type=Path, default=RESULTS / "stage1_busi_inner.json")
    parser.add_argument("--no-report", action="store_true", help="train and record the JSON only (a GPU call's runs "
                        "write no table; it is rebuilt here with --report-only)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the runs train (benchmarks/device_stage1_busi.sh runs the encoder-training "
                             "configurations on a lent GPU)")
    args = parser.parse_args(argv)
    if os.environ.get("SAMPREF_BENCH_THREADS"):  # several benchmark processes share one machine's CPUs
        torch.set_num_threads(int(os.environ["SAMPREF_BENCH_THREADS"]))
    set_roots(args.workdir)
    if not args.no_plan and not args.report_only:
        prepare(args.workdir, args.source)
    if args.inner and not args.report_only:
        from benchmarks.inner_split import make_inner_dataset

        if not args.no_plan:  # --no-plan: the inner dataset is made and planned already (a GPU machine's copy)
            make_inner_dataset(3, INNER_ID, 0)
        run_inner(args.workdir, args.fractions, args.trainers, args.inner_json, args.device)
        return 0
    previous = json.loads(args.json.read_text())["runs"] if args.json.is_file() else []
    results = {(r.get("label", r["trainer"]), r["fraction"]): r for r in previous}
    for fraction in [] if args.report_only else args.fractions:
        for spec in args.trainers:
            name, overrides, label = parse_spec(spec)
            result = {**train(name, 0, fraction, overrides, device=args.device), "fraction": fraction,
                      "label": label}
            result["box_quality"] = box_quality(args.workdir / "results" / "Dataset003_BUSI" / result["run"],
                                                args.device)
            results[(label, fraction)] = result
            write_json_atomic(args.json, {"runs": list(results.values())})
            print(f"{label}@{fraction}: Dice {np.mean(list(result['dice'].values())):.4f}, {result['train_s']} s, "
                  f"boxes {result['box_quality']}", flush=True)
    if args.no_report:
        return 0
    ordered = sorted(results.values(), key=lambda r: (r["fraction"], TRAINERS.index(r["trainer"])
                                                        if r["trainer"] in TRAINERS else 99, r.get("label", "")))
    table_rows = [row for key, (row, _) in RECORDED_ROWS.items() if key not in results] + rows(ordered)
    for fraction in sorted({r["fraction"] for r in ordered}):
        unet = unet_reference(fraction)
        if unet is not None:
            table_rows.append([f"UNet (planned schedule, {len(unet)} cases)", str(fraction),
                               f"{np.mean(list(unet.values())):.4f}", "(reference)", "-", "-", "-"])
    table = markdown_table(["trainer", "fraction", "Dice (fold 0, 130 val cases)", "vs planned UNet",
                            "boxes: centre inside / median IoU / none (val slices with the lesion)",
                            "train s", "labeled cases"], table_rows)
    gaps = []
    for name, label in DEFAULT_LABELS.items():  # the defaults (no override)
        match = results.get((label, 0.1))
        unet = unet_reference(0.1)
        if match is not None and unet is not None:
            cases = sorted(set(match["dice"]) & set(unet))
            gaps.append(f"{name} {np.mean([match['dice'][c] - unet[c] for c in cases]):+.4f}")
        elif match is not None:
            gaps.append(f"{name} {np.mean(list(match['dice'].values())) - UNET_MEAN[0.1]:+.4f}")
        elif (label, 0.1) in RECORDED_ROWS:
            gaps.append(f"{name} {RECORDED_ROWS[(label, 0.1)][1] - UNET_MEAN[0.1]:+.4f}")
    body = ["Full BUSI (647 images; Al-Dhabyani et al. 2020), fold 0, LiteMedSAM; each row's configuration is `2d` "
            "(frozen image encoder) unless its label says `@2d_partial` etc., at the plan's schedule (format 5: 45 "
            "epochs x 10 x 8 slices, chosen on the inner split below); Dice per validation case at the original "
            "resolution, mean over the fold's 130 validation cases. 'vs planned UNet': paired mean difference "
            "against the planned-schedule UNet of the same fold and fraction (its run in the same workdir, else "
            "ssl_busi_planned_cpu_unet.json), Wilcoxon signed-rank p; without either, the difference to its mean "
            f"{UNET_MEAN} (the planned-schedule CPU UNet of 2026-12-02 on the same 130 cases; a difference of means "
            "equals the mean paired difference, only the p-value is missing).", "", table, "",
            "The previous schedule (15 epochs, plan format 4, 2026-12-02), for comparison:", "",
            markdown_table(["trainer", "fraction", "Dice", "vs planned UNet", "boxes", "train s", "labeled cases"],
                           PREVIOUS_ROWS)]
    body += ["", "Notes: 'train s' is the run's own epochs (the 45-epoch runs of 2026-12-03 shared the 2 cores "
             "with a second run and tests, about twice an idle machine's time); a `box_source=run:UNet` cascade "
             "also needs the U-Net run (50 x 50 steps, about 1000 s here), trained on the same labeled cases. Box "
             "columns score each source's inference boxes on the validation slices that hold the lesion (centre "
             "pixel inside the lesion, IoU with the lesion's bounding box, share without a box); they explain "
             "rows, they choose nothing. Defaults are chosen on the inner split only (section below). Seconds per "
             "image step of each configuration on 2 cores: bench_configurations.md.",
             "", "Commands, in order: " + "; ".join(f"`{c}`" for c in COMMANDS)]
    body += inner_section(args.inner_json)
    body += ["", "## Chosen defaults, and what is not measured yet", "",
             "- Length: 45 epochs (plan format 5), from the saliency curve at 0.2 above. The learned-box curve at 0.2 "
             "plateaued within its first 15 epochs (best 0.604 at epoch 6); its later epochs were not run.",
             "- Prompt source of SAMBaseline: the learned head (`box_source=learned`), from the inner comparison "
             "above. The outer rows of `SAMBaseline:box_source=learned` are that default's runs.",
             "- Configuration: `2d` (frozen encoder), the only one measured here. One 45-epoch run costs, on 2 CPU "
             "cores, about 0.3 h (`2d`), 3.0 h (`2d_partial`), 4.4 h (`2d_lora`) and 9.7 h (`2d_full`) "
             "(bench_configurations.md); no device run has been possible yet (a machine was lent on 2026-12-04, but "
             "none could be started), so the encoder-training and partial runs are missing, and no encoder "
             "configuration can be recommended for GPUs from a measurement yet. They are prepared as two calls "
             "of one warm GPU machine (benchmarks/README.md, `device_stage1_busi.sh`): SAMSelfPrompt in all four "
             "configurations on fold 0 at 0.1 and on the inner split at 0.2.",
             "- Augmented views: the planned number stays 0. Three views per labeled image gave +0.004 final inner "
             "Dice at 0.2 (0.5421 vs 0.5381 on the 104 inner validation cases) though +0.036 on the 64-sample "
             "per-epoch subset: within noise on the full inner validation, for about 7 min of extra encoder time per "
             "100 labeled images on 2 cores. `--set augment_views=3` turns it on.",
             "- Cascade: the inner split prefers the cascade box (`box_source=run:UNet`) by a wide margin (final "
             "0.6564 vs 0.5381 for the learned box, 15 epochs at 0.2; the inner UNet itself 0.6246), as the outer "
             "15-epoch rows did (0.6682 vs 0.5379). It is not the default yet: it makes every SAMBaseline run, the "
             "demo's and the DPO stage 1's, wait for a U-Net run of the same fold and fraction (about 1400 s on 2 "
             "cores here, a second trained model). Making it the default, with the grid scheduling the U-Net, is the "
             "next step this table points to; until then `--set box_source=run:UNet` is the measured best setting.",
             "- Fraction 0.2 on the outer fold: SAMSelfPrompt only (its row above); SAMBaseline's learned default "
             "and the planned UNet at 0.2 are not run under the new schedule yet."]
    if gaps:
        body += ["", "gap to UNet@0.1 (fold 0): " + ", ".join(gaps)]
    write_markdown("stage1_busi", "Stage-1 SAM settings on BUSI against the U-Net", "\n".join(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
