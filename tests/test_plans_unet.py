"""The U-Net plan keys (architecture, schedule) and the re-planning of a plans.json written before them."""

import json

import pytest

from sampref_bench import paths
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.planners.plans import (
    ADDED_PLAN_KEYS,
    PLANS_FORMAT,
    UNET_EPOCHS,
    UNET_ITERATIONS_PER_EPOCH,
    make_plans,
    plan_unet,
)
from tests.trainer_helpers import planned_phantoms

DATASET_JSON = {"name": "Toy", "channel_names": {"0": "US", "1": "Doppler"},
                "labels": {"background": 0, "lesion": 1, "vessel": 2}, "numTraining": 3, "file_ending": ".png",
                "dimensionality": 2}
FINGERPRINT = {"dataset_name": "Dataset001_Toy", "dimensionality": 2, "n_cases": 3,
               "cases": [{"case": f"c{i}", "shape": [300, 200], "spacing": [1.0, 1.0], "n_channels": 2,
                          "dtype": "uint8", "labels": {name: {"voxels": 50, "objects": 1, "bbox_fraction": [0.1, 0.1]}
                                                       for name in ("lesion", "vessel")}} for i in range(3)],
               "foreground_intensity_per_channel": [{"p0_5": 0.0, "p99_5": 255.0}] * 2}


@pytest.mark.parametrize("size, channels, bottleneck", [(256, [16, 32, 64, 128, 256], 16),
                                                        (128, [16, 32, 64, 128], 16), (64, [16, 32, 64], 16),
                                                        (512, [16, 32, 64, 128, 256], 32)])
def test_unet_architecture_is_planned_from_size_and_channels(size, channels, bottleneck):
    plans = make_plans(DATASET_JSON, FINGERPRINT, image_size=size)
    unet = plans["unet"]
    assert unet["channels"] == channels and unet["strides"] == [2] * (len(channels) - 1)
    assert size // 2 ** len(unet["strides"]) == bottleneck
    assert unet["in_channels"] == 2 and unet["out_channels"] == 3 and unet["num_res_units"] == 2
    assert f"bottleneck is {bottleneck} px" in unet["reason"] and plans["reasons"]["unet"] == unet["reason"]
    assert plans["unet_epochs"] == UNET_EPOCHS == 50 and plans["unet_iterations_per_epoch"] == UNET_ITERATIONS_PER_EPOCH
    assert "GPU run" in plans["reasons"]["unet_epochs"] and "must say so" in plans["reasons"]["unet_epochs"]
    assert plans["reasons"]["unet_iterations_per_epoch"]
    assert plan_unet(32, 1, 2)["strides"] == [2]  # never fewer than one downsampling


def test_old_plans_without_unet_keys_are_replanned_under_the_same_hash(sampref_roots):
    planned_phantoms()
    out = paths.preprocessed_root() / "Dataset007_Phantom"
    plans_path = out / "plans.json"
    plans = json.loads(plans_path.read_text())
    assert PLANS_FORMAT == 5  # format 5 (configurations) re-planned every dataset; keys added since keep the hash
    old = {k: v for k, v in plans.items() if k not in ADDED_PLAN_KEYS}
    old["reasons"] = {k: v for k, v in plans["reasons"].items() if k not in ADDED_PLAN_KEYS}
    plans_path.write_text(json.dumps(old))
    others = sorted(p for p in out.rglob("*") if p.is_file() and p != plans_path)
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in others}

    outcome = plan_dataset(7, fractions=[0.5, 1.0], num_processes=1, progress=False)
    assert "plans" in outcome.ran and {"fingerprint", "splits", "preprocessing"} <= set(outcome.skipped)
    replanned = json.loads(plans_path.read_text())
    assert replanned["inputs_hash"] == plans["inputs_hash"]
    assert all(key in replanned for key in ADDED_PLAN_KEYS) and replanned == plans
    for path in others:  # splits, fingerprint, preprocessed arrays: untouched (dataset.json is always rewritten)
        assert path.read_bytes() == stamps[path][1], path
        assert path.name == "dataset.json" or path.stat().st_mtime_ns == stamps[path][0], path

    again = plan_dataset(7, fractions=[0.5, 1.0], num_processes=1, progress=False)
    assert "plans" in again.skipped  # current now
