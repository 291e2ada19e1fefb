"""The U-Net trainers: augmentation keeps labels aligned, every trainer runs end to end and resumes exactly,
weights do not depend on the number of loader workers, and the budget guard of the semi-supervised trainers."""

import json

import numpy as np
import pytest
import torch

from sampref_bench.dataset_conversion.phantoms import make_phantom, write_synthetic_raw_dataset
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.trainers.registry import get_trainer
from sampref_bench.trainers.run_folder import load_checkpoint
from sampref_bench.trainers.unet.data import (
    Augmenter,
    WeakStrongAugmenter,
    spatial_transforms,
    strong_intensity_transforms,
    weak_transforms,
)
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import write_image

#: Test size: 2 epochs of 2 steps of 2 labeled (+ 2 unlabeled) slices, a three-level U-Net of 4-16 channels.
TINY = {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 2, "channels": [4, 8, 16], "num_workers": 0}
TRAINERS = ("UNet", "MeanTeacher", "UAMT", "CPS", "FixMatch")
SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the test machine's two cores are shared, and spinning OpenMP threads slow tiny convolutions
    down many times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _planned_phantoms(n_labels: int = 1) -> str:
    """The phantoms of ``tests.trainer_helpers.planned_phantoms`` planned at 64 px (16x fewer pixels than 256)."""
    write_synthetic_raw_dataset(7, "Phantom", 5, n_labels=n_labels, shape_zyx=(12, 40, 32),
                                spacing_xyz=(0.8, 0.8, 3.0))
    plan_dataset(7, image_size=64, fractions=[0.5, 1.0], num_processes=1, progress=False)
    return "7"


def _square() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((1, SIZE, SIZE), np.float32)
    image[0, 8:30, 12:40] = 1.0
    return image, image.copy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ------------------------------------------------------------------ augmentation
def test_spatial_augmentation_moves_label_with_image():
    image, label = _square()
    augment = Augmenter(spatial_transforms(["image", "label"], ["label"], SIZE, always=True))
    moved = 0
    for seed in range(6):
        out = augment({"image": image, "label": label}, seed)
        lab = out["label"][0].numpy()
        assert set(np.unique(lab)) <= {0.0, 1.0}  # nearest: still class indices
        assert _iou(out["image"][0].numpy() > 0.5, lab > 0.5) > 0.85, seed
        moved += _iou(lab > 0.5, label[0] > 0.5) < 0.9
        again = augment({"image": image, "label": label}, seed)
        assert all(torch.equal(out[k], again[k]) for k in out)  # a pure function of the seed
    assert moved >= 5  # the geometry really changed


def test_elastic_skip_matches_monai_elastic():
    """The elastic step that skips its identity resampling gives MONAI's Rand2DElasticd output, seed for seed: the
    same items deformed, the same deformation, labels identical and images equal up to float rounding."""
    from monai.transforms import Rand2DElasticd

    rng = np.random.default_rng(0)
    image = rng.random((1, SIZE, SIZE), dtype=np.float32)
    label = (rng.random((1, SIZE, SIZE)) > 0.5).astype(np.float32)
    ours = spatial_transforms(["image", "label"], ["label"], SIZE)
    theirs = [*ours[:-1], Rand2DElasticd(["image", "label"], spacing=(SIZE // 8, SIZE // 8),
                                         magnitude_range=(1.0, 2.0), prob=0.1, mode=["bilinear", "nearest"],
                                         padding_mode="zeros")]
    assert type(ours[-1]).__name__ == "ElasticWhenDrawn"
    a, b = Augmenter(ours), Augmenter(theirs)
    deformed = 0
    for seed in range(60):
        x, y = a({"image": image, "label": label}, seed), b({"image": image, "label": label}, seed)
        assert torch.equal(x["label"], y["label"]), seed
        torch.testing.assert_close(x["image"], y["image"], atol=1e-5, rtol=0)
        deformed += ours[-1]._do_transform
    assert 1 <= deformed <= 15  # p 0.1 of 60: both branches ran


def test_fixmatch_weak_and_strong_views_share_geometry():
    image, _ = _square()
    same = WeakStrongAugmenter(weak_transforms(["image"], always=True), [])
    for seed in range(4):
        views = same({"image": image}, seed)
        assert torch.equal(views["weak"], views["strong"])  # no strong perturbation: the very weak view
    pair = WeakStrongAugmenter(weak_transforms(["image"], always=True), strong_intensity_transforms(SIZE, always=True))
    for seed in range(4):
        views = pair({"image": image}, seed)
        weak, strong = views["weak"][0].numpy(), views["strong"][0].numpy()
        square = weak > 0.5
        assert not np.allclose(weak, strong)  # the strong view is perturbed ...
        assert _iou(square, image[0] > 0.5) < 0.9  # ... the weak view moved the square ...
        visible = strong != 0  # (outside the cutout hole)
        inside, outside = strong[square & visible], strong[~square & visible]
        assert inside.size and inside.mean() > outside.mean() + 0.3, seed  # ... and the strong view has it there


# ------------------------------------------------------------------ end to end
def _trainer(name, dataset, fraction=0.5, run_name=None, **overrides):
    return get_trainer(name)(dataset, 0, fraction, overrides={**TINY, **overrides}, progress=False, run_name=run_name)


def _strip(log):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in log]


