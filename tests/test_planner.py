import json
import os

import numpy as np
import pytest

from sampref_bench.dataset_conversion.busi import convert_busi
from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
from sampref_bench.planners.fingerprint import read_raw_case
from sampref_bench.planners.pipeline import digest, load_splits, plan_dataset, signature_hash
from sampref_bench.planners.plans import preprocessing_signature
from sampref_bench.planners.preprocessing import from_slices, normalize
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.utilities.arrays import load_npy
from sampref_bench.utilities.errors import SamprefError
from tests.conftest import BUSI_SUBSET


def _inverse_labels(data_dir, meta):
    seg = load_npy(data_dir / f"{meta['case']}_seg.npy")
    t = SliceTransform.from_dict(meta["transform"])
    return from_slices(np.stack([t.inverse_label(s) for s in seg]), meta["slicing_axis"])


def _plan(spec=7, **kw):
    kw.setdefault("fractions", [0.5, 1.0])
    kw.setdefault("num_processes", 1)
    return plan_dataset(spec, progress=False, **kw)


def _phantoms(dataset_id=7, n=6, spacing=(0.8, 0.8, 3.0), shape=(24, 48, 40), **kw):
    return write_synthetic_raw_dataset(dataset_id, "Phantom", n, spacing_xyz=spacing, shape_zyx=shape, **kw)


@pytest.mark.parametrize("spacing,shape,axis", [
    ((0.8, 0.8, 3.0), (24, 48, 40), 0),   # coarse z -> numpy axis 0
    ((3.0, 0.8, 0.8), (24, 48, 40), 2),   # coarse x -> numpy axis 2
    ((1.0, 1.0, 1.0), (40, 16, 40), 1),   # isotropic -> fewest voxels (y)
])
def test_slicing_axis(spacing, shape, axis):
    _phantoms(spacing=spacing, shape=shape, n=5)
    out = _plan()
    plans = json.loads(out.plans_file.read_text())
    assert plans["slicing_axis"] == axis
    assert str(axis) in plans["reasons"]["slicing_axis"]


def test_ct_normalization_matches_hand_percentiles(sampref_roots):
    raw = _phantoms(n=5)
    out = _plan()
    plans = json.loads(out.plans_file.read_text())
    dataset_json = json.loads((raw / "dataset.json").read_text())
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").iterdir())
    pooled = []
    for case in cases:
        image, label, _ = read_raw_case(raw, dataset_json, case)
        assert (label > 0).sum() <= 10_000   # so the fingerprint sampled every foreground voxel
        pooled.append(image[0][label > 0].astype(np.float64))
    lo, hi = np.percentile(np.concatenate(pooled), [0.5, 99.5])
    assert plans["normalization"]["scheme"] == "ct_dataset_clip"
    np.testing.assert_allclose(plans["normalization"]["clip"][0], [lo, hi], rtol=1e-9)
    image, _, _ = read_raw_case(raw, dataset_json, cases[0])
    normalized, _ = normalize(image, plans)
    np.testing.assert_allclose(normalized[0], (np.clip(image[0], lo, hi) - lo) / (hi - lo), atol=1e-6)


def _case_metas(data_dir):
    """Per-case image metadata of a preprocessed folder (not preprocessing.json, not the label files)."""
    return [json.loads(p.read_text()) for p in sorted(data_dir.glob("*.json"))
            if p.name != "preprocessing.json" and not p.name.endswith("_labels.json")]


def test_phantom_round_trip_and_labels_per_slice():
    raw = _phantoms(n=5, n_labels=2)
    out = _plan()
    data_dir = out.folder / "samprefPlans_2d"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    metas = _case_metas(data_dir)
    assert len(metas) == 5
    for meta in metas:
        _, label, _ = read_raw_case(raw, dataset_json, meta["case"])
        np.testing.assert_array_equal(_inverse_labels(data_dir, meta), label)
        images = load_npy(data_dir / f"{meta['case']}.npy")
        assert images.shape == (label.shape[0], 1, 256, 256) and images.dtype == np.float16
        per_slice = json.loads((data_dir / f"{meta['case']}_labels.json").read_text())["labels_per_slice"]
        assert per_slice == [sorted(int(v) for v in np.unique(s) if v) for s in label]


