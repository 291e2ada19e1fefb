import csv
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sampref_bench.cli.train import main as train_main
from sampref_bench.planners.data import case_roles
from sampref_bench.trainers.registry import available_trainers, get_trainer
from sampref_bench.trainers.validation import validate_cases
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import FAST, planned_busi, planned_phantoms

REPO = Path(__file__).resolve().parents[1]


def _trainer(name, dataset, fold=0, fraction=0.5, **overrides):
    return get_trainer(name)(dataset, fold, fraction, overrides={**FAST, **overrides}, progress=False)



# ------------------------------------------------------------------ registry
def test_typo_suggests_trainer():
    with pytest.raises(SamprefError, match="Did you mean SAMBoxOracle"):
        get_trainer("SAMBoxOracel")


def test_external_trainer_registers_and_pickles(tmp_path):
    module = tmp_path / "my_trainers.py"
    module.write_text(
        "from sampref_bench.trainers.sam.bounds import SAMBoxOracle\n"
        "class MyBoxTrainer(SAMBoxOracle):\n    pass\n")
    assert train_main(["--trainer-module", str(module), "--list"]) == 0
    cls = get_trainer("MyBoxTrainer")
    assert cls.__mro__[1].__name__ == "SAMBoxOracle"
    assert sys.modules[cls.__module__].__file__ == str(module.resolve())
    assert pickle.loads(pickle.dumps(cls)) is cls
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_class_name, (cls,)) == "MyBoxTrainer"


def _class_name(cls):
    return cls.__name__


def test_direct_subclass_of_abstract_base_is_a_trainer():
    from sampref_bench.trainers.sam.trainer import SAMTrainer

    class DirectSubclass(SAMTrainer):
        def inference_prompts(self, samples):
            return {}

    assert not DirectSubclass.is_abstract() and SAMTrainer.is_abstract()
    assert get_trainer("DirectSubclass") is DirectSubclass
    assert "DirectSubclass" in available_trainers() and "SAMTrainer" not in available_trainers()
    with pytest.raises(SamprefError, match="'SAMTrainer' is abstract"):
        get_trainer("SAMTrainer")


# ------------------------------------------------------------------ budgets
def test_case_roles_budgets():
    perm = [f"c{i}" for i in range(10)]
    splits = [{"train": sorted(perm), "val": ["v"], "permutation": perm,
               "labeled": {"0.2": perm[:2], "0.5": perm[:5]}, "dpo_labeled": perm[:1]}]
    sup = case_roles(splits, 0, 0.5)
    assert sup.labeled == perm[:5] and sup.rated == [] and sup.unlabeled == perm[5:]
    dpo = case_roles(splits, 0, 0.2, budget="dpo")
    assert dpo.labeled == ["c0"] and dpo.rated == ["c1"] and dpo.unlabeled == perm[2:]
    splits[0]["labeled"]["0.1"] = perm[:1]
    with pytest.raises(SamprefError, match=r"fraction 0.1 buys no rated case.*possible at the planned fraction\(s\) "
                                           r"0.2, 0.5"):
        case_roles(splits, 0, 0.1, budget="dpo")
    with pytest.raises(SamprefError, match="was not planned"):
        case_roles(splits, 0, 0.3)
    with pytest.raises(SamprefError, match="fold 1 does not exist"):
        case_roles(splits, 1, 0.2)


