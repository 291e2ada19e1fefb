"""Running the grid: the job function, the executors (inline, local processes, submitit) and the scheduler.

:func:`execute_run` trains one run under its lock (a picklable call: it is what a worker process or a SLURM job
executes) and returns a :class:`RunOutcome` instead of raising, so one failing run never stops the grid.
:func:`run_grid` hands ready jobs (their stage-1 dependency finished, nobody else holding their lock) to an
executor, reports progress (runs done / running / left and an ETA from the finished runs' durations) and marks the
jobs of a failed dependency as blocked. Executors share one small interface (:class:`Executor`):
:class:`InlineExecutor` (sequential, in this process), :class:`ProcessExecutor` (``--workers N`` processes) and
:class:`SubmititExecutor` (one SLURM job per run or a job array; any ``submitit`` executor can be injected, e.g.
``submitit.LocalExecutor`` in tests).

The lock kind (:mod:`.locks`) is resolved once by :func:`run_grid` and travels in every :class:`RunCall`, so the
scheduler's probes, worker processes and SLURM jobs all use the same one.

Epoch lines: a run prints one line per epoch (:func:`epoch_line`: run, epoch i/N, loss, pseudo Dice, seconds)
through the trainer's ``epoch_callbacks``. The lines go to the executor's *line sink*: the grid's ``echo`` in this
process (:class:`InlineExecutor`), a queue the parent drains into its ``echo`` between polls (:class:`ProcessExecutor`:
whole lines, never interleaved), the job's own stdout elsewhere (a SLURM job's log).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import math
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sampref_bench import paths
from sampref_bench.grid.locks import STALE_S, LockPolicy, lock_holder, lock_path, resolve_lock_policy
from sampref_bench.grid.plan import GridPlan, Job, RunSpec, run_state
from sampref_bench.trainers.registry import BUILTIN_MODULES
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


# ------------------------------------------------------------------------------------------------ executors
class Executor(Protocol):
    """Starts calls and reports finished ones."""

    #: How many calls may run at once.
    slots: int

    def submit(self, calls: list[RunCall]) -> list[Any]:
        """Start ``calls``; one handle per call, or the exception that prevented its submission."""

    # optional: ``connect(echo)``, where the runs' lines (epoch lines) go; without it they go to the runs' stdout

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, RunOutcome]]:
        """Finished handles among ``handles`` with their outcomes (waits up to ``timeout`` for one)."""

    def close(self) -> None:
        """Free the workers."""


class _Finished:
    """Handle of a call that already ran (hashable by identity)."""

    def __init__(self, outcome: RunOutcome) -> None:
        self.outcome = outcome


class InlineExecutor:
    """Sequential, in this process: each call runs when it is submitted."""

    slots = 1

    def __init__(self, function: Callable[[RunCall], RunOutcome] = execute_run) -> None:
        self.function = function
        self.echo: Callable[[str], None] | None = None

    def connect(self, echo: Callable[[str], None]) -> None:
        """Send the runs' lines (epoch lines) to ``echo``."""
        self.echo = echo

    def submit(self, calls: list[RunCall]) -> list[Any]:
        """Run each call now; its handle holds its outcome."""
        out = []
        for call in calls:
            with line_sink(self.echo):
                out.append(_Finished(self.function(call)))
        return out

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, RunOutcome]]:
        """Everything submitted has finished."""
        return [(handle, handle.outcome) for handle in handles]

    def close(self) -> None:
        """Nothing to free."""


#: Modules a ``forkserver`` imports once, so each worker forked from it starts without importing torch again.
PRELOAD = ("sampref_bench.grid.executors", "sampref_bench.trainers.registry", *BUILTIN_MODULES)


def default_start_method(device: str) -> str:
    """``forkserver`` where the platform has it, else ``spawn``. Never a plain ``fork`` of this process: a child
    forked after torch ran OpenMP threads (or touched CUDA) can hang; the fork server only imported modules."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def visible_gpus() -> list[str]:
    """The GPUs a worker may be given: ``CUDA_VISIBLE_DEVICES``' entries when it is set, else ``0..n-1`` for the
    ``n`` devices torch sees (empty without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip()]
    import torch

    return [str(k) for k in range(torch.cuda.device_count())]


def _init_worker(counter: Any, gpus: tuple[str, ...], lines: Any) -> None:
    """Pool initializer: the runs' lines go to the parent through ``lines`` (a queue); with ``gpus``, the k-th worker
    process started sees only ``gpus[k % len(gpus)]`` (as its ``cuda:0``). It runs before the worker touches CUDA,
    which is what makes ``CUDA_VISIBLE_DEVICES`` take effect."""
    global _LINE_SINK
    _LINE_SINK = lines.put
    if gpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


