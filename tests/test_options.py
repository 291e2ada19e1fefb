"""Typed trainer options: every ``--set`` value is checked against its schema before anything is created."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sampref_bench.cli.benchmark import main as benchmark_main
from sampref_bench.cli.train import main as train_main
from sampref_bench.grid.plan import plan_grid
from sampref_bench.trainers.options import Option, check_options, describe_options, option_schema, undeclared_options
from sampref_bench.trainers.registry import available_trainers, get_trainer
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import planned_phantoms

# ------------------------------------------------------------------ one option, table-driven
ACCEPTED = [
    (Option("int", low=1), 3, 3),
    (Option("int", low=1), 2.0, 2),  # an integral float is the integer
    (Option("int", low=0), 0, 0),
    (Option("float", low=0, low_open=True), 3e-4, 3e-4),
    (Option("float", low=0, low_open=True), 2, 2),  # an int stays an int (run tags unchanged)
    (Option("float", low=0, high=1), 1, 1),
    (Option("bool"), "no", False),
    (Option("bool"), "Yes", True),
    (Option("bool"), "off", False),
    (Option("bool"), 0, False),
    (Option("bool"), True, True),
    (Option("str", choices=("dpo", "ipo")), "ipo", "ipo"),
    (Option("str", choices=("vit_b",), ignore_case=True), "VIT_B", "VIT_B"),
    (Option("int", low=1, none="the plan's value"), None, None),
    (Option("float_list", low=0, high=1, low_open=True, high_open=True), [0.3, 0.5], [0.3, 0.5]),
    (Option("int_list", low=1), [16, 2.0], [16, 2]),
    (Option("dict"), {"stride": 16}, {"stride": 16}),
    (Option("path"), "/weights/sam.pth", "/weights/sam.pth"),
]

REFUSED = [
    (Option("int", low=1), 0, "an integer >= 1"),
    (Option("int", low=1), 1.5, "1.5 is not a whole number"),
    (Option("int", low=1), "abc", "an integer >= 1"),
    (Option("int", low=1), True, "an integer"),  # a bool is not a count
    (Option("float", low=0, low_open=True), "abc", "a number > 0"),
    (Option("float", low=0, low_open=True), -1, "a number > 0"),
    (Option("float", low=0, low_open=True), 0, "out of range"),
    (Option("float", low=0, high=1, high_open=True), 1.0, "in [0, 1)"),
    (Option("float"), math.inf, "a finite number"),
    (Option("bool"), "maybe", "true or false"),
    (Option("bool"), 2, "true or false"),
    (Option("str", choices=("dpo", "ipo")), "ipoo", "did you mean 'ipo'"),
    (Option("str"), 3, "a string"),
    (Option("int", low=1), None, "null is not allowed"),
    (Option("float_list", low=0, high=1), [0.3, 1.5], "each in [0, 1]"),
    (Option("float_list"), [], "a non-empty list"),
    (Option("float_list"), 0.5, "a JSON list of numbers"),
    (Option("dict"), "stride", "a JSON object"),
    (Option("path"), "  ", "a file or folder path"),
]


@pytest.mark.parametrize(("option", "value", "expected"), ACCEPTED)
def test_accepted_values_are_normalized(option: Option, value: object, expected: object) -> None:
    checked = option.check("key", value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize(("option", "value", "message"), REFUSED)
def test_refused_values_name_key_value_and_expectation(option: Option, value: object, message: str) -> None:
    with pytest.raises(SamprefError) as err:
        option.check("the_key", value)
    assert str(err.value).startswith("--set the_key=") and message in str(err.value)


# ------------------------------------------------------------------ every trainer has a full schema
@pytest.mark.parametrize("name", available_trainers())
def test_every_option_of_every_trainer_has_a_schema_its_default_fits(name: str) -> None:
    cls = get_trainer(name)
    assert undeclared_options(cls) == []
    schema = option_schema(cls)
    assert set(schema) == set(cls.defaults)
    for key, default in cls.defaults.items():
        assert schema[key].check(key, default) == default, key
        if default is None:
            assert schema[key].none, f"{name}.{key} defaults to None without saying what None means"


def test_inherited_options_keep_their_schema_and_a_subclass_may_narrow_one() -> None:
    base = get_trainer("SAMBaseline")
    dpo = get_trainer("DPORanking")
    assert option_schema(dpo)["lr"] is option_schema(base)["lr"]
    assert option_schema(get_trainer("UNet"))["lr"].help == "SGD learning rate"

    class NarrowLR(base):  # type: ignore[misc, valid-type]
        defaults = {**base.defaults, "extra_flag": False}
        options = {"lr": Option("float", low=1e-6, high=1e-3)}

    try:
        schema = option_schema(NarrowLR)
        assert schema["lr"].high == 1e-3 and schema["threshold"] is option_schema(base)["threshold"]
        assert schema["extra_flag"].kind == "bool" and undeclared_options(NarrowLR) == ["extra_flag"]
        with pytest.raises(SamprefError, match="in \\[1e-06, 0.001\\]"):
            check_options(NarrowLR, {"lr": 0.01})
    finally:
        from sampref_bench.trainers.base import TRAINER_CLASSES

        TRAINER_CLASSES.pop("NarrowLR", None)


def test_every_problem_is_listed_and_a_typo_gets_the_closest_key() -> None:
    with pytest.raises(SamprefError) as err:
        check_options(get_trainer("SAMBaseline"), {"lr": "abc", "lr_gama": 0.3, "batch_size": 0})
    text = str(err.value)
    assert text.startswith("SAMBaseline: 3 options are wrong; nothing was created")
    assert '--set lr="abc": expected a number > 0' in text
    assert "has no option 'lr_gama'; did you mean lr_gamma?" in text
    assert "--set batch_size=0: expected an integer >= 1, or null (the plan's batch_size)" in text


def test_list_options_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--list-options", "UAMT"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("options of UAMT")
    for key in get_trainer("UAMT").defaults:
        assert f"\n  {key} " in out
    assert "mc_dropout" in out and "SSL4MIS's rates" in out
    assert describe_options(get_trainer("UAMT")) in out


# ------------------------------------------------------------------ the findings, through the commands
BAD = [
    (["--set", "iterations_per_epoch=0"], "--set iterations_per_epoch=0: expected an integer >= 1"),
    (["--epochs", "0"], "--set epochs=0: expected an integer >= 1"),
    (["--set", "iterations_per_epoch=1.5"], "1.5 is not a whole number"),
    (["--set", "lr=abc"], '--set lr="abc": expected a number > 0'),
    (["--set", "lr=-1"], "--set lr=-1: expected a number > 0"),
    (["--set", "batch_size=0"], "--set batch_size=0: expected an integer >= 1"),
    (["--set", "freeze_image_encoder=maybe"], "expected true or false"),
    (["--set", "threshhold=0.4"], "did you mean threshold?"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_sampref_train_refuses_a_bad_value_before_creating_anything(
        args: list[str], message: str, sampref_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    assert train_main([dataset, "SAMNoPrompt", "0", "--fraction", "0.5", "--set", "model=tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not sampref_roots["results"].exists() or not any(sampref_roots["results"].rglob("*"))


def test_a_bool_given_as_no_unfreezes_the_encoder(sampref_roots: dict[str, Path]) -> None:
    dataset = planned_phantoms()
    trainer = get_trainer("SAMNoPrompt")(dataset, 0, 0.5, overrides={"model": "tiny", "freeze_image_encoder": "no"},
                                         progress=False)
    assert trainer.config["freeze_image_encoder"] is False
    assert trainer.output_dir.parent.name.split("__")[2].startswith("2d_full-tiny")
    assert trainer.configuration == "2d_full"


def test_unet_num_workers_is_checked_too(sampref_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    assert train_main([dataset, "UNet", "0", "--fraction", "0.5", "--set", "num_workers=-1"]) == 2
    assert "--set num_workers=-1: expected an integer >= 0" in capsys.readouterr().err


def test_the_benchmark_dry_run_refuses_what_the_real_run_would(sampref_roots: dict[str, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    code = benchmark_main(["-d", dataset, "-t", "SAMNoPrompt", "UNet", "--fractions", "0.5", "--folds", "0",
                           "--dry-run", "--set", "lr=abc", "--set", "model=tiny", "--set", "augment=perhaps"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing ran" in err
    assert err.count('--set lr="abc": expected a number > 0') == 1  # one line, though two trainers have lr
    assert "--set augment=\"perhaps\": expected true or false" in err
    assert not sampref_roots["results"].exists() or not any(sampref_roots["results"].rglob("*"))
    plan = plan_grid(dataset, ["SAMNoPrompt"], [0.5], ["0"], {"model": "tiny", "freeze_image_encoder": "no"})
    assert dict(plan.jobs[0].spec.overrides)["freeze_image_encoder"] is False
