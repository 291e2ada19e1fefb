"""Pieces shared by the semi-supervised trainers: the two-stream batch sampler, ramp-ups, EMA and the
unlabeled losses (CPS, uncertainty mask, confidence mask).

Formulas and their sources:

- sigmoid ramp-up ``exp(-5 (1 - t)^2)`` for ``t`` in [0, 1] (Laine & Aila, "Temporal ensembling", ICLR 2017);
- EMA decay with warm-up ``min(1 - 1 / (step + 1), decay)`` (Tarvainen & Valpola, "Mean teachers", NeurIPS 2017,
  as their and SSL4MIS's code apply it), so the teacher starts as a copy of the student;
- uncertainty: entropy of the mean of T stochastic teacher predictions (Yu et al., "Uncertainty-aware
  self-ensembling model", MICCAI 2019);
- cross pseudo supervision ``CE(p_a, argmax p_b) + CE(p_b, argmax p_a)`` (Chen et al., CVPR 2021);
- confidence mask ``max p >= tau`` on the weak view (Sohn et al., "FixMatch", NeurIPS 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sampref_bench.trainers.randomness import epoch_generator, seeded_passes

#: Stream numbers of :func:`~sampref_bench.trainers.base.epoch_generator` used by the sampler.
LABELED_STREAM = 101
UNLABELED_STREAM = 102


# ---------------------------------------------------------------------------------------------- sampler
@dataclass(frozen=True)
class TwoStreamBatchSampler:
    """Batches with a fixed number of labeled and of unlabeled items each.

    Labeled indices come in whole passes over the ``n_labeled`` items, reshuffled every pass; the unlabeled stream
    cycles through the ``n_unlabeled`` items the same way, independently. Both orders are drawn from generators
    seeded by ``(seed, epoch)`` (one stream each), so an epoch's batches are a pure function of the seed and the
    epoch (resumable, the same with any number of data-loading workers).
    """

    n_labeled: int
    n_unlabeled: int
    labeled_per_batch: int
    unlabeled_per_batch: int
    n_batches: int
    seed: int

    def batches(self, epoch: int) -> list[tuple[list[int], list[int]]]:
        """``n_batches`` pairs ``(labeled indices, unlabeled indices)`` of ``epoch``; each list has its stream's
        per-batch size (empty when the stream has no item or a size of 0)."""
        labeled = seeded_passes(epoch_generator(self.seed, epoch, LABELED_STREAM), self.n_labeled, self.n_batches,
                                self.labeled_per_batch)
        unlabeled = seeded_passes(epoch_generator(self.seed, epoch, UNLABELED_STREAM), self.n_unlabeled,
                                  self.n_batches, self.unlabeled_per_batch)
        return list(zip(labeled, unlabeled))


# --------------------------------------------------------------------------------------------- ramp-ups
def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(step / length, 0, 1)`` (Laine & Aila 2017); 1.0 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    t = min(max(float(step) / float(length), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(step: float, length: float) -> float:
    """``clip(step / length, 0, 1)``; 1.0 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    return min(max(float(step) / float(length), 0.0), 1.0)


# ------------------------------------------------------------------------------------------------- EMA
def ema_decay(step: int, decay: float) -> float:
    """Teacher decay at global step ``step`` (0-based): ``min(1 - 1 / (step + 1), decay)``: 0 at step 0 (the
    teacher becomes the student), 0.5 at step 1, ... up to ``decay`` (Tarvainen & Valpola 2017)."""
    return min(1.0 - 1.0 / (int(step) + 1), float(decay))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every parameter; buffers (e.g. normalization
    statistics) are copied from the student. Both networks must have the same architecture."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


# ------------------------------------------------------------------------------------------ unlabeled losses
def bounded_noise(shape: tuple[int, ...], generator: torch.Generator, std: float = 0.1,
                  bound: float = 0.2) -> torch.Tensor:
    """Gaussian noise ``clamp(N(0, std^2), -bound, bound)`` of ``shape`` on the CPU (SSL4MIS's mean-teacher input
    noise: std 0.1, bound 0.2, in the units of the [0, 1] images)."""
    return (torch.randn(shape, generator=generator) * std).clamp(-bound, bound)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` logits -> ``(B, C, H, W)`` squared differences of the softmaxes (no reduction); the teacher
    side is not differentiated."""
    return (F.softmax(student_logits, dim=1) - F.softmax(teacher_logits, dim=1).detach()) ** 2


def entropy_uncertainty(mean_probabilities: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` mean probabilities of T stochastic passes -> ``(B, 1, H, W)`` predictive entropy in nats
    (``-sum_c p log p``; at most ``ln C``)."""
    p = mean_probabilities.clamp_min(1e-12)
    return -(mean_probabilities * torch.log(p)).sum(dim=1, keepdim=True)


def uncertainty_threshold(step: int, total_steps: int, n_classes: int) -> float:
    """UA-MT's threshold on the entropy: ``(0.75 + 0.25 * sigmoid_rampup(step, total_steps)) * ln C``, rising from
    0.75 ln C to ln C (the maximum entropy) over the run (Yu et al. 2019)."""
    return (0.75 + 0.25 * sigmoid_rampup(step, total_steps)) * math.log(n_classes)


def uncertainty_mask(passes: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(T, B, C, H, W)`` softmax probabilities of T stochastic passes -> ``(B, 1, H, W)`` float mask, 1 where the
    entropy of their mean is below ``threshold`` (nats)."""
    return (entropy_uncertainty(passes.mean(dim=0)) < threshold).float()


def masked_consistency(distance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, C, H, W)`` per-class ``distance`` over the pixels where the ``(B, 1, H, W)`` ``mask`` is 1
    (class-averaged, so an all-ones mask gives the plain mean); 0 when no pixel is kept."""
    kept = mask.expand_as(distance)
    return (distance * kept).sum() / kept.sum().clamp_min(1.0)


def cps_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Cross pseudo supervision (Chen et al. 2021): ``CE(logits_a, argmax logits_b) + CE(logits_b, argmax logits_a)``,
    each CE averaged over ``(B, H, W)`` pixels of ``(B, C, H, W)`` logits; pseudo-labels carry no gradient.
    Symmetric in its two arguments."""
    target_a = logits_a.detach().argmax(dim=1)
    target_b = logits_b.detach().argmax(dim=1)
    return F.cross_entropy(logits_a, target_b) + F.cross_entropy(logits_b, target_a)


def confidence_pseudo_labels(weak_logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` logits of the weak view -> ``(B, H, W)`` pseudo-labels (argmax) and ``(B, H, W)`` float mask
    of pixels whose top softmax probability is at least ``tau`` (FixMatch)."""
    probabilities = F.softmax(weak_logits.detach(), dim=1)
    confidence, labels = probabilities.max(dim=1)
    return labels, (confidence >= tau).float()


def fixmatch_loss(strong_logits: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabeled loss: per-pixel CE of the ``(B, C, H, W)`` strong-view logits against the ``(B, H, W)``
    pseudo-labels, times the confidence ``mask``, averaged over all pixels (kept or not, as Sohn et al. 2020
    average over all unlabeled images)."""
    return (F.cross_entropy(strong_logits, pseudo_labels, reduction="none") * mask).mean()


def item_seed(*parts: int) -> int:
    """A 32-bit seed that is a pure function of integer ``parts`` (e.g. seed, epoch, batch, position, stream)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def torch_generator(*parts: int) -> torch.Generator:
    """A CPU torch generator seeded by :func:`item_seed` of ``parts``."""
    return torch.Generator().manual_seed(item_seed(*parts))
