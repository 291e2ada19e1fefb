"""component_choice=label_prior: a per-label location prior from the labeled cases picks each label's own saliency
component, so every label of a multi-label slice gets its own box (hand-made arrays and a two-blob phantom)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.evaluation.prompt_quality import box_iou, prompt_quality
from sampref_bench.planners.data import inference_samples
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.prompts.label_prior import (
    LabelPrior,
    choose_component,
    component_scores,
    learn_label_prior,
    occupancy,
)
from sampref_bench.prompts.regions import mask_box
from sampref_bench.trainers.registry import get_trainer, load_trained_run
from sampref_bench.trainers.run_folder import load_checkpoint, save_checkpoint
from tests.trainer_helpers import FAST, planned_phantoms

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The saliency box (not the learned default), whose component ``component_choice`` picks.
QUICK = {**FAST, "epochs": 1, "lr": 3e-3, "threshold": 0.1, "box_source": "saliency"}
#: The two-blob phantom: (H, W) of its PNGs; label 1 a dark disk on the left, label 2 a smaller one on the right,
#: each as (centre x, centre y, radius) in pixels, moved by up to +-3 px (x) and +-4 px (y) per case.
SHAPE = (60, 80)
BLOBS = {1: (20, 30, 10), 2: (60, 30, 7)}


# ------------------------------------------------------------------------------------------- by hand
def _components() -> np.ndarray:
    """An (8, 8) component map whose valid region is (4, 8): on a 4 x 4 grid every cell is 1 row x 2 columns."""
    comps = np.zeros((8, 8), np.int32)
    comps[0, 0:2] = 1        # cell (0, 0)
    comps[3, 6:8] = 2        # cell (3, 3)
    comps[1:3, 0:4] = 3      # cells (1, 0), (1, 1), (2, 0), (2, 1): the largest
    comps[5:8, :] = 1        # outside the valid region: never read
    return comps


def test_occupancy_is_relative_to_the_valid_region():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True                                  # the left half of the (4, 8) valid region
    np.testing.assert_array_equal(occupancy(mask, (4, 8), grid=2), [[1, 0], [1, 0]])
    mask[:] = False
    mask[0, 0] = True                                    # one pixel of a 2 x 4 cell
    np.testing.assert_array_equal(occupancy(mask, (4, 8), grid=2), [[0.125, 0], [0, 0]])
    mask[6, 6] = True                                    # padding is not part of the image
    np.testing.assert_array_equal(occupancy(mask, (4, 8), grid=2), [[0.125, 0], [0, 0]])


def test_component_choice_by_hand():
    comps, valid, grid = _components(), (4, 8), 4
    prior = np.zeros((grid, grid))
    prior[0, 0] = 1.0                                    # exactly component 1's cell: soft Dice 2 * 1 / (1 + 1)
    np.testing.assert_allclose(component_scores(comps, 3, valid, prior), [1.0, 0.0, 0.0])
    assert choose_component(comps, 3, valid, prior) == 1
    prior[:] = 0
    prior[1:3, 0:2] = 0.5                                # half of component 3's four cells: 2 * 2 / (2 + 4)
    np.testing.assert_allclose(component_scores(comps, 3, valid, prior), [0.0, 0.0, 2 / 3])
    assert choose_component(comps, 3, valid, prior) == 3
    prior[:] = 0
    prior[0, 0] = prior[3, 3] = 1.0                      # a tie: 2 * 1 / (2 + 1) each -> the lower number
    np.testing.assert_allclose(component_scores(comps, 3, valid, prior), [2 / 3, 2 / 3, 0.0])
    assert choose_component(comps, 3, valid, prior) == 1
    prior[:] = 0
    prior[3, 2] = 1.0                                    # no overlap: centroid (0.625, 0.875) is nearest 2's
    assert choose_component(comps, 3, valid, prior) == 2  # (0.875, 0.875), not 3's (0.25, 0.5) or 1's
    assert choose_component(comps, 3, valid, np.zeros((grid, grid))) == 3  # label never seen: the largest
    assert choose_component(np.zeros((8, 8), np.int32), 0, valid, prior) == 0


class _Labels:
    """A label store of fixed arrays that records which cases were read."""

    def __init__(self, segs: dict[str, np.ndarray]) -> None:
        self.segs, self.read = segs, []

    def labels_per_slice(self, case: str) -> list[list[int]]:
        self.read.append(case)
        return [sorted(int(v) for v in np.unique(s) if v) for s in self.segs[case]]

    def seg(self, case: str) -> np.ndarray:
        return self.segs[case]


def test_prior_is_the_mean_occupancy_over_the_slices_holding_the_label():
    a = np.zeros((2, 8, 8), np.uint8)
    a[0, :4, :4] = 1                                     # slice 0: label 1 on the left half; slice 1: empty
    b = np.zeros((1, 8, 8), np.uint8)
    b[0, :2, :4] = 1                                     # label 1 in the top-left cell only
    labels = _Labels({"a": a, "b": b, "hidden": np.full((1, 8, 8), 2, np.uint8)})
    prior = learn_label_prior(labels, ["b", "a"], [1, 2], lambda case: (4, 8), grid=2)
    assert labels.read == ["a", "b"]                     # sorted, and never a case it was not given
    np.testing.assert_allclose(prior.map(1), [[1, 0], [0.5, 0]])  # mean of [[1, 0], [1, 0]] and [[1, 0], [0, 0]]
    assert prior.slices == {1: 2, 2: 0} and prior.n_cases == 2
    np.testing.assert_array_equal(prior.map(2), np.zeros((2, 2)))
    summary = prior.summary()
    # rows at 0.25 and 0.75 weighted 1 and 0.5: y = (0.25 + 0.375) / 1.5 = 5 / 12
    assert summary["labels"]["1"]["centroid_xy"] == [0.25, pytest.approx(5 / 12, abs=1e-4)]
    assert summary["labels"]["2"] == {"slices": 0, "centroid_xy": None, "mean_share": 0.0}


def test_prior_state_survives_a_weights_only_checkpoint(tmp_path):
    prior = LabelPrior(2, {1: np.array([[1, 0], [0.5, 0]], np.float32), 2: np.zeros((2, 2), np.float32)},
                       {1: 2, 2: 0}, 2)
    torch.save({"label_prior": prior.to_state()}, tmp_path / "c.pth")
    back = LabelPrior.from_state(torch.load(tmp_path / "c.pth", weights_only=True)["label_prior"])
    assert back.digest() == prior.digest() and back.slices == prior.slices
    np.testing.assert_array_equal(back.map(1), prior.map(1))
    state = prior.to_state()
    state["labels"][1]["map"][0][0] = 0.0
    with pytest.raises(ValueError, match="does not match"):
        LabelPrior.from_state(state)


# ------------------------------------------------------------------------------------------- two-blob phantom
def two_blob_case(index: int) -> tuple[np.ndarray, np.ndarray]:
    """One SYNTHETIC ``(H, W)`` uint8 image (bright, noisy) with two dark disks and its label map (1 left, 2 right)."""
    rng = np.random.default_rng([11, index])
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    image = 200 + rng.normal(0, 6, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    for value, (cx, cy, r) in BLOBS.items():
        disk = (xx - cx - rng.integers(-3, 4)) ** 2 + (yy - cy - rng.integers(-4, 5)) ** 2 <= r * r
        image[disk] = 50 + rng.normal(0, 6, int(disk.sum()))
        label[disk] = value
    return np.clip(image, 0, 255).astype(np.uint8), label


def planned_two_blobs(dataset_id: int = 21, n_cases: int = 8) -> str:
    """A planned SYNTHETIC 2D ultrasound-like dataset of :func:`two_blob_case` images (fractions 0.5 and 1.0)."""
    with RawDatasetWriter(dataset_id, "TwoBlobs", file_ending=".png", dimensionality=2) as writer:
        for index in range(n_cases):
            image, label = two_blob_case(index)
            writer.add_case(f"synthetic_{index:03d}", [image], label)
        writer.set_metadata(name="TwoBlobs", description="SYNTHETIC two dark disks", channel_names={"0": "US"},
                            labels={"background": 0, "left_blob": 1, "right_blob": 2},
                            target_text={"left_blob": "left blob", "right_blob": "right blob"},
                            license="CC0 (synthetic)", reference="synthetic")
    plan_dataset(dataset_id, fractions=[0.5, 1.0], num_processes=1, progress=False)
    return str(dataset_id)


def _boxes(trainer, cases):
    """{(case, slice, label): (4,) box} as the trainer gives them to SAM."""
    samples = [s for case in cases for s in inference_samples(trainer.data, case, trainer.labels)]
    boxes = trainer.inference_prompts(samples)["boxes"].cpu().numpy()
    return {(s.case, s.slice, s.label): box for s, box in zip(samples, boxes)}


def test_each_label_of_the_two_blob_phantom_gets_its_own_blob():
    dataset = planned_two_blobs()
    trainer = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides=QUICK, progress=False)
    assert trainer.config["component_choice"] == "label_prior"  # two labels: the default
    trainer.initialize()
    prior = trainer.label_prior.summary()
    # by hand: label 1's centre x is 20 (+-3) of 80 px, y 30 (+-4) of 60, its area pi 10^2 of 4800 px; label 2's
    # x is 60 of 80 and its area pi 7^2
    assert prior["n_cases"] == len(trainer.roles.labeled) == 3 and prior["grid"] == 32
    assert prior["labels"]["1"]["centroid_xy"] == pytest.approx([0.256, 0.508], abs=0.04)
    assert prior["labels"]["2"]["centroid_xy"] == pytest.approx([0.756, 0.508], abs=0.04)
    assert prior["labels"]["1"]["mean_share"] == pytest.approx(np.pi * 100 / 4800, rel=0.05)
    assert prior["labels"]["2"]["mean_share"] == pytest.approx(np.pi * 49 / 4800, rel=0.08)

    truth = trainer.data.label_store(trainer.roles.val, "the test's scoring")
    own = _boxes(trainer, trainer.roles.val)
    shared = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides={**QUICK, "component_choice": "saliency"},
                                       progress=False)
    shared.initialize()
    before = _boxes(shared, trainer.roles.val)
    for case in trainer.roles.val:
        gt = {v: mask_box(truth.seg(case)[0] == v) for v in (1, 2)}
        assert not np.array_equal(own[case, 0, 1], own[case, 0, 2])          # each label its own box ...
        assert box_iou(own[case, 0, 1], gt[1]) > 0.85 and box_iou(own[case, 0, 2], gt[2]) > 0.85  # ... on its blob
        np.testing.assert_array_equal(before[case, 0, 1], before[case, 0, 2])  # the old choice: one box for both,
        assert box_iou(before[case, 0, 2], gt[2]) == 0.0                       # the larger, left blob
        np.testing.assert_array_equal(before[case, 0, 1], own[case, 0, 1])
        vqa = trainer.prompts.vqa(case, 0, 2, trainer.label_prior)["answers"]
        assert vqa["side"] == "right" and trainer.prompts.vqa(case, 0, 2)["answers"]["side"] == "left"
    # the quality report scores either choice: the right blob's boxes go from IoU 0 to its own blob
    chosen = prompt_quality(trainer.prompts, truth, trainer.roles.val, [1, 2], progress=False,
                            prior=trainer.label_prior)
    largest = prompt_quality(trainer.prompts, truth, trainer.roles.val, [1, 2], progress=False)
    right, right_before = chosen["per_label"]["right_blob"], largest["per_label"]["right_blob"]
    assert (right_before["box_iou"], right_before["centre_inside"]) == (0, 0)
    assert right["box_iou"] > 0.85 and right["centre_inside"] == 1
    assert chosen["per_label"]["left_blob"] == largest["per_label"]["left_blob"]
    assert chosen["label_prior"] == trainer.label_prior.digest() and largest["label_prior"] is None


def _cache_snapshot(root):
    """Relative path -> bytes of every file of a prompt cache."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_validation_labels_never_change_the_chosen_boxes(sampref_roots):
    dataset = planned_two_blobs()
    trainer = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides=QUICK, progress=False)
    trainer.initialize()
    cases = trainer.roles.val + trainer.roles.labeled
    before, digest = _boxes(trainer, cases), trainer.label_prior.digest()
    data_dir = trainer.data.data_dir
    rng = np.random.default_rng(0)
    for case in trainer.roles.val:                       # swap the two labels of every validation case, plus noise
        seg = np.load(data_dir / f"{case}_seg.npy")
        swapped = np.where(seg == 1, 2, np.where(seg == 2, 1, seg)).astype(np.uint8)
        swapped[rng.random(seg.shape) < 0.05] = 1
        np.save(data_dir / f"{case}_seg.npy", swapped)
        (data_dir / f"{case}_labels.json").write_text(json.dumps({"labels_per_slice": [[1, 2]]}))
    cache = _cache_snapshot(trainer.prompts.root)
    again = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides=QUICK, progress=False)
    again.initialize()
    assert again.label_prior.digest() == digest
    after = _boxes(again, cases)
    assert after.keys() == before.keys()
    for key, box in before.items():
        np.testing.assert_array_equal(after[key], box)
    # the labeled cases are what the prior reads: swapping their labels swaps every label's box
    for case in trainer.roles.labeled:
        seg = np.load(data_dir / f"{case}_seg.npy")
        np.save(data_dir / f"{case}_seg.npy", np.where(seg == 1, 2, np.where(seg == 2, 1, seg)).astype(np.uint8))
    swapped = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides=QUICK, progress=False)
    swapped.initialize()
    flipped = _boxes(swapped, trainer.roles.val)
    for case in trainer.roles.val:
        np.testing.assert_array_equal(flipped[case, 0, 1], before[case, 0, 2])
        np.testing.assert_array_equal(flipped[case, 0, 2], before[case, 0, 1])
    # runs with other priors share the cache: none of its files depends on the labels
    assert _cache_snapshot(trainer.prompts.root) == cache


