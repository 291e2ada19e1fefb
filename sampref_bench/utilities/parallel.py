"""Mapping a function over jobs in worker processes, in order, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

from tqdm import tqdm

R = TypeVar("R")


def map_with_progress(fn: Callable[..., R], jobs: Sequence[tuple[Any, ...]], num_processes: int, desc: str,
                      progress: bool = True, min_jobs_for_pool: int = 4) -> list[R]:
    """``[fn(*job) for job in jobs]``, computed by ``num_processes`` spawned workers when worthwhile.

    ``fn`` must be a module-level function (it is pickled). Results keep the order of ``jobs``. With one
    process, or fewer than ``min_jobs_for_pool`` jobs, everything runs in this process (no start-up cost).
    """
    results: list[R] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
    if num_processes <= 1 or len(jobs) < min_jobs_for_pool:
        for job in jobs:
            results.append(fn(*job))
            bar.update()
    else:
        chunk = max(1, len(jobs) // (8 * num_processes))
        with ProcessPoolExecutor(num_processes, mp_context=get_context("spawn")) as pool:
            for result in pool.map(fn, *zip(*jobs), chunksize=chunk):
                results.append(result)
                bar.update()
    bar.close()
    return results
