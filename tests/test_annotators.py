"""Annotators: IoU buckets, seeded rating noise, the preferences file and its checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sampref_bench.planners.data import Sample
from sampref_bench.trainers.dpo.annotators import (
    FORMAT,
    Annotation,
    FileAnnotator,
    bucket_ratings,
    candidates_sha,
    flip_adjacent_ratings,
    mask_iou,
    preference_entry,
    sample_rng,
    swap_adjacent_places,
)
from sampref_bench.trainers.dpo.losses import ranking_weights, rating_weights
from sampref_bench.utilities.errors import SamprefError


def test_bucket_ratings_follow_the_design_edges():
    ious = [0.0, 0.39, 0.4, 0.549, 0.55, 0.69, 0.7, 1.0]
    assert bucket_ratings(np.array(ious)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_mask_iou_by_hand():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True                      # 4 pixels
    a = np.zeros((4, 4), bool)
    a[:2, :3] = True                         # 6 pixels, 4 shared -> 4/6
    empty = np.zeros((4, 4), bool)
    np.testing.assert_allclose(mask_iou(np.stack([a, mask, empty]), mask), [4 / 6, 1.0, 0.0])
    np.testing.assert_allclose(mask_iou(np.stack([empty, a]), empty), [1.0, 0.0])  # both empty -> 1


def test_rating_noise():
    ratings = np.array([1, 2, 3, 4, 2])
    rng = np.random.default_rng(0)
    assert flip_adjacent_ratings(ratings, 0.0, rng).tolist() == ratings.tolist()
    flipped = flip_adjacent_ratings(ratings, 1.0, np.random.default_rng(0))
    assert np.all(np.abs(flipped - ratings) == 1)
    assert flipped[0] == 2 and flipped[3] == 3  # the ends move inward
    # at p = 0.3 roughly 30 % move
    many = np.full(20000, 2)
    moved = flip_adjacent_ratings(many, 0.3, np.random.default_rng(1)) != many
    assert 0.28 < moved.mean() < 0.32


def test_ranking_noise_swaps_adjacent_places():
    scores = np.array([0.9, 0.7, 0.5, 0.3])
    np.testing.assert_array_equal(swap_adjacent_places(scores, 0.0, np.random.default_rng(0)), [0, -1, -2, -3])
    # p = 1: each adjacent pair swaps in turn from the top, so the best sinks to the bottom
    np.testing.assert_array_equal(swap_adjacent_places(scores, 1.0, np.random.default_rng(0)), [-3, 0, -1, -2])


def test_noise_is_seeded_per_sample():
    a, b = Sample("x", 0, 1), Sample("y", 0, 1)
    assert sample_rng(3, a).random() == sample_rng(3, a).random()
    assert sample_rng(3, a).random() != sample_rng(3, b).random()


def _candidates(k=4, size=8):
    out = np.zeros((k, size, size), bool)
    for i in range(k):
        out[i, : 2 + i, : 2 + i] = True
    return out


def _write(path, entries, **extra):
    path.write_text(json.dumps({"format": FORMAT, "scale": 4, "entries": entries, **extra}))
    return path


def test_file_annotator_reproduces_written_annotations(tmp_path):
    cands = _candidates()
    s1, s2 = Sample("a", 0, 1), Sample("b", 0, 1)
    ranking = Annotation(np.array([0.8, 0.8, 0.3, 0.1]))
    rating = Annotation(np.array([4.0, 3, 3, 1]), np.array([4, 3, 3, 1]))
    path = _write(tmp_path / "p.json", [preference_entry(s1, cands, ranking), preference_entry(s2, cands, rating)])
    annotator = FileAnnotator(path)
    annotator.check({s1: cands, s2: cands})
    assert json.loads(path.read_text())["entries"][0]["ranking"] == [[0, 1], 2, 3]
    np.testing.assert_allclose(ranking_weights(annotator.annotate(s1, cands).scores), ranking_weights(ranking.scores))
    got = annotator.annotate(s2, cands)
    np.testing.assert_allclose(rating_weights(got.ratings), rating_weights(rating.ratings))


def test_file_annotator_lists_every_problem(tmp_path):
    cands = _candidates()
    known = {Sample("a", 0, 1): cands, Sample("b", 0, 1): cands, Sample("c", 0, 1): cands, Sample("d", 0, 1): cands,
             Sample("e", 0, 1): cands}
    entries = [
        {"case": "a", "slice": 0, "label": 1, "ratings": [1, 2, 5, 4], "ranking": None},       # out of range
        {"case": "b", "slice": 0, "label": 1, "ratings": [1, 2], "ranking": None},             # wrong length
        {"case": "c", "slice": 0, "label": 1, "ratings": None, "ranking": [0, 1, 7, 2]},       # unknown candidate
        {"case": "zz", "slice": 0, "label": 1, "ratings": [1, 1, 1, 1], "ranking": None},      # unknown case
        {"case": "d", "slice": 0, "label": 1, "ratings": [1, 1, 1, 1], "ranking": [0, 1, 2, 3]},  # both given
        # "e" is missing
    ]
    with pytest.raises(SamprefError) as err:
        FileAnnotator(_write(tmp_path / "p.json", entries)).check(known)
    text = str(err.value)
    for needle in ("out of range 1..4", "must list 4 values", "unknown candidate(s) [7]", "'zz slice 0 label 1'",
                   "exactly one of ratings or ranking", "no entry for rated sample(s) ['e slice 0 label 1']",
                   "6 problem(s)"):
        assert needle in text, needle


def test_file_annotator_refuses_changed_candidates_and_rankings_for_ratings(tmp_path):
    cands = _candidates()
    s = Sample("a", 0, 1)
    entry = {"case": "a", "slice": 0, "label": 1, "candidates_sha": candidates_sha(cands[::-1].copy()),
             "ratings": None, "ranking": [0, 1, 2, 3]}
    with pytest.raises(SamprefError) as err:
        FileAnnotator(_write(tmp_path / "p.json", [entry]), needs_ratings=True).check({s: cands})
    assert "candidates changed" in str(err.value) and "DPORating needs ratings" in str(err.value)
    with pytest.raises(SamprefError, match="not a sampref preferences file"):
        FileAnnotator(_write(tmp_path / "q.json", [], format="other"))


def _rated(case, ratings):
    return {"case": case, "slice": 0, "label": 1, "ratings": ratings, "ranking": None}


def test_file_annotator_reads_ratings_on_the_files_scale(tmp_path):
    cands = _candidates()
    s = Sample("a", 0, 1)
    five = FileAnnotator(_write(tmp_path / "five.json", [_rated("a", [5, 4, 3, 1])], scale=5))
    five.check({s: cands})
    got = five.annotate(s, cands)
    assert five.scale == 5 and got.scale == 5 and got.ratings.tolist() == [5, 4, 3, 1]
    three = FileAnnotator(_write(tmp_path / "three.json", [_rated("a", [3, 2, 2, 1])], scale=3))
    three.check({s: cands})
    assert three.annotate(s, cands).scale == 3
    # a file of rankings needs no scale
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({"format": FORMAT, "entries": [
        {"case": "a", "slice": 0, "label": 1, "ratings": None, "ranking": [0, 1, 2, 3]}]}))
    FileAnnotator(path).check({s: cands})


@pytest.mark.parametrize(("scale", "ratings", "needle"), [
    (5, [6, 4, 3, 1], "rating(s) [6] out of range 1..5"),
    (3, [4, 3, 2, 1], "rating(s) [4] out of range 1..3"),
    (None, [3, 2, 2, 1], "gives ratings but no \"scale\""),
    ("five", [3, 2, 2, 1], "\"scale\" must be a whole number of rating points, at least 2"),
    (1, [1, 1, 1, 1], "got 1"),
])
def test_file_annotator_refuses_ratings_outside_the_files_scale(tmp_path, scale, ratings, needle):
    cands = _candidates()
    path = tmp_path / "p.json"
    content = {"format": FORMAT, "entries": [_rated("a", ratings)]}
    if scale is not None:
        content["scale"] = scale
    path.write_text(json.dumps(content))
    with pytest.raises(SamprefError) as err:
        FileAnnotator(path).check({Sample("a", 0, 1): cands})
    assert needle in str(err.value) and str(path) in str(err.value) and "1 problem(s)" in str(err.value)
