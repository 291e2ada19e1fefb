"""``sampref_predict``: fold-ensemble prediction of new images in their own geometry and format."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sampref_bench.cli.predict import main
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.prediction.ensemble import original_probabilities, predict_folder
from sampref_bench.trainers.registry import get_trainer, load_trained_run
from sampref_bench.trainers.validation import merge_label_probabilities
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import FAST, planned_busi, planned_phantoms

RUN = "pt"
SAM_TINY = {**FAST, "epochs": 1}
UNET_TINY = {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "channels": [4, 8, 16], "num_workers": 0}
KEYS = ("raw", "preprocessed", "results")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(root: Path, plan, runs: list[tuple[str, int, dict]]) -> dict[tuple[str, int], Path]:
    """Plan a dataset under ``root`` and train tiny ``(trainer, fold, overrides)`` runs at fraction 1.0;
    ``(trainer, fold)`` -> run folder."""
    with pytest.MonkeyPatch.context() as patch:
        for key in KEYS:
            patch.setenv(f"SAMPREF_{key}", str(root / key))
        dataset = plan()
        return {(trainer, fold): get_trainer(trainer)(dataset, fold, 1.0, overrides=overrides, progress=False,
                                                      run_name=RUN).run_training()
                for trainer, fold, overrides in runs}


@pytest.fixture(scope="module")
def phantom_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, int], Path]]:
    """Planned 3D phantoms (dataset 7) with SAMNoPrompt runs of folds 0 and 1 and a SAMBoxOnly run of fold 0 (with the
    saliency box, which it computes for new images)."""
    root = tmp_path_factory.mktemp("phantoms")
    return root, _train(root, planned_phantoms, [("SAMNoPrompt", 0, SAM_TINY), ("SAMNoPrompt", 1, SAM_TINY),
                                                 ("SAMBoxOnly", 0, {**SAM_TINY, "box_source": "saliency"})])


@pytest.fixture(scope="module")
def busi_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, int], Path]]:
    """The planned BUSI subset (dataset 3) with a UNet run of fold 0."""
    root = tmp_path_factory.mktemp("busi")
    return root, _train(root, planned_busi, [("UNet", 0, UNET_TINY)])


def _use(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.setenv(f"SAMPREF_{key}", str(root / key))


def _val_cases(run: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (run / "validation").iterdir() if p.name != "summary.json")


def _raw_image(root: Path, dataset: str, case: str, ending: str) -> Path:
    return next((root / "raw").glob(f"Dataset{int(dataset):03d}_*")) / "imagesTr" / f"{case}_0000{ending}"


def test_nifti_prediction_keeps_geometry_and_equals_validation(phantom_runs, monkeypatch, tmp_path):
    """A volume with its own origin and direction comes back with them, and equals fold 0's validation mask."""
    root, runs = phantom_runs
    _use(root, monkeypatch)
    case = _val_cases(runs["SAMNoPrompt", 0])[0]
    source = sitk.ReadImage(str(_raw_image(root, "7", case, ".nii.gz")))
    moved = sitk.Image(source)
    moved.SetOrigin((10.5, -3.25, 7.0))
    moved.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(moved, str(tmp_path / "in" / f"{case}_0000.nii.gz"))
    predict_folder("7", "SAMNoPrompt", tmp_path / "in", tmp_path / "out", folds=[0], run_name=RUN, progress=False)
    out = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
    assert out.GetSize() == moved.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), moved.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), moved.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(out.GetDirection(), moved.GetDirection(), atol=1e-5)
    validation = sitk.GetArrayFromImage(sitk.ReadImage(str(runs["SAMNoPrompt", 0] / "validation" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), validation)


def test_two_folds_average_probabilities(phantom_runs, monkeypatch, tmp_path):
    """With folds 0 and 1 (here as ``-f all``) the mask is the thresholded mean of the two folds' probabilities."""
    root, runs = phantom_runs
    _use(root, monkeypatch)
    case = _val_cases(runs["SAMNoPrompt", 0])[0]
    (tmp_path / "in").mkdir()
    shutil.copy(_raw_image(root, "7", case, ".nii.gz"), tmp_path / "in")
    assert main(["-d", "7", "-t", "SAMNoPrompt", "-f", "all", "--run-name", RUN, "-i", str(tmp_path / "in"),
                 "-o", str(tmp_path / "out"), "--save-probabilities", "--no-progress"]) == 0
    trainers = [load_trained_run(runs["SAMNoPrompt", fold]) for fold in (0, 1)]
    probs = [t.predict_probabilities(case) for t in trainers]
    assert not np.array_equal(probs[0], probs[1])
    mean = (probs[0] + probs[1]) / 2
    meta = trainers[0].data.meta(case)
    expected = merge_label_probabilities(mean, SliceTransform.from_dict(meta["transform"]), trainers[0].labels,
                                         float(trainers[0].config["threshold"]), meta["slicing_axis"])
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(got, expected)
    with np.load(tmp_path / "out" / f"{case}.npz") as saved:
        assert saved["labels"].tolist() == trainers[0].labels
        assert saved["probabilities"].shape == (1, *got.shape)
        np.testing.assert_allclose(saved["probabilities"], original_probabilities(mean, meta), atol=1e-6)


def test_png_unet_prediction_keeps_geometry_and_equals_validation(busi_runs, monkeypatch, tmp_path):
    """PNG inputs of fold 0's validation cases: UNet masks of the same size and format as its validation masks."""
    root, runs = busi_runs
    _use(root, monkeypatch)
    run = runs["UNet", 0]
    cases = _val_cases(run)[:2]
    (tmp_path / "in").mkdir()
    for case in cases:
        shutil.copy(_raw_image(root, "3", case, ".png"), tmp_path / "in")
    assert main(["-d", "003", "-t", "UNet", "-f", "0", "--run-name", RUN, "-i", str(tmp_path / "in"),
                 "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{c}.png" for c in cases)
    for case in cases:
        source = sitk.ReadImage(str(tmp_path / "in" / f"{case}_0000.png"))
        out = sitk.ReadImage(str(tmp_path / "out" / f"{case}.png"))
        assert out.GetSize() == source.GetSize() and out.GetSpacing() == source.GetSpacing()
        assert out.GetOrigin() == source.GetOrigin()
        validation = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "validation" / f"{case}.png")))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out), validation)


