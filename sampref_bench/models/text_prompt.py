"""Learned projection of frozen text features into SAM's sparse prompt space.

Each text kind (``"llm"``, ``"vqa"``) gets its own linear map from the text encoder's ``dim`` to SAM's
256-d prompt embedding, so the decoder can tell a generic target description from an image-specific
answer; the projected tokens are appended to SAM's box and point tokens (``SamModel.decode(extra_sparse=...)``).
"""

from __future__ import annotations

import torch
from torch import nn


class TextPromptProjection(nn.Module):
    """``forward({kind: (B, dim)})`` -> ``(B, K, out_dim)`` tokens, one per kind in ``kinds`` order."""

    def __init__(self, kinds: tuple[str, ...], dim: int, out_dim: int = 256) -> None:
        super().__init__()
        if not kinds:
            raise ValueError("TextPromptProjection needs at least one text kind")
        self.kinds = tuple(kinds)
        self.maps = nn.ModuleDict({kind: nn.Linear(dim, out_dim) for kind in self.kinds})
        for layer in self.maps.values():
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``features[kind]``: ``(B, dim)`` float text features -> ``(B, len(kinds), out_dim)``."""
        missing = [k for k in self.kinds if k not in features]
        if missing:
            raise KeyError(f"text features missing for {missing}")
        return torch.stack([self.maps[kind](features[kind]) for kind in self.kinds], dim=1)