def test_busi_round_trip_exact():
    convert_busi(BUSI_SUBSET, 3)
    out = plan_dataset(3, num_processes=2, progress=False)
    data_dir = out.folder / "samprefPlans_2d"
    raw = out.folder.parent.parent / "raw" / "Dataset003_BUSI"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    metas = _case_metas(data_dir)
    assert len(metas) == 100
    for meta in metas[::7]:
        _, label, _ = read_raw_case(raw, dataset_json, meta["case"])
        back = _inverse_labels(data_dir, meta)
        dice = 2 * np.logical_and(back, label).sum() / (back.sum() + label.sum())
        assert dice == 1.0 and np.array_equal(back, label)
    images = load_npy(data_dir / f"{metas[0]['case']}.npy")
    assert images.dtype == np.uint8 and images.max() == 255


def test_steps_skip_when_current_and_clean_redoes():
    _phantoms(n=5)
    first = _plan()
    assert first.ran == ["fingerprint", "plans", "splits", "preprocessing"]
    splits = (first.folder / "splits_final.json").read_text()
    again = _plan()
    assert again.ran == [] and len(again.skipped) == 4
    changed = _plan(fractions=[0.25, 1.0])
    assert changed.ran == ["plans", "splits"] and "preprocessing" in changed.skipped
    clean = _plan(clean=True)
    assert clean.ran == ["fingerprint", "plans", "splits", "preprocessing"]
    assert (clean.folder / "splits_final.json").read_text() == splits


def test_user_splits_file_is_used():
    raw = _phantoms(n=5)
    user = [{"train": ["synthetic_000", "synthetic_001", "synthetic_002"], "val": ["synthetic_003", "synthetic_004"]}]
    (raw / "splits_final.json").write_text(json.dumps(user))
    out = _plan()
    folds = json.loads((out.folder / "splits_final.json").read_text())
    assert len(folds) == 1 and folds[0]["val"] == user[0]["val"]
    assert folds[0]["labeled"]["0.5"] == folds[0]["permutation"][:2]
    info = json.loads((out.folder / "splits_final_info.json").read_text())
    assert info["source"] == str(raw / "splits_final.json") and info["n_folds"] == 1


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("kwargs,match", [
    ({"fractions": [0.0, 0.5]}, r"\(0, 1\]"),
    ({"fractions": [1.5]}, r"\(0, 1\]"),
    ({"fractions": [0.01]}, "less than one case"),
    ({"thresholds": [0.5, 0.4]}, "strictly increasing"),
    ({"thresholds": [0.0, 0.5]}, "strictly increasing"),
])
def test_bad_options_write_nothing_new(sampref_roots, kwargs, match):
    _phantoms(n=5)
    with pytest.raises(SamprefError, match=match):
        _plan(**kwargs)
    pre = sampref_roots["preprocessed"] / "Dataset007_Phantom"
    assert not (pre / "splits_final.json").exists() and not (pre / "samprefPlans_2d").exists()


def test_unconverted_dataset_says_what_to_run():
    with pytest.raises(SamprefError, match="sampref_convert"):
        plan_dataset(42, progress=False)


def test_all_empty_labels(sampref_roots):
    raw = _phantoms(n=5)
    import SimpleITK as sitk
    for path in (raw / "labelsTr").iterdir():
        img = sitk.ReadImage(str(path))
        empty = sitk.Image(img.GetSize(), img.GetPixelID())
        empty.CopyInformation(img)
        sitk.WriteImage(empty, str(path))
    with pytest.raises(SamprefError, match="empty in every case"):
        _plan()


def test_unreadable_case_points_to_verify(sampref_roots):
    raw = _phantoms(n=5)
    (raw / "imagesTr" / "synthetic_001_0000.nii.gz").write_bytes(b"garbage")
    with pytest.raises(SamprefError, match="sampref_convert verify"):
        _plan()
    with pytest.raises(SamprefError, match="failed verification"):
        _plan(verify=True)


