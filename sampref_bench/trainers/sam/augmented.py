"""Augmentation of SAM's stage-1 training batches: cached views for cached encoders, online draws for the others.

Two kinds, chosen by the run's configuration (``plans.json`` ``configurations[c]["augmentation"]``), each one
overridable with ``--set``:

* **Views** (``augment_views=N``, the frozen ``2d`` and the partial ``2d_partial``): the planner's ``N`` fixed
  augmented views of every training slice (:func:`~sampref_bench.planners.augmentation.view_specs`: flips, a small
  rotation and scale, a gamma; view 0 is the slice itself) are embedded once and cached beside the plain
  embeddings, keyed by the view's parameters and the image, never by fold or fraction
  (:class:`~sampref_bench.planners.embedding_cache.EmbeddingCache`, or the trunk activations of
  :class:`~sampref_bench.planners.embedding_cache.ActivationCache`). Each training sample of a batch reads one
  of the ``N + 1`` views, drawn from a generator of its own seeded by ``(seed, epoch, batch)``
  (:func:`~sampref_bench.planners.augmentation.draw_view_indices`), and its target mask is the same view of its
  label. The view seed is :data:`VIEW_SEED`, the same for every run, so runs share the cached views.
* **Online** (``augment=true``, ``2d_lora`` and ``2d_full``, whose encoder runs at every step): the U-Net's
  spatial and intensity augmentation on image and mask together, item ``i`` of a batch seeded by ``(seed, epoch,
  batch, i)`` (:func:`~sampref_bench.planners.augmentation.online_augment`), so a resumed run redraws the same.

Validation, final validation and prediction always read the plain image (view 0). Prompts made from the image
rather than from the targets (the saliency box and points, a cascade's U-Net box) are moved with the image:
:meth:`TrainingAugmentation.warp_prompts` draws them into a mask (one bit per prompt), applies the batch's warp
and reads them back; prompts derived from the augmented targets or embeddings (the oracle's box, the learned
head's box) need nothing. Stage 2 of a two-stage trainer and the pseudo-label trainer train on plain images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.ops import masks_to_boxes

from sampref_bench.trainers.options import Option
from sampref_bench.utilities.errors import SamprefError

#: Seed of the planner's view parameters: one set of views per dataset and image, shared by every run.
VIEW_SEED = 20231
#: Most point prompts :meth:`TrainingAugmentation.warp_prompts` moves per sample (bits 1..7 of a uint8 mask).
MAX_WARPED_POINTS = 7

#: A warp: ``(B, S, S)`` integer masks in the plain geometry -> the same masks in the batch's augmented geometry.
Warp = Callable[[np.ndarray], np.ndarray]

AUGMENTATION_DEFAULTS: dict[str, Any] = {"augment_views": None, "augment": None}
AUGMENTATION_OPTIONS: dict[str, Option] = {
    "augment_views": Option("int", low=0, none="the configuration's planned views",
                            help="augmented views per training slice, each embedded once and cached (frozen and "
                                 "partial encoders)"),
    "augment": Option("bool", none="the configuration's: on when the encoder runs at every step",
                      help="the U-Net's augmentation drawn at every step (LoRA and full encoders)"),
}


class TrainingAugmentation:
    """Mixin of :class:`~sampref_bench.trainers.sam.trainer.SAMTrainer`; see the module docstring."""

    options: ClassVar[dict[str, Option]] = AUGMENTATION_OPTIONS
    config: dict[str, Any]
    plans: dict[str, Any]
    configuration: str
    data: Any
    device: torch.device
    epoch: int

    def canonicalize_augmentation(self, config: dict[str, Any]) -> dict[str, Any]:
        """Planned values for ``None``; refuse views with an encoder that runs and online draws with a cached one."""
        planned = self.plans["configurations"][self.configuration].get("augmentation", {})
        runs = self.encoder_runs  # type: ignore[attr-defined]  (EncoderConfiguration: LoRA or full encoder)
        views = config.get("augment_views")
        online = config.get("augment")
        views = int(planned.get("views", 0)) if views is None else int(views)
        online = bool(planned.get("online", False)) if online is None else bool(online)
        if runs and views:
            raise SamprefError(f"augment_views={views} caches views of an encoder that does not change, but "
                               f"configuration {self.configuration!r} trains its encoder: use --set augment=true "
                               "(online augmentation) instead")
        if online and not runs:
            raise SamprefError(f"augment=true draws new images at every step, which configuration "
                               f"{self.configuration!r} would have to embed at every step: use --set augment_views=N "
                               "(N cached views per slice) instead")
        return {**config, "augment_views": views, "augment": online}

    # ---------------------------------------------------------------- views
    @property
    def views(self) -> list[Any]:
        """The ``augment_views + 1`` views of every training slice (view 0: the plain slice); [] without views."""
        if "_views" not in self.__dict__:
            from sampref_bench.planners.augmentation import view_specs

            n = int(self.config["augment_views"])
            self._views = view_specs(n + 1, VIEW_SEED) if n else []
        return self._views

    def training_views(self) -> list[Any]:
        """The augmented views the cache computes for training slices (the plain one is computed anyway)."""
        return self.views[1:]

    # ---------------------------------------------------------------- batch
    def training_inputs(self, index: int, samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 256, E, E)`` embeddings and ``(B, 1, S, S)`` targets of a training batch, augmented as configured.

        Sets :attr:`step_warp` (the batch's :data:`Warp`, None without augmentation), which
        :meth:`warp_prompts` applies to prompts made from the plain image.
        """
        from sampref_bench.planners.embedding_cache import slice_valid_sizes

        self.step_warp: Warp | None = None
        self.step_batch = len(samples)
        seed = int(self.config["seed"])
        pairs = [(s.case, s.slice) for s in samples]
        if self.config["augment"]:
            from sampref_bench.planners.augmentation import augmentation_seeds, online_augment

            images = np.concatenate([self.data.rgb(case, [int(k)]) for case, k in pairs])
            valid = slice_valid_sizes(self.data, pairs)
            seeds = augmentation_seeds(seed, self.epoch, index, len(samples))
            augmented, targets = online_augment(images, self.targets(samples).cpu(), valid, seeds)

            def warp(masks: np.ndarray) -> np.ndarray:
                return online_augment(images, masks, valid, seeds)[1].numpy()

            self.step_warp = warp
            embeddings = self.network.embed(augmented.to(self.device), valid_sizes=valid)  # type: ignore[attr-defined]
            return embeddings, targets.to(self.device)
        if not self.views:
            return self.embeddings(samples), self.targets(samples)  # type: ignore[attr-defined]
        from sampref_bench.planners.augmentation import apply_view, draw_view_indices

        drawn = [self.views[i] for i in draw_view_indices(seed, self.epoch, index, len(samples), len(self.views))]
        valid = slice_valid_sizes(self.data, pairs)

        def warp(masks: np.ndarray) -> np.ndarray:
            return np.stack([apply_view(None, m, v, view)[1] for m, v, view in zip(masks, valid, drawn)])

        self.step_warp = warp
        plain = self.targets(samples).cpu().numpy()[:, 0]  # type: ignore[attr-defined]
        targets = torch.from_numpy(warp(plain).astype(np.float32))[:, None].to(self.device)
        return self.embeddings(samples, drawn), targets  # type: ignore[attr-defined]

    def warp_prompts(self, prompts: dict[str, Any], rows: Any = None) -> dict[str, Any]:
        """``prompts`` (``boxes`` (B, 4) x0 y0 x1 y1 px, ``points`` ((B, N, 2) x y px, (B, N) labels); other keys
        kept) moved by the batch's warp (``rows``: the batch rows the prompts belong to), unchanged without one.

        Each prompt is drawn into a uint8 mask (bit 0: the box's pixels, bit k: a 3 x 3 dot around point k, at
        most :data:`MAX_WARPED_POINTS`), the mask warped with nearest-neighbour sampling, and read back: the box
        as the bounding box of bit 0 (the plain box where the warp lost it), point k as the centroid of bit k
        (label -1, SAM's "no point", where it left the image)."""
        warp = getattr(self, "step_warp", None)
        if warp is None or not ({"boxes", "points"} & set(prompts)):
            return prompts
        size = int(self.plans["image_size"])
        boxes = prompts.get("boxes")
        points = prompts.get("points")
        n = int((boxes if boxes is not None else points[0]).shape[0])
        masks = np.zeros((n, size, size), np.uint8)
        if boxes is not None:
            for i, (x0, y0, x1, y1) in enumerate(boxes.detach().cpu().round().long().clamp(0, size - 1).tolist()):
                masks[i, y0:y1 + 1, x0:x1 + 1] |= 1
        n_points = 0
        if points is not None:
            coords = points[0].detach().cpu().round().long().clamp(0, size - 1)
            n_points = min(int(coords.shape[1]), MAX_WARPED_POINTS)
            for i in range(n):
                for k in range(n_points):
                    x, y = coords[i, k].tolist()
                    masks[i, max(0, y - 1):y + 2, max(0, x - 1):x + 2] |= 1 << (k + 1)
        if rows is None:
            warped = warp(masks)
        else:  # the warp is the whole batch's: place these rows at their batch positions, zeros elsewhere
            rows = [int(r) for r in rows]
            stack = np.zeros((self.step_batch, size, size), np.uint8)
            stack[rows] = masks
            warped = warp(stack)[rows]
        out = dict(prompts)
        if boxes is not None:
            box_pixels = torch.from_numpy((warped & 1) > 0)
            new = boxes.detach().cpu().clone().float()
            found = box_pixels.flatten(1).any(dim=1)
            if found.any():
                new[found] = masks_to_boxes(box_pixels[found]).float()
            out["boxes"] = new.to(boxes.device)
        if points is not None and n_points:
            coords = points[0].detach().cpu().clone().float()
            labels = points[1].detach().cpu().clone()
            for i in range(n):
                for k in range(n_points):
                    ys, xs = np.nonzero(warped[i] & (1 << (k + 1)))
                    if len(xs):
                        coords[i, k] = torch.tensor([xs.mean(), ys.mean()], dtype=coords.dtype)
                    else:
                        coords[i, k] = 0.0
                        labels[i, k] = -1
            out["points"] = (coords.to(points[0].device), labels.to(points[1].device))
        return out
