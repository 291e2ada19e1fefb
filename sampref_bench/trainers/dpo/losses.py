"""Preference losses over candidate masks (Konwer et al. 2025, eq. 4-6, and the bounded variants).

For one rated sample with K candidate masks ``Y_k`` and preference weights ``w_k`` (positive for preferred
candidates, negative for rejected ones), the implicit reward of candidate k is
``r_k = beta * (log pi(Y_k | I) - log pi_ref(Y_k | I))`` and the margin is ``m = sum_k w_k r_k``:

* ``"dpo"`` (the paper): ``L = -log sigmoid(m)``, unbounded below in the logits;
* ``"ipo"`` (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", the squared loss of IPO): ``L = (m - target)^2``, which has its optimum at a finite margin.

``log pi(Y | I)`` is the Bernoulli log-likelihood of the binary mask ``Y`` under the predicted pixel
probabilities. How it is reduced over pixels decides whether the loss can learn (:data:`REDUCTIONS`):

* ``"sum"``: the sum over all pixels (the paper's ``log pi(Y|I)`` of a mask read literally). Pixels where all
  candidates agree cancel in the margin whenever the weights sum to zero, so the margin is the sum over the
  disagreement region: hundreds to thousands of nats, and the sigmoid of ``"dpo"`` saturates within a few
  epochs.
* ``"mean"``: the sum divided by all pixels of the image. Candidates differ in a few hundred of 65536 pixels,
  so the first margins are ~1e-3 and the loss starts at ``ln 2``; an independent reproduction reported it stuck
  there. With Adam (whose steps do not scale with the gradient) it is not stuck on BUSI: it learns, and runs
  away from the reference fastest of the three (``benchmarks/results/dpo_busi.md``).
* ``"disagreement_mean"``: the sum over the pixels where the sample's candidates disagree, divided by their
  number: a per-pixel average over exactly the pixels the preference is about, independent of image size and
  lesion size, so a fixed IPO target (1 nat per disagreeing pixel) means the same on every image. It is the
  default, with the bounded ``"ipo"`` loss and a supervised anchor.

Measured on BUSI fold 0 (LiteMedSAM, ``benchmarks/results/dpo_busi.md``): with the paper's unbounded ``"dpo"``
loss every reduction learned (the loss fell) and every one lowered Dice below the 0.1-labeled stage 1 (sum
0.463, disagreement mean 0.428, mean 0.367, against 0.510; the inner split agreed). None of them is safe
unbounded; bounded (``"ipo"``) and anchored, the disagreement mean raised Dice (0.538).

Preference weights come from the annotator's scores (higher is better) by :func:`ranking_weights`,
:func:`rating_weights` or :func:`best_only_weights`. Tied candidates get equal weights, so a tie contributes
nothing to the margin; a sample whose candidates all tie gets all-zero weights and is skipped
(:func:`informative`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Named reductions of the per-pixel Bernoulli log-likelihood.
REDUCTIONS = ("sum", "mean", "disagreement_mean")
#: Named preference losses.
LOSSES = ("dpo", "ipo")


def position_weights(k: int, b1: float = 1.0, b2: float = 0.5) -> np.ndarray:
    """Weights of ``k`` candidates ordered best to worst: ``(+b1, +b2, -b2, -b1)`` for k = 4.

    The better half runs linearly from ``+b1`` down to ``+b2``, the worse half mirrors it with negative
    signs, and the middle candidate of an odd ``k`` gets 0 (k = 2: ``(+b1, -b1)``; k = 3: ``(+b1, 0, -b1)``).
    The weights sum to zero.
    """
    if k < 2:
        raise ValueError(f"a preference needs at least two candidates, got {k}")
    half = k // 2
    top = np.full(half, b1, dtype=np.float64) if half == 1 else np.linspace(b1, b2, half)
    middle = [0.0] if k % 2 else []
    return np.concatenate([top, middle, -top[::-1]])


def _tie_averaged(scores: np.ndarray, weights_by_position: np.ndarray) -> np.ndarray:
    """Each candidate's positional weight after sorting by ``scores`` (descending), averaged within ties."""
    order = np.argsort(-scores, kind="stable")
    out = np.empty(len(scores), dtype=np.float64)
    out[order] = weights_by_position
    for value in np.unique(scores):
        tied = scores == value
        out[tied] = out[tied].mean()
    return out


