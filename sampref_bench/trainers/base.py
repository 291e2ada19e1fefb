"""The base trainer: folders, configuration, the epoch loop, checkpoints and resuming.

Subclasses override hooks, as in nnU-Net: :meth:`build_network`, :meth:`configure_optimizers`,
:meth:`build_data`, :meth:`train_batches` (the batches of one epoch), :meth:`train_step`,
:meth:`validation_step` (per-epoch pseudo Dice), :meth:`on_epoch_end` and :meth:`predict_case`
(final validation). The loop is resumable: everything random in an epoch is drawn from generators seeded
by ``(seed, epoch)``, and model, optimizer, scheduler and torch RNG state are saved after every epoch, so
a run killed at any point and continued ends with the same weights and metrics as one never interrupted.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from sampref_bench import __version__, paths
from sampref_bench.planners.pipeline import data_folder, load_splits
from sampref_bench.planners.plans import fraction_key
from sampref_bench.trainers.data import CaseRoles, PreprocessedData, case_roles
from sampref_bench.trainers.run_folder import load_checkpoint, plot_progress, run_folder, save_checkpoint, write_log
from sampref_bench.utilities.atomic import load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda`` (a clear error when CUDA is asked for but absent)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SamprefError("--device cuda was given but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise SamprefError(f"--device must be cpu or cuda, got {name!r}")
    return torch.device(name)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The numpy generator of one epoch's randomness (sample order, jitter): a pure function of its inputs."""
    return np.random.default_rng([seed, epoch, stream])


