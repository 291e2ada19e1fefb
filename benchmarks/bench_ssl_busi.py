"""Semi-supervised and CNN baselines on the full BUSI set, on the same splits as the SAM trainers.

Trains, per fold and fraction (pixel labels on the first fraction-f cases of the fold's permutation), the
U-Net trainers ``UNet`` (supervised lower bound), ``MeanTeacher``, ``UAMT``, ``CPS`` and ``FixMatch`` (every
other training case of the fold as unlabeled images), the SAM self-training baseline ``SAMPseudoLabel`` and its
control ``SAMBaselineContinued`` (the same extra steps on the labeled cases only),
and reports their validation Dice beside ``SAMBaseline`` and ``DPORanking`` from the DPO benchmark
(``dpo_busi.json``, same workdir and splits) where it has them.

Two schedules for the U-Net trainers:

* ``--schedule planned``: the plan's ``unet_epochs`` x ``unet_iterations_per_epoch`` (a GPU run's length);
* ``--schedule cpu`` (default): :data:`CPU_SCHEDULE`, shortened so a run fits a 2-core CPU in minutes. It
  is stated in the table; its numbers are not the planned method's.

Each (schedule, trainer, fraction, fold) has its own run name (``bench-cpu`` or the default folder), runs
are reused when finished and continued when interrupted, and ``--jobs N`` trains N runs at once in separate
processes (a GPU with many CPU cores). The SAM trainers keep their own planned schedule in both.

Usage: .venv/bin/python -m benchmarks.bench_ssl_busi --workdir /tmp/bp/work [--folds 0] [--fractions 0.1 0.2]
       [--trainers ...] [--schedule cpu|planned] [--device cpu|cuda] [--jobs 1] [--no-plan]
       [--json PATH] [--report-only]
Writes benchmarks/results/ssl_busi_{schedule}.json (raw) and benchmarks/results/ssl_busi.md (both schedules).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from benchmarks.bench_prompts import case_dice, prepare, training_seconds
from benchmarks.report import REPO, RESULTS, command_line, machine, markdown_table, set_roots, write_markdown
from sampref_bench.utilities.atomic import write_json_atomic

UNET_TRAINERS = ["UNet", "MeanTeacher", "UAMT", "CPS", "FixMatch"]
#: SAMBaselineContinued is SAMPseudoLabel's control: stage 1 plus the same stage-2 steps on the labeled cases only
#: (run name as in the DPO benchmark, so its 0.1 run is shared).
TRAINERS = [*UNET_TRAINERS, "SAMPseudoLabel", "SAMBaselineContinued"]
CONTROL_RUN_NAME = "bench-control"
#: The shortened U-Net schedule of a 2-core CPU run (epochs, iterations per epoch); batch sizes stay planned.
#: Half the planned 2500 steps: at 8 x 20 = 160 steps every U-Net trainer was still at the all-background
#: solution (validation Dice 0.0; ssl_busi_short160.json), and a GPU check on the bundled subset saw the
#: U-Net's pseudo Dice level off after 750-1500 steps.
CPU_SCHEDULE = {"epochs": 25, "iterations_per_epoch": 50}
#: Rows taken from dpo_busi.json (key there -> row name here) for the comparison.
DPO_ROWS = {"SAMBaseline@0.1": ("SAMBaseline", 0.1), "SAMBaseline@0.2": ("SAMBaseline", 0.2)}


def overrides_for(name: str, schedule: str, num_workers: int | None) -> tuple[dict[str, Any], str | None]:
    """Overrides and run name of one trainer under ``schedule`` (U-Net trainers only are shortened)."""
    if name == "SAMBaselineContinued":
        return {}, CONTROL_RUN_NAME
    if name not in UNET_TRAINERS:
        return {}, None
    extra: dict[str, Any] = {} if num_workers is None else {"num_workers": num_workers}
    if schedule == "cpu":
        return {**CPU_SCHEDULE, **extra}, f"bench-cpu{CPU_SCHEDULE['epochs']}x{CPU_SCHEDULE['iterations_per_epoch']}"
    return extra, None


def train_one(workdir: str, name: str, fold: int, fraction: float, schedule: str, device: str,
              num_workers: int | None, progress: bool = False) -> dict[str, Any]:
    """Train (or reuse, or continue) one run and return its record; runs in a worker process with ``--jobs``."""
    set_roots(Path(workdir))
    import torch

    from sampref_bench.trainers.registry import get_trainer

    if os.environ.get("SAMPREF_BENCH_THREADS"):  # also on a GPU: --jobs processes share the machine's CPUs
        torch.set_num_threads(int(os.environ["SAMPREF_BENCH_THREADS"]))
    overrides, run_name = overrides_for(name, schedule, num_workers)
    trainer = get_trainer(name)(3, fold, fraction, device=device, overrides=overrides, progress=progress,
                                run_name=run_name)
    summary_path = trainer.output_dir / "validation" / "summary.json"
    start = time.perf_counter()
    if not summary_path.is_file():
        print(f"[{time.strftime('%H:%M:%S')}] training {name} f={fraction} fold {fold} -> {trainer.output_dir}",
              flush=True)
        trainer.run_training(continue_training=(trainer.output_dir / "checkpoint_latest.pth").exists())
    record = json.loads((trainer.output_dir / "config.json").read_text())
    hp = record["hyperparameters"]
    return {"trainer": name, "fold": fold, "fraction": fraction, "schedule": schedule, "device": device,
            "run": f"{trainer.output_dir.parent.name}/{trainer.output_dir.name}",
            "steps": {k: hp.get(k) for k in ("epochs", "iterations_per_epoch", "batch_size", "unlabeled_batch_size")},
            "data_use": record.get("data_use"), "train_s": training_seconds(trainer.output_dir),
            # UAMT runs since Monte-Carlo dropout record their rates (the report marks runs without them)
            **({"encoder_dropout": record.get("architecture", {}).get("encoder_dropout")} if name == "UAMT" else {}),
            "wall_s": round(time.perf_counter() - start, 1),
            "dice": case_dice(json.loads(summary_path.read_text()))}


def nanmean(values: Any) -> float:
    values = np.asarray(list(values), dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets" / "BUSI")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sampref_bench_prompts"))
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--schedule", choices=["cpu", "planned"], default="cpu")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (separate processes)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per U-Net run")
    parser.add_argument("--no-plan", action="store_true",
                        help="use the workdir's plan as it is (a copy of a planned folder without raw images)")
    parser.add_argument("--json", type=Path, default=None, help="raw results (default results/ssl_busi_SCHEDULE)")
    parser.add_argument("--progress", action="store_true",
                        help="per-epoch lines of every run (a run cut off by a time limit still shows how far it got)")
    parser.add_argument("--report-only", action="store_true", help="rewrite ssl_busi.md from the JSON files")
    parser.add_argument("--collect-partial", type=Path, default=None, metavar="RESULTS_DIR",
                        help="write the diagnostics of unfinished runs under RESULTS_DIR (training logs, e.g. a GPU "
                             "call's runs.tgz unpacked) to results/ssl_busi_partial_SCHEDULE.json, then the report")
    parser.add_argument("--partial-note", default="", help="why those runs stopped (shown in the report)")
    args = parser.parse_args()
    if args.collect_partial is not None:
        collect_partial(args.collect_partial, args.schedule, RESULTS / f"ssl_busi_partial_{args.schedule}.json",
                        args.partial_note)
    if args.report_only or args.collect_partial is not None:
        write_report()
        return
    json_path = args.json or RESULTS / f"ssl_busi_{args.schedule}.json"
    if args.no_plan:
        set_roots(args.workdir)
    else:
        prepare(args.workdir, args.source)
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {"runs": []}
    results.update(machine=machine(), command=command_line(), schedule=args.schedule,
                   cpu_schedule=CPU_SCHEDULE if args.schedule == "cpu" else None)
    plans = json.loads((args.workdir / "preprocessed" / "Dataset003_BUSI" / "plans.json").read_text())
    results["planned"] = {k: plans.get(k) for k in ("unet_epochs", "unet_iterations_per_epoch", "batch_size",
                                                     "dpo_epochs", "dpo_iterations_per_epoch", "epochs",
                                                     "iterations_per_epoch")}
    jobs = [(name, fold, fraction) for fold in args.folds for fraction in args.fractions for name in args.trainers]

    def record(run: dict[str, Any]) -> None:
        key = (run["trainer"], run["fold"], run["fraction"])
        results["runs"] = [r for r in results["runs"] if (r["trainer"], r["fold"], r["fraction"]) != key] + [run]
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, results)
        print(json.dumps({k: run[k] for k in ("trainer", "fold", "fraction", "train_s", "wall_s")}
                         | {"val_dice": round(nanmean(run["dice"].values()), 4)}), flush=True)

    started = time.perf_counter()
    if args.jobs <= 1:
        for name, fold, fraction in jobs:
            record(train_one(str(args.workdir), name, fold, fraction, args.schedule, args.device, args.num_workers,
                             args.progress))
    else:
        # spawn: the parent may have initialized CUDA (machine() names the GPU), which a forked child cannot reuse
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_one, str(args.workdir), name, fold, fraction, args.schedule, args.device,
                                   args.num_workers, args.progress): (name, fold, fraction)
                       for name, fold, fraction in jobs}
            for future in as_completed(futures):
                try:
                    record(future.result())
                except Exception as err:  # one failed run must not lose the others' results
                    print(f"FAILED {futures[future]}: {type(err).__name__}: {err}", flush=True)
    results["total_wall_s"] = round(time.perf_counter() - started, 1)
    write_json_atomic(json_path, results)
    if args.json is None:
        write_report()


def dpo_rows() -> list[dict[str, Any]]:
    """SAMBaseline (0.1, 0.2) and the DPO benchmark's default DPORanking (0.2) from dpo_busi.json, if there."""
    path = RESULTS / "dpo_busi.json"
    if not path.is_file():
        return []
    dpo = json.loads(path.read_text())
    default = (dpo.get("default") or {}).get("key")
    rows = []
    for run in dpo["runs"]:
        if run["key"] in DPO_ROWS:
            rows.append({**run, "trainer": DPO_ROWS[run["key"]][0], "source": "dpo_busi"})
        elif run["key"] == default:
            rows.append({**run, "trainer": f"DPORanking default ({default.removeprefix('DPORanking ')})",
                         "source": "dpo_busi"})
    return rows


