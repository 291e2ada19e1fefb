"""imagesTrUnlabeled/ in the planner and the data layer: fingerprinted and preprocessed like labeled images,
in no fold, and invisible to every digest of a dataset without them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sampref_bench.dataset_conversion.phantoms import make_phantom, write_synthetic_raw_dataset
from sampref_bench.planners.data import (
    LabelAccessError,
    PreprocessedData,
    case_roles,
    hidden_label_samples,
    with_extra_unlabeled,
)
from sampref_bench.planners.fingerprint import FINGERPRINT_FORMAT
from sampref_bench.planners.pipeline import UNLABELED_FINGERPRINT_FILE, data_folder, digest, plan_dataset
from sampref_bench.planners.plans import PLANS_FORMAT, preprocessing_signature
from sampref_bench.planners.preprocessing import image_to_slices, normalize
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.prompts.settings import DEFAULT_PROMPTS
from sampref_bench.utilities.arrays import load_npy
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import read_image, write_image

SHAPE = (10, 32, 28)
FRACTIONS = [0.5, 1.0]


def _raw(n: int = 5) -> Path:
    return write_synthetic_raw_dataset(7, "Phantom", n, shape_zyx=SHAPE)


def _plan(**kw):
    return plan_dataset(7, fractions=FRACTIONS, num_processes=1, progress=False, **kw)


def _add_unlabeled(raw: Path, case: str, seed: int, shape: tuple[int, ...] = SHAPE) -> Path:
    """Write a SYNTHETIC phantom image (no label) as ``imagesTrUnlabeled/{case}_0000.nii.gz``, as the writer does."""
    image, _, geometry = make_phantom(shape, seed=seed)
    path = raw / "imagesTrUnlabeled" / f"{case}_0000.nii.gz"
    write_image(path, image, geometry)
    return path


def _hashes(folder: Path, plans: dict) -> dict[str, str]:
    return {"fingerprint": json.loads((folder / "fingerprint.json").read_text())["inputs_hash"],
            "plans": plans["inputs_hash"],
            "splits": json.loads((folder / "splits_final_info.json").read_text())["inputs_hash"],
            "preprocessing": json.loads((data_folder(folder, plans) / "preprocessing.json").read_text())["inputs_hash"]}


def _listing(folder: Path) -> list[list]:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
            if not p.name.startswith(".")]


def test_dataset_without_unlabeled_images_keeps_the_old_digests():
    """The digests of a dataset without imagesTrUnlabeled are the formulas of the planner before the folder was
    read (written out here by hand), whether the folder is absent or empty."""
    raw = _raw()
    out = _plan()
    plans = json.loads(out.plans_file.read_text())
    dataset_json = json.loads((raw / "dataset.json").read_text())
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").iterdir())
    raw_listing = [_listing(raw / "imagesTr"), _listing(raw / "labelsTr")]
    fp_hash = digest([FINGERPRINT_FORMAT, dataset_json, *raw_listing])
    options = {"image_size": 256, "fractions": FRACTIONS, "thresholds": plans["thresholds"],
               "dpo_labeled_fraction": plans["dpo_labeled_fraction"]}
    old = {"fingerprint": fp_hash,
           "plans": digest([PLANS_FORMAT, fp_hash, options, DEFAULT_PROMPTS]),
           "splits": digest([cases, None, plans["fractions"], plans["dpo_labeled_fraction"], None]),
           "preprocessing": digest([preprocessing_signature(plans), cases, *raw_listing])}
    assert _hashes(out.folder, plans) == old
    assert not (out.folder / UNLABELED_FINGERPRINT_FILE).exists()

    (raw / "imagesTrUnlabeled").mkdir()
    (raw / "imagesTrUnlabeled" / "README.txt").write_text("not an image")   # no image ending: ignored
    again = _plan()
    assert again.ran == [] and _hashes(out.folder, plans) == old
    data = PreprocessedData(data_folder(out.folder, plans), plans)
    assert data.extra_unlabeled_cases() == []


def test_unlabeled_images_are_preprocessed_in_no_fold(sampref_roots):
    raw = _raw()
    out = _plan()
    plans = json.loads(out.plans_file.read_text())
    before = _hashes(out.folder, plans)
    data_dir = data_folder(out.folder, plans)
    labeled_digests = {p.stem: json.loads(p.read_text())["image_digest"] for p in data_dir.glob("synthetic_*.json")
                       if not p.name.endswith("_labels.json")}
    splits = (out.folder / "splits_final.json").read_text()

    paths = {case: _add_unlabeled(raw, case, seed) for case, seed in (("extra_b", 21), ("extra_a", 20))}
    added = _plan()
    assert added.ran == ["fingerprint_unlabeled", "preprocessing"]
    after = _hashes(out.folder, plans)
    assert {k: after[k] for k in ("fingerprint", "plans", "splits")} == \
        {k: before[k] for k in ("fingerprint", "plans", "splits")}
    assert after["preprocessing"] != before["preprocessing"]
    assert (out.folder / "splits_final.json").read_text() == splits   # in no fold
    marker = json.loads((data_dir / "preprocessing.json").read_text())
    assert marker["unlabeled_cases"] == ["extra_a", "extra_b"] and "extra_a" not in marker["cases"]
    assert marker["unlabeled_n_slices"] == 2 * SHAPE[0]

    # fingerprint: image statistics by hand, nothing about labels
    fingerprint = json.loads((out.folder / UNLABELED_FINGERPRINT_FILE).read_text())
    assert fingerprint["n_cases"] == 2 and [r["case"] for r in fingerprint["cases"]] == ["extra_a", "extra_b"]
    image, _ = read_image(paths["extra_a"])
    record = fingerprint["cases"][0]
    assert record["shape"] == list(SHAPE) and record["n_channels"] == 1 and "labels" not in record
    stats = record["image_intensity"][0]
    assert stats["mean"] == pytest.approx(float(image.astype(np.float64).mean()))
    assert stats["p99_5"] == pytest.approx(float(np.percentile(image.astype(np.float64), 99.5)))

    # preprocessing: the labeled cases' normalization and transform, no label files
    for case in paths:
        assert not (data_dir / f"{case}_seg.npy").exists() and not (data_dir / f"{case}_labels.json").exists()
    meta = json.loads((data_dir / "extra_a.json").read_text())
    assert meta["has_label"] is False and meta["n_slices"] == SHAPE[0]
    normalized, bounds = normalize(image[None], plans)
    assert bounds == [list(plans["normalization"]["clip"][0])]
    slices = image_to_slices(normalized, plans["slicing_axis"])[0]
    expected = SliceTransform.from_dict(meta["transform"]).image(slices)
    stored = load_npy(data_dir / "extra_a.npy")
    assert stored.shape == (SHAPE[0], 1, 256, 256)
    scale = 255.0 if stored.dtype == np.uint8 else 1.0
    np.testing.assert_allclose(stored[:, 0] / scale, expected, atol=1 / 255 + 1e-3)
    assert {case: json.loads((data_dir / f"{case}.json").read_text())["image_digest"]
            for case in labeled_digests} == labeled_digests   # labeled arrays unchanged

    # the data layer: extra unlabeled images beside every fold, labels refused
    data = PreprocessedData(data_dir, plans)
    assert data.extra_unlabeled_cases() == ["extra_a", "extra_b"]
    roles = case_roles(json.loads(splits), 0, 0.5)
    assert roles.extra_unlabeled == []
    filled = with_extra_unlabeled(roles, data)
    assert filled.extra_unlabeled == ["extra_a", "extra_b"] and filled.labeled == roles.labeled
    samples = hidden_label_samples(data, filled.extra_unlabeled, [1])
    assert {s.case for s in samples} == {"extra_a", "extra_b"} and all(s.label == 1 for s in samples)
    with pytest.raises(LabelAccessError):
        data.label_store(roles.labeled, "test").seg("extra_a")

    # a changed unlabeled image re-preprocesses; removing the folder restores the old digest
    assert _plan().ran == []
    image_b, _, geometry = make_phantom(SHAPE, seed=99)
    write_image(paths["extra_b"], image_b, geometry)
    os.utime(paths["extra_b"], ns=(paths["extra_b"].stat().st_atime_ns, paths["extra_b"].stat().st_mtime_ns + 10**9))
    old_digest = json.loads((data_dir / "extra_b.json").read_text())["image_digest"]
    assert _plan().ran == ["fingerprint_unlabeled", "preprocessing"]
    assert json.loads((data_dir / "extra_b.json").read_text())["image_digest"] != old_digest
    shutil.rmtree(raw / "imagesTrUnlabeled")
    assert _plan().ran == ["preprocessing"]
    assert _hashes(out.folder, plans) == before
    assert not (out.folder / UNLABELED_FINGERPRINT_FILE).exists() and not (data_dir / "extra_a.npy").exists()
    assert PreprocessedData(data_dir, plans).extra_unlabeled_cases() == []


@pytest.mark.parametrize("bad,phrase", [
    ("2d", "dataset.json says dimensionality 3"),
    ("extra_channel", "has channel(s) [1] but dataset.json names only 1"),
    ("name_clash", "is also the labeled case 'synthetic_000'"),
    ("bad_name", "must be named CASE_XXXX.nii.gz"),
])
def test_bad_unlabeled_image_is_named_before_preprocessing(sampref_roots, bad, phrase):
    raw = _raw()
    folder = raw / "imagesTrUnlabeled"
    if bad == "2d":
        image, _, _ = make_phantom(SHAPE, seed=5)
        culprit = folder / "flat_0000.nii.gz"
        write_image(culprit, image[4])
    elif bad == "extra_channel":
        _add_unlabeled(raw, "extra", 3)
        culprit = folder / "extra_0001.nii.gz"
        shutil.copy(folder / "extra_0000.nii.gz", culprit)
    elif bad == "name_clash":
        culprit = _add_unlabeled(raw, "SYNTHETIC_000", 3)
    else:
        culprit = _add_unlabeled(raw, "extra", 3).rename(folder / "extra.nii.gz")
    with pytest.raises(SamprefError) as err:
        _plan()
    assert str(culprit) in str(err.value) and phrase in str(err.value)
    assert "sampref_convert verify" in str(err.value)
    assert not (sampref_roots["preprocessed"] / raw.name / "samprefPlans_2d").exists()


def test_hand_edited_unlabeled_list_is_refused():
    _raw()
    out = _plan()
    plans = json.loads(out.plans_file.read_text())
    marker = data_folder(out.folder, plans) / "preprocessing.json"
    record = json.loads(marker.read_text())
    roles = case_roles(json.loads((out.folder / "splits_final.json").read_text()), 0, 1.0)
    marker.write_text(json.dumps({**record, "unlabeled_cases": [roles.val[0]]}))
    with pytest.raises(SamprefError, match=f"lists \\['{roles.val[0]}'\\] as unlabeled images.*--clean"):
        with_extra_unlabeled(roles, PreprocessedData(marker.parent, plans))
    marker.write_text(json.dumps({**record, "unlabeled_cases": "extra_a"}))
    with pytest.raises(SamprefError, match="'unlabeled_cases' must be a list of case names"):
        PreprocessedData(marker.parent, plans).extra_unlabeled_cases()
