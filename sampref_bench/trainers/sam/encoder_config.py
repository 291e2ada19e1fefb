"""How much of SAM's image encoder a run trains: the plan's configurations, applied to a SAM trainer.

``sampref_plan`` writes four configurations to ``plans.json``
(:func:`~sampref_bench.planners.plans.plan_configurations`), each with its encoder mode, schedule, augmentation
and reason, and ``sampref_train -c NAME`` picks one:

========== ========= ==================================================================================
name       encoder   what trains; where the image embedding comes from
========== ========= ==================================================================================
2d         frozen    prompt encoder and mask decoder; embeddings cached once per image (and view)
2d_partial partial   the encoder's last stage(s) and neck too; the activations before them cached
2d_lora    lora      LoRA updates in the encoder's attention too; the encoder runs at every step
2d_full    full      everything; the encoder runs at every step
========== ========= ==================================================================================

The run folder names the configuration (``SAMBaseline__samprefPlans__2d_lora__f0.1``). Older spellings stay
aliases: any ``-c`` name ending in ``-unfrozen`` (``2d-unfrozen``, ``2d-tiny-unfrozen``), and ``-c 2d`` with
``--set freeze_image_encoder=false``, are the full-encoder configuration ``2d_full``; its run folder is named
``2d_full``. ``freeze_image_encoder`` is derived from the configuration (true only for ``2d``): setting it to
true with another configuration is refused.

A flavour whose encoder cannot be adapted the configuration's way (LoRA needs attention layers; the partial
configuration needs an encoder made of stages) is refused with the reason when the network is built.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from sampref_bench.utilities.errors import SamprefError

#: The ``-c`` suffix of the configuration names before planned configurations (an unfrozen encoder).
UNFROZEN_SUFFIX = "-unfrozen"
#: SAM flavours whose ViT runs at the plan's 256 px with interpolated position embeddings (trained at 1024 px).
INTERPOLATED_VITS = ("vit_b", "vit_l", "vit_h", "medsam")


def planned_mode(plans: dict[str, Any], configuration: str) -> str | None:
    """The ``encoder`` mode of a planned configuration, None when the plan has no such configuration."""
    entry = plans.get("configurations", {}).get(configuration)
    return None if entry is None else str(entry["encoder"])


def configuration_of_mode(plans: dict[str, Any], mode: str) -> str:
    """The planned configuration whose encoder mode is ``mode`` (the first, in planned order)."""
    for name, entry in plans.get("configurations", {}).items():
        if entry["encoder"] == mode:
            return name
    raise SamprefError(f"the plan has no configuration with a {mode} image encoder; rerun sampref_plan")


class EncoderConfiguration:
    """Mixin of :class:`~sampref_bench.trainers.sam.trainer.SAMTrainer`: resolves ``-c`` (aliases included),
    derives ``freeze_image_encoder``, and prepares the encoder of the configuration's mode."""

    encoder_configurations: ClassVar[bool] = True
    plans: dict[str, Any]
    config: dict[str, Any]
    configuration: str

    def resolve_configuration(self, name: str, overrides: dict[str, Any]) -> str:
        """``2d``, ``2d_partial``, ``2d_lora``, ``2d_full`` (as planned), with the old unfrozen spellings as aliases
        of the full-encoder configuration."""
        requested = name
        freeze = overrides.get("freeze_image_encoder")
        if name.endswith(UNFROZEN_SUFFIX) and name.startswith(str(self.plans.get("configuration", "2d"))):
            name = configuration_of_mode(self.plans, "full")
            warnings.warn(f"configuration {requested!r} is the old spelling of {name!r} (the full-encoder "
                          f"configuration); pass -c {name}", DeprecationWarning, stacklevel=3)
        elif freeze is False and planned_mode(self.plans, name) == "frozen":
            name = configuration_of_mode(self.plans, "full")
        resolved = super().resolve_configuration(name, overrides)  # type: ignore[misc]
        if freeze is True and planned_mode(self.plans, resolved) != "frozen":
            raise SamprefError(f"freeze_image_encoder=true contradicts configuration {resolved!r}, whose image encoder "
                               f"is {planned_mode(self.plans, resolved)}: drop the setting, or pass -c "
                               f"{configuration_of_mode(self.plans, 'frozen')} for a frozen encoder")
        return resolved

    @property
    def encoder_mode(self) -> str:
        """``frozen``, ``partial``, ``lora`` or ``full``: the run's configuration's encoder mode."""
        return str(self.plans["configurations"][self.configuration]["encoder"])

    @property
    def encoder_runs(self) -> bool:
        """Whether the whole encoder runs at every step (LoRA, full), so that nothing of it is cached."""
        return self.encoder_mode in ("lora", "full")

    def canonicalize_encoder(self, config: dict[str, Any]) -> dict[str, Any]:
        """``freeze_image_encoder`` from the configuration (true only for the frozen encoder)."""
        return {**config, "freeze_image_encoder": self.encoder_mode == "frozen"}

    def warn_interpolated_vit(self) -> None:
        """A frozen or partial ViT flavour at the plan's image size gets a warning naming the better configurations."""
        if self.config["model"] in INTERPOLATED_VITS and not self.encoder_runs:
            warnings.warn(f"{self.config['model']} was trained at 1024 px and runs here at {self.plans['image_size']} "
                          "px with interpolated position embeddings: its embeddings are only sensible when its encoder "
                          f"adapts. Configuration {self.configuration!r} keeps most of it fixed; prefer -c "
                          f"{configuration_of_mode(self.plans, 'lora')} or -c "
                          f"{configuration_of_mode(self.plans, 'full')} (GPU configurations)", UserWarning,
                          stacklevel=3)

    def prepare_encoder(self, model: torch.nn.Module) -> None:
        """Set which encoder parameters train for the configuration's mode (LoRA added, partial split made)."""
        mode = self.encoder_mode
        entry = self.plans["configurations"][self.configuration]
        self.encoder_split = None
        if mode in ("frozen", "full"):
            for p in model.image_encoder.parameters():
                p.requires_grad_(mode == "full")
            return
        try:
            if mode == "partial":
                from sampref_bench.models.encoder_split import split_image_encoder

                self.encoder_split = split_image_encoder(model, int(entry["trainable_stages"]))
            else:
                from sampref_bench.models.lora import add_lora

                add_lora(model, rank=int(entry["lora_rank"]))
        except SamprefError as err:
            raise SamprefError(f"configuration {self.configuration!r} ({mode} encoder) does not apply to SAM flavour "
                               f"{self.config['model']!r}: {err}") from err

    def set_encoder_mode(self, network: torch.nn.Module) -> None:
        """After ``network.train()``: a frozen or LoRA encoder computes in eval mode (BatchNorm statistics and
        TinyViT's attention-bias copies fixed); the partial encoder's trunk stays in eval (its own ``train``)."""
        if self.encoder_mode in ("frozen", "lora"):
            network.image_encoder.eval()
        elif self.encoder_mode == "partial" and self.encoder_split is not None:
            self.encoder_split.trunk.eval()