def collect_partial(results_dir: Path, schedule: str, out: Path, note: str = "") -> dict[str, Any]:
    """Diagnostics of runs that stopped before their final validation (e.g. a GPU call that ran out of time):
    per run under ``results_dir/Dataset003_BUSI``, the last epoch reached and the per-epoch monitoring Dice
    (``val_dice`` of training_log.csv: pooled over a fixed subset of the fold's validation slices at the
    preprocessed size; monitoring only, never used to choose anything), beside the supervised UNet's at the
    same epoch. Runs with a result in ``ssl_busi_SCHEDULE*.json`` are left out. ``note`` explains, in the report,
    why they stopped. Writes ``out`` and returns it."""
    import csv

    logs = {}
    for path in sorted((results_dir / "Dataset003_BUSI").glob("*/fold_*/training_log.csv")):
        with path.open() as handle:
            logs[path.parent.parent.name] = list(csv.DictReader(handle))
    finished = {run["run"].split("/")[0] for path in RESULTS.glob(f"ssl_busi_{schedule}*.json")
                for run in json.loads(path.read_text()).get("runs", [])}
    rows = []
    for run, log in logs.items():
        if run in finished:
            continue
        name, fraction = run.split("__")[0], run.rsplit("__f", 1)[1]
        unet = next((v for k, v in logs.items() if k.startswith("UNet__") and k.endswith(f"__f{fraction}")), None)
        last = int(log[-1]["epoch"])
        rows.append({"trainer": name, "fraction": float(fraction), "run": run, "epochs_done": last,
                     "monitor_dice": round(float(log[-1]["val_dice"]), 4),
                     "unet_monitor_dice_same_epoch": round(float(unet[last - 1]["val_dice"]), 4)
                     if unet and len(unet) >= last else None,
                     "seconds_per_epoch": round(float(np.mean([float(r["seconds"]) for r in log])), 1)})
    data = {"schedule": schedule, "source": str(results_dir), "note": note, "rows": rows}
    write_json_atomic(out, data)
    return data


