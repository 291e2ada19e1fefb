"""BUSI converter on the bundled demo subset (original layout) and on small generated variants."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import BUSI_SUBSET
from PIL import Image

from sampref_bench.cli.convert import main
from sampref_bench.dataset_conversion.busi import REFERENCE, convert_busi
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import read_image

MASK_RE = re.compile(r"^(.+)_mask(?:_\d+)?$")


def _source_images(folder: Path) -> dict[str, list[Path]]:
    """class -> image files (not masks) in the original layout."""
    return {cls.name: sorted(p for p in cls.glob("*.png") if not MASK_RE.match(p.stem))
            for cls in sorted(folder.iterdir()) if cls.is_dir()}


def _masks_of(image: Path) -> list[Path]:
    return sorted(p for p in image.parent.glob("*.png") if MASK_RE.match(p.stem) and
                  MASK_RE.match(p.stem).group(1) == image.stem)


def _case_of(image: Path) -> str:
    number = int(re.search(r"\((\d+)\)", image.stem).group(1))
    return f"{image.parent.name}_{number:04d}"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_nothing_left(raw: Path) -> None:
    assert not raw.exists() or list(raw.iterdir()) == [], list(raw.iterdir())


def _small_copy(tmp_path: Path, n_per_class: int = 3) -> Path:
    """Copy of the first ``n_per_class`` images per class (with masks) of the demo subset."""
    target = tmp_path / "busi_src"
    for cls, images in _source_images(BUSI_SUBSET).items():
        (target / cls).mkdir(parents=True)
        for image in images[:n_per_class]:
            for path in [image, *_masks_of(image)]:
                shutil.copy2(path, target / cls / path.name)
    return target


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    raw = tmp_path_factory.mktemp("busi_raw")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMPREF_raw", str(raw))
        before = _snapshot(BUSI_SUBSET)
        report = convert_busi(BUSI_SUBSET, 3)
        assert _snapshot(BUSI_SUBSET) == before
    return raw / "Dataset003_BUSI", report


def test_demo_subset_case_counts(converted):
    folder, report = converted
    assert report.ok, report.summary()
    sources = _source_images(BUSI_SUBSET)
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    for cls, images in sources.items():
        assert sum(name.startswith(cls + "_") for name in labels) == len(images)
    assert report.n_cases == sum(len(v) for v in sources.values()) == 100
    expected = sorted(_case_of(image) for images in sources.values() for image in images)
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.png" for c in expected]
    assert labels == [f"{c}.png" for c in expected]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_demo_subset_labels_and_images(converted):
    folder, _ = converted
    for images in _source_images(BUSI_SUBSET).values():
        for image in images:
            case = _case_of(image)
            label, _ = read_image(folder / "labelsTr" / f"{case}.png")
            assert set(np.unique(label).tolist()) == {0, 1}
            expected = np.zeros(label.shape, bool)
            for mask in _masks_of(image):
                expected |= np.asarray(Image.open(mask).convert("L")) > 0
            np.testing.assert_array_equal(label, expected.astype(np.uint8))
            if Image.open(image).mode == "L":
                converted_image, _ = read_image(folder / "imagesTr" / f"{case}_0000.png")
                np.testing.assert_array_equal(converted_image, np.asarray(Image.open(image)))


def test_multi_mask_case_is_or_of_masks(converted):
    folder, _ = converted
    multi = [i for imgs in _source_images(BUSI_SUBSET).values() for i in imgs if len(_masks_of(i)) > 1]
    assert len(multi) >= 3
    for image in multi:
        masks = [np.asarray(Image.open(m)) > 0 for m in _masks_of(image)]
        assert not all(np.array_equal(masks[0], m) for m in masks[1:])
        label, _ = read_image(folder / "labelsTr" / f"{_case_of(image)}.png")
        np.testing.assert_array_equal(label.astype(bool), np.logical_or.reduce(masks))


def test_colour_images_noted_and_reduced_to_luma(converted):
    folder, _ = converted
    with open(BUSI_SUBSET / "manifest.csv", newline="") as handle:
        colour = [row["file"] for row in csv.DictReader(handle) if row["channels"] == "rgb"]
    assert len(colour) >= 2
    notes = json.loads((folder / "conversion.json").read_text())["notes"]
    for file in colour:
        assert any(file in note and "BT.601" in note for note in notes), (file, notes)
        rgb = np.asarray(Image.open(BUSI_SUBSET / file).convert("RGB")).astype(float)
        luma = np.rint(rgb @ [0.299, 0.587, 0.114])
        gray, _ = read_image(folder / "imagesTr" / f"{_case_of(BUSI_SUBSET / file)}_0000.png")
        assert gray.ndim == 2
        np.testing.assert_array_equal(gray, luma.astype(np.uint8))
    assert len([n for n in notes if "BT.601" in n]) == len(colour)


def test_dataset_json_fields(converted):
    folder, _ = converted
    data = json.loads((folder / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "US"}
    assert data["labels"] == {"background": 0, "lesion": 1}
    assert data["target_text"] == {"lesion": "breast tumor"}
    assert data["license"] == "CC0 1.0"
    assert "10.1016/j.dib.2019.104863" in data["reference"] and data["reference"] == REFERENCE
    assert data["numTraining"] == 100 and data["file_ending"] == ".png" and data["dimensionality"] == 2
    assert data["description"]
    provenance = json.loads((folder / "conversion.json").read_text())
    assert provenance["converter"] == "busi" and provenance["source"] == str(BUSI_SUBSET.resolve())


def _add_normal(source: Path, n: int = 3, *, with_masks: bool = True) -> None:
    rng = np.random.default_rng(0)
    (source / "normal").mkdir()
    for i in range(1, n + 1):
        image = rng.integers(0, 256, (40, 50), dtype=np.uint8)
        Image.fromarray(image).save(source / "normal" / f"normal ({i}).png")
        if with_masks:
            Image.fromarray(np.zeros((40, 50), np.uint8)).save(source / "normal" / f"normal ({i})_mask.png")


def test_include_normal(tmp_path, sampref_roots):
    source = _small_copy(tmp_path)
    _add_normal(source)
    report = convert_busi(source, 5, include_normal=True)
    folder = sampref_roots["raw"] / "Dataset005_BUSI"
    assert report.ok and report.n_cases == 9
    for i in (1, 2, 3):
        label, _ = read_image(folder / "labelsTr" / f"normal_{i:04d}.png")
        assert set(np.unique(label).tolist()) == {0}
    assert report.label_cases["lesion"] == 6


def test_normal_skipped_by_default(tmp_path, sampref_roots):
    source = _small_copy(tmp_path)
    _add_normal(source, with_masks=False)
    report = convert_busi(source, 5)
    folder = sampref_roots["raw"] / "Dataset005_BUSI"
    assert report.n_cases == 6
    assert not list((folder / "labelsTr").glob("normal_*"))
    notes = json.loads((folder / "conversion.json").read_text())["notes"]
    assert any("skipped 3 normal" in n for n in notes)


def test_split_layout_matches_original_layout(tmp_path, sampref_roots):
    original = _small_copy(tmp_path)
    split = tmp_path / "split"
    for path in original.rglob("*.png"):
        kind = "masks" if MASK_RE.match(path.stem) else "images"
        (split / kind / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, split / kind / path.parent.name / path.name)
    convert_busi(original, 6)
    convert_busi(split, 7)
    a, b = sampref_roots["raw"] / "Dataset006_BUSI", sampref_roots["raw"] / "Dataset007_BUSI"
    names = sorted(p.name for p in (a / "labelsTr").iterdir())
    assert names == sorted(p.name for p in (b / "labelsTr").iterdir()) and len(names) == 6
    for sub in ("imagesTr", "labelsTr"):
        for path in (a / sub).iterdir():
            np.testing.assert_array_equal(read_image(path)[0], read_image(b / sub / path.name)[0])


def test_equal_channel_rgb_and_mask_variants(tmp_path, sampref_roots):
    source = _small_copy(tmp_path, n_per_class=1)
    image = next(p for p in (source / "benign").glob("*.png") if not MASK_RE.match(p.stem))
    gray = np.asarray(Image.open(image))
    Image.fromarray(np.stack([gray] * 3, -1)).save(image)
    mask_path = _masks_of(image)[0]
    mask = np.asarray(Image.open(mask_path)) > 0
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., 0] = mask * 255
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(mask_path)
    malignant = next(p for p in (source / "malignant").glob("*.png") if not MASK_RE.match(p.stem))
    mal_mask_path = _masks_of(malignant)[0]
    mal_mask = np.asarray(Image.open(mal_mask_path)) > 0
    Image.fromarray(mal_mask.astype(np.uint8)).save(mal_mask_path)
    report = convert_busi(source, 8)
    folder = sampref_roots["raw"] / "Dataset008_BUSI"
    assert report.ok
    np.testing.assert_array_equal(read_image(folder / "imagesTr" / f"{_case_of(image)}_0000.png")[0], gray)
    np.testing.assert_array_equal(read_image(folder / "labelsTr" / f"{_case_of(image)}.png")[0], mask)
    np.testing.assert_array_equal(read_image(folder / "labelsTr" / f"{_case_of(malignant)}.png")[0], mal_mask)
    assert json.loads((folder / "conversion.json").read_text())["notes"] == []


def test_all_problems_reported_at_once(tmp_path, sampref_roots):
    source = _small_copy(tmp_path)
    benign = _source_images(source)["benign"]
    for mask in _masks_of(benign[0]):
        mask.unlink()                                                   # image without mask
    benign[1].unlink()                                                  # mask without image
    small = Image.open(_masks_of(benign[2])[0]).resize((20, 10))
    small.save(_masks_of(benign[2])[0])                                 # size mismatch
    orphan = _masks_of(benign[1])[0]
    before = _snapshot(source)
    with pytest.raises(SamprefError, match="3 problem") as info:
        convert_busi(source, 9)
    message = str(info.value)
    assert f"{benign[0]}: image without a mask" in message
    assert str(orphan) in message and "mask(s) without an image" in message
    assert "differs from its image" in message and str(_masks_of(benign[2])[0]) in message
    assert _snapshot(source) == before
    _assert_nothing_left(sampref_roots["raw"])


def test_non_binary_gray_mask(tmp_path, sampref_roots):
    source = _small_copy(tmp_path, n_per_class=1)
    image = _source_images(source)["benign"][0]
    mask = _masks_of(image)[0]
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 128).save(mask)
    before = _snapshot(source)
    with pytest.raises(SamprefError, match=r"mask values \[0, 128\] are not binary"):
        convert_busi(source, 9)
    assert _snapshot(source) == before
    _assert_nothing_left(sampref_roots["raw"])


def test_missing_source_and_empty_source(tmp_path, sampref_roots):
    with pytest.raises(SamprefError, match="does not exist"):
        convert_busi(tmp_path / "nope", 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamprefError, match="no BUSI images"):
        convert_busi(tmp_path / "empty", 3)
    _assert_nothing_left(sampref_roots["raw"])


def test_cli(tmp_path, sampref_roots, capsys):
    source = _small_copy(tmp_path, n_per_class=2)
    assert main(["busi", str(source), "-d", "3"]) == 0
    assert (sampref_roots["raw"] / "Dataset003_BUSI" / "dataset.json").is_file()
    assert "no problems found" in capsys.readouterr().out
    assert main(["busi", str(source), "-d", "3"]) == 2                     # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["busi", str(source), "-d", "3", "--name", "Breast", "--overwrite"]) == 0
    assert [p.name for p in sampref_roots["raw"].iterdir()] == ["Dataset003_Breast"]
    assert main(["busi", str(tmp_path / "missing"), "-d", "4"]) == 2
    assert main(["verify", "-d", "3"]) == 0
