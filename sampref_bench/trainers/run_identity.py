"""What makes two runs the same run: the run tag of non-default hyperparameters and configuration differences.

A run's folder is ``{Trainer}__{plans}__{configuration}__f{fraction}``; the configuration part is the plan
configuration plus model choices (``2d-tiny``) plus, for a run whose hyperparameters differ from the
trainer's defaults, a tag: ``--run-name`` when given, otherwise one made from the differing values, e.g.
``lr0.0003`` or ``epochs5-seed1``. A tag that would be long or lose characters carries a short digest of
the exact values instead, so two different settings never share a folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError

#: Longest auto-made tag kept readable; longer ones are shortened and given a digest.
MAX_TAG_LENGTH = 40
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+=-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+=_-]")


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_tag(changes: dict[str, Any]) -> str | None:
    """A short, filesystem-safe tag for the non-default hyperparameters ``changes`` (``None`` when empty)."""
    if not changes:
        return None
    parts = []
    for key in sorted(changes):
        value = changes[key]
        text = value if isinstance(value, str) else _canonical_json(value)
        parts.append(f"{key}{text}")
    readable = "-".join(parts)
    safe = _UNSAFE.sub("", readable).replace("__", "_")
    if safe == readable and len(safe) <= MAX_TAG_LENGTH:
        return safe
    digest = hashlib.sha256(_canonical_json(changes).encode()).hexdigest()[:8]
    return f"{safe[: MAX_TAG_LENGTH - 9].rstrip('-_')}-{digest}"


def validate_run_name(name: str) -> str:
    """``--run-name``: letters, digits and ``. + = -``, starting with a letter or digit, no ``__``."""
    if not _RUN_NAME.fullmatch(name) or "__" in name or len(name) > 64:
        raise SamprefError(f"--run-name {name!r} is not usable in a folder name: use letters, digits and . + = - "
                           "(at most 64 characters, starting with a letter or digit), e.g. --run-name lr3e-4")
    return name


def config_differences(saved: dict[str, Any], requested: dict[str, Any],
                       added_defaults: dict[str, Any] | None = None) -> list[str]:
    """``key: saved -> requested`` for every hyperparameter that differs (missing keys included), sorted.

    ``added_defaults``: the trainer's current defaults. A key absent from ``saved`` whose requested value is
    its default is not a difference: it is an option added after the run was saved, and a new option's
    default keeps the behaviour the run was trained with.
    """
    def shown(config: dict[str, Any], key: str) -> str:
        return _canonical_json(config[key]) if key in config else "<absent>"

    def added(key: str) -> bool:
        return (added_defaults is not None and key not in saved and key in requested and key in added_defaults
                and shown(requested, key) == shown(added_defaults, key))

    return [f"{key}: {shown(saved, key)} -> {shown(requested, key)}" for key in sorted(set(saved) | set(requested))
            if shown(saved, key) != shown(requested, key) and not added(key)]


def sibling_runs(fold_dir: Path, pattern: str, config: dict[str, Any]) -> list[str]:
    """Other runs of the same fold whose folder matches ``pattern`` and holds a checkpoint, each named with how
    its hyperparameters (from its ``config.json``) differ from ``config``.

    ``fold_dir`` is ``{results}/{dataset}/{run folder}/fold_{k}``; ``pattern`` a glob over run folder names.
    """
    found = []
    for folder in sorted(fold_dir.parents[1].glob(pattern)):
        other = folder / fold_dir.name
        if other == fold_dir or not any(other.glob("checkpoint_*.pth")):
            continue
        try:
            saved = load_json(other / "config.json").get("hyperparameters", {})
        except SamprefError:
            saved = {}
        found.append(f"{folder.name} (differs in {'; '.join(config_differences(saved, config)) or '?'})")
    return found