# ------------------------------------------------------------------ bad input
def test_user_errors_are_one_line_messages(capsys):
    assert train_main(["3", "SAMBoxOracle", "0"]) == 2
    assert "no dataset matches" in capsys.readouterr().err
    dataset = planned_phantoms()
    cases = [
        (["SAMNope", "0"], "unknown trainer"),
        (["SAMBoxOracle", "9"], "fold 9 does not exist"),
        (["SAMBoxOracle", "0", "--fraction", "0.3"], "was not planned"),
        (["SAMBoxOracle", "0", "--continue"], "no checkpoint to continue from"),
        (["SAMBoxOracle", "0", "--set", "nonsense=1"], "SAMBoxOracle has no option 'nonsense'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["SAMBoxOracle", "0", "--device", "cuda"], "no CUDA GPU"))
    for args, message in cases:
        assert train_main([dataset, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_missing_plans_says_run_plan(sampref_roots, capsys):
    (sampref_roots["preprocessed"] / "Dataset005_X").mkdir(parents=True)
    assert train_main(["5", "SAMBoxOracle", "0"]) == 2
    assert "sampref_plan" in capsys.readouterr().err


def test_existing_run_and_corrupt_checkpoint(capsys):
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOracle", dataset, epochs=1)
    out = trainer.run_training()
    assert train_main([dataset, "SAMBoxOracle", "0", "--fraction", "0.5", "--set", 'model="tiny"',
                       "--set", 'model_arch={"stride": 16}', "--set", "batch_size=2",
                       "--set", "iterations_per_epoch=2", "--epochs", "1"]) == 2
    assert "--continue" in capsys.readouterr().err
    (out / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SamprefError, match="not a readable sampref checkpoint"):
        _trainer("SAMBoxOracle", dataset, epochs=1).run_training(continue_training=True)


# ------------------------------------------------------------------ end to end
def test_two_label_dataset_end_to_end():
    dataset = planned_phantoms(n_labels=2)
    for name in ("SAMNoPrompt", "SAMBoxOracle"):
        trainer = _trainer(name, dataset, epochs=1)
        out = trainer.run_training()
        summary = json.loads((out / "validation" / "summary.json").read_text())
        assert set(summary["mean"]) == {"1", "2"}
        assert "Dice" in summary["foreground_mean"]
        assert len(summary["metric_per_case"]) == len(trainer.roles.val)
        prediction = out / "validation" / f"{trainer.roles.val[0]}.nii.gz"
        import SimpleITK as sitk
        ref = sitk.ReadImage(str(prediction.parents[5] / "raw" / trainer.dataset_name / "labelsTr" / prediction.name))
        pred = sitk.ReadImage(str(prediction))
        assert pred.GetSize() == ref.GetSize()
        np.testing.assert_allclose(pred.GetSpacing(), ref.GetSpacing())
        for name_ in ("config.json", "training_log.csv", "progress.png", "checkpoint_final.pth"):
            assert (out / name_).is_file()
        assert hasattr(trainer.network, "label_tokens") == (name == "SAMNoPrompt")
        assert json.loads((out / "config.json").read_text())["oracle"] == (name == "SAMBoxOracle")


def test_single_label_no_prompt_run():
    dataset = planned_phantoms(n_labels=1)
    trainer = _trainer("SAMNoPrompt", dataset, epochs=2)
    out = trainer.run_training()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1"} and summary["settings"]["oracle"] is False
    assert not hasattr(trainer.network, "label_tokens")
    assert trainer.inference_prompts(trainer.val_samples[:2]) == {}
    rows = list(csv.DictReader((out / "training_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(0 <= float(r["val_dice"]) <= 1 for r in rows)
    assert len(trainer.train_batches(0)) == FAST["iterations_per_epoch"]


def _run_cli_process(env, extra=()):
    args = [sys.executable, "-m", "sampref_bench.cli.train", "7", "SAMBoxOracle", "0", "--fraction", "0.5",
            "--epochs", "4", "--set", 'model="tiny"', "--set", 'model_arch={"stride": 16}', "--set", "batch_size=2",
            "--set", "iterations_per_epoch=2", "--no-progress", *extra]
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_and_continue_matches_uninterrupted(sampref_roots, tmp_path):
    planned_phantoms()
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    straight = _run_cli_process({**env, "SAMPREF_results": str(tmp_path / "straight")})
    assert straight.wait(timeout=600) == 0, straight.stderr.read().decode()

    env_k = {**env, "SAMPREF_results": str(tmp_path / "killed")}
    victim = _run_cli_process(env_k)
    run = _trainer("SAMBoxOracle", "7", epochs=4).output_dir.relative_to(sampref_roots["results"])
    log = tmp_path / "killed" / run / "training_log.csv"
    deadline = time.time() + 600
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (log.parent / "checkpoint_final.pth").exists()
    resumed = _run_cli_process(env_k, ["--continue"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()

    runs = [p / run for p in (tmp_path / "straight", tmp_path / "killed")]
    a, b = (torch.load(r / "checkpoint_final.pth", map_location="cpu", weights_only=True) for r in runs)
    assert a["epoch"] == b["epoch"] == 4
    assert set(a["networks"]) == {"network"}
    for key in a["networks"]["network"]:
        assert torch.equal(a["networks"]["network"][key], b["networks"]["network"][key]), key
    sa, sb = (json.loads((r / "validation" / "summary.json").read_text()) for r in runs)
    assert [c["metrics"] for c in sa["metric_per_case"]] == [c["metrics"] for c in sb["metric_per_case"]]
    assert [r["train_loss"] for r in a["log"]] == [r["train_loss"] for r in b["log"]]


def test_trained_model_beats_untrained_on_real_busi(tmp_path):
    # 8 real BUSI images (fraction 0.1 of fold 0), tiny random-init SAM with box prompts, 30 Adam steps on the
    # paper's 20:1 focal + Dice loss: the fine-tuned model must segment its own training images far better.
    dataset = planned_busi()
    settings = {"fraction": 0.1, "epochs": 3, "lr": 2e-3, "batch_size": 8, "iterations_per_epoch": 10}
    untrained = _trainer("SAMBoxOracle", dataset, **settings)
    untrained.initialize()
    cases = untrained.roles.labeled
    assert len(cases) == 8
    before = validate_cases(untrained, tmp_path / "before", cases)["foreground_mean"]["Dice"]
    trained = _trainer("SAMBoxOracle", dataset, **settings)
    trained.run_training()
    after = validate_cases(trained, tmp_path / "after", cases)["foreground_mean"]["Dice"]
    assert after > before + 0.15, (before, after)


class _PerfectOracle:
    """Mixin: probabilities are the one-hot preprocessed labels, so predictions must equal the raw labels."""

    def predict_probabilities(self, case):
        seg = self.data.label_store([case], "the perfect test oracle").seg(case)
        return np.stack([(seg == v).astype(np.float32) for v in self.labels])


@pytest.mark.parametrize("spacing_xyz, axis", [((0.8, 0.8, 3.0), 0), ((0.8, 3.0, 0.8), 1), ((3.0, 0.8, 0.8), 2)])
def test_volumes_are_sliced_along_the_planned_axis_and_reassembled(tmp_path, spacing_xyz, axis):
    from sampref_bench.trainers.sam.bounds import SAMNoPrompt

    dataset = planned_phantoms(n_labels=2, spacing_xyz=spacing_xyz, shape_zyx=(16, 24, 20))
    perfect = type("PerfectNoPrompt", (_PerfectOracle, SAMNoPrompt), {})(dataset, 0, 0.5, overrides=FAST,
                                                                          progress=False)
    assert perfect.plans["slicing_axis"] == axis
    perfect.initialize()
    case = perfect.roles.val[0]
    meta = perfect.data.meta(case)
    assert meta["n_slices"] == meta["original_shape"][axis]
    summary = validate_cases(perfect, tmp_path / "val")
    assert summary["n_cases"] == len(perfect.roles.val)
    for case in summary["metric_per_case"]:
        assert case["metrics"]["1"]["Dice"] == 1.0 and case["metrics"]["2"]["Dice"] == 1.0
        assert len(case["spacing"]) == 3
    # a real (tiny) model through the same path: the prediction has the raw volume's shape
    trainer = _trainer("SAMNoPrompt", dataset, epochs=1)
    trainer.initialize()
    assert trainer.predict_case(perfect.roles.val[0]).shape == tuple(meta["original_shape"])


def test_checkpoint_of_another_trainer_is_refused():
    dataset = planned_phantoms()
    box = _trainer("SAMBoxOracle", dataset, epochs=1)
    out = box.run_training()
    other = _trainer("SAMNoPrompt", dataset, epochs=1)
    other.output_dir.mkdir(parents=True)
    (other.output_dir / "checkpoint_latest.pth").write_bytes((out / "checkpoint_final.pth").read_bytes())
    with pytest.raises(SamprefError, match="written by trainer 'SAMBoxOracle'"):
        other.run_training(continue_training=True)


def test_unfrozen_encoder_trains_and_is_checkpointed():
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOracle", dataset, epochs=1, freeze_image_encoder=False)
    assert trainer.base_configuration_name() == "2d_full-tiny"
    trainer.initialize()
    before = {k: v.clone() for k, v in trainer.network.image_encoder.state_dict().items()}
    out = _trainer("SAMBoxOracle", dataset, epochs=1, freeze_image_encoder=False).run_training()
    state = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=True)["networks"]["network"]
    encoder_keys = [k for k in state if k.startswith("image_encoder.")]
    assert encoder_keys
    assert any(not torch.equal(state[k], before[k.removeprefix("image_encoder.")]) for k in encoder_keys)


@pytest.mark.slow
def test_litemedsam_end_to_end_on_real_busi(tmp_path, sampref_roots):
    # The real LiteMedSAM weights on 10 real BUSI images: plan, train the box oracle for a few steps, validate
    # from images alone (ground-truth boxes read only through the oracle's label store), evaluate.
    import shutil

    from sampref_bench.dataset_conversion.busi import convert_busi
    from sampref_bench.evaluation.report import evaluate_dataset
    from sampref_bench.planners.pipeline import plan_dataset
    from tests.conftest import BUSI_SUBSET

    source = tmp_path / "busi10"
    for klass in ("benign", "malignant"):
        (source / klass).mkdir(parents=True)
        for image in sorted(p for p in (BUSI_SUBSET / klass).glob("*.png") if "_mask" not in p.name)[:5]:
            for path in (BUSI_SUBSET / klass).glob(f"{image.stem}*.png"):
                shutil.copy(path, source / klass / path.name)
    convert_busi(source, 3)
    plan_dataset(3, fractions=[0.5, 1.0], num_processes=1, progress=False)
    trainer = get_trainer("SAMBoxOracle")(3, 0, 0.5, overrides={"epochs": 1, "iterations_per_epoch": 2},
                                          progress=False)
    assert trainer.plans["batch_size"] == 8 and trainer.config["model"] == "litemedsam"
    out = trainer.run_training()
    assert trainer.cache.computed == len(trainer.roles.labeled) + len(trainer.roles.val)
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert summary["settings"]["oracle"] is True
    assert summary["foreground_mean"]["Dice"] > 0.8  # LiteMedSAM with the exact box segments these lesions
    table, _ = evaluate_dataset(3)
    assert [row.oracle for row in table.rows] == [True]
