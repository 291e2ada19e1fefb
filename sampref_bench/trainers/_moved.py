"""Old import paths of the trainer modules, kept for one release after the trainers moved into family packages.

A ``--trainer-module`` file written against the flat layout (``from sampref_bench.trainers.sam_trainer import
SAMTrainer``) keeps working: importing an old path gives the module at its new path (the same module object, so
classes, ``isinstance`` checks and the registry are shared) and emits a :class:`DeprecationWarning` that names the
new path. The aliases go in the release after the one that moved the modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: Old dotted path -> new dotted path.
MOVED: dict[str, str] = {
    "sampref_bench.trainers.data": "sampref_bench.planners.data",
    "sampref_bench.trainers.sam_trainer": "sampref_bench.trainers.sam.trainer",
    "sampref_bench.trainers.sam_trainers": "sampref_bench.trainers.sam.bounds",
    "sampref_bench.trainers.prompt_trainers": "sampref_bench.trainers.sam.prompted",
    "sampref_bench.trainers.two_stage": "sampref_bench.trainers.sam.two_stage",
    "sampref_bench.trainers.pseudo_label": "sampref_bench.trainers.sam.pseudo_label",
    "sampref_bench.trainers.dpo_trainers": "sampref_bench.trainers.dpo.trainers",
    "sampref_bench.trainers.preference": "sampref_bench.trainers.dpo.losses",
    "sampref_bench.trainers.annotators": "sampref_bench.trainers.dpo.annotators",
    "sampref_bench.trainers.unet_trainer": "sampref_bench.trainers.unet.trainer",
    "sampref_bench.trainers.unet_data": "sampref_bench.trainers.unet.data",
    "sampref_bench.trainers.ssl_trainers": "sampref_bench.trainers.unet.semi_supervised",
    "sampref_bench.trainers.ssl_common": "sampref_bench.trainers.unet.parts",
}


class _MovedLoader(importlib.abc.Loader):
    """Loads an old path as the module at its new path (warning once per import)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there (the old path goes in the next "
                      "release)", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already executed."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
