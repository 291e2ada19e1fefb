"""What a checkpoint holds and how it is checked and restored: the resumable state of a run after an epoch.

:class:`CheckpointState` is the half of :class:`~sampref_bench.trainers.base.BaseTrainer` that turns a trainer into
a checkpoint dict (networks by name except the rebuilt ones, optimizers, schedulers, torch's CPU and CUDA random
states, the log, the configuration and the plan snapshot) and back, refusing a checkpoint of another trainer,
other hyperparameters or another plan with the keys and both values named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sampref_bench.trainers.plan_snapshot import PLAN_INPUT_KEYS, PLAN_SNAPSHOT_KEYS, plan_differences, plan_snapshot
from sampref_bench.trainers.run_identity import config_differences
from sampref_bench.utilities.errors import SamprefError


class CheckpointState:
    """Checkpoint writing, checking and restoring (a base of :class:`~sampref_bench.trainers.base.BaseTrainer`)."""

    config: dict[str, Any]
    plans: dict[str, Any]
    networks: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    log: list[dict[str, Any]]
    epoch: int
    run_tag: str
    preprocessed_dir: Path

    def checkpoint_state(self) -> dict[str, Any]:
        """The full resumable state after ``self.epoch`` finished epochs."""
        skip = self.rebuilt_networks()
        return {
            "trainer": type(self).__name__, "epoch": self.epoch, "run_tag": self.run_tag,
            "networks": {name: self.network_state(name, net) for name, net in self.networks.items()
                         if name not in skip},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items() if s is not None},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "log": self.log, "config": self.config, "plan_snapshot": plan_snapshot(self.plans),
        }

    def saved_config_differences(self, saved: dict[str, Any]) -> list[str]:
        """``key: saved -> now`` for each hyperparameter in which a saved config (a checkpoint's ``config``,
        ``config.json``'s ``hyperparameters``, read with :meth:`recorded_config`) differs from this run's."""
        return config_differences(self.recorded_config(saved), self.config, self.reference_config())

    def check_checkpoint(self, state: dict[str, Any], path: Path, for_training: bool = True) -> None:
        """Refuse a checkpoint of another trainer, other hyperparameters, or a plan that changed what the run
        depends on (:data:`PLAN_INPUT_KEYS`; with ``for_training`` also :data:`PLAN_TRAINING_KEYS`), naming the
        keys and both values. A checkpoint written before plan snapshots existed is accepted with a warning."""
        if state.get("trainer") != type(self).__name__:
            raise SamprefError(f"{path} was written by trainer {state.get('trainer')!r}, not {type(self).__name__}")
        what = "--continue" if for_training else "loading a finished run"
        differences = self.saved_config_differences(state.get("config", {}))
        if differences:
            advice = "Continue with the saved settings" if for_training else "Load it with its saved settings"
            raise SamprefError(f"{what}: {path} was trained with other hyperparameters ({'; '.join(differences)}"
                               f"). {advice}, or start a new run (another --run-name).")
        saved = state.get("plan_snapshot")
        if saved is None:
            import warnings

            warnings.warn(f"{path} predates plan snapshots: whether the plan it was trained under matches "
                          f"{self.preprocessed_dir / 'plans.json'} (image size, normalization, slicing, transform) "
                          "is not checked", stacklevel=2)
            return
        keys = PLAN_SNAPSHOT_KEYS if for_training else PLAN_INPUT_KEYS
        changed = plan_differences(saved, self.plans, keys)
        if for_training and saved.get("plans_format") != self.plans.get("plans_format"):
            raise SamprefError(
                f"--continue: {path} was trained under plan format {saved.get('plans_format') or '4 or older'}, and "
                f"{self.preprocessed_dir / 'plans.json'} is format {self.plans.get('plans_format')} (planned "
                f"configurations {', '.join(self.plans.get('configurations', {}))}, each with its own schedule and "
                "augmentation). A run is never continued under another plan format: train it again under the new "
                "plan (delete the run folder, or pass another --run-name).")
        if changed:
            raise SamprefError(
                f"{what}: {path} was trained under another plan than {self.preprocessed_dir / 'plans.json'}: "
                f"{'; '.join(changed)} (trained -> current plan). Replan with the run's settings, or train a new "
                "run under the current plan (delete the run folder or pass another --run-name).")

    def load_networks(self, state: dict[str, Any]) -> None:
        """Load the checkpoint's stored networks (every network but :meth:`rebuilt_networks`) into :attr:`networks`;
        a ``KeyError`` or ``RuntimeError`` when they do not match."""
        expected = set(self.networks) - self.rebuilt_networks()
        if set(state["networks"]) != expected:
            raise KeyError(f"networks {sorted(state['networks'])} != {sorted(expected)}")
        for name in sorted(expected):
            self.load_network_state(name, self.networks[name], state["networks"][name])

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint's state into the initialized trainer (same trainer, hyperparameters and plan only)."""
        self.check_checkpoint(state, path, for_training=True)
        try:
            self.load_networks(state)
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            for name, scheduler in self.schedulers.items():
                if scheduler is not None:
                    scheduler.load_state_dict(state["schedulers"][name])
        except (RuntimeError, ValueError, KeyError) as err:
            raise SamprefError(f"{path} does not match this run's model ({str(err).splitlines()[0][:200]}); "
                               "delete the run folder or start without --continue") from err
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = int(state["epoch"])
        self.log = list(state["log"])
