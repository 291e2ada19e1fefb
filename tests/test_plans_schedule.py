"""Planned training length, batch size and budget guard rails (plans.json), independent of the fractions."""

import pytest

from sampref_bench.planners.plans import (
    BATCH_SIZE,
    CPU_SECONDS_PER_IMAGE_STEP,
    DPO_EPOCHS,
    EPOCHS,
    ITERATIONS_PER_EPOCH,
    make_plans,
    preprocessing_signature,
    training_time_text,
)
from sampref_bench.planners.splits import add_budgets, kfold_splits

DATASET_JSON = {"name": "Toy", "channel_names": {"0": "US"}, "labels": {"background": 0, "lesion": 1},
                "numTraining": 100, "file_ending": ".png", "dimensionality": 2}
CASES = [f"case_{i:03d}" for i in range(100)]
SCHEDULE_KEYS = ("batch_size", "epochs", "iterations_per_epoch", "dpo_epochs", "dpo_iterations_per_epoch")


def _fingerprint(n_cases=100, dtype="uint8"):
    """A 2D fingerprint with what make_plans reads (US: no intensity statistics needed)."""
    cases = [{"case": c, "shape": [300, 200], "spacing": [1.0, 1.0], "n_channels": 1, "dtype": dtype,
              "labels": {"lesion": {"voxels": 50, "objects": 1, "bbox_fraction": [0.1, 0.1]}}}
             for c in CASES[:n_cases]]
    return {"dataset_name": "Dataset001_Toy", "dimensionality": 2, "n_cases": n_cases, "cases": cases,
            "foreground_intensity_per_channel": [{"p0_5": 0.0, "p99_5": 255.0}]}


def _plans(**kw):
    return make_plans(DATASET_JSON, _fingerprint(kw.pop("n_cases", 100)), **kw)


@pytest.mark.parametrize("n_cases", [5, 12, 100])
def test_schedule_is_the_same_at_every_fraction(n_cases):
    reference = _plans(n_cases=n_cases, fractions=[1.0])
    for fractions in ([0.05, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5, 1.0], [0.5]):
        plans = _plans(n_cases=n_cases, fractions=fractions)
        for key in SCHEDULE_KEYS:
            assert plans[key] == reference[key], key
            assert plans["reasons"][key] == reference["reasons"][key], key
    assert reference["batch_size"] == BATCH_SIZE == 8
    assert (reference["epochs"], reference["dpo_epochs"]) == (EPOCHS, DPO_EPOCHS) == (45, 30)
    assert reference["iterations_per_epoch"] == reference["dpo_iterations_per_epoch"] == ITERATIONS_PER_EPOCH


def test_adding_a_small_fraction_changes_nothing_a_full_run_sees():
    full = _plans(fractions=[1.0])
    more = _plans(fractions=[0.05, 1.0])
    ignore = {"fractions", "dpo_fractions", "reasons"}
    assert {k: v for k, v in full.items() if k not in ignore} == {k: v for k, v in more.items() if k not in ignore}
    assert {k: v for k, v in full["reasons"].items() if k != "fractions"} == \
           {k: v for k, v in more["reasons"].items() if k != "fractions"}
    folds = kfold_splits(CASES)
    a = add_budgets(folds, full["fractions"], full["dpo_labeled_fraction"])
    b = add_budgets(folds, more["fractions"], more["dpo_labeled_fraction"])
    for fa, fb in zip(a, b):
        assert fa["labeled"]["1.0"] == fb["labeled"]["1.0"] and fa["permutation"] == fb["permutation"]
        assert fa["dpo_labeled"] == fb["dpo_labeled"] and fb["labeled"]["0.05"] == fb["permutation"][:4]


def test_reasons_state_the_cpu_time_per_run():
    plans = _plans()
    for key in SCHEDULE_KEYS + ("dpo_fractions",):
        assert plans["reasons"][key], key
    steps = EPOCHS * ITERATIONS_PER_EPOCH * BATCH_SIZE
    minutes = round(steps * CPU_SECONDS_PER_IMAGE_STEP / 60)
    stated = f"{EPOCHS} x {ITERATIONS_PER_EPOCH} x {BATCH_SIZE} = {steps} decoder image steps"
    assert stated in plans["reasons"]["epochs"]
    assert f"about {minutes} min on 2 CPU cores" in plans["reasons"]["epochs"]
    dpo_steps = DPO_EPOCHS * ITERATIONS_PER_EPOCH * BATCH_SIZE
    assert f"= {dpo_steps} decoder image steps" in plans["reasons"]["dpo_epochs"]
    assert f"about {round(dpo_steps * CPU_SECONDS_PER_IMAGE_STEP / 60)} min" in plans["reasons"]["dpo_epochs"]
    # hand-computed: 15 * 10 * 8 = 1200 image steps * 0.34 s = 408 s, about 7 min
    assert training_time_text(15, 10, 8).startswith("15 x 10 x 8 = 1200 decoder image steps, about 7 min on 2 CPU")
    assert training_time_text(30, 10, 8).startswith("30 x 10 x 8 = 2400 decoder image steps, about 14 min on 2 CPU")


def test_dpo_labeled_fraction_is_always_planned():
    plans = _plans(fractions=[0.5, 1.0])
    assert plans["fractions"] == [0.1, 0.5, 1.0]
    assert "added" in plans["reasons"]["fractions"] and "dpo_labeled_fraction" in plans["reasons"]["fractions"]
    plans = _plans(fractions=[0.1, 0.5, 1.0])
    assert plans["fractions"] == [0.1, 0.5, 1.0] and "added" not in plans["reasons"]["fractions"]
    plans = _plans(fractions=[1.0], dpo_labeled_fraction=0.25)
    assert plans["fractions"] == [0.25, 1.0] and plans["dpo_labeled_fraction"] == 0.25


@pytest.mark.parametrize("fractions,dpo,expected", [
    ([0.1, 0.2, 0.3, 1.0], 0.1, [0.2, 0.3, 1.0]),
    ([0.1, 0.2, 0.3, 1.0], 0.2, [0.3, 1.0]),
    ([1.0], 1.0, []),
    ([0.05, 0.5], 0.3, [0.5]),
])
def test_dpo_fractions_are_those_above_the_labeled_share(fractions, dpo, expected):
    plans = _plans(fractions=fractions, dpo_labeled_fraction=dpo)
    assert plans["dpo_fractions"] == expected
    assert set(plans["dpo_fractions"]) <= set(plans["fractions"])


def test_preprocessing_signature_ignores_budgets_and_schedule():
    base = _plans()
    signature = preprocessing_signature(base)
    assert set(signature) == {"slicing_axis", "normalization", "channels_to_rgb", "storage_dtype", "image_size",
                              "transform", "dimensionality", "labels"}
    other = _plans(fractions=[0.3, 1.0], thresholds=[0.2, 0.7], dpo_labeled_fraction=0.3)
    other.update(batch_size=2, epochs=1, background_slice_share=0.5, dpo_epochs=1)
    assert preprocessing_signature(other) == signature
    assert preprocessing_signature(_plans(image_size=128)) != signature
    assert preprocessing_signature(make_plans(DATASET_JSON, _fingerprint(dtype="uint16"))) != signature
