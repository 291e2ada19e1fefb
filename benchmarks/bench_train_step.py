"""Training-step overhead of sampref against a bare segment-anything loop, and data-loader headroom.

One run, on the bundled BUSI subset with LiteMedSAM (the default model), fold 0, fraction 0.2:

1. ``sampref``: ``SAMBoxOracle.train_step`` on the first planned batch (the planned batch size; embeddings
   from the per-slice cache, targets from the labeled cases' labels, ``train_prompts``: ground-truth boxes
   with jitter; focal + Dice loss; the trainer's Adam, ``optimizers["network"]``);
2. ``bare``: the same model weights, batch, boxes and loss, calling segment-anything's ``PromptEncoder``
   and ``MaskDecoder`` directly on tensors prepared beforehand, then ``interpolate``, MONAI's
   ``DiceFocalLoss`` and ``Adam``.

Steps alternate (sampref, bare, sampref, ...) so both see the same machine load; the overhead is
``median(sampref) / median(bare) - 1`` (target: at most 10 %). The data loader (cache reads, targets and
prompts for one batch) is timed on its own; its throughput divided by the step rate must be at least 3.

Usage: .venv/bin/python -m benchmarks.bench_train_step [--steps 10] [--workdir DIR] [--model litemedsam]
(from the repository root). Writes benchmarks/results/bench_train_step.json and bench_train_step.md. The
first run computes LiteMedSAM embeddings of 36 images (about 2-3 minutes on 2 cores); pass the same
--workdir again to reuse them. Each sampref or bare step at the planned batch of 8 takes several seconds
on 2 cores, so the 2 warm-up and 10 timed steps of each kind add roughly 2-3 minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from benchmarks.report import machine, markdown_table, prepare_busi_subset, write_markdown

REPO = Path(__file__).resolve().parents[1]


def bare_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: DiceFocalLoss,
              embeddings: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor) -> float:
    """One step written directly against segment-anything's modules."""
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
    low_res, _ = model.mask_decoder(image_embeddings=embeddings, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
    logits = F.interpolate(low_res, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    loss = loss_fn(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main() -> None:
    """Run the benchmark, write its JSON and its Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind (default 10)")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse converted data and embeddings here")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_train_step.json")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sampref_bench_step_"))
    prepare_busi_subset(workdir)
    from sampref_bench.trainers.randomness import epoch_generator
    from sampref_bench.trainers.registry import get_trainer

    trainer = get_trainer("SAMBoxOracle")(3, 0, 0.2, overrides={"model": args.model}, progress=True)
    trainer.initialize()
    trainer.set_train_mode()
    _, samples = trainer.train_batches(0)[0]
    rng = epoch_generator(12345, 0, 1)

    def load_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = trainer.targets(samples)
        boxes = trainer.train_prompts(samples, targets, rng)["boxes"]
        return trainer.embeddings(samples), boxes, targets

    embeddings, boxes, targets = load_batch()
    bare_model = copy.deepcopy(trainer.network).train()
    bare_model.image_encoder.eval()
    bare_params = [p for p in bare_model.parameters() if p.requires_grad]
    bare_opt = torch.optim.Adam(bare_params, lr=trainer.optimizers["network"].param_groups[0]["lr"])
    loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=float(trainer.config["dice_weight"]),
                            lambda_focal=float(trainer.config["focal_weight"]))

    for _ in range(2):  # warm-up
        trainer.train_step((0, samples))
        bare_step(bare_model, bare_opt, loss_fn, embeddings, boxes, targets)
    sampref_s, bare_s, loader_s = [], [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step((0, samples))
        sampref_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_step(bare_model, bare_opt, loss_fn, embeddings, boxes, targets)
        bare_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_batch()
        loader_s.append(time.perf_counter() - start)
    step = statistics.median(sampref_s)
    bare = statistics.median(bare_s)
    loader = statistics.median(loader_s)
    result = {
        "model": args.model, "batch_size": len(samples), "steps": args.steps,
        "sampref_step_s": round(step, 4), "bare_step_s": round(bare, 4),
        "overhead": round(step / bare - 1, 4), "overhead_target": 0.10, "overhead_met": step / bare - 1 <= 0.10,
        "loader_batch_s": round(loader, 4), "loader_batches_per_s": round(1 / loader, 2),
        "steps_per_s": round(1 / step, 3), "loader_headroom": round(step / loader, 1), "loader_target": 3.0,
        "loader_met": step / loader >= 3.0,
        "all_sampref_s": [round(v, 4) for v in sampref_s], "all_bare_s": [round(v, 4) for v in bare_s],
        "machine": machine(), "workdir": str(workdir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("all_")}, indent=2))
    print(write_markdown("bench_train_step", "Training-step overhead and data-loader headroom", markdown_body(result)))


def markdown_body(r: dict) -> str:
    """The committed table of one result: step times, overhead and loader headroom against their targets."""
    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    rows = [["step overhead: median(sampref) / median(bare) - 1", f"{r['overhead'] * 100:+.1f} %",
             f"<= {r['overhead_target'] * 100:.0f} %", met(r["overhead_met"])],
            ["loader headroom: sampref step time / loader batch time", f"{r['loader_headroom']:.1f}x",
             f">= {r['loader_target']:.0f}x", met(r["loader_met"])]]
    times = [["sampref `SAMBoxOracle.train_step`", f"{r['sampref_step_s']:.4f}", f"{r['steps_per_s']:.2f}"],
             ["bare segment-anything step", f"{r['bare_step_s']:.4f}", f"{1 / r['bare_step_s']:.2f}"],
             ["data loader (embeddings, targets, prompts)", f"{r['loader_batch_s']:.4f}",
              f"{r['loader_batches_per_s']:.2f}"]]
    return (f"Bundled BUSI subset, fold 0, fraction 0.2, model `{r['model']}` with a frozen encoder and cached "
            f"embeddings, batch size {r['batch_size']} (planned), median over {r['steps']} timed steps of each "
            "kind, taken alternately so that both see the same load.\n\n"
            + markdown_table(["per batch", "median s", "per s"], times)
            + "\n\n" + markdown_table(["measure", "value", "target", "met"], rows)
            + "\n\nThe overhead is what sampref's trainer adds to the same step written directly against "
            "segment-anything's prompt encoder and mask decoder (same weights, batch, boxes, loss and Adam); "
            "at most 10 % meets the target. The loader headroom is how many batches the data loader prepares "
            "in the time of one training step; at least 3 meets the target.\n")


if __name__ == "__main__":
    main()
