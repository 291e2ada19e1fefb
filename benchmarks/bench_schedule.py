"""How long a decoder-only run must train: inner-validation Dice against iterations per epoch.

The planner fixes ``iterations_per_epoch`` (like nnU-Net's 250) so that a run at the smallest planned
fraction is long enough to converge. This benchmark measures it on the bundled BUSI subset with LiteMedSAM
(frozen encoder, cached embeddings) at fraction 0.1 (8 labeled images in fold 0), for the prompt-free lower
bound ``SAMNoPrompt`` (the slowest to learn) and the box oracle ``SAMBoxOracle``, each trained for the
planned 15 epochs (lr halved every 10) at several values of ``iterations_per_epoch``.

Choosing a default must not look at a fold's test set, so the fold's validation cases are never touched:
every epoch the model is scored on an inner split, the first ``--inner`` training cases of the fold that
the run does not label (``roles.unlabeled``; their labels are read for scoring only). The per-case Dice
is computed at the preprocessed size (256 px), prediction from images alone (box oracle: exact boxes).

Usage: .venv/bin/python -m benchmarks.bench_schedule [--ipe 5 10 20] [--trainers SAMNoPrompt SAMBoxOracle]
       [--workdir DIR] [--inner 40]
Writes benchmarks/results/bench_schedule.json and bench_schedule.md. The first run embeds 48 images (about
2 minutes on 2 cores); pass the same --workdir to reuse them. A full default run takes about 40 minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import RESULTS, machine, markdown_table, prepare_busi_subset, write_markdown


def inner_trainer(base: type, n_inner: int) -> type:
    """``base`` scored every epoch on an inner split of its fold's unlabeled training cases, never on val."""

    class Inner(base):  # type: ignore[misc, valid-type]
        def build_data(self) -> None:
            self.inner_cases = self.roles.unlabeled[:n_inner]
            self.inner_labels = self.data.label_store(self.inner_cases, "inner-split scoring (benchmark)")
            super().build_data()
            self.step_seconds = 0.0

        def slices_read(self) -> list[tuple[str, int]]:
            return [(s.case, s.slice) for s in self.train_samples] + [(c, 0) for c in self.inner_cases]

        def oracle_labels(self):  # the oracle's exact boxes on inner cases
            return self.inner_labels if type(self).oracle else super().oracle_labels()

        def train_step(self, batch):  # noqa: ANN001
            start = time.perf_counter()
            out = super().train_step(batch)
            self.step_seconds += time.perf_counter() - start
            return out

        def validation_step(self) -> dict[str, float]:
            from sampref_bench.planners.data import Sample

            dices = []
            for start in range(0, len(self.inner_cases), 8):
                samples = [Sample(c, 0, 1) for c in self.inner_cases[start:start + 8]]
                pred = (torch.sigmoid(self.predict_logits(samples))[:, 0] >= 0.5).cpu().numpy()
                for sample, p in zip(samples, pred):
                    ref = self.inner_labels.mask(sample)
                    total = p.sum() + ref.sum()
                    dices.append(2 * float((p & ref).sum()) / total if total else 1.0)
            return {"val_dice": float(np.mean(dices))}

        def perform_final_validation(self) -> dict:
            return {}

    Inner.__name__ = f"Inner{base.__name__}"
    return Inner


def run_one(trainer_name: str, ipe: int, n_inner: int, fraction: float) -> dict:
    """Train one configuration; return its per-epoch inner Dice curve and timing."""
    from sampref_bench.trainers.registry import get_trainer

    cls = inner_trainer(get_trainer(trainer_name), n_inner)
    trainer = cls(3, 0, fraction, overrides={"iterations_per_epoch": ipe}, progress=False, run_name=f"bench{ipe}")
    if trainer.output_dir.exists():
        import shutil

        shutil.rmtree(trainer.output_dir)
    trainer.run_training()
    steps = trainer.config["epochs"] * ipe
    images = steps * trainer.config["batch_size"]
    curve = [{"epoch": r["epoch"], "step": r["epoch"] * ipe, "inner_dice": round(r["val_dice"], 4),
              "train_loss": round(r["train_loss"], 4)} for r in trainer.log]
    return {"trainer": trainer_name, "iterations_per_epoch": ipe, "epochs": trainer.config["epochs"],
            "batch_size": trainer.config["batch_size"], "steps": steps, "n_labeled": len(trainer.roles.labeled),
            "n_inner": len(trainer.inner_cases), "final_inner_dice": curve[-1]["inner_dice"],
            "best_inner_dice": max(c["inner_dice"] for c in curve),
            "best_epoch": max(curve, key=lambda c: c["inner_dice"])["epoch"],
            "seconds_per_image_step": round(trainer.step_seconds / images, 4), "curve": curve}


def main() -> None:
    """Run the grid, write the JSON and the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipe", type=int, nargs="+", default=[5, 10, 20], help="iterations per epoch to try")
    parser.add_argument("--trainers", nargs="+", default=["SAMNoPrompt", "SAMBoxOracle"])
    parser.add_argument("--fraction", type=float, default=0.1, help="annotation fraction (default: smallest, 0.1)")
    parser.add_argument("--inner", type=int, default=40, help="inner-split cases scored each epoch")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse converted data and embeddings here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sampref_bench_schedule_"))
    prepare_busi_subset(workdir)
    torch.manual_seed(0)
    results = []
    for name in args.trainers:
        for ipe in args.ipe:
            start = time.perf_counter()
            result = run_one(name, ipe, args.inner, args.fraction)
            result["wall_s"] = round(time.perf_counter() - start, 1)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_schedule.json").write_text(json.dumps({"machine": machine(), "runs": results}, indent=2))
    rows = []
    for r in results:
        full_minutes = r["steps"] * r["batch_size"] * r["seconds_per_image_step"] / 60
        rows.append([r["trainer"], r["iterations_per_epoch"], r["steps"], f"{r['final_inner_dice']:.3f}",
                     f"{r['best_inner_dice']:.3f} (epoch {r['best_epoch']})", f"{r['seconds_per_image_step']:.3f}",
                     f"{full_minutes:.1f}"])
    curves = []
    for r in results:
        points = ", ".join(f"{c['step']}: {c['inner_dice']:.3f}" for c in r["curve"])
        curves.append(f"- {r['trainer']}, {r['iterations_per_epoch']} it/epoch (step: inner Dice): {points}")
    body = (f"Fold 0 of the bundled 100-image BUSI subset, fraction {args.fraction} "
            f"({results[0]['n_labeled']} labeled images), LiteMedSAM with a frozen encoder, the planned 15 epochs "
            f"and batch size {results[0]['batch_size']}, lr 1e-4 halved every 10 epochs. Inner Dice: mean per-case "
            f"Dice at 256 px on {results[0]['n_inner']} training cases of the fold that the run does not label "
            "(the fold's validation cases are never used).\n\n"
            + markdown_table(["trainer", "it/epoch", "steps", "final inner Dice", "best inner Dice",
                              "s / image step", "decoder time per run (min)"], rows)
            + "\n\nThe last column is the training steps alone (steps x batch x s/image step); per-epoch and final "
            "validation come on top. It does not depend on the fraction or the dataset size.\n\n"
            + "\n".join(curves))
    print(write_markdown("bench_schedule", "Planned training length: inner Dice vs iterations per epoch", body))


if __name__ == "__main__":
    main()
