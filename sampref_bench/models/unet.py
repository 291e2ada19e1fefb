"""The 2D U-Net of the U-Net baselines (supervised and semi-supervised): MONAI's residual ``UNet``.

Public API::

    build_unet(architecture, seed) -> torch.nn.Module     (B, C_in, S, S) float -> (B, K + 1, S, S) logits

``architecture`` is a plan's ``unet`` entry (:func:`sampref_bench.planners.plans.plan_unet`) or a trainer's
override of it: ``in_channels``, ``out_channels``, ``channels`` (one width per level), ``strides`` (one per
downsampling, ``len(channels) - 1``) and ``num_res_units``. The input side must be divisible by the product of
the strides. An optional ``encoder_dropout`` (one rate per level, see :func:`set_encoder_dropout`) switches on
dropout in the encoder; without it the network has MONAI's default dropout 0 everywhere.
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
        network = MonaiUNet(spatial_dims=2, in_channels=int(architecture["in_channels"]),
                            out_channels=int(architecture["out_channels"]),
                            channels=tuple(int(c) for c in architecture["channels"]),
                            strides=tuple(int(s) for s in architecture["strides"]),
                            num_res_units=int(architecture["num_res_units"]))
    if architecture.get("encoder_dropout") is not None:
        set_encoder_dropout(network, [float(p) for p in architecture["encoder_dropout"]])
    return network


def encoder_dropouts(network: torch.nn.Module) -> list[torch.nn.Dropout]:
    """The first dropout layer of every encoder level of a MONAI ``UNet``, from the top (full resolution) down to
    the bottleneck: ``len(channels)`` layers.

    MONAI nests its U-Net as ``Sequential(down_i, SkipConnection(inner), up_i)`` per level, with the bottleneck
    block innermost; every convolution of it carries a ``Dropout`` (rate 0 by default) between its norm and its
    activation. A level's first one sits between its first and second convolution (with residual units).
    """
    from monai.networks.layers.simplelayers import SkipConnection

    blocks, block = [], getattr(network, "model", network)
    while isinstance(block, torch.nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        blocks.append(block[0])
        block = block[1].submodule
    blocks.append(block)
    layers = []
    for level, part in enumerate(blocks):
        found = [m for m in part.modules() if isinstance(m, torch.nn.Dropout)]
        if not found:
            raise SamprefError(f"encoder level {level} of the U-Net has no dropout layer to set")
        layers.append(found[0])
    return layers


def set_encoder_dropout(network: torch.nn.Module, rates: list[float]) -> None:
    """Set one dropout rate per encoder level (top to bottleneck) of a MONAI ``UNet``, in place; the decoder keeps
    rate 0.

    This is where SSL4MIS's 2D U-Net drops out: once per encoder level, between the level's two convolutions, at
    rates 0.05, 0.1, 0.2, 0.3, 0.5 from the top down, none in the decoder (its ``networks/unet.py``). MONAI's
    layer order is norm, dropout, activation; PReLU commutes with dropout's zeroing and positive rescaling, so a
    rate placed there equals SSL4MIS's dropout after the activation.
    """
    layers = encoder_dropouts(network)
    if len(rates) != len(layers) or any(not 0.0 <= r < 1.0 for r in rates):
        raise SamprefError(f"encoder dropout needs one rate in [0, 1) per U-Net level ({len(layers)} levels), got "
                           f"{rates}; e.g. --set 'mc_dropout=[{', '.join(['0.1'] * len(layers))}]'")
    for layer, rate in zip(layers, rates):
        layer.p = float(rate)
