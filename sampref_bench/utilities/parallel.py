"""Mapping a function over jobs in worker processes, in order, with a progress bar."""

from __future__ import annotations

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


def map_with_progress(fn: Callable[..., R], jobs: Sequence[tuple[Any, ...]], num_processes: int, desc: str,
                      progress: bool = True, min_jobs_for_pool: int = 4,
                      min_serial_s: float = POOL_MIN_SERIAL_S) -> list[R]:
    """``[fn(*job) for job in jobs]``, computed by ``num_processes`` spawned workers when worthwhile.

    ``fn`` must be a module-level function (it is pickled). Results keep the order of ``jobs``. With one
    process, or fewer than ``min_jobs_for_pool`` jobs, everything runs in this process. Otherwise the
    first job runs here and is timed: when all jobs at that pace would take under ``min_serial_s``, the
    rest run here too (starting workers would cost more), else in the workers.
    """
    results: list[R] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
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
        with ProcessPoolExecutor(num_processes, mp_context=get_context("spawn")) as pool:
            for result in pool.map(fn, *zip(*rest), chunksize=chunk):
                results.append(result)
                bar.update()
    bar.close()
    return results
