"""The first SAM trainers: the interactive upper bound and the prompt-free lower bound."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.planners.data import Sample
from sampref_bench.trainers.sam.trainer import SAMTrainer, boxes_from_masks, jitter_boxes


class SAMBoxOracle(SAMTrainer):
    """Box prompt from the ground-truth bounding box: jittered in training, exact at evaluation.

    SAM's usual interactive upper bound, and an oracle (``oracle = True``): at inference its boxes come from
    the ground truth, so tables mark its rows and it cannot predict an image without a label. A label
    absent from a slice gets no prompt and is predicted empty (the oracle knows it is absent).
    """

    oracle: ClassVar[bool] = True

    def _boxes(self, masks: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(boxes_from_masks(masks.cpu()), nan=0.0)

    def train_prompts(self, samples: list[Sample], targets: torch.Tensor,
                      rng: np.random.Generator) -> dict[str, Any]:
        """``boxes`` (B, 4) from each target's bounding box, each side jittered by up to ``box_jitter``."""
        boxes = self._boxes(targets[:, 0])
        if self.config["box_jitter"] > 0:
            boxes = jitter_boxes(boxes, rng, float(self.config["box_jitter"]), int(self.plans["image_size"]))
        return {"boxes": boxes.to(self.device)}

    def inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """``boxes`` (B, 4): the exact ground-truth boxes, read through :meth:`oracle_labels`."""
        store = self.oracle_labels()
        masks = torch.from_numpy(np.stack([store.mask(s) for s in samples]))
        return {"boxes": self._boxes(masks).to(self.device)}

    def predicts(self, sample: Sample) -> bool:
        """Only (slice, label) pairs where the label is present get a box."""
        return sample.label in self.oracle_labels().labels_per_slice(sample.case)[sample.slice]


class LabelTokens(torch.nn.Module):
    """One learned 256-d token per foreground label, so a prompt-free decoder knows which label to segment."""

    def __init__(self, n_labels: int, dim: int = 256) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(n_labels, dim)
        torch.nn.init.normal_(self.tokens.weight, std=0.02)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` label indices -> ``(B, 1, dim)`` sparse prompt tokens."""
        return self.tokens(index)[:, None]


class SAMNoPrompt(SAMTrainer):
    """No prompt at all: the lower bound. Trains on every planned slice, including slices without the label.

    With several foreground labels, a learned constant token per label (no image-specific information)
    tells the decoder which label is asked for.
    """

    train_on_absent_labels: ClassVar[bool] = True

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Label tokens when the dataset has more than one foreground label."""
        return {"label_tokens": LabelTokens(len(self.labels))} if len(self.labels) > 1 else {}

    def inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """No box, no points; label tokens only for multi-label datasets."""
        if len(self.labels) == 1:
            return {}
        index = torch.tensor([self.labels.index(s.label) for s in samples], device=self.device)
        return {"extra_sparse": self.network.label_tokens(index)}
