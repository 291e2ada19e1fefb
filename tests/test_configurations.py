"""Planned configurations (frozen, partial, LoRA, full image encoder): plans.json, ``-c``, aliases, refusals."""

import json
import warnings

import pytest
import torch

from sampref_bench.planners.plans import ENCODER_MODES, PLANS_FORMAT, make_plans
from sampref_bench.trainers.registry import get_trainer
from sampref_bench.utilities.errors import SamprefError
from tests.test_plans_schedule import DATASET_JSON, _fingerprint
from tests.trainer_helpers import FAST, planned_phantoms


def _trainer(name, dataset, configuration="2d", **overrides):
    return get_trainer(name)(dataset, 0, 0.5, configuration=configuration, overrides={**FAST, **overrides},
                             progress=False)


def test_plans_list_four_configurations_with_schedule_cost_and_reason():
    plans = make_plans(DATASET_JSON, _fingerprint())
    assert plans["plans_format"] == PLANS_FORMAT == 5
    assert plans["configuration"] == "2d"
    assert list(plans["configurations"]) == ["2d", "2d_partial", "2d_lora", "2d_full"]
    assert {n: c["encoder"] for n, c in plans["configurations"].items()} == ENCODER_MODES
    for name, entry in plans["configurations"].items():
        for key in ("batch_size", "epochs", "iterations_per_epoch"):
            assert entry[key] == plans[key], (name, key)
        assert entry["cpu_seconds_per_image_step"] > 0
        assert f"{entry['cpu_seconds_per_image_step']} s each on 2 CPU cores" in entry["reason"]
    frozen, partial, lora, full = plans["configurations"].values()
    assert "views" in frozen["augmentation"] and "views" in partial["augmentation"]
    assert lora["augmentation"] == full["augmentation"] == {"online": True}
    assert partial["trainable_stages"] == 1 and lora["lora_rank"] == 4
    # per-epoch validation through an encoder that runs is kept smaller
    assert lora["epoch_val_samples"] < frozen["epoch_val_samples"]
    # the frozen and partial ones say that ViT flavours need an encoder that trains
    assert "2d_lora or 2d_full" in frozen["reason"] and "2d_lora or 2d_full" not in full["reason"]
    assert "2d_partial" in plans["reasons"]["configurations"]


def test_an_unknown_configuration_names_the_planned_ones(sampref_roots):
    dataset = planned_phantoms()
    with pytest.raises(SamprefError, match="'3d' is not planned .*: the plan has 2d, 2d_partial, 2d_lora, 2d_full"):
        _trainer("SAMNoPrompt", dataset, configuration="3d")


@pytest.mark.parametrize(("configuration", "overrides", "expected"), [
    ("2d", {}, "2d-tiny"),
    ("2d_full", {}, "2d_full-tiny"),
    ("2d_partial", {}, "2d_partial-tiny"),
    ("2d", {"freeze_image_encoder": False}, "2d_full-tiny"),  # the old way to unfreeze
    ("2d-unfrozen", {}, "2d_full-tiny"),  # the old configuration spelling
    ("2d-tiny-unfrozen", {}, "2d_full-tiny"),
])
def test_configuration_names_and_old_spellings(sampref_roots, configuration, overrides, expected):
    dataset = planned_phantoms()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer("SAMNoPrompt", dataset, configuration=configuration, **overrides)
    assert trainer.base_configuration_name() == expected
    assert trainer.output_dir.parent.name.split("__")[2].startswith(expected + "-")
    assert trainer.config["freeze_image_encoder"] is (expected.split("-")[0] == "2d")
    old = configuration.endswith("-unfrozen")
    assert any("old spelling" in str(w.message) for w in caught) is old


def test_frozen_contradicting_the_configuration_is_refused(sampref_roots):
    dataset = planned_phantoms()
    with pytest.raises(SamprefError, match="freeze_image_encoder=true contradicts configuration '2d_full'"):
        _trainer("SAMNoPrompt", dataset, configuration="2d_full", freeze_image_encoder=True)


def test_a_unet_has_only_the_default_configuration(sampref_roots):
    dataset = planned_phantoms()
    with pytest.raises(SamprefError, match="UNet has no SAM image encoder.*'2d_full'"):
        get_trainer("UNet")(dataset, 0, 0.5, configuration="2d_full", progress=False)


def test_lora_needs_attention_and_says_so(sampref_roots):
    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset, configuration="2d_lora")
    with pytest.raises(SamprefError, match="configuration '2d_lora' \\(lora encoder\\) does not apply to SAM flavour "
                                           "'tiny'"):
        trainer.initialize()


def test_a_plan_without_configurations_asks_to_replan(sampref_roots):
    dataset = planned_phantoms()
    path = sampref_roots["preprocessed"] / "Dataset007_Phantom" / "plans.json"
    plans = json.loads(path.read_text())
    del plans["configurations"]
    plans["plans_format"] = 4
    path.write_text(json.dumps(plans))
    with pytest.raises(SamprefError, match="predates planned configurations .*rerun `sampref_plan -d Dataset007"):
        _trainer("SAMNoPrompt", dataset)


def test_a_run_of_an_older_plan_format_is_never_continued(sampref_roots):
    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset, epochs=1)
    trainer.initialize()
    state = trainer.checkpoint_state()
    state["plan_snapshot"] = {**state["plan_snapshot"], "plans_format": None}  # written before format 5
    with pytest.raises(SamprefError, match="plan format 4 or older, .* is format 5 .*never continued"):
        trainer.restore(state, trainer.output_dir / "checkpoint_latest.pth")
    trainer.restore(trainer.checkpoint_state(), trainer.output_dir / "checkpoint_latest.pth")  # same format: fine


def test_the_partial_configuration_trains_only_the_encoder_tail(sampref_roots):
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOracle", dataset, configuration="2d_partial", epochs=1)
    trainer.initialize()
    encoder = trainer.network.image_encoder
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and trainable != {n for n, _ in encoder.named_parameters()}
    assert trainer.cache is None and trainer.encoder_split is not None
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    trainer.set_train_mode()
    trainer.train_step(next(iter(trainer.train_batches(0))))
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_the_grid_runs_configurations_side_by_side_and_a_unet_once(sampref_roots):
    from sampref_bench.grid.plan import plan_grid

    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["SAMNoPrompt", "UNet"], [0.5], ["0"], {"model": "tiny"},
                     configuration=["2d", "2d_partial"])
    names = sorted(job.folder.parent.name.split("__")[2] for job in plan.jobs)
    assert names == ["2d", "2d-tiny", "2d_partial-tiny"]  # the U-Net once, under 2d
