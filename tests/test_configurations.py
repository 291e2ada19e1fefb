"""Planned configurations (frozen, partial, LoRA, full image encoder): plans.json, ``-c``, aliases, refusals."""

import json
import warnings

import numpy as np
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
    assert type(trainer.cache).__name__ == "ActivationCache" and trainer.encoder_split is not None
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


# ------------------------------------------------------------------ LoRA, partial, views, online augmentation
SMALL_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1]}


@pytest.fixture
def small_vit(tmp_path):
    """A 256-px small ViT state dict in SAM's layout (random weights): the vit_b flavour at test size."""
    from sampref_bench.models import build_sam_architecture

    path = tmp_path / "small_vit_b.pth"
    torch.save(build_sam_architecture("vit_b", image_size=256, seed=3, arch_overrides=SMALL_VIT).state_dict(), path)
    return {"model": "vit_b", "model_checkpoint": str(path), "model_arch": SMALL_VIT}


def _final_state(out):
    return torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=True)["networks"]["network"]


def test_lora_trains_only_its_factors_and_resumes_bit_exact(sampref_roots, small_vit):
    from sampref_bench.models import build_sam
    from sampref_bench.trainers.run_folder import save_checkpoint

    dataset = planned_phantoms()
    settings = {**FAST, **small_vit, "epochs": 2}
    straight = get_trainer("SAMBoxOracle")(dataset, 0, 0.5, configuration="2d_lora", overrides=settings,
                                           progress=False, run_name="straight")
    out = straight.run_training()
    pretrained = build_sam("vit_b", checkpoint=small_vit["model_checkpoint"], arch_overrides=SMALL_VIT).state_dict()
    state = _final_state(out)
    encoder = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    changed = {k for k, v in encoder.items() if "lora_" in k or not torch.equal(v, pretrained[k])}
    assert changed == {k for k in encoder if "lora_" in k} and changed  # the encoder's own weights never move
    assert any(not torch.equal(encoder[k], torch.zeros_like(encoder[k])) for k in changed if "lora_B" in k)
    # killed after epoch 1, continued: the same final weights bit for bit
    first = get_trainer("SAMBoxOracle")(dataset, 0, 0.5, configuration="2d_lora", overrides=settings,
                                        progress=False, run_name="resumed")
    first.initialize()
    first._run_epoch()
    save_checkpoint(first.output_dir / "checkpoint_latest.pth", first.checkpoint_state())
    again = get_trainer("SAMBoxOracle")(dataset, 0, 0.5, configuration="2d_lora", overrides=settings,
                                        progress=False, run_name="resumed")
    resumed = _final_state(again.run_training(continue_training=True))
    assert set(resumed) == set(state)
    for key in state:
        assert torch.equal(state[key], resumed[key]), key


def test_a_frozen_vit_at_256_px_is_warned_towards_an_encoder_that_trains(sampref_roots, small_vit):
    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset, **small_vit)
    with pytest.warns(UserWarning, match="interpolated position embeddings.*prefer -c 2d_lora or -c 2d_full"):
        trainer.build_network()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _trainer("SAMNoPrompt", dataset, configuration="2d_full", **small_vit).build_network()


def test_partial_cached_activations_give_the_full_forward_logits(sampref_roots):
    from sampref_bench.planners.embedding_cache import ActivationCache, embed_slices

    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset, configuration="2d_partial", epochs=1)
    trainer.run_training()
    assert isinstance(trainer.cache, ActivationCache)
    trainer.network.eval()
    samples = trainer.val_samples[:3]
    with torch.no_grad():
        cached = trainer.predict_logits(samples)
        full = trainer.decode_with(trainer.network, embed_slices(trainer.network, trainer.data,
                                                                 [(s.case, s.slice) for s in samples]),
                                   trainer.inference_prompts(samples))
    assert torch.equal(cached, full)


