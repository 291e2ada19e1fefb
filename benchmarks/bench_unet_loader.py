"""Does the U-Net data loader keep up with the training step? Batches per second of each, on full BUSI.

For ``UNet`` (8 labeled slices per batch) and ``FixMatch`` (8 labeled + 8 unlabeled slices, weak and strong
views: the heaviest augmentation) at fraction 0.1, fold 0, it measures

* the loader alone: ``--batches`` batches of one epoch drawn from ``train_batches`` with 0, 1, 2 (and, with
  more CPU cores, 4) worker processes, no step;
* the step alone: ``train_step`` on the same batches held in memory (forward, loss, backward, SGD step);
* the two together, as training runs them, with the default number of workers.

The loader keeps up when its batches per second exceed the step's; otherwise the step waits for data and more
workers (or lighter augmentation) are the fix. Runs on the CPU or, with ``--device cuda``, on a GPU.

Usage: .venv/bin/python -m benchmarks.bench_unet_loader --workdir /tmp/bp/work [--device cpu] [--batches 20]
       [--no-plan] [--json PATH] [--label TEXT]
       .venv/bin/python -m benchmarks.bench_unet_loader --report A.json B.json   (one table of several measurements)
Writes benchmarks/results/unet_loader.json and unet_loader.md (or only the JSON given with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, command_line, machine, markdown_table, set_roots, write_markdown
from sampref_bench.utilities.atomic import write_json_atomic


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else float("nan")


def measure(name: str, device: str, batches: int, workers: list[int]) -> dict[str, Any]:
    """Loader-only, step-only and combined batches per second of one trainer."""
    import torch

    from sampref_bench.trainers.registry import get_trainer

    overrides = {"iterations_per_epoch": batches, "epochs": 1}
    out: dict[str, Any] = {"trainer": name, "loader": {}}
    for n in workers:
        trainer = get_trainer(name)(3, 0, 0.1, device=device, overrides={**overrides, "num_workers": n},
                                    progress=False, run_name="bench-loader")
        trainer.initialize()
        start = time.perf_counter()
        held = list(trainer.train_batches(0))
        out["loader"][str(n)] = per_second(len(held), time.perf_counter() - start)
    trainer.set_train_mode()
    trainer.train_step(held[0])  # warm-up (cuDNN autotuning, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in held[1:]:
        trainer.train_step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    out["step"] = per_second(len(held) - 1, time.perf_counter() - start)
    start = time.perf_counter()
    for batch in trainer.train_batches(1):
        trainer.train_step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    out["combined"] = per_second(batches, time.perf_counter() - start)
    out["combined_workers"] = trainer.num_workers
    out["batch"] = {"labeled": int(trainer.config["batch_size"]), "unlabeled": trainer.unlabeled_batch_size()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sampref_bench_prompts"))
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets"
                        / "BUSI")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--trainers", nargs="+", default=["UNet", "FixMatch"])
    parser.add_argument("--no-plan", action="store_true", help="use the workdir's plan as it is")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--label", default="", help="what this measurement is (stored in the JSON, shown in the table)")
    parser.add_argument("--report", type=Path, nargs="+", default=None, metavar="JSON",
                        help="only write unet_loader.md from these result files")
    parser.add_argument("--note", default="", help="with --report: a paragraph under the table")
    args = parser.parse_args()
    if args.report:
        write_report([json.loads(path.read_text()) for path in args.report], args.note)
        return
    if args.no_plan:
        set_roots(args.workdir)
    else:
        from benchmarks.bench_prompts import prepare

        prepare(args.workdir, args.source)
    workers = [0, 1, 2] + ([4] if (os.cpu_count() or 1) >= 8 else [])
    rows = [measure(name, args.device, args.batches, workers) for name in args.trainers]
    results = {"machine": machine(), "command": command_line(), "device": args.device, "label": args.label,
               "rows": rows}
    write_json_atomic(args.json or RESULTS / "unet_loader.json", results)
    print(json.dumps(rows, indent=1))
    if args.json is None:
        write_report([results])


def write_report(parts: list[dict[str, Any]], note: str = "") -> None:
    """unet_loader.md: one table row per (measurement, trainer); ``parts`` are result dictionaries of
    :func:`main`, each with its machine and an optional ``label`` (e.g. which code version was measured)."""
    workers = list(dict.fromkeys(n for part in parts for r in part["rows"] for n in r["loader"]))
    table = []
    for part in parts:
        where = f"{part['machine'].get('gpu') or 'CPU'}, {part['machine']['cpus']} cores"
        label = f"{part.get('label', '')} ({where}, load {part['machine']['load_average'][0]:.1f})".strip()
        for r in part["rows"]:
            table.append([label, r["trainer"], f"{r['batch']['labeled']} + {r['batch']['unlabeled']}",
                          *(r["loader"].get(n, "-") for n in workers), r["step"],
                          f"{r['combined']} ({r['combined_workers']} workers)",
                          "yes" if max(r["loader"].values()) >= r["step"] else "no"])
    body = ("Batches per second (higher is faster); fold 0, fraction 0.1 of full BUSI, 256 px slices, the plan's "
            "U-Net; 'step alone' runs on the measurement's device (the GPU where one is named).\n\n"
            + markdown_table(["measurement", "trainer", "slices per batch (labeled + unlabeled)",
                              *(f"loader, {n} workers" for n in workers), "step alone", "training (loader + step)",
                              "loader keeps up (best worker count)"], table)
            + (f"\n\n{note}" if note else "")
            + "\n\nCommands: " + "; ".join(f"`{part['command']}`" for part in parts))
    print(write_markdown("unet_loader", "U-Net data loader against the training step", body,
                         "see the commands under the table"))

if __name__ == "__main__":
    main()
