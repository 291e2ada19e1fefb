"""Converting SYNTHETIC 3D image/label pairs (NIfTI, NRRD, MHA) and DICOM series with convert_nifti."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conversion_helpers import raw_entries, read, snapshot, write_like

from sampref_bench.cli.convert import main
from sampref_bench.dataset_conversion.nifti import convert_nifti
from sampref_bench.dataset_conversion.phantoms import (
    make_phantom,
    write_dicom_series,
    write_nifti_pairs,
)
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import Geometry

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS-stored-as-LPS style axis flips


def _assert_same_volume(out_path, source_path):
    out, out_image = read(out_path)
    source, source_image = read(source_path)
    np.testing.assert_array_equal(out, source)
    np.testing.assert_allclose(out_image.GetSpacing(), source_image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(out_image.GetOrigin(), source_image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(out_image.GetDirection(), source_image.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_pairs_round_trip(tmp_path, sampref_roots, ending):
    images, labels = write_nifti_pairs(tmp_path / "src", 2, ending=ending, n_labels=2, direction=FLIPPED)
    report = convert_nifti(images, labels, 20, "Synth", modality="CT", label_names=["organ", "small lesion"])
    out = sampref_roots["raw"] / "Dataset020_Synth"
    assert report.ok and report.n_cases == 2
    for i in range(2):
        case = f"synthetic_{i:03d}"
        _assert_same_volume(out / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}{ending}")
        _assert_same_volume(out / "labelsTr" / f"{case}.nii.gz", labels / f"{case}{ending}")
    assert read(out / "imagesTr" / "synthetic_000_0000.nii.gz")[0].dtype == np.int16
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "organ": 1, "small_lesion": 2}
    assert meta["target_text"] == {"organ": "organ", "small_lesion": "small lesion"}
    assert (meta["channel_names"], meta["dimensionality"], meta["file_ending"]) == ({"0": "CT"}, 3, ".nii.gz")


def _dicom_source(tmp_path, name="series_a"):
    image, label, geometry = make_phantom((12, 32, 28), (0.7, 0.8, 2.5), n_labels=1, seed=3)
    write_dicom_series(tmp_path / "dicom" / name, image, geometry)
    (tmp_path / "segs").mkdir(exist_ok=True)
    label_image = sitk.GetImageFromArray(label)
    geometry.apply(label_image)
    sitk.WriteImage(label_image, str(tmp_path / "segs" / f"{name}.nii.gz"), True)
    return image, label, geometry


def test_dicom_series_round_trip(tmp_path, sampref_roots):
    image, label, geometry = _dicom_source(tmp_path)
    report = convert_nifti(tmp_path / "dicom", tmp_path / "segs", 21, "SynthDicom", modality="CT", dicom=True)
    out = sampref_roots["raw"] / "Dataset021_SynthDicom"
    assert report.ok and report.n_cases == 1
    array, out_image = read(out / "imagesTr" / "series_a_0000.nii.gz")
    np.testing.assert_array_equal(array, image)
    np.testing.assert_allclose(out_image.GetSpacing(), geometry.spacing, atol=1e-6)
    np.testing.assert_allclose(out_image.GetOrigin(), geometry.origin, atol=1e-6)
    np.testing.assert_allclose(out_image.GetDirection(), geometry.direction, atol=1e-6)
    np.testing.assert_array_equal(read(out / "labelsTr" / "series_a.nii.gz")[0], label)


def test_dicom_folder_with_two_series_takes_the_largest(tmp_path, sampref_roots):
    image, _, geometry = _dicom_source(tmp_path)
    scout = Geometry(geometry.spacing, (0.0, 0.0, 500.0), geometry.direction)
    write_dicom_series(tmp_path / "dicom" / "series_a", image[:3, :, :] // 2, scout,
                       series_uid="1.2.826.0.1.3680043.2.1125.99.7", prefix="scout")
    report = convert_nifti(tmp_path / "dicom", tmp_path / "segs", 21, "SynthDicom", modality="CT", dicom=True)
    assert report.ok
    notes = json.loads((sampref_roots["raw"] / "Dataset021_SynthDicom" / "conversion.json").read_text())["notes"]
    assert any("2 DICOM series" in n and "99.7" in n for n in notes)


def test_nnunet_channel_suffix_is_matched(tmp_path, sampref_roots):
    images, labels = write_nifti_pairs(tmp_path / "src", 2)
    for path in list(images.iterdir()):
        path.rename(images / path.name.replace(".nii.gz", "_0000.nii.gz"))
    assert convert_nifti(images, labels, 22, "Suffix", modality="CT").n_cases == 2


def test_cli_nifti(tmp_path, sampref_roots):
    images, labels = write_nifti_pairs(tmp_path / "src", 2)
    argv = ["nifti", "--images", str(images), "--labels", str(labels), "-d", "23", "--name", "Cli",
            "--modality", "CT", "--label-names", "synthetic organ", "--target-text", "an organ"]
    assert main(argv) == 0
    meta = json.loads((sampref_roots["raw"] / "Dataset023_Cli" / "dataset.json").read_text())
    assert meta["target_text"] == {"synthetic_organ": "an organ"}


# ----------------------------------------------------------------------------------------------------------
# bad inputs: a clear SamprefError, nothing in the raw root, source untouched
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def pairs(tmp_path):
    return write_nifti_pairs(tmp_path / "src", 3, n_labels=2)


def _fails(tmp_path, raw, match, images, labels, **kwargs):
    before = snapshot(tmp_path / "src")
    kwargs = {"modality": "CT", "label_names": ["organ", "lesion"], **kwargs}
    with pytest.raises(SamprefError, match=match) as info:
        convert_nifti(images, labels, 30, "Bad", **kwargs)
    assert raw_entries(raw) == []
    assert snapshot(tmp_path / "src") == before
    return str(info.value)


def test_unreadable_nifti(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    (images / "x.nii.gz").write_bytes(b"\x1f\x8b garbage, not a volume")
    shutil.copy(labels / "synthetic_000.nii.gz", labels / "x.nii.gz")
    _fails(tmp_path, sampref_roots["raw"], r"cannot read .*images/x\.nii\.gz", images, labels)


def test_missing_and_orphan_labels_listed_together(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    (labels / "synthetic_000.nii.gz").unlink()
    (labels / "synthetic_001.nii.gz").unlink()
    shutil.copy(labels / "synthetic_002.nii.gz", labels / "orphan.nii.gz")
    message = _fails(tmp_path, sampref_roots["raw"], r"3 problem\(s\)", images, labels)
    assert "synthetic_000.nii.gz: missing label" in message
    assert "synthetic_001.nii.gz: missing label" in message
    assert "orphan.nii.gz: label without image" in message


def test_undeclared_label_values(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    _fails(tmp_path, sampref_roots["raw"], r"synthetic_000\.nii\.gz holds label value\(s\) 2 outside .*--label-names",
           images, labels, label_names=["organ"])


def test_shape_mismatch_names_both_files(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    label, like = read(labels / "synthetic_001.nii.gz")
    cropped = sitk.GetImageFromArray(label[:, :-2, :])
    cropped.SetSpacing(like.GetSpacing())
    sitk.WriteImage(cropped, str(labels / "synthetic_001.nii.gz"), True)
    _fails(tmp_path, sampref_roots["raw"],
           r"shape mismatch: image .*images/synthetic_001\.nii\.gz .* label .*labels/synthetic_001\.nii\.gz",
           images, labels)


def test_source_folder_missing(tmp_path, sampref_roots, pairs):
    _, labels = pairs
    _fails(tmp_path, sampref_roots["raw"], r"images folder .*nowhere does not exist", tmp_path / "src" / "nowhere",
           labels)


def test_2d_files_point_to_folder2d(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(images / "flat.png"))
    _fails(tmp_path, sampref_roots["raw"], r"2D image files \(flat\.png\).*folder2d", images, labels)


def test_2d_nifti_points_to_folder2d(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    for folder in (images, labels):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(folder / "flat.nii.gz"))
    _fails(tmp_path, sampref_roots["raw"], r"flat\.nii\.gz is a 2D image .*folder2d", images, labels)


def test_nan_intensities(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    array, like = read(images / "synthetic_002.nii.gz")
    array = array.astype(np.float32)
    array[3, 4, 5] = np.nan
    write_like(images / "synthetic_002.nii.gz", array, like)
    _fails(tmp_path, sampref_roots["raw"], r"synthetic_002\.nii\.gz contains NaN", images, labels)


def test_existing_id_needs_overwrite(tmp_path, sampref_roots, pairs):
    images, labels = pairs
    convert_nifti(images, labels, 30, "Bad", modality="CT", label_names=["organ", "lesion"])
    raw = sampref_roots["raw"]
    published = snapshot(raw / "Dataset030_Bad")
    before = snapshot(tmp_path / "src")
    for name, match in (("Bad", "already exists"), ("Other", "already taken")):
        with pytest.raises(SamprefError, match=match):
            convert_nifti(images, labels, 30, name, modality="CT", label_names=["organ", "lesion"])
        assert raw_entries(raw) == ["Dataset030_Bad"]
        assert snapshot(raw / "Dataset030_Bad") == published
    assert snapshot(tmp_path / "src") == before
    convert_nifti(images, labels, 30, "Other", modality="CT", label_names=["organ", "lesion"], overwrite=True)
    assert raw_entries(raw) == ["Dataset030_Other"]
