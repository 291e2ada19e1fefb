"""A finished run is self-contained (prediction needs only its own folder and the plan), and a run knows the plan it
was trained under (``plan_snapshot``: refused on ``--continue`` and before prediction when what it depends on
changed, accepted after a harmless replan)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sampref_bench.cli.predict import main as predict_main
from sampref_bench.planners.pipeline import signature_hash
from sampref_bench.trainers.base import PLAN_SNAPSHOT_KEYS, BaseTrainer
from sampref_bench.trainers.registry import get_trainer, load_trained_run
from sampref_bench.trainers.run_folder import load_checkpoint, save_checkpoint
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import DPO_TINY, copy_roots, planned_phantoms, prepared_dpo_roots

UNET_TINY = {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 2, "channels": [4, 8, 16], "num_workers": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_dpo_roots(tmp_path_factory.mktemp("dpo_prepared"))


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ------------------------------------------------------------------ self-contained
def test_dpo_run_predicts_without_its_stage1_run(prepared, sampref_roots, tmp_path, monkeypatch):
    dataset = copy_roots(prepared, sampref_roots)
    trainer = get_trainer("DPORanking")(dataset, 0, 0.5, overrides=DPO_TINY, progress=False, run_name="sc")
    run_dir = trainer.run_training()
    stage1_dir = Path(json.loads((run_dir / "config.json").read_text())["stage1_run"])
    assert (stage1_dir / "checkpoint_final.pth").is_file()
    case = trainer.roles.val[0]
    raw = next((sampref_roots["raw"]).glob("Dataset007_*"))
    (tmp_path / "in").mkdir()
    shutil.copy(raw / "imagesTr" / f"{case}_0000.nii.gz", tmp_path / "in" / f"{case}_0000.nii.gz")
    assert predict_main(["-d", dataset, "-t", "DPORanking", "--fraction", "0.5", "-f", "0", "--run-name", "sc",
                         "-i", str(tmp_path / "in"), "-o", str(tmp_path / "before"), "--no-progress"]) == 0

    # only the DPO run's own fold folder is left: a results root holding it alone, no stage-1 run anywhere
    alone = tmp_path / "results_alone"
    target = alone / run_dir.parent.parent.name / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, target)
    shutil.rmtree(sampref_roots["results"])
    monkeypatch.setenv("SAMPREF_results", str(alone))

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a finished run for prediction trained or prepared training data")

    from sampref_bench.trainers.dpo.trainers import DPOTrainer
    from sampref_bench.trainers.sam.two_stage import TwoStageSAMTrainer

    monkeypatch.setattr(BaseTrainer, "run_training", forbidden)
    monkeypatch.setattr(TwoStageSAMTrainer, "ensure_stage1", forbidden)
    monkeypatch.setattr(DPOTrainer, "generate_candidates", forbidden)
    assert predict_main(["-d", dataset, "-t", "DPORanking", "--fraction", "0.5", "-f", "0", "--run-name", "sc",
                         "-i", str(tmp_path / "in"), "-o", str(tmp_path / "after"), "--no-progress"]) == 0
    after = _mask(tmp_path / "after" / f"{case}.nii.gz")
    np.testing.assert_array_equal(after, _mask(tmp_path / "before" / f"{case}.nii.gz"))
    np.testing.assert_array_equal(after, _mask(target / "validation" / f"{case}.nii.gz"))
    assert not stage1_dir.exists() and sorted(p.name for p in alone.rglob("fold_*")) == ["fold_0"]
    loaded = load_trained_run(target)
    assert set(loaded.networks) == {"network"}  # no reference policy is built


# ------------------------------------------------------------------ the plan a run was trained under
def _replan(preprocessed: Path, **changes) -> None:
    """Edit plans.json as a replan would, and mark the preprocessed folder as built by the edited plan."""
    plans_path = preprocessed / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans.update(changes)
    plans_path.write_text(json.dumps(plans))
    marker = next(preprocessed.glob("samprefPlans_*")) / "preprocessing.json"
    record = json.loads(marker.read_text())
    record["signature_hash"] = signature_hash(plans)
    marker.write_text(json.dumps(record))


def _unet(dataset, run_name):
    return get_trainer("UNet")(dataset, 0, 1.0, overrides=UNET_TINY, progress=False, run_name=run_name)


def test_plan_snapshot_is_recorded(sampref_roots):
    dataset = planned_phantoms()
    run_dir = _unet(dataset, "snap").run_training()
    plans = json.loads(next(sampref_roots["preprocessed"].glob("Dataset007_*")).joinpath("plans.json").read_text())
    recorded = json.loads((run_dir / "config.json").read_text())["plan_snapshot"]
    assert set(recorded) == set(PLAN_SNAPSHOT_KEYS)
    assert recorded["image_size"] == plans["image_size"] and recorded["normalization"] == plans["normalization"]
    assert load_checkpoint(run_dir / "checkpoint_final.pth")["plan_snapshot"] == recorded


def test_continue_and_prediction_check_the_plan(sampref_roots):
    dataset = planned_phantoms()
    preprocessed = next(sampref_roots["preprocessed"].glob("Dataset007_*"))
    finished = _unet(dataset, "done").run_training()
    victim = _unet(dataset, "cut")

    def interrupt(row):  # after epoch 2 ran, before its checkpoint: epoch 1's is the latest
        if victim.epoch == 2:
            raise KeyboardInterrupt

    victim.on_epoch_end = interrupt
    with pytest.raises(KeyboardInterrupt):
        victim.run_training()

    # a harmless replan (other thresholds and DPO fractions): both paths accept the runs
    _replan(preprocessed, thresholds=[0.25, 0.5, 0.75], dpo_fractions=[1.0])
    assert load_trained_run(finished).predict_case(victim.roles.val[0]).ndim == 3
    _unet(dataset, "cut").run_training(continue_training=True)

    size = json.loads((preprocessed / "plans.json").read_text())["image_size"]
    _replan(preprocessed, image_size=size * 2)
    with pytest.raises(SamprefError) as info:
        load_trained_run(finished)
    message = str(info.value)
    assert f"image_size: {size} -> {size * 2}" in message and "loading a finished run" in message
    continued = _unet(dataset, "done")
    with pytest.raises(SamprefError, match=rf"--continue: .*image_size: {size} -> {size * 2}"):
        continued.run_training(continue_training=True)

    # a training-only key (the U-Net schedule) stops --continue, not prediction
    _replan(preprocessed, image_size=size, unet_epochs=7)
    assert load_trained_run(finished).network is not None
    with pytest.raises(SamprefError, match=r"unet_epochs: .* -> 7"):
        _unet(dataset, "done").run_training(continue_training=True)


def test_checkpoint_from_before_plan_snapshots_loads_with_a_warning(sampref_roots):
    dataset = planned_phantoms()
    run_dir = _unet(dataset, "old").run_training()
    state = load_checkpoint(run_dir / "checkpoint_final.pth")
    del state["plan_snapshot"]
    save_checkpoint(run_dir / "checkpoint_final.pth", state)
    with pytest.warns(UserWarning, match="predates plan snapshots"):
        loaded = load_trained_run(run_dir)
    assert loaded.network is not None
