"""Two-stage SAM trainers: a finished ``SAMBaseline`` run (stage 1), then a second stage on its mask decoder.

Stage 1 is ``SAMBaseline`` on the same fold, trained with this trainer's stage-1 hyperparameters (every
``SAMBaseline`` key; ``stage1_epochs`` / ``stage1_iterations_per_epoch`` override the plan's stage-1 length).
Its run folder is the one ``sampref_train DATASET SAMBaseline FOLD --fraction F1`` would use, so an existing
finished run is reused; its identity is checked (same plan, same model, same hyperparameters). A missing
stage 1 is trained first and kept as its own run; an interrupted one is continued. ``stage1_run`` names another
finished stage-1 run folder explicitly; it must come from the same plan, model, fold and labeled cases. "The same
plan" means the plan keys stage 1 depends on (its ``plan_snapshot``): a replan with other fractions or thresholds
keeps a stage-1 run usable.

Stage 2 trains the mask decoder only (prompt encoder, text projection and image encoder stay as stage 1 left
them), at ``dpo_lr``, for the plan's ``dpo_epochs`` x ``dpo_iterations_per_epoch`` batches of
``batch_size``. The frozen stage-1 model is held as ``networks["reference"]``; it is rebuilt from the stage-1
checkpoint rather than stored, so ``--continue`` in stage 2 ends with the same weights.

Model selection (``selection``): ``"last"`` keeps the last epoch. ``"inner"`` holds out a seeded
``inner_val_share`` of the labeled cases from stage 2's supervised batches, scores the pooled Dice on them after
every epoch (epoch 0 is the stage-1 model itself) and keeps the best epoch's mask decoder as the final model
(``selection.json`` says which). The fold's validation cases are never used. Stage 1 did train on those held-out
cases, so the inner Dice flatters the stage-1 model: a selection that keeps epoch 0 is conservative by design.

:class:`SAMBaselineContinued` is the control of the DPO benchmark: the same stage 2 with the supervised
stage-1 loss on the labeled cases alone (no ratings), which separates what preferences add from what more
optimisation steps add.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.planners.data import Sample
from sampref_bench.planners.plans import fraction_key
from sampref_bench.trainers.base import PLANNED
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.plan_snapshot import PLAN_INPUT_KEYS, plan_differences
from sampref_bench.trainers.randomness import epoch_generator, seeded_passes
from sampref_bench.trainers.run_folder import load_checkpoint
from sampref_bench.trainers.run_identity import config_differences
from sampref_bench.trainers.sam.prompted import SAMBaseline
from sampref_bench.utilities.atomic import load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError

#: How the stage-2 weights that are kept are chosen: the last epoch, or the best inner-split Dice.
SELECTIONS = ("last", "inner")
#: Keys of a stage-1 run's hyperparameters that must agree with this trainer's for the weights to fit (``box_source``:
#: a learned stage 1 has the coarse-mask head, and stage 2 prompts as stage 1 did).
STAGE1_MODEL_KEYS = ("model", "model_checkpoint", "model_arch", "freeze_image_encoder", "text_encoder", "box_source")
#: Plan keys a stage-1 run must share with this run: its inputs and which of its slices trained (its length is a
#: hyperparameter, compared with the others).
STAGE1_PLAN_KEYS = (*PLAN_INPUT_KEYS, "background_slice_share")


class TwoStageSAMTrainer(SAMBaseline):
    """Stage 1 = a ``SAMBaseline`` run (reused or trained), stage 2 = the mask decoder; subclasses give the loss."""

    abstract: ClassVar[bool] = True
    schedule: ClassVar[str] = "dpo_"
    named_in_configuration: ClassVar[tuple[str, ...]] = (*SAMBaseline.named_in_configuration, "stage1_run")
    defaults: ClassVar[dict[str, Any]] = {
        **SAMBaseline.defaults,
        "stage1_epochs": None, "stage1_iterations_per_epoch": None, "stage1_run": None,
        "dpo_lr": 1e-4, "selection": "last", "inner_val_share": 0.2,
    }
    options: ClassVar[dict[str, Option]] = {
        "stage1_epochs": Option("int", low=1, none="the plan's epochs", help="epochs of the stage-1 run"),
        "stage1_iterations_per_epoch": Option("int", low=1, none="the plan's iterations_per_epoch",
                                              help="batches per epoch of the stage-1 run"),
        "stage1_run": Option("path", none="this fold's SAMBaseline run at the labeled fraction, trained if missing",
                             help="fold folder of a finished stage-1 run to start from"),
        "dpo_lr": Option("float", low=0, low_open=True, help="learning rate of stage 2"),
        "selection": Option("str", choices=SELECTIONS,
                            help="stage-2 checkpoint: the last epoch, or the best on an inner split"),
        "inner_val_share": Option("float", low=0, high=1, low_open=True, high_open=True,
                                  help="share of the labeled cases held out for selection=inner"),
    }

    # ------------------------------------------------------------ stage 1
    def stage1_fraction(self) -> float:
        """The annotation fraction of the stage-1 run (default: this run's labeled fraction)."""
        return self.fraction

    def stage1_overrides(self) -> dict[str, Any]:
        """Hyperparameters of the stage-1 ``SAMBaseline`` run: this run's ``SAMBaseline`` keys, planned length."""
        out = {k: self.config[k] for k in SAMBaseline.defaults if k not in PLANNED}
        out["batch_size"] = self.config["batch_size"]
        if self.config["stage1_epochs"] is not None:
            out["epochs"] = int(self.config["stage1_epochs"])
        if self.config["stage1_iterations_per_epoch"] is not None:
            out["iterations_per_epoch"] = int(self.config["stage1_iterations_per_epoch"])
        return out

    def stage1_trainer(self) -> SAMBaseline:
        """The stage-1 trainer this run expects (not initialized)."""
        return SAMBaseline(self.dataset_name, self.fold, self.stage1_fraction(), configuration=self.configuration,
                           device=str(self.device), overrides=self.stage1_overrides(), progress=self.progress)

    def ensure_stage1(self) -> Path:
        """The folder of a finished, identity-checked stage-1 run; trains or continues it when needed."""
        if self.config["stage1_run"]:
            folder = Path(str(self.config["stage1_run"])).expanduser()
            self._check_stage1(folder, explicit=True)
            return folder
        stage1 = self.stage1_trainer()
        folder = stage1.output_dir
        if (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file():
            self._check_stage1(folder, explicit=False)
            return folder
        if self.progress:
            print(f"{type(self).__name__}: stage 1 ({folder}) is not finished; training it first", flush=True)
        stage1.run_training(continue_training=(folder / "checkpoint_latest.pth").is_file()
                            or (folder / "checkpoint_final.pth").is_file())
        return folder

    def _check_stage1(self, folder: Path, explicit: bool) -> None:
        """Refuse a stage-1 run from another plan, model, fold or labeled set, naming both sides."""
        record_path = folder / "config.json"
        final = folder / "checkpoint_final.pth"
        if not record_path.is_file() or not final.is_file():
            raise SamprefError(f"stage-1 run {folder} is not a finished sampref run (config.json and "
                               "checkpoint_final.pth are needed); finish it or drop stage1_run")
        record = load_json(record_path)
        expected = self.stage1_trainer()
        problems = []
        if record.get("trainer") != "SAMBaseline":
            problems.append(f"trainer {record.get('trainer')} (expected SAMBaseline)")
        if record.get("dataset") != self.dataset_name or int(record.get("fold", -1)) != self.fold:
            problems.append(f"dataset {record.get('dataset')} fold {record.get('fold')} (this run: "
                            f"{self.dataset_name} fold {self.fold})")
        if record.get("plans") != self.plans["plans_name"]:
            problems.append(f"plan {record.get('plans')} (this run: {self.plans['plans_name']})")
        elif record.get("plan_snapshot") is not None:  # what stage 1 saw; a replan of fractions changes nothing
            problems += [f"plan key {d}" for d in plan_differences(record["plan_snapshot"], self.plans,
                                                                    STAGE1_PLAN_KEYS)]
        elif record.get("plans_hash") != self.plans.get("inputs_hash"):  # a run from before plan snapshots
            problems.append(f"plan {record.get('plans')} {record.get('plans_hash')} (this run: "
                            f"{self.plans['plans_name']} {self.plans.get('inputs_hash')})")
        if fraction_key(float(record.get("fraction", -1))) != fraction_key(self.stage1_fraction()):
            problems.append(f"fraction {record.get('fraction')} (stage 1 must be trained on the "
                            f"{fraction_key(self.stage1_fraction())} labeled cases)")
        saved = SAMBaseline.recorded_config(record.get("hyperparameters", {}))
        if explicit:
            model_diff = [d for d in config_differences({k: saved.get(k) for k in STAGE1_MODEL_KEYS},
                                                        {k: expected.config.get(k) for k in STAGE1_MODEL_KEYS})]
            problems += [f"model setting {d}" for d in model_diff]
        else:
            problems += [f"hyperparameter {d}" for d in config_differences(saved, expected.config,
                                                                           expected.reference_config())]
        if problems:
            raise SamprefError(f"{type(self).__name__} cannot start from stage-1 run {folder}: it differs from what "
                               f"this run needs in {'; '.join(problems)}. Retrain stage 1 (delete that folder) or "
                               "name a matching run with --set stage1_run=PATH.")
        self.stage1_record = record

    def canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        """Checks ``selection``."""
        config = super().canonicalize(config)
        if config["selection"] not in SELECTIONS:
            raise SamprefError(f"selection={config['selection']!r} is unknown; choose one of {', '.join(SELECTIONS)}")
        return config

    def initialize(self) -> None:
        """Stage 1 first (reused, continued or trained), then the usual initialization of stage 2; with
        ``selection=inner`` the stage-1 model (epoch 0) is the first candidate for selection."""
        self.stage1_dir = self.ensure_stage1()
        super().initialize()
        self.selected: dict[str, Any] | None = None
        if self.config["selection"] == "inner":
            self.network.eval()
            self._offer_selection(0, self.pooled_dice(self.inner_samples, self.train_labels))

    # ------------------------------------------------------------ inner-split selection
    def build_data(self) -> None:
        """With ``selection=inner``, a seeded ``inner_val_share`` of the labeled cases leaves the training
        samples and becomes the inner validation split (never the fold's validation cases)."""
        super().build_data()
        self.inner_samples: list[Sample] = []
        if self.config["selection"] != "inner":
            return
        rng = np.random.default_rng([int(self.config["seed"]), 7])
        share = float(self.config["inner_val_share"])
        cases = sorted({s.case for s in self.train_samples})
        if len(cases) >= 2:
            n_inner = min(len(cases) - 1, max(1, round(share * len(cases))))
            inner = set(rng.choice(cases, size=n_inner, replace=False).tolist())
            self.inner_samples = [s for s in self.train_samples if s.case in inner]
            self.train_samples = [s for s in self.train_samples if s.case not in inner]
            return
        if len(self.train_samples) < 2:
            raise SamprefError(f"selection=inner needs at least 2 labeled samples to split, {self} has "
                               f"{len(self.train_samples)}; use selection=last")
        # one labeled volume: its slices are split instead (correlated, hence only a fallback)
        warnings.warn(f"{self}: one labeled case only, so the inner split holds out some of its slices", stacklevel=2)
        n_inner = min(len(self.train_samples) - 1, max(1, round(share * len(self.train_samples))))
        picked = set(rng.choice(len(self.train_samples), size=n_inner, replace=False).tolist())
        self.inner_samples = [s for i, s in enumerate(self.train_samples) if i in picked]
        self.train_samples = [s for i, s in enumerate(self.train_samples) if i not in picked]

    def _offer_selection(self, epoch: int, dice: float) -> None:
        """Keep the mask decoder of ``epoch`` when its inner Dice beats the best so far (ties keep the earlier)."""
        if self.selected is None or (np.isfinite(dice) and not dice <= self.selected["dice"]):
            state = {k: v.detach().clone() for k, v in self.network.mask_decoder.state_dict().items()}
            self.selected = {"epoch": epoch, "dice": float(dice), "state": state}

    def validation_step(self) -> dict[str, float]:
        """Pseudo Dice, plus ``inner_dice`` on the inner split when ``selection=inner``."""
        row = super().validation_step()
        if self.config["selection"] == "inner":
            row["inner_dice"] = self.pooled_dice(self.inner_samples, self.train_labels)
        return row

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """Selection bookkeeping; after the last epoch the selected mask decoder is loaded (and so saved as final)."""
        super().on_epoch_end(row)
        if self.config["selection"] != "inner":
            return
        self._offer_selection(self.epoch, float(row["inner_dice"]))
        if self.epoch == int(self.config["epochs"]):
            assert self.selected is not None
            self.network.mask_decoder.load_state_dict(self.selected["state"])
            write_json_atomic(self.output_dir / "selection.json", {
                "selection": "inner", "selected_epoch": self.selected["epoch"], "inner_dice": self.selected["dice"],
                "inner_samples": [[s.case, s.slice, s.label] for s in self.inner_samples]})
            if self.progress:
                print(f"selection: epoch {self.selected['epoch']} (inner Dice {self.selected['dice']:.4f})", flush=True)

    def checkpoint_state(self) -> dict[str, Any]:
        """Adds the selected epoch's mask decoder."""
        state = super().checkpoint_state()
        if getattr(self, "selected", None) is not None:
            state["selection"] = self.selected
        return state

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Also restores the selected epoch's mask decoder."""
        super().restore(state, path)
        if "selection" in state:
            self.selected = state["selection"]

    # ------------------------------------------------------------ networks
    def build_networks(self) -> dict[str, torch.nn.Module]:
        """The policy (``network``, mask decoder trainable) and the frozen ``reference``, both from stage 1."""
        state = load_checkpoint(self.stage1_dir / "checkpoint_final.pth")["networks"]["network"]
        networks = {}
        for name in ("network", "reference"):
            model = self.build_network()
            try:
                self.load_network_state(name, model, state)
            except RuntimeError as err:
                raise SamprefError(f"{self.stage1_dir}/checkpoint_final.pth does not fit {type(self).__name__}'s "
                                   f"model ({err})") from err
            for param_name, param in model.named_parameters():
                param.requires_grad_(name == "network" and param_name.startswith("mask_decoder."))
            networks[name] = model
        return networks

    def build_inference_networks(self) -> dict[str, torch.nn.Module]:
        """A finished run needs only its policy: built from the configuration, its weights (stage 2's, which hold
        stage 1's frozen parts unchanged) come from the run's own checkpoint. The stage-1 run is never read, so a
        finished run predicts after its stage-1 folder is gone."""
        return {"network": self.build_network()}

    def rebuilt_networks(self) -> set[str]:
        """The reference is rebuilt from the stage-1 checkpoint, never stored."""
        return {"reference"}

    def set_train_mode(self) -> None:
        """Only the policy's mask decoder trains; everything else stays in eval mode."""
        for network in self.networks.values():
            network.eval()
        self.network.mask_decoder.train()

    def configure_optimizers(self) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """Adam over the policy's mask decoder at a constant ``dpo_lr``."""
        params = [p for p in self.network.mask_decoder.parameters() if p.requires_grad]
        return {"network": torch.optim.Adam(params, lr=float(self.config["dpo_lr"]))}, {}

    def config_record(self) -> dict[str, Any]:
        """Adds the stage-1 run folder that served as initialization and reference."""
        return {**super().config_record(), "stage1_run": str(self.stage1_dir)}

    # ------------------------------------------------------------ helpers
    def labeled_batches(self, epoch: int, size: int, stream: int) -> list[list[Sample]]:
        """``iterations_per_epoch`` seeded batches of ``size`` labeled samples (passes over them)."""
        rng = epoch_generator(int(self.config["seed"]), epoch, stream)
        batches = seeded_passes(rng, len(self.train_samples), int(self.config["iterations_per_epoch"]), size)
        return [[self.train_samples[i] for i in batch] for batch in batches]

    def supervised_loss(self, samples: list[Sample], rng: np.random.Generator) -> torch.Tensor:
        """The stage-1 loss (focal + Dice) of labeled ``samples``."""
        targets = self.targets(samples)
        return self.loss_fn(self.decode_logits(samples, self.train_prompts(samples, targets, rng)), targets)


class SAMBaselineContinued(TwoStageSAMTrainer):
    """Control: stage 1, then as many stage-2 steps as a DPO trainer, on the labeled cases' supervised loss alone.

    Run it at the DPO trainers' labeled fraction (``--fraction 0.1``): it sees exactly their pixel labels and
    none of their ratings, so ``DPORanking@0.2`` minus ``SAMBaselineContinued@0.1`` is what the preferences add.
    """

    def train_batches(self, epoch: int) -> list[tuple[int, list[Sample]]]:
        """``(index, labeled samples)`` batches of ``batch_size``."""
        return list(enumerate(self.labeled_batches(epoch, int(self.config["batch_size"]), stream=0)))

    def train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """One Adam step of the mask decoder on the supervised loss."""
        index, samples = batch
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        loss = self.supervised_loss(samples, rng)
        optimizer = self.optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}