class BaseTrainer:
    """Common machinery of every trainer; see the module docstring for the hooks."""

    abstract: ClassVar[bool] = True
    #: "supervised" (labeled cases only) or "dpo" (labeled + rated cases), see ``case_roles``.
    budget: ClassVar[str] = "supervised"
    #: Defaults of every hyperparameter; ``config.json`` records the merged values.
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 15,
        "seed": 12345,
        "batch_size": None,          # None: the plan's batch size
        "iterations_per_epoch": None,  # None: one pass over the training samples
    }

    def __init__(self, dataset: str | int, fold: int, fraction: float = 1.0, configuration: str = "2d",
                 device: str = "cpu", overrides: dict[str, Any] | None = None, progress: bool = True) -> None:
        self.device = resolve_device(device)
        self.progress = progress
        self.dataset_name = paths.resolve_dataset(dataset, paths.preprocessed_root(), paths.raw_root())
        self.preprocessed_dir = paths.preprocessed_root() / self.dataset_name
        plans_path = self.preprocessed_dir / "plans.json"
        if not plans_path.is_file():
            raise SamprefError(f"{plans_path} is missing: run `sampref_plan -d {self.dataset_name}` first")
        self.plans = load_json(plans_path)
        if configuration != self.plans["configuration"]:
            raise SamprefError(f"configuration {configuration!r} is not in the plan (it has "
                               f"{self.plans['configuration']!r})")
        self.configuration = configuration
        self.splits = load_splits(self.preprocessed_dir)
        self.fold = int(fold)
        self.fraction = float(fraction)
        self.roles: CaseRoles = case_roles(self.splits, self.fold, self.fraction, self.budget)
        unknown = sorted(set(overrides or {}) - set(self.defaults))
        if unknown:
            raise SamprefError(f"unknown option(s) {unknown} for {type(self).__name__}; known: {sorted(self.defaults)}")
        self.config: dict[str, Any] = {**self.defaults, **(overrides or {})}
        if self.config["batch_size"] is None:
            self.config["batch_size"] = int(self.plans["batch_size"])
        self.output_dir = run_folder(self.dataset_name, type(self).__name__, self.plans["plans_name"],
                                     self.run_configuration_name(), fraction_key(self.fraction), self.fold)
        self.data = PreprocessedData(data_folder(self.preprocessed_dir, self.plans), self.plans)
        self.labels = [v for v in sorted(self.plans["labels"].values()) if v != 0]
        self.epoch = 0
        self.log: list[dict[str, Any]] = []
        self.network: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    # ----------------------------------------------------------------- hooks
    def run_configuration_name(self) -> str:
        """The ``{configuration}`` part of the run folder name (subclasses add model choices)."""
        return self.configuration

    def initialize(self) -> None:
        """Seed everything, build the network, optimizers and data."""
        seed = int(self.config["seed"])
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.network = self.build_network().to(self.device)
        self.optimizer, self.scheduler = self.configure_optimizers()
        self.build_data()

    def build_network(self) -> torch.nn.Module:
        """The model to train."""
        raise NotImplementedError

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        """Optimizer and learning-rate scheduler (stepped once per epoch)."""
        raise NotImplementedError

    def build_data(self) -> None:
        """Prepare whatever :meth:`train_batches` and :meth:`validation_step` read (caches, sample lists)."""

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The batches of ``epoch``; all randomness from :func:`epoch_generator`."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimisation step; returns at least ``{"loss": value}``."""
        raise NotImplementedError

    def validation_step(self) -> dict[str, float]:
        """Per-epoch validation; returns at least ``{"val_dice": value}``."""
        raise NotImplementedError

    def set_train_mode(self) -> None:
        """Put the network in training mode before an epoch (subclasses keep frozen parts in eval mode)."""
        assert self.network is not None
        self.network.train()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """Called with the epoch's log row after it is written (default: nothing)."""

    def trainable_state(self) -> dict[str, Any]:
        """What a checkpoint stores of the network (default: the whole state dict)."""
        assert self.network is not None
        return self.network.state_dict()

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`trainable_state`."""
        assert self.network is not None
        self.network.load_state_dict(state)

    def predict_case(self, case: str) -> np.ndarray:
        """Final validation: the case's label map in its original geometry (numpy order)."""
        raise NotImplementedError

    # ----------------------------------------------------------- machinery
    def config_record(self) -> dict[str, Any]:
        """Everything that defines the run, for ``config.json``."""
        import monai

        return {
            "trainer": type(self).__name__, "dataset": self.dataset_name, "fold": self.fold,
            "fraction": self.fraction, "configuration": self.run_configuration_name(),
            "plans": self.plans["plans_name"], "plans_hash": self.plans.get("inputs_hash"),
            "budget": self.budget, "device": str(self.device), "hyperparameters": self.config,
            "cases": {"labeled": len(self.roles.labeled), "rated": len(self.roles.rated),
                      "unlabeled": len(self.roles.unlabeled), "val": len(self.roles.val)},
            "versions": {"sampref": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "monai": monai.__version__, "python": platform.python_version()},
        }

    def checkpoint_state(self) -> dict[str, Any]:
        """The full resumable state after ``self.epoch`` finished epochs."""
        assert self.optimizer is not None
        return {
            "trainer": type(self).__name__, "epoch": self.epoch, "network": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "torch_rng": torch.get_rng_state(), "log": self.log, "config": self.config,
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint's state into the initialized trainer."""
        if state.get("trainer") != type(self).__name__:
            raise SamprefError(f"{path} was written by trainer {state.get('trainer')!r}, not {type(self).__name__}")
        try:
            self.load_trainable_state(state["network"])
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise SamprefError(f"{path} does not match this run's model ({str(err).splitlines()[0][:200]}); "
                               "delete the run folder or start without --continue") from err
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.log = list(state["log"])

    def run_training(self, continue_training: bool = False) -> Path:
        """Train (or continue), then run the final validation; returns the run folder."""
        latest = self.output_dir / "checkpoint_latest.pth"
        final = self.output_dir / "checkpoint_final.pth"
        if not continue_training and (latest.exists() or final.exists()):
            raise SamprefError(f"{self.output_dir} already holds a run. Pass --continue to resume it, or delete the "
                               "folder to start over.")
        if continue_training and not (latest.exists() or final.exists()):
            raise SamprefError(f"--continue: {self.output_dir} holds no checkpoint to continue from. Start the run "
                               "without --continue.")
        self.initialize()
        if continue_training:
            path = final if final.exists() else latest
            self.restore(load_checkpoint(path), path)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "config.json", self.config_record())
        epochs = int(self.config["epochs"])
        while self.epoch < epochs:
            self._run_epoch()
            save_checkpoint(latest, self.checkpoint_state())
        save_checkpoint(final, self.checkpoint_state())
        self.perform_final_validation()
        return self.output_dir

    def _run_epoch(self) -> None:
        assert self.network is not None
        start = time.perf_counter()
        self.set_train_mode()
        losses = []
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer else float("nan")
        desc = f"epoch {self.epoch + 1}/{self.config['epochs']}"
        for batch in tqdm(list(self.train_batches(self.epoch)), desc=desc, unit="batch", leave=False,
                          disable=not self.progress):
            losses.append(self.train_step(batch)["loss"])
        if self.scheduler is not None:
            self.scheduler.step()
        self.network.eval()
        with torch.no_grad():
            val = self.validation_step()
        self.epoch += 1
        row = {"epoch": self.epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"), **val,
               "lr": lr, "seconds": round(time.perf_counter() - start, 2)}
        self.log.append(row)
        write_log(self.output_dir / "training_log.csv", self.log)
        plot_progress(self.output_dir / "progress.png", self.log,
                      f"{type(self).__name__} {self.dataset_name} fold {self.fold} f={fraction_key(self.fraction)}")
        if self.progress:
            print(f"{desc}: loss {row['train_loss']:.4f}, val pseudo Dice {row.get('val_dice', float('nan')):.4f}, "
                  f"{row['seconds']:.1f} s", flush=True)
        self.on_epoch_end(row)

    def perform_final_validation(self) -> dict[str, Any]:
        """Predict every validation case in original geometry, write it and ``validation/summary.json``."""
        from sampref_bench.trainers.validation import validate_cases

        assert self.network is not None
        self.network.eval()
        with torch.no_grad():
            return validate_cases(self, self.output_dir / "validation")

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as ``name`` in the run folder, atomically."""
        write_json_atomic(self.output_dir / name, obj)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset_name}, fold={self.fold}, fraction={self.fraction})"


def dump_config(trainer: BaseTrainer) -> str:
    """The run's configuration as pretty JSON (for ``--dry-run`` style printing)."""
    return json.dumps(trainer.config_record(), indent=2)
