"""Per-epoch randomness of the resumable loop: every random draw of an epoch comes from generators seeded by
``(seed, epoch, stream)``, so a run continued after a kill draws what an uninterrupted run draws."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The numpy generator of one epoch's randomness (sample order, jitter): a pure function of its inputs."""
    return np.random.default_rng([seed, epoch, stream])


def seeded_passes(rng: np.random.Generator, n_items: int, n_batches: int, size: int) -> list[list[int]]:
    """``n_batches`` lists of ``size`` indices into ``n_items`` items: successive random permutations (whole passes
    over the items, each reshuffled) cut into batches; empty batches when there is no item."""
    order: list[int] = []
    while n_items and len(order) < n_batches * size:
        order.extend(rng.permutation(n_items).tolist())
    return [order[b * size:(b + 1) * size] for b in range(n_batches)]
