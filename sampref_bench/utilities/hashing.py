"""Short content digests used as cache keys and change markers."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a JSON-serialisable object (key order ignored)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def image_key(data: Any, case: str) -> str:
    """12 hex digits naming what a model sees of ``case``: its stored image and the plan's RGB mapping.

    ``data`` is a :class:`~sampref_bench.planners.data.PreprocessedData` (anything with ``meta(case)`` holding
    ``image_digest`` and ``rgb_channels``). Every cache of per-image results (embeddings, prompts) puts this
    key in its file names, so a re-preprocessed image is never read stale.
    """
    return digest([data.meta(case)["image_digest"], list(data.rgb_channels)], 12)
