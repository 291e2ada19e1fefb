"""GPU check: ViT-B SAM at 256 px, training steps with bf16 autocast, images per second.

Runs where a CUDA GPU is lent (never in CI). Official SAM weights cannot be downloaded here, so the ViT-B
is randomly initialised with SAM's exact architecture (``build_sam_architecture("vit_b")``): speed does not
depend on the weights. Three step types are timed on the same batch and loss (MONAI's focal + Dice,
20:1, as sampref's stage-1 trainer uses):

- ``full``: image encoder, prompt encoder and mask decoder all trained (configuration ``2d_full``);
- ``frozen_encoder``: encoder forward without gradients, decoder trained (sampref's default without a cache);
- ``cached_embeddings``: decoder only, embeddings given (sampref's default with the embedding cache).

Usage: python benchmarks/gpu_check.py [--steps 50] [--batch 16] [--device cuda] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from sampref_bench.models import build_sam_architecture


def make_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random images in [0, 1], elliptical masks and their boxes: (B,3,S,S), (B,1,S,S), (B,4)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(size // 4, 3 * size // 4, (batch, 2), generator=g)
    radii = torch.randint(size // 10, size // 5, (batch, 2), generator=g)
    masks = torch.stack([(((yy - c[0]) / r[0]) ** 2 + ((xx - c[1]) / r[1]) ** 2 <= 1).float()
                         for c, r in zip(centres, radii)])[:, None]
    boxes = torch.stack([torch.stack([c[1] - r[1], c[0] - r[0], c[1] + r[1], c[0] + r[0]]).float()
                         for c, r in zip(centres, radii)])
    return images.to(device), masks.to(device), boxes.to(device)


def run(mode: str, steps: int, batch: int, device: torch.device, dtype: torch.dtype | None) -> dict:
    """Time ``steps`` optimisation steps of one mode; returns images/s and ms/step."""
    model = build_sam_architecture("vit_b", image_size=256, seed=0).to(device).train()
    for p in model.image_encoder.parameters():
        p.requires_grad_(mode == "full")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=1.0, lambda_focal=20.0)
    images, masks, boxes = make_batch(batch, 256, device)
    with torch.no_grad():
        cached = model.embed(images)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if mode == "full":
                emb = model.embed(images)
            elif mode == "frozen_encoder":
                with torch.no_grad():
                    emb = model.embed(images)
            else:
                emb = cached
            low_res, _ = model.decode(emb, boxes=boxes)
            logits = F.interpolate(low_res.float(), size=(256, 256), mode="bilinear", align_corners=False)
        loss = loss_fn(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"mode": mode, "dtype": str(dtype).replace("torch.", "") if dtype else "float32", "steps": steps,
            "batch": batch, "seconds": round(seconds, 3), "ms_per_step": round(1000 * seconds / steps, 2),
            "images_per_second": round(steps * batch / seconds, 1), "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def main() -> None:
    """Run every mode in bf16 autocast (and the full mode in fp32 for comparison) and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    results = [run(m, args.steps, args.batch, device, torch.bfloat16)
               for m in ("full", "frozen_encoder", "cached_embeddings")]
    results.append(run("full", args.steps, args.batch, device, None))
    report = {"info": info, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
