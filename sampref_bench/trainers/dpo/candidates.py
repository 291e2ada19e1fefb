"""Candidate masks of the frozen reference (the stage-1 model) for preference optimization, made once before stage 2.

The sources (``candidates`` of a DPO run; Konwer et al. 2025 use the first):

* ``"thresholds"``: the reference's probability map at the plan's thresholds (0.3 0.4 0.5 0.6) or at ``thresholds``;
* ``"adaptive"``: the probability map at thresholds found after stage 1 on the reference's *labeled* samples, where
  the mean predicted area is :data:`ADAPTIVE_AREA_RATIOS` times the mean labeled area;
* ``"jitter"``: the reference under the sample's box and ``n_candidates - 1`` boxes whose sides move by up to
  ``jitter`` of the box size (seeded per sample and candidate), each at the run's ``threshold``;
* ``"multimask"``: the single output and SAM's three multimask outputs, each at ``threshold``;
* ``"dropout"``: ``n_candidates`` decodes with inverted dropout ``dropout_p`` on the image embedding
  (:func:`seeded_dropout`: a generator of its own, torch's global random states untouched), at ``threshold``.

:class:`CandidateGenerator` is a mixin of the DPO trainers: it needs the SAM trainer's ``embeddings``,
``decode_with``, ``inference_prompts`` and ``targets``, a ``reference`` network, ``train_samples`` (labeled)
and ``rated_samples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sampref_bench.planners.data import Sample
from sampref_bench.trainers.sam.trainer import jitter_boxes
from sampref_bench.utilities.errors import SamprefError

CANDIDATE_SOURCES = ("thresholds", "adaptive", "jitter", "multimask", "dropout")
#: Mean predicted area relative to the mean labeled area that the adaptive thresholds aim at, best-guess
#: over-segmentation first.
ADAPTIVE_AREA_RATIOS = (1.5, 1.2, 0.85, 0.65)


class CandidateGenerator:
    """The candidate-making half of a DPO trainer (a mixin; see the module docstring for what it needs)."""

    config: dict[str, Any]
    plans: dict[str, Any]

    def reference_logits(self, samples: list[Sample], prompts: dict[str, Any] | None = None,
                         multimask: bool = False, dropout: float = 0.0, dropout_seed: int = 0) -> torch.Tensor:
        """``(B, 1 or 3, S, S)`` logits of the frozen reference at the preprocessed size; ``dropout > 0`` drops
        out image-embedding features with :func:`seeded_dropout` (seed ``dropout_seed``)."""
        prompts = prompts if prompts is not None else self.reference_prompts(samples)
        embeddings = self.embeddings(samples)
        if dropout > 0:
            embeddings = seeded_dropout(embeddings, dropout, dropout_seed)
        return self.decode_with(self.networks["reference"], embeddings, prompts, multimask)

    def reference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """The inference prompts, without gradients (stage 2 never changes the prompt encoder or text
        projection, so the policy's prompt modules equal the reference's)."""
        with torch.no_grad():
            return self.inference_prompts(samples)

    def candidate_thresholds(self) -> list[float]:
        """Thresholds of the threshold-based candidate sources (the plan's, an override, or adaptive)."""
        if self.config["candidates"] == "adaptive":
            return self.adaptive_thresholds()
        return [float(t) for t in (self.config["thresholds"] or self.plans["thresholds"])]

    @torch.no_grad()
    def adaptive_thresholds(self) -> list[float]:
        """Thresholds at which the reference's mean predicted area on the labeled samples is
        :data:`ADAPTIVE_AREA_RATIOS` times their mean labeled area (interpolated on a grid of 97 thresholds)."""
        grid = np.linspace(0.02, 0.98, 97)
        areas = np.zeros(len(grid))
        truth = 0.0
        step = int(self.config["batch_size"])
        for start in range(0, len(self.train_samples), step):
            chunk = self.train_samples[start:start + step]
            probs = torch.sigmoid(self.reference_logits(chunk))[:, 0].cpu().numpy()
            truth += float(self.targets(chunk).sum())
            areas += np.array([(probs >= t).sum() for t in grid], dtype=np.float64)
        ratios = areas / max(truth, 1.0)
        # ratios fall with the threshold; np.interp wants increasing x
        thresholds = [float(np.interp(r, ratios[::-1], grid[::-1])) for r in ADAPTIVE_AREA_RATIOS]
        self.adaptive_record = {"area_ratios": list(ADAPTIVE_AREA_RATIOS), "thresholds": thresholds}
        return sorted(set(round(t, 4) for t in thresholds))

    @torch.no_grad()
    def make_candidates(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, S, S)`` bool candidates and the ``(B, S, S)`` reference logits under the usual prompts."""
        source = self.config["candidates"]
        logits = self.reference_logits(samples)[:, 0]
        probs = torch.sigmoid(logits)
        cut = float(self.config["threshold"])
        if source in ("thresholds", "adaptive"):
            cands = torch.stack([probs >= t for t in self.thresholds], dim=1)
        elif source == "multimask":
            multi = torch.sigmoid(self.reference_logits(samples, multimask=True))
            cands = torch.cat([probs[:, None], multi], dim=1) >= cut
        elif source == "jitter":
            prompts = self.reference_prompts(samples)
            outs = [probs >= cut]
            for k in range(1, int(self.config["n_candidates"])):
                boxes = torch.stack([
                    jitter_boxes(prompts["boxes"][i:i + 1].cpu(), _sample_rng(self.config["seed"], s, k),
                                 float(self.config["jitter"]), int(self.plans["image_size"]))[0]
                    for i, s in enumerate(samples)]).to(self.device)
                moved = torch.sigmoid(self.reference_logits(samples, {**prompts, "boxes": boxes}))[:, 0]
                outs.append(moved >= cut)
            cands = torch.stack(outs, dim=1)
        else:  # dropout
            outs = []
            for k in range(int(self.config["n_candidates"])):
                dropped = self.reference_logits(samples, dropout=float(self.config["dropout_p"]),
                                                dropout_seed=int(self.config["seed"]) * 1000 + k)
                outs.append(torch.sigmoid(dropped[:, 0]) >= cut)
            cands = torch.stack(outs, dim=1)
        return cands, logits

    def generate_candidates(self) -> list[tuple[Sample, torch.Tensor, torch.Tensor]]:
        """``(sample, (K, S, S) bool candidates, (S, S) reference logits)`` of every rated sample, on the CPU."""
        self.thresholds = self.candidate_thresholds() if self.config["candidates"] in ("thresholds",
                                                                                       "adaptive") else []
        step = int(self.config["batch_size"])
        made: list[tuple[Sample, torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(self.rated_samples), step):
            chunk = self.rated_samples[start:start + step]
            cands, logits = self.make_candidates(chunk)
            made.extend(zip(chunk, cands.cpu(), logits.cpu()))
        return made


def seeded_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout of ``x`` (each element zeroed with probability ``p``, the rest scaled by ``1 / (1 - p)``)
    whose mask comes from a CPU generator of its own seeded with ``seed``.

    torch's global random states (CPU and every CUDA device) are neither read nor changed, and the mask is drawn on
    the CPU and moved to ``x``'s device, so it is the same on every device. On the CPU, for float32 ``x``, the
    result equals ``torch.manual_seed(seed); torch.nn.functional.dropout(x, p)`` bit for bit (the same Bernoulli
    draws, the same division and product): the ``"dropout"`` candidates of earlier CPU runs are unchanged.
    """
    if not 0.0 <= p < 1.0:
        raise SamprefError(f"dropout_p must lie in [0, 1), got {p}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.empty(x.shape, dtype=torch.float32).bernoulli_(1.0 - p, generator=generator)
    noise.div_(1.0 - p)
    return x * noise.to(device=x.device, dtype=x.dtype)


def _sample_rng(seed: int, sample: Sample, k: int) -> np.random.Generator:
    from sampref_bench.trainers.dpo.annotators import sample_rng

    return sample_rng(int(seed) * 100 + k, sample)