def test_views_are_cached_once_and_never_read_at_validation(sampref_roots):
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOracle", dataset, augment_views=2, epochs=1)
    trainer.initialize()
    assert [v.is_identity for v in trainer.views] == [True, False, False]
    train = {(s.case, s.slice) for s in trainer.train_samples}
    from sampref_bench.planners.embedding_cache import parse_name

    files = [parse_name(p.name) for p in trainer.cache.folder.glob("*.npy")]  # (case, slice, image key, view key)
    views = {v.key for v in trainer.views[1:]}
    viewed = [(case, k, view) for case, k, _, view in files if view is not None]
    assert {view for _, _, view in viewed} == views and len(viewed) == 2 * len(train)
    assert {(case, k) for case, k, _ in viewed} == train  # only training slices get views
    assert {case for case, _, _, view in files if view is None} >= set(trainer.roles.val)
    again = _trainer("SAMBoxOracle", dataset, augment_views=2, epochs=1)
    again.initialize()
    assert again.cache.computed == 0  # embedded once, then read
    read = []
    original = trainer.cache.get
    trainer.cache.get = lambda case, k, view=None: read.append(view) or original(case, k, view)
    trainer.set_train_mode()
    for batch in trainer.train_batches(0):
        trainer.train_step(batch)
    assert any(v is not None and not v.is_identity for v in read)
    read.clear()
    trainer.network.eval()
    trainer.validation_step()
    trainer.predict_case(trainer.roles.val[0])
    assert read and all(v is None for v in read)
    assert trainer.output_dir.parent.name.split("__")[2].startswith("2d-tiny-")  # a tag names the views


def test_warped_prompts_follow_a_flipped_view(sampref_roots):
    from sampref_bench.planners.augmentation import ViewSpec

    dataset = planned_phantoms()
    trainer = _trainer("SAMNoPrompt", dataset)
    trainer.plans = {**trainer.plans, "image_size": 64}
    flip = ViewSpec(flip_cols=True)
    from sampref_bench.planners.augmentation import apply_view

    trainer.step_batch = 2
    trainer.step_warp = lambda masks: np.stack([apply_view(None, m, (40, 50), flip)[1] for m in masks])
    prompts = {"boxes": torch.tensor([[10.0, 5.0, 20.0, 15.0], [0.0, 0.0, 49.0, 39.0]]),
               "points": (torch.tensor([[[12.0, 7.0]], [[30.0, 30.0]]]), torch.tensor([[1], [1]])),
               "extra_sparse": "kept"}
    moved = trainer.warp_prompts(prompts)
    # left-right within the 50 px wide valid region: x -> 49 - x
    assert moved["boxes"].tolist() == [[29.0, 5.0, 39.0, 15.0], [0.0, 0.0, 49.0, 39.0]]
    assert moved["points"][0].tolist() == [[[37.0, 7.0]], [[19.0, 30.0]]]
    assert moved["points"][1].tolist() == [[1], [1]] and moved["extra_sparse"] == "kept"
    trainer.step_warp = None
    assert trainer.warp_prompts(prompts) is prompts


def test_online_augmentation_is_seeded_per_step_and_needs_an_encoder_that_runs(sampref_roots):
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOracle", dataset, configuration="2d_full", epochs=1)
    assert trainer.config["augment"] is True and trainer.config["augment_views"] == 0
    trainer.initialize()
    assert trainer.cache is None
    _, samples = next(iter(trainer.train_batches(0)))
    with torch.no_grad():
        a_emb, a_tgt = trainer.training_inputs(0, samples)
        b_emb, b_tgt = trainer.training_inputs(0, samples)
        c_emb, c_tgt = trainer.training_inputs(1, samples)
        plain = trainer.embeddings(samples)
    assert torch.equal(a_emb, b_emb) and torch.equal(a_tgt, b_tgt)
    assert not torch.equal(a_emb, plain) or not torch.equal(a_emb, c_emb)
    assert set(torch.unique(a_tgt).tolist()) <= {0.0, 1.0}
    with pytest.raises(SamprefError, match="augment=true draws new images at every step"):
        _trainer("SAMBoxOracle", dataset, augment=True)
    with pytest.raises(SamprefError, match="augment_views=2 caches views of an encoder that does not change"):
        _trainer("SAMBoxOracle", dataset, configuration="2d_lora", augment_views=2)
