"""Learned prompts from the labeled budget: ``SAMSelfPrompt``, after Wu et al. 2023 ("Self-prompting large vision
models for few-shot medical image segmentation", MICCAI DART workshop; arXiv:2308.07624), a baseline of Konwer et
al.'s comparison.

A light head on SAM's image embedding predicts a coarse mask per foreground label; the largest connected component
of that mask gives the box, and the maximum of its distance transform (the pixel deepest inside it) gives one
positive point. SAM's prompt encoder and mask decoder then decode from these prompts. Everything the head learns
comes from the run's labeled cases: it trains on their slices (every planned slice, with or without the label, so
it learns absence too), and at inference it reads the image embedding alone.

Shapes: embeddings ``(B, 256, E, E)`` (E = 64 for LiteMedSAM at 256 px); head logits ``(B, K, E, E)`` for K
foreground labels; boxes ``(B, 4)`` ``x0, y0, x1, y1`` and points ``(B, 1, 2)`` ``x, y`` in pixels of the
``S x S`` preprocessed image.

Train/test mismatch. A head evaluated on the very images it is being fitted on gives better boxes than it will on
new images. sampref trains head and decoder jointly, and the decoder's training prompts are the head's own current
(detached) coarse-mask prompts, so the decoder learns from prompts as imperfect as the head is at that point of
training, never from ground-truth boxes except where the head finds nothing on a slice that holds the label (early
in training); those fallback boxes are jittered by ``box_jitter`` like ``SAMBoxOracle``'s. The head's boxes are
jittered too, to widen what the decoder sees. Cross-fitting inside the labeled set was not chosen: with 16 to 52
labeled images it would leave each head half the labels.

Inference: a (slice, label) whose coarse mask is empty is predicted empty (the head says the label is absent);
every other pair is decoded from its own box and point, so each label of a multi-label slice gets its own box.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from scipy import ndimage

from sampref_bench.planners.data import Sample
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.randomness import epoch_generator
from sampref_bench.trainers.sam.trainer import SAMTrainer, boxes_from_masks, jitter_boxes

#: Logit given to every pixel of a (slice, label) the head finds absent (sigmoid about 1e-13: empty at any threshold).
ABSENT_LOGIT = -30.0


class SelfPromptHead(torch.nn.Module):
    """``(B, C, E, E)`` image embeddings -> ``(B, K, E, E)`` coarse-mask logits, one map per foreground label: a 3x3
    convolution to ``hidden`` channels with group norm and ReLU, then a 1x1 convolution to K."""

    def __init__(self, n_labels: int, dim: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(dim, hidden, kernel_size=3, padding=1),
            torch.nn.GroupNorm(min(8, hidden), hidden),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(hidden, n_labels, kernel_size=1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C, E, E)`` -> ``(B, K, E, E)`` logits."""
        return self.body(embeddings)


