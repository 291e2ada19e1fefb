"""Where the grid's runs execute, behind one small interface (:class:`Executor`): :class:`InlineExecutor`
(sequential, in this process), :class:`ProcessExecutor` (``--workers N`` local processes, whole epoch lines sent
back through a queue, never interleaved) and :class:`SubmititExecutor` (one SLURM job per run or a job array; any
``submitit`` executor can be injected, e.g. ``submitit.LocalExecutor`` in tests).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sampref_bench.grid import runs
from sampref_bench.grid.runs import RunCall, RunOutcome, emit_line, execute_run, line_sink
from sampref_bench.trainers.registry import BUILTIN_MODULES
from sampref_bench.utilities.errors import SamprefError


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
PRELOAD = ("sampref_bench.grid.runs", "sampref_bench.grid.executors", "sampref_bench.trainers.registry",
           *BUILTIN_MODULES)


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
    runs.set_line_sink(lines.put)
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
