"""Learned box and point prompts: a coarse-mask head on SAM's image embedding, trained on the labeled cases.

The head (:class:`SelfPromptHead`) predicts a coarse mask per foreground label from the ``(B, 256, E, E)`` image
embedding; :func:`prompts_from_coarse` turns the largest connected component of each mask into a box and the cell
deepest inside it (distance-transform maximum) into one positive point, in pixels of the ``S x S`` preprocessed
image. :class:`LearnedPrompts` is the mixin that gives a SAM trainer these prompts: ``SAMSelfPrompt`` always, and
the prompt-sourced trainers with a box (``SAMBaseline``, ``SAMNoVQA``, ``SAMBoxOnly``, and through ``SAMBaseline``
the two-stage trainers' stage 1) by default (``box_source=learned``; ``--set box_source=saliency`` takes the saliency
box and points instead), the text prompts beside them either way.

Training (:meth:`LearnedPrompts.learned_train_step`): ``head_weight`` x (BCE + Dice) of the coarse masks against
the targets average-pooled to the embedding grid (a cell is foreground when at least half of it is), on every
sample, plus the decoder's focal + Dice loss on the samples whose label is present. The decoder's training prompts
are the head's own current, detached prompts, jittered by ``box_jitter`` (joint training: the decoder sees
prompts as imperfect as the head is at that point); where the head finds nothing on a slice that holds the label
(early in training), the jittered ground-truth box of that labeled case and its centre take their place.

Inference (:meth:`LearnedPrompts.learned_predict_logits`): a (slice, label) whose coarse mask is empty is
predicted empty; every other pair is decoded from its own box and point, so each label of a multi-label slice
gets its own box. Only labels of the run's labeled cases are ever read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from scipy import ndimage

from sampref_bench.planners.data import Sample
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.randomness import epoch_generator
from sampref_bench.trainers.sam.trainer import boxes_from_masks, jitter_boxes

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


#: Defaults and schemas of the head's options (shared by every trainer with learned prompts).
LEARNED_DEFAULTS: dict[str, Any] = {"head_weight": 1.0, "head_hidden": 64, "head_threshold": 0.5, "head_points": True}
LEARNED_OPTIONS: dict[str, Option] = {
    "head_weight": Option("float", low=0, help="weight of the coarse-mask head's loss (BCE + Dice)"),
    "head_hidden": Option("int", low=1, help="hidden channels of the coarse-mask head"),
    "head_threshold": Option("float", low=0, high=1, low_open=True, high_open=True,
                             help="probability above which a coarse-mask cell is foreground"),
    "head_points": Option("bool", help="add the point deepest inside the coarse mask to its box"),
}


class LearnedPrompts:
    """Learned prompts for a SAM trainer (a mixin; the trainer calls these methods where its prompts are learned).

    It needs the SAM trainer's ``network``, ``labels``, ``plans``, ``config``, ``device``, ``embeddings``,
    ``targets``, ``decode_with``, ``loss_fn`` and ``optimizers``; :meth:`other_prompts` adds prompts that are not
    visual (text tokens)."""

    network: torch.nn.Module
    labels: list[int]
    plans: dict[str, Any]
    config: dict[str, Any]
    device: torch.device
    epoch: int
    optimizers: dict[str, torch.optim.Optimizer]

    #: Which learned prompts go to the decoder (a trainer without a box or without points turns them off).
    learned_box: bool = True
    learned_points: bool = True

    def add_prompt_head(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` with the coarse-mask head ``prompt_head`` sized for its embeddings (and the head's Dice loss)."""
        model.add_module("prompt_head", SelfPromptHead(len(self.labels), int(model.embed_dim),
                                                       int(self.config["head_hidden"])))
        self.head_dice = DiceLoss(sigmoid=True)
        return model

    def other_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """Prompts besides the learned box and point (default none; the prompt-sourced trainers add text)."""
        return {}

    def head_logits(self, samples: list[Sample], embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 1, E, E)``: each sample's own label channel of the head's logits."""
        index = torch.tensor([self.labels.index(s.label) for s in samples], device=embeddings.device)
        logits = self.network.prompt_head(embeddings)
        return logits[torch.arange(len(samples), device=embeddings.device), index][:, None]

    def coarse_prompts(self, head_logits: torch.Tensor) -> tuple[dict[str, Any], np.ndarray]:
        """The decoder's visual prompts from ``(B, 1, E, E)`` head logits, and which rows found a component."""
        coarse = (torch.sigmoid(head_logits.detach())[:, 0] >= float(self.config["head_threshold"])).cpu().numpy()
        return self.visual_prompts(*prompts_from_coarse(coarse, int(self.plans["image_size"])))

    def visual_prompts(self, boxes: np.ndarray, points: np.ndarray, found: np.ndarray
                       ) -> tuple[dict[str, Any], np.ndarray]:
        """Prompt tensors of ``(B, 4)`` boxes and ``(B, 2)`` points in pixels, and ``found``; rows not found get the
        whole image as a placeholder box (their output is replaced by :data:`ABSENT_LOGIT`)."""
        size = int(self.plans["image_size"])
        boxes, points = boxes.copy(), points.copy()
        boxes[~found] = (0, 0, size - 1, size - 1)
        points[~found] = ((size - 1) / 2, (size - 1) / 2)
        prompts: dict[str, Any] = {}
        if self.learned_box:
            prompts["boxes"] = torch.from_numpy(boxes).to(self.device)
        if self.learned_points and self.config["head_points"]:
            prompts["points"] = (torch.from_numpy(points[:, None]).to(self.device),
                                 torch.ones((len(points), 1), dtype=torch.int64, device=self.device))
        return prompts, found

    def gated_logits(self, samples: list[Sample], embeddings: torch.Tensor, prompts: dict[str, Any],
                     found: np.ndarray) -> torch.Tensor:
        """``(B, 1, S, S)`` logits decoded from ``prompts`` and :meth:`other_prompts`; :data:`ABSENT_LOGIT` where
        ``found`` is False."""
        logits = self.decode_with(self.network, embeddings, {**prompts, **self.other_prompts(samples)})
        absent = torch.from_numpy(~found).to(logits.device)
        return torch.where(absent[:, None, None, None], torch.full_like(logits, ABSENT_LOGIT), logits)

    def learned_inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """Learned visual prompts and :meth:`other_prompts`, from the images alone. Only the head runs without
        gradients (its box and point are not differentiable anyway): the text tokens keep theirs, so a later stage
        that trains the text projection on these prompts (``SAMPseudoLabel``'s stage 2) trains it."""
        with torch.no_grad():
            prompts, _ = self.coarse_prompts(self.head_logits(samples, self.embeddings(samples)))
        return {**prompts, **self.other_prompts(samples)}

    def learned_predict_logits(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 1, S, S)`` logits decoded from the learned prompts; :data:`ABSENT_LOGIT` where the head finds
        nothing."""
        embeddings = self.embeddings(samples)
        prompts, found = self.coarse_prompts(self.head_logits(samples, embeddings))
        return self.gated_logits(samples, embeddings, prompts, found)

    def learned_train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """One Adam step of head and decoder (see the module docstring)."""
        index, samples = batch
        embeddings, targets = self.training_inputs(index, samples)
        head = self.head_logits(samples, embeddings)
        coarse_targets = (F.adaptive_avg_pool2d(targets, head.shape[-1]) >= 0.5).float()
        head_loss = F.binary_cross_entropy_with_logits(head, coarse_targets) + self.head_dice(head, coarse_targets)
        return self.visual_prompt_step(index, samples, targets, embeddings,
                                       lambda keep: self.coarse_prompts(head[keep]),
                                       float(self.config["head_weight"]) * head_loss,
                                       {"head_loss": float(head_loss.detach())})

    def visual_prompt_step(self, index: int, samples: list[Sample], targets: torch.Tensor, embeddings: torch.Tensor,
                           make_prompts: Any, extra_loss: torch.Tensor | float, parts: dict[str, float]
                           ) -> dict[str, float]:
        """One Adam step on ``extra_loss`` plus the decoder's loss on the samples whose label is present, decoded
        from ``make_prompts(keep)`` (``(prompts, found)`` of those rows), jittered, with the jittered ground-truth
        box (and its centre) where nothing was found."""
        optimizer = self.optimizers["network"]
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        loss = extra_loss
        present = targets.flatten(1).amax(dim=1) > 0
        if bool(present.any()):
            keep = torch.nonzero(present).flatten()
            kept = [samples[int(i)] for i in keep]
            prompts, found = make_prompts(keep)
            truth = torch.nan_to_num(boxes_from_masks(targets[keep, 0].cpu()), nan=0.0)
            hit = torch.from_numpy(found)[:, None]
            if "boxes" in prompts:
                boxes = torch.where(hit, prompts["boxes"].cpu(), truth)
                if self.config["box_jitter"] > 0:
                    boxes = jitter_boxes(boxes, rng, float(self.config["box_jitter"]), int(self.plans["image_size"]))
                prompts["boxes"] = boxes.to(self.device)
            if "points" in prompts:
                centres = torch.stack([(truth[:, 0] + truth[:, 2]) / 2, (truth[:, 1] + truth[:, 3]) / 2], dim=1)
                coords = torch.where(hit, prompts["points"][0][:, 0].cpu(), centres)
                prompts["points"] = (coords[:, None].to(self.device), prompts["points"][1])
            logits = self.decode_with(self.network, embeddings[keep], {**prompts, **self.other_prompts(kept)})
            decoder_loss = self.loss_fn(logits, targets[keep])
            loss = loss + decoder_loss
            parts = {**parts, "decoder_loss": float(decoder_loss.detach()), "prompt_found_share": float(found.mean())}
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            return {"loss": float(loss), **parts}  # nothing to learn from in this batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **parts}