def test_patient_groups_stay_on_one_side():
    _phantoms(n=10, case_groups=True)
    out = _plan()
    groups = json.loads((out.folder / "dataset.json").read_text())["case_groups"]
    folds = load_splits(out.folder)
    assert len(folds) == 5
    for fold in folds:
        assert not {groups[c] for c in fold["train"]} & {groups[c] for c in fold["val"]}
        assert len(fold["val"]) == 2 and groups[fold["val"][0]] == groups[fold["val"][1]]


# ------------------------------------------------------------------ splits_final.json in nnU-Net's layout
def test_splits_final_reads_as_nnunet_splits():
    raw = _phantoms(n=7)
    out = _plan()
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").iterdir())
    path = out.folder / "splits_final.json"
    with open(path) as handle:   # what nnU-Net's batchgenerators load_json does
        splits = json.load(handle)
    assert isinstance(splits, list) and len(splits) == 5
    vals = []
    for fold in range(5):
        train, val = splits[fold]["train"], splits[fold]["val"]
        assert list(splits[fold])[:2] == ["train", "val"]
        assert list(splits[fold]) == ["train", "val", "permutation", "labeled", "dpo_labeled"]
        assert train == sorted(train) and val == sorted(val)
        assert not set(train) & set(val) and sorted(train + val) == cases
        vals += val
    assert sorted(vals) == cases
    assert load_splits(out.folder) == splits
    info = json.loads((out.folder / "splits_final_info.json").read_text())
    assert {"inputs_hash", "source", "sampref_version"} <= set(info)
    assert info["source"].startswith("KFold(n_splits=5")


def test_splits_step_uses_the_sidecar():
    _phantoms(n=5)
    out = _plan()
    info_path = out.folder / "splits_final_info.json"
    info_path.unlink()
    again = _plan()
    assert again.ran == ["splits"] and info_path.is_file()
    info = json.loads(info_path.read_text())
    info["inputs_hash"] = "stale"
    info_path.write_text(json.dumps(info))
    assert _plan().ran == ["splits"]
    assert _plan().ran == []


def test_load_splits_refuses_old_layout_and_hand_edits(sampref_roots):
    _phantoms(n=5)
    out = _plan()
    path = out.folder / "splits_final.json"
    folds = json.loads(path.read_text())
    path.write_text(json.dumps({"inputs_hash": "x", "folds": folds}))
    with pytest.raises(SamprefError, match="older sampref"):
        load_splits(out.folder)
    path.write_text(json.dumps([{"train": f["train"], "val": f["val"]} for f in folds]))
    with pytest.raises(SamprefError, match="raw dataset folder"):
        load_splits(out.folder)
    with pytest.raises(SamprefError, match="changed after sampref_plan wrote it"):
        _plan()
    assert _plan(clean=True).ran == ["fingerprint", "plans", "splits", "preprocessing"]
    assert load_splits(out.folder) == folds
    with pytest.raises(SamprefError, match="sampref_plan -d"):
        load_splits(sampref_roots["preprocessed"] / "Dataset099_Missing")


def test_user_splits_in_sampref_layout_are_reused():
    raw = _phantoms(n=6)
    first = _plan()
    planned = json.loads((first.folder / "splits_final.json").read_text())
    (raw / "splits_final.json").write_text(json.dumps(planned))   # copied from a plan, extra keys and all
    again = _plan()
    assert "splits" in again.ran
    assert json.loads((first.folder / "splits_final.json").read_text()) == planned