def prompts_from_coarse(masks: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box and point prompts of ``(B, E, E)`` boolean coarse masks, in pixels of the ``image_size`` square image.

    Returns ``boxes`` (B, 4) float32 ``x0, y0, x1, y1`` (the largest 4-connected component's bounding box, its
    cells mapped to the pixels they cover), ``points`` (B, 2) float32 ``x, y`` (the centre of the component's cell
    farthest from its border, by the Euclidean distance transform; ties: the first in row-major order) and
    ``found`` (B,) bool; rows without a component are zeros with ``found`` False.
    """
    batch, grid = masks.shape[0], masks.shape[-1]
    scale = image_size / grid
    boxes = np.zeros((batch, 4), np.float32)
    points = np.zeros((batch, 2), np.float32)
    found = np.zeros(batch, bool)
    for i, mask in enumerate(masks):
        components, count = ndimage.label(mask)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = components == (int(np.argmax(sizes)) + 1)
        rows, cols = np.nonzero(largest)
        boxes[i] = (cols.min() * scale, rows.min() * scale, (cols.max() + 1) * scale - 1,
                    (rows.max() + 1) * scale - 1)
        depth = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        points[i] = ((col + 0.5) * scale - 0.5, (row + 0.5) * scale - 0.5)
        found[i] = True
    return boxes, points, found


class SAMSelfPrompt(SAMTrainer):
    """SAM prompted by a coarse mask it learns from the labeled cases (see the module docstring)."""

    train_on_absent_labels: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        **SAMTrainer.defaults,
        "head_weight": 1.0, "head_hidden": 64, "head_threshold": 0.5, "head_points": True,
    }
    options: ClassVar[dict[str, Option]] = {
        "head_weight": Option("float", low=0, help="weight of the coarse-mask head's loss (BCE + Dice)"),
        "head_hidden": Option("int", low=1, help="hidden channels of the coarse-mask head"),
        "head_threshold": Option("float", low=0, high=1, low_open=True, high_open=True,
                                 help="probability above which a coarse-mask cell is foreground"),
        "head_points": Option("bool", help="add the point deepest inside the coarse mask to its box"),
    }

    def build_network(self) -> torch.nn.Module:
        """The SAM flavour (as every SAM trainer builds it) with the coarse-mask head ``prompt_head`` sized for its
        embeddings."""
        model = super().build_network()
        model.add_module("prompt_head", SelfPromptHead(len(self.labels), int(model.embed_dim),
                                                       int(self.config["head_hidden"])))
        return model

    def build_data(self) -> None:
        """As the SAM trainer, plus the head's Dice loss."""
        super().build_data()
        self.head_dice = DiceLoss(sigmoid=True)

    # ------------------------------------------------------------ prompts
    def head_logits(self, samples: list[Sample], embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 1, E, E)``: each sample's own label channel of the head's logits."""
        index = torch.tensor([self.labels.index(s.label) for s in samples], device=embeddings.device)
        logits = self.network.prompt_head(embeddings)
        return logits[torch.arange(len(samples), device=embeddings.device), index][:, None]

    def coarse_prompts(self, head_logits: torch.Tensor) -> tuple[dict[str, Any], np.ndarray]:
        """The decoder's prompts from ``(B, 1, E, E)`` head logits and which rows found a component; rows without
        one get the whole image as a placeholder box (their output is replaced by :data:`ABSENT_LOGIT`)."""
        size = int(self.plans["image_size"])
        coarse = (torch.sigmoid(head_logits.detach())[:, 0] >= float(self.config["head_threshold"])).cpu().numpy()
        boxes, points, found = prompts_from_coarse(coarse, size)
        boxes[~found] = (0, 0, size - 1, size - 1)
        points[~found] = ((size - 1) / 2, (size - 1) / 2)
        prompts: dict[str, Any] = {"boxes": torch.from_numpy(boxes).to(self.device)}
        if self.config["head_points"]:
            prompts["points"] = (torch.from_numpy(points[:, None]).to(self.device),
                                 torch.ones((len(points), 1), dtype=torch.int64, device=self.device))
        return prompts, found

    def inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """Box (and point) prompts from the head's coarse masks of the images alone."""
        with torch.no_grad():
            return self.coarse_prompts(self.head_logits(samples, self.embeddings(samples)))[0]

    def predict_logits(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 1, S, S)`` logits decoded from the head's prompts; :data:`ABSENT_LOGIT` where it finds nothing."""
        embeddings = self.embeddings(samples)
        prompts, found = self.coarse_prompts(self.head_logits(samples, embeddings))
        logits = self.decode_with(self.network, embeddings, prompts)
        absent = torch.from_numpy(~found).to(logits.device)
        return torch.where(absent[:, None, None, None], torch.full_like(logits, ABSENT_LOGIT), logits)

    # ---------------------------------------------------------------- loop
    def train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """One Adam step on ``head_weight`` x (BCE + Dice) of the coarse masks of every sample, plus the focal + Dice
        loss of the decoder on the samples whose label is present, decoded from the head's jittered prompts (from
        the jittered ground-truth box where the head finds nothing yet)."""
        index, samples = batch
        optimizer = self.optimizers["network"]
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        targets = self.targets(samples)
        embeddings = self.embeddings(samples)
        head = self.head_logits(samples, embeddings)
        grid = head.shape[-1]
        coarse_targets = (F.adaptive_avg_pool2d(targets, grid) >= 0.5).float()
        head_loss = F.binary_cross_entropy_with_logits(head, coarse_targets) + self.head_dice(head, coarse_targets)
        loss = float(self.config["head_weight"]) * head_loss
        present = targets.flatten(1).amax(dim=1) > 0
        parts = {"head_loss": float(head_loss.detach())}
        if bool(present.any()):
            keep = torch.nonzero(present).flatten()
            prompts, found = self.coarse_prompts(head[keep])
            size = int(self.plans["image_size"])
            truth = torch.nan_to_num(boxes_from_masks(targets[keep, 0].cpu()), nan=0.0)
            boxes = torch.where(torch.from_numpy(found)[:, None], prompts["boxes"].cpu(), truth)
            if self.config["box_jitter"] > 0:
                boxes = jitter_boxes(boxes, rng, float(self.config["box_jitter"]), size)
            prompts["boxes"] = boxes.to(self.device)
            if "points" in prompts:
                centres = torch.stack([(truth[:, 0] + truth[:, 2]) / 2, (truth[:, 1] + truth[:, 3]) / 2], dim=1)
                coords = torch.where(torch.from_numpy(found)[:, None], prompts["points"][0][:, 0].cpu(), centres)
                prompts["points"] = (coords[:, None].to(self.device), prompts["points"][1])
            logits = self.decode_with(self.network, embeddings[keep], prompts)
            decoder_loss = self.loss_fn(logits, targets[keep])
            loss = loss + decoder_loss
            parts["decoder_loss"] = float(decoder_loss.detach())
            parts["head_found_share"] = float(found.mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **parts}
