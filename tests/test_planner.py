import json

import numpy as np
import pytest

from sampref_bench.dataset_conversion.busi import convert_busi
from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
from sampref_bench.planners.fingerprint import read_raw_case
from sampref_bench.planners.pipeline import plan_dataset
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


def test_phantom_round_trip_and_training_slices():
    raw = _phantoms(n=5, n_labels=2)
    out = _plan()
    data_dir = out.folder / "samprefPlans_2d"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    for meta_path in sorted(data_dir.glob("synthetic_*.json")):
        meta = json.loads(meta_path.read_text())
        _, label, _ = read_raw_case(raw, dataset_json, meta["case"])
        np.testing.assert_array_equal(_inverse_labels(data_dir, meta), label)
        images = load_npy(data_dir / f"{meta['case']}.npy")
        assert images.shape == (label.shape[0], 1, 256, 256) and images.dtype == np.float16
        fg = [k for k in range(label.shape[0]) if label[k].any()]
        assert set(fg) <= set(meta["train_slices"])
        assert meta["labels_per_slice"][fg[0]]


def test_busi_round_trip_exact():
    convert_busi(BUSI_SUBSET, 3)
    out = plan_dataset(3, num_processes=2, progress=False)
    data_dir = out.folder / "samprefPlans_2d"
    raw = out.folder.parent.parent / "raw" / "Dataset003_BUSI"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    metas = [json.loads(p.read_text()) for p in sorted(data_dir.glob("*.json")) if p.name != "preprocessing.json"]
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
    assert changed.ran == ["plans", "splits", "preprocessing"]
    clean = _plan(clean=True)
    assert clean.ran == ["fingerprint", "plans", "splits", "preprocessing"]
    assert (clean.folder / "splits_final.json").read_text() == splits


def test_user_splits_file_is_used():
    raw = _phantoms(n=5)
    user = [{"train": ["synthetic_000", "synthetic_001", "synthetic_002"], "val": ["synthetic_003", "synthetic_004"]}]
    (raw / "splits_final.json").write_text(json.dumps(user))
    out = _plan()
    folds = json.loads((out.folder / "splits_final.json").read_text())["folds"]
    assert len(folds) == 1 and folds[0]["val"] == user[0]["val"]
    assert folds[0]["labeled"]["0.5"] == folds[0]["permutation"][:2]


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
    folds = json.loads((out.folder / "splits_final.json").read_text())["folds"]
    assert len(folds) == 5
    for fold in folds:
        assert not {groups[c] for c in fold["train"]} & {groups[c] for c in fold["val"]}
        assert len(fold["val"]) == 2 and groups[fold["val"][0]] == groups[fold["val"][1]]
