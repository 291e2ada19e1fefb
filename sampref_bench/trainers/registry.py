"""Trainers by name: the registry behind ``sampref_train DATASET TRAINER FOLD``.

Every subclass of :class:`~sampref_bench.trainers.base.BaseTrainer` is a trainer under its class name as
soon as its class statement runs; subclassing is the whole extension story, as in nnU-Net. A class is
abstract (not offered) only when its own body says ``abstract = True``. Trainers defined outside sampref
are found by importing their module first: pass ``--trainer-module my_pkg.my_trainers`` (or a path to a
``.py`` file) to ``sampref_train``, or list modules in ``SAMPREF_TRAINER_MODULES`` (separated by ``:``).
A ``.py`` file is imported as module ``sampref_external_{stem}`` and registered in ``sys.modules``, so its
classes pickle to worker processes.

Imports run one way: this module imports the built-in trainer modules, which never import it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from sampref_bench.trainers.base import TRAINER_CLASSES
from sampref_bench.utilities.errors import SamprefError

#: Modules whose trainers are built in.
BUILTIN_MODULES = ("sampref_bench.trainers.sam.bounds", "sampref_bench.trainers.sam.prompted",
                   "sampref_bench.trainers.sam.self_prompt",
                   "sampref_bench.trainers.sam.two_stage", "sampref_bench.trainers.dpo.trainers",
                   "sampref_bench.trainers.sam.pseudo_label", "sampref_bench.trainers.unet.trainer",
                   "sampref_bench.trainers.unet.semi_supervised")


def import_trainer_module(spec: str) -> None:
    """Import a module (dotted name, or a path to a ``.py`` file) so that its trainers register.

    Deprecation warnings raised while it imports (an old import path of a moved trainer module) are shown, not
    hidden by Python's default filter, so the author of the file learns the new path."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", DeprecationWarning)
        _import_trainer_module(spec)


def _import_trainer_module(spec: str) -> None:
    path = Path(spec)
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise SamprefError(f"trainer module {path} does not exist")
            name = f"sampref_external_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path.resolve())
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            importlib.import_module(spec)
    except ImportError as err:
        raise SamprefError(f"cannot import trainer module {spec!r}: {err}") from err


def _load_builtin_and_external() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for spec in filter(None, os.environ.get("SAMPREF_TRAINER_MODULES", "").split(":")):
        import_trainer_module(spec)


def available_trainers() -> list[str]:
    """Names of every concrete trainer (built-in and imported)."""
    _load_builtin_and_external()
    return sorted(name for name, cls in TRAINER_CLASSES.items() if not cls.is_abstract())


def get_trainer(name: str) -> type:
    """The trainer class registered as ``name``; an unknown name suggests the closest ones."""
    names = available_trainers()
    cls = TRAINER_CLASSES.get(name)
    if cls is None or cls.is_abstract():
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        what = f"trainer {name!r} is abstract (a base class to subclass)" if cls is not None else \
            f"unknown trainer {name!r}"
        raise SamprefError(f"{what}.{hint} Available: {', '.join(names)}. A trainer of your own is found with "
                           "--trainer-module MODULE.")
    return cls


def load_trained_run(run_dir: str | Path, device: str = "cpu", checkpoint: str = "checkpoint_final.pth",
                     progress: bool = False) -> Any:
    """A finished run as a ready model, in one call: its trainer rebuilt from ``run_dir/config.json`` (same
    class, dataset, fold, fraction and hyperparameters), its networks built for inference
    (:meth:`~sampref_bench.trainers.base.BaseTrainer.initialize_for_inference`: nothing is trained, no stage-1 run
    or candidate is read) with the checkpoint's networks loaded and in eval mode; a checkpoint trained under
    another plan (image size, normalization, slicing, transform, configuration, labels) is refused.
    ``trainer.predict_case(case)`` then predicts any preprocessed case, and ``trainer.network`` is the model.

    ``run_dir`` is a fold folder (``.../{Trainer}__{plans}__{configuration}__f{fraction}/fold_k``); the
    dataset must still be planned under ``$SAMPREF_preprocessed``. A missing or foreign checkpoint is a
    :class:`SamprefError` naming the file.
    """
    from sampref_bench.trainers.run_folder import load_checkpoint
    from sampref_bench.utilities.atomic import load_json

    run_dir = Path(run_dir)
    record_path = run_dir / "config.json"
    if not record_path.is_file():
        raise SamprefError(f"{record_path} is missing: {run_dir} is not a sampref run folder (expected the fold_k "
                           "folder of a finished `sampref_train` run)")
    record = load_json(record_path)
    cls = get_trainer(record["trainer"])
    trainer = cls(record["dataset"], int(record["fold"]), float(record["fraction"]), device=device,
                  overrides=cls.recorded_config(dict(record["hyperparameters"])), progress=progress)
    trainer.run_tag = record.get("run_tag") or ""  # a --run-name, or the tag the same hyperparameters give
    trainer.output_dir = run_dir
    path = run_dir / checkpoint
    if not path.is_file():
        raise SamprefError(f"{path} is missing: the run in {run_dir} has not finished (continue it with "
                           "`sampref_train ... --continue`, or pass checkpoint='checkpoint_latest.pth')")
    state = load_checkpoint(path)
    if state.get("trainer") != cls.__name__:
        raise SamprefError(f"{path} was written by trainer {state.get('trainer')!r}, not {cls.__name__}")
    trainer.initialize_for_inference()
    trainer.load_inference_state(state, path)
    return trainer
