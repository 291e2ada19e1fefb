"""Races between lock takers, shared by the grid-lock tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


def race_to_acquire(lockers: Sequence[Any]) -> list[bool]:
    """Every locker's ``acquire()`` called at once from its own thread (a barrier releases them together); returns
    which ones took the lock."""
    barrier = threading.Barrier(len(lockers))
    taken = [False] * len(lockers)

    def take(i: int) -> None:
        barrier.wait()
        taken[i] = lockers[i].acquire()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(lockers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return taken
