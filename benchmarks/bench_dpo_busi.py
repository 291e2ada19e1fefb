"""Preference optimization on the full BUSI set: does stage 2 (DPO) beat the 10 %-labeled baseline?

Konwer et al. 2025 report, for ultrasound at 10 % labeled + 10 % rated: ranking 75.88, rating 75.52, best
candidate only 73.81, against 73.62 for the 10 % labels alone (Dice %). This benchmark runs, per fold, with
LiteMedSAM (frozen encoder), the prompt-sourced ``SAMBaseline`` as stage 1 and the planned schedules:

* ``SAMBaseline`` at 0.1 (stage 1 and the baseline) and at 0.2 (the same budget spent on pixel labels);
* the paper's settings (``settings=paper``: threshold candidates, DPO loss, pixel-sum log-likelihood) for
  ``DPORanking``, ``DPORating`` and ``DPOBestOnly`` at 0.2 (0.1 labeled + 0.1 rated), and ``DPORanking`` with the
  two other log-likelihood reductions (plain mean, disagreement mean);
* bounded and anchored variants (IPO loss + the supervised stage-1 loss on the labeled cases) with three
  candidate sources (the paper's thresholds, adaptive thresholds, jittered boxes);
* the default: the variant with the best Dice on an **inner split** (the first :data:`INNER_CASES` cases of
  the fold's training permutation beyond the 0.2 budget: training cases no run here trains on), never the
  fold's validation cases; then ``DPORating`` / ``DPOBestOnly`` with it and ``DPORanking`` with it and
  rating noise 0.3;
* the control ``SAMBaselineContinued`` at 0.1: stage 1 plus the same number of stage-2 steps on the labeled
  cases alone.

Every trainer here gets the paper's saliency box and points (``box_source=saliency``, the default when the table
was measured; the learned head is the default since). Every run has its own run name, so the folders do not
depend on the code's current default preset. Runs
are reused when finished and continued when interrupted: on 2 CPU cores a stage-2 run takes about 15 min,
so the whole fold takes hours; run it in the background and rerun the same command to resume.

Usage: .venv/bin/python -m benchmarks.bench_dpo_busi [--workdir DIR] [--folds 0] [--report-only]
Writes benchmarks/results/dpo_busi.json and dpo_busi.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from benchmarks.bench_prompts import case_dice, paper_prompts, prepare, training_seconds
from benchmarks.report import REPO, RESULTS, machine, markdown_table, write_markdown
from sampref_bench.utilities.atomic import write_json_atomic

INNER_CASES = 100
#: Konwer et al. 2025, ultrasound, 10 % labeled + 10 % rated (Dice %).
PAPER_US = {"DPORanking": 75.88, "DPORating": 75.52, "DPOBestOnly": 73.81, "SAMBaseline@0.1": 73.62}
PAPER = {"settings": "paper", "candidates": "thresholds", "loss": "dpo", "reduction": "sum", "anchor_weight": 0.0,
         "kl_weight": 0.0}
BOUNDED = {"settings": "sampref", "loss": "ipo", "reduction": "disagreement_mean", "anchor_weight": 1.0,
           "kl_weight": 0.0}

#: (key, trainer, fraction, overrides, run name, role) in the order they run. Role "select": a candidate for
#: the default (chosen on the inner split); "default": runs with the chosen default's settings.
FIXED_RUNS: list[tuple[str, str, float, dict[str, Any], str | None, str]] = [
    ("SAMBaseline@0.1", "SAMBaseline", 0.1, {}, None, "baseline"),
    ("DPORanking paper (sum)", "DPORanking", 0.2, PAPER, "bench-paper", "select"),
    ("DPORanking IPO+anchor, thresholds", "DPORanking", 0.2, {**BOUNDED, "candidates": "thresholds"},
     "bench-ipo-thr", "select"),
    ("SAMBaselineContinued@0.1 (control)", "SAMBaselineContinued", 0.1, {}, "bench-control", "control"),
    ("DPORanking IPO+anchor, jitter", "DPORanking", 0.2, {**BOUNDED, "candidates": "jitter"}, "bench-ipo-jit",
     "select"),
    ("DPORanking paper, mean", "DPORanking", 0.2, {**PAPER, "reduction": "mean"}, "bench-paper-mean", "select"),
    ("DPORanking paper, disagreement mean", "DPORanking", 0.2, {**PAPER, "reduction": "disagreement_mean"},
     "bench-paper-dmean", "select"),
    ("SAMBaseline@0.2", "SAMBaseline", 0.2, {}, None, "reference"),
    ("DPORanking IPO+anchor, adaptive", "DPORanking", 0.2, {**BOUNDED, "candidates": "adaptive"},
     "bench-ipo-adapt", "select"),
    ("DPORating paper", "DPORating", 0.2, PAPER, "bench-paper", "paper"),
    ("DPOBestOnly paper", "DPOBestOnly", 0.2, PAPER, "bench-paper", "paper"),
]
DEFAULT_RUNS = [
    ("DPORating default", "DPORating", 0.2, {}, "bench-default", "default"),
    ("DPOBestOnly default", "DPOBestOnly", 0.2, {}, "bench-default", "default"),
    ("DPORanking default, rating noise 0.3", "DPORanking", 0.2, {"rating_noise": 0.3}, "bench-default-noise0.3",
     "default"),
]


def run_folder(trainer: Any) -> str:
    return f"{trainer.output_dir.parent.name}/{trainer.output_dir.name}"


def last_log(run_dir: Path) -> dict[str, Any]:
    """First and last rows of the run's training log (numbers where possible)."""
    rows = list(csv.DictReader((run_dir / "training_log.csv").open()))

    def num(row: dict[str, str]) -> dict[str, float]:
        return {k: float(v) for k, v in row.items() if v not in ("", None)}

    return {"first": num(rows[0]), "last": num(rows[-1])} if rows else {}