def test_component_choice_enters_identity_only_where_it_changes_the_prompts(sampref_roots):
    single = planned_phantoms(n_labels=1)
    make = lambda name, dataset, **o: get_trainer(name)(dataset, 0, 0.5, overrides={"model": "tiny", **o},  # noqa: E731
                                                        progress=False)
    one = make("SAMBaseline", single)
    assert one.config["component_choice"] == "saliency" and one.run_tag is None  # BUSI-like: unchanged
    assert make("SAMBaseline", single, component_choice="label_prior").run_tag == "component_choicelabel_prior"
    two = planned_two_blobs(dataset_id=22)
    assert make("SAMBaseline", two).run_tag == "component_choicelabel_prior"  # per-label regions: a new identity
    assert make("SAMBaseline", two, component_choice="saliency").run_tag is None  # the old prompts, the old folder
    for name in ("SAMTextOnly", "SAMBoxOnly"):           # the learned box by default: no saliency region is read,
        trainer = make(name, two)                         # nothing to choose, the default folder
        assert trainer.config["component_choice"] == "saliency" and trainer.run_tag is None
    boxes = make("SAMBoxOnly", two, box_source="saliency")  # saliency boxes: per-label regions, and both in the tag
    assert boxes.config["component_choice"] == "label_prior" and boxes.run_tag.startswith("box_sourcesaliency-")
    learned = make("SAMBaseline", two)
    assert learned.config["box_source"] == "learned"
    assert learned.config["component_choice"] == "label_prior"  # its mask-VQA text still reads the regions


