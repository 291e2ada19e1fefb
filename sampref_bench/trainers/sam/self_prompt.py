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
The head, its prompts and its training step are :mod:`.learned_prompts`, shared with the prompt-sourced trainers'
``box_source=learned`` (their default).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sampref_bench.planners.data import Sample
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.sam.learned_prompts import (  # noqa: F401 (re-exported)
    ABSENT_LOGIT,
    LEARNED_DEFAULTS,
    LEARNED_OPTIONS,
    LearnedPrompts,
    SelfPromptHead,
    prompts_from_coarse,
)
from sampref_bench.trainers.sam.trainer import SAMTrainer


class SAMSelfPrompt(LearnedPrompts, SAMTrainer):
    """SAM prompted by a coarse mask it learns from the labeled cases (see the module docstring)."""

    train_on_absent_labels: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {**SAMTrainer.defaults, **LEARNED_DEFAULTS}
    options: ClassVar[dict[str, Option]] = dict(LEARNED_OPTIONS)

    def build_network(self) -> torch.nn.Module:
        """The SAM flavour (as every SAM trainer builds it) with the coarse-mask head ``prompt_head``."""
        return self.add_prompt_head(super().build_network())

    def inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """Box (and point) prompts from the head's coarse masks of the images alone."""
        return self.learned_inference_prompts(samples)

    def predict_logits(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 1, S, S)`` logits decoded from the head's prompts; empty where it finds nothing."""
        return self.learned_predict_logits(samples)

    def train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """One step of head and decoder (:meth:`~.learned_prompts.LearnedPrompts.learned_train_step`)."""
        return self.learned_train_step(batch)

    def data_use(self) -> dict[str, Any]:
        """As every trainer's, plus ``box_source="learned"``: the head trains with SAM on the run's pixel-labeled
        cases, so its boxes spend no label beyond them (and no extra run)."""
        return {**super().data_use(), "box_source": "learned"}