def ranking_weights(scores: Sequence[float], b1: float = 1.0, b2: float = 0.5) -> np.ndarray:
    """``(K,)`` weights from a ranking: candidates sorted by ``scores`` (higher is better) get
    :func:`position_weights`; tied candidates share the mean of their positions' weights."""
    scores = np.asarray(scores, dtype=np.float64)
    return _tie_averaged(scores, position_weights(len(scores), b1, b2))


def rating_weights(ratings: Sequence[int], b1: float = 1.0, b2: float = 0.5, scale: int = 4) -> np.ndarray:
    """``(K,)`` weights from absolute ratings ``1..scale``: each rating's value on the scale, minus the sample's
    mean value, so equal ratings cancel and an all-equal sample gets zeros.

    A rating's value is its place on the scale read from the top, weighted as :func:`position_weights` weights
    ``scale`` ranked places: rating ``scale`` (the best) is place 0, rating 1 (the worst) the last place. The
    scale's better half runs linearly from ``+b1`` down to ``+b2``, its worse half mirrors it, and the middle
    rating of an odd scale is neutral (0):

    * 4 points (the paper's and the simulated annotator's): 4 -> +b1, 3 -> +b2, 2 -> -b2, 1 -> -b1;
    * 5 points: 5 -> +b1, 4 -> +b2, 3 -> 0, 2 -> -b2, 1 -> -b1 (with b1 = 1, b2 = 0.5: evenly spaced);
    * 3 points: 3 -> +b1, 2 -> 0, 1 -> -b1 (no rating between best and neutral, so ``b2`` is unused);
    * 2 points: 2 -> +b1, 1 -> -b1; 6 points (b1 = 1, b2 = 0.5): +1, +0.75, +0.5, -0.5, -0.75, -1.

    Why this rule and not one straight line from ``+b1`` to ``-b1``: a line gives 4 points the values
    (1, 1/3, -1/3, -1), not the paper's (+b1, +b2, -b2, -b1), whatever ``b2`` is; this rule keeps the paper's
    weights at 4 points for every ``b1, b2``, keeps the top rating at ``+b1`` and the bottom at ``-b1`` on every
    scale (a 3-point file's top rating is the best, not the second best), reads the sign of a weight as "better
    or worse than the scale's middle", and gives a sample whose K = ``scale`` candidates got every rating once
    exactly the weights :func:`ranking_weights` gives that ranking.

    Raises :class:`ValueError` for a scale below 2 or a rating outside ``1..scale`` (the trainers check a file's
    ratings first and name the file).
    """
    if int(scale) != scale or scale < 2:
        raise ValueError(f"a rating scale needs at least two points, got scale={scale!r}")
    scale = int(scale)
    ratings = np.asarray(ratings, dtype=np.int64)
    if ratings.min() < 1 or ratings.max() > scale:
        raise ValueError(f"ratings must lie in 1..{scale}, got {ratings.tolist()}")
    value = position_weights(scale, b1, b2)[scale - ratings]
    return value - value.mean()


def best_only_weights(scores: Sequence[float], b1: float = 1.0) -> np.ndarray:
    """``(K,)`` weights rewarding only the best candidate(s): ``+b1`` shared among those tied for the best
    score, 0 elsewhere; all zeros when every candidate ties (nothing is preferred)."""
    scores = np.asarray(scores, dtype=np.float64)
    best = scores == scores.max()
    if best.all():
        return np.zeros(len(scores))
    return np.where(best, b1 / best.sum(), 0.0)


def informative(weights: np.ndarray) -> bool:
    """Whether a sample's weights express any preference (not all zero)."""
    return bool(np.any(np.abs(weights) > 1e-12))