def _same_weights(a, b):
    assert set(a["networks"]) == set(b["networks"])
    for name, state in a["networks"].items():
        for key, value in state.items():
            assert torch.equal(value, b["networks"][name][key]), (name, key)


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_end_to_end_and_resume(name):
    dataset = _planned_phantoms(n_labels=2)
    extra = {"mc_passes": 2} if name == "UAMT" else {}
    straight = _trainer(name, dataset, run_name="straight", **extra)
    out = straight.run_training()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"} and "Dice" in summary["foreground_mean"]
    assert len(summary["metric_per_case"]) == len(straight.roles.val)
    record = json.loads((out / "config.json").read_text())
    assert record["architecture"]["channels"] == [4, 8, 16] and record["architecture"]["out_channels"] == 3
    assert record["hyperparameters"]["lr"] == 0.01 and "num_workers" not in record["hyperparameters"]
    assert len(straight.log) == 2 and all(0 <= row["val_dice"] <= 1 for row in straight.log)
    # unlabeled images are read without labels: the label store serves the labeled cases only
    assert straight.train_labels.cases == frozenset(straight.roles.labeled)
    unlabeled_cases = {case for case, _ in straight.unlabeled_slices}
    assert unlabeled_cases == (set(straight.roles.unlabeled) if name != "UNet" else set())
    assert record["cases"]["unlabeled"] == len(unlabeled_cases)

    victim = _trainer(name, dataset, run_name="killed", **extra)

    def interrupt(row):  # killed after epoch 2 ran, before its checkpoint: resumes from epoch 1's
        if victim.epoch == 2:
            raise KeyboardInterrupt

    victim.on_epoch_end = interrupt
    with pytest.raises(KeyboardInterrupt):
        victim.run_training()
    assert load_checkpoint(victim.output_dir / "checkpoint_latest.pth")["epoch"] == 1
    resumed = _trainer(name, dataset, run_name="killed", **extra)
    resumed.run_training(continue_training=True)
    a = load_checkpoint(out / "checkpoint_final.pth")
    b = load_checkpoint(resumed.output_dir / "checkpoint_final.pth")
    _same_weights(a, b)
    assert _strip(a["log"]) == _strip(b["log"])
    expected = {"CPS": {"network", "network_b"}, "MeanTeacher": {"network", "teacher"},
                "UAMT": {"network", "teacher"}}.get(name, {"network"})
    assert set(a["networks"]) == expected


def test_weights_do_not_depend_on_loader_workers():
    dataset = _planned_phantoms()
    runs = []
    for workers in (0, 2):
        trainer = _trainer("FixMatch", dataset, run_name=f"w{workers}", epochs=1, num_workers=workers)
        trainer.run_training()
        runs.append(load_checkpoint(trainer.output_dir / "checkpoint_final.pth"))
    _same_weights(*runs)
    assert _strip(runs[0]["log"]) == _strip(runs[1]["log"])
    # a run-time setting: the same run folder whatever the number of workers
    assert _trainer("UNet", dataset, num_workers=2).output_dir == _trainer("UNet", dataset).output_dir


