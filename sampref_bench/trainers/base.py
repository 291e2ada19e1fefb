"""The base trainer: folders, configuration, the epoch loop, checkpoints and resuming.

Subclasses override hooks, as in nnU-Net: :meth:`build_networks` (or :meth:`build_network` for one),
:meth:`configure_optimizers`, :meth:`build_data`, :meth:`train_batches` (the batches of one epoch),
:meth:`train_step`, :meth:`validation_step` (per-epoch pseudo Dice), :meth:`on_epoch_end` and
:meth:`predict_case` (final validation and prediction, from images alone).

Training length is planned: ``epochs``, ``iterations_per_epoch`` and ``batch_size`` (slices) come from
``plans.json`` (a second stage such as DPO reads the keys with its :attr:`BaseTrainer.schedule` prefix),
the same at every annotation fraction. A trainer may hold several networks, optimizers and schedulers
(a policy and a frozen reference, an EMA teacher, two CPS networks): all are checkpointed by name, except
networks listed by :meth:`BaseTrainer.rebuilt_networks`, which are rebuilt rather than stored.

The loop is resumable: everything random in an epoch is drawn from generators seeded by ``(seed, epoch)``,
and networks, optimizers, schedulers and the torch CPU and CUDA RNG states are saved after every epoch, so a
run killed at any point and continued ends with the same weights and metrics as one never interrupted.
``--continue`` refuses a run whose hyperparameters differ from the checkpoint's and names the keys. What a
checkpoint holds and how it is checked and restored is :class:`~sampref_bench.trainers.checkpointing.CheckpointState`;
how a finished run is built for prediction is :class:`~sampref_bench.trainers.inference.InferenceLoading`; both
are bases of :class:`BaseTrainer`, and subclasses override their methods as any other hook.

Several processes (``sampref_train --num-gpus N``, :mod:`.distributed`): a trainer that declares ``distributed =
True`` in its own class body trains on its shard of every global batch (:meth:`BaseTrainer.shard_batch`) with its
networks wrapped in DistributedDataParallel during the training steps; step metrics are averaged over ranks and
only rank 0 writes. Any other trainer refuses to run in a group of more than one process.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from sampref_bench import __version__, paths
from sampref_bench.planners.data import CaseRoles, LabelStore, PreprocessedData, case_roles, with_extra_unlabeled
from sampref_bench.planners.pipeline import data_folder, load_splits, signature_hash
from sampref_bench.planners.plans import PLANS_FORMAT, configuration_names, fraction_key
from sampref_bench.planners.raw_record import check_raw_unchanged
from sampref_bench.trainers import distributed as ddp
from sampref_bench.trainers.checkpointing import CheckpointState
from sampref_bench.trainers.distributed import resolve_device
from sampref_bench.trainers.inference import InferenceLoading
from sampref_bench.trainers.options import Option, check_options
from sampref_bench.trainers.plan_snapshot import (  # noqa: F401 (names of base.py before the split)
    PLAN_INPUT_KEYS,
    PLAN_SNAPSHOT_KEYS,
    PLAN_TRAINING_KEYS,
    plan_differences,
    plan_snapshot,
)
from sampref_bench.trainers.randomness import epoch_generator, seed_globals, seeded_passes  # noqa: F401
from sampref_bench.trainers.run_folder import load_checkpoint, plot_progress, run_folder, save_checkpoint, write_log
from sampref_bench.trainers.run_identity import run_tag, sibling_runs, validate_run_name
from sampref_bench.utilities.atomic import load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError

#: Every trainer class defined, by name (abstract ones included); :mod:`.registry` serves them.
TRAINER_CLASSES: dict[str, type] = {}

#: Hyperparameters whose default ``None`` means "the plan's value" (the plan key of the trainer's schedule prefix;
#: the batch size is shared by every stage).
PLANNED = ("epochs", "iterations_per_epoch", "batch_size")


class BaseTrainer(CheckpointState, InferenceLoading):
    """Common machinery of every trainer; see the module docstring for the hooks."""

    abstract: ClassVar[bool] = True
    #: "supervised" (labeled cases only) or "dpo" (labeled + rated cases), see ``case_roles``.
    budget: ClassVar[str] = "supervised"
    #: True for a trainer whose prompts come from the ground truth at inference too (an upper bound, not a
    #: method): only such a trainer may call :meth:`oracle_labels`, and tables mark its rows.
    oracle: ClassVar[bool] = False
    #: True for a trainer that trains on images without pixel labels or ratings (semi-supervised): it lists
    #: them in :meth:`unlabeled_cases_used`, and ``config.json`` counts them.
    uses_unlabeled: ClassVar[bool] = False
    #: Whether the trainer's network holds a SAM image encoder, so that the plan's encoder configurations
    #: (``2d_partial``, ``2d_lora``, ``2d_full``) apply to it; the U-Net trainers train under the default only.
    encoder_configurations: ClassVar[bool] = False
    #: Prefix of the planned schedule keys this trainer trains by ("" stage 1, "dpo_" a DPO stage).
    schedule: ClassVar[str] = ""
    #: Hyperparameters already spelled out in the configuration name, hence not repeated in the run tag.
    named_in_configuration: ClassVar[tuple[str, ...]] = ()
    #: True for a trainer whose ``train_step`` is correct on a shard of the batch with DDP-wrapped networks (see
    #: :meth:`supports_distributed`: declared in the class's own body, never inherited).
    distributed: ClassVar[bool] = False
    #: Defaults of every hyperparameter; ``config.json`` records the merged values. ``None`` in a key of
    #: :data:`PLANNED` means the plan's value.
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": None,
        "iterations_per_epoch": None,
        "batch_size": None,
        "seed": 12345,
    }
    #: The value a hyperparameter had in runs recorded before it existed, for each whose default is not that value
    #: (a saved config lacking the key is read with it, never as today's default; see :meth:`recorded_config`).
    unrecorded_values: ClassVar[dict[str, Any]] = {}
    #: The schema of the options this class adds or re-declares (:mod:`.options`); inherited ones keep theirs.
    options: ClassVar[dict[str, Option]] = {
        "epochs": Option("int", low=1, none="the plan's epochs of this trainer's stage", help="epochs to train"),
        "iterations_per_epoch": Option("int", low=1, none="the plan's iterations_per_epoch of this trainer's stage",
                                       help="batches per epoch"),
        "batch_size": Option("int", low=1, none="the plan's batch_size", help="slices per batch"),
        "seed": Option("int", low=0, help="seed of every random draw of the run"),
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        existing = TRAINER_CLASSES.get(cls.__name__)
        if existing is not None and existing.__module__ != cls.__module__:
            raise SamprefError(f"two trainers are named {cls.__name__} ({existing.__module__} and {cls.__module__}); "
                               "rename one")
        TRAINER_CLASSES[cls.__name__] = cls

    @classmethod
    def recorded_config(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A saved config (a checkpoint's ``config``, ``config.json``'s ``hyperparameters``) with the keys it predates
        at the values they had then (:attr:`unrecorded_values`); a key it records is kept as recorded."""
        return {**cls.unrecorded_values, **saved}

    @classmethod
    def is_abstract(cls) -> bool:
        """Abstract only when the class itself says so (``abstract = True`` in its own body), never inherited."""
        return bool(cls.__dict__.get("abstract", False))

    @classmethod
    def supports_distributed(cls) -> bool:
        """True only when the class itself declares ``distributed = True``: a subclass may change ``train_step`` (a
        loss over the whole batch, a network called other than through ``forward``), so it must vouch for itself."""
        return bool(cls.__dict__.get("distributed", False))

    @classmethod
    def check_distributed(cls, world: int) -> None:
        """A :class:`SamprefError` naming the trainer when it cannot train as ``world`` > 1 processes."""
        if world > 1 and not cls.supports_distributed():
            raise SamprefError(f"{cls.__name__} cannot train as several processes (--num-gpus {world}): its "
                               "train_step is not written for a shard of the batch. Run it as one process; a "
                               "subclass whose step is correct on a shard declares `distributed = True`.")

    def __init__(self, dataset: str | int, fold: int, fraction: float = 1.0, configuration: str = "2d",
                 device: str = "cpu", overrides: dict[str, Any] | None = None, progress: bool = True,
                 run_name: str | None = None) -> None:
        self.device = resolve_device(device)
        self.progress = progress
        self.dataset_name = paths.resolve_dataset(dataset, paths.preprocessed_root(), paths.raw_root())
        self.preprocessed_dir = paths.preprocessed_root() / self.dataset_name
        plans_path = self.preprocessed_dir / "plans.json"
        if not plans_path.is_file():
            raise SamprefError(f"{plans_path} is missing: run `sampref_plan -d {self.dataset_name}` first")
        self.plans = load_json(plans_path)
        overrides = check_options(type(self), dict(overrides or {}))
        self.configuration = self.resolve_configuration(configuration, overrides)
        self.splits = load_splits(self.preprocessed_dir)
        self.fold = int(fold)
        self.fraction = float(fraction)
        self.roles: CaseRoles = case_roles(self.splits, self.fold, self.fraction, self.budget)
        type(self).check_distributed(ddp.world_size())
        self.config: dict[str, Any] = self.resolve_config(overrides)
        reference = self.reference_config()
        changes = {k: v for k, v in self.config.items()
                   if v != reference[k] and k not in self.named_in_configuration}
        self.run_tag = validate_run_name(run_name) if run_name else run_tag(changes)
        self.output_dir = run_folder(self.dataset_name, type(self).__name__, self.plans["plans_name"],
                                     self.run_configuration_name(), fraction_key(self.fraction), self.fold)
        self.data = PreprocessedData(data_folder(self.preprocessed_dir, self.plans), self.plans)
        self.roles = with_extra_unlabeled(self.roles, self.data)
        self.labels = [v for v in sorted(self.plans["labels"].values()) if v != 0]
        self.epoch = 0
        self.log: list[dict[str, Any]] = []
        self.networks: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self._oracle_store: LabelStore | None = None
        #: DDP wrappers of :meth:`distributed_networks` by name (empty outside a group of several processes).
        self.ddp_networks: dict[str, torch.nn.Module] = {}
        #: Called with each epoch's log row on rank 0, after :meth:`on_epoch_end` (``sampref_benchmark`` prints a
        #: line per epoch through one); an observer, not a hook to change training.
        self.epoch_callbacks: list[Callable[[dict[str, Any]], None]] = []

    # ----------------------------------------------------------- configuration
    def resolve_configuration(self, name: str, overrides: dict[str, Any]) -> str:
        """The planned configuration ``name`` (``-c``), checked against the plan; subclasses map aliases.

        A :class:`SamprefError` names the planned configurations for an unknown one, asks to replan a plan that
        predates planned configurations, and refuses an encoder configuration for a trainer without a SAM image
        encoder (:attr:`encoder_configurations`)."""
        planned = configuration_names(self.plans)
        if not planned:
            raise SamprefError(f"plans.json of {self.dataset_name} predates planned configurations (plan format "
                               f"{self.plans.get('plans_format', '4 or older')}; this sampref writes {PLANS_FORMAT}): "
                               f"rerun `sampref_plan -d {self.dataset_name}`")
        if name not in planned:
            raise SamprefError(f"configuration {name!r} is not planned for {self.dataset_name}: the plan has "
                               f"{', '.join(planned)} (sampref_train -c NAME; plans.json states each one's reason)")
        default = self.plans["configuration"]
        if name != default and not self.encoder_configurations:
            raise SamprefError(f"{type(self).__name__} has no SAM image encoder, so the encoder configuration {name!r} "
                               f"does not apply to it: it trains under the default configuration {default!r}")
        return name

    def planned_configuration(self) -> dict[str, Any]:
        """This run's entry of the plan's ``configurations`` (encoder mode, schedule, augmentation, reason)."""
        return dict(self.plans["configurations"][self.configuration])

    def resolve_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults, then ``overrides``, then planned values for the ``None`` keys of :data:`PLANNED` (stage 1 reads
        them from the run's configuration, a later stage from its prefixed plan keys)."""
        config = {**self.defaults, **overrides}
        planned = self.planned_configuration() if not self.schedule else {}
        for key in PLANNED:
            if key in config and config[key] is None:
                name = key if key == "batch_size" else f"{self.schedule}{key}"
                if key in planned:
                    config[key] = int(planned[key])
                    continue
                if name not in self.plans:
                    raise SamprefError(f"plans.json of {self.dataset_name} has no {name!r} (it predates planned "
                                       f"training length): rerun `sampref_plan -d {self.dataset_name}`")
                config[key] = int(self.plans[name])
        return self.canonicalize(config)

    def reference_config(self) -> dict[str, Any]:
        """The configuration the run tag is measured against (default: the trainer's defaults, planned)."""
        return self.resolve_config({})

    def canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        """Bring equivalent spellings to one form (subclasses: model aliases); default: unchanged."""
        return config

    def base_configuration_name(self) -> str:
        """The configuration part of the run folder before the run tag (subclasses add model choices)."""
        return self.configuration

    def family_configuration_name(self) -> str:
        """The configuration whose runs this run is compared with in tables when no run of the baseline has its
        own (default: the base configuration; a DPO preset's ``2d-paper`` compares with ``2d``)."""
        return self.base_configuration_name()

    def run_configuration_name(self) -> str:
        """``{base configuration}[-{run tag}]``: the ``{configuration}`` part of the run folder name."""
        base = self.base_configuration_name()
        return f"{base}-{self.run_tag}" if self.run_tag else base

    # ----------------------------------------------------------------- hooks
    def initialize(self) -> None:
        """Check the preprocessed data against the plan, seed everything, build networks, optimizers and data."""
        self.check_preprocessing()
        check_raw_unchanged(paths.raw_root() / self.dataset_name, self.data.data_dir, self.dataset_name)
        self.seed_everything()
        self.networks = {name: net.to(self.device) for name, net in self.build_networks().items()}
        if "network" not in self.networks:
            raise RuntimeError(f"{type(self).__name__}.build_networks() must return a 'network' (it predicts)")
        self.optimizers, self.schedulers = self.configure_optimizers()
        self.build_data()
        self.prepare_distributed()

    def seed_everything(self) -> None:
        """Seed Python's, numpy's and torch's global generators with the run's ``seed``."""
        seed_globals(int(self.config["seed"]))

    @property
    def network(self) -> torch.nn.Module:
        """The network that predicts (``networks["network"]``)."""
        if "network" not in self.networks:
            raise RuntimeError(f"{self} is not initialized: call initialize() first")
        return self.networks["network"]

    def prepare_distributed(self) -> None:
        """In a group of several processes (the constructor has refused a trainer without ``distributed = True``):
        refuse a batch that does not split evenly, then wrap :meth:`distributed_networks` in DDP (which broadcasts
        rank 0's weights)."""
        world = ddp.world_size()
        self.ddp_networks = {}
        if world == 1:
            return
        ddp.check_divisible(int(self.config["batch_size"]), world, "the planned batch")
        self.ddp_networks = {name: ddp.wrap(self.networks[name], self.device)
                             for name in self.distributed_networks()}

    def distributed_networks(self) -> list[str]:
        """Networks trained by gradient in ``train_step``, wrapped in DDP in a process group (default: ``network``)."""
        return ["network"]

    def shard_batch(self, batch: Any) -> Any:
        """This rank's part of a global batch from :meth:`train_batches` (default:
        :func:`~sampref_bench.trainers.distributed.shard_batch`, contiguous rows of every batch tensor); the batch
        itself outside a group."""
        return ddp.shard_batch(batch, ddp.rank(), ddp.world_size())

    def build_networks(self) -> dict[str, torch.nn.Module]:
        """Every network of the trainer by name; ``"network"`` predicts. Default: :meth:`build_network` only."""
        return {"network": self.build_network()}

    def build_network(self) -> torch.nn.Module:
        """The model to train (single-network trainers)."""
        raise NotImplementedError

    def rebuilt_networks(self) -> set[str]:
        """Names of networks left out of checkpoints because they are rebuilt identically (a frozen reference)."""
        return set()

    def configure_optimizers(self) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """Optimizers and learning-rate schedulers by name (schedulers are stepped once per epoch)."""
        raise NotImplementedError

    def build_data(self) -> None:
        """Prepare whatever :meth:`train_batches` and :meth:`validation_step` read (caches, sample lists)."""

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The batches of ``epoch``; all randomness from :func:`epoch_generator`."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimisation step; returns at least ``{"loss": value}``; other keys are averaged into the log."""
        raise NotImplementedError

    def validation_step(self) -> dict[str, float]:
        """Per-epoch validation; returns at least ``{"val_dice": value}``."""
        raise NotImplementedError

    def set_train_mode(self) -> None:
        """Training mode for every network before an epoch (subclasses keep frozen parts in eval mode)."""
        for network in self.networks.values():
            network.train()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """Called with the epoch's log row after it is written (default: nothing)."""

    def network_state(self, name: str, network: torch.nn.Module) -> dict[str, Any]:
        """What a checkpoint stores of one network (default: its whole state dict)."""
        return network.state_dict()

    def load_network_state(self, name: str, network: torch.nn.Module, state: dict[str, Any]) -> None:
        """Inverse of :meth:`network_state`."""
        network.load_state_dict(state)

    def predict_case(self, case: str) -> np.ndarray:
        """A case's label map in its original geometry (numpy order), from its preprocessed images alone."""
        raise NotImplementedError

    def oracle_labels(self) -> LabelStore:
        """The labels an oracle trainer's prompts read at inference; any other trainer gets an error."""
        if not type(self).oracle:
            raise SamprefError(f"{type(self).__name__} is not an oracle trainer (oracle = False): its inference "
                               "reads images only")
        if self._oracle_store is None:
            self._oracle_store = self.data.label_store(self.roles.train + self.roles.val,
                                                       f"the ground-truth prompts of oracle {type(self).__name__}")
        return self._oracle_store

    def use_data(self, data: PreprocessedData) -> None:
        """Point a loaded trainer at another label-free preprocessed folder (new images to predict, preprocessed by
        the same plan); subclasses rebuild what they cache beside the data (embeddings, prompts)."""
        self.data = data

    def unlabeled_cases_used(self) -> list[str]:
        """Cases whose images this run trains on without their pixel labels or ratings (default: none; a
        semi-supervised trainer returns the fold's unlabeled training cases and any ``imagesTrUnlabeled``)."""
        return []

    def data_use(self) -> dict[str, Any]:
        """What the run spent and used, for tables: pixel-labeled cases (and their share of the fold's training
        cases), rated cases, and the unlabeled images it actually trained on."""
        n_train = len(self.roles.train)
        return {"pixel_labeled": len(self.roles.labeled),
                "pixel_label_share": round(len(self.roles.labeled) / n_train, 4) if n_train else 0.0,
                "rated": len(self.roles.rated), "unlabeled_used": len(self.unlabeled_cases_used())}

    # ----------------------------------------------------------- machinery
    def check_preprocessing(self) -> None:
        """Stop when the preprocessed folder was built by another plan than the loaded ``plans.json``."""
        marker = self.data.data_dir / "preprocessing.json"
        built = load_json(marker).get("signature_hash") if marker.is_file() else None
        expected = signature_hash(self.plans)
        if built != expected:
            raise SamprefError(f"{self.data.data_dir} was built by another plan than the {self.preprocessed_dir}/"
                               "plans.json this run loaded (preprocessing signature differs); nothing is mixed. "
                               f"Rerun `sampref_plan -d {self.dataset_name}`, then start the run again.")

    def config_record(self) -> dict[str, Any]:
        """Everything that defines the run, for ``config.json``."""
        import monai

        return {
            "trainer": type(self).__name__, "dataset": self.dataset_name, "fold": self.fold,
            "fraction": self.fraction, "configuration": self.run_configuration_name(),
            "configuration_base": self.base_configuration_name(),
            "configuration_family": self.family_configuration_name(), "run_tag": self.run_tag,
            "oracle": bool(type(self).oracle),
            "plans": self.plans["plans_name"], "plans_hash": self.plans.get("inputs_hash"),
            "plan_snapshot": plan_snapshot(self.plans),
            "budget": self.budget, "device": str(self.device), "processes": ddp.world_size(),
            "hyperparameters": self.config,
            "cases": {"labeled": len(self.roles.labeled), "rated": len(self.roles.rated),
                      "unlabeled": len(self.unlabeled_cases_used()), "val": len(self.roles.val)},
            "data_use": self.data_use(),
            "versions": {"sampref": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "monai": monai.__version__, "python": platform.python_version()},
        }

    def run_training(self, continue_training: bool = False) -> Path:
        """Train (or continue), then run the final validation; returns the run folder."""
        latest = self.output_dir / "checkpoint_latest.pth"
        final = self.output_dir / "checkpoint_final.pth"
        if not continue_training and (latest.exists() or final.exists()):
            raise SamprefError(f"{self.output_dir} already holds a run. Pass --continue to resume it, or delete the "
                               "folder to start over.")
        if continue_training and not (latest.exists() or final.exists()):
            pattern = (f"{type(self).__name__}__{self.plans['plans_name']}__{self.base_configuration_name()}*"
                       f"__f{fraction_key(self.fraction)}")
            siblings = sibling_runs(self.output_dir, pattern, self.config)
            hint = (" Runs of this trainer with other hyperparameters exist: " + ", ".join(siblings) + "."
                    if siblings else "")
            raise SamprefError(f"--continue: {self.output_dir} holds no checkpoint to continue from.{hint} Start "
                               "the run without --continue, or continue with the settings of an existing run.")
        self.initialize()
        if continue_training:
            path = final if final.exists() else latest
            self.restore(load_checkpoint(path), path)
        ddp.barrier()  # every rank has checked the folder before rank 0 writes into it
        main = ddp.is_main()  # only rank 0 writes
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.output_dir / "config.json", self.config_record())
        epochs = int(self.config["epochs"])
        while self.epoch < epochs:
            self._run_epoch()
            if main:
                save_checkpoint(latest, self.checkpoint_state())
        if main:
            save_checkpoint(final, self.checkpoint_state())
            self.perform_final_validation()
        ddp.barrier()  # no rank leaves before rank 0 has written everything
        return self.output_dir

    def _run_epoch(self) -> None:
        start = time.perf_counter()
        self.set_train_mode()
        steps: list[dict[str, float]] = []
        lrs = {name: opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}
        desc = f"epoch {self.epoch + 1}/{self.config['epochs']}"
        main = ddp.is_main()
        # streamed: a trainer may yield batches from a DataLoader instead of materialising the epoch; in a process
        # group every rank steps on its shard with the DDP wrappers, and the metrics are the ranks' mean
        with ddp.swapped(self.networks, self.ddp_networks):
            for batch in tqdm(self.train_batches(self.epoch), desc=desc, unit="batch", leave=False,
                              total=int(self.config["iterations_per_epoch"]), disable=not (self.progress and main)):
                steps.append(ddp.mean_metrics(self.train_step(self.shard_batch(batch)), self.device))
        for scheduler in self.schedulers.values():
            if scheduler is not None:
                scheduler.step()
        for network in self.networks.values():
            network.eval()
        with torch.no_grad():  # rank 0 alone: the others' rows are never written
            val = self.validation_step() if main else {}
        self.epoch += 1
        keys = dict.fromkeys(key for step in steps for key in step)  # first-seen order
        means = {key: float(np.mean([step[key] for step in steps if key in step])) for key in keys}
        row: dict[str, Any] = {"epoch": self.epoch, "train_loss": means.pop("loss", float("nan")),
                               **{f"train_{k}": v for k, v in means.items()}, **val}
        if len(lrs) == 1:
            row["lr"] = next(iter(lrs.values()))
        else:
            row.update({f"lr_{name}": value for name, value in lrs.items()})
        row["seconds"] = round(time.perf_counter() - start, 2)
        self.log.append(row)
        if main:
            write_log(self.output_dir / "training_log.csv", self.log)
            plot_progress(self.output_dir / "progress.png", self.log,
                          f"{type(self).__name__} {self.dataset_name} fold {self.fold} f={fraction_key(self.fraction)}")
            if self.progress:
                print(f"{desc}: loss {row['train_loss']:.4f}, val pseudo Dice "
                      f"{row.get('val_dice', float('nan')):.4f}, {row['seconds']:.1f} s", flush=True)
        self.on_epoch_end(row)
        if main:
            for callback in self.epoch_callbacks:
                callback(row)

    def perform_final_validation(self) -> dict[str, Any]:
        """Predict every validation case in original geometry, write it and ``validation/summary.json``."""
        from sampref_bench.trainers.validation import validate_cases

        self.check_preprocessing()
        for network in self.networks.values():
            network.eval()
        with torch.no_grad():
            return validate_cases(self, self.output_dir / "validation")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset_name}, fold={self.fold}, fraction={self.fraction})"