def disagreement_region(candidates: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` binary candidates -> ``(B, H, W)`` bool: pixels where the candidates are not all equal."""
    c = candidates.bool()
    return c.any(dim=1) & ~c.all(dim=1)


def candidate_log_likelihood(logits: torch.Tensor, candidates: torch.Tensor, reduction: str = "disagreement_mean",
                             region: torch.Tensor | None = None) -> torch.Tensor:
    """Bernoulli log-likelihood ``log pi(Y_k | I)`` of each candidate mask under per-pixel logits.

    Args:
        logits: ``(B, H, W)`` or ``(B, 1, H, W)`` mask logits of the model.
        candidates: ``(B, K, H, W)`` binary candidate masks.
        reduction: one of :data:`REDUCTIONS` (see the module docstring).
        region: ``(B, H, W)`` bool disagreement region for ``"disagreement_mean"`` (computed from the
            candidates when ``None``); a sample with an empty region gets 0.
    Returns:
        ``(B, K)`` log-likelihoods (nats): summed, or averaged over all or over the disagreement pixels.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if logits.ndim == 4:
        logits = logits[:, 0]
    y = candidates.to(logits.dtype)
    x = logits[:, None]
    per_pixel = y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)  # (B, K, H, W)
    if reduction == "sum":
        return per_pixel.flatten(2).sum(-1)
    if reduction == "mean":
        return per_pixel.flatten(2).mean(-1)
    if region is None:
        region = disagreement_region(candidates)
    weight = region.to(logits.dtype)[:, None]
    count = weight.flatten(2).sum(-1).clamp(min=1.0)
    return (per_pixel * weight).flatten(2).sum(-1) / count


def preference_loss(policy_ll: torch.Tensor, reference_ll: torch.Tensor, weights: torch.Tensor, loss: str = "dpo",
                    beta: float = 1.0, ipo_target: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample preference loss and its implicit rewards.

    Args:
        policy_ll, reference_ll: ``(B, K)`` candidate log-likelihoods under the trained and the frozen model.
        weights: ``(B, K)`` preference weights (:func:`ranking_weights` and friends).
        loss: ``"dpo"`` -> ``-log sigmoid(m)``; ``"ipo"`` -> ``(m - ipo_target)^2``, with
            ``m = sum_k weights_k * beta * (policy_ll_k - reference_ll_k)``.
    Returns:
        ``(B,)`` losses (0 for a sample whose weights are all zero) and ``{"margin": (B,) m, "rewards": (B, K)
        beta * (policy_ll - reference_ll), "reward_gap": (B,) reward of the highest- minus the lowest-weighted
        candidate}``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown preference loss {loss!r}; choose one of {LOSSES}")
    rewards = beta * (policy_ll - reference_ll)
    margin = (weights * rewards).sum(dim=1)
    if loss == "dpo":
        values = -F.logsigmoid(margin)
    else:
        values = (margin - ipo_target) ** 2
    active = weights.abs().sum(dim=1) > 1e-12
    values = torch.where(active, values, torch.zeros_like(values))
    best = weights.argmax(dim=1, keepdim=True)
    worst = weights.argmin(dim=1, keepdim=True)
    gap = (rewards.gather(1, best) - rewards.gather(1, worst))[:, 0]
    return values, {"margin": margin, "rewards": rewards, "reward_gap": gap}


def bernoulli_kl(logits: torch.Tensor, reference_probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(B,)`` mean per-pixel KL(pi || pi_ref) in nats between the policy's and the reference's pixel
    Bernoullis: an estimate of how far the trained model has moved from the reference policy.

    Args:
        logits: ``(B, H, W)`` or ``(B, 1, H, W)`` policy logits; reference_probs: ``(B, H, W)`` probabilities.
    """
    if logits.ndim == 4:
        logits = logits[:, 0]
    p = torch.sigmoid(logits).clamp(eps, 1 - eps)
    q = reference_probs.to(p.dtype).clamp(eps, 1 - eps)
    kl = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    return kl.flatten(1).mean(-1)
