"""Shared plumbing for the console scripts: user errors print one clear message, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sampref_bench.utilities.errors import SamprefError


def run_cli(body: Callable[[], int | None], prog: str) -> int:
    """Run ``body``; a :class:`SamprefError` prints ``prog: error: ...`` to stderr and returns exit code 2."""
    try:
        code = body()
    except SamprefError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
    return int(code or 0)
