"""One run of the grid: the picklable call a worker or a SLURM job executes, its outcome, and its epoch lines.

:func:`execute_run` trains one run under its lock (:mod:`.locks`): it skips a final run, continues one from its
checkpoint, else trains it, and returns a :class:`RunOutcome` instead of raising, so one failing run never stops
the grid. The lock kind is resolved once by the scheduler and travels in every :class:`RunCall`, so the
scheduler's probes, worker processes and SLURM jobs all use the same one.

Epoch lines: a run prints one line per epoch (:func:`epoch_line`: run, epoch i/N, loss, pseudo Dice, seconds)
through the trainer's ``epoch_callbacks``, to the *line sink* of the process (:func:`line_sink`): the grid's
``echo`` in the scheduler's process, a queue drained by the parent for worker processes, the job's own stdout
elsewhere (a SLURM job's log).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sampref_bench import paths
from sampref_bench.grid.locks import LockPolicy, lock_holder, lock_path
from sampref_bench.grid.plan import GridPlan, Job, RunSpec, run_state
from sampref_bench.utilities.errors import SamprefError


@dataclass(frozen=True)
class RunCall:
    """What a worker needs to train one run: the dataset, the spec, the device and the environment."""

    dataset: str
    spec: RunSpec
    device: str = "cpu"
    roots: tuple[tuple[str, str], ...] = ()
    trainer_modules: tuple[str, ...] = ()
    progress: bool = False
    #: The lock kind of the grid (resolved once by :func:`run_grid`).
    lock: LockPolicy = LockPolicy()
    #: Print one line per epoch (:func:`epoch_line`) to the line sink.
    epoch_lines: bool = False


@dataclass
class RunOutcome:
    """How one call ended: ``trained``, ``done`` (already final), ``busy`` (locked by another), ``failed``."""

    status: str
    folder: str = ""
    seconds: float = 0.0
    message: str = ""
    dice: float | None = None


def make_call(plan: GridPlan, job: Job, device: str, trainer_modules: tuple[str, ...] = (),
              progress: bool = False, lock: LockPolicy | None = None, epoch_lines: bool = False) -> RunCall:
    """The :class:`RunCall` of ``job``, carrying the ``SAMPREF_*`` roots so a remote worker sees the same folders."""
    roots = (("SAMPREF_raw", str(paths.raw_root())), ("SAMPREF_preprocessed", str(paths.preprocessed_root())),
             ("SAMPREF_results", str(paths.results_root())))
    return RunCall(plan.dataset, job.spec, device, roots, tuple(trainer_modules), progress, lock or LockPolicy(),
                   epoch_lines)


# ------------------------------------------------------------------------------------------------ run lines
#: Where :func:`emit_line` sends a run's lines in this process; None: this process's stdout.
_LINE_SINK: Callable[[str], None] | None = None


def emit_line(text: str) -> None:
    """Send one line of a running run (an epoch line) to this process's line sink, else to stdout in one write."""
    sink = _LINE_SINK
    if sink is not None:
        sink(text)
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def set_line_sink(sink: Callable[[str], None] | None) -> None:
    """Send this process's run lines to ``sink`` from now on (a worker process's initializer)."""
    global _LINE_SINK
    _LINE_SINK = sink


@contextlib.contextmanager
def line_sink(sink: Callable[[str], None] | None) -> Iterator[None]:
    """Within the block, :func:`emit_line` calls ``sink`` (None: stdout)."""
    global _LINE_SINK
    previous, _LINE_SINK = _LINE_SINK, sink
    try:
        yield
    finally:
        _LINE_SINK = previous


def _number(value: object, digits: int = 4) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(number) else f"{number:.{digits}f}"


def epoch_line(label: str, row: dict[str, Any], epochs: int) -> str:
    """One epoch of a running run: ``  SAMBaseline f0.1 fold 0: epoch 3/50, loss 0.4120, pseudo Dice 0.6011, 5.2 s``."""
    return (f"  {label}: epoch {row.get('epoch', '?')}/{epochs}, loss {_number(row.get('train_loss'))}, "
            f"pseudo Dice {_number(row.get('val_dice'))}, {_number(row.get('seconds'), 1)} s")


def execute_run(call: RunCall) -> RunOutcome:
    """Train one run under its lock: skip it when final, continue it from a checkpoint, else train it."""
    start = time.perf_counter()
    try:
        for key, value in call.roots:
            os.environ[key] = value
        from sampref_bench.trainers.registry import get_trainer, import_trainer_module

        for module in call.trainer_modules:
            import_trainer_module(module)
        spec = call.spec
        trainer = get_trainer(spec.trainer)(call.dataset, spec.fold, spec.fraction, configuration=spec.configuration,
                                            device=call.device, overrides=spec.overrides_dict(),
                                            progress=call.progress, run_name=spec.run_name)
        folder = trainer.output_dir
        lock = call.lock.lock(folder)
        if not lock.acquire():
            why = getattr(lock, "refusal", "") or lock_holder(folder) or "another worker"
            return RunOutcome("busy", str(folder), message=f"locked by {why}")
        try:
            recovered = getattr(lock, "recovered", "")
            if recovered:
                emit_line(f"  {spec.label}: took over the stale lock {lock_path(folder)} of {recovered}")
            state = run_state(folder)
            if state == "done":
                return RunOutcome("done", str(folder))
            if call.epoch_lines:
                epochs = int(trainer.config["epochs"])
                trainer.epoch_callbacks.append(lambda row: emit_line(epoch_line(spec.label, row, epochs)))
            trainer.run_training(continue_training=state == "resume")
        finally:
            lock.release()
        if getattr(lock, "lost", False):
            emit_line(f"  {spec.label}: warning: its lock file {lock_path(folder)} was taken over by another command "
                      "while it trained (a heartbeat older than --lock-stale); check that run")
        dice = _dice(folder)
        return RunOutcome("trained", str(folder), time.perf_counter() - start, "resumed" if state == "resume" else "",
                          dice)
    except SamprefError as err:
        return RunOutcome("failed", message=str(err), seconds=time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - a bug in one run is reported with its traceback; the grid goes on
        text = "".join(traceback.format_exception(err))
        return RunOutcome("failed", message=f"{type(err).__name__}: {err}\n{text}", seconds=time.perf_counter() - start)


def _dice(folder: Path) -> float | None:
    import json

    try:
        summary = json.loads((folder / "validation" / "summary.json").read_text())
        return float(summary["foreground_mean"]["Dice"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
