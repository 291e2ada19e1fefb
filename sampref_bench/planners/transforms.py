"""The SAM-style geometric transform of a 2D slice and its exact inverse.

Forward: resize so that the longest side equals ``image_size`` (aspect ratio kept), then pad at the
bottom and right to ``image_size x image_size``, as SAM's ``ResizeLongestSide`` and MedSAM-Lite's
training pipeline do. Images use bilinear interpolation (anti-aliased when shrinking); label maps use
half-pixel nearest neighbour (``nearest-exact``), which makes ``inverse(forward(label)) == label``
exactly whenever the slice is enlarged or kept at its size. Resizing goes through MONAI's ``Resize`` and
``SpatialPad``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.transforms import Resize, SpatialPad


@dataclass(frozen=True)
class SliceTransform:
    """Geometry of one slice: ``original`` ``(H, W)`` -> ``resized`` ``(h, w)`` -> padded ``(S, S)``."""

    original: tuple[int, int]
    resized: tuple[int, int]
    image_size: int

    @classmethod
    def for_shape(cls, original: tuple[int, int], image_size: int) -> SliceTransform:
        """The transform that maps an ``(H, W)`` slice onto an ``image_size`` square."""
        height, width = (int(v) for v in original)
        scale = image_size / max(height, width)
        resized = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        return cls((height, width), resized, int(image_size))

    def to_dict(self) -> dict[str, list[int] | int]:
        """JSON-friendly form."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> SliceTransform:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["original"]), tuple(data["resized"]), int(data["image_size"]))

    @property
    def scale(self) -> float:
        """Output pixels per input pixel along the longest side."""
        return self.image_size / max(self.original)

    def _pad(self, tensor: torch.Tensor) -> np.ndarray:
        padded = SpatialPad((self.image_size, self.image_size), method="end")(tensor)
        return np.asarray(padded)

    def image(self, array: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` float image -> ``(C, S, S)`` float32, zero padded."""
        tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
        shrinking = self.resized[0] < self.original[0] or self.resized[1] < self.original[1]
        resized = Resize(self.resized, mode="bilinear", align_corners=False, anti_aliasing=shrinking)(tensor)
        return self._pad(resized).astype(np.float32)

    def label(self, array: np.ndarray) -> np.ndarray:
        """``(H, W)`` or ``(N, H, W)`` integer label map -> same leading shape at ``(S, S)``, uint8."""
        squeeze = array.ndim == 2
        tensor = torch.as_tensor(np.asarray(array, dtype=np.float32)[None] if squeeze else array.astype(np.float32))
        resized = Resize(self.resized, mode="nearest-exact")(tensor)
        out = self._pad(resized).astype(np.uint8)
        return out[0] if squeeze else out

    def inverse_label(self, array: np.ndarray) -> np.ndarray:
        """``(S, S)`` label map (or ``(N, S, S)``) -> original ``(H, W)`` (or ``(N, H, W)``), uint8."""
        squeeze = array.ndim == 2
        cropped = np.asarray(array)[..., : self.resized[0], : self.resized[1]].astype(np.float32)
        tensor = torch.as_tensor(cropped[None] if squeeze else cropped)
        out = np.asarray(Resize(self.original, mode="nearest-exact")(tensor)).astype(np.uint8)
        return out[0] if squeeze else out

    def inverse_probabilities(self, array: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(K, S, S)`` probabilities -> ``(K, H, W)`` float32 by bilinear interpolation of the valid region."""
        cropped = torch.as_tensor(array, dtype=torch.float32)[..., : self.resized[0], : self.resized[1]]
        return np.asarray(Resize(self.original, mode="bilinear", align_corners=False)(cropped)).astype(np.float32)