def partial_sections() -> list[str]:
    """One section per ``ssl_busi_partial_*.json`` (see :func:`collect_partial`)."""
    sections = []
    for path in sorted(RESULTS.glob("ssl_busi_partial_*.json")):
        data = json.loads(path.read_text())
        rows = [[r["trainer"], f"{r['fraction']:g}", str(r["epochs_done"]), f"{r['monitor_dice']:.4f}",
                 "-" if r["unet_monitor_dice_same_epoch"] is None else f"{r['unet_monitor_dice_same_epoch']:.4f}",
                 f"{r['seconds_per_epoch']:.1f}"] for r in data["rows"]]
        sections.append(
            f"## Runs that did not finish ({path.name}, schedule `{data['schedule']}`)\n\n{data.get('note', '')}\n\n"
            + markdown_table(["trainer", "fraction", "epochs done", "monitoring Dice at that epoch",
                              "UNet's at the same epoch", "s per epoch"], rows))
    return sections


def paired_difference(differences: list[float]) -> tuple[str, int]:
    """``"+0.0123 (p 0.045)"`` (mean per-case Dice difference, Wilcoxon signed-rank p) over the finite
    ``differences``, and their number; ``""`` when there are none or all are zero."""
    diffs = np.asarray(differences, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs) or not diffs.any():
        return "", len(diffs)
    return f"{diffs.mean():+.4f} (p {wilcoxon(diffs).pvalue:.2g})", len(diffs)


