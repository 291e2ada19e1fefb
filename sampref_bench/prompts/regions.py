"""From a saliency map to SAM prompts: dense-CRF mask, its connected components, box and interior points.

The MedCLIP-SAM recipe (Koleilat et al., MICCAI 2024): the saliency map is the foreground probability of a
fully connected CRF (Kraehenbuehl & Koltun, NeurIPS 2011; ``pydensecrf``) with a Gaussian smoothness kernel
and a bilateral appearance kernel; the CRF's largest connected foreground component gives the box. All of its
components (:func:`connected_components`) are the candidates a per-label location prior chooses among
(:mod:`.label_prior`).
Coordinates are ``x, y`` in pixels of the preprocessed slice (SAM's convention); boxes are
``x0, y0, x1, y1`` with the last foreground pixel inclusive, as torchvision's ``masks_to_boxes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi


def crf_mask(image_u8: np.ndarray, saliency: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """``(H, W)`` bool foreground of a two-label dense CRF.

    Args:
        image_u8: ``(H, W, 3)`` uint8 image (the bilateral kernel's colours).
        saliency: ``(H, W)`` saliency in [0, 1]; the foreground probability of the unary (``-log p``) is
            ``p = sigmoid((saliency - threshold) / softness)``, so ``threshold`` is where the unary is neutral.
        settings: ``iterations``, ``threshold``, ``softness``, ``gaussian_sxy``, ``gaussian_compat``,
            ``bilateral_sxy``, ``bilateral_srgb``, ``bilateral_compat`` (see :data:`~.settings.DEFAULT_CRF`).
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = saliency.shape
    if image_u8.shape != (height, width, 3):
        raise ValueError(f"image {image_u8.shape} does not match saliency {saliency.shape} (expected (H, W, 3))")
    z = (np.asarray(saliency, np.float64) - float(settings["threshold"])) / float(settings["softness"])
    fg = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    probs = np.stack([1.0 - fg, fg]).astype(np.float32)
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=float(settings["gaussian_sxy"]), compat=float(settings["gaussian_compat"]))
    crf.addPairwiseBilateral(sxy=float(settings["bilateral_sxy"]), srgb=float(settings["bilateral_srgb"]),
                             rgbim=np.ascontiguousarray(image_u8), compat=float(settings["bilateral_compat"]))
    q = np.array(crf.inference(int(settings["iterations"]))).reshape(2, height, width)
    return q[1] > q[0]


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of a ``(H, W)`` bool mask: an ``(H, W)`` int32 map (0 background, components
    ``1..n`` numbered in raster order of their first pixel) and ``n``."""
    labels, n = ndi.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    return labels.astype(np.int32, copy=False), int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a ``(H, W)`` bool mask (ties: the first in raster order)."""
    labels, n = connected_components(mask)
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """``(4,)`` float32 box ``x0, y0, x1, y1`` of a ``(H, W)`` mask (inclusive pixel indices), or ``None`` if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def interior_points(mask: np.ndarray, n: int) -> np.ndarray:
    """``(n', 2)`` float32 ``x, y`` points deep inside a ``(H, W)`` mask, ``n' <= n`` (0 for an empty mask).

    Deterministic: the first point is the pixel farthest from the background (Euclidean distance transform;
    ties in raster order); each next one maximizes the distance to the background times the distance to the
    points already chosen, so points spread over the region instead of clustering at its centre.
    """
    if n <= 0 or not mask.any():
        return np.zeros((0, 2), np.float32)
    inside = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # the array's edge counts as background
    score = inside.copy()
    ys, xs = np.indices(mask.shape)
    points = []
    for _ in range(min(n, int(mask.sum()))):
        y, x = np.unravel_index(int(np.argmax(score)), mask.shape)
        if score[y, x] <= 0:
            break
        points.append((x, y))
        spread = np.sqrt((ys - y) ** 2 + (xs - x) ** 2)
        score = np.minimum(score, inside * spread) if len(points) > 1 else inside * spread
    return np.array(points, np.float32).reshape(-1, 2)


def valid_box(valid: tuple[int, int]) -> np.ndarray:
    """The whole-image box of the valid (unpadded) ``(h, w)`` region: the fallback when the saliency is empty."""
    return np.array([0, 0, valid[1] - 1, valid[0] - 1], np.float32)
