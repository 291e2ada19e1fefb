"""Metrics, summary.json and folder evaluation (sampref_bench.evaluation, sampref_evaluate_folder)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import binary_erosion

from sampref_bench.cli.evaluate_folder import main as evaluate_main
from sampref_bench.evaluation.evaluate_folder import evaluate_folders
from sampref_bench.evaluation.metrics import case_metrics, confusion_per_label
from sampref_bench.evaluation.summary import CaseResult, build_summary, case_values, load_summary, write_summary
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import Geometry, write_image

NAN = math.nan


def grid(rows: list[str]) -> np.ndarray:
    """A 2D label map from strings of digits, one string per row."""
    return np.array([[int(c) for c in row] for row in rows], dtype=np.uint8)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# ------------------------------------------------------------------------------------------- overlap metrics
# (name, reference, prediction, label, TP, FP, FN, Dice, IoU), all counted by hand.
OVERLAP_CASES = [
    ("tp3_fp1_fn2", grid(["1100", "1000", "0110", "0000"]), grid(["1100", "0000", "0011", "0000"]), 1,
     3, 1, 2, 6 / 9, 3 / 6),
    ("perfect", grid(["0110", "0110"]), grid(["0110", "0110"]), 1, 4, 0, 0, 1.0, 1.0),
    ("empty_reference", grid(["0000", "0000"]), grid(["0100", "0100"]), 1, 0, 2, 0, 0.0, 0.0),
    ("empty_prediction", grid(["1110", "0000"]), grid(["0000", "0000"]), 1, 0, 0, 3, 0.0, 0.0),
    ("both_empty", grid(["0000", "0000"]), grid(["0000", "0000"]), 1, 0, 0, 0, NAN, NAN),
    ("other_label_only", grid(["2200", "0000"]), grid(["0022", "0000"]), 1, 0, 0, 0, NAN, NAN),
    ("multi_label_1", grid(["1122", "1122", "0000"]), grid(["1112", "0022", "0002"]), 1, 2, 1, 2, 4 / 7, 2 / 5),
    ("multi_label_2", grid(["1122", "1122", "0000"]), grid(["1112", "0022", "0002"]), 2, 3, 1, 1, 6 / 8, 3 / 5),
    ("volume_3d", np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]]),
     np.array([[[1, 0], [0, 0]], [[1, 1], [1, 0]], [[0, 0], [0, 1]]]), 1, 2, 3, 1, 4 / 8, 2 / 6),
    ("line_1d", np.array([0, 1, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 1, 1]), 1, 2, 2, 1, 4 / 7, 2 / 5),
    ("bool_maps", np.array([[True, False], [True, True]]), np.array([[True, True], [False, True]]), 1,
     2, 1, 1, 4 / 6, 2 / 4),
]


@pytest.mark.parametrize("name,ref,pred,label,tp,fp,fn,dice,iou", OVERLAP_CASES, ids=[c[0] for c in OVERLAP_CASES])
def test_overlap_metrics_hand_computed(name, ref, pred, label, tp, fp, fn, dice, iou):
    m = case_metrics(ref, pred, [label])[label]
    assert (m["TP"], m["FP"], m["FN"]) == (tp, fp, fn)
    assert (m["n_ref"], m["n_pred"], m["TN"]) == (tp + fn, tp + fp, ref.size - tp - fp - fn)
    assert same(m["Dice"], dice) and same(m["IoU"], iou)
    assert confusion_per_label(ref, pred, [label])[label] == {k: m[k] for k in ("TP", "FP", "FN", "TN", "n_ref",
                                                                                 "n_pred")}


def test_metrics_keep_label_order_and_python_types():
    ref, pred = grid(["1122", "0000"]), grid(["1220", "0000"])
    result = case_metrics(ref, pred, [2, 1])
    assert list(result) == [2, 1]
    assert list(result[1]) == ["Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref"]
    assert all(type(result[1][k]) is int for k in ("TP", "FP", "FN", "TN", "n_pred", "n_ref"))
    assert json.loads(json.dumps(result[1])) == result[1]


# (description, call, error message pattern)
BAD_CALLS = [
    ("shape mismatch", lambda: case_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int), [1]),
     r"reference \(4, 4\) and prediction \(4, 5\)"),
    ("negative label", lambda: case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), [1, -1]), "non-negative"),
    ("float map", lambda: case_metrics(np.zeros((2, 2)), np.zeros((2, 2), int), [1]), "integer label map"),
    ("no labels", lambda: case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), []), "labels is empty"),
    ("repeated labels", lambda: confusion_per_label(np.zeros(3, int), np.zeros(3, int), [1, 1]), "unique"),
    ("bool label", lambda: confusion_per_label(np.zeros(3, int), np.zeros(3, int), [True]), "integers"),
    ("float label", lambda: confusion_per_label(np.zeros(3, int), np.zeros(3, int), [1.0]), "integers"),
    ("scalar maps", lambda: confusion_per_label(np.int64(1), np.int64(1), [1]), "at least one dimension"),
    ("spacing length", lambda: case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), [1], spacing=(1, 1, 1),
                                            hd95=True), "one value per array axis"),
    ("spacing zero", lambda: case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), [1], spacing=(1, 0)),
     "positive"),
    ("negative tolerance", lambda: case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), [1],
                                                surface_dice_tolerance_mm=-1), "tolerance"),
    ("surface on 1D", lambda: case_metrics(np.zeros(5, int), np.zeros(5, int), [1], hd95=True), "2D or 3D"),
]


@pytest.mark.parametrize("what,call,pattern", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_invalid_arguments_raise_value_error(what, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_dice_agrees_with_monai_dice_metric_where_defined():
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    rng = np.random.default_rng(0)
    n_classes = 4
    ref = rng.integers(0, n_classes, size=(6, 20, 24))
    pred = np.where(rng.random(ref.shape) < 0.7, ref, rng.integers(0, n_classes, size=ref.shape))
    ref[0][ref[0] == 3] = 0  # label 3 absent from one reference: MONAI gives NaN, sampref 0 or NaN
    to_onehot = lambda a: one_hot(torch.from_numpy(a)[:, None], num_classes=n_classes)  # noqa: E731
    monai_dice = DiceMetric(include_background=False, reduction="none")(to_onehot(pred), to_onehot(ref)).numpy()
    compared = 0
    for b in range(ref.shape[0]):
        ours = case_metrics(ref[b], pred[b], [1, 2, 3])
        for c, label in enumerate([1, 2, 3]):
            if (ref[b] == label).any():
                assert ours[label]["Dice"] == pytest.approx(float(monai_dice[b, c]), abs=1e-6)
                compared += 1
            else:
                assert math.isnan(monai_dice[b, c])
    assert compared == 17


# ------------------------------------------------------------------------------------------- surface metrics
def box(shape, start, stop) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = 1
    return mask


def brute_force_hd95(ref: np.ndarray, pred: np.ndarray, spacing) -> float:
    """Independent reference: symmetric HD95 = max of the two directed 95th percentiles between edge voxels."""
    def edge_points(mask):
        mask = mask.astype(bool)
        return np.argwhere(mask & ~binary_erosion(mask)) * np.asarray(spacing, dtype=float)

    a, b = edge_points(ref), edge_points(pred)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))


# (name, reference, prediction, spacing per array axis, expected HD95) with the answer known by construction.
SHIFT_CASES = [
    ("plate_shift_z_2_vox_3mm", box((10, 12, 12), (4, 2, 2), (5, 10, 10)), box((10, 12, 12), (6, 2, 2), (7, 10, 10)),
     (3.0, 1.0, 1.0), 6.0),
    ("cube_shift_z_2_vox_3mm", box((12, 12, 12), (2, 2, 2), (8, 8, 8)), box((12, 12, 12), (4, 2, 2), (10, 8, 8)),
     (3.0, 0.8, 0.8), 6.0),
    ("plate_shift_x_2_vox_0.5mm", box((12, 12, 10), (2, 2, 4), (10, 10, 5)), box((12, 12, 10), (2, 2, 6), (10, 10, 7)),
     (3.0, 1.0, 0.5), 1.0),
    ("square_2d_pixels", box((12, 12), (2, 2), (6, 6)), box((12, 12), (2, 5), (6, 9)), None, 3.0),
]


@pytest.mark.parametrize("name,ref,pred,spacing,expected", SHIFT_CASES, ids=[c[0] for c in SHIFT_CASES])
def test_hd95_in_physical_units(name, ref, pred, spacing, expected):
    m = case_metrics(ref, pred, [1], spacing=spacing, hd95=True)[1]
    assert m["HD95"] == pytest.approx(expected, abs=1e-5)
    assert m["HD95"] == pytest.approx(brute_force_hd95(ref, pred, spacing or (1.0,) * ref.ndim), abs=1e-4)


def test_hd95_on_irregular_shapes_matches_brute_force():
    rng = np.random.default_rng(3)
    ref = (rng.random((9, 14, 13)) < 0.3).astype(np.uint8)
    pred = (rng.random((9, 14, 13)) < 0.3).astype(np.uint8)
    spacing = (2.5, 0.7, 1.1)
    m = case_metrics(ref, pred, [1], spacing=spacing, hd95=True)[1]
    assert m["HD95"] == pytest.approx(brute_force_hd95(ref, pred, spacing), rel=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI-internal deprecation notice
@pytest.mark.parametrize("shape,spacing", [((15, 17), (0.7, 1.3)), ((6, 9, 8), (3.0, 0.8, 1.1))])
def test_surface_metrics_equal_monai_on_uncropped_masks_touching_the_border(shape, spacing):
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(7)
    ref = (rng.random(shape) < 0.35).astype(np.uint8)
    pred = np.zeros(shape, np.uint8)
    pred[(slice(1, None),) * len(shape)] = ref[(slice(None, -1),) * len(shape)]  # shifted copy
    pred[(0,) * len(shape)] = 1  # touches the array corner
    ours = case_metrics(ref, pred, [1], spacing=spacing, hd95=True, surface_dice_tolerance_mm=1.5)[1]
    as_tensor = lambda a: torch.from_numpy(a.astype(bool))[None, None]  # noqa: E731
    hd = compute_hausdorff_distance(as_tensor(pred), as_tensor(ref), percentile=95, spacing=list(spacing),
                                    include_background=True)
    nsd = compute_surface_dice(as_tensor(pred), as_tensor(ref), [1.5], include_background=True,
                               spacing=list(spacing))
    assert ours["HD95"] == pytest.approx(float(hd), rel=1e-6) and ours["NSD"] == pytest.approx(float(nsd), rel=1e-6)


@pytest.mark.parametrize("tolerance,expected", [(6.0, 1.0), (5.9, 0.0), (0.0, 0.0)])
def test_surface_dice_tolerance_in_mm(tolerance, expected):
    ref, pred = SHIFT_CASES[0][1], SHIFT_CASES[0][2]  # every edge voxel is 6 mm from the other mask
    m = case_metrics(ref, pred, [1], spacing=(3.0, 1.0, 1.0), surface_dice_tolerance_mm=tolerance)[1]
    assert m["NSD"] == pytest.approx(expected) and "HD95" not in m


# (name, reference, prediction, HD95, NSD): the empty-mask conventions of sampref_bench.evaluation.metrics.
EMPTY_SURFACE_CASES = [
    ("both_empty", np.zeros((6, 6), int), np.zeros((6, 6), int), NAN, NAN),
    ("empty_reference", np.zeros((6, 6), int), box((6, 6), (1, 1), (3, 3)), math.inf, 0.0),
    ("empty_prediction", box((6, 6), (1, 1), (3, 3)), np.zeros((6, 6), int), math.inf, 0.0),
    ("identical", box((6, 6), (1, 1), (4, 3)), box((6, 6), (1, 1), (4, 3)), 0.0, 1.0),
]


@pytest.mark.parametrize("name,ref,pred,hd,nsd", EMPTY_SURFACE_CASES, ids=[c[0] for c in EMPTY_SURFACE_CASES])
def test_surface_metric_empty_mask_conventions(name, ref, pred, hd, nsd):
    m = case_metrics(ref, pred, [1], hd95=True, surface_dice_tolerance_mm=1.0)[1]
    assert same(m["HD95"], hd) and same(m["NSD"], nsd)


# ------------------------------------------------------------------------------------------- summary.json
def sample_cases() -> list[CaseResult]:
    def metrics(dice1, dice2):
        return {1: {"Dice": dice1, "TP": 1}, 2: {"Dice": dice2, "TP": 3}}

    return [CaseResult("a", "ref/a.png", "pred/a.png", metrics(0.5, NAN)),
            CaseResult("b", "ref/b.png", "pred/b.png", metrics(1.0, 0.2)),
            CaseResult("c", "ref/c.png", "pred/c.png", metrics(NAN, 0.4))]


def test_summary_layout_follows_nnunet():
    summary = build_summary(sample_cases(), {"tumour": 2, "organ": 1}, {"hd95": False})
    assert {"metric_per_case", "mean", "foreground_mean"} <= set(summary)
    first = summary["metric_per_case"][0]
    assert set(first) >= {"reference_file", "prediction_file", "metrics"}
    assert first["reference_file"] == "ref/a.png" and list(first["metrics"]) == ["1", "2"]
    assert list(summary["mean"]) == ["1", "2"]
    assert summary["labels"] == {"organ": 1, "tumour": 2} and summary["n_cases"] == 3
    assert summary["settings"] == {"hd95": False, "distance_unit": "pixel"}


# (label, metric, expected mean): NaN cases are left out.
MEAN_CASES = [("1", "Dice", 0.75), ("2", "Dice", 0.3), ("1", "TP", 1.0), ("2", "TP", 3.0)]


@pytest.mark.parametrize("label,metric,expected", MEAN_CASES)
def test_summary_means_ignore_nan(label, metric, expected):
    summary = build_summary(sample_cases(), {"organ": 1, "tumour": 2})
    assert summary["mean"][label][metric] == pytest.approx(expected)


def test_foreground_mean_is_mean_of_label_means_without_background():
    cases = sample_cases()
    for case in cases:
        case.metrics[0] = {"Dice": 0.99, "TP": 100}
    summary = build_summary(cases, {"background": 0, "organ": 1, "tumour": 2})
    assert summary["foreground_mean"]["Dice"] == pytest.approx((0.75 + 0.3) / 2)
    assert summary["foreground_mean"]["TP"] == pytest.approx(2.0)
    assert "0" in summary["mean"]


def test_all_nan_label_has_nan_mean_and_nan_foreground_mean_like_nnunet():
    cases = [CaseResult("a", "r", "p", {1: {"Dice": 0.5}, 2: {"Dice": NAN}})]
    summary = build_summary(cases, {"x": 1, "y": 2})
    assert math.isnan(summary["mean"]["2"]["Dice"]) and math.isnan(summary["foreground_mean"]["Dice"])


def test_summary_round_trip_and_reader(tmp_path):
    summary = build_summary(sample_cases(), {"organ": 1, "tumour": 2})
    path = write_summary(tmp_path / "out" / "summary.json", summary)
    loaded = load_summary(path)
    assert math.isnan(loaded["metric_per_case"][0]["metrics"]["2"]["Dice"])
    assert loaded["mean"]["1"]["Dice"] == pytest.approx(0.75)
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]
    assert case_values(loaded, 1) == {"a": 0.5, "b": 1.0, "c": pytest.approx(NAN, nan_ok=True)}
    (tmp_path / "bad.json").write_text(json.dumps({"mean": {}}))
    with pytest.raises(SamprefError, match="bad.json is not a summary.json"):
        load_summary(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------- folders
def write_png_pair(tmp_path, pairs):
    for case, (ref, pred) in pairs.items():
        write_image(tmp_path / "ref" / f"{case}.png", ref)
        write_image(tmp_path / "pred" / f"{case}.png", pred)
    return tmp_path / "ref", tmp_path / "pred"


PNG_PAIRS = {
    "case_a": (grid(["1100", "1000", "0110", "0000"]), grid(["1100", "0000", "0011", "0000"])),
    "case_b": (grid(["2200", "0000", "0000", "0000"]), grid(["2000", "0000", "0003", "0000"])),
    "case_c": (grid(["0000", "0000", "0000", "0000"]), grid(["0000", "0000", "0000", "0000"])),
}


@pytest.mark.parametrize("num_processes", [1, 2])
def test_png_folder_round_trip(tmp_path, num_processes):
    ref_dir, pred_dir = write_png_pair(tmp_path, PNG_PAIRS)
    (pred_dir / "notes.txt").write_text("ignored")
    summary = evaluate_folders(ref_dir, pred_dir, output=tmp_path / "summary.json", num_processes=num_processes,
                               progress=False)
    assert summary["labels"] == {"label_1": 1, "label_2": 2}  # 3 occurs only in a prediction
    per_case = {entry["case"]: entry["metrics"] for entry in summary["metric_per_case"]}
    assert list(per_case) == ["case_a", "case_b", "case_c"]
    assert per_case["case_a"]["1"]["Dice"] == pytest.approx(6 / 9)
    assert per_case["case_b"]["2"]["Dice"] == pytest.approx(2 / 3)
    assert math.isnan(per_case["case_b"]["1"]["Dice"]) and per_case["case_b"]["1"]["TN"] == 16
    assert summary["mean"]["1"]["Dice"] == pytest.approx(6 / 9)
    assert summary["foreground_mean"]["Dice"] == pytest.approx((6 / 9 + 2 / 3) / 2)
    assert load_summary(tmp_path / "summary.json")["mean"] == json.loads(json.dumps(summary["mean"]))
    assert summary["metric_per_case"][0]["spacing"] is None


def test_labels_and_dataset_json_name_the_scored_labels(tmp_path):
    ref_dir, pred_dir = write_png_pair(tmp_path, PNG_PAIRS)
    dataset = {"name": "T", "channel_names": {"0": "US"}, "labels": {"background": 0, "lesion": 1, "cyst": 2},
               "numTraining": 3, "file_ending": ".png", "dimensionality": 2,
               "target_text": {"lesion": "lesion", "cyst": "cyst"}}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    summary = evaluate_folders(ref_dir, pred_dir, labels=[3], num_processes=1, progress=False)
    assert summary["labels"] == {"label_3": 3} and summary["mean"]["3"]["Dice"] == 0.0
    # case_b's prediction holds a 3, which the dataset.json does not declare: refused, not scored as background
    with pytest.raises(SamprefError, match=r"case_b.png holds value\(s\) 3 that .*dataset.json does not declare"):
        evaluate_folders(ref_dir, pred_dir, dataset_json=tmp_path, num_processes=1, progress=False)
    write_image(pred_dir / "case_b.png", grid(["2000", "0000", "0000", "0000"]))
    summary = evaluate_folders(ref_dir, pred_dir, dataset_json=tmp_path, num_processes=1, progress=False)
    assert summary["labels"] == {"lesion": 1, "cyst": 2}
    summary = evaluate_folders(ref_dir, pred_dir, labels=[2], dataset_json=tmp_path / "dataset.json",
                               num_processes=1, progress=False)
    assert summary["labels"] == {"cyst": 2}
    with pytest.raises(SamprefError, match=r"label value\(s\) \[3\] are not foreground labels"):
        evaluate_folders(ref_dir, pred_dir, labels=[3], dataset_json=tmp_path, num_processes=1, progress=False)


def write_volume(path, array, spacing_xyz):
    write_image(path, array, Geometry(spacing_xyz, (0.0, 0.0, 0.0)))


def test_nifti_folder_hd95_in_mm(tmp_path):
    ref = box((10, 12, 12), (2, 2, 2), (7, 10, 10))
    shifted = box((10, 12, 12), (4, 2, 2), (9, 10, 10))  # 2 voxels along z, where spacing is 3.0 mm
    write_volume(tmp_path / "ref" / "vol_0.nii.gz", ref, (0.8, 0.8, 3.0))
    write_volume(tmp_path / "pred" / "vol_0.nii.gz", shifted, (0.8, 0.8, 3.0))
    write_volume(tmp_path / "ref" / "vol_1.nii.gz", ref, (0.8, 0.8, 3.0))
    write_volume(tmp_path / "pred" / "vol_1.mha", ref, (0.8, 0.8, 3.0))  # endings may differ
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", hd95=True, nsd_tolerance_mm=3.0,
                               num_processes=1, progress=False)
    first, second = (entry["metrics"]["1"] for entry in summary["metric_per_case"])
    assert first["HD95"] == pytest.approx(6.0) and first["Dice"] == pytest.approx(3 / 5)
    assert second["HD95"] == 0.0 and second["NSD"] == 1.0
    assert summary["metric_per_case"][0]["spacing"] == pytest.approx([0.8, 0.8, 3.0])  # NIfTI: float32
    assert summary["settings"]["distance_unit"] == "mm" and summary["mean"]["1"]["HD95"] == pytest.approx(3.0)


# (name, how to break the prediction folder, message pattern)
def _missing(pred_dir):
    (pred_dir / "case_a.png").unlink()
    (pred_dir / "case_c.png").unlink()


def _extra(pred_dir):
    write_image(pred_dir / "stray.png", np.zeros((4, 4), np.uint8))


def _shape(pred_dir):
    write_image(pred_dir / "case_b.png", np.zeros((4, 5), np.uint8))


def _clash(pred_dir):
    write_volume(pred_dir / "case_b.nii.gz", np.zeros((1, 4, 4), np.uint8), (1.0, 1.0, 1.0))


def _rgb(pred_dir):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 3), np.uint8), isVector=True), str(pred_dir / "case_b.png"))


def _float(pred_dir):
    (pred_dir / "case_b.png").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4), 0.5, np.float32)), str(pred_dir / "case_b.nii.gz"))


BROKEN_FOLDERS = [
    ("missing", _missing, r"2 reference\(s\) have no prediction in .*pred: case_a.png, case_c.png"),
    ("extra", _extra, r"1 prediction\(s\) have no reference .*stray.png"),
    ("shape", _shape, r"shape mismatch for case case_b: reference .*case_b.png has shape \(4, 4\), "
                      r"prediction .*case_b.png has \(4, 5\)"),
    ("clash", _clash, r"several files for one case \(case_b: case_b.nii.gz, case_b.png\)"),
    ("rgb", _rgb, r"case_b.png has 3 channels"),
    ("float", _float, r"case_b.nii.gz holds non-integer values"),
]


@pytest.mark.parametrize("name,breaker,pattern", BROKEN_FOLDERS, ids=[c[0] for c in BROKEN_FOLDERS])
def test_folder_errors_name_the_files(tmp_path, name, breaker, pattern):
    ref_dir, pred_dir = write_png_pair(tmp_path, PNG_PAIRS)
    breaker(pred_dir)
    with pytest.raises(SamprefError, match=pattern):
        evaluate_folders(ref_dir, pred_dir, num_processes=1, progress=False)


def test_cases_restrict_evaluation_to_a_subset(tmp_path):
    ref_dir, pred_dir = write_png_pair(tmp_path, PNG_PAIRS)
    (pred_dir / "case_c.png").unlink()
    summary = evaluate_folders(ref_dir, pred_dir, cases=["case_b", "case_a"], num_processes=1, progress=False)
    assert [e["case"] for e in summary["metric_per_case"]] == ["case_a", "case_b"]
    with pytest.raises(SamprefError, match=r"have no prediction .*case_c.png"):
        evaluate_folders(ref_dir, pred_dir, cases=["case_c"], num_processes=1, progress=False)


def test_spacing_mismatch_is_an_error_for_surface_metrics(tmp_path):
    mask = box((4, 6, 6), (1, 1, 1), (3, 4, 4))
    write_volume(tmp_path / "ref" / "v.nii.gz", mask, (1.0, 1.0, 3.0))
    write_volume(tmp_path / "pred" / "v.nii.gz", mask, (1.0, 1.0, 1.0))
    assert evaluate_folders(tmp_path / "ref", tmp_path / "pred", num_processes=1, progress=False)["n_cases"] == 1
    with pytest.raises(SamprefError, match="spacing mismatch for case v"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", hd95=True, num_processes=1, progress=False)


def test_references_without_foreground_need_labels(tmp_path):
    ref_dir, pred_dir = write_png_pair(tmp_path, {"z": PNG_PAIRS["case_c"]})
    with pytest.raises(SamprefError, match="hold no foreground label"):
        evaluate_folders(ref_dir, pred_dir, num_processes=1, progress=False)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_writes_summary_and_prints_means(tmp_path, capsys):
    ref_dir, pred_dir = write_png_pair(tmp_path, PNG_PAIRS)
    assert evaluate_main([str(ref_dir), str(pred_dir), "-l", "1", "2", "-np", "1", "--hd95", "--quiet"]) == 0
    summary = load_summary(pred_dir / "summary.json")
    assert summary["settings"]["hd95"] is True and list(summary["mean"]) == ["1", "2"]
    out = capsys.readouterr().out
    assert "foreground_mean" in out and "0.6667" in out and "HD95" in out
    assert evaluate_main([str(ref_dir), str(pred_dir), "-o", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert (tmp_path / "s.json").is_file()


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    ref_dir, pred_dir = write_png_pair(tmp_path, PNG_PAIRS)
    (pred_dir / "case_a.png").unlink()
    assert evaluate_main([str(ref_dir), str(pred_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sampref_evaluate_folder: error:") and "case_a.png" in err
    assert not (pred_dir / "summary.json").exists()
