"""gScoreCAM (Chen et al., ACCV 2022) on a loaded CLIP bundle (:mod:`sampref_bench.prompts.biomedclip`).

As implemented by :class:`GScoreCAM`, for an image ``I`` and a text ``t``:

* the image is resized (bicubic, antialiased, no crop, so the aspect ratio is not kept) to the tower's square
  input side ``S`` and normalised with the tower's mean/std; ``t`` is tokenized and embedded by the text tower;
* **ranking** -- one forward/backward pass: the cosine ``s`` of the L2-normalised image and text embeddings is
  differentiated with respect to the output ``A`` of the target layer; each channel's importance is its
  gradient averaged over all positions of that output (for ViT blocks: over every token, CLS / prefix tokens
  included; at the last block only the CLS token feeds the pooled embedding, so this is the CLS-token gradient
  that gScoreCAM uses for ViTs; for convolutional maps: over the spatial grid). Only if that gradient is
  identically zero (a layer the embedding does not depend on) are channels ranked by their mean activation.
  The ``topk`` channels with the largest (signed) importance are kept, ties broken by lower channel index;
* **scoring** -- ViT token activations drop the prefix (CLS / register) tokens and are reshaped to
  ``(C, h, w)`` on the patch grid. Each kept map ``A_k`` is upsampled bilinearly to ``S x S`` and min-max
  normalised to ``M_k`` in [0, 1] (a constant map gives 0); the normalised image is multiplied by ``M_k`` (masked
  pixels become the mean colour) and scored with the CLIP logit ``logit_scale * cos`` against ``t``; the channel
  weights are the softmax of these logits over the kept channels (as in the gScoreCAM reference code);
* **map** -- ``ReLU(sum_k w_k A_k)`` on the ``(h, w)`` grid (raw activations, as in ScoreCAM), upsampled
  bilinearly to the input's ``(H, W)`` and min-max normalised to [0, 1]; all zeros when nothing is positive
  (or the map is constant).

Default target layer: the last transformer block of the image tower (``trunk.blocks.<last>`` for timm ViT
towers such as BiomedCLIP's, ``transformer.resblocks.<last>`` for open_clip ViTs), else the last stage of a
convolutional tower (``layer4`` / ``trunk.stages.<last>``). MedCLIP-SAM hooks ``trunk.blocks.11.norm2``; any
dotted module path of ``model.visual`` can be given.

Everything is deterministic on CPU (no sampling; gradients only in the ranking pass, taken with
``torch.autograd.grad`` so no parameter ``.grad`` is touched); on CUDA, kernels may add float noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sampref_bench.prompts.biomedclip import ClipBundle, device_dtype, text_features
from sampref_bench.utilities.errors import SamprefError


def _block_layers(visual: nn.Module) -> list[str]:
    """Dotted names of the children of every ModuleList / Sequential of the tower (its blocks and stages)."""
    names = []
    for name, module in visual.named_modules():
        if name and isinstance(module, nn.ModuleList | nn.Sequential):
            names.extend(f"{name}.{child}" for child, _ in module.named_children())
    return names


def default_target_layer(visual: nn.Module) -> str:
    """The last transformer block (timm ``trunk.blocks``, open_clip ``transformer.resblocks``, ``blocks``) of an
    image tower, else its last convolutional stage (``layer4``, ``stages``)."""
    for prefix, owner in (("trunk.", getattr(visual, "trunk", None)), ("", visual)):
        if owner is None:
            continue
        for attr in ("blocks", "transformer.resblocks", "stages"):
            seq: Any = owner
            for part in attr.split("."):
                seq = getattr(seq, part, None)
            if isinstance(seq, nn.ModuleList | nn.Sequential) and len(seq) > 0:
                return f"{prefix}{attr}.{len(seq) - 1}"
        if isinstance(getattr(owner, "layer4", None), nn.Module):
            return f"{prefix}layer4"
    raise SamprefError(f"no default gScoreCAM target layer for a {type(visual).__name__} image tower; pass "
                       f"target_layer= one of: {', '.join(_block_layers(visual)[:50]) or '(none found)'}")


def _token_grid(visual: nn.Module, num_tokens: int) -> tuple[int, int, int]:
    """``(h, w, prefix)``: the patch grid of a ``num_tokens``-token sequence and its number of leading tokens."""
    grids = []
    for owner in (visual, getattr(visual, "trunk", None)):
        if owner is None:
            continue
        for holder in (owner, getattr(owner, "patch_embed", None)):
            grid = getattr(holder, "grid_size", None) if holder is not None else None
            if grid is not None:
                grids.append(tuple(int(g) for g in grid))
    for grid in grids:
        if len(grid) == 2 and 0 < grid[0] * grid[1] <= num_tokens <= grid[0] * grid[1] + 16:
            return grid[0], grid[1], num_tokens - grid[0] * grid[1]
    for prefix in range(0, 17):
        side = math.isqrt(max(num_tokens - prefix, 0))
        if side > 0 and side * side == num_tokens - prefix:
            return side, side, prefix
    raise SamprefError(f"cannot map {num_tokens} tokens of the target layer onto a patch grid")


def _maps_and_importance(out: torch.Tensor, grad: torch.Tensor, visual: nn.Module
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C, h, w)`` activation maps, ``(C,)`` mean gradient and ``(C,)`` mean activation of one image's layer output.

    Accepts ``(1, C, h, w)`` feature maps and ``(1, T, C)`` / ``(T, 1, C)`` token sequences (prefix tokens first).
    """
    if out.ndim == 4 and out.shape[0] == 1:
        maps, g = out[0], grad[0]
        return maps, g.mean(dim=(1, 2)), maps.mean(dim=(1, 2))
    if out.ndim == 3 and 1 in out.shape[:2]:
        tokens, g = (out[0], grad[0]) if out.shape[0] == 1 else (out[:, 0], grad[:, 0])
        h, w, prefix = _token_grid(visual, tokens.shape[0])
        maps = tokens[prefix:].transpose(0, 1).reshape(tokens.shape[1], h, w)
        return maps, g.mean(dim=0), tokens.mean(dim=0)
    raise SamprefError(f"the gScoreCAM target layer must output (1, C, h, w) maps or (1, T, C) tokens for one "
                       f"image; it gave shape {tuple(out.shape)}")


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise over the last two axes; constant slices become 0."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


