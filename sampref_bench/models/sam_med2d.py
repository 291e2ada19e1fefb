"""SAM-Med2D's encoder adapter, re-implemented from its description.

SAM-Med2D (Cheng et al., 2023) freezes SAM's ViT-B and adds one learnable adapter per transformer
block, running in parallel with the block's MLP on the same normalized input::

    x = x + attn(norm1(x))                               # unchanged SAM attention branch
    h = norm2(x)
    x = x + mlp(h) + adapter(h)                          # adapter added next to the MLP

The adapter re-weights channels (squeeze-and-excitation: global average pool, bottleneck MLP with
ratio 1/4, sigmoid), refines the result spatially with a stride-2 3x3 conv followed by a stride-2
4x4 transposed conv (both ReLU), adds it to its input, and layer-normalizes the sum.

State-dict keys (one adapter per block ``i``; shapes for ViT-B, C = 768)::

    image_encoder.blocks.{i}.Adapter.norm.weight / .bias       (C,)
    image_encoder.blocks.{i}.Adapter.channel.0.weight          (C/4, C)      Linear, no bias
    image_encoder.blocks.{i}.Adapter.channel.2.weight          (C, C/4)      Linear, no bias
    image_encoder.blocks.{i}.Adapter.spatial.0.weight          (C, C, 3, 3)  Conv2d, no bias
    image_encoder.blocks.{i}.Adapter.spatial.2.weight          (C, C, 4, 4)  ConvTranspose2d, no bias

This is the layout of the public ``sam-med2d_b.pth`` release as documented by several
re-implementations; it has not been checked against the real file here (no network). If a real
checkpoint reports missing/unexpected ``Adapter`` keys, a key map is needed in
:func:`sampref_bench.models.checkpoints.fit_state_dict`.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn


class ChannelSpatialAdapter(nn.Module):
    """Channel re-weighting then a strided spatial refinement, with a residual and a LayerNorm.

    Input and output: token maps of shape (B, H, W, C) (channels last, as inside SAM's ViT).
    H and W must be even for the stride-2 down/up pair to return the input size (16x16 at 256 px).
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        gate = self.channel(tokens.mean(dim=(1, 2)))  # (B, C), one weight per channel
        gated = tokens * gate[:, None, None, :]
        refined = self.spatial(gated.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(tokens + refined)


class AdaptedBlock(Block):
    """segment_anything's ViT ``Block`` plus a parallel :class:`ChannelSpatialAdapter` (attribute ``Adapter``)."""

    def __init__(self, dim: int, **block_kwargs: object) -> None:
        super().__init__(dim, **block_kwargs)
        self.Adapter = ChannelSpatialAdapter(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) token map -> (B, H, W, C)."""
        x = x + self._attention(self.norm1(x))
        hidden = self.norm2(x)
        return x + self.mlp(hidden) + self.Adapter(hidden)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Windowed (or global, when ``window_size == 0``) self-attention on a (B, H, W, C) map."""
        if self.window_size <= 0:
            return self.attn(x)
        height, width = x.shape[1], x.shape[2]
        windows, padded = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, padded, (height, width))
