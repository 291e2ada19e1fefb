"""Statistics of the results table: mean and std over folds, the paired Wilcoxon test, Holm's correction.

:func:`holm_adjust` is Holm's step-down procedure (Holm 1979): with the ``m`` defined p-values sorted ascending,
``p_(1) <= ... <= p_(m)``, the adjusted value of the ``i``-th (1-based) is
``max_{j <= i} min(1, (m - j + 1) * p_(j))``. It controls the family-wise error rate at the nominal level under
any dependence between the tests, and rejects at least as much as Bonferroni. NaN p-values (a row with too few
paired cases, or no baseline run) stay NaN and are not part of the family: they do not raise ``m``, which counts
the finite p-values only. It equals ``statsmodels.stats.multitest.multipletests(p, method="holm")`` applied to the
finite p-values (the tests compare the two); it is kept here because statsmodels has no notion of a p-value
outside the family, and a NaN handed to it would not stay out of ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Fewest paired cases a Wilcoxon p-value is reported for.
MIN_PAIRS = 5


@dataclass(frozen=True)
class FoldStat:
    """Mean and std (ddof=1; ``None`` with fewer than two values) over the non-NaN fold values."""

    mean: float
    std: float | None
    n: int


@dataclass(frozen=True)
class PairedTest:
    """Row minus baseline over paired cases: mean difference, number of pairs, Wilcoxon p-value, note, the
    configuration of the baseline row it was paired with (``None`` when there was none) and the fraction of the
    baseline it is against (the row's own without ``@fraction``; the one asked for, as the run folder spells it,
    with it; set even when no baseline row was found, to say which was looked for). ``p_holm``: ``p_value``
    Holm-adjusted over every defined p-value of the table (NaN where ``p_value`` is)."""

    mean_difference: float
    n_pairs: int
    p_value: float
    note: str = ""
    baseline_configuration: str | None = None
    baseline_fraction: str | None = None
    p_holm: float = math.nan


def fold_stat(values: Sequence[float]) -> FoldStat:
    """Mean and std (ddof=1) of the non-NaN ``values``; std is ``None`` with fewer than two of them."""
    array = np.asarray(values, dtype=np.float64)
    kept = array[~np.isnan(array)]
    if kept.size == 0:
        return FoldStat(math.nan, None, 0)
    return FoldStat(float(kept.mean()), float(kept.std(ddof=1)) if kept.size >= 2 else None, int(kept.size))


def paired_test(values: Mapping[Hashable, float], reference: Mapping[Hashable, float]) -> PairedTest:
    """Wilcoxon signed-rank test of ``values - reference`` over the keys both hold with non-NaN values."""
    from scipy.stats import wilcoxon

    common = [k for k in values if k in reference and not math.isnan(values[k]) and not math.isnan(reference[k])]
    diffs = np.array([values[k] - reference[k] for k in common], dtype=np.float64)
    if diffs.size == 0:
        return PairedTest(math.nan, 0, math.nan, "no case scored by both; no test")
    mean, n = float(diffs.mean()), int(diffs.size)
    if n < MIN_PAIRS:
        return PairedTest(mean, n, math.nan, f"only {n} paired cases (< {MIN_PAIRS}); no p-value")
    if not np.any(diffs):
        return PairedTest(mean, n, math.nan, "all paired differences are zero; no p-value")
    return PairedTest(mean, n, float(wilcoxon(diffs).pvalue))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in the order given; NaN in, NaN out (and left out of the family size ``m``, which
    counts the finite p-values only).

    Raises :class:`ValueError` for any other p-value outside ``[0, 1]``, infinities included (a bug upstream, not
    a user mistake).
    """
    defined = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    bad = [p for p, _ in defined if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"p-values must lie in [0, 1], got {bad}")
    adjusted = [math.nan] * len(p_values)
    m, running = len(defined), 0.0
    for rank, (p, index) in enumerate(sorted(defined)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted
