"""CPU seconds per image step of each planned configuration (frozen, partial, LoRA, full image encoder).

One training step of the planned batch (8 slices of 256 px) with LiteMedSAM's real weights, as the trainers take
it in each configuration: the prompt encoder and mask decoder from cached embeddings (``2d``); the last TinyViT
stage and neck from cached trunk activations, then the decoder (``2d_partial``); the whole encoder forward and
backward through rank-4 LoRA factors (``2d_lora``); the whole encoder trained (``2d_full``). Box prompts, focal +
Dice loss (MONAI ``DiceFocalLoss``, 20:1), Adam over the trainable parameters. Inputs are seeded random images and
boxes: a step's cost does not depend on the content. After one warm-up step, ``--steps`` steps are timed; the
median divided by the batch is the seconds per image step that ``plans.json`` states (``cpu_seconds_per_image_step``).

Usage: .venv/bin/python -m benchmarks.bench_configurations [--steps 2] [--batch 8] [--threads 2]
Writes benchmarks/results/bench_configurations.md (and .json). Takes about 5 minutes on 2 cores; run it on idle cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from benchmarks.report import RESULTS, machine, markdown_table, write_markdown

MODES = ("frozen", "partial", "lora", "full")
NAMES = {"frozen": "2d", "partial": "2d_partial", "lora": "2d_lora", "full": "2d_full"}


def _setup(mode: str) -> tuple[torch.nn.Module, object, list[torch.nn.Parameter]]:
    from sampref_bench.models import build_sam
    from sampref_bench.models.encoder_split import split_image_encoder
    from sampref_bench.models.lora import add_lora

    model = build_sam("litemedsam")
    split = None
    for p in model.image_encoder.parameters():
        p.requires_grad_(mode == "full")
    if mode == "partial":
        split = split_image_encoder(model, 1)
    elif mode == "lora":
        add_lora(model, rank=4)
    model.train()
    if mode in ("frozen", "lora"):
        model.image_encoder.eval()
    return model, split, [p for p in model.parameters() if p.requires_grad]


def time_mode(mode: str, steps: int, batch: int) -> dict[str, float]:
    """Median seconds of one training step of ``batch`` images in ``mode`` (after a warm-up step)."""
    torch.manual_seed(0)
    model, split, params = _setup(mode)
    optimizer = torch.optim.Adam(params, lr=1e-4)
    loss_fn = DiceFocalLoss(sigmoid=True, lambda_focal=20.0, lambda_dice=1.0)
    images = torch.rand(batch, 3, 256, 256)
    targets = (torch.rand(batch, 1, 256, 256) > 0.7).float()
    boxes = torch.tensor([[40.0, 50.0, 180.0, 200.0]] * batch)
    with torch.no_grad():
        embeddings = model.embed(images) if mode == "frozen" else None
        activations = split.activations(images) if split is not None else None
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        if mode == "frozen":
            emb = embeddings
        elif mode == "partial":
            emb = split.embed_activations(activations)
        else:
            emb = model.embed(images)
        low, _ = model.decode(emb, boxes=boxes)
        loss = loss_fn(F.interpolate(low, size=(256, 256), mode="bilinear", align_corners=False), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_s": round(median, 3), "per_image_s": round(median / batch, 3),
            "trainable": sum(p.numel() for p in params)}


def main() -> None:
    """Time every configuration and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for mode in MODES:
        results[mode] = time_mode(mode, args.steps, args.batch)
        print(mode, results[mode], flush=True)
    (RESULTS / "bench_configurations.json").write_text(json.dumps(results, indent=1))
    rows = [[NAMES[m], m, f"{r['trainable']:,}", f"{r['step_s']:.2f}", f"{r['per_image_s']:.3f}",
             f"{r['per_image_s'] * 1200 / 3600:.2f}"] for m, r in results.items()]
    table = markdown_table(["configuration", "encoder", "trainable parameters", f"s per step (batch {args.batch})",
                            "s per image step", "h per 1,200 image steps"], rows)
    body = (f"LiteMedSAM (bundled weights), 256 px, batch {args.batch}, {args.threads} threads; median of "
            f"{args.steps} timed steps after one warm-up; load average before the run {machine()['load_average']}."
            f"\n\n{table}\n\nThe frozen "
            "and partial rows exclude the one-off cost of filling their caches (one encoder or trunk forward per "
            "slice and view, about 2.3 s per image).")
    write_markdown("bench_configurations", "Seconds per image step of each planned configuration", body)


if __name__ == "__main__":
    main()
