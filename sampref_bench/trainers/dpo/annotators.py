"""Annotators of candidate masks: who says which candidate is better (``docs/preference_optimization.md``).

An annotator looks at the K candidate masks of one rated sample (case, slice, label) and returns an
:class:`Annotation`: a score per candidate, higher is better, from which the DPO trainers derive preference
weights (:mod:`sampref_bench.trainers.dpo.losses`).

* :class:`SimulatedAnnotator` (benchmarking) reads the hidden ground truth of the rated cases, and nothing
  else does: it scores each candidate by its IoU with the hidden mask. As a *rater* it gives the bucket
  ratings 1..4 (IoU < 0.4, 0.4-0.55, 0.55-0.7, >= 0.7); as a *ranker* it orders candidates by IoU. Optional
  noise flips a rating to an adjacent one (a ranking: swaps adjacent places) with probability ``noise``, seeded
  per sample, which reproduces the paper's robustness test.
* :class:`FileAnnotator` (a real lab) reads a JSON file of human ratings or rankings, in the format that
  ``sampref_candidates`` writes as a template and that every DPO run writes as ``preferences.json``
  (:data:`FORMAT`). Every problem in the file is reported at once. Its ratings may use any scale of two or more
  points (``"scale"``); the rating trainers weight them on that scale
  (:func:`~sampref_bench.trainers.dpo.losses.rating_weights`).

Preferences file (:data:`FORMAT`)::

    {"format": "sampref-preferences/1", "dataset": ..., "fold": 0, "scale": 4,
     "entries": [{"case": "benign_001", "slice": 0, "label": 1, "candidates_sha": "...",
                  "images": ["benign_001_s0_l1_c0.png", ...],
                  "ratings": [3, 4, 2, 1],            # 1 (bad) .. scale (good) per candidate, or
                  "ranking": [1, 0, [2, 3]]}]}        # candidate indices best to worst, [..] = a tie

An entry gives ``ratings`` or ``ranking`` (the other ``null``). ``scale`` is the number of rating points (an
integer of at least 2; ratings are ``1..scale``); a file whose entries give ratings must state it, so that a
3- or 5-point file is never read as a 4-point one. ``candidates_sha`` ties the entry to the exact candidate masks
it was made for: a stage-1 model or candidate setting that changed them is refused.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sampref_bench.planners.data import LabelStore, Sample
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError

FORMAT = "sampref-preferences/1"
#: Lower IoU edges of ratings 2, 3 and 4: IoU < 0.4 -> 1, 0.4-0.55 -> 2, 0.55-0.7 -> 3, >= 0.7 -> 4, the paper's
#: rating bins as sampref's design adopts them (``docs/preference_optimization.md``).
RATING_EDGES = (0.4, 0.55, 0.7)
SCALE = len(RATING_EDGES) + 1


@dataclass
class Annotation:
    """What an annotator says about the K candidates of one sample.

    ``scores`` (K,): higher is better (ratings, IoU, or minus the ranking place). ``ratings`` (K,) ints in
    1..``scale`` when the annotator rated. ``ious`` (K,) the candidates' IoU with the hidden mask, known only to a
    simulated annotator (diagnostics), else ``None``. ``scale``: the number of rating points the ratings use
    (:data:`SCALE` for the simulated annotator, the file's ``scale`` for a file).
    """

    scores: np.ndarray
    ratings: np.ndarray | None = None
    ious: np.ndarray | None = None
    scale: int = SCALE


def candidates_sha(candidates: np.ndarray) -> str:
    """A short digest of ``(K, H, W)`` binary candidate masks (their bits and shape)."""
    bits = np.packbits(np.asarray(candidates, dtype=bool).reshape(len(candidates), -1), axis=1)
    return hashlib.sha256(repr(candidates.shape).encode() + bits.tobytes()).hexdigest()[:16]


def mask_iou(candidates: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(K,)`` IoU of each of ``(K, H, W)`` candidates with ``(H, W)`` ``mask``; 1 where both are empty."""
    c = np.asarray(candidates, dtype=bool).reshape(len(candidates), -1)
    m = np.asarray(mask, dtype=bool).reshape(1, -1)
    inter = (c & m).sum(1)
    union = (c | m).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def bucket_ratings(ious: np.ndarray, edges: Sequence[float] = RATING_EDGES) -> np.ndarray:
    """``(K,)`` ratings 1..len(edges)+1 from IoUs: the number of edges at or below each IoU, plus one."""
    return 1 + np.searchsorted(np.asarray(edges), np.asarray(ious), side="right")


def sample_rng(seed: int, sample: Sample) -> np.random.Generator:
    """The noise generator of one sample: a function of the seed and the sample only (order-independent)."""
    return np.random.default_rng([seed, zlib.crc32(f"{sample.case}/{sample.slice}/{sample.label}".encode())])


def flip_adjacent_ratings(ratings: np.ndarray, p: float, rng: np.random.Generator, scale: int = SCALE) -> np.ndarray:
    """Each rating moves to an adjacent one (up or down with equal chance, inward at the ends of 1..scale) with
    probability ``p``."""
    out = ratings.copy()
    flip = rng.random(len(ratings)) < p
    direction = np.where(rng.random(len(ratings)) < 0.5, -1, 1)
    direction = np.where(out == 1, 1, np.where(out == scale, -1, direction))
    out[flip] += direction[flip]
    return out


def swap_adjacent_places(scores: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy ranking: walking from the best place down, each pair of adjacent places (groups of tied scores)
    swaps with probability ``p``. Returns scores ``-place`` (ties keep sharing a place)."""
    groups = sorted(np.unique(scores).tolist(), reverse=True)
    for i in range(len(groups) - 1):
        if rng.random() < p:
            groups[i], groups[i + 1] = groups[i + 1], groups[i]
    place = {value: index for index, value in enumerate(groups)}
    return -np.array([place[v] for v in scores.tolist()], dtype=np.float64)


class SimulatedAnnotator:
    """Rates or ranks candidates by IoU with the hidden ground truth of the rated cases (benchmarking only).

    ``labels`` is the one label store opened for the rated cases; ``kind`` is ``"rating"`` or ``"ranking"``.
    Its ratings use :data:`SCALE` (4) points, the buckets of :data:`RATING_EDGES`.
    """

    #: Rating points of the IoU buckets.
    scale: int = SCALE

    def __init__(self, labels: LabelStore, kind: str, noise: float = 0.0, seed: int = 0) -> None:
        if kind not in ("rating", "ranking"):
            raise ValueError(f"kind must be rating or ranking, got {kind!r}")
        if not 0.0 <= noise <= 1.0:
            raise SamprefError(f"rating_noise must lie in [0, 1], got {noise}")
        self.labels, self.kind, self.noise, self.seed = labels, kind, float(noise), int(seed)

    def describe(self) -> str:
        """Who judged, for messages."""
        return "the simulated annotator"

    def annotate(self, sample: Sample, candidates: np.ndarray) -> Annotation:
        """Score ``(K, H, W)`` binary candidates of ``sample``."""
        ious = mask_iou(candidates, self.labels.mask(sample))
        ratings = bucket_ratings(ious)
        rng = sample_rng(self.seed, sample)
        if self.kind == "rating":
            if self.noise > 0:
                ratings = flip_adjacent_ratings(ratings, self.noise, rng)
            return Annotation(ratings.astype(np.float64), ratings, ious, self.scale)
        scores = swap_adjacent_places(ious, self.noise, rng) if self.noise > 0 else ious.astype(np.float64)
        return Annotation(scores, None, ious, self.scale)


def ranking_scores(ranking: list[Any], k: int) -> np.ndarray:
    """``(K,)`` scores ``-place`` from a ranking of candidate indices best to worst (a nested list is a tie)."""
    scores = np.zeros(k)
    for place, item in enumerate(ranking):
        for index in item if isinstance(item, list) else [item]:
            scores[index] = -place
    return scores


def _ranking_problems(ranking: Any, k: int) -> list[str]:
    if not isinstance(ranking, list):
        return [f"ranking must be a list of candidate indices, got {ranking!r}"]
    flat = []
    for item in ranking:
        flat.extend(item if isinstance(item, list) else [item])
    problems = []
    bad = [i for i in flat if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < k]
    if bad:
        problems.append(f"ranking names unknown candidate(s) {bad} (candidates are 0..{k - 1})")
    elif sorted(flat) != list(range(k)):
        problems.append(f"ranking must name each candidate 0..{k - 1} exactly once, got {ranking}")
    return problems


class FileAnnotator:
    """Human ratings or rankings from a preferences file (:data:`FORMAT`), checked against the run's candidates.

    ``needs_ratings``: a rating trainer cannot use a ranking (it has no absolute grades). ``scale``: the file's
    number of rating points (:data:`SCALE` when the file gives none and holds no ratings; a file with ratings but
    without a valid ``scale`` is refused by :meth:`check`).
    """

    def __init__(self, path: str | Path, needs_ratings: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SamprefError(f"ratings file {self.path} does not exist (write a template with sampref_candidates)")
        content = load_json(self.path)
        if not isinstance(content, dict) or content.get("format") != FORMAT or not isinstance(
                content.get("entries"), list):
            raise SamprefError(f"{self.path} is not a sampref preferences file: expected a JSON object with "
                               f"\"format\": \"{FORMAT}\" and a list \"entries\" (see sampref_candidates --help)")
        self.needs_ratings = needs_ratings
        self.entries: dict[Sample, dict[str, Any]] = {}
        self._problems: list[str] = []
        self._scale_known = True
        self.scale = self._read_scale(content)
        for entry in content["entries"]:
            try:
                key = Sample(str(entry["case"]), int(entry.get("slice", 0)), int(entry["label"]))
            except (KeyError, TypeError, ValueError):
                self._problems.append(f"entry {entry!r} lacks case/label")
                continue
            if key in self.entries:
                self._problems.append(f"{_name(key)} appears twice")
            self.entries[key] = entry

    def _read_scale(self, content: dict[str, Any]) -> int:
        """The file's ``scale``; a missing or unusable one is recorded as a problem when entries give ratings."""
        raw = content.get("scale")
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 2:
            return raw
        rates = any(isinstance(e, dict) and e.get("ratings") is not None for e in content["entries"])
        if raw is None and not rates:
            return SCALE  # a file of rankings needs no scale
        self._scale_known = False
        if raw is None:
            self._problems.append(f"the file gives ratings but no \"scale\": add \"scale\": N at its top, N the "
                                  f"number of rating points (ratings are 1..N; sampref_candidates writes "
                                  f"\"scale\": {SCALE})")
        else:
            self._problems.append(f"\"scale\" must be a whole number of rating points, at least 2 (ratings are "
                                  f"1..scale), got {raw!r}")
        return SCALE

    def describe(self) -> str:
        """Who judged, for messages: the file."""
        return f"ratings file {self.path}"

    def check(self, candidates: dict[Sample, np.ndarray]) -> None:
        """Check every entry against the run's rated samples and their ``(K, H, W)`` candidates; raise one
        :class:`SamprefError` listing every problem (unknown cases or candidates, values out of range, missing
        samples, candidates that changed)."""
        problems = list(self._problems)
        unknown = sorted(_name(key) for key in self.entries if key not in candidates)
        if unknown:
            problems.append(f"unknown rated sample(s) (not rated cases of this fold and fraction): {unknown}")
        missing = sorted(_name(key) for key in candidates if key not in self.entries)
        if missing:
            problems.append(f"no entry for rated sample(s) {missing}")
        for key, entry in self.entries.items():
            if key not in candidates:
                continue
            k = len(candidates[key])
            where = _name(key)
            sha = entry.get("candidates_sha")
            if sha is not None and sha != candidates_sha(candidates[key]):
                problems.append(f"{where}: the candidates changed since this file was written (another stage-1 "
                                "model or candidate setting); write a new template with sampref_candidates")
            ratings, ranking = entry.get("ratings"), entry.get("ranking")
            if (ratings is None) == (ranking is None):
                problems.append(f"{where}: give exactly one of ratings or ranking")
            elif ratings is not None:
                if not isinstance(ratings, list) or len(ratings) != k:
                    problems.append(f"{where}: ratings must list {k} values (one per candidate), got {ratings!r}")
                elif self._scale_known:
                    bad = [r for r in ratings if not isinstance(r, int) or isinstance(r, bool) or
                           not 1 <= r <= self.scale]
                    if bad:
                        problems.append(f"{where}: rating(s) {bad} out of range 1..{self.scale}")
            else:
                if self.needs_ratings:
                    problems.append(f"{where}: DPORating needs ratings, this entry gives a ranking")
                problems.extend(f"{where}: {p}" for p in _ranking_problems(ranking, k))
        if problems:
            shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50
                                                   else "")
            raise SamprefError(f"{self.path} has {len(problems)} problem(s):\n  {shown}")

    def annotate(self, sample: Sample, candidates: np.ndarray) -> Annotation:
        """The file's scores for ``sample`` (call :meth:`check` first)."""
        entry = self.entries[sample]
        if entry.get("ratings") is not None:
            ratings = np.asarray(entry["ratings"], dtype=np.int64)
            return Annotation(ratings.astype(np.float64), ratings, None, self.scale)
        return Annotation(ranking_scores(entry["ranking"], len(candidates)), None, None, self.scale)


def _name(sample: Sample) -> str:
    return f"{sample.case} slice {sample.slice} label {sample.label}"


def ranking_from_scores(scores: np.ndarray) -> list[Any]:
    """Candidate indices best to worst from ``scores`` (higher is better); tied candidates form a nested list."""
    out: list[Any] = []
    for value in sorted(np.unique(scores).tolist(), reverse=True):
        tied = [int(i) for i in np.flatnonzero(scores == value)]
        out.append(tied[0] if len(tied) == 1 else tied)
    return out


def preference_entry(sample: Sample, candidates: np.ndarray, annotation: Annotation | None,
                     images: list[str] | None = None) -> dict[str, Any]:
    """One entry of a preferences file; ``annotation`` ``None`` leaves ratings and ranking empty (a template)."""
    entry: dict[str, Any] = {"case": sample.case, "slice": sample.slice, "label": sample.label,
                             "candidates_sha": candidates_sha(candidates), "ratings": None, "ranking": None}
    if images is not None:
        entry["images"] = images
    if annotation is not None:
        if annotation.ratings is not None:
            entry["ratings"] = [int(r) for r in annotation.ratings]
        else:
            entry["ranking"] = ranking_from_scores(annotation.scores)
    return entry
