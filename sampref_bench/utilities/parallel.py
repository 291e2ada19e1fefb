"""Mapping a function over jobs in worker processes, in order, with a progress bar.

Workers never outlive their parent: a ``kill -9`` of ``sampref_plan`` would otherwise leave its spawned workers
(each holding numpy, SimpleITK and torch, hundreds of MB) and multiprocessing's resource tracker running. Each
worker asks Linux to send it ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon
thread polls ``os.getppid()`` and exits the worker when the parent is gone. The resource tracker exits by
itself once the last process holding its pipe (parent and workers) is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

from tqdm import tqdm

R = TypeVar("R")

#: Seconds of serial work below which worker processes do not pay: a spawned worker starts a fresh
#: interpreter and imports numpy, SimpleITK and torch (1-3 s of CPU each on a small machine).
POOL_MIN_SERIAL_S = 10.0


#: ``prctl`` option: the signal a process receives when its parent dies (``<linux/prctl.h>``).
PR_SET_PDEATHSIG = 1
#: Seconds between two looks at ``os.getppid()`` where ``prctl`` is not available.
PARENT_POLL_S = 1.0


def _parent_watchdog(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(PARENT_POLL_S)


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process as soon as ``parent_pid`` (its parent) has died.

    On Linux the kernel sends ``SIGKILL`` (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or when ``prctl`` fails, a
    daemon thread checks every :data:`PARENT_POLL_S` s. A parent that died before this ran ends the worker at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_parent_watchdog, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def map_with_progress(fn: Callable[..., R], jobs: Sequence[tuple[Any, ...]], num_processes: int, desc: str,
                      progress: bool = True, min_jobs_for_pool: int = 4,
                      min_serial_s: float = POOL_MIN_SERIAL_S) -> list[R]:
    """``[fn(*job) for job in jobs]``, computed by ``num_processes`` spawned workers when worthwhile.

    ``fn`` must be a module-level function (it is pickled). Results keep the order of ``jobs``. With one
    process, or fewer than ``min_jobs_for_pool`` jobs, everything runs in this process. Otherwise the
    first job runs here and is timed: when all jobs at that pace would take under ``min_serial_s``, the
    rest run here too (starting workers would cost more), else in the workers, which exit when this process
    dies (:func:`die_with_parent`).
    """
    results: list[R] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
    try:
        serial = num_processes <= 1 or len(jobs) < min_jobs_for_pool
        if not serial:
            start = time.perf_counter()
            results.append(fn(*jobs[0]))
            bar.update()
            serial = (time.perf_counter() - start) * len(jobs) < min_serial_s
        if serial:
            for job in jobs[len(results):]:
                results.append(fn(*job))
                bar.update()
        else:
            rest = jobs[len(results):]
            chunk = max(1, len(rest) // (8 * num_processes))
            pool = ProcessPoolExecutor(num_processes, mp_context=get_context("spawn"), initializer=die_with_parent,
                                       initargs=(os.getpid(),))
            try:
                for result in pool.map(fn, *zip(*rest), chunksize=chunk):
                    results.append(result)
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # a failed job: the queued ones do not run
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()  # before any error message, so it does not share the bar's line
    return results