def control_comparison(runs: list[dict[str, Any]]) -> str:
    """A sentence per fraction pairing SAMPseudoLabel with its extra-steps control SAMBaselineContinued, per case
    (mean difference, Wilcoxon p), where both ran; '' otherwise."""
    parts = []
    for fraction in sorted({r["fraction"] for r in runs}):
        found = {r["trainer"]: r["dice"] for r in runs if abs(r["fraction"] - fraction) < 1e-9
                 and r["trainer"] in ("SAMPseudoLabel", "SAMBaselineContinued")}
        if len(found) < 2:
            continue
        ours, control = found["SAMPseudoLabel"], found["SAMBaselineContinued"]
        text, count = paired_difference([ours[c] - control[c] for c in ours if c in control])
        if text:
            parts.append(f"@{fraction:g}: {text[:-1]}, {count} cases)")
    if not parts:
        return ""
    return ("\n\nSAMPseudoLabel against its control SAMBaselineContinued (the same stage 1 and stage-2 steps, "
            "labeled cases only), paired per case: " + "; ".join(parts) + ".")


#: Row name of UAMT runs trained before UAMT had Monte-Carlo dropout (their records carry no encoder dropout).
UAMT_BEFORE_DROPOUT = "UAMT (before Monte-Carlo dropout)"


def row_name(run: dict[str, Any]) -> str:
    """The table row of a run: its trainer, except UAMT runs without recorded encoder dropout."""
    if run["trainer"] == "UAMT" and not run.get("encoder_dropout"):
        return UAMT_BEFORE_DROPOUT
    return run["trainer"]


