"""Run identity: tags for non-default hyperparameters, --run-name, --continue with changed settings."""

import pytest

from sampref_bench.cli.train import main as train_main
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.trainers.registry import get_trainer
from sampref_bench.trainers.run_identity import config_differences, run_tag, validate_run_name
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import FAST, planned_phantoms

TINY = {"model": "tiny", "model_arch": {"stride": 16}}


def _trainer(dataset, run_name=None, name="SAMNoPrompt", **overrides):
    return get_trainer(name)(dataset, 0, 0.5, overrides=overrides, progress=False, run_name=run_name)


@pytest.mark.parametrize("changes, expected", [
    ({}, None),
    ({"lr": 0.0003}, "lr0.0003"),
    ({"seed": 1, "epochs": 5}, "epochs5-seed1"),
    ({"model_arch": {"stride": 16}}, None),  # unsafe characters: shortened with a digest
])
def test_run_tag(changes, expected):
    tag = run_tag(changes)
    if expected is not None or not changes:
        assert tag == expected
    else:
        assert tag.startswith("model_archstride16-") and len(tag.split("-")[-1]) == 8
        assert run_tag({"model_arch": {"stride": 8}}) != tag


def test_long_tags_stay_short_and_distinct():
    a = run_tag({f"key{i}": i for i in range(10)})
    b = run_tag({f"key{i}": i + 1 for i in range(10)})
    assert len(a) <= 40 and len(b) <= 40 and a != b and "__" not in a


def test_run_name_validation():
    assert validate_run_name("lr3e-4") == "lr3e-4"
    for bad in ("a__b", "../x", "-x", "has space", ""):
        with pytest.raises(SamprefError, match="--run-name"):
            validate_run_name(bad)


def test_config_differences_names_keys():
    assert config_differences({"lr": 1e-4, "seed": 1}, {"lr": 3e-4, "seed": 1}) == ["lr: 0.0001 -> 0.0003"]
    assert config_differences({"a": 1}, {"b": 1}) == ["a: 1 -> <absent>", "b: <absent> -> 1"]


def test_non_default_runs_get_their_own_folders():
    dataset = planned_phantoms()
    default = _trainer(dataset)
    assert default.output_dir.parent.name == "SAMNoPrompt__samprefPlans__2d__f0.5"
    assert _trainer(dataset, lr=1e-4).output_dir == default.output_dir  # the default value is no change
    assert _trainer(dataset, model="lite_medsam").output_dir == default.output_dir  # alias canonicalised
    assert _trainer(dataset, model="LiteMedSAM").config["model"] == "litemedsam"
    faster = _trainer(dataset, lr=3e-4)
    assert faster.output_dir.parent.name == "SAMNoPrompt__samprefPlans__2d-lr0.0003__f0.5"
    assert _trainer(dataset, epochs=default.plans["epochs"]).output_dir == default.output_dir  # = planned value
    assert _trainer(dataset, epochs=3).run_tag == "epochs3"
    named = _trainer(dataset, run_name="mine", lr=3e-4)
    assert named.output_dir.parent.name == "SAMNoPrompt__samprefPlans__2d-mine__f0.5"
    tiny = _trainer(dataset, **TINY)
    assert tiny.base_configuration_name() == "2d-tiny" and tiny.run_tag.startswith("model_arch")
    record = faster.config_record()
    assert record["configuration_base"] == "2d" and record["run_tag"] == "lr0.0003" and record["oracle"] is False


def test_continue_with_changed_hyperparameters_names_the_keys(capsys):
    dataset = planned_phantoms()
    fast = {**FAST, "epochs": 1}
    _trainer(dataset, run_name="exp", **fast).run_training()
    with pytest.raises(SamprefError, match=r"other hyperparameters \(lr: 0.0001 -> 0.0003\)"):
        _trainer(dataset, run_name="exp", **fast, lr=3e-4).run_training(continue_training=True)
    # without a run name the changed setting points at another folder: the error lists the existing run
    _trainer(dataset, **fast).run_training()
    with pytest.raises(SamprefError, match=r"holds no checkpoint.*differs in lr: 0.0001 -> 0.0003"):
        _trainer(dataset, **fast, lr=3e-4).run_training(continue_training=True)
    args = [dataset, "SAMNoPrompt", "0", "--fraction", "0.5", "--run-name", "exp", "--continue", "--no-progress"]
    sets = [x for k, v in {**fast, "lr": 3e-4}.items() for x in ("--set", f"{k}={v}".replace("'", '"'))]
    assert train_main(args + sets) == 2
    assert "lr: 0.0001 -> 0.0003" in capsys.readouterr().err