def test_prompt_trainer_computes_prompts_of_new_images_apart(phantom_runs, monkeypatch, tmp_path):
    """A saliency-box trainer predicts a renamed volume from prompts it computes itself, outside the dataset's prompt
    and embedding caches, and matches its validation mask."""
    root, runs = phantom_runs
    _use(root, monkeypatch)
    run = runs["SAMBoxOnly", 0]
    case = _val_cases(run)[0]
    (tmp_path / "in").mkdir()
    shutil.copy(_raw_image(root, "7", case, ".nii.gz"), tmp_path / "in" / "new_volume_0000.nii.gz")
    caches = sorted(p for folder in ("prompts", "embeddings") for p in (root / "preprocessed").rglob(f"{folder}/**/*"))
    predict_folder("7", "SAMBoxOnly", tmp_path / "in", tmp_path / "out", folds=[0], run_name=RUN, progress=False)
    assert sorted(p for folder in ("prompts", "embeddings")
                  for p in (root / "preprocessed").rglob(f"{folder}/**/*")) == caches
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "new_volume.nii.gz")))
    validation = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "validation" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(got, validation)


def _png(path: Path, channels: int = 1) -> Path:
    array = np.random.default_rng(0).integers(0, 255, (20, 24, channels) if channels > 1 else (20, 24), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=channels > 1), str(path))
    return path


def _predict(folder: Path, out: Path, folds: list[int | str] | None = None) -> None:
    predict_folder("3", "UNet", folder, out, folds=folds or [0], run_name=RUN, progress=False)


def test_bad_inputs_are_refused(busi_runs, monkeypatch, tmp_path):
    """Wrong channel counts, no image, an output folder that is or overwrites the input, a missing fold."""
    root, _ = busi_runs
    _use(root, monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SamprefError, match="holds no input image"):
        _predict(empty, tmp_path / "out")
    extra = tmp_path / "extra"
    extra.mkdir()
    _png(extra / "a_0000.png")
    _png(extra / "a_0001.png")
    with pytest.raises(SamprefError, match=r"a_0001\.png: case a has channel\(s\) \[1\]"):
        _predict(extra, tmp_path / "out")
    colour = tmp_path / "colour"
    colour.mkdir()
    _png(colour / "b_0000.png", channels=3)
    with pytest.raises(SamprefError, match=r"b_0000\.png: the image has 3 components"):
        _predict(colour, tmp_path / "out")
    missing = tmp_path / "missing"
    missing.mkdir()
    _png(missing / "c_0001.png")
    with pytest.raises(SamprefError, match=r"c_0000\.png is missing"):
        _predict(missing, tmp_path / "out")
    twice = tmp_path / "twice"
    twice.mkdir()
    _png(twice / "f_0000.png")
    sitk.WriteImage(sitk.ReadImage(str(twice / "f_0000.png")), str(twice / "f_0000.nii.gz"))
    with pytest.raises(SamprefError, match=r"f_0000\.(png|nii\.gz) and .*f_0000\.(png|nii\.gz) are both channel 0"):
        _predict(twice, tmp_path / "out")
    good = tmp_path / "good"
    good.mkdir()
    _png(good / "d_0000.png")
    with pytest.raises(SamprefError, match="is the input folder"):
        _predict(good, good)
    out = tmp_path / "linked_out"
    out.mkdir()
    _png(out / "e.png")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "e_0000.png").symlink_to(out / "e.png")
    with pytest.raises(SamprefError, match="would overwrite the input file"):
        _predict(linked, out)
    with pytest.raises(SamprefError, match=r"fold_3 does not exist.*sampref_train Dataset003_\w+ UNet 3 "
                                           r"--fraction 1\.0 --run-name pt"):
        _predict(good, tmp_path / "out", folds=[0, 3])
    with pytest.raises(SamprefError, match=r"UNet__\w+__2d__f1\.0 does not exist.*2d-pt"):
        predict_folder("3", "UNet", good, tmp_path / "out", folds=[0], progress=False)
    assert not (tmp_path / "out").exists()
    assert main(["-d", "3", "-t", "UNet", "-i", str(good), "-o", str(good), "--run-name", RUN]) == 2
