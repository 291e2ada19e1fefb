"""``sampref_benchmark`` prints a line per epoch of a running run: in this process and from worker processes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sampref_bench.cli.benchmark import main
from sampref_bench.grid.executors import ProcessExecutor
from sampref_bench.grid.runs import RunOutcome, emit_line, epoch_line
from tests.trainer_helpers import planned_phantoms

#: Tiny SAM settings, two epochs of two batches of two slices.
TINY2 = ["--set", "model=tiny", "--set", 'model_arch={"stride": 16}', "--set", "batch_size=2",
         "--set", "iterations_per_epoch=2", "--set", "epochs=2"]

EPOCH = re.compile(r"^  SAMNoPrompt f0\.5 fold (\d): epoch (\d)/2, loss (\d+\.\d{4}), pseudo Dice (\d\.\d{4}|n/a), "
                   r"\d+\.\d s$")


def epoch_lines(out: str) -> list[tuple[int, int]]:
    """(fold, epoch) of every epoch line of ``out``; every line that mentions an epoch must be a whole one."""
    found = []
    for line in out.splitlines():
        if ": epoch " in line:
            match = EPOCH.match(line)
            assert match, f"not a whole epoch line: {line!r}"
            found.append((int(match.group(1)), int(match.group(2))))
    return found


def test_epoch_line_format() -> None:
    row = {"epoch": 3, "train_loss": 0.41234, "val_dice": float("nan"), "seconds": 5.23}
    expected = "  UNet f0.1 fold 2: epoch 3/50, loss 0.4123, pseudo Dice n/a, 5.2 s"
    assert epoch_line("UNet f0.1 fold 2", row, 50) == expected


def test_the_in_process_grid_prints_each_epoch_between_start_and_finished(capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    argv = ["-d", dataset, "-t", "SAMNoPrompt", "--fractions", "0.5", "--folds", "0", "--poll", "0.2",
            "--no-report", *TINY2]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if "start SAMNoPrompt f0.5 fold 0" in line)
    finished = next(i for i, line in enumerate(lines) if "finished SAMNoPrompt f0.5 fold 0" in line)
    assert epoch_lines("\n".join(lines[start + 1:finished])) == [(0, 1), (0, 2)]
    assert epoch_lines("\n".join(lines)) == [(0, 1), (0, 2)]  # nothing else, no tqdm bar


def test_no_epoch_lines_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    assert main(["-d", dataset, "-t", "SAMNoPrompt", "--fractions", "0.5", "--folds", "0", "--poll", "0.2",
                 "--no-report", "--no-epoch-lines", *TINY2[:-2], "--set", "epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "grid finished: 1 trained" in out and ": epoch " not in out


def _chatty(call: object) -> RunOutcome:
    """A stand-in job that prints 200 long lines through the line sink of its worker."""
    import os

    for i in range(200):
        emit_line(f"  job {call}: line {i} " + "x" * 500 + f" {os.getpid()}")
    return RunOutcome("trained", message=str(call))


def test_worker_lines_reach_the_parent_whole_before_their_outcome() -> None:
    executor = ProcessExecutor(2, device="cpu", function=_chatty)
    lines: list[str] = []
    executor.connect(lines.append)
    try:
        handles = executor.submit(["a", "b", "c"])  # type: ignore[list-item]
        finished: list[str] = []
        while len(finished) < 3:
            for handle, outcome in executor.wait(handles, timeout=30):
                finished.append(outcome.message)
                handles.remove(handle)
                # every line of a finished job has arrived with its outcome
                assert sum(f"job {outcome.message}:" in line for line in lines) == 200
    finally:
        executor.close()
    assert len(lines) == 600
    assert all(re.fullmatch(r"  job [abc]: line \d+ x{500} \d+", line) for line in lines)
    assert len({line.split()[-1] for line in lines}) == 2  # from both workers, in the parent


def test_two_workers_print_the_epochs_of_their_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    assert main(["-d", dataset, "-t", "SAMNoPrompt", "--fractions", "0.5", "--folds", "0", "1", "--workers", "2",
                 "--poll", "0.2", "--no-report", *TINY2]) == 0
    out = capsys.readouterr().out  # the parent's stdout: the workers' lines came through it
    assert "grid finished: 2 trained" in out
    assert sorted(epoch_lines(out)) == [(0, 1), (0, 2), (1, 1), (1, 2)]
