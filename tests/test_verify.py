"""verify_raw_dataset on a good SYNTHETIC 3D dataset and on a copy broken in every way at once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conversion_helpers import read, write_like

from sampref_bench.cli.convert import main
from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
from sampref_bench.dataset_conversion.verify import verify_raw_dataset

SHAPE = (12, 24, 20)


@pytest.fixture
def good(sampref_roots):
    return write_synthetic_raw_dataset(7, "Good", 8, n_labels=2, seed=4, shape_zyx=SHAPE)


def test_good_dataset(good):
    report = verify_raw_dataset(good)
    assert report.ok, report.summary()
    assert report.n_cases == 8 and report.n_unlabeled == 0
    voxels = {"synthetic_organ": 0, "synthetic_lesion": 0}
    for path in (good / "labelsTr").iterdir():
        label = read(path)[0]
        voxels["synthetic_organ"] += int((label == 1).sum())
        voxels["synthetic_lesion"] += int((label == 2).sum())
    assert report.label_cases == {"synthetic_organ": 8, "synthetic_lesion": 8}
    assert report.label_voxels == voxels
    assert "no problems found" in report.summary()


def _break(good, raw):
    """A copy of ``good`` with one of each problem; returns the broken folder."""
    bad = raw / "Dataset008_Broken"
    shutil.copytree(good, bad)
    images, labels = bad / "imagesTr", bad / "labelsTr"
    (labels / "synthetic_000.nii.gz").unlink()                                  # image without label
    (images / "synthetic_001_0000.nii.gz").unlink()                             # label without image
    label, like = read(labels / "synthetic_002.nii.gz")                          # shape mismatch
    cropped = sitk.GetImageFromArray(label[:, :-3, :])
    cropped.SetSpacing(like.GetSpacing())
    sitk.WriteImage(cropped, str(labels / "synthetic_002.nii.gz"), True)
    image, like = read(images / "synthetic_003_0000.nii.gz")                     # spacing mismatch
    moved = sitk.GetImageFromArray(image)
    moved.CopyInformation(like)
    moved.SetSpacing((0.8, 0.8, 5.0))
    sitk.WriteImage(moved, str(images / "synthetic_003_0000.nii.gz"), True)
    label, like = read(labels / "synthetic_004.nii.gz")                          # undeclared label value
    label[0, 0, 0] = 7
    write_like(labels / "synthetic_004.nii.gz", label, like)
    image, like = read(images / "synthetic_005_0000.nii.gz")                     # NaN intensity
    image = image.astype(np.float32)
    image[5, 10, 10] = np.nan
    write_like(images / "synthetic_005_0000.nii.gz", image, like)
    (images / "synthetic_006_0000.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")  # unreadable
    shutil.copy(images / "synthetic_007_0000.nii.gz", images / "SYNTHETIC_007_0000.nii.gz")  # names by case
    shutil.copy(labels / "synthetic_007.nii.gz", labels / "SYNTHETIC_007.nii.gz")
    meta = json.loads((bad / "dataset.json").read_text())                        # numTraining wrong
    meta["numTraining"] = 42
    (bad / "dataset.json").write_text(json.dumps(meta))
    return bad


def test_every_problem_in_one_report(good, sampref_roots):
    bad = _break(good, sampref_roots["raw"])
    report = verify_raw_dataset(bad)
    found = [(p.path, p.message) for p in report.problems]

    def has(file, phrase):
        return any(path.endswith(file) and phrase in message for path, message in found)

    assert has("imagesTr/synthetic_000_0000.nii.gz", "image without label")
    assert has("labelsTr/synthetic_001.nii.gz", "label without image")
    assert has("imagesTr/synthetic_002_0000.nii.gz", "differs from label shape")
    assert has("imagesTr/synthetic_003_0000.nii.gz", "spacing")
    assert has("labelsTr/synthetic_004.nii.gz", "label values [7] are not declared")
    assert has("imagesTr/synthetic_005_0000.nii.gz", "NaN")
    assert has("imagesTr/synthetic_006_0000.nii.gz", "cannot read")
    assert has("Dataset008_Broken", "SYNTHETIC_007") and has("Dataset008_Broken", "differ only in letter case")
    assert has("dataset.json", "numTraining is 42")
    assert len(report.problems) == 9, report.summary()
    assert not report.ok and "9 problem(s)" in report.summary()


def test_cli_verify_exit_codes(good, sampref_roots, capsys):
    assert main(["verify", "-d", "7"]) == 0
    _break(good, sampref_roots["raw"])
    assert main(["verify", "-d", "8"]) == 1
    assert "numTraining is 42" in capsys.readouterr().out


def test_unlabeled_images_are_checked(good):
    """imagesTrUnlabeled: a good image passes; a 2D image in a 3D dataset, an extra channel, a missing channel and
    a name taken by a labeled case are each named by their file."""
    from sampref_bench.dataset_conversion.phantoms import make_phantom
    from sampref_bench.utilities.imageio import write_image

    folder = good / "imagesTrUnlabeled"
    image, _, geometry = make_phantom(SHAPE, seed=11)
    write_image(folder / "extra_good_0000.nii.gz", image, geometry)
    write_image(folder / "extra_flat_0000.nii.gz", image[3])                       # 2D in a 3D dataset
    write_image(folder / "extra_two_0000.nii.gz", image, geometry)                 # one channel too many
    write_image(folder / "extra_two_0001.nii.gz", image, geometry)
    write_image(folder / "extra_nochannel0_0001.nii.gz", image, geometry)          # channel 0 missing
    write_image(folder / "Synthetic_003_0000.nii.gz", image, geometry)              # a labeled case's name
    report = verify_raw_dataset(good)
    found = [(p.path, p.message) for p in report.problems]

    def has(file, phrase):
        return any(path.endswith(file) and phrase in message for path, message in found)

    assert report.n_unlabeled == 5
    assert has("imagesTrUnlabeled/extra_flat_0000.nii.gz", "image has 2 dimensions but dataset.json says "
                                                           "dimensionality 3")
    assert has("imagesTrUnlabeled/extra_two_0001.nii.gz", "has channel(s) [1] but dataset.json names only 1")
    assert has("imagesTrUnlabeled", "case extra_nochannel0 lacks channel(s) [0]")
    assert has("imagesTrUnlabeled/Synthetic_003_0000.nii.gz", "is also the labeled case 'synthetic_003'")
    assert len(report.problems) == 5, report.summary()   # extra_nochannel0 also has a channel beyond the one named
