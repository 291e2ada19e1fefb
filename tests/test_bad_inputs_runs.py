"""Bad inputs and faults around runs, evaluation and prediction (issue 20, items 3-5): each gets a sentence naming
what is wrong and what to do, and nothing half-written is kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sampref_bench.cli.evaluate_folder import main as evaluate_folder_main
from sampref_bench.utilities.imageio import write_image

DATASET_JSON = {"name": "T", "channel_names": {"0": "US"}, "labels": {"background": 0, "lesion": 1},
                "numTraining": 2, "file_ending": ".png", "dimensionality": 2, "target_text": {"lesion": "lesion"}}


def mask(value: int = 1) -> np.ndarray:
    """A 4x4 label map with a 2x2 square of ``value``."""
    out = np.zeros((4, 4), np.uint8)
    out[1:3, 1:3] = value
    return out


def write_folders(tmp_path: Path, refs: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> tuple[Path, Path]:
    for case, array in refs.items():
        write_image(tmp_path / "ref" / f"{case}.png", array)
    for case, array in preds.items():
        write_image(tmp_path / "pred" / f"{case}.png", array)
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return tmp_path / "ref", tmp_path / "pred"


def run_evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = evaluate_folder_main([*args, "-np", "1", "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_refuses_predicted_values_the_dataset_json_does_not_declare(tmp_path, capsys):
    # the prediction of "b" is the right square saved with value 2 (and a stray 7): scored today as background
    # (Dice 0 instead of 1)
    wrong = mask(2)
    wrong[0, 0] = 7
    ref_dir, pred_dir = write_folders(tmp_path, {"a": mask(), "b": mask()}, {"a": mask(), "b": wrong})
    code, text = run_evaluate([str(ref_dir), str(pred_dir), "--dataset-json", str(tmp_path / "dataset.json")], capsys)
    assert code == 2
    assert f"prediction {pred_dir / 'b.png'} holds value(s) 2, 7 that {tmp_path / 'dataset.json'} does not declare" \
        in text
    assert "(its labels: background 0, lesion 1)" in text and "map every value to a declared label" in text
    assert "a.png" not in text  # only the file at fault is named
    assert not (pred_dir / "summary.json").exists()


def test_evaluate_refuses_reference_values_the_dataset_json_does_not_declare(tmp_path, capsys):
    ref = mask()
    ref[0, 3] = 3
    ref_dir, pred_dir = write_folders(tmp_path, {"a": ref}, {"a": mask()})
    code, text = run_evaluate([str(ref_dir), str(pred_dir), "--dataset-json", str(tmp_path)], capsys)
    assert code == 2
    assert f"reference {ref_dir / 'a.png'} holds value(s) 3 that {tmp_path / 'dataset.json'} does not declare" in text
    assert "sampref_convert verify" in text
    assert not (pred_dir / "summary.json").exists()
    # -l picks a subset of the declared labels: the undeclared value is still refused
    code, text = run_evaluate([str(ref_dir), str(pred_dir), "--dataset-json", str(tmp_path), "-l", "1"], capsys)
    assert code == 2 and "holds value(s) 3" in text


def test_evaluate_refuses_a_requested_label_that_no_file_holds(tmp_path, capsys):
    ref_dir, pred_dir = write_folders(tmp_path, {"a": mask(), "b": mask(2)}, {"a": mask(), "b": mask(2)})
    code, text = run_evaluate([str(ref_dir), str(pred_dir), "-l", "1", "5"], capsys)
    assert code == 2
    assert (f"label(s) 5 asked for (-l) occur in no reference in {ref_dir} and no prediction in {pred_dir}: their "
            "Dice would be NaN in every case. Labels present in these files: 1, 2.") in text
    assert "nan" not in text and not (pred_dir / "summary.json").exists()


def test_evaluate_keeps_nan_for_a_declared_label_empty_in_some_cases(tmp_path, capsys):
    # a declared label absent from both files of a case stays NaN there and out of the mean (nnU-Net's semantic)
    ref_dir, pred_dir = write_folders(tmp_path, {"a": mask(), "b": mask(0)}, {"a": mask(), "b": mask(0)})
    code, text = run_evaluate([str(ref_dir), str(pred_dir), "--dataset-json", str(tmp_path)], capsys)
    assert code == 0, text
    summary = json.loads((pred_dir / "summary.json").read_text())
    dice = {e["case"]: e["metrics"]["1"]["Dice"] for e in summary["metric_per_case"]}
    assert dice["a"] == 1.0 and np.isnan(dice["b"]) and summary["mean"]["1"]["Dice"] == 1.0
    code, text = run_evaluate([str(ref_dir), str(pred_dir), "--dataset-json", str(tmp_path), "-l", "1"], capsys)
    assert code == 0, text


# ------------------------------------------------------------------------------------------------ prediction
def test_predict_names_the_planned_folds_for_a_fold_out_of_range(sampref_roots, tmp_path, capsys):
    from sampref_bench.cli.predict import main as predict_main

    splits = sampref_roots["preprocessed"] / "Dataset009_Three" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 3))
    out = tmp_path / "out"
    code = predict_main(["-d", "9", "-t", "SAMNoPrompt", "-f", "0", "3", "-i", str(tmp_path / "no_input"),
                         "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"sampref_predict: error: -f 3: there is no such fold; the folds are 0 to 2 ({splits}). Pass fold numbers "
            "among 0 1 2, or -f all for every finished fold.") in err
    assert "sampref_train" not in err and not out.exists()


def test_predict_without_a_readable_plan_says_the_folds_are_0_to_4(tmp_path, capsys):
    from sampref_bench.cli.predict import main as predict_main

    code = predict_main(["-d", "3", "-t", "UNet", "-f", "9", "-i", str(tmp_path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert ("-f 9: there is no such fold; the folds are 0 to 4 (sampref_plan's 5 folds; no readable "
            "splits_final.json for dataset 3)") in err
    assert "sampref_train" not in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ checkpoints
def small_checkpoint(path: Path) -> bytes:
    """A real (tiny) sampref checkpoint written with torch.save; its bytes."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"networks": {"network": {"w": torch.arange(4096.0)}}, "epoch": 3, "log": []}, path)
    return path.read_bytes()