def test_batch_size_and_schedule_do_not_depend_on_the_fractions():
    dataset = planned_phantoms()
    before = get_trainer("SAMNoPrompt")(dataset, 0, 1.0, progress=False)
    plan_dataset(7, fractions=[0.25, 0.5, 1.0], num_processes=1, progress=False)
    after = get_trainer("SAMNoPrompt")(dataset, 0, 1.0, progress=False)
    assert after.plans["fractions"] != before.plans["fractions"]
    assert after.config == before.config and after.output_dir == before.output_dir
    assert before.config["batch_size"] == before.plans["batch_size"] == 8
    assert before.config["iterations_per_epoch"] == before.plans["iterations_per_epoch"]


def test_dpo_budget_too_small_is_refused():
    from sampref_bench.trainers.sam.bounds import SAMNoPrompt

    class ToyDPO(SAMNoPrompt):
        budget = "dpo"

    dataset = planned_phantoms()
    with pytest.raises(SamprefError, match=r"buys no rated case.*possible at the planned fraction\(s\) 0.5, 1.0"):
        ToyDPO(dataset, 0, 0.1, progress=False)
    assert ToyDPO(dataset, 0, 0.5, progress=False).roles.rated


def test_preprocessed_folder_of_another_plan_is_detected():
    dataset = planned_phantoms()
    trainer = _trainer(dataset, **FAST, epochs=1)
    plan_dataset(7, fractions=[0.5, 1.0], image_size=128, num_processes=1, progress=False)
    with pytest.raises(SamprefError, match="built by another plan"):
        trainer.initialize()


def test_an_option_added_later_at_its_default_is_not_a_difference():
    saved = {"lr": 1e-4}  # a run saved before "selection" existed
    defaults = {"lr": 1e-4, "selection": "last"}
    assert config_differences(saved, {"lr": 1e-4, "selection": "last"}, defaults) == []
    assert config_differences(saved, {"lr": 1e-4, "selection": "inner"}, defaults) == [
        'selection: <absent> -> "inner"']
    assert config_differences(saved, {"lr": 1e-4, "selection": "last"}) == ['selection: <absent> -> "last"']


def test_the_learned_box_is_the_default_and_a_saliency_run_is_tagged():
    dataset = planned_phantoms()
    for name in ("SAMBaseline", "SAMNoVQA", "SAMBoxOnly"):
        default = _trainer(dataset, name=name)
        assert default.config["box_source"] == "learned" and default.run_tag is None
        assert default.output_dir.parent.name == f"{name}__samprefPlans__2d__f0.5"
        saliency = _trainer(dataset, name=name, box_source="saliency")
        assert saliency.output_dir.parent.name == f"{name}__samprefPlans__2d-box_sourcesaliency__f0.5"
    text_only = _trainer(dataset, name="SAMTextOnly")  # no box: its default stays the saliency
    assert text_only.config["box_source"] == "saliency" and text_only.run_tag is None
    dpo = _trainer(dataset, name="DPORanking")  # the DPO trainers' stage 1 is a default SAMBaseline run
    stage1 = dpo.stage1_trainer()
    assert dpo.config["box_source"] == stage1.config["box_source"] == "learned" and stage1.run_tag is None
    assert _trainer(dataset, name="DPORanking", box_source="saliency").stage1_trainer().run_tag == "box_sourcesaliency"


def test_a_config_saved_before_box_source_reads_as_the_saliency_it_was():
    baseline = get_trainer("SAMBaseline")
    assert baseline.recorded_config({"lr": 1e-4}) == {"box_source": "saliency", "lr": 1e-4}
    assert baseline.recorded_config({"box_source": "learned"}) == {"box_source": "learned"}  # recorded: kept
    assert get_trainer("SAMNoPrompt").recorded_config({"lr": 1e-4}) == {"lr": 1e-4}  # nothing to fill
    saved = baseline.recorded_config({"lr": 1e-4})
    assert config_differences(saved, {"lr": 1e-4, "box_source": "learned"}, baseline.defaults) == [
        'box_source: "saliency" -> "learned"']  # not taken for an option added later at today's default
