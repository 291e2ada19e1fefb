"""SAMPseudoLabel end to end on small phantoms (64 px slices, tiny model): the run folder and pseudo_labels.json,
resuming, the hidden labels of unlabeled cases, the confidence filter on hand values, and the guards."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.losses import DiceFocalLoss

from sampref_bench.planners.data import LabelStore, Sample, hidden_label_samples
from sampref_bench.trainers.registry import available_trainers, get_trainer
from sampref_bench.trainers.sam.pseudo_label import (
    PseudoSample,
    confidence_scores,
    confident_pixels,
    masked_dice_focal,
    select_confident,
)
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import DPO_TINY, copy_roots

#: The tiny stage-1 model is barely trained (probabilities 0.2-0.45), so the test keeps the most confident half of
#: the samples at a low cut, which leaves some pixels of kept samples unconfident (ignored). Its learned box's head
#: (the default box source) gets a low threshold, as in the other tiny runs, so that it finds boxes to decode from:
#: a (slice, label) it finds absent is predicted empty, every pixel confident.
TINY = {**DPO_TINY, "batch_size": 4, "epochs": 2, "confidence_cut": 0.65, "min_confidence": 0.0, "keep_top_share": 0.5,
        "head_threshold": 0.05}
FRACTION = 0.5


def _trainer(dataset, fraction=FRACTION, run_name=None, **overrides):
    return get_trainer("SAMPseudoLabel")(dataset, 0, fraction, overrides={**TINY, **overrides}, progress=False,
                                         run_name=run_name)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Planned phantoms (dataset 7, 8 slices of 64 px per case) with the finished stage 1 and one finished
    SAMPseudoLabel run at :data:`TINY`, built once for this module."""
    from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
    from sampref_bench.planners.pipeline import plan_dataset

    root = tmp_path_factory.mktemp("pseudo_prepared")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("raw", "preprocessed", "results"):
            patch.setenv(f"SAMPREF_{key}", str(root / key))
        write_synthetic_raw_dataset(7, "Phantom", 5, n_labels=1, shape_zyx=(8, 40, 32), spacing_xyz=(0.8, 0.8, 3.0))
        plan_dataset(7, fractions=[0.5, 1.0], image_size=64, num_processes=1, progress=False)
        _trainer("7").run_training()
    return root


@pytest.fixture
def dataset(prepared, sampref_roots):
    """This test's own copy of :func:`prepared`."""
    return copy_roots(prepared, sampref_roots)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint_final.pth", map_location="cpu", weights_only=True)["networks"]["network"]


