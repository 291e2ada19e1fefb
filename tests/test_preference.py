"""Preference weights, candidate log-likelihoods and the DPO / IPO losses on constructed tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sampref_bench.trainers.dpo.losses import (
    bernoulli_kl,
    best_only_weights,
    candidate_log_likelihood,
    disagreement_region,
    informative,
    position_weights,
    preference_loss,
    ranking_weights,
    rating_weights,
)


@pytest.mark.parametrize(("k", "expected"), [
    (2, [1.0, -1.0]),
    (3, [1.0, 0.0, -1.0]),
    (4, [1.0, 0.5, -0.5, -1.0]),
    (6, [1.0, 0.75, 0.5, -0.5, -0.75, -1.0]),
])
def test_position_weights(k, expected):
    np.testing.assert_allclose(position_weights(k, 1.0, 0.5), expected)


@pytest.mark.parametrize(("scores", "expected"), [
    ([0.9, 0.5, 0.7, 0.1], [1.0, -0.5, 0.5, -1.0]),          # order 0, 2, 1, 3
    ([0.8, 0.8, 0.3, 0.1], [0.75, 0.75, -0.5, -1.0]),        # a tie shares its places' mean weight
    ([0.1, 0.6, 0.6, 0.6], [-1.0, 1 / 3, 1 / 3, 1 / 3]),    # (1 + 0.5 - 0.5) / 3
    ([0.4, 0.4, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0]),            # all tie: nothing preferred
])
def test_ranking_weights(scores, expected):
    np.testing.assert_allclose(ranking_weights(scores), expected)


@pytest.mark.parametrize(("ratings", "expected"), [
    ([4, 3, 2, 1], [1.0, 0.5, -0.5, -1.0]),
    ([4, 4, 4, 3], [0.125, 0.125, 0.125, -0.375]),   # values 1, 1, 1, 0.5 minus their mean 0.875
    ([2, 2, 2, 2], [0.0, 0.0, 0.0, 0.0]),
])
def test_rating_weights(ratings, expected):
    np.testing.assert_allclose(rating_weights(ratings), expected)


@pytest.mark.parametrize(("ratings", "scale", "expected"), [
    # 5 points: 5 -> +1, 4 -> +0.5, 3 -> 0, 2 -> -0.5, 1 -> -1
    ([5, 4, 3, 2, 1], 5, [1.0, 0.5, 0.0, -0.5, -1.0]),
    ([5, 4, 3, 1], 5, [0.875, 0.375, -0.125, -1.125]),      # values 1, 0.5, 0, -1 minus their mean 0.125
    ([3, 3, 3, 3], 5, [0.0, 0.0, 0.0, 0.0]),
    # 3 points: 3 -> +1 (the best, not b2), 2 -> 0, 1 -> -1
    ([3, 2, 1], 3, [1.0, 0.0, -1.0]),
    ([3, 2, 2, 1], 3, [1.0, 0.0, 0.0, -1.0]),
    ([3, 3, 3, 2], 3, [0.25, 0.25, 0.25, -0.75]),           # values 1, 1, 1, 0 minus 0.75
    # 2 points: 2 -> +1, 1 -> -1
    ([2, 1, 1, 1], 2, [1.5, -0.5, -0.5, -0.5]),              # values 1, -1, -1, -1 minus -0.5
    # 6 points: +1, +0.75, +0.5, -0.5, -0.75, -1
    ([6, 4, 3, 1], 6, [1.0, 0.5, -0.5, -1.0]),
])
def test_rating_weights_on_other_scales(ratings, scale, expected):
    np.testing.assert_allclose(rating_weights(ratings, scale=scale), expected)


def test_rating_weights_of_four_points_keep_b1_and_b2():
    np.testing.assert_allclose(rating_weights([4, 3, 2, 1], b1=2.0, b2=0.25), [2.0, 0.25, -0.25, -2.0])
    np.testing.assert_allclose(rating_weights([4, 3, 2, 1], b1=2.0, b2=0.25, scale=4),
                               rating_weights([4, 3, 2, 1], b1=2.0, b2=0.25))


@pytest.mark.parametrize("scale", [2, 3, 4, 5, 6, 7])
def test_every_rating_once_weighs_as_the_ranking(scale):
    ratings = np.random.default_rng(scale).permutation(np.arange(1, scale + 1))
    np.testing.assert_allclose(rating_weights(ratings, 1.0, 0.5, scale), ranking_weights(ratings, 1.0, 0.5))


def test_rating_weights_refuse_out_of_range():
    with pytest.raises(ValueError, match="1..4"):
        rating_weights([0, 2, 3, 4])
    with pytest.raises(ValueError, match="1..4"):
        rating_weights([5, 4, 3, 2])  # a 5-point rating read on the default scale
    with pytest.raises(ValueError, match="1..3"):
        rating_weights([4, 3, 2, 1], scale=3)
    with pytest.raises(ValueError, match="at least two points"):
        rating_weights([1, 1], scale=1)


def test_best_only_weights():
    np.testing.assert_allclose(best_only_weights([0.2, 0.9, 0.5, 0.9]), [0.0, 0.5, 0.0, 0.5])
    np.testing.assert_allclose(best_only_weights([0.3, 0.3, 0.3]), [0.0, 0.0, 0.0])
    assert not informative(best_only_weights([0.3, 0.3, 0.3]))
    assert informative(ranking_weights([0.3, 0.3, 0.4]))


def _two_candidates():
    """A 2 x 2 image with p = [[.5, .75], [.25, .5]] and two candidates differing in pixel (1, 0)."""
    logits = torch.tensor([[[0.0, math.log(3)], [-math.log(3), 0.0]]])
    a = torch.tensor([[1, 1], [0, 0]])
    b = torch.tensor([[1, 1], [1, 0]])
    return logits, torch.stack([a, b])[None].bool()


def test_candidate_log_likelihood_reductions_by_hand():
    logits, cands = _two_candidates()
    la = math.log(0.5) + math.log(0.75) + math.log(0.75) + math.log(0.5)
    lb = math.log(0.5) + math.log(0.75) + math.log(0.25) + math.log(0.5)
    torch.testing.assert_close(candidate_log_likelihood(logits, cands, "sum"), torch.tensor([[la, lb]]))
    torch.testing.assert_close(candidate_log_likelihood(logits, cands, "mean"), torch.tensor([[la / 4, lb / 4]]))
    torch.testing.assert_close(candidate_log_likelihood(logits[:, None], cands, "disagreement_mean"),
                               torch.tensor([[math.log(0.75), math.log(0.25)]]))
    assert disagreement_region(cands).tolist() == [[[False, False], [True, False]]]
    with pytest.raises(ValueError, match="unknown reduction"):
        candidate_log_likelihood(logits, cands, "median")


def test_preference_loss_values_by_hand():
    policy = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    reference = torch.tensor([[-1.5, -2.0, -2.5, -4.0]])
    weights = torch.tensor([[1.0, 0.5, -0.5, -1.0]])
    # rewards = beta * (policy - reference) = (0.5, 0, -0.5, 0) -> margin = 0.5 + 0 + 0.25 + 0 = 0.75
    values, info = preference_loss(policy, reference, weights, "dpo", beta=1.0)
    torch.testing.assert_close(info["margin"], torch.tensor([0.75]))
    torch.testing.assert_close(values, torch.tensor([math.log1p(math.exp(-0.75))]))
    torch.testing.assert_close(info["reward_gap"], torch.tensor([0.5]))  # best (0.5) - worst (0)
    values, _ = preference_loss(policy, reference, weights, "ipo", beta=2.0, ipo_target=1.0)
    torch.testing.assert_close(values, torch.tensor([(1.5 - 1.0) ** 2]))
    # the rating weights of ratings (4, 4, 4, 3) give the same formula with other weights
    w = torch.from_numpy(rating_weights([4, 4, 4, 3])).float()[None]
    values, info = preference_loss(policy, reference, w, "dpo")
    margin = 0.125 * 0.5 + 0.125 * 0 + 0.125 * -0.5 - 0.375 * 0
    torch.testing.assert_close(values, torch.tensor([math.log1p(math.exp(-margin))]))


def test_ties_give_zero_loss_and_no_nan():
    logits = torch.zeros(2, 4, 4, requires_grad=True)
    cands = torch.zeros(2, 3, 4, 4, dtype=torch.bool)  # identical candidates: empty disagreement region
    ll = candidate_log_likelihood(logits, cands, "disagreement_mean")
    weights = torch.from_numpy(np.stack([ranking_weights([0.5, 0.5, 0.5])] * 2)).float()
    values, info = preference_loss(ll, ll.detach(), weights, "dpo")
    assert torch.equal(values, torch.zeros(2))
    values.sum().backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad.any()
    assert torch.isfinite(info["margin"]).all()


@pytest.mark.parametrize(("loss", "reduction"), [("dpo", "sum"), ("dpo", "disagreement_mean"),
                                                 ("ipo", "disagreement_mean"), ("dpo", "mean")])
def test_a_gradient_step_raises_the_best_over_the_worst(loss, reduction):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, 16, generator=gen)
    probs = torch.sigmoid(base)
    cands = torch.stack([probs >= t for t in (0.3, 0.4, 0.5, 0.6)], dim=1)  # nested thresholds
    weights = torch.from_numpy(ranking_weights([0.9, 0.8, 0.4, 0.2])).float()[None]  # low threshold is best
    logits = base.clone().requires_grad_(True)
    reference = candidate_log_likelihood(base, cands, reduction)

    def gap() -> float:
        ll = candidate_log_likelihood(logits, cands, reduction)
        return float((ll[0, 0] - ll[0, 3]).detach())

    before = gap()
    values, _ = preference_loss(candidate_log_likelihood(logits, cands, reduction), reference, weights, loss)
    values.sum().backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad / logits.grad.abs().max()
    assert gap() > before


def test_bernoulli_kl():
    logits = torch.tensor([[[0.0, 0.0]]])
    assert torch.allclose(bernoulli_kl(logits, torch.tensor([[[0.5, 0.5]]])), torch.zeros(1), atol=1e-6)
    # KL(Bern(0.5) || Bern(0.25)) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75), averaged with a zero pixel
    expected = (0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)) / 2
    torch.testing.assert_close(bernoulli_kl(logits, torch.tensor([[[0.25, 0.5]]])), torch.tensor([expected]),
                               rtol=1e-4, atol=1e-6)