def test_a_finished_run_predicts_from_the_prior_in_its_checkpoint(sampref_roots):
    dataset = planned_two_blobs()
    trainer = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides=QUICK, progress=False)
    out = trainer.run_training()
    record = json.loads((out / "config.json").read_text())
    assert record["hyperparameters"]["component_choice"] == "label_prior"
    assert record["label_prior"]["digest"] == trainer.label_prior.digest()
    assert record["data_use"]["box_source"] == "saliency"
    case = trainer.roles.val[0]
    expected = trainer.predict_case(case)
    data_dir = trainer.data.data_dir
    for labeled in trainer.roles.labeled:                # no label at all is read when a finished run predicts
        (data_dir / f"{labeled}_seg.npy").unlink()
        (data_dir / f"{labeled}_labels.json").unlink()
    loaded = load_trained_run(out)
    assert loaded.label_prior.digest() == trainer.label_prior.digest()
    np.testing.assert_array_equal(loaded.predict_case(case), expected)

    # a run saved before component_choice existed predicts as it was trained: one region for every label
    path = out / "checkpoint_final.pth"
    state = load_checkpoint(path)
    state["config"] = {k: v for k, v in state["config"].items() if k != "component_choice"}
    del state["label_prior"]
    save_checkpoint(path, state)
    del record["hyperparameters"]["component_choice"], record["label_prior"]
    (out / "config.json").write_text(json.dumps(record))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = load_trained_run(out)
    assert any("predates component_choice" in str(w.message) for w in caught)
    assert old.config["component_choice"] == "saliency" and old.label_prior is None
    boxes = _boxes(old, [case])
    np.testing.assert_array_equal(boxes[case, 0, 1], boxes[case, 0, 2])