def _assert_same_weights(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _log(run_dir):
    rows = list(csv.DictReader((run_dir / "training_log.csv").open()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ------------------------------------------------------------------------------------------- end to end
def test_run_writes_validation_pseudo_labels_and_trains_what_stage1_trains(dataset):
    assert "SAMPseudoLabel" in available_trainers()
    trainer = _trainer(dataset)
    out = trainer.output_dir
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(trainer.roles.val) and "foreground_mean" in summary

    record = json.loads((out / "config.json").read_text())
    unlabeled = trainer.roles.unlabeled
    assert unlabeled and not set(unlabeled) & set(trainer.roles.labeled)
    assert record["data_use"]["unlabeled_used"] == record["cases"]["unlabeled"] == len(unlabeled)
    assert trainer.unlabeled_cases_used() == unlabeled and type(trainer).uses_unlabeled
    stage1 = trainer.stage1_trainer().output_dir
    assert record["stage1_run"].endswith(f"{stage1.parent.name}/fold_0") and "SAMBaseline__" in stage1.parent.name
    assert stage1.parent.name.endswith("__f0.5")  # the supervised budget of this fraction

    pseudo = json.loads((out / "pseudo_labels.json").read_text())
    planned = hidden_label_samples(trainer.data, unlabeled, trainer.labels)
    assert pseudo["scored"] == len(planned) == len(pseudo["samples"]) > 0
    assert [(s["case"], s["slice"], s["label"]) for s in pseudo["samples"]] == [(s.case, s.slice, s.label)
                                                                                for s in planned]
    assert pseudo["kept"] == int(np.ceil(0.5 * len(planned))) == sum(s["kept"] for s in pseudo["samples"])
    kept_scores = [s["score"] for s in pseudo["samples"] if s["kept"]]
    assert min(kept_scores) >= max(s["score"] for s in pseudo["samples"] if not s["kept"])
    assert pseudo["kept_cases"] == sorted({s["case"] for s in pseudo["samples"] if s["kept"]})
    assert set(pseudo["kept_cases"]) <= set(unlabeled) and pseudo["confidence_cut"] == 0.65
    assert 0.0 < pseudo["ignored_share"] < 1.0

    rows = _log(out)
    assert len(rows) == TINY["epochs"]
    for column in ("train_loss", "train_supervised_loss", "train_pseudo_loss", "kept_share", "ignored_share",
                   "val_dice"):
        assert column in rows[0], column
    assert float(rows[0]["kept_share"]) == pytest.approx(pseudo["kept"] / pseudo["scored"])
    assert not any("dice" in key and "val" not in key for key in rows[0])  # no pseudo-label Dice against truth

    # stage 2 trains what stage 1 trains (mask decoder, prompt encoder, text projection), from stage 1's weights
    before = torch.load(stage1 / "checkpoint_final.pth", map_location="cpu", weights_only=True)["networks"]["network"]
    after = _weights(out)
    assert set(before) == set(after) and not any(k.startswith("image_encoder.") for k in after)
    for prefix in ("mask_decoder.", "prompt_encoder.", "text_projection."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix
    # the coarse-mask head of the default learned box stays as stage 1 left it: stage 2 decodes from its prompts
    head = [k for k in after if k.startswith("prompt_head.")]
    assert head and all(torch.equal(before[k], after[k]) for k in head)


def test_interrupted_run_continues_to_identical_weights_and_log_and_batches_mix(dataset, monkeypatch):
    straight = _trainer(dataset).output_dir
    victim = _trainer(dataset, run_name="killed")

    step = victim.train_step

    def killed_in_epoch_2(batch):
        if victim.epoch == 1:  # epoch 1 was checkpointed; the kill comes at epoch 2's first batch
            raise KeyboardInterrupt
        return step(batch)

    monkeypatch.setattr(victim, "train_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        victim.run_training()
    assert not (victim.output_dir / "checkpoint_final.pth").exists()
    resumed = _trainer(dataset, run_name="killed")
    resumed.run_training(continue_training=True)
    _assert_same_weights(_weights(straight), _weights(resumed.output_dir))
    assert _log(straight) == _log(resumed.output_dir)
    a = json.loads((straight / "validation" / "summary.json").read_text())
    b = json.loads((resumed.output_dir / "validation" / "summary.json").read_text())
    assert [c["metrics"] for c in a["metric_per_case"]] == [c["metrics"] for c in b["metric_per_case"]]
    # batches mix two labeled and two kept pseudo-labeled samples, seeded
    assert resumed.batch_sizes() == (2, 2)
    batches = resumed.train_batches(0)
    assert len(batches) == TINY["iterations_per_epoch"] and batches == resumed.train_batches(0)
    for _, labeled, pseudo_idx in batches:
        assert len(labeled) == 2 and {s.case for s in labeled} <= set(resumed.roles.labeled)
        assert len(pseudo_idx) == 2 and all(resumed.pseudo[i].kept for i in pseudo_idx)


def test_labels_of_unlabeled_cases_are_never_read(dataset, monkeypatch):
    honest = _trainer(dataset)
    unlabeled = set(honest.unlabeled_cases_used())
    data_dir = honest.data.data_dir
    rng = np.random.default_rng(0)
    for case in unlabeled:  # garbage on disk: any read of these labels would change the run
        seg = np.load(data_dir / f"{case}_seg.npy")
        np.save(data_dir / f"{case}_seg.npy", rng.integers(0, 2, seg.shape).astype(seg.dtype))
        present = json.loads((data_dir / f"{case}_labels.json").read_text())
        present["labels_per_slice"] = [[1] if k % 2 else [] for k in range(len(present["labels_per_slice"]))]
        (data_dir / f"{case}_labels.json").write_text(json.dumps(present))
    opened = []
    original = LabelStore.__init__

    def spy(self, data_dir, cases, purpose, dataset_name=""):
        opened.append(set(cases))
        original(self, data_dir, cases, purpose, dataset_name)

    monkeypatch.setattr(LabelStore, "__init__", spy)
    blinded = _trainer(dataset, run_name="blinded").run_training()
    assert opened and not any(cases & unlabeled for cases in opened)
    _assert_same_weights(_weights(honest.output_dir), _weights(blinded))
    first = json.loads((honest.output_dir / "pseudo_labels.json").read_text())
    second = json.loads((blinded / "pseudo_labels.json").read_text())
    assert first["samples"] == second["samples"]


# ------------------------------------------------------------------------------------------- hand values
def test_confidence_filter_and_ignored_pixels_on_hand_values():
    probs = torch.tensor([[[0.95, 0.02], [0.50, 0.97]],    # 3 of 4 pixels confident at c = 0.9
                          [[0.99, 0.01], [0.05, 0.92]],    # all confident
                          [[0.60, 0.40], [0.30, 0.85]]])   # none confident
    confident = confident_pixels(probs, 0.9)
    assert confident.tolist() == [[[True, True], [False, True]], [[True, True], [True, True]],
                                  [[False, False], [False, False]]]
    share = confidence_scores(probs, 0.9, "confident_share")
    assert share.tolist() == [0.75, 1.0, 0.0]
    mean_max = confidence_scores(probs, 0.9, "mean_max")
    assert mean_max.tolist() == pytest.approx([(0.95 + 0.98 + 0.5 + 0.97) / 4, (0.99 + 0.99 + 0.95 + 0.92) / 4,
                                               (0.6 + 0.6 + 0.7 + 0.85) / 4])
    assert select_confident(share.numpy(), 0.9).tolist() == [False, True, False]
    assert select_confident(share.numpy(), 0.7).tolist() == [True, True, False]
    assert select_confident(share.numpy(), 0.0, top_share=0.33).tolist() == [False, True, False]  # ceil(0.99) = 1
    assert select_confident(share.numpy(), 0.0, top_share=0.34).tolist() == [True, True, False]  # ceil(1.02) = 2
    assert select_confident(np.array([0.5, 0.8, 0.8, 0.1]), 0.0, top_share=0.5).tolist() == [False, True, True, False]
    assert select_confident(np.array([0.5, 0.8, 0.8, 0.1]), 0.6, top_share=1.0).tolist() == [False, True, True, False]

    # ignored pixels: a weight of 0 in the pseudo loss, whatever the prediction there
    sample = Sample("c", 0, 1)
    item = PseudoSample(sample, probs[0] >= 0.5, confident[0], float(share[0]), True)

    class Holder:
        config = {"ignore_uncertain": True}
        device = torch.device("cpu")

    from sampref_bench.trainers.sam.pseudo_label import SAMPseudoLabel

    targets, weights = SAMPseudoLabel.pseudo_targets(Holder(), [item])
    assert targets.tolist() == [[[[1.0, 0.0], [1.0, 1.0]]]] and weights.tolist() == [[[[1.0, 1.0], [0.0, 1.0]]]]
    Holder.config = {"ignore_uncertain": False}
    assert SAMPseudoLabel.pseudo_targets(Holder(), [item])[1].tolist() == [[[[1.0, 1.0], [1.0, 1.0]]]]


def test_masked_loss_is_the_stage1_loss_on_counted_pixels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=gen)
    targets = (torch.rand(3, 1, 8, 8, generator=gen) > 0.6).float()
    full = torch.ones_like(targets)
    reference = DiceFocalLoss(sigmoid=True, lambda_dice=1.0, lambda_focal=20.0)(logits, targets)
    assert masked_dice_focal(logits, targets, full, 20.0, 1.0) == pytest.approx(float(reference), rel=1e-5)
    weights = (torch.rand(3, 1, 8, 8, generator=gen) > 0.3).float()
    moved = torch.where(weights > 0, logits, logits + 5.0 * torch.randn(3, 1, 8, 8, generator=gen))
    assert masked_dice_focal(moved, targets, weights, 20.0, 1.0) == pytest.approx(
        float(masked_dice_focal(logits, targets, weights, 20.0, 1.0)), rel=1e-6)
    assert float(masked_dice_focal(moved, targets, full, 20.0, 1.0)) != pytest.approx(
        float(masked_dice_focal(logits, targets, full, 20.0, 1.0)), rel=1e-3)
    none = torch.zeros_like(targets)
    assert float(masked_dice_focal(logits, targets, none, 20.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------- guards
def test_no_unlabeled_image_and_bad_options_are_errors(dataset, sampref_roots):
    from sampref_bench.dataset_conversion.phantoms import make_phantom
    from sampref_bench.planners.pipeline import plan_dataset
    from sampref_bench.utilities.imageio import write_image

    with pytest.raises(SamprefError, match="no unlabeled image .* imagesTrUnlabeled holds none"):
        _trainer(dataset, fraction=1.0)
    # an image without a label in imagesTrUnlabeled/ is pseudo-labeled too (and makes fraction 1.0 possible)
    image, _, geometry = make_phantom((8, 40, 32), seed=31)
    write_image(sampref_roots["raw"] / "Dataset007_Phantom" / "imagesTrUnlabeled" / "extra_a_0000.nii.gz", image,
                geometry)
    plan_dataset(7, fractions=[0.5, 1.0], image_size=64, num_processes=1, progress=False)
    assert _trainer(dataset, fraction=1.0).unlabeled_cases_used() == ["extra_a"]
    half = _trainer(dataset)
    assert half.unlabeled_cases_used() == [*half.roles.unlabeled, "extra_a"]
    assert _trainer(dataset, use_unlabeled_images=False).unlabeled_cases_used() == half.roles.unlabeled
    with pytest.raises(SamprefError, match=r"imagesTrUnlabeled is not used \(use_unlabeled_images=False\)"):
        _trainer(dataset, fraction=1.0, use_unlabeled_images=False)
    with pytest.raises(SamprefError, match='--set confidence_score="entropy": expected one of confident_share'):
        _trainer(dataset, confidence_score="entropy")
    with pytest.raises(SamprefError, match=r"--set confidence_cut=0.3: expected a number in \[0.5, 1\]"):
        _trainer(dataset, confidence_cut=0.3)
    with pytest.raises(SamprefError, match="stage2_parameters=mask_decoder"):
        _trainer(dataset, selection="inner")
    with pytest.raises(SamprefError, match="keep_top_share=0"):
        _trainer(dataset, keep_top_share=0)
