"""Data of the U-Net trainers: slices as float tensors, MONAI augmentation and a streaming DataLoader.

A training item is one preprocessed slice ``(C, S, S)`` (the stored channels, uint8 or float16 scaled to float
in [0, 1], the very arrays the SAM trainers embed) with, for a labeled slice, its ``(1, S, S)`` map of class
indices (0 background, k for the k-th foreground label value; all labels jointly). Items are addressed by an
:class:`ItemKey` ``(epoch, batch, position, stream, index)``; each item's augmentation is seeded from the run's
seed and its key alone (:func:`~sampref_bench.trainers.unet.parts.item_seed`), so a batch is the same whichever
worker process builds it and however many there are.

Augmentation defaults are a subset of nnU-Net's 2D pipeline (Isensee et al., Nature Methods 2021; probabilities
and ranges of its ``default_2D_augmentation_params``): mirroring along both axes (p 0.5 each), rotation in
[-180, 180] degrees and scaling (one affine resampling, p 0.2; scale 0.7-1.3, MONAI's symmetric range, where
nnU-Net draws 0.7-1.4), Gaussian noise (p 0.1), multiplicative brightness 0.75-1.25 (p 0.15) and gamma 0.7-1.5
(p 0.3); nnU-Net's blur, contrast and low-resolution simulation are left out. Elastic deformation (off in
nnU-Net's 2D default, p 0.2 in older nnU-Net versions) runs with p 0.1. Labels are resampled with
nearest-neighbour interpolation so they stay class indices aligned with the image.

FixMatch's views (Sohn et al. 2020): the *weak* view flips (p 0.5 per axis) and rotates by up to 20 degrees
(p 0.5, SSL4MIS's ``random_rotate`` range); the *strong* view is the weak view (same geometry, pixel for pixel)
with intensity perturbations standing in for RandAugment on grey-level slices (gamma contrast, histogram shift,
Gaussian noise, Gaussian smoothing, each p 0.5) and one Cutout hole of 1/8 to 1/2 of the side (always, as
FixMatch always applies Cutout).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from sampref_bench.planners.data import LabelStore, PreprocessedData
from sampref_bench.trainers.unet.parts import item_seed
from sampref_bench.utilities.errors import SamprefError

#: Stream of an :class:`ItemKey`: a labeled slice (image and label) or an unlabeled one (image only).
LABELED = 0
UNLABELED = 1

#: Largest standard deviation of the additive Gaussian noise, in [0, 1] image units. nnU-Net draws the noise
#: variance from U(0, 0.1) on z-scored images (std up to 0.32 image standard deviations); on [0, 1] slices whose
#: standard deviation is about 0.15 that is a std of about 0.05.
NOISE_STD = 0.05


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
def _p(probability: float, always: bool) -> float:
    return 1.0 if always else probability


def _elastic_when_drawn() -> type:
    """MONAI's ``Rand2DElasticd`` that leaves the data untouched when its coin says "do not deform".

    MONAI 1.x resamples every key through an identity grid even then (about 4 ms per 256 px item for an image and a
    label, 90 % of the time at p 0.1), which made it the most expensive step of the U-Net loader. The coin is drawn
    from the transform's own random state, which :class:`Augmenter` reseeds per item, so skipping the unused deform
    draws changes no other transform's numbers; the output equals the original's up to the identity resampling's
    float rounding (tested).
    """
    from monai.transforms import Rand2DElasticd

    class ElasticWhenDrawn(Rand2DElasticd):
        def __call__(self, data: Any) -> dict[Any, Any]:  # type: ignore[override]
            state = self.R.get_state()
            self.randomize(None)
            if not self._do_transform:
                return dict(data)
            self.R.set_state(state)  # the parent draws the same coin again, then deforms
            return super().__call__(data)

    return ElasticWhenDrawn


def spatial_transforms(keys: Sequence[str], label_keys: Sequence[str], image_size: int,
                       always: bool = False) -> list[Any]:
    """nnU-Net-style geometry on dictionary ``keys`` (``label_keys`` among them are resampled nearest): flips, one
    affine rotation + scaling, a mild elastic deformation (see the module docstring). ``always`` sets every
    probability to 1 (tests)."""
    from monai.transforms import RandAffined, RandFlipd

    keys = list(keys)
    modes = ["nearest" if key in label_keys else "bilinear" for key in keys]
    return [
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=0),
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=1),
        RandAffined(keys, prob=_p(0.2, always), rotate_range=(math.pi,), scale_range=(0.3, 0.3), mode=modes,
                    padding_mode="zeros"),
        # control points every 1/8 of the side, displaced by N(0, 1) x U(1, 2) px (MONAI's RandDeformGrid)
        _elastic_when_drawn()(keys, spacing=(image_size // 8, image_size // 8), magnitude_range=(1.0, 2.0),
                       prob=_p(0.1, always), mode=modes, padding_mode="zeros"),
    ]


def intensity_transforms(key: str = "image", always: bool = False) -> list[Any]:
    """nnU-Net-style intensity changes of the image ``key``: Gaussian noise, brightness, gamma."""
    from monai.transforms import RandAdjustContrastd, RandGaussianNoised, RandScaleIntensityd

    return [
        RandGaussianNoised(key, prob=_p(0.1, always), std=NOISE_STD),
        RandScaleIntensityd(key, factors=0.25, prob=_p(0.15, always)),
        RandAdjustContrastd(key, prob=_p(0.3, always), gamma=(0.7, 1.5)),
    ]


def weak_transforms(keys: Sequence[str], label_keys: Sequence[str] = (), always: bool = False) -> list[Any]:
    """FixMatch's weak view: flips along both axes and a rotation of up to 20 degrees."""
    from monai.transforms import RandFlipd, RandRotated

    keys = list(keys)
    modes = ["nearest" if key in label_keys else "bilinear" for key in keys]
    return [
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=0),
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=1),
        RandRotated(keys, range_x=math.radians(20), prob=_p(0.5, always), mode=modes, padding_mode="zeros"),
    ]


