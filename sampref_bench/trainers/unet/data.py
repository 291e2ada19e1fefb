"""Data of the U-Net trainers: slices as float tensors, MONAI augmentation and a streaming DataLoader.

A training item is one preprocessed slice ``(C, S, S)`` (the stored channels, uint8 or float16 scaled to float
in [0, 1], the very arrays the SAM trainers embed) with, for a labeled slice, its ``(1, S, S)`` map of class
indices (0 background, k for the k-th foreground label value; all labels jointly). Items are addressed by an
:class:`ItemKey` ``(epoch, batch, position, stream, index)``; each item's augmentation is seeded from the run's
seed and its key alone (:func:`~sampref_bench.trainers.unet.parts.item_seed`), so a batch is the same whichever
worker process builds it and however many there are.

Augmentation: nnU-Net's 2D pipeline and FixMatch's weak and strong views through MONAI, defined in
:mod:`sampref_bench.planners.augmentation` (shared with the SAM trainers) and re-exported here under their old names;
the U-Net applies them to the whole ``(C, S, S)`` slice, padding included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from sampref_bench.planners.augmentation import (  # noqa: F401  (re-exported: the U-Net's transforms, moved)
    NOISE_STD,
    Augmenter,
    intensity_transforms,
    spatial_transforms,
    strong_intensity_transforms,
    weak_transforms,
)
from sampref_bench.planners.data import LabelStore, PreprocessedData
from sampref_bench.trainers.unet.parts import item_seed
from sampref_bench.utilities.errors import SamprefError

#: Stream of an :class:`ItemKey`: a labeled slice (image and label) or an unlabeled one (image only).
LABELED = 0
UNLABELED = 1


class ItemKey(NamedTuple):
    """Address of one training item; its augmentation seed is a function of ``seed`` and these fields."""

    epoch: int
    batch: int
    position: int
    stream: int
    index: int


def slice_images(data: PreprocessedData, case: str, slices: Sequence[int] | slice) -> np.ndarray:
    """``(N, C, S, S)`` float32 images in [0, 1]: the stored channels of ``slices`` of ``case`` (uint8 / 255, or
    float16 as stored). Reads images only, never a label."""
    stack = data.images(case)
    out = np.asarray(stack[slices], dtype=np.float32)
    if stack.dtype == np.uint8:
        out /= 255.0
    return out


def class_lookup(label_values: Sequence[int]) -> np.ndarray:
    """``(256,)`` uint8 table from a label value to its class index (k + 1 for the k-th of ``label_values``, 0 for
    background and every value not listed)."""
    table = np.zeros(256, np.uint8)
    for k, value in enumerate(label_values):
        table[int(value)] = k + 1
    return table


# ---------------------------------------------------------------------------------------------- transforms
class WeakStrongAugmenter:
    """FixMatch's pair of views of one unlabeled image: ``weak`` (geometry) and ``strong`` (the weak image with
    strong intensity perturbations, hence the same geometry pixel for pixel)."""

    def __init__(self, weak: list[Any], strong: list[Any]) -> None:
        self.weak = Augmenter(weak)
        self.strong = Augmenter(strong)

    def __call__(self, sample: dict[str, np.ndarray | torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """``{"image": (C, S, S)}`` -> ``{"weak": (C, S, S), "strong": (C, S, S)}``."""
        weak = self.weak(sample, seed)["image"]
        strong = self.strong({"image": weak.clone()}, item_seed(seed, 1))["image"]
        return {"weak": weak, "strong": strong}


# ------------------------------------------------------------------------------------------------ dataset
class SliceDataset(torch.utils.data.Dataset):
    """Training items addressed by :class:`ItemKey`: labeled slices (image + class indices) and unlabeled slices
    (image views only).

    ``labeled`` / ``unlabeled``: ``(case, slice)`` pairs; ``labels`` must serve every labeled case (unlabeled
    images are read through ``data.images`` only). ``labeled_view`` maps ``{"image", "label"}`` to augmented
    tensors; ``unlabeled_view`` maps ``{"image"}`` to the trainer's views (``{"image"}``, or FixMatch's
    ``{"weak", "strong"}``).
    """

    def __init__(self, data: PreprocessedData, labeled: list[tuple[str, int]], unlabeled: list[tuple[str, int]],
                 labels: LabelStore | None, lookup: np.ndarray, labeled_view: Callable[..., dict[str, torch.Tensor]],
                 unlabeled_view: Callable[..., dict[str, torch.Tensor]] | None, seed: int) -> None:
        self.data = data
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.labels = labels
        self.lookup = lookup
        self.labeled_view = labeled_view
        self.unlabeled_view = unlabeled_view
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.labeled) + len(self.unlabeled)

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        seed = item_seed(self.seed, key.epoch, key.batch, key.position, key.stream)
        if key.stream == LABELED:
            case, k = self.labeled[key.index]
            assert self.labels is not None
            image = slice_images(self.data, case, [k])[0]
            label = self.lookup[np.asarray(self.labels.seg(case)[k])][None].astype(np.float32)
            views = self.labeled_view({"image": image, "label": label}, seed)
            views["label"] = views["label"].round().long()
        else:
            case, k = self.unlabeled[key.index]
            assert self.unlabeled_view is not None
            views = self.unlabeled_view({"image": slice_images(self.data, case, [k])[0]}, seed)
        return {"stream": key.stream, "batch": key.batch, **views}


def collate_streams(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items of one batch -> ``{"index": batch index, "labeled": {key: (B_l, ...)}, "unlabeled": {key: (B_u, ...)}}``
    (a stream without items is left out)."""
    out: dict[str, Any] = {"index": int(items[0]["batch"])}
    for stream, name in ((LABELED, "labeled"), (UNLABELED, "unlabeled")):
        chosen = [item for item in items if item["stream"] == stream]
        if chosen:
            keys = [k for k in chosen[0] if k not in ("stream", "batch")]
            out[name] = {k: torch.stack([item[k] for item in chosen]) for k in keys}
    return out


def default_num_workers() -> int:
    """Data-loading worker processes by default: 2 when the machine has at least 4 CPUs, else 0 (in-process)."""
    return 2 if (os.cpu_count() or 1) >= 4 else 0


def batch_loader(dataset: SliceDataset, batches: list[list[ItemKey]], num_workers: int,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader yielding :func:`collate_streams` batches of ``batches`` in order, built by ``num_workers``
    processes (0: in this process). It never draws from torch's global RNG (its own generator is fixed)."""
    if num_workers < 0:
        raise SamprefError(f"num_workers must be >= 0, got {num_workers}")
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=int(num_workers),
                                       collate_fn=collate_streams, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(0))
