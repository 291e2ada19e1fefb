"""Inference never sees ground truth: by construction, and by corrupting labels after training."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sampref_bench.planners.data import LabelAccessError
from sampref_bench.planners.fingerprint import raw_case_files
from sampref_bench.planners.preprocessing import preprocess_image
from sampref_bench.trainers.registry import get_trainer
from sampref_bench.trainers.sam.bounds import SAMNoPrompt
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import FAST, planned_phantoms

#: A few fast steps at a high learning rate, so that the tiny model predicts some foreground.
LEARN = {"epochs": 2, "iterations_per_epoch": 4, "lr": 3e-3, "threshold": 0.1}


def _trainer(name, dataset, **overrides):
    return get_trainer(name)(dataset, 0, 0.5, overrides={**FAST, **LEARN, **overrides}, progress=False)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


#: The learned heads (SAMSelfPrompt's, SAMBaseline's default box) are given a low threshold so that, after these few
#: steps, they find boxes to decode from; SAMBaseline runs with the learned and the saliency box.
LABEL_FREE = {"SAMNoPrompt": ("SAMNoPrompt", {}),
              "SAMBaseline": ("SAMBaseline", {"head_threshold": 0.05}),
              "SAMBaseline-saliency": ("SAMBaseline", {"box_source": "saliency"}),
              "SAMSelfPrompt": ("SAMSelfPrompt", {"head_threshold": 0.05})}


@pytest.mark.parametrize("run", sorted(LABEL_FREE))
def test_predictions_unchanged_when_validation_labels_are_corrupted(sampref_roots, run):
    name, overrides = LABEL_FREE[run]
    dataset = planned_phantoms(n_labels=2)
    trainer = _trainer(name, dataset, **overrides)
    out = trainer.run_training()
    val = trainer.roles.val
    before = {c: _read(out / "validation" / f"{c}.nii.gz") for c in val}
    assert any(p.any() for p in before.values())
    # corrupt every label of the validation cases: preprocessed arrays, label metadata and raw files
    data_dir = trainer.data.data_dir
    raw = sampref_roots["raw"] / trainer.dataset_name
    rng = np.random.default_rng(0)
    for case in val:
        seg = np.load(data_dir / f"{case}_seg.npy")
        np.save(data_dir / f"{case}_seg.npy", rng.integers(0, 3, seg.shape, dtype=np.uint8))
        (data_dir / f"{case}_labels.json").write_text(json.dumps({"labels_per_slice": [[1, 2]] * seg.shape[0]}))
        label_file = raw / "labelsTr" / f"{case}.nii.gz"
        image = sitk.ReadImage(str(label_file))
        noisy = sitk.GetImageFromArray(rng.integers(0, 3, sitk.GetArrayFromImage(image).shape, dtype=np.uint8))
        noisy.CopyInformation(image)
        sitk.WriteImage(noisy, str(label_file))
    again = _trainer(name, dataset, **overrides)
    again.run_training(continue_training=True)  # finished run: only the final validation reruns
    for case in val:
        np.testing.assert_array_equal(_read(out / "validation" / f"{case}.nii.gz"), before[case])
    # and with no label at all: the preprocessed label files of the validation cases removed
    for case in val:
        (data_dir / f"{case}_seg.npy").unlink()
        (data_dir / f"{case}_labels.json").unlink()
    fresh = _trainer(name, dataset, **overrides)
    fresh.networks = {"network": again.network}
    fresh.cache = again.cache
    fresh.text_encoder = getattr(again, "text_encoder", None)
    for case in val:
        np.testing.assert_array_equal(fresh.predict_case(case), before[case])


def test_image_without_label_file_is_preprocessed_and_predicted(sampref_roots):
    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset)
    trainer.initialize()
    case = trainer.roles.val[0]
    raw = sampref_roots["raw"] / trainer.dataset_name
    channels, _ = raw_case_files(raw, json.loads((raw / "dataset.json").read_text()), case)
    meta = preprocess_image(channels, None, trainer.plans, "imageonly_000", trainer.data.data_dir)
    assert meta["has_label"] is False and "labels_per_slice" not in meta
    assert not (trainer.data.data_dir / "imageonly_000_seg.npy").exists()
    assert meta["image_digest"] == trainer.data.meta(case)["image_digest"]
    np.testing.assert_array_equal(trainer.predict_case("imageonly_000"), trainer.predict_case(case))


def test_label_stores_refuse_cases_outside_their_role():
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOracle", dataset)
    trainer.initialize()
    val_case, labeled_case = trainer.roles.val[0], trainer.roles.labeled[0]
    assert trainer.train_labels.seg(labeled_case).shape[0] == trainer.data.meta(labeled_case)["n_slices"]
    with pytest.raises(LabelAccessError, match=f"label of case '{val_case}' is not readable"):
        trainer.train_labels.seg(val_case)
    assert not hasattr(trainer.data, "seg")
    assert "labels_per_slice" not in trainer.data.meta(val_case)
    # only an oracle may read labels at inference
    assert trainer.oracle_labels().seg(val_case) is not None
    no_prompt = _trainer("SAMNoPrompt", dataset)
    with pytest.raises(SamprefError, match="SAMNoPrompt is not an oracle trainer"):
        no_prompt.oracle_labels()


class _Cheat(SAMNoPrompt):
    """Tries to read the validation label at inference: the label store must refuse."""

    def inference_prompts(self, samples):
        self.train_labels.seg(samples[0].case)
        return {}


def test_a_trainer_reading_labels_at_inference_fails():
    dataset = planned_phantoms()
    trainer = _Cheat(dataset, 0, 0.5, overrides={**FAST, **LEARN}, progress=False)
    trainer.initialize()
    with pytest.raises(LabelAccessError):
        trainer.predict_case(trainer.roles.val[0])


def test_oracle_cannot_predict_an_image_without_label(sampref_roots):
    dataset = planned_phantoms()
    oracle = _trainer("SAMBoxOracle", dataset)
    oracle.initialize()
    raw = sampref_roots["raw"] / oracle.dataset_name
    channels, _ = raw_case_files(raw, json.loads((raw / "dataset.json").read_text()), oracle.roles.val[0])
    preprocess_image(channels, None, oracle.plans, "imageonly_001", oracle.data.data_dir)
    with pytest.raises(LabelAccessError, match="imageonly_001"):
        oracle.predict_case("imageonly_001")


def test_hidden_label_slices_come_from_image_content_not_labels():
    from sampref_bench.planners.data import hidden_label_samples, hidden_label_slices, labeled_slices

    assert hidden_label_slices([0.0, 0.2, 0.04, 0.5], 0.05) == [1, 3]
    assert hidden_label_slices([0.0, 0.01], 0.05) == [0, 1]  # nothing above the bar: every slice
    assert hidden_label_slices([0.0], 0.05) == [0]  # 2D
    assert labeled_slices([[], [1], [], [1, 2]], 0.0, "c") == [1, 3]
    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset)
    data = trainer.data
    case = trainer.roles.unlabeled[0]
    data.plans["hidden_label_min_content"] = 0.15  # the phantom's end slices hold less body than this
    samples = hidden_label_samples(data, [case], trainer.labels)
    content = data.meta(case)["slice_content"]
    assert [s.slice for s in samples] == [k for k, v in enumerate(content) if v >= 0.15]
    assert 0 < len(samples) < len(content)
    (data.data_dir / f"{case}_seg.npy").unlink()  # no label needed at all
    (data.data_dir / f"{case}_labels.json").unlink()
    assert hidden_label_samples(data, [case], trainer.labels) == samples
