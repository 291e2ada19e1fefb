"""A finished run made ready to predict: its networks and inference data built from its configuration and the plan
alone (no stage-1 run, reference policy, candidates or optimizer), then its checkpoint loaded and checked.

:class:`InferenceLoading` is the half of :class:`~sampref_bench.trainers.base.BaseTrainer` behind
:func:`~sampref_bench.trainers.registry.load_trained_run`; subclasses narrow :meth:`build_inference_networks` and
:meth:`build_inference_data` where their training data is expensive to prepare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sampref_bench.utilities.errors import SamprefError


class InferenceLoading:
    """Building and loading a finished run for prediction (a base of
    :class:`~sampref_bench.trainers.base.BaseTrainer`)."""

    networks: dict[str, torch.nn.Module]
    device: torch.device
    epoch: int
    log: list[dict[str, Any]]

    def build_inference_networks(self) -> dict[str, torch.nn.Module]:
        """The networks a finished run needs to predict, with the weights its checkpoint will overwrite (default:
        :meth:`build_networks`; a two-stage trainer builds its policy without reading its stage-1 run)."""
        return self.build_networks()

    def build_inference_data(self) -> None:
        """What :meth:`predict_case` reads besides the networks (default: :meth:`build_data`; trainers whose
        training data is expensive to prepare, such as DPO candidates, prepare less)."""
        self.build_data()

    def initialize_for_inference(self) -> None:
        """Build a finished run's networks and inference data from its configuration and the plan alone: no stage-1
        run, reference policy, candidates or optimizer is touched."""
        self.check_preprocessing()
        self.seed_everything()
        self.networks = {name: net.to(self.device) for name, net in self.build_inference_networks().items()}
        if "network" not in self.networks:
            raise RuntimeError(f"{type(self).__name__}.build_inference_networks() must return a 'network'")
        self.build_inference_data()

    def load_inference_state(self, state: dict[str, Any], path: Path) -> None:
        """Load a finished run's checkpoint into a trainer made by :meth:`initialize_for_inference`: trainer,
        hyperparameters and the plan inputs it was trained under are checked; networks then go to eval mode."""
        self.check_checkpoint(state, path, for_training=False)
        try:
            self.load_networks(state)
        except (RuntimeError, KeyError) as err:
            raise SamprefError(f"{path} does not match this run's model ({str(err).splitlines()[0][:200]})") from err
        self.epoch = int(state["epoch"])
        self.log = list(state.get("log", []))
        for network in self.networks.values():
            network.eval()
