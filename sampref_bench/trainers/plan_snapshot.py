"""What a run remembers of its plan: the plan keys snapshotted into ``config.json`` and every checkpoint, and the
comparison with the current plan on ``--continue`` and before a finished run predicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sampref_bench.trainers.run_identity import config_differences

#: Plan keys a run depends on, snapshotted into ``config.json`` and the checkpoints (``plan_snapshot``) and compared
#: with the current plan on ``--continue`` and before a finished run predicts. Fractions, thresholds and the DPO
#: fractions are left out: replanning them changes no run's inputs (budgets are nested prefixes).
PLAN_INPUT_KEYS = ("configuration", "dimensionality", "labels", "slicing_axis", "normalization", "channels_to_rgb",
                   "storage_dtype", "image_size", "transform")
#: Plan keys of how a run is trained (which slices, how long): compared on ``--continue`` only, since a finished run
#: predicts the same whatever the plan now says about training. ``plans_format`` is among them: a run planned under
#: another plan format (before planned configurations: none recorded) is never continued under the new plan.
PLAN_TRAINING_KEYS = ("plans_format", "background_slice_share", "hidden_label_min_content", "batch_size", "epochs",
                      "iterations_per_epoch", "dpo_epochs", "dpo_iterations_per_epoch", "unet_epochs",
                      "unet_iterations_per_epoch")
PLAN_SNAPSHOT_KEYS = PLAN_INPUT_KEYS + PLAN_TRAINING_KEYS


def plan_snapshot(plans: dict[str, Any]) -> dict[str, Any]:
    """The :data:`PLAN_SNAPSHOT_KEYS` of ``plans`` (a key the plan lacks is ``None``)."""
    return {key: plans.get(key) for key in PLAN_SNAPSHOT_KEYS}


def plan_differences(saved: dict[str, Any], plans: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """``key: saved -> current`` for each of ``keys`` whose snapshotted value differs from the plan's, sorted."""
    current = plan_snapshot(plans)
    return config_differences({k: saved.get(k) for k in keys}, {k: current.get(k) for k in keys})
