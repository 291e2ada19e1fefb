"""Semi-supervised building blocks against hand computations: ramp-ups, EMA, the two-stream sampler and the
unlabeled losses and masks (CPS, UA-MT uncertainty, FixMatch confidence)."""

import math

import pytest
import torch

from sampref_bench.trainers.unet.parts import (
    TwoStreamBatchSampler,
    confidence_pseudo_labels,
    cps_loss,
    ema_decay,
    ema_update,
    entropy_uncertainty,
    fixmatch_loss,
    linear_rampup,
    masked_consistency,
    sigmoid_rampup,
    uncertainty_mask,
    uncertainty_threshold,
)


def test_rampups_hand_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))  # 0.006738
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))  # 0.286505
    assert sigmoid_rampup(100, 100) == sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    assert linear_rampup(25, 100) == 0.25 and linear_rampup(-1, 100) == 0.0 and linear_rampup(200, 100) == 1.0


def test_ema_decay_warmup_and_update():
    assert [ema_decay(s, 0.99) for s in (0, 1, 3)] == [0.0, 0.5, 0.75]
    assert ema_decay(99, 0.99) == pytest.approx(0.99) and ema_decay(10_000, 0.99) == 0.99
    student, teacher = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(3.0)
        teacher.weight.fill_(1.0)
        student.running_mean.fill_(7.0)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.75 * 1.0 + 0.25 * 3.0))  # 1.5
    assert torch.equal(teacher.running_mean, student.running_mean)  # buffers are copied
    ema_update(teacher, student, ema_decay(0, 0.99))  # step 0: the teacher becomes the student
    assert torch.equal(teacher.weight, student.weight)


def test_two_stream_sampler_composition():
    sampler = TwoStreamBatchSampler(n_labeled=5, n_unlabeled=7, labeled_per_batch=2, unlabeled_per_batch=3,
                                    n_batches=10, seed=3)
    batches = sampler.batches(epoch=0)
    assert len(batches) == 10 and all(len(lab) == 2 and len(unl) == 3 for lab, unl in batches)
    labeled = [i for lab, _ in batches for i in lab]
    passes = [labeled[k:k + 5] for k in range(0, 20, 5)]
    assert all(sorted(p) == list(range(5)) for p in passes)  # whole passes over the labeled slices
    assert len({tuple(p) for p in passes}) > 1  # reshuffled each pass
    unlabeled = [i for _, unl in batches for i in unl]
    cycles = [unlabeled[k:k + 7] for k in range(0, 28, 7)]
    assert all(sorted(c) == list(range(7)) for c in cycles) and len(unlabeled) == 30  # the stream cycles
    assert sampler.batches(0) == batches  # seeded by (seed, epoch)
    assert sampler.batches(1) != batches
    other = TwoStreamBatchSampler(5, 7, 2, 3, 10, seed=4)
    assert other.batches(0) != batches
    empty = TwoStreamBatchSampler(5, 0, 2, 0, 3, seed=3).batches(0)
    assert [unl for _, unl in empty] == [[], [], []] and all(len(lab) == 2 for lab, _ in empty)


def test_cps_loss_is_symmetric_and_hand_computed():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5, generator=generator), torch.randn(2, 3, 4, 5, generator=generator)
    assert cps_loss(a, b).item() == pytest.approx(cps_loss(b, a).item())
    # one pixel, two classes: argmax a = 0, argmax b = 1
    la = torch.tensor([2.0, 0.0]).reshape(1, 2, 1, 1)
    lb = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    expected = math.log(1 + math.exp(2)) + math.log(1 + math.e)  # CE(a, 1) + CE(b, 0) = 2.1269 + 1.3133
    assert cps_loss(la, lb).item() == pytest.approx(expected)
    la.requires_grad_(True)
    lb.requires_grad_(True)
    cps_loss(la, lb).backward()
    # d CE(b, 0) / d b = softmax(b) - onehot(0); the pseudo-label argmax(a) passes no gradient to a
    softmax_b = torch.softmax(lb.detach(), dim=1)
    assert torch.allclose(lb.grad, softmax_b - torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1))


def test_uamt_uncertainty_mask_and_threshold_ramp():
    # T = 4 passes, one slice, two classes, two pixels: pixel 0 agrees (p0 = 0.99 every pass), pixel 1 wavers
    # (passes 0.9 / 0.3 for class 0 -> mean 0.6, entropy 0.673 nats)
    passes = torch.zeros(4, 1, 2, 1, 2)
    passes[:, 0, 0, 0, 0] = 0.99
    passes[:, 0, 0, 0, 1] = torch.tensor([0.9, 0.3, 0.9, 0.3])
    passes[:, 0, 1] = 1 - passes[:, 0, 0]
    entropy = entropy_uncertainty(passes.mean(0))
    assert entropy[0, 0, 0, 1].item() == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)), abs=1e-5)
    start = uncertainty_threshold(0, 1000, 2)
    end = uncertainty_threshold(1000, 1000, 2)
    assert start == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2)) and end == pytest.approx(math.log(2))
    assert uncertainty_mask(passes, start)[0, 0, 0].tolist() == [1.0, 0.0]  # the wavering pixel is masked early
    assert uncertainty_mask(passes, end)[0, 0, 0].tolist() == [1.0, 1.0]  # ... and kept once the threshold is ln 2
    uniform = torch.full((1, 4, 3, 3), 0.25)
    assert torch.allclose(entropy_uncertainty(uniform), torch.full((1, 1, 3, 3), math.log(4)))
    distance = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert masked_consistency(distance, torch.ones(1, 1, 2, 2)).item() == pytest.approx(distance.mean().item())
    keep_one = torch.zeros(1, 1, 2, 2)
    keep_one[0, 0, 1, 1] = 1
    assert masked_consistency(distance, keep_one).item() == pytest.approx((3 + 7) / 2)
    assert masked_consistency(distance, torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_fixmatch_confidence_mask_and_loss():
    # three pixels, two classes: confident class 1 (p = 0.99), unsure class 0 (p = 0.9), confident class 0
    p = torch.tensor([[0.01, 0.99], [0.9, 0.1], [0.97, 0.03]])
    logits = torch.log(p).T.reshape(1, 2, 1, 3)
    labels, mask = confidence_pseudo_labels(logits, 0.95)
    assert labels.flatten().tolist() == [1, 0, 0] and mask.flatten().tolist() == [1.0, 0.0, 1.0]
    strong = torch.zeros(1, 2, 1, 3)  # uniform prediction: CE = ln 2 at every pixel
    assert fixmatch_loss(strong, labels, mask).item() == pytest.approx(2 * math.log(2) / 3)  # mean over all pixels
    assert fixmatch_loss(strong, labels, torch.zeros_like(mask)).item() == 0.0
