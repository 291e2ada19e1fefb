"""Trainers by name: the registry behind ``sampref_train DATASET TRAINER FOLD``.

A trainer is a subclass of :class:`~sampref_bench.trainers.base.BaseTrainer` decorated with
:func:`register_trainer`; subclassing is the whole extension story, as in nnU-Net. Trainers defined
outside sampref are found by importing their module first: pass ``--trainer-module my_pkg.my_trainers``
(or a path to a ``.py`` file) to ``sampref_train``, or list modules in ``SAMPREF_TRAINER_MODULES``
(separated by ``:``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import TypeVar

from sampref_bench.utilities.errors import SamprefError

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_trainer(cls: T) -> T:
    """Class decorator adding a trainer to the registry under its class name."""
    existing = _REGISTRY.get(cls.__name__)
    if existing is not None and existing is not cls and existing.__module__ != cls.__module__:
        raise SamprefError(f"two trainers are named {cls.__name__} ({existing.__module__} and {cls.__module__}); "
                           "rename one")
    _REGISTRY[cls.__name__] = cls
    return cls


def import_trainer_module(spec: str) -> None:
    """Import a module (dotted name, or a path to a ``.py`` file) so that its trainers register."""
    path = Path(spec)
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise SamprefError(f"trainer module {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"sampref_external_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except ImportError as err:
        raise SamprefError(f"cannot import trainer module {spec!r}: {err}") from err


def _load_builtin_and_external() -> None:
    importlib.import_module("sampref_bench.trainers.sam_trainers")
    for spec in filter(None, os.environ.get("SAMPREF_TRAINER_MODULES", "").split(":")):
        import_trainer_module(spec)


def available_trainers() -> list[str]:
    """Names of every registered trainer (built-in and imported)."""
    _load_builtin_and_external()
    return sorted(name for name, cls in _REGISTRY.items() if not getattr(cls, "abstract", False))


def get_trainer(name: str) -> type:
    """The trainer class registered as ``name``; an unknown name suggests the closest ones."""
    names = available_trainers()
    cls = _REGISTRY.get(name)
    if cls is None or getattr(cls, "abstract", False):
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise SamprefError(f"unknown trainer {name!r}.{hint} Available: {', '.join(names)}. A trainer of your own "
                           "is found with --trainer-module MODULE.")
    return cls
