"""The 2D U-Net of the U-Net baselines (supervised and semi-supervised): MONAI's residual ``UNet``.

Public API::

    build_unet(architecture, seed) -> torch.nn.Module     (B, C_in, S, S) float -> (B, K + 1, S, S) logits

``architecture`` is a plan's ``unet`` entry (:func:`sampref_bench.planners.plans.plan_unet`) or a trainer's
override of it: ``in_channels``, ``out_channels``, ``channels`` (one width per level), ``strides`` (one per
downsampling, ``len(channels) - 1``) and ``num_res_units``. The input side must be divisible by the product of
the strides.
"""

from __future__ import annotations

from typing import Any

import torch

from sampref_bench.utilities.errors import SamprefError


def check_architecture(architecture: dict[str, Any], image_size: int) -> None:
    """A :class:`SamprefError` naming the problem when ``architecture`` cannot run on ``image_size`` px slices."""
    channels = list(architecture["channels"])
    strides = list(architecture["strides"])
    if len(channels) < 2 or any(int(c) < 1 for c in channels):
        raise SamprefError(f"U-Net channels must list at least two positive widths, got {channels}; e.g. "
                           "--set 'channels=[16, 32, 64]'")
    if len(strides) != len(channels) - 1 or any(int(s) < 1 for s in strides):
        raise SamprefError(f"U-Net strides {strides} must hold one positive stride per downsampling "
                           f"(len(channels) - 1 = {len(channels) - 1}) for channels {channels}")
    total = 1
    for stride in strides:
        total *= int(stride)
    if image_size % total:
        raise SamprefError(f"U-Net strides {strides} downsample by {total}, which does not divide the planned "
                           f"image size {image_size} px; use fewer levels")
    if int(architecture["num_res_units"]) < 0:
        raise SamprefError(f"num_res_units must be >= 0, got {architecture['num_res_units']}")


def build_unet(architecture: dict[str, Any], seed: int) -> torch.nn.Module:
    """MONAI's 2D residual U-Net (instance norm, PReLU, MONAI's defaults) with weights drawn from ``seed``.

    The initialization uses its own seeded RNG (the global torch RNG is left as it was), so two networks built with
    different seeds differ (CPS) and one seed always gives the same weights.
    """
    from monai.networks.nets import UNet as MonaiUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return MonaiUNet(spatial_dims=2, in_channels=int(architecture["in_channels"]),
                         out_channels=int(architecture["out_channels"]),
                         channels=tuple(int(c) for c in architecture["channels"]),
                         strides=tuple(int(s) for s in architecture["strides"]),
                         num_res_units=int(architecture["num_res_units"]))