def strong_intensity_transforms(image_size: int, key: str = "image", always: bool = False) -> list[Any]:
    """FixMatch's strong perturbations of an (already weak-augmented) image ``key``; no geometry."""
    from monai.transforms import (
        RandAdjustContrastd,
        RandCoarseDropoutd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandHistogramShiftd,
    )

    return [
        RandAdjustContrastd(key, prob=_p(0.5, always), gamma=(0.5, 2.0)),
        RandHistogramShiftd(key, num_control_points=(5, 10), prob=_p(0.5, always)),
        RandGaussianNoised(key, prob=_p(0.5, always), std=0.1),
        RandGaussianSmoothd(key, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), prob=_p(0.5, always)),
        RandCoarseDropoutd(key, holes=1, spatial_size=max(1, image_size // 8), max_spatial_size=image_size // 2,
                           fill_value=0.0, prob=1.0),
    ]


def _plain(value: Any) -> torch.Tensor:
    from monai.utils import convert_to_tensor

    return convert_to_tensor(value, track_meta=False).float().contiguous()


class Augmenter:
    """A MONAI ``Compose`` applied to a dictionary with a given seed; returns plain float tensors.

    ``transforms`` empty means no augmentation. The compose is reseeded before every call, so the result depends on
    the input and the seed only (never on earlier calls or on the process that makes it).
    """

    def __init__(self, transforms: list[Any]) -> None:
        from monai.transforms import Compose

        self.compose = Compose(transforms) if transforms else None

    def __call__(self, sample: dict[str, np.ndarray | torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """``sample``: arrays ``(C, S, S)`` by key -> the augmented tensors by key."""
        if self.compose is None:
            return {key: _plain(value) for key, value in sample.items()}
        from monai.data import get_track_meta, set_track_meta

        self.compose.set_random_state(seed=int(seed))
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors throughout: a quarter faster, the same numbers (tested)
        try:
            out = self.compose(dict(sample))
        finally:
            set_track_meta(tracking)
        return {key: _plain(out[key]) for key in sample}


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