# ------------------------------------------------------------------ preprocessing depends on the arrays only
def test_other_fractions_and_thresholds_keep_preprocessing():
    _phantoms(n=6)
    first = _plan(fractions=[0.5, 1.0])
    data_dir = first.folder / "samprefPlans_2d"
    npys = sorted(data_dir.glob("*.npy"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in npys}
    marker = json.loads((data_dir / "preprocessing.json").read_text())
    plans = json.loads(first.plans_file.read_text())
    assert marker["signature_hash"] == signature_hash(plans)
    assert marker["signature_hash"] == digest(preprocessing_signature(plans))

    changed = _plan(fractions=[0.25, 0.75, 1.0], thresholds=[0.2, 0.5, 0.8], dpo_labeled_fraction=0.25)
    assert "preprocessing" in changed.skipped and "preprocessing" not in changed.ran
    assert {"plans", "splits"} <= set(changed.ran)
    replanned = json.loads(changed.plans_file.read_text())
    assert replanned["fractions"] == [0.25, 0.75, 1.0] and replanned["thresholds"] == [0.2, 0.5, 0.8]
    assert signature_hash(replanned) == marker["signature_hash"]
    assert {p.name: p.stat().st_mtime_ns for p in sorted(data_dir.glob("*.npy"))} == mtimes
    assert json.loads((data_dir / "preprocessing.json").read_text()) == marker

    resized = _plan(fractions=[0.25, 0.75, 1.0], image_size=128)
    assert "preprocessing" in resized.ran
    new_marker = json.loads((data_dir / "preprocessing.json").read_text())
    assert new_marker["signature_hash"] != marker["signature_hash"]
    assert new_marker["signature_hash"] == signature_hash(json.loads(resized.plans_file.read_text()))
    assert load_npy(data_dir / npys[0].name).shape[-2:] == (128, 128)


def test_changed_raw_image_reruns_preprocessing():
    raw = _phantoms(n=5)
    _plan()
    image = raw / "imagesTr" / "synthetic_002_0000.nii.gz"
    image.write_bytes(image.read_bytes())   # same content, new mtime: the listing changes
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert "preprocessing" in _plan().ran


# ------------------------------------------------------------------ CT statistics from foreground only
def _empty_label_extreme_image(raw, case):
    import SimpleITK as sitk

    label_path = raw / "labelsTr" / f"{case}.nii.gz"
    label = sitk.ReadImage(str(label_path))
    empty = sitk.Image(label.GetSize(), label.GetPixelID())
    empty.CopyInformation(label)
    sitk.WriteImage(empty, str(label_path))
    image_path = raw / "imagesTr" / f"{case}_0000.nii.gz"
    image = sitk.ReadImage(str(image_path))
    array = sitk.GetArrayFromImage(image)
    extreme = np.where(np.indices(array.shape).sum(axis=0) % 2, 3000, -3000).astype(array.dtype)
    replaced = sitk.GetImageFromArray(extreme)
    replaced.CopyInformation(image)
    sitk.WriteImage(replaced, str(image_path))


def test_ct_planning_with_an_empty_case():
    raw = _phantoms(dataset_id=7, n=6)
    _empty_label_extreme_image(raw, "synthetic_005")
    with_empty = _plan(7)
    _phantoms(dataset_id=8, n=5)   # the same first five cases (same seeds), without the empty one
    without = _plan(8)

    fingerprint = json.loads((with_empty.folder / "fingerprint.json").read_text())
    by_case = {c["case"]: c for c in fingerprint["cases"]}
    assert by_case["synthetic_005"]["foreground_intensity"] == [None]
    assert all(by_case[f"synthetic_{i:03d}"]["foreground_intensity"][0]["max"] < 1000 for i in range(5))

    dataset_json = json.loads((raw / "dataset.json").read_text())
    pooled = []
    for i in range(5):
        image, label, _ = read_raw_case(raw, dataset_json, f"synthetic_{i:03d}")
        assert (label > 0).sum() <= 10_000   # the fingerprint sampled every foreground voxel
        pooled.append(image[0][label > 0].astype(np.float64))
    lo, hi = np.percentile(np.concatenate(pooled), [0.5, 99.5])

    clip = json.loads(with_empty.plans_file.read_text())["normalization"]["clip"]
    assert clip == json.loads(without.plans_file.read_text())["normalization"]["clip"]
    np.testing.assert_allclose(clip[0], [lo, hi], rtol=1e-9)
    assert -1000 < clip[0][0] < clip[0][1] < 1000   # the +-3000 voxels of the empty case are not in the window
    assert fingerprint["foreground_intensity_per_channel"][0]["n_samples"] == sum(v.size for v in pooled)