def inner_cases(splits: list[dict], fold: int) -> list[str]:
    """The inner split: the first INNER_CASES training cases of the permutation beyond the 0.2 budget."""
    entry = splits[fold]
    used = set(entry["labeled"]["0.2"])
    return [c for c in entry["permutation"] if c not in used][:INNER_CASES]


def inner_dice(run_dir: Path, cases: list[str]) -> dict[str, float]:
    """Per-case Dice of the finished run on the inner split at the preprocessed size (NaN: both empty)."""
    from sampref_bench.trainers.registry import load_trained_run

    trainer = load_trained_run(run_dir)
    store = trainer.data.label_store(cases, "the benchmark's inner split")
    out = {}
    for case in cases:
        probs = trainer.predict_probabilities(case)[0, 0]
        pred = probs >= float(trainer.config["threshold"])
        ref = store.seg(case)[0] == 1
        total = int(pred.sum() + ref.sum())
        out[case] = 2 * float((pred & ref).sum()) / total if total else float("nan")
    return out


def train(key: str, name: str, fold: int, fraction: float, overrides: dict, run_name: str | None,
          role: str, inner: list[str]) -> dict[str, Any]:
    """Train (or reuse) one run; its validation and inner-split Dice and diagnostics."""
    from sampref_bench.trainers.registry import get_trainer

    trainer = get_trainer(name)(3, fold, fraction, overrides=paper_prompts(name, overrides), progress=False,
                                run_name=run_name)
    summary_path = trainer.output_dir / "validation" / "summary.json"
    start = time.perf_counter()
    if not summary_path.is_file():
        print(f"[{time.strftime('%H:%M:%S')}] training {key} fold {fold} -> {run_folder(trainer)}", flush=True)
        trainer.run_training(continue_training=(trainer.output_dir / "checkpoint_latest.pth").exists())
    record = json.loads((trainer.output_dir / "config.json").read_text())
    result = {"key": key, "trainer": name, "fold": fold, "fraction": fraction, "role": role,
              "run": run_folder(trainer), "hyperparameters": record["hyperparameters"],
              "preferences": record.get("preferences"), "train_s": training_seconds(trainer.output_dir),
              "dice": case_dice(json.loads(summary_path.read_text())), "log": last_log(trainer.output_dir),
              "inner_dice": inner_dice(trainer.output_dir, inner), "wall_s": round(time.perf_counter() - start, 1)}
    return result


