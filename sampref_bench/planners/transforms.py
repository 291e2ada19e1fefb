"""The SAM-style geometric transform of a 2D slice and its exact inverse.

Forward: resize so that the longest side equals ``image_size`` (aspect ratio kept), then pad at the
bottom and right to ``image_size x image_size``, as SAM's ``ResizeLongestSide`` and MedSAM-Lite's
training pipeline do. Images use bilinear interpolation (anti-aliased when shrinking); label maps use
half-pixel nearest neighbour (``nearest-exact``), which makes ``inverse(forward(label)) == label``
exactly whenever the slice is enlarged or kept at its size.

The padding is 0 in the stored [0, 1] image. :attr:`SliceTransform.valid_size` (the resized region) tells the
model which pixels are padding, so that each SAM flavour's encoder receives the padding value of its own code
(0 after SAM's mean/std normalization for SAM and SAM-Med2D, 0 in [0, 1] for LiteMedSAM and MedSAM; see
:meth:`sampref_bench.models.sam.SamModel.normalize_input`). One transform serves every flavour; where a
flavour's own code lays images out differently (MedSAM and SAM-Med2D resize straight to a square) the plan's
``reasons["transform"]`` says so (:mod:`sampref_bench.models.flavours` has the details).

Resizing calls ``torch.nn.functional.interpolate`` directly (with torch's built-in ``antialias`` filter when
shrinking) rather than MONAI's ``Resize``: importing MONAI costs several seconds of CPU in every
preprocessing worker, more than the work itself on small datasets (``benchmarks/bench_plan.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _resize(tensor: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """``(C, H, W)`` float tensor -> ``(C, *size)`` float32 (``mode``: "bilinear" or "nearest-exact")."""
    size = (int(size[0]), int(size[1]))
    if tuple(tensor.shape[-2:]) == size:
        return tensor.to(torch.float32)
    if mode == "bilinear":
        out = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=antialias)
    else:
        out = F.interpolate(tensor[None], size=size, mode=mode)
    return out[0].to(torch.float32)


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
    def valid_size(self) -> tuple[int, int]:
        """``(h, w)`` px of the valid (resized) region at the top left of the ``(S, S)`` slice; the rest is padding."""
        return (int(self.resized[0]), int(self.resized[1]))

    @property
    def scale(self) -> float:
        """Output pixels per input pixel along the longest side."""
        return self.image_size / max(self.original)

    def _pad(self, tensor: torch.Tensor) -> np.ndarray:
        array = tensor.numpy()
        padded = np.zeros((*array.shape[:-2], self.image_size, self.image_size), array.dtype)
        padded[..., : array.shape[-2], : array.shape[-1]] = array
        return padded

    def image(self, array: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` float image -> ``(C, S, S)`` float32, zero padded."""
        tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
        shrinking = self.resized[0] < self.original[0] or self.resized[1] < self.original[1]
        resized = _resize(tensor, self.resized, "bilinear", antialias=shrinking)
        return self._pad(resized).astype(np.float32)

    def label(self, array: np.ndarray) -> np.ndarray:
        """``(H, W)`` or ``(N, H, W)`` integer label map -> same leading shape at ``(S, S)``, uint8."""
        squeeze = array.ndim == 2
        tensor = torch.as_tensor(np.asarray(array, dtype=np.float32)[None] if squeeze else array.astype(np.float32))
        resized = _resize(tensor, self.resized, "nearest-exact")
        out = self._pad(resized).astype(np.uint8)
        return out[0] if squeeze else out

    def inverse_label(self, array: np.ndarray) -> np.ndarray:
        """``(S, S)`` label map (or ``(N, S, S)``) -> original ``(H, W)`` (or ``(N, H, W)``), uint8."""
        squeeze = array.ndim == 2
        cropped = np.asarray(array)[..., : self.resized[0], : self.resized[1]].astype(np.float32)
        tensor = torch.as_tensor(cropped[None] if squeeze else cropped)
        out = _resize(tensor, self.original, "nearest-exact").numpy().astype(np.uint8)
        return out[0] if squeeze else out

    def inverse_probabilities(self, array: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(K, S, S)`` probabilities -> ``(K, H, W)`` float32 by bilinear interpolation of the valid region."""
        cropped = torch.as_tensor(array, dtype=torch.float32)[..., : self.resized[0], : self.resized[1]]
        return _resize(cropped, self.original, "bilinear").numpy().astype(np.float32)
