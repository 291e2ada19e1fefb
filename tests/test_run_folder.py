"""The run folder's training log (``write_log``) and ``progress.png`` (``plot_progress``) with keys that appear
in later epochs, missing cells and non-numeric values."""

from __future__ import annotations

import csv
import math
import struct

import pytest

from sampref_bench.trainers.run_folder import plot_progress, write_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stage_rows():
    """Four epochs as a two-stage trainer logs them: stage 2 (epoch 3 on) adds ``dpo_margin`` and ``dpo_acc``
    and no longer reports ``val_dice`` in epoch 4."""
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_dice": 0.2 * e, "lr": 1e-4, "seconds": 1.5} for e in (1, 2)]
    rows.append({"epoch": 3, "train_loss": 0.69, "val_dice": 0.65, "lr": 1e-5, "seconds": 2.0,
                 "dpo_margin": 0.25, "dpo_acc": 0.75})
    rows.append({"epoch": 4, "train_loss": math.nan, "lr": 1e-5, "seconds": 2.5, "dpo_margin": 0.5,
                 "dpo_acc": 1.0, "stage": "dpo"})
    return rows


def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_log_header_is_union_of_keys_in_first_seen_order(tmp_path):
    path = tmp_path / "training_log.csv"
    write_log(path, stage_rows())
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        read = list(reader)
    assert reader.fieldnames == ["epoch", "train_loss", "val_dice", "lr", "seconds", "dpo_margin", "dpo_acc",
                                 "stage"]
    assert len(read) == 4
    assert all(None not in row for row in read)  # no surplus cells: every row fits the header
    assert [row["dpo_margin"] for row in read] == ["", "", "0.25", "0.5"]
    assert [row["dpo_acc"] for row in read] == ["", "", "0.75", "1.0"]
    assert [row["val_dice"] for row in read] == ["0.2", "0.4", "0.65", ""]
    assert [row["stage"] for row in read] == ["", "", "", "dpo"]
    assert read[1]["train_loss"] == "0.5" and read[3]["train_loss"] == "nan" and read[2]["lr"] == "1e-05"


def test_log_rewritten_each_epoch_keeps_earlier_cells(tmp_path):
    path = tmp_path / "training_log.csv"
    rows = stage_rows()
    for n in range(1, len(rows) + 1):  # as the trainer does: the whole log after every epoch
        write_log(path, rows[:n])
        with path.open(newline="") as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == [str(e) for e in range(1, n + 1)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_empty_log_writes_nothing(tmp_path):
    write_log(tmp_path / "training_log.csv", [])
    plot_progress(tmp_path / "progress.png", [], "nothing")
    assert list(tmp_path.iterdir()) == []


def test_progress_png_with_later_keys_gets_a_panel_per_extra_metric(tmp_path):
    plain = [{k: v for k, v in row.items() if not k.startswith("dpo")} for row in stage_rows()]
    plot_progress(tmp_path / "plain.png", plain, "SAMBoxOracle fold 0")
    plot_progress(tmp_path / "stages.png", stage_rows(), "DPORanking fold 0")
    plain_size, stages_size = png_size(tmp_path / "plain.png"), png_size(tmp_path / "stages.png")
    assert (tmp_path / "stages.png").stat().st_size > 1000
    assert stages_size[0] == plain_size[0]
    assert stages_size[1] > plain_size[1]  # dpo_margin and dpo_acc add panels below loss and Dice
    # a text column (stage) and the bookkeeping columns (lr, seconds) add no panel
    plot_progress(tmp_path / "one_extra.png", [{**row, "dpo_acc": None} for row in stage_rows()], "one extra")
    assert plain_size[1] < png_size(tmp_path / "one_extra.png")[1] < stages_size[1]


@pytest.mark.parametrize("rows", [
    [{"epoch": 1}],  # neither loss nor Dice
    [{"epoch": 1, "train_loss": None, "val_dice": "n/a"}, {"train_loss": 0.4, "val_dice": math.nan}],  # no epoch
    [{"epoch": 1, "train_loss": 0.5, "val_dice": 0.5, "flag": True, "extra": float("inf")}],
    [{"epoch": e, "train_loss": 0.1, **{f"m{i}": float(i) for i in range(9)}} for e in (1, 2)],  # many extras
])
def test_progress_png_tolerates_missing_and_odd_values(tmp_path, rows):
    path = tmp_path / "progress.png"
    plot_progress(path, rows, "odd log")
    width, height = png_size(path)
    assert width > 100 and height > 100 and path.stat().st_size > 1000
