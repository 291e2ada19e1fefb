"""DPO trainers end to end on a tiny model: stage-1 reuse and identity, resuming in stage 2, the annotator file,
the hidden labels of rated cases, and the guards."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from sampref_bench.planners.data import LabelStore
from sampref_bench.trainers.registry import get_trainer
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import DPO_TINY, copy_roots, prepared_dpo_roots

TINY = DPO_TINY


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The planned phantoms with a finished stage-1 run, built once for this module."""
    return prepared_dpo_roots(tmp_path_factory.mktemp("dpo_prepared"))


@pytest.fixture
def dataset(prepared, sampref_roots):
    """This test's own copy of :func:`prepared`."""
    return copy_roots(prepared, sampref_roots)


def _dpo(name, dataset, fraction=0.5, run_name=None, **overrides):
    return get_trainer(name)(dataset, 0, fraction, overrides={**TINY, **overrides}, progress=False,
                             run_name=run_name)


def _weights(run_dir):
    state = torch.load(run_dir / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    return state["networks"]["network"]


def _assert_same_weights(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dpo_run_reuses_stage1_and_writes_everything(dataset):
    ranking = _dpo("DPORanking", dataset)
    out = ranking.run_training()
    record = json.loads((out / "config.json").read_text())
    stage1 = ranking.stage1_trainer().output_dir
    assert record["stage1_run"] == str(stage1) and record["budget"] == "dpo"
    assert record["cases"]["rated"] == len(ranking.roles.rated) > 0
    assert (stage1 / "validation" / "summary.json").is_file()  # stage 1 is a run of its own
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(ranking.roles.val)
    prefs = json.loads((out / "preferences.json").read_text())
    assert len(prefs["entries"]) == len(ranking.rated) and prefs["thresholds"] == [0.3, 0.4, 0.5, 0.6]
    rows = (out / "training_log.csv").read_text().splitlines()
    for column in ("train_preference_loss", "train_reward_margin", "train_kl_to_reference", "iou_spread",
                   "tied_share", "val_dice", "train_anchor_loss"):
        assert column in rows[0], column
    assert len(rows) == 1 + TINY["epochs"]
    # only the mask decoder moved in stage 2; the reference stayed the stage-1 model
    stage1_state = torch.load(stage1 / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    before = stage1_state["networks"]["network"]
    after = _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("mask_decoder."))
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("mask_decoder."))
    for key, value in ranking.networks["reference"].state_dict().items():
        if key in before:
            assert torch.equal(value, before[key]), key

    stamp = (stage1 / "checkpoint_final.pth").stat().st_mtime_ns
    rating = _dpo("DPORating", dataset)
    rating.run_training()
    assert (stage1 / "checkpoint_final.pth").stat().st_mtime_ns == stamp  # reused, not retrained
    assert rating.stage1_dir == stage1


def test_interrupted_stage2_continues_to_identical_weights(dataset, monkeypatch):
    straight = _dpo("DPORanking", dataset, epochs=2).run_training()

    victim = _dpo("DPORanking", dataset, run_name="killed", epochs=2)

    def stop(row):
        if row["epoch"] == 2:  # after epoch 1 was checkpointed, before epoch 2 was
            raise KeyboardInterrupt

    monkeypatch.setattr(victim, "on_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt):
        victim.run_training()
    assert not (victim.output_dir / "checkpoint_final.pth").exists()
    resumed = _dpo("DPORanking", dataset, run_name="killed", epochs=2)
    resumed.run_training(continue_training=True)
    _assert_same_weights(_weights(straight), _weights(resumed.output_dir))
    a = json.loads((straight / "validation" / "summary.json").read_text())
    b = json.loads((resumed.output_dir / "validation" / "summary.json").read_text())
    assert [c["metrics"] for c in a["metric_per_case"]] == [c["metrics"] for c in b["metric_per_case"]]


@pytest.mark.parametrize("name", ["DPORanking", "DPORating"])
def test_ratings_file_holding_the_simulated_ratings_gives_the_same_run(dataset, name, tmp_path):
    simulated = _dpo(name, dataset).run_training()
    ratings = tmp_path / "ratings.json"
    shutil.copy(simulated / "preferences.json", ratings)
    from_file = _dpo(name, dataset, annotator="file", ratings_file=str(ratings), run_name="human")
    assert from_file.output_dir != simulated
    from_file.run_training()
    _assert_same_weights(_weights(simulated), _weights(from_file.output_dir))


def test_ground_truth_of_rated_cases_reaches_only_the_annotator(dataset, monkeypatch):
    honest = _dpo("DPORanking", dataset).run_training()
    rated = set(_dpo("DPORanking", dataset).roles.rated)
    original = LabelStore.seg
    served = {"annotator": 0, "garbage": 0}

    def seg(self, case):
        real = original(self, case)
        if case in rated and "annotator" in self.purpose:
            served["annotator"] += 1
            return real
        if case in rated:
            served["garbage"] += 1
            return np.random.default_rng(0).integers(0, 2, real.shape).astype(real.dtype)
        return real

    monkeypatch.setattr(LabelStore, "seg", seg)
    blinded = _dpo("DPORanking", dataset, run_name="blinded").run_training()
    assert served["annotator"] > 0
    _assert_same_weights(_weights(honest), _weights(blinded))


def test_best_only_and_control_trainers_run(dataset):
    best = _dpo("DPOBestOnly", dataset)
    best.run_training()
    assert all((r.weights >= 0).all() for r in best.rated)
    control = get_trainer("SAMBaselineContinued")(dataset, 0, 0.1, overrides=TINY, progress=False)
    out = control.run_training()
    assert json.loads((out / "config.json").read_text())["cases"]["rated"] == 0
    assert control.stage1_dir.name == "fold_0" and "SAMBaseline__" in control.stage1_dir.parent.name
    assert (out / "validation" / "summary.json").is_file()


def test_paper_preset_and_option_names(dataset):
    paper = _dpo("DPORanking", dataset, settings="paper")
    assert (paper.config["loss"], paper.config["reduction"], paper.config["anchor_weight"]) == ("dpo", "sum", 0.0)
    assert "-paper" in paper.output_dir.parent.name
    default = _dpo("DPORanking", dataset)
    assert "paper" not in default.output_dir.parent.name
    with pytest.raises(SamprefError, match='--set settings="mine": expected one of paper, sampref'):
        _dpo("DPORanking", dataset, settings="mine")
    with pytest.raises(SamprefError, match='--set reduction="median": expected one of sum, mean, disagreement_mean'):
        _dpo("DPORanking", dataset, reduction="median")
    with pytest.raises(SamprefError, match="ratings_file"):
        _dpo("DPORanking", dataset, annotator="file")


def test_guards_no_rated_case_foreign_stage1_and_all_ties(dataset, tmp_path):
    with pytest.raises(SamprefError, match="buys no rated case"):
        _dpo("DPORanking", dataset, fraction=0.1)
    with pytest.raises(SamprefError, match="every one of the .* rated sample"):
        _dpo("DPORanking", dataset, thresholds=[0.5, 0.5], run_name="ties").run_training()
    stage1 = _dpo("DPORanking", dataset).stage1_trainer().output_dir
    foreign = tmp_path / "foreign" / "fold_0"
    shutil.copytree(stage1, foreign)
    original = json.loads((foreign / "config.json").read_text())
    record = json.loads(json.dumps(original))
    record["plan_snapshot"]["image_size"] = 999
    record["hyperparameters"]["model"] = "litemedsam"
    (foreign / "config.json").write_text(json.dumps(record))
    with pytest.raises(SamprefError) as err:
        _dpo("DPORanking", dataset, stage1_run=str(foreign)).run_training()
    message = str(err.value)
    assert "image_size: 999 ->" in message and "model" in message and str(foreign) in message
    # a replan of fractions or thresholds changes the plan's hash, not what stage 1 saw: accepted
    checker = _dpo("DPORanking", dataset, stage1_run=str(foreign))
    (foreign / "config.json").write_text(json.dumps({**original, "plans_hash": "0000000000000000"}))
    checker._check_stage1(foreign, explicit=True)
    # a stage-1 run from before plan snapshots falls back to the hash
    (foreign / "config.json").write_text(json.dumps(
        {k: v for k, v in original.items() if k != "plan_snapshot"} | {"plans_hash": "0000000000000000"}))
    with pytest.raises(SamprefError, match="0000000000000000"):
        checker._check_stage1(foreign, explicit=True)


def test_inner_selection_keeps_the_best_epoch_on_held_out_labeled_cases(dataset):
    # the phantom fold's DPO budget has one labeled volume: its slices are split
    with pytest.warns(UserWarning, match="one labeled case only"):
        trainer = _dpo("DPORanking", dataset, epochs=2, selection="inner", inner_val_share=0.5)
        out = trainer.run_training()
    selection = json.loads((out / "selection.json").read_text())
    inner = {tuple(s) for s in selection["inner_samples"]}
    assert inner and {case for case, _, _ in inner} <= set(trainer.roles.labeled)
    assert not inner & {(s.case, s.slice, s.label) for s in trainer.train_samples}  # held out of training
    rows = list(csv.DictReader((out / "training_log.csv").open()))
    scores = [float(r["inner_dice"]) for r in rows]
    assert selection["inner_dice"] >= max(scores) - 1e-12 and selection["selected_epoch"] in (0, 1, 2)
    if selection["selected_epoch"] > 0:
        assert selection["inner_dice"] == pytest.approx(scores[selection["selected_epoch"] - 1])
    final = _weights(out)
    if selection["selected_epoch"] == 0:
        stage1 = torch.load(trainer.stage1_dir / "checkpoint_final.pth", map_location="cpu", weights_only=True)
        for key, value in final.items():
            assert torch.equal(value, stage1["networks"]["network"][key]), key
    with pytest.raises(SamprefError, match='--set selection="best": expected one of last, inner'):
        _dpo("DPORanking", dataset, selection="best")


def test_candidate_sources_shapes_and_adaptive_thresholds(dataset):
    trainer = _dpo("DPORanking", dataset, run_name="sources")
    trainer.annotate = False
    trainer.initialize()
    samples = trainer.rated_samples[:3]
    size = trainer.plans["image_size"]
    for source in ("thresholds", "jitter", "multimask", "dropout"):
        trainer.config["candidates"] = source
        cands, logits = trainer.make_candidates(samples)
        assert cands.dtype == torch.bool and cands.shape == (3, 4, size, size), source
        assert logits.shape == (3, size, size)
        if source == "thresholds":  # nested: a higher threshold never adds a pixel
            assert all(not (cands[:, k + 1] & ~cands[:, k]).any() for k in range(3))
    again, _ = trainer.make_candidates(samples)  # seeded: the same candidates every time
    assert torch.equal(again, cands)
    thresholds = trainer.adaptive_thresholds()
    assert thresholds == sorted(thresholds) and all(0.0 < t < 1.0 for t in thresholds)
    assert trainer.adaptive_record["area_ratios"] == [1.5, 1.2, 0.85, 0.65]


def test_finished_dpo_run_loads_without_its_ratings_file(dataset, tmp_path):
    from sampref_bench.trainers.registry import load_trained_run

    simulated = _dpo("DPORanking", dataset).run_training()
    ratings = tmp_path / "ratings.json"
    shutil.copy(simulated / "preferences.json", ratings)
    human = _dpo("DPORanking", dataset, annotator="file", ratings_file=str(ratings), run_name="human").run_training()
    ratings.unlink()  # the lab archived its ratings elsewhere
    loaded = load_trained_run(human)
    case = loaded.roles.val[0]
    written = json.loads((human / "validation" / "summary.json").read_text())["metric_per_case"][0]
    assert written["reference_file"].endswith(f"{case}.nii.gz")
    prediction = loaded.predict_case(case)
    import SimpleITK as sitk

    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(human / "validation" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(prediction, saved)


#: Per scale: ratings given to the rated samples in turn, and their weights computed by hand
#: (:func:`~sampref_bench.trainers.dpo.losses.rating_weights`: 5 points 1, 0.5, 0, -0.5, -1; 3 points 1, 0, -1;
#: minus the sample's mean value).
SCALED_RATINGS = {
    5: [([5, 4, 3, 1], [0.875, 0.375, -0.125, -1.125]), ([2, 2, 3, 5], [-0.5, -0.5, 0.0, 1.0])],
    # the old 4-point reading weighted rating 3 as +b2: [3, 2, 2, 1] -> [0.875, -0.125, -0.125, -0.625]
    3: [([3, 2, 2, 1], [1.0, 0.0, 0.0, -1.0]), ([3, 3, 3, 2], [0.25, 0.25, 0.25, -0.75])],
}


def _rating_file(trainer, path, scale, ratings_cycle):
    """A preferences file for ``trainer``'s candidates, the rated samples rated from ``ratings_cycle`` in turn."""
    from sampref_bench.trainers.dpo.annotators import FORMAT, preference_entry

    entries = []
    for i, (sample, cands, _) in enumerate(trainer.candidate_sets):
        entry = preference_entry(sample, cands.numpy(), None)
        entry["ratings"] = ratings_cycle[i % len(ratings_cycle)]
        entries.append(entry)
    path.write_text(json.dumps({"format": FORMAT, "scale": scale, "entries": entries}))
    return path


@pytest.mark.parametrize("scale", [5, 3])
def test_rating_trainer_weights_a_files_ratings_on_its_scale(dataset, tmp_path, scale):
    path = tmp_path / f"ratings_{scale}.json"
    trainer = _dpo("DPORating", dataset, annotator="file", ratings_file=str(path), run_name=f"scale{scale}")
    trainer.annotate = False
    trainer.initialize()
    assert len(trainer.candidate_sets) >= 2 and trainer.candidate_sets[0][1].shape[0] == 4
    cycle = SCALED_RATINGS[scale]
    _rating_file(trainer, path, scale, [ratings for ratings, _ in cycle])
    trainer.prepare_preferences()
    for i, rated in enumerate(trainer.rated):
        np.testing.assert_allclose(rated.weights, cycle[i % len(cycle)][1])
    written = json.loads((trainer.output_dir / "preferences.json").read_text())
    assert written["scale"] == scale
    assert [e["ratings"] for e in written["entries"]] == [cycle[i % len(cycle)][0] for i in range(len(trainer.rated))]


def test_rating_outside_the_files_scale_names_the_file(dataset, tmp_path, monkeypatch):
    from sampref_bench.trainers.dpo.annotators import FileAnnotator

    path = tmp_path / "ratings_5.json"
    trainer = _dpo("DPORating", dataset, annotator="file", ratings_file=str(path), run_name="scale5bad")
    trainer.annotate = False
    trainer.initialize()
    _rating_file(trainer, path, 5, [[6, 4, 3, 1]])
    with pytest.raises(SamprefError) as err:
        trainer.prepare_preferences()
    assert str(path) in str(err.value) and "rating(s) [6] out of range 1..5" in str(err.value)
    # past the file check too (a check that missed it): the weights' ValueError is a SamprefError naming the file
    monkeypatch.setattr(FileAnnotator, "check", lambda self, candidates: None)
    with pytest.raises(SamprefError) as err:
        trainer.prepare_preferences()
    first = trainer.candidate_sets[0][0]
    assert f"ratings file {path}, {first.case} slice {first.slice} label {first.label}" in str(err.value)
    assert "1..5" in str(err.value)


def test_dropout_candidates_leave_the_global_random_states_alone(dataset, monkeypatch):
    from sampref_bench.trainers.dpo.candidates import seeded_dropout

    trainer = _dpo("DPORanking", dataset, candidates="dropout", run_name="dropout")
    trainer.annotate = False
    trainer.initialize()
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(("cuda all", seed)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(("cuda", seed)))
    made = []
    for seed in (1, 2):
        torch.random.default_generator.manual_seed(seed)  # the CPU generator alone: the spies stay silent
        cpu_before = torch.get_rng_state()
        cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        made.append(trainer.generate_candidates())
        assert torch.equal(torch.get_rng_state(), cpu_before)
        if torch.cuda.is_available():
            assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_before))
    assert reseeded == []  # no CUDA generator was reseeded
    # the candidates depend on the run's seed only, not on the global state they were made under
    assert len(made[0]) == len(trainer.rated_samples) > 0
    for (s1, c1, _), (s2, c2, _) in zip(*made):
        assert s1 == s2 and torch.equal(c1, c2) and c1.shape[0] == 4
    # the dropout does drop: two seeds, two masks, and the logits move
    x = torch.ones(2, 8, 4, 4)
    assert not torch.equal(seeded_dropout(x, 0.5, 0), seeded_dropout(x, 0.5, 1))
    assert torch.equal(seeded_dropout(x, 0.5, 3), seeded_dropout(x, 0.5, 3))
    assert set(seeded_dropout(x, 0.5, 0).unique().tolist()) == {0.0, 2.0}
    samples = trainer.rated_samples[:2]
    assert not torch.equal(trainer.reference_logits(samples), trainer.reference_logits(samples, dropout=0.5))