class ProcessExecutor:
    """``workers`` processes, each training one run at a time (start method: :func:`default_start_method`).

    ``gpus`` (GPU ids as ``CUDA_VISIBLE_DEVICES`` names them): worker k trains on ``gpus[k % len(gpus)]`` only, so
    ``--workers 4`` on a 4-GPU machine puts one run on each GPU instead of four on the first. Default: with
    ``device="cuda"``, :func:`visible_gpus`; on the CPU, none."""

    def __init__(self, workers: int, start_method: str | None = None, device: str = "cpu",
                 function: Callable[[RunCall], RunOutcome] = execute_run,
                 gpus: list[str] | None = None) -> None:
        if workers < 1:
            raise SamprefError(f"--workers must be at least 1, got {workers}")
        start_method = start_method or default_start_method(device)
        context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            context.set_forkserver_preload(list(PRELOAD))
        self.slots = workers
        self.function = function
        self.gpus = list(gpus) if gpus is not None else (visible_gpus() if device == "cuda" else [])
        if device == "cuda" and not self.gpus:
            raise SamprefError("--device cuda: no GPU is visible (CUDA_VISIBLE_DEVICES is empty or torch sees no "
                               "CUDA device). Use --device cpu, or name the GPUs with --gpus.")
        #: The workers' lines (one message per line, written whole under the queue's lock), drained in :meth:`wait`.
        self.lines = context.SimpleQueue()
        self.echo: Callable[[str], None] = emit_line
        self.pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                           initargs=(context.Value("i", 0), tuple(self.gpus), self.lines))

    def connect(self, echo: Callable[[str], None]) -> None:
        """Print the workers' lines (epoch lines) through ``echo`` (default: this process's stdout)."""
        self.echo = echo

    def drain(self) -> None:
        """Echo every line the workers have sent so far."""
        while not self.lines.empty():
            self.echo(self.lines.get())

    def submit(self, calls: list[RunCall]) -> list[Any]:
        """One future per call."""
        return [self.pool.submit(self.function, call) for call in calls]

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, RunOutcome]]:
        """Futures that finished (a crashed worker is a failed run); the workers' lines are echoed meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            left = deadline - time.monotonic()
            done, _ = cf.wait(handles, timeout=max(0.0, min(0.2, left)), return_when=cf.FIRST_COMPLETED)
            if done or left <= 0.2:
                break
        self.drain()
        out = []
        for future in done:
            try:
                out.append((future, future.result()))
            except Exception as err:  # noqa: BLE001 - a dead worker process fails its run, not the grid
                out.append((future, RunOutcome("failed", message=f"worker process failed: {err!r}")))
        return out

    def close(self) -> None:
        """Shut the pool down, echoing the workers' lines meanwhile (a worker blocked on a full line pipe could
        otherwise never finish) and the last ones after."""
        stop = threading.Event()

        def pump() -> None:
            while not stop.is_set():
                self.drain()
                stop.wait(0.05)

        pumping = threading.Thread(target=pump, daemon=True, name="worker lines")
        pumping.start()
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            stop.set()
            pumping.join()
        self.drain()


@dataclass
class SlurmOptions:
    """Resources of each SLURM job (``--slurm-*`` options)."""

    partition: str | None = None
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 32
    time_min: int = 24 * 60
    array: bool = False
    log_folder: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def slurm_executor(options: SlurmOptions) -> Any:
    """A ``submitit.AutoExecutor`` set to ``options`` (logs under ``options.log_folder``)."""
    try:
        import submitit
    except ImportError as err:
        raise SamprefError("--executor slurm needs submitit: pip install submitit") from err
    executor = submitit.AutoExecutor(folder=options.log_folder)
    if executor.cluster != "slurm":
        raise SamprefError(f"--executor slurm: no SLURM cluster is reachable from here (submitit found "
                           f"{executor.cluster!r}: sbatch is not on PATH); use --executor local [--workers N]")
    params: dict[str, Any] = {"timeout_min": options.time_min, "cpus_per_task": options.cpus,
                              "mem_gb": options.mem_gb, "gpus_per_node": options.gpus, "name": "sampref"}
    if options.partition:
        params["slurm_partition"] = options.partition
    executor.update_parameters(**params, **options.extra)
    return executor


class SubmititExecutor:
    """Each call a ``submitit`` job (a job array per batch of ready calls when ``array``); ``executor`` is any
    submitit executor (``AutoExecutor`` for SLURM, ``LocalExecutor`` in tests)."""

    def __init__(self, executor: Any, array: bool = False, poll_s: float = 5.0, max_jobs: int = 1000) -> None:
        self.executor = executor
        self.array = array
        self.poll_s = poll_s
        self.slots = max_jobs

    def submit(self, calls: list[RunCall]) -> list[Any]:
        """Submit; an error is returned in place of the handle of each call it hit."""
        if self.array and len(calls) > 1:
            try:
                with self.executor.batch():
                    jobs = [self.executor.submit(execute_run, call) for call in calls]
                return list(jobs)
            except Exception as err:  # noqa: BLE001 - reported per run
                return [err for _ in calls]
        out: list[Any] = []
        for call in calls:
            try:
                out.append(self.executor.submit(execute_run, call))
            except Exception as err:  # noqa: BLE001 - reported per run, the rest of the grid goes on
                out.append(err)
        return out

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, RunOutcome]]:
        """Jobs that finished (polled every ``poll_s`` seconds up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            finished = [job for job in handles if job.done()]
            if finished or time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
        out = []
        for job in finished:
            try:
                out.append((job, job.result()))
            except Exception as err:  # noqa: BLE001 - a job killed by SLURM (time, memory) fails its run
                out.append((job, RunOutcome("failed", message=f"job {getattr(job, 'job_id', '?')} failed: {err}")))
        return out

    def close(self) -> None:
        """Nothing to free (jobs run on the cluster)."""


# ------------------------------------------------------------------------------------------------ scheduler
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