def test_empty_checkpoint_latest_is_named_with_what_to_do(tmp_path):
    from sampref_bench.trainers.run_folder import load_checkpoint
    from sampref_bench.utilities.errors import SamprefError

    latest = tmp_path / "fold_0" / "checkpoint_latest.pth"
    latest.parent.mkdir()
    latest.write_bytes(b"")
    with pytest.raises(SamprefError) as caught:  # an IndexError inside the message before
        load_checkpoint(latest)
    assert str(caught.value) == (
        f"{latest} is empty (0 bytes): most likely its writing was cut short (the process killed, the machine down "
        "or the disk full) or it was copied incompletely. Delete it and rerun the same `sampref_train` command "
        "without --continue (or rerun `sampref_benchmark`): the run starts again from epoch 0, since a cut-short "
        "checkpoint cannot be resumed.")


def test_truncated_checkpoints_are_named_with_what_to_do(tmp_path):
    from sampref_bench.trainers.run_folder import load_checkpoint
    from sampref_bench.utilities.errors import SamprefError

    folder = tmp_path / "fold_0"
    latest, final = folder / "checkpoint_latest.pth", folder / "checkpoint_final.pth"
    data = small_checkpoint(latest)
    assert load_checkpoint(latest)["epoch"] == 3
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(SamprefError, match=rf"checkpoint_latest.pth is truncated \({len(data) // 2} bytes, the end of "
                                           r"the file is missing\): .* without --continue"):
        load_checkpoint(latest)
    # a cut-short final checkpoint beside a whole latest one: --continue rebuilds it from checkpoint_latest.pth
    small_checkpoint(latest)
    final.write_bytes(data[: len(data) - 100])
    with pytest.raises(SamprefError) as caught:
        load_checkpoint(final)
    assert f"{final} is truncated ({len(data) - 100} bytes" in str(caught.value)
    assert ("Delete it and continue the run (the same `sampref_train` command with --continue, or `sampref_benchmark`, "
            "which continues unfinished runs): it resumes from checkpoint_latest.pth and writes a new "
            "checkpoint_final.pth.") in str(caught.value)
    latest.unlink()
    with pytest.raises(SamprefError, match=f"Delete the run folder {folder} and train the run again"):
        load_checkpoint(final)

