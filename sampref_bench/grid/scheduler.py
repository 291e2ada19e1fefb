"""The grid's scheduler: :func:`run_grid` hands ready jobs (their stage-1 dependency finished, nobody else holding
their lock) to an executor (:mod:`.executors`), reports progress (runs done / running / left and an ETA from the
finished runs' durations) and marks the jobs of a failed dependency as blocked.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampref_bench import paths
from sampref_bench.grid.executors import Executor
from sampref_bench.grid.locks import STALE_S, lock_holder, lock_path, resolve_lock_policy
from sampref_bench.grid.plan import GridPlan, Job, run_state
from sampref_bench.grid.runs import RunOutcome, make_call
from sampref_bench.utilities.errors import SamprefError


@dataclass
class GridResult:
    """What happened to every job of the grid."""

    outcomes: dict[Path, RunOutcome] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Number of jobs that ended with ``status``."""
        return sum(1 for outcome in self.outcomes.values() if outcome.status == status)

    @property
    def failed(self) -> dict[Path, RunOutcome]:
        """Failed and blocked jobs."""
        return {k: v for k, v in self.outcomes.items() if v.status in ("failed", "blocked")}


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def run_grid(plan: GridPlan, executor: Executor, device: str = "cpu", trainer_modules: tuple[str, ...] = (),
             progress: bool = False, echo: Callable[[str], None] = print, poll_s: float = 5.0,
             lock_mode: str = "auto", lock_stale_s: float = STALE_S, epoch_lines: bool = True) -> GridResult:
    """Train every job of ``plan`` that is not done, dependencies first; returns each job's outcome.

    A job waits while a dependency is unfinished or while another worker holds its lock (that worker's result is
    taken when it finishes); a job whose dependency failed is ``blocked``; a job whose lock cannot even be checked
    fails alone. ``lock_mode`` (one of :data:`~sampref_bench.grid.locks.LOCK_MODES`) is resolved once for the
    dataset's results folder (:func:`~sampref_bench.grid.locks.resolve_lock_policy`; a note is echoed when the
    choice is worth saying) and used by every worker. ``epoch_lines``: each run's epochs are echoed as they end
    (:func:`epoch_line`; through ``executor.connect(echo)`` where the executor has it)."""
    policy = resolve_lock_policy(lock_mode, paths.results_root() / plan.dataset, lock_stale_s)
    if policy.note and plan.to_run:
        echo(f"locks: {policy.note}")
    connect = getattr(executor, "connect", None)
    if epoch_lines and callable(connect):
        connect(echo)
    result = GridResult()
    jobs = {job.folder: job for job in plan.jobs}
    pending = [job for job in plan.jobs if job.state != "done"]
    for job in plan.jobs:
        if job.state == "done":
            result.outcomes[job.folder] = RunOutcome("done", str(job.folder))
    total = len(pending)
    running: dict[Any, Job] = {}
    durations: list[float] = []
    started: dict[Path, float] = {}
    waiting_on_other: set[Path] = set()

    def status_line() -> str:
        finished = sum(1 for job in jobs.values() if job.state != "done" and job.folder in result.outcomes)
        left = total - finished - len(running)
        eta = ""
        if durations:
            per = sum(durations) / len(durations)
            eta = f", ETA {_duration(per * (left + len(running) / 2) / max(1, min(executor.slots, total)))}"
        return f"[{finished}/{total} done, {len(running)} running, {left} left{eta}]"

    def locked(folder: Path) -> bool:
        """Whether another holder has ``folder``'s lock; an error checking it propagates as SamprefError."""
        try:
            return policy.is_locked(folder)
        except OSError as err:
            raise SamprefError(f"cannot check the lock {lock_path(folder)}: {err}") from err

    def dependency_failed(job: Job) -> str | None:
        for dep in job.depends_on:
            outcome = result.outcomes.get(dep)
            if outcome is not None and outcome.status in ("failed", "blocked"):
                return f"its stage-1 run {dep} did not finish"
        return None

    while pending or running:
        ready: list[Job] = []
        for job in list(pending):
            reason = dependency_failed(job)
            if reason:
                pending.remove(job)
                result.outcomes[job.folder] = RunOutcome("blocked", str(job.folder), message=reason)
                echo(f"{status_line()} blocked {job.spec.label}: {reason}")
                continue
            if any(run_state(dep) != "done" for dep in job.depends_on):
                continue
            if run_state(job.folder) == "done":
                pending.remove(job)
                result.outcomes[job.folder] = RunOutcome("done", str(job.folder), message="finished by another worker")
                echo(f"{status_line()} {job.spec.label} was finished by another worker")
                continue
            try:
                busy = locked(job.folder)
            except SamprefError as err:
                pending.remove(job)
                result.outcomes[job.folder] = RunOutcome("failed", str(job.folder), message=str(err))
                echo(f"{status_line()} FAILED {job.spec.label}: {err}")
                continue
            if busy:
                if job.folder not in waiting_on_other:
                    waiting_on_other.add(job.folder)
                    echo(f"{status_line()} waiting: {job.spec.label} is locked by {lock_holder(job.folder)}")
                continue
            if len(ready) + len(running) < executor.slots:
                ready.append(job)
        for job in ready:
            pending.remove(job)
        if ready:
            calls = [make_call(plan, job, device, trainer_modules, progress, policy, epoch_lines) for job in ready]
            for job in ready:
                started[job.folder] = time.monotonic()
                echo(f"{status_line()} start {job.spec.label}" + (" (resume)" if job.state == "resume" else ""))
            for job, handle in zip(ready, executor.submit(calls)):
                if isinstance(handle, BaseException):
                    result.outcomes[job.folder] = RunOutcome("failed", str(job.folder),
                                                             message=f"submission failed: {handle}")
                    echo(f"{status_line()} FAILED to submit {job.spec.label}: {handle}")
                else:
                    running[handle] = job
        if not running:
            if pending:
                def held(folder: Path) -> bool:
                    try:
                        return locked(folder)
                    except SamprefError:  # reported when the job itself is checked
                        return False

                any_locked = any(held(job.folder) or any(held(dep) for dep in job.depends_on) for job in pending)
                if not ready and not any_locked:
                    # nothing runs, nothing is locked, yet nothing is ready: dependencies outside the grid failed
                    for job in pending:
                        result.outcomes[job.folder] = RunOutcome("blocked", str(job.folder),
                                                                 message="its stage-1 run is not finished")
                    pending.clear()
                    break
                time.sleep(poll_s)
            continue
        for handle, outcome in executor.wait(list(running), timeout=poll_s):
            job = running.pop(handle)
            if outcome.status == "busy":  # another invocation took it between our check and the worker's
                pending.append(job)
                continue
            result.outcomes[job.folder] = outcome
            if outcome.status == "trained":
                durations.append(time.monotonic() - started[job.folder])
                dice = f", Dice {outcome.dice:.4f}" if outcome.dice is not None else ""
                echo(f"{status_line()} finished {job.spec.label} in {_duration(durations[-1])}{dice}")
            elif outcome.status == "done":
                echo(f"{status_line()} {job.spec.label} was already finished")
            else:
                first = outcome.message.strip().splitlines()[0] if outcome.message.strip() else "?"
                echo(f"{status_line()} FAILED {job.spec.label}: {first}")
    return result
