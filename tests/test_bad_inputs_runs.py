"""Bad inputs and faults around runs, evaluation and prediction (issue 20, items 3-5): each gets a sentence naming
what is wrong and what to do, and nothing half-written is kept."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sampref_bench.cli.evaluate_folder import main as evaluate_folder_main
from sampref_bench.utilities.imageio import write_image

REPO = Path(__file__).resolve().parents[1]
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


# ------------------------------------------------------------------------------------------------ full disk
class FillingHandle:
    """A file handle on a disk with ``room`` bytes left: the write that does not fit writes what fits, then raises
    ``ENOSPC`` as the kernel does."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def fill_disk(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Every file that ``atomic_write`` opens from now on lies on a disk with ``room`` bytes left."""
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FillingHandle(real(fd, mode, *a, **k), room))


def checkpoint_state(n: int):
    import torch

    return {"networks": {"network": {"w": torch.arange(float(n))}}, "epoch": 1, "log": []}


def test_full_disk_during_a_checkpoint_write_keeps_the_old_checkpoint(sampref_roots, monkeypatch):
    from sampref_bench.trainers.run_folder import load_checkpoint, save_checkpoint
    from sampref_bench.utilities.errors import SamprefError

    folder = sampref_roots["results"] / "Dataset007_Phantom" / "SAMBoxOracle__samprefPlans__2d__f0.5" / "fold_0"
    latest = folder / "checkpoint_latest.pth"
    save_checkpoint(latest, checkpoint_state(10))
    before = latest.read_bytes()
    fill_disk(monkeypatch, room=2000)
    with pytest.raises(SamprefError) as caught:  # torch.save reported "unexpected pos 704 vs 598" before
        save_checkpoint(latest, checkpoint_state(100000))
    message = str(caught.value)
    assert message.startswith(f"the disk holding {folder} (the file system mounted at ")
    assert (f"is full (No space left on device) while writing {latest}; the previous checkpoint_latest.pth is "
            "unchanged and no temporary file was left. Free space on that disk or point SAMPREF_results (now "
            f"{sampref_roots['results']}) at a disk with room, and rerun.") in message
    assert "unexpected pos" not in message and isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(latest)
    monkeypatch.undo()
    assert latest.read_bytes() == before and load_checkpoint(latest)["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_latest.pth"]


def test_torch_unexpected_pos_during_a_checkpoint_write_is_a_sentence(tmp_path, monkeypatch):
    import torch

    from sampref_bench.trainers import run_folder
    from sampref_bench.utilities.errors import SamprefError

    final = tmp_path / "fold_0" / "checkpoint_final.pth"

    def half_written(state, handle) -> None:
        handle.write(b"PK\x03\x04" + b"\0" * 500)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(SamprefError) as caught:
        run_folder.save_checkpoint(final, checkpoint_state(10))
    assert str(caught.value).startswith(f"writing {final} failed (torch.save: unexpected pos 704 vs 598, a write "
                                        f"that did not reach the disk): the disk holding {final.parent} (the file "
                                        "system mounted at ")
    assert ("is most likely full, or the file too large for it (`ulimit -f`); no checkpoint_final.pth was written and "
            "no temporary file was left.") in str(caught.value)
    assert list(final.parent.iterdir()) == []


def test_full_disk_during_a_json_write_keeps_the_old_file(tmp_path, monkeypatch):
    from sampref_bench.utilities.atomic import write_json_atomic
    from sampref_bench.utilities.errors import SamprefError

    target = tmp_path / "plans.json"
    write_json_atomic(target, {"old": True})
    before = target.read_bytes()
    fill_disk(monkeypatch, room=10)
    with pytest.raises(SamprefError) as caught:
        write_json_atomic(target, {"new": list(range(1000))})
    monkeypatch.undo()
    assert f"is full (No space left on device) while writing {target}; the previous plans.json is unchanged" \
        in str(caught.value)
    assert "write to a disk with room, and rerun." in str(caught.value)  # outside the SAMPREF_* roots
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["plans.json"]


FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
import torch
from sampref_bench.trainers.run_folder import save_checkpoint
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.errors import SamprefError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG ("File too large")
folder = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (50000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
for write in (lambda: save_checkpoint(folder / "checkpoint_latest.pth", {"w": torch.zeros(100000)}),
              lambda: write_json_atomic(folder / "config.json", list(range(100000)))):
    try:
        write()
    except SamprefError as err:
        print(err)
"""


def test_a_file_size_limit_is_named_for_checkpoints_and_json(sampref_roots):
    from sampref_bench.trainers.run_folder import save_checkpoint
    from sampref_bench.utilities.atomic import write_json_atomic

    folder = sampref_roots["results"] / "Dataset007_Phantom" / "UNet__samprefPlans__2d__f1.0" / "fold_0"
    save_checkpoint(folder / "checkpoint_latest.pth", checkpoint_state(10))
    write_json_atomic(folder / "config.json", {"epochs": 1})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(folder)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    for line, name in zip(lines, ("checkpoint_latest.pth", "config.json")):
        assert line.startswith(f"{folder / name} is too large for its file system (File too large): {folder} (the "
                               "file system mounted at ")
        assert (f"or a file-size limit (`ulimit -f`) caps the size of one file; the previous {name} is unchanged and "
                "no temporary file was left. Raise the limit or point SAMPREF_results") in line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ------------------------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=["022", "027", "002"])
def test_atomic_writes_get_the_mode_open_gives(tmp_path, umask):
    from sampref_bench.trainers.run_folder import save_checkpoint
    from sampref_bench.utilities.atomic import write_json_atomic

    before = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "a.json", {"a": 1})
        save_checkpoint(tmp_path / "checkpoint_latest.pth", checkpoint_state(4))
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o666 & ~umask, "checkpoint_latest.pth": 0o666 & ~umask, "plain.txt": 0o666 & ~umask}


def test_current_umask_reads_without_changing_it():
    from sampref_bench.utilities.atomic import current_umask

    before = os.umask(0o077)
    try:
        assert current_umask() == 0o077 and current_umask() == 0o077
    finally:
        os.umask(before)


# ------------------------------------------------------------------------------------------------ run lock
TINY = {"model": "tiny"}


def train_args(dataset: str, *extra: str) -> list[str]:
    return [dataset, "SAMBoxOracle", "0", "--fraction", "0.5", "--set", "model=tiny", "--no-progress", *extra]


def grid_lock(folder: Path):
    """The lock ``sampref_benchmark`` takes for ``folder`` (its ``--lock-mode auto`` policy), not yet taken."""
    from sampref_bench import paths
    from sampref_bench.grid.locks import resolve_lock_policy

    return resolve_lock_policy("auto", paths.results_root() / folder.parents[1].name).lock(folder)


def fake_training(monkeypatch: pytest.MonkeyPatch, during=None) -> list[Path]:
    """Replace SAMBoxOracle's training by a stand-in that calls ``during(folder)`` and writes a summary; the list of
    folders it trained."""
    from sampref_bench.trainers.registry import get_trainer

    trained: list[Path] = []

    def run_training(self, continue_training: bool = False) -> Path:
        if during is not None:
            during(self.output_dir)
        trained.append(self.output_dir)
        (self.output_dir / "validation").mkdir(parents=True)
        (self.output_dir / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.5}}))
        return self.output_dir

    monkeypatch.setattr(get_trainer("SAMBoxOracle"), "run_training", run_training)
    return trained


def test_sampref_train_is_refused_while_the_benchmark_holds_the_run_lock(monkeypatch, capsys):
    import socket

    from sampref_bench.cli.train import main as train_main
    from sampref_bench.trainers.registry import get_trainer
    from tests.trainer_helpers import planned_phantoms

    dataset = planned_phantoms()
    folder = get_trainer("SAMBoxOracle")(dataset, 0, 0.5, overrides=TINY, progress=False).output_dir
    trained = fake_training(monkeypatch)
    held = grid_lock(folder)
    assert held.acquire()
    try:
        code = train_main(train_args(dataset))
    finally:
        held.release()
    err = capsys.readouterr().err
    assert code == 2 and trained == []
    assert (f"sampref_train: error: {folder} is being trained by another command: its run lock {folder}.lock is held "
            f"by {socket.gethostname()} pid {os.getpid()} since ") in err
    assert ("a sampref_train or sampref_benchmark of the same run. Nothing was started. Wait for it to finish (then "
            "--continue resumes it if it stopped early) or stop that process, and rerun.") in err
    assert not folder.exists()
    # once the lock is free the same command trains, and lets go of the lock at the end
    assert train_main(train_args(dataset)) == 0 and trained == [folder]
    assert not Path(f"{folder}.lock").exists()


def test_the_benchmark_skips_a_run_that_sampref_train_is_training(monkeypatch, capsys):
    from sampref_bench.cli.train import main as train_main
    from sampref_bench.grid.locks import LockFile, LockPolicy
    from sampref_bench.grid.plan import plan_grid
    from sampref_bench.grid.runs import execute_run, make_call
    from tests.trainer_helpers import planned_phantoms

    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["SAMBoxOracle"], [0.5], ["0"], TINY)
    seen = {}

    def grid_meanwhile(folder: Path) -> None:  # a sampref_benchmark of the same run, while sampref_train trains it
        assert folder == plan.jobs[0].folder
        seen["outcome"] = execute_run(make_call(plan, plan.jobs[0], "cpu", lock=LockPolicy("flock")))
        seen["lockfile"] = LockFile(folder).acquire()  # a grid with --lock-mode lockfile

    trained = fake_training(monkeypatch, grid_meanwhile)
    assert train_main(train_args(dataset)) == 0, capsys.readouterr().err
    assert len(trained) == 1
    assert seen["outcome"].status == "busy" and f"pid {os.getpid()}" in seen["outcome"].message
    assert seen["lockfile"] is False


def test_only_rank_0_takes_the_run_lock(monkeypatch):
    from sampref_bench.cli.train import main as train_main
    from sampref_bench.trainers import distributed
    from sampref_bench.trainers.registry import get_trainer
    from tests.trainer_helpers import planned_phantoms

    dataset = planned_phantoms()
    folder = get_trainer("SAMBoxOracle")(dataset, 0, 0.5, overrides=TINY, progress=False).output_dir
    trained = fake_training(monkeypatch)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    held = grid_lock(folder)
    assert held.acquire()  # rank 0 holds it; another rank of the same run goes on
    try:
        assert train_main(train_args(dataset)) == 0 and trained == [folder]
    finally:
        held.release()


def test_continue_from_an_empty_checkpoint_through_sampref_train(capsys):
    from sampref_bench.cli.train import main as train_main
    from sampref_bench.trainers.registry import get_trainer
    from tests.trainer_helpers import planned_phantoms

    dataset = planned_phantoms()
    folder = get_trainer("SAMBoxOracle")(dataset, 0, 0.5, overrides=TINY, progress=False).output_dir
    folder.mkdir(parents=True)
    (folder / "checkpoint_latest.pth").write_bytes(b"")
    assert train_main(train_args(dataset, "--continue")) == 2
    err = capsys.readouterr().err
    assert f"sampref_train: error: {folder / 'checkpoint_latest.pth'} is empty (0 bytes)" in err
    assert "Traceback" not in err and not Path(f"{folder}.lock").exists()