class GScoreCAM:
    """gScoreCAM saliency of a text on an image (see the module docstring for the exact algorithm).

    target_layer: dotted module path inside ``model.visual`` (default :func:`default_target_layer`: the last
    transformer block, e.g. ``trunk.blocks.11`` for BiomedCLIP); topk: number of channels kept by gradient
    ranking (clipped to the layer's channel count); batch_size: masked images per forward pass.
    """

    def __init__(self, bundle: ClipBundle, target_layer: str | None = None, topk: int = 300,
                 batch_size: int = 32) -> None:
        if int(topk) < 1 or int(batch_size) < 1:
            raise ValueError(f"topk and batch_size must be >= 1 (got {topk}, {batch_size})")
        self.bundle = bundle
        visual = bundle.model.visual
        self.target_layer = default_target_layer(visual) if target_layer is None else str(target_layer)
        modules = dict(visual.named_modules())
        if not self.target_layer or self.target_layer not in modules:
            layers = _block_layers(visual)
            shown = ", ".join(layers[:60]) + (" ..." if len(layers) > 60 else "")
            raise SamprefError(f"unknown gScoreCAM target layer {self.target_layer!r} in the "
                               f"{type(visual).__name__} image tower; available block layers: {shown} (any dotted "
                               f"name from model.visual.named_modules() is accepted)")
        self._module = modules[self.target_layer]
        self.topk = int(topk)
        self.batch_size = int(batch_size)
        #: After a call: indices of the channels used, most important first (int64).
        self.last_channels = np.zeros(0, np.int64)

    def settings(self) -> dict:
        """Everything that determines the output: the cache key of saliency maps."""
        return {"method": "gscorecam", "target_layer": self.target_layer, "topk": self.topk,
                "weights_id": self.bundle.weights_id}

    def _preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` in [0, 1] -> ``(1, 3, S, S)`` normalised, on the model's device and dtype."""
        side = self.bundle.image_size
        x = image[None]
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)
        mean = torch.tensor(self.bundle.image_mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.bundle.image_std, dtype=x.dtype).view(1, 3, 1, 1)
        device, dtype = device_dtype(self.bundle.model)
        return ((x - mean) / std).to(device=device, dtype=dtype)

    def _rank_pass(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward/backward pass: ``(C, h, w)`` float32 maps and ``(C,)`` channel importance."""
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, tuple | list) else output
            if torch.is_tensor(tensor):
                captured.append(tensor)

        handle = self._module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                leaf = x.detach().clone().requires_grad_(True)
                image = self.bundle.model.encode_image(leaf)
                if not captured:
                    raise SamprefError(f"gScoreCAM target layer {self.target_layer!r} did not run (or gave no "
                                       f"tensor) during encode_image")
                out = captured[-1]
                score = (F.normalize(image.float(), dim=-1)[0] * text).sum()
                (grad,) = torch.autograd.grad(score, out, allow_unused=True)
        finally:
            handle.remove()
        out = out.detach().float()
        grad = torch.zeros_like(out) if grad is None else grad.float()
        maps, importance, mean_activation = _maps_and_importance(out, grad, self.bundle.model.visual)
        if not bool(importance.abs().gt(0).any()):
            importance = mean_activation
        return maps, importance

    def __call__(self, image01: np.ndarray, text: str) -> np.ndarray:
        """Saliency of ``text`` on ``image01`` ((3, H, W) float RGB in [0, 1], any size): (H, W) float32 in
        [0, 1] at the input size, all zeros when no location scores positive."""
        image = _as_image(image01)
        height, width = image.shape[1:]
        model = self.bundle.model
        x = self._preprocess(image)
        text_feature = text_features(self.bundle, [str(text)])[0]
        maps, importance = self._rank_pass(x, text_feature)

        keep = min(self.topk, maps.shape[0])
        order = torch.sort(importance.cpu(), descending=True, stable=True).indices
        channels = order[:keep].to(maps.device)
        self.last_channels = order[:keep].numpy().astype(np.int64)
        kept = maps[channels]

        side = self.bundle.image_size
        with torch.no_grad():
            masks = _minmax(F.interpolate(kept[:, None], size=(side, side), mode="bilinear", align_corners=False))
            scale = getattr(model, "logit_scale", None)
            scale = float(scale.exp()) if torch.is_tensor(scale) else 1.0
            logits = []
            for start in range(0, keep, self.batch_size):
                batch = x * masks[start:start + self.batch_size].to(x.dtype)
                features = F.normalize(model.encode_image(batch).float(), dim=-1)
                logits.append(scale * (features @ text_feature))
            weights = torch.softmax(torch.cat(logits), dim=0)
            cam = torch.relu(torch.einsum("k,khw->hw", weights, kept))
            if not bool((cam > 0).any()):
                return np.zeros((height, width), np.float32)
            cam = F.interpolate(cam[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            cam = _minmax(cam.clamp_min(0.0))
        return cam.cpu().numpy().astype(np.float32).clip(0.0, 1.0)


def _as_image(image01: np.ndarray) -> torch.Tensor:
    """Validate a ``(3, H, W)`` float RGB image in [0, 1]; return it as a float32 CPU tensor."""
    arr = np.asarray(image01)
    if arr.ndim != 3 or arr.shape[0] != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"image01 must be a (3, H, W) RGB array; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image01 must be float in [0, 1]; got dtype {arr.dtype} (divide uint8 images by 255)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image01 has NaN or infinite values")
    if arr.min() < -1e-3 or arr.max() > 1.0 + 1e-3:
        raise ValueError(f"image01 must lie in [0, 1]; got {arr.min():.3g}..{arr.max():.3g}")
    return torch.from_numpy(np.clip(arr, 0.0, 1.0))