def nanmean(values: Any) -> float:
    values = np.asarray(list(values), dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def choose_default(runs: list[dict]) -> dict | None:
    """The 'select' run with the best mean inner-split Dice (fold 0's, the folds' mean when several)."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        if run["role"] == "select":
            scores.setdefault(run["key"], []).append(nanmean(run["inner_dice"].values()))
    if not scores:
        return None
    best = max(scores, key=lambda k: np.mean(scores[k]))
    return next(r for r in runs if r["key"] == best)


def default_overrides(chosen: dict) -> dict[str, Any]:
    from sampref_bench.trainers.dpo.trainers import PRESET_KEYS

    hp = chosen["hyperparameters"]
    return {"settings": hp["settings"], **{k: hp[k] for k in PRESET_KEYS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets" / "BUSI")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sampref_bench_prompts"))
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--report-only", action="store_true", help="rewrite dpo_busi.md from dpo_busi.json")
    args = parser.parse_args()
    json_path = RESULTS / "dpo_busi.json"
    if args.report_only:
        results = json.loads(json_path.read_text())
        chosen = choose_default(results["runs"])
        results["default"] = {"key": chosen["key"], "overrides": default_overrides(chosen)} if chosen else None
        write_report(results)
        return
    prepare(args.workdir, args.source)
    splits = json.loads((args.workdir / "preprocessed" / "Dataset003_BUSI" / "splits_final.json").read_text())
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {"runs": []}
    results["machine"] = machine()
    results["command"] = (f".venv/bin/python -m benchmarks.bench_dpo_busi --workdir {args.workdir} --folds "
                          f"{' '.join(map(str, args.folds))}")

    def done(key: str, fold: int) -> bool:
        """A run already recorded with a finished validation (resuming does not load and score it again)."""
        prior = next((r for r in results["runs"] if (r["key"], r["fold"]) == (key, fold)), None)
        return prior is not None and (args.workdir / "results" / "Dataset003_BUSI" / prior["run"] / "validation"
                                      / "summary.json").is_file()

    def record(run: dict) -> None:
        """Store ``run`` in place of its earlier record (row order stays the run order), then the JSON and table."""
        same = [i for i, r in enumerate(results["runs"]) if (r["key"], r["fold"]) == (run["key"], run["fold"])]
        if same:
            results["runs"][same[0]] = run
        else:
            results["runs"].append(run)
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, results)
        print(json.dumps({k: run[k] for k in ("key", "fold", "train_s")} | {
            "val_dice": round(nanmean(run["dice"].values()), 4),
            "inner_dice": round(nanmean(run["inner_dice"].values()), 4)}), flush=True)
        write_report(results)

    for fold in args.folds:
        inner = inner_cases(splits, fold)
        for spec in FIXED_RUNS:
            if not done(spec[0], fold):
                record(train(spec[0], spec[1], fold, spec[2], spec[3], spec[4], spec[5], inner))
    chosen = choose_default(results["runs"])
    results["default"] = {"key": chosen["key"], "overrides": default_overrides(chosen)} if chosen else None
    write_json_atomic(json_path, results)
    for fold in args.folds:
        inner = inner_cases(splits, fold)
        for key, name, fraction, extra, run_name, role in DEFAULT_RUNS:
            if not done(key, fold):
                record(train(key, name, fold, fraction, {**default_overrides(chosen), **extra}, run_name, role, inner))
    write_report(results)


def write_report(results: dict) -> None:
    """The Markdown table of ``results``: Dice over folds, paired against SAMBaseline@0.1, diagnostics."""
    runs = results["runs"]
    folds = sorted({r["fold"] for r in runs})
    keys = list(dict.fromkeys(r["key"] for r in runs))
    base = {(r["fold"], c): d for r in runs if r["key"] == "SAMBaseline@0.1" for c, d in r["dice"].items()}
    rows, diag = [], []
    for key in keys:
        mine = [r for r in runs if r["key"] == key]
        per_fold = [nanmean(r["dice"].values()) for r in mine]
        diffs = np.array([d - base.get((r["fold"], c), np.nan) for r in mine for c, d in r["dice"].items()])
        diffs = diffs[np.isfinite(diffs)]
        p = f"{wilcoxon(diffs).pvalue:.2g}" if key != "SAMBaseline@0.1" and len(diffs) and diffs.any() else "-"
        inner = [nanmean(r["inner_dice"].values()) for r in mine]
        paper = PAPER_US.get(key) or (PAPER_US.get(mine[0]["trainer"]) if "paper" in key and "mean" not in key
                                      else None)
        rows.append([key, mine[0]["role"], " / ".join(f"{v:.4f}" for v in per_fold),
                     f"{np.mean(per_fold):.4f} ± {np.std(per_fold):.4f}" if len(per_fold) > 1 else f"{per_fold[0]:.4f}",
                     f"{diffs.mean():+.4f}" if key != "SAMBaseline@0.1" and len(diffs) else "(baseline)", p,
                     " / ".join(f"{v:.4f}" for v in inner), f"{paper:.2f}" if paper else "-"])
        for r in mine:
            last, first = r["log"].get("last", {}), r["log"].get("first", {})
            prefs = r.get("preferences") or {}
            if "train_preference_loss" in last or "iou_spread" in last:
                diag.append([key, r["fold"], f"{first.get('train_preference_loss', float('nan')):.4g} -> "
                             f"{last.get('train_preference_loss', float('nan')):.4g}",
                             f"{last.get('train_reward_margin', float('nan')):.4g}",
                             f"{last.get('train_kl_to_reference', float('nan')):.3g}",
                             f"{last.get('iou_spread', float('nan')):.4f}",
                             f"{last.get('tied_share', float('nan')):.3f}",
                             ", ".join(f"{t:.3f}" for t in prefs.get("thresholds") or []) or "-",
                             f"{first.get('val_dice', float('nan')):.4f} -> {last.get('val_dice', float('nan')):.4f}",
                             r["train_s"]])
    default = results.get("default")
    done = {(r["key"], r["fold"]) for r in runs}
    missing = [f"{spec[0]} (fold {fold})" for fold in folds for spec in FIXED_RUNS + DEFAULT_RUNS
               if (spec[0], fold) not in done]
    body = (
        "Full BUSI (647 images; Al-Dhabyani et al., Data in Brief 2020), LiteMedSAM with a frozen encoder, stage 1 "
        "= SAMBaseline (weights-free saliency box + points, VQA text, LLM text) at 0.1, planned schedules (stage 1: "
        "15 x 10 x 8 slices; stage 2: 30 x 10 x 8 rated slices, + 4 labeled slices per step where anchored). Dice "
        "per validation case at the original resolution; the fold's mean per fold and mean ± sd over folds; "
        "paired difference against SAMBaseline@0.1 over the pooled validation cases (Wilcoxon signed-rank p). "
        f"'inner Dice': mean Dice on the inner split (the first {INNER_CASES} training cases beyond the 0.2 "
        "budget, at the preprocessed size): the only numbers used to choose the default.\n\n"
        + markdown_table(["run", "role", "val Dice per fold", "val Dice", "vs SAMBaseline@0.1", "Wilcoxon p",
                          "inner Dice per fold", "paper, US (%)"], rows)
        + "\n\n" + (f"Default chosen on the inner split: **{default['key']}** "
                    f"({json.dumps(default['overrides'])}).\n\n" if default else "")
        + "Stage-2 diagnostics (training_log.csv, first -> last epoch):\n\n"
        + markdown_table(["run", "fold", "preference loss", "reward margin (best - worst)", "KL to reference",
                          "candidate IoU spread", "tied share", "thresholds", "val pseudo Dice", "train s"], diag)
        + ("\n\nNot run yet (rerun the command to resume): " + ", ".join(missing) + "." if missing else "")
        + f"\n\nFolds run: {', '.join(map(str, folds))}. Paper: Konwer et al. 2025, ultrasound, 10 % labeled + "
        "10 % rated; 'SAMBaseline@0.1' is their stage-1 figure.")
    print(write_markdown("dpo_busi", "Preference optimization (DPO) on BUSI", body, results.get("command")))


if __name__ == "__main__":
    main()
