"""Cascade prompts: SAM's box and point from the masks of a finished ``UNet`` run of the same fold and fraction.

``box_source=run:UNet`` (the prompt-sourced trainers) reads the U-Net run that sampref's default configuration
makes for this run's dataset, fold and fraction (``UNet__{plans}__2d__f{fraction}/fold_{k}``). That run trained on
the same labeled cases, so the cascade spends no extra label: its budget is the run's own, and ``config.json``
names the U-Net run it read. Per (slice, label) the U-Net's argmax mask of that label gives the box of its largest
connected component and the point deepest inside it (:func:`~.learned_prompts.prompts_from_coarse` at full
resolution); where the U-Net predicts none of the label, SAM predicts none either.

Train/test mismatch: the U-Net was fitted on the training images, so its boxes there are better than on new images.
The decoder's training boxes are jittered by ``box_jitter``, and where the U-Net misses a present label the
jittered ground-truth box of that labeled case stands in (as for the learned head).

A finished cascade run predicts only while its U-Net run is there (the cascade needs its first stage at test time,
as nnU-Net's cascade needs its low-resolution predictions); a missing U-Net run is an error that prints the command
that trains it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sampref_bench.planners.data import Sample
from sampref_bench.planners.plans import fraction_key
from sampref_bench.trainers.run_folder import run_folder
from sampref_bench.trainers.sam.learned_prompts import prompts_from_coarse
from sampref_bench.utilities.errors import SamprefError

#: The ``box_source`` value of the cascade, and the trainer whose run it reads.
CASCADE_SOURCE = "run:UNet"
CASCADE_TRAINER = "UNet"


def cascade_run_folder(trainer: Any) -> Path:
    """The fold folder of the U-Net run a cascade of ``trainer`` reads (its dataset, fold and fraction, the default
    U-Net configuration)."""
    return run_folder(trainer.dataset_name, CASCADE_TRAINER, trainer.plans["plans_name"],
                      str(trainer.plans.get("configuration", "2d")), fraction_key(trainer.fraction), trainer.fold)


class CascadeBoxes:
    """Box and point prompts of (slice, label) samples from a finished U-Net run, computed once per slice."""

    def __init__(self, trainer: Any) -> None:
        self.folder = cascade_run_folder(trainer)
        if not (self.folder / "checkpoint_final.pth").is_file():
            raise SamprefError(
                f"box_source={CASCADE_SOURCE} reads the finished UNet run of fold {trainer.fold} at fraction "
                f"{trainer.fraction} ({self.folder}), and there is none. Train it first: `sampref_train "
                f"{trainer.dataset_name} UNet {trainer.fold} --fraction {trainer.fraction}` (same labeled cases, so "
                "no extra label is spent).")
        self.image_size = int(trainer.plans["image_size"])
        self._unet: Any = None
        self._slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.labels = list(trainer.labels)

    @property
    def unet(self) -> Any:
        """The U-Net run, loaded on first use (on the CPU)."""
        if self._unet is None:
            from sampref_bench.trainers.registry import load_trained_run

            self._unet = load_trained_run(self.folder)
        return self._unet

    def _slice(self, case: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (case, int(index))
        if key not in self._slices:
            with torch.no_grad():
                probabilities = self.unet.predict_slices(case, [int(index)])[:, 0]  # (K + 1, S, S)
            winner = probabilities.argmax(axis=0)
            masks = np.stack([winner == k + 1 for k in range(len(self.labels))])
            self._slices[key] = prompts_from_coarse(masks, self.image_size)
        return self._slices[key]

    def prompts(self, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``boxes`` (B, 4), ``points`` (B, 2) in pixels and ``found`` (B,) bool of each sample's label."""
        rows = [self._slice(s.case, s.slice) for s in samples]
        index = [self.labels.index(s.label) for s in samples]
        boxes = np.stack([r[0][k] for r, k in zip(rows, index)])
        points = np.stack([r[1][k] for r, k in zip(rows, index)])
        found = np.array([r[2][k] for r, k in zip(rows, index)], bool)
        return boxes, points, found
