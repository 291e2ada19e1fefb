"""Prompt quality: box IoU, per-prompt scores, the pooled report and the ``sampref_prompts`` console script."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sampref_bench.cli.prompts import main
from sampref_bench.dataset_conversion.busi import convert_busi
from sampref_bench.evaluation.prompt_quality import box_iou, prompt_quality, score_prompt, summary_text
from sampref_bench.prompts.store import VisualPrompt
from tests.conftest import BUSI_SUBSET
from tests.trainer_helpers import planned_busi


# ------------------------------------------------------------------------------------------ box IoU
@pytest.mark.parametrize(("a", "b", "expected"), [
    ([2, 3, 7, 9], [2, 3, 7, 9], 1.0),  # identical
    ([4, 4, 4, 4], [4, 4, 4, 4], 1.0),  # one pixel has area 1, not 0
    ([0, 0, 2, 2], [3, 0, 5, 2], 0.0),  # adjacent columns share no pixel
    ([0, 0, 1, 1], [5, 5, 8, 8], 0.0),  # disjoint in both axes
    ([0, 0, 3, 3], [2, 0, 5, 3], 8 / 24),  # half of each 4x4 box: 2x4 = 8 shared of 16 + 16 - 8
    ([0, 0, 2, 2], [2, 0, 4, 2], 3 / 15),  # one shared column of 3 pixels: 3 of 9 + 9 - 3
    ([0, 0, 9, 9], [0, 0, 4, 4], 25 / 100),  # contained
    ([5, 5, 5, 5], [0, 0, 9, 9], 1 / 100),  # a pixel inside a 10x10 box
    ([1, 2, 4, 3], [3, 0, 6, 5], 4 / 28),  # x 3-4 (2) by y 2-3 (2): 4 shared of 4x2 + 4x6 - 4
])
def test_box_iou_with_inclusive_corners(a, b, expected):
    a, b = np.array(a, np.float32), np.array(b, np.float32)
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ one prompt
TARGET = np.zeros((10, 10), bool)
TARGET[2:6, 3:8] = True  # rows 2-5, columns 3-7: box [3, 2, 7, 5], area 20


def prompt(box, points, empty=False):
    return VisualPrompt(box=np.array(box, np.float32), points=np.array(points, np.float32).reshape(-1, 2),
                        saliency=np.zeros((10, 10), np.float32), mask=np.zeros((10, 10), bool), empty=empty)


@pytest.mark.parametrize(("box", "points", "empty", "expected"), [
    # the truth box; centre (5, 3.5 -> 4) inside; one point of two inside
    ([3, 2, 7, 5], [[4, 3], [0, 0]], False, {"box_iou": 1.0, "centre_inside": 1.0, "points_inside": 0.5}),
    # far away: IoU 0, centre (4, 8) outside, the point outside
    ([2, 7, 6, 9], [[9, 9]], False, {"box_iou": 0.0, "centre_inside": 0.0, "points_inside": 0.0}),
    # the truth box and more: 20 / (7 * 6); centre (6, 4) inside; all three points inside
    ([3, 2, 9, 7], [[3, 2], [7, 5], [5, 4]], False,
     {"box_iou": 20 / 42, "centre_inside": 1.0, "points_inside": 1.0}),
    # a box overlapping the target's last row, centre (5, 7) below it: 5 shared of 25 + 20 - 5
    ([3, 5, 7, 9], [[5, 5], [5, 8], [5, 9], [4, 2]], True,
     {"box_iou": 5 / 40, "centre_inside": 0.0, "points_inside": 0.5, "saliency_empty": 1.0}),
])
def test_score_prompt(box, points, empty, expected):
    scores = score_prompt(prompt(box, points, empty), TARGET)
    assert set(scores) == {"box_iou", "centre_inside", "points_inside", "saliency_empty"}
    assert scores == pytest.approx({"saliency_empty": 0.0, **expected})


def test_score_prompt_without_points_and_with_an_empty_target():
    scores = score_prompt(prompt([3, 2, 7, 5], []), TARGET)
    assert np.isnan(scores["points_inside"]) and scores["box_iou"] == 1.0
    with pytest.raises(ValueError, match="non-empty target"):
        score_prompt(prompt([3, 2, 7, 5], [[4, 3]]), np.zeros((10, 10), bool))


# ------------------------------------------------------------------------------------------ the report
def rect(y0, y1, x0, x1):
    mask = np.zeros((10, 10), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


class FakeLabels:
    """Case "a": slice 0 has label 1, slice 1 labels 1 and 2, slice 2 nothing; case "b": slice 0 label 2."""

    present = {"a": [[1], [1, 2], []], "b": [[2]]}
    masks = {("a", 0, 1): rect(2, 6, 3, 8), ("a", 1, 1): rect(4, 5, 4, 5),  # boxes [3, 2, 7, 5] and [4, 4, 4, 4]
             ("a", 1, 2): rect(0, 5, 0, 10), ("b", 0, 2): rect(0, 10, 0, 2)}  # boxes [0, 0, 9, 4] and [0, 0, 1, 9]

    def labels_per_slice(self, case):
        return self.present[case]

    def mask(self, sample):
        return self.masks[(sample.case, sample.slice, sample.label)] == 1


class FakeSource:
    def settings(self):
        return {"method": "fake"}


class FakeStore:
    """Label 1: the truth box with a point inside it; label 2: an empty saliency, box [0, 0, 8, 8], point (9, 9)."""

    settings = {"saliency": "fake"}
    saliency_source = FakeSource()
    visual_folder = Path("/nowhere")
    label_names = {1: "lesion", 2: "cyst", 3: "never"}

    def __init__(self, with_points=True):
        self.with_points = with_points

    def visual(self, case, slice_index, label):
        if label == 1:
            truth = FakeLabels.masks[(case, slice_index, 1)]
            ys, xs = np.nonzero(truth)
            made = prompt([xs.min(), ys.min(), xs.max(), ys.max()], [[xs.min(), ys.min()]])
        else:
            made = prompt([0, 0, 8, 8], [[9, 9]], empty=True)
        return made if self.with_points else prompt(made.box, [], made.empty)


def test_prompt_quality_pools_present_pairs_per_label():
    report = prompt_quality(FakeStore(), FakeLabels(), ["a", "b"], [1, 2, 3], progress=False)
    assert report["saliency"] == "fake" and report["settings"] == {"method": "fake"}
    assert report["folder"] == str(Path("/nowhere"))
    assert report["per_label"]["lesion"] == {"pairs": 2, "box_iou": 1.0, "centre_inside": 1.0, "points_inside": 1.0,
                                             "saliency_empty": 0.0, "box_iou_median": 1.0}
    # [0, 0, 8, 8] (81 px) against [0, 0, 9, 4] (50 px): 9 x 5 = 45 shared of 86; against [0, 0, 1, 9] (20 px):
    # 2 x 9 = 18 shared of 83. Centre (4, 4) lies inside the first target only; point (9, 9) inside neither.
    iou_a, iou_b = 45 / 86, 18 / 83
    assert report["per_label"]["cyst"] == pytest.approx({
        "pairs": 2, "box_iou": round((iou_a + iou_b) / 2, 4), "centre_inside": 0.5, "points_inside": 0.0,
        "saliency_empty": 1.0, "box_iou_median": round((iou_a + iou_b) / 2, 4)})
    assert report["per_label"]["never"] == {"pairs": 0}
    assert report["pooled"] == pytest.approx({
        "pairs": 4, "box_iou": round((2 + iou_a + iou_b) / 4, 4), "centre_inside": 0.75, "points_inside": 0.5,
        "saliency_empty": 0.5, "box_iou_median": round((1 + iou_a) / 2, 4)})
    assert [(r["slice"], r["label"]) for r in report["cases"]["a"]] == [(0, 1), (1, 1), (1, 2)]
    assert [(r["slice"], r["label"]) for r in report["cases"]["b"]] == [(0, 2)]

    text = summary_text(report)
    lines = text.splitlines()
    assert lines[0] == "prompt quality (fake), against the ground-truth boxes:"
    assert re.search(r"lesion +pairs +2 +box IoU 1\.000 \(median 1\.000\) +centre inside 100\.0% +"
                     r"points inside 100\.0% +saliency empty 0\.0%", lines[1])
    assert "cyst" in lines[2] and "saliency empty 100.0%" in lines[2] and "centre inside 50.0%" in lines[2]
    assert re.fullmatch(r"  never +no present pair", lines[3])
    assert lines[4].startswith("  all labels") and f"box IoU {(2 + iou_a + iou_b) / 4:.3f}" in lines[4]


def test_summary_text_of_prompts_without_points():
    report = prompt_quality(FakeStore(with_points=False), FakeLabels(), ["a", "b"], [1, 2], progress=False)
    assert report["pooled"]["points_inside"] is None
    assert "points inside n/a" in summary_text(report)
    text = summary_text(report)
    assert "box IoU 1.000" in text.splitlines()[1]


# ------------------------------------------------------------------------------------------ sampref_prompts
def test_sampref_prompts_computes_every_prompt_and_reports_quality(capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    planned_busi()
    assert main(["-d", "3", "--no-progress", "--overlays", "2"]) == 0
    out = capsys.readouterr().out
    assert "LLM text of 'lesion' (dataset_text): breast tumor" in out
    # one count per kind of file, each against the same 100 (case, slice, label) prompts of the 100 images
    assert ("100 (case, slice, label) prompts of 100 cases; box prompts: 100 computed, 0 read from the cache; "
            "VQA answers: 100 computed, 0 read from the cache") in out
    assert "new of" not in out
    assert ("  scored: all 100 cases, including every fold's validation cases; choose settings from a fold's "
            "training-case report (sampref_prompts --fold K)") in out.splitlines()
    summary = [line for line in out.splitlines() if line.lstrip().startswith("all labels")]
    assert len(summary) == 1 and "box IoU" in summary[0] and "pairs   100" in summary[0]
    report_path = Path(re.search(r"^report: (.+)$", out, re.MULTILINE).group(1))
    assert report_path.name == "prompt_quality.json" and report_path.is_file()
    assert report_path.parent.name.startswith("dark-basin-")

    report = json.loads(report_path.read_text())
    assert report["fold"] is None and report["n_scored_cases"] == 100 and report["scored"].startswith("scored: all")
    pooled = report["pooled"]
    assert pooled["pairs"] == 100 and report["per_label"]["lesion"]["pairs"] == 100
    for key in ("box_iou", "box_iou_median", "centre_inside", "points_inside", "saliency_empty"):
        assert 0.0 <= pooled[key] <= 1.0, key
    assert pooled["box_iou"] > 0.1  # the basins find BUSI's lesions far better than chance
    assert f"box IoU {pooled['box_iou']:.3f}" in summary[0]  # the printed figure is the stored one
    rows = [row for case_rows in report["cases"].values() for row in case_rows]
    assert len(rows) == 100 and pooled["box_iou"] == pytest.approx(np.mean([r["box_iou"] for r in rows]), abs=1e-4)

    overlays = [Path(p) for p in report["overlays"]]
    cases = sorted(report["cases"])
    assert [p.name for p in overlays] == [f"{cases[0]}_0000_l1.png", f"{cases[-1]}_0000_l1.png"]
    for png in overlays:
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in overlays[0].parent.iterdir()) == sorted(p.name for p in overlays)
    assert len(list(report_path.parent.glob("*.npz"))) == 100
    assert len(list(report_path.parent.parent.glob("vqa-mask-*/*.json"))) == 100

    # a second run reads every prompt from the cache
    assert main(["-d", "3", "--sources", "saliency", "vqa", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert ("100 (case, slice, label) prompts of 100 cases; box prompts: 0 computed, 100 read from the cache; "
            "VQA answers: 0 computed, 100 read from the cache") in out and "box IoU" not in out

    # --fold 0 scores fold 0's training cases only, and says so; the all-case report stays as it was
    splits = json.loads((report_path.parents[2] / "splits_final.json").read_text())
    train, val = set(splits[0]["train"]), set(splits[0]["val"])
    assert len(train) == 80 and len(val) == 20
    all_cases = report_path.read_bytes()
    assert main(["-d", "3", "--sources", "saliency", "--fold", "0", "--no-progress", "--overlays", "1"]) == 0
    out = capsys.readouterr().out
    assert "box prompts: 0 computed, 100 read from the cache" in out  # every case is still prompted
    assert "  scored: fold 0 training cases (80)" in out.splitlines()
    assert re.search(r"all labels +pairs +80 ", out)
    fold_path = Path(re.search(r"^report: (.+)$", out, re.MULTILINE).group(1))
    assert fold_path == report_path.parent / "prompt_quality_fold0.json"
    fold_report = json.loads(fold_path.read_text())
    assert set(fold_report["cases"]) == train and not set(fold_report["cases"]) & val
    assert fold_report["fold"] == 0 and fold_report["n_scored_cases"] == 80
    assert fold_report["scored"] == "scored: fold 0 training cases (80)" and fold_report["pooled"]["pairs"] == 80
    assert [Path(p).parent.name for p in fold_report["overlays"]] == ["overlays_fold0"]
    assert Path(fold_report["overlays"][0]).stem.rsplit("_", 2)[0] in train
    assert report_path.read_bytes() == all_cases


@pytest.mark.parametrize(("setup", "argv", "message"), [
    ("nothing", ["-d", "3"], "sampref_convert"),
    ("converted", ["-d", "3"], "run `sampref_plan -d Dataset003_BUSI` first"),
    ("planned", ["-d", "3", "--saliency", "spectral-residual"], "unknown saliency source"),
    ("planned", ["-d", "3", "--fold", "5"], "splits_final.json has folds 0..4"),
])
def test_sampref_prompts_user_errors(setup, argv, message, capsys):
    if setup == "converted":
        convert_busi(BUSI_SUBSET, 3)
    elif setup == "planned":
        planned_busi()
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sampref_prompts: error: ") and message in err
    assert "Traceback" not in err



def test_sampref_prompts_help_says_settings_come_from_training_case_reports(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "settings are chosen from training-case reports only" in text
    assert "--fold K scores only fold K's training cases (splits_final.json)" in text
    assert "every fold's validation cases included; that report describes the prompts and is not for choosing" in text
