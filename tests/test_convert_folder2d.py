"""folder2d converter: round trips on a generated folder set and every bad input with its message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sampref_bench.cli.convert import main
from sampref_bench.dataset_conversion.folder2d import convert_folder2d
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import read_image

SIZES = {"a": (30, 40), "b 2": (25, 35), "c(3)": (32, 32), "d": (20, 50)}   # stem -> (H, W)


def _mask(shape: tuple[int, int], seed: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[seed + 2: seed + 12, seed + 3: seed + 15] = 255
    return mask


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """``src/images``: four PNG images (one RGB); ``src/masks``: ``{stem}_mask.png`` with values 0/255."""
    images, masks = tmp_path / "src" / "images", tmp_path / "src" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for seed, (stem, shape) in enumerate(SIZES.items()):
        image = _image(shape, seed)
        if stem == "d":
            image = np.stack([image, image[::-1], image[:, ::-1]], -1)
        Image.fromarray(image).save(images / f"{stem}.png")
        Image.fromarray(_mask(shape, seed)).save(masks / f"{stem}_mask.png")
    return tmp_path / "src"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _convert(src: Path, dataset_id: int = 10, **kwargs):
    options = {"modality": "US", "mask_suffix": "_mask", "label_map": {255: 1}} | kwargs
    return convert_folder2d(src / "images", src / "masks", dataset_id, "Toy", **options)


def _expect_failure(src: Path, raw: Path, match: str, **kwargs) -> str:
    """Run a conversion that must fail; check the message, an empty raw root and an unchanged source."""
    before = _snapshot(src)
    with pytest.raises(SamprefError, match=match) as info:
        _convert(src, **kwargs)
    assert _snapshot(src) == before
    assert not raw.exists() or list(raw.iterdir()) == [], list(raw.iterdir())
    return str(info.value)


def test_round_trip_with_label_map(source, sampref_roots):
    before = _snapshot(source)
    report = _convert(source, labels=["nodule"], target_text=["thyroid nodule"], license="CC BY 4.0",
                      reference="Someone 2024")
    assert _snapshot(source) == before
    folder = sampref_roots["raw"] / "Dataset010_Toy"
    assert report.ok and report.n_cases == 4
    for seed, (stem, shape) in enumerate(SIZES.items()):
        case = stem.replace(" ", "_").replace("(", "_").replace(")", "_")
        label, _ = read_image(folder / "labelsTr" / f"{case}.png")
        np.testing.assert_array_equal(label, _mask(shape, seed) // 255)
        image, _ = read_image(folder / "imagesTr" / f"{case}_0000.png")
        assert image.shape == shape and image.dtype == np.uint8
        if stem != "d":
            np.testing.assert_array_equal(image, _image(shape, seed))
    data = json.loads((folder / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "nodule": 1}
    assert data["target_text"] == {"nodule": "thyroid nodule"}
    assert data["channel_names"] == {"0": "US"} and data["license"] == "CC BY 4.0"
    assert data["reference"] == "Someone 2024" and "case_groups" not in data
    notes = json.loads((folder / "conversion.json").read_text())["notes"]
    assert len(notes) == 1 and "d.png" in notes[0] and "BT.601" in notes[0]
    assert not [p for p in sampref_roots["raw"].iterdir() if p.name.startswith(".")]


def test_zero_one_masks_without_map_and_multi_label(tmp_path, sampref_roots):
    images, masks = tmp_path / "imgs", tmp_path / "segs"
    images.mkdir()
    masks.mkdir()
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9] = 128
    mask[10:15, 10:20] = 255
    Image.fromarray(_image((20, 30), 0)).save(images / "x.jpg")
    Image.fromarray(mask).save(masks / "x.png")
    Image.fromarray(_image((20, 30), 1)).save(images / "y.bmp")
    Image.fromarray((mask > 0).astype(np.uint8)).save(masks / "y.tif")
    with pytest.raises(SamprefError, match=r"y\.tif: mask values \[1\] are not in --label-map 128:1,255:2"):
        convert_folder2d(images, masks, 11, "Multi", modality="XR", label_map={128: 1, 255: 2},
                         labels=["a", "b"])
    (masks / "y.tif").unlink()
    Image.fromarray(np.where(mask == 255, 2, (mask == 128).astype(np.uint8))).save(masks / "y.tif")
    with pytest.raises(SamprefError, match=r"x\.png: mask values \[128, 255\] are not label values 0\.\.2"):
        convert_folder2d(images, masks, 11, "Multi", modality="XR", labels=["a", "b"])
    Image.fromarray(np.where(mask == 255, 2, (mask == 128).astype(np.uint8))).save(masks / "x.png")
    report = convert_folder2d(images, masks, 11, "Multi", modality="XR", labels=["a", "b"])
    assert report.ok and report.label_cases == {"a": 2, "b": 2}
    label, _ = read_image(sampref_roots["raw"] / "Dataset011_Multi" / "labelsTr" / "x.png")
    np.testing.assert_array_equal(label, np.where(mask == 255, 2, (mask == 128).astype(np.uint8)))


def test_groups_csv(source, tmp_path, sampref_roots):
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("case,patient\na,P1\nb 2,P1\nc_3_,P2\nd,P3\n", encoding="utf-8")
    report = _convert(source, groups_csv=csv_path)
    data = json.loads((sampref_roots["raw"] / "Dataset010_Toy" / "dataset.json").read_text())
    assert report.ok
    assert data["case_groups"] == {"a": "P1", "b_2": "P1", "c_3_": "P2", "d": "P3"}


def test_groups_csv_problems(source, tmp_path, sampref_roots):
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("case,patient\na,P1\nzzz,P1\nb 2,\n", encoding="utf-8")
    message = _expect_failure(source, sampref_roots["raw"], "problem", groups_csv=csv_path)
    assert "line 3: case 'zzz' is not an image stem" in message
    assert "line 4: case 'b 2' has an empty patient" in message
    assert "no patient for 3 image(s)" in message
    csv_path.write_text("image,subject\na,P1\n", encoding="utf-8")
    _expect_failure(source, sampref_roots["raw"], "must name columns 'case' and 'patient'",
                    groups_csv=csv_path)


def test_missing_mask(source, sampref_roots):
    (source / "masks" / "a_mask.png").unlink()
    message = _expect_failure(source, sampref_roots["raw"], r"images/a\.png: no mask .*a_mask")
    assert "1 problem" in message


def test_extra_mask(source, sampref_roots):
    Image.fromarray(_mask((30, 40), 0)).save(source / "masks" / "zz_mask.png")
    Image.fromarray(_mask((30, 40), 0)).save(source / "masks" / "other.png")
    message = _expect_failure(source, sampref_roots["raw"],
                              r"zz_mask\.png: no image .*zz\.\* matches this mask")
    assert "other.png: mask name does not end with --mask-suffix '_mask'" in message


def test_size_mismatch(source, sampref_roots):
    Image.fromarray(_mask((31, 40), 0)).save(source / "masks" / "a_mask.png")
    _expect_failure(source, sampref_roots["raw"],
                    r"a_mask\.png: mask size 40x31 \(WxH\) differs from its image")


def test_unmapped_values(source, sampref_roots):
    message = _expect_failure(source, sampref_roots["raw"],
                              r"mask values \[255\] are not label values 0\.\.1", label_map=None)
    assert "--label-map 255:1" in message
    assert all(f"{stem}_mask.png" in message for stem in SIZES)
    mask = _mask((30, 40), 0)
    mask[0, 0] = 7
    Image.fromarray(mask).save(source / "masks" / "a_mask.png")
    _expect_failure(source, sampref_roots["raw"],
                    r"a_mask\.png: mask values \[7\] are not in --label-map 255:1")


def test_colour_mask(source, sampref_roots):
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[2:5, 2:5, 0] = 255
    Image.fromarray(rgb).save(source / "masks" / "a_mask.png")
    _expect_failure(source, sampref_roots["raw"], r"a_mask\.png: colour mask whose channels differ")


def test_equal_channel_colour_mask_is_accepted(source, sampref_roots):
    mask = _mask((30, 40), 0)
    rgba = np.stack([mask] * 3 + [np.full_like(mask, 255)], -1)
    Image.fromarray(rgba).save(source / "masks" / "a_mask.png")
    assert _convert(source).ok


def test_corrupt_image(source, sampref_roots):
    (source / "images" / "x.png").write_bytes(b"this is not a png" * 10)
    Image.fromarray(_mask((30, 40), 0)).save(source / "masks" / "x_mask.png")
    _expect_failure(source, sampref_roots["raw"], r"cannot read .*images/x\.png")


def test_name_collision(source, sampref_roots):
    Image.fromarray(_image((30, 40), 0)).save(source / "images" / "b_2.png")
    Image.fromarray(_mask((30, 40), 0)).save(source / "masks" / "b_2_mask.png")
    _expect_failure(source, sampref_roots["raw"], r"same case name 'b_2'")


def test_all_problems_at_once(source, sampref_roots):
    (source / "masks" / "a_mask.png").unlink()
    Image.fromarray(_mask((30, 40), 0)).save(source / "masks" / "zz_mask.png")
    Image.fromarray(_mask((99, 40), 0)).save(source / "masks" / "b 2_mask.png")
    message = _expect_failure(source, sampref_roots["raw"], "3 problem")
    assert "no mask" in message and "no image" in message and "differs from its image" in message


def test_existing_output_and_overwrite(source, sampref_roots):
    _convert(source, labels=["first"])
    folder = sampref_roots["raw"] / "Dataset010_Toy"
    old = _snapshot(folder)
    before = _snapshot(source)
    with pytest.raises(SamprefError, match="already exists. Pass --overwrite"):
        _convert(source, labels=["second"])
    assert _snapshot(folder) == old and _snapshot(source) == before
    assert [p.name for p in sampref_roots["raw"].iterdir()] == ["Dataset010_Toy"]
    with pytest.raises(SamprefError, match="already taken"):
        convert_folder2d(source / "images", source / "masks", 10, "Other", modality="US", mask_suffix="_mask",
                         label_map={255: 1})
    assert [p.name for p in sampref_roots["raw"].iterdir()] == ["Dataset010_Toy"]
    (source / "images" / "d.png").unlink()
    (source / "masks" / "d_mask.png").unlink()
    report = _convert(source, labels=["second"], overwrite=True)
    assert report.n_cases == 3
    data = json.loads((folder / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "second": 1}
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["a.png", "b_2.png", "c_3_.png"]
    assert [p.name for p in sampref_roots["raw"].iterdir()] == ["Dataset010_Toy"]


def test_missing_source_folders(tmp_path, source, sampref_roots):
    before = _snapshot(source)
    with pytest.raises(SamprefError, match=r"--images folder .*nope does not exist"):
        convert_folder2d(tmp_path / "nope", source / "masks", 10, "Toy", modality="US")
    with pytest.raises(SamprefError, match=r"--masks folder .*nope does not exist"):
        convert_folder2d(source / "images", tmp_path / "nope", 10, "Toy", modality="US")
    raw = sampref_roots["raw"]
    assert not raw.exists() or list(raw.iterdir()) == []
    assert _snapshot(source) == before


def test_argument_checks(source, sampref_roots):
    _expect_failure(source, sampref_roots["raw"], "--target-text has 2 phrase", target_text=["a", "b"])
    _expect_failure(source, sampref_roots["raw"], r"--label-map targets \['255:2'\]", label_map={255: 2})
    _expect_failure(source, sampref_roots["raw"], "other than 'background'", labels=["background"])


def test_images_and_masks_in_one_folder(tmp_path, sampref_roots):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for seed, stem in enumerate(["p", "q"]):
        Image.fromarray(_image((20, 20), seed)).save(folder / f"{stem}.png")
        Image.fromarray(_mask((20, 20), seed)).save(folder / f"{stem}_seg.png")
    report = convert_folder2d(folder, folder, 12, "Mixed", modality="XR", mask_suffix="_seg",
                              label_map={255: 1})
    assert report.n_cases == 2
    with pytest.raises(SamprefError, match="pass --mask-suffix"):
        convert_folder2d(folder, folder, 13, "Mixed", modality="XR")


def test_cli(source, sampref_roots, capsys):
    args = ["folder2d", "--images", str(source / "images"), "--masks", str(source / "masks"), "-d", "10",
            "--name", "Toy", "--modality", "US", "--mask-suffix", "_mask"]
    assert main(args) == 2
    assert "--label-map 255:1" in capsys.readouterr().err
    assert main([*args, "--label-map", "255:1", "--labels", "nodule"]) == 0
    assert (sampref_roots["raw"] / "Dataset010_Toy" / "dataset.json").is_file()