def test_semi_supervised_needs_unlabeled_images(sampref_roots):
    dataset = _planned_phantoms()
    with pytest.raises(SamprefError, match="no unlabeled image.*imagesTrUnlabeled"):
        _trainer("MeanTeacher", dataset, fraction=1.0)
    trainer = _trainer("CPS", dataset)
    assert trainer.unlabeled_cases_used() == trainer.roles.unlabeled
    # an image without a label in imagesTrUnlabeled/ makes fraction 1.0 semi-supervised
    image, _, geometry = make_phantom((12, 40, 32), seed=31)
    write_image(sampref_roots["raw"] / "Dataset007_Phantom" / "imagesTrUnlabeled" / "extra_a_0000.nii.gz", image,
                geometry)
    plan_dataset(7, image_size=64, fractions=[0.5, 1.0], num_processes=1, progress=False)
    full = _trainer("MeanTeacher", dataset, fraction=1.0, epochs=1, iterations_per_epoch=1)
    assert full.unlabeled_cases_used() == ["extra_a"]
    full.run_training()
    assert {case for case, _ in full.unlabeled_slices} == {"extra_a"}
    assert "extra_a" not in full.train_labels.cases
    with pytest.raises(SamprefError, match="use_unlabeled_images is off"):
        _trainer("MeanTeacher", dataset, fraction=1.0, use_unlabeled_images=False)
    with pytest.raises(SamprefError, match="channels"):
        _trainer("UNet", dataset, channels=[8]).architecture()


# ------------------------------------------------------------------ UA-MT's Monte-Carlo dropout
def test_ssl4mis_dropout_rates_per_depth():
    from sampref_bench.trainers.unet.semi_supervised import ssl4mis_dropout

    assert ssl4mis_dropout(5) == [0.05, 0.1, 0.2, 0.3, 0.5]
    assert ssl4mis_dropout(3) == [0.05, 0.1, 0.5]
    assert ssl4mis_dropout(6) == [0.05, 0.1, 0.2, 0.3, 0.3, 0.5]


def test_encoder_dropout_sits_once_per_encoder_level_only():
    from sampref_bench.models.unet import build_unet

    arch = {"in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
            "num_res_units": 2}
    plain = build_unet(arch, 0)
    dropped = build_unet({**arch, "encoder_dropout": [0.05, 0.1, 0.2, 0.3, 0.5]}, 0)
    rates = {name: m.p for name, m in dropped.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    # one layer per level, in the down path (MONAI's ``SkipConnection`` nesting: ``submodule.0`` is a level's
    # down block, the innermost ``submodule`` the bottleneck); none in an up block (index 2 of a level)
    assert sorted(rates.values()) == [0.05, 0.1, 0.2, 0.3, 0.5]
    assert all(".2." not in name and not name.startswith("model.2") for name in rates)
    assert rates["model.0.conv.unit0.adn.D"] == 0.05
    assert all(m.p == 0 for m in plain.modules() if isinstance(m, torch.nn.Dropout))
    # dropout has no parameters: the same weights, and the same output in eval mode
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropped.state_dict().values()))
    x = torch.rand(2, 1, 32, 32)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))
    with pytest.raises(SamprefError, match="one rate in"):
        build_unet({**arch, "encoder_dropout": [0.1, 0.1]}, 0)


def test_uamt_teacher_passes_differ_without_input_noise():
    dataset = _planned_phantoms()
    trainer = _trainer("UAMT", dataset, noise_std=0.0, noise_bound=0.0, mc_passes=2)
    trainer.initialize()
    trainer.set_train_mode()
    image = torch.rand(1, int(trainer.plans["unet"]["in_channels"]), SIZE, SIZE)
    passes = trainer.teacher_passes(image, batch_index=0)
    assert passes.shape[:2] == (2, 1)
    assert not torch.allclose(passes[0], passes[1])  # dropout, not input noise, makes them differ
    assert trainer.architecture()["encoder_dropout"] == [0.05, 0.1, 0.5]
    # with the dropout switched off, zero input noise gives identical passes (what UAMT did before)
    off = _trainer("UAMT", dataset, run_name="nodrop", noise_std=0.0, noise_bound=0.0, mc_passes=2,
                   mc_dropout=[0.0, 0.0, 0.0])
    off.initialize()
    off.set_train_mode()
    passes = off.teacher_passes(image, batch_index=0)
    assert torch.equal(passes[0], passes[1])
    # the other U-Net trainers keep MONAI's dropout 0
    mean_teacher = _trainer("MeanTeacher", dataset)
    mean_teacher.initialize()
    assert all(m.p == 0 for m in mean_teacher.network.modules() if isinstance(m, torch.nn.Dropout))
    assert "encoder_dropout" not in mean_teacher.architecture()
