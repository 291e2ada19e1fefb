"""The first SAM trainers: the interactive upper bound and the prompt-free lower bound."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.trainers.data import Sample
from sampref_bench.trainers.registry import register_trainer
from sampref_bench.trainers.sam_trainer import SAMTrainer, boxes_from_masks, jitter_boxes


@register_trainer
class SAMBoxOracle(SAMTrainer):
    """Box prompt from the ground-truth bounding box: jittered in training, exact at evaluation.

    SAM's usual interactive upper bound. A label absent from a slice gets no prompt and is predicted
    empty (the oracle knows it is absent).
    """

    abstract: ClassVar[bool] = False

    def prompts(self, samples: list[Sample], targets: torch.Tensor, training: bool,
                rng: np.random.Generator | None) -> dict[str, Any]:
        """``boxes`` (B, 4) from each target's bounding box."""
        boxes = boxes_from_masks(targets[:, 0].cpu())
        boxes = torch.nan_to_num(boxes, nan=0.0)
        if training and rng is not None and self.config["box_jitter"] > 0:
            boxes = jitter_boxes(boxes, rng, float(self.config["box_jitter"]), int(self.plans["image_size"]))
        return {"boxes": boxes.to(self.device)}

    def predicts(self, sample: Sample) -> bool:
        """Only (slice, label) pairs where the label is present get a box."""
        return sample.label in self.data.meta(sample.case)["labels_per_slice"][sample.slice]


class LabelTokens(torch.nn.Module):
    """One learned 256-d token per foreground label, so a prompt-free decoder knows which label to segment."""

    def __init__(self, n_labels: int, dim: int = 256) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(n_labels, dim)
        torch.nn.init.normal_(self.tokens.weight, std=0.02)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` label indices -> ``(B, 1, dim)`` sparse prompt tokens."""
        return self.tokens(index)[:, None]


@register_trainer
class SAMNoPrompt(SAMTrainer):
    """No prompt at all: the lower bound. Trains on every planned slice, including slices without the label.

    With several foreground labels, a learned constant token per label (no image-specific information)
    tells the decoder which label is asked for.
    """

    abstract: ClassVar[bool] = False
    train_on_absent_labels: ClassVar[bool] = True

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Label tokens when the dataset has more than one foreground label."""
        return {"label_tokens": LabelTokens(len(self.labels))} if len(self.labels) > 1 else {}

    def prompts(self, samples: list[Sample], targets: torch.Tensor, training: bool,
                rng: np.random.Generator | None) -> dict[str, Any]:
        """No box, no points; label tokens only for multi-label datasets."""
        if len(self.labels) == 1:
            return {}
        index = torch.tensor([self.labels.index(s.label) for s in samples], device=self.device)
        return {"extra_sparse": self.network.label_tokens(index)}