def write_report() -> None:
    """ssl_busi.md: one table per schedule present (Dice per fraction, paired against UNet), timing, data use."""
    sections = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for schedule in ("planned", "cpu"):
        for path in sorted(RESULTS.glob(f"ssl_busi_{schedule}*.json")):  # runs trained by separate commands
            part = json.loads(path.read_text())
            if "runs" in part:  # (partial-run diagnostics have no "runs")
                groups.setdefault((schedule, part["machine"].get("gpu") or "CPU"), []).append(part)
    # the SAM trainers do not depend on the U-Net schedule: a section without its own run of one shows the
    # run of another section (same fold, same validation cases), marked with where it ran
    sam_runs = {(run["trainer"], run["fraction"], run["fold"]): {**run, "source": f"{machine} run"}
                for (_, machine), loaded in groups.items() for part in loaded for run in part["runs"]
                if run["trainer"] not in UNET_TRAINERS}
    for (schedule, _), loaded in groups.items():
        results = {**loaded[0], "runs": [run for part in loaded for run in part["runs"]],
                   "command": " ; ".join(dict.fromkeys(part["command"] for part in loaded))}
        own_keys = {(r["trainer"], r["fraction"], r["fold"]) for r in results["runs"]}
        runs = (results["runs"] + [run for key, run in sam_runs.items() if key not in own_keys]
                + dpo_rows())
        fractions = sorted({r["fraction"] for r in runs})
        runs = [{**r, "trainer": row_name(r)} for r in runs]
        names = list(dict.fromkeys([*TRAINERS, *(r["trainer"] for r in runs)]))
        rows = []
        for name in names:
            mine = sorted((r for r in runs if r["trainer"] == name), key=lambda r: (r["fraction"], r["fold"]))
            if not mine:
                continue
            cells = [name]
            for fraction in fractions:
                at = [r for r in mine if abs(r["fraction"] - fraction) < 1e-9]
                unet = {(r["fold"], c): d for r in results["runs"] if r["trainer"] == "UNet"
                        and abs(r["fraction"] - fraction) < 1e-9 for c, d in r["dice"].items()}
                if not at:
                    cells += ["-", "-"]
                    continue
                dice = np.mean([nanmean(r["dice"].values()) for r in at])
                text, _ = paired_difference([d - unet.get((r["fold"], c), np.nan) for r in at
                                             for c, d in r["dice"].items()])
                paired = text if name != "UNet" and text else "-"
                cells += [f"{dice:.4f}", paired]
            own = [r for r in mine if not r.get("source")]  # in fraction order, as mine
            cells.append(" / ".join(f"{r['train_s']:.0f}" for r in own)
                         or "(" + ", ".join(dict.fromkeys(r["source"] for r in mine)) + ")")
            first = own[0] if own else None
            steps = dict(first["steps"]) if first else {}
            if (name in UNET_TRAINERS[1:] or name == UAMT_BEFORE_DROPOUT) and steps.get("unlabeled_batch_size") is None:
                steps["unlabeled_batch_size"] = steps.get("batch_size")  # None: the plan's batch size
            cells.append(f"{steps.get('epochs')} x {steps.get('iterations_per_epoch')} x {steps.get('batch_size')}"
                         + (f" + {steps['unlabeled_batch_size']} unl." if steps.get("unlabeled_batch_size") else "")
                         if first else "planned SAM schedule")
            used = [str((r.get("data_use") or {}).get("unlabeled_used", "-")) for r in own or mine]
            cells.append(used[0] if len(set(used)) == 1 else " / ".join(used))
            rows.append(cells)
        head = ["trainer"]
        for fraction in fractions:
            head += [f"Dice @{fraction}", f"vs UNet @{fraction}"]
        head += ["train s per run (" + ", ".join(f"f={f}" for f in fractions) + ")",
                 "schedule (epochs x iterations x batch)", "unlabeled used (per fraction)"]
        info = results["machine"]
        where = (f"{info.get('gpu') or 'CPU'}, {info['cpus']} CPU cores" + (
            f"; the U-Net schedule is shortened to {results['cpu_schedule']['epochs']} x "
            f"{results['cpu_schedule']['iterations_per_epoch']} (planned: {results['planned']['unet_epochs']} x "
            f"{results['planned']['unet_iterations_per_epoch']})" if schedule == "cpu" else ""))
        sections.append(f"## Schedule `{schedule}` ({where})\n\nCommand(s): `{results['command']}`\n\n"
                        + markdown_table(head, rows) + control_comparison(results["runs"]))
    sections += partial_sections()
    short = RESULTS / "ssl_busi_short160.json"
    if short.is_file():
        runs = json.loads(short.read_text())["runs"]
        sections.append("A first CPU schedule of 8 x 20 = 160 steps left the U-Net trainers at the all-background "
                        "solution (validation Dice " + ", ".join(
                            f"{r['trainer']} {nanmean(r['dice'].values()):.3f}" for r in runs)
                        + "); hence the 25 x 50 CPU schedule.")
    body = (
        "Full BUSI (647 images; Al-Dhabyani et al., Data in Brief 2020), fold(s) as listed, the same splits and "
        "labeled cases as the SAM trainers. Dice per validation case at the original resolution, mean over the "
        "fold's validation cases; 'vs UNet': paired mean difference against the supervised UNet at the same "
        "fraction (Wilcoxon signed-rank p). SAMBaseline and DPORanking rows come from dpo_busi.json (LiteMedSAM, "
        "frozen encoder, their planned schedules). 'train s': seconds in the epochs (training and per-epoch "
        "validation), from training_log.csv.\n\n"
        "The planned U-Net schedule (50 x 50 steps, what a GPU run would use) runs as one prepared GPU call with "
        "`bash benchmarks/device_ssl_busi.sh` (payload and settings in its header; `SCHEDULE=cpu` for the shortened "
        "one). On an H200 with 16 cores and `WORKERS=0` each run is bound by its own single-process loader "
        "(unet_loader.md), not by the GPU: an epoch of 50 steps takes about 4.5-4.8 s for UNet, 8 s for MeanTeacher "
        "and CPS, 9 s for FixMatch and 11-12 s for UAMT whether 3, 8 or 10 runs share the GPU. The shortened schedule "
        "therefore needs about 300 s of training and the planned one about 600 s, more than one session's "
        "15 minutes of device time leaves after the shortened runs. Rows marked '(CPU run)' or '(dpo_busi)' are "
        "SAM trainers, whose schedule does not depend on the U-Net's, run elsewhere on the same fold.\n\n"
        + "\n\n".join(sections))
    print(write_markdown("ssl_busi", "Semi-supervised baselines on BUSI", body,
                         "see each section's command"))


if __name__ == "__main__":
    main()
