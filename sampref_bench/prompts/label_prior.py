"""A per-label location prior learned from a run's labeled cases, and the per-label choice of a saliency component.

The weights-free saliency (:mod:`.saliency`) ignores the label's text, so the largest component of its CRF mask
used to be the region of every label of a slice. With the prompt setting ``component_choice="label_prior"`` (the
default of a dataset with two or more foreground labels, :mod:`.settings`) each label gets the CRF component that
best matches where that label lies in the run's labeled cases instead:

* **Prior** (:func:`learn_label_prior`): the valid (unpadded) ``h x w`` region of a preprocessed slice is cut into a
  ``G x G`` grid of equal cells (pixel ``x`` falls into column ``floor((x + 0.5) / w * G)``, rows likewise), so a
  position is relative to the image whatever its size or aspect ratio. A mask's *occupancy* is the ``(G, G)`` share
  of each cell's pixels inside it (:func:`occupancy`). A label's prior is the mean occupancy of that label over
  every slice of the given cases that holds it: ``(G, G)`` in [0, 1]. Only the labels of the cases handed in are
  read; a trainer hands in its ``roles.labeled`` (never a validation case).
* **Choice** (:func:`choose_component`): every candidate (8-connected component of the CRF mask,
  :func:`~.regions.connected_components`) is mapped to the same grid and scored by its soft Dice with the label's
  prior ``P``: ``2 sum(P c) / (sum(P) + sum(c))`` for its occupancy ``c``, high for a component in the label's
  usual place and of its usual extent. The highest score wins, ties going to the lowest component number (raster
  order of the first pixel). When no candidate overlaps the prior, the one whose centroid is nearest to the prior's
  (mass-weighted) centroid wins, ties likewise. A label absent from every labeled slice (an all-zero prior) keeps
  the largest component, as the ``"saliency"`` choice does. Labels are chosen independently: two labels may get the
  same component (a slice whose CRF mask has one region, or labels that overlap).

Caching: the candidate components depend on the image and the prompt settings only and are cached beside the prompts
(:meth:`~.store.PromptStore.components`); the choice depends on the run's labeled cases (fold, fraction) and is made
at run time, never written to the shared cache, so no run reads a choice made from another run's labels.
:meth:`LabelPrior.digest` names a prior: the store's in-memory memo of choices is keyed by it, ``config.json``
records it and the checkpoint stores the prior itself (a finished run predicts without reading a label).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: How a label's region is picked among the CRF mask's components: the largest (``"saliency"``, the same region for
#: every label of a slice) or the best match of the label's location prior (``"label_prior"``).
COMPONENT_CHOICES = ("saliency", "label_prior")
#: The behaviour of every run made before ``component_choice`` existed (and what its absence in a record means).
LEGACY_COMPONENT_CHOICE = "saliency"
#: Cells per side of the prior's normalised grid.
PRIOR_GRID = 32


def _cells(valid: tuple[int, int], grid: int) -> np.ndarray:
    """``(h, w)`` int64 cell index ``row * grid + column`` of every pixel of the valid region."""
    h, w = int(valid[0]), int(valid[1])
    rows = np.minimum(((np.arange(h) + 0.5) / h * grid).astype(np.int64), grid - 1)
    cols = np.minimum(((np.arange(w) + 0.5) / w * grid).astype(np.int64), grid - 1)
    return rows[:, None] * grid + cols[None, :]


def _pixels_per_cell(cells: np.ndarray, grid: int) -> np.ndarray:
    """``(grid * grid,)`` float64 pixel count of each cell (1 for a cell no pixel falls into, to divide by)."""
    return np.maximum(np.bincount(cells.ravel(), minlength=grid * grid), 1).astype(np.float64)


def occupancy(mask: np.ndarray, valid: tuple[int, int], grid: int = PRIOR_GRID) -> np.ndarray:
    """``(grid, grid)`` float64 share of each cell's pixels inside ``mask``.

    Args:
        mask: ``(S, S)`` (or larger than ``valid``) bool mask in the preprocessed frame; only ``mask[:h, :w]`` is read.
        valid: ``(h, w)`` of the unpadded image at the top left.
        grid: cells per side.
    """
    h, w = int(valid[0]), int(valid[1])
    cells = _cells((h, w), grid)
    inside = np.bincount(cells.ravel(), weights=np.asarray(mask[:h, :w], np.float64).ravel(), minlength=grid * grid)
    return (inside / _pixels_per_cell(cells, grid)).reshape(grid, grid)


def component_occupancies(components: np.ndarray, n: int, valid: tuple[int, int],
                          grid: int = PRIOR_GRID) -> np.ndarray:
    """``(n, grid, grid)`` float64 :func:`occupancy` of components ``1..n`` of an ``(S, S)`` int component map."""
    h, w = int(valid[0]), int(valid[1])
    cells = _cells((h, w), grid)
    ids = np.asarray(components[:h, :w], np.int64)
    keep = ids > 0
    flat = (ids[keep] - 1) * grid * grid + cells[keep]
    counts = np.bincount(flat, minlength=n * grid * grid).reshape(n, grid * grid)
    return (counts / _pixels_per_cell(cells, grid)[None, :]).reshape(n, grid, grid)


def _centroid(weights: np.ndarray) -> np.ndarray:
    """``(2,)`` ``x, y`` mass-weighted mean cell centre of a ``(G, G)`` map, in units of the valid region (0..1)."""
    grid = weights.shape[-1]
    centres = (np.arange(grid) + 0.5) / grid
    total = float(weights.sum())
    return np.array([(weights.sum(axis=0) * centres).sum() / total, (weights.sum(axis=1) * centres).sum() / total])


def component_scores(components: np.ndarray, n: int, valid: tuple[int, int], prior: np.ndarray) -> np.ndarray:
    """``(n,)`` float64 soft Dice of components ``1..n`` with a ``(G, G)`` prior: ``2 sum(P c) / (sum(P) + sum(c))``."""
    occ = component_occupancies(components, n, valid, prior.shape[-1])
    overlap = (occ * prior[None]).sum(axis=(1, 2))
    return 2.0 * overlap / np.maximum(float(prior.sum()) + occ.sum(axis=(1, 2)), 1e-12)


def choose_component(components: np.ndarray, n: int, valid: tuple[int, int], prior: np.ndarray) -> int:
    """The component (``1..n``) of an ``(S, S)`` int component map best matching a ``(G, G)`` prior; 0 if ``n`` is 0.

    Highest :func:`component_scores`, ties to the lowest number; without any overlap the centroid nearest the
    prior's; an all-zero prior gives the largest component (ties: the lowest number), as ``"saliency"`` does.
    """
    if n <= 0:
        return 0
    if not float(prior.sum()) > 0:
        h, w = int(valid[0]), int(valid[1])
        sizes = np.bincount(np.asarray(components[:h, :w], np.int64).ravel(), minlength=n + 1)[1:n + 1]
        return 1 + int(np.argmax(sizes))
    scores = component_scores(components, n, valid, prior)
    if float(scores.max()) > 0:
        return 1 + int(np.argmax(scores))
    occ = component_occupancies(components, n, valid, prior.shape[-1])
    target = _centroid(prior)
    distances = [float(np.linalg.norm(_centroid(o) - target)) if o.sum() > 0 else np.inf for o in occ]
    return 1 + int(np.argmin(distances))


@dataclass(frozen=True)
class LabelPrior:
    """Where each foreground label lies in the labeled cases, on the normalised ``grid x grid`` frame.

    ``maps``: label value -> ``(grid, grid)`` float32 mean occupancy over the slices holding the label (all zeros
    for a label never seen); ``slices``: label value -> how many slices were averaged; ``n_cases``: how many cases
    were read.
    """

    grid: int
    maps: dict[int, np.ndarray]
    slices: dict[int, int]
    n_cases: int

    def map(self, label: int) -> np.ndarray:
        """``(grid, grid)`` float32 prior of ``label`` (zeros for a label the prior does not know)."""
        found = self.maps.get(int(label))
        return found if found is not None else np.zeros((self.grid, self.grid), np.float32)

    def digest(self) -> str:
        """16 hex digits naming the prior's content (grid, labels, maps and slice counts)."""
        h = hashlib.sha256(f"label-prior-v1 grid={self.grid} n_cases={self.n_cases}".encode())
        for label in sorted(self.maps):
            h.update(f" l{label} s{self.slices.get(label, 0)} ".encode())
            h.update(np.ascontiguousarray(self.maps[label], np.float32).tobytes())
        return h.hexdigest()[:16]

    def to_state(self) -> dict[str, Any]:
        """The prior as plain lists and numbers (a checkpoint entry that ``torch.load(weights_only=True)`` reads)."""
        return {"grid": self.grid, "n_cases": self.n_cases, "digest": self.digest(),
                "labels": {int(v): {"slices": int(self.slices.get(v, 0)), "map": self.maps[v].astype(float).tolist()}
                           for v in sorted(self.maps)}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabelPrior:
        """Inverse of :meth:`to_state`; a ``ValueError`` when the stored digest does not match the content."""
        prior = cls(int(state["grid"]), {int(v): np.asarray(e["map"], np.float32) for v, e in state["labels"].items()},
                    {int(v): int(e["slices"]) for v, e in state["labels"].items()}, int(state["n_cases"]))
        if state.get("digest") not in (None, prior.digest()):
            raise ValueError(f"label prior digest {state.get('digest')} does not match its content ({prior.digest()})")
        return prior

    def summary(self) -> dict[str, Any]:
        """For ``config.json``: grid, cases read, digest, and per label the slices averaged, the prior's centroid
        ``x, y`` and its mass (the mean share of the valid region the label covers), both relative to the valid
        region (``None`` for a label never seen)."""
        labels = {}
        for v in sorted(self.maps):
            m = self.maps[v].astype(np.float64)
            seen = float(m.sum()) > 0
            labels[str(v)] = {"slices": int(self.slices.get(v, 0)),
                              "centroid_xy": [round(float(c), 4) for c in _centroid(m)] if seen else None,
                              "mean_share": round(float(m.mean()), 4)}
        return {"grid": self.grid, "n_cases": self.n_cases, "digest": self.digest(), "labels": labels}


def learn_label_prior(labels: Any, cases: Iterable[str], label_values: Iterable[int],
                      valid_region: Callable[[str], tuple[int, int]], grid: int = PRIOR_GRID) -> LabelPrior:
    """The :class:`LabelPrior` of ``label_values`` over every slice of ``cases`` that holds each label.

    Args:
        labels: a :class:`~sampref_bench.planners.data.LabelStore` serving ``cases`` (it refuses any other case).
        cases: the cases whose labels are read (a trainer's ``roles.labeled``); read in sorted order.
        label_values: the foreground label values.
        valid_region: ``case`` -> ``(h, w)`` of its unpadded image in the preprocessed square (image metadata).
        grid: cells per side of the normalised frame.
    """
    values = [int(v) for v in label_values]
    sums = {v: np.zeros((grid, grid), np.float64) for v in values}
    counts = dict.fromkeys(values, 0)
    case_list = sorted(set(cases))
    for case in case_list:
        present = labels.labels_per_slice(case)
        valid = valid_region(case)
        seg: np.ndarray | None = None
        for k, found in enumerate(present):
            for v in values:
                if v in found:
                    seg = labels.seg(case) if seg is None else seg
                    sums[v] += occupancy(seg[k] == v, valid, grid)
                    counts[v] += 1
    maps = {v: (sums[v] / counts[v] if counts[v] else sums[v]).astype(np.float32) for v in values}
    return LabelPrior(grid, maps, counts, len(case_list))
