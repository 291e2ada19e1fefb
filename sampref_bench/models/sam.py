"""``SamModel``: one SAM network (any flavour) with the three calls training needs.

Shapes (S = ``image_size`` input px, E = ``embedding_size``, L = ``low_res_size`` = 4 E):

================  ==============================================================
flavour           S -> E -> L (at the default 256 px)
================  ==============================================================
litemedsam, tiny  256 -> 64 -> 256   (stride-4 encoders: E = S / 4)
vit_*, medsam,    256 -> 16 -> 64    (ViT patch 16: E = S / 16)
sam-med2d
================  ==============================================================

* ``embed(images01, valid_sizes=None)``: (B, 3, S, S) floats in [0, 1] -> (B, 256, E, E) image embeddings.
  ``valid_sizes`` gives each image's valid (resized) region ``(h, w)`` in px at the top left; the rest is
  padding and reaches the encoder as 0 in its input space (see :meth:`SamModel.normalize_input`).
* ``decode(embeddings, boxes=..., points=..., extra_sparse=...)``: -> low-res mask logits
  (B, 1, L, L) (or (B, 3, L, L) with ``multimask=True``) and predicted IoU (B, 1) (or (B, 3)).
  SAM's mask decoder always upsamples the embedding grid 4x, so L = 4 E; use
  :func:`upscale_logits` to bring logits to the input (or any other) size.

Unlike ``segment_anything.modeling.Sam.forward`` (which runs under ``torch.no_grad``), these calls
keep the autograd graph, and decoding pairs image ``i`` with prompt set ``i`` (B images with B
boxes give B masks; one image with N prompt sets gives N masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import nn

from sampref_bench.models.flavours import SAM_PIXEL_MEAN, SAM_PIXEL_STD, InputNorm, input_convention_tag

Points = tuple[torch.Tensor, torch.Tensor]
#: Valid (unpadded) region of each image: (B, 2) rows ``(h, w)`` in px, a tensor or a sequence of pairs.
ValidSizes = torch.Tensor | Sequence[Sequence[int]]


class PerImageMaskDecoder(MaskDecoder):
    """SAM's ``MaskDecoder`` (same parameters and state-dict keys) with per-image prompt batching.

    ``segment_anything``'s ``predict_masks`` repeats every image embedding once per prompt set
    (``repeat_interleave``), which is right for one image with N prompts but turns B images with
    B prompt sets into B*B pairs. Here image ``i`` is paired with prompt set ``i``; a single image
    embedding is shared by all prompt sets.
    """

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (N, 4, 4h, 4w) and IoU predictions (N, 4) for all mask tokens.

        Args:
            image_embeddings: (N, C, h, w), or (1, C, h, w) shared by all N prompt sets.
            image_pe: (1, C, h, w) dense positional encoding of the embedding grid.
            sparse_prompt_embeddings: (N, T, C) prompt tokens (T may be 0).
            dense_prompt_embeddings: (N, C, h, w) mask-prompt (or no-mask) embeddings.
        """
        n_prompts = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, n_prompts):
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings cannot be paired with {n_prompts} prompt sets; "
                "give one prompt set per image, or a single image"
            )
        _, channels, height, width = image_embeddings.shape
        images = image_embeddings.expand(n_prompts, -1, -1, -1) + dense_prompt_embeddings
        positions = image_pe.expand(n_prompts, -1, -1, -1)

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n_prompts, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)], dim=1)

        token_states, image_states = self.transformer(images, positions, tokens)
        iou_state = token_states[:, 0, :]
        mask_states = token_states[:, 1 : 1 + self.num_mask_tokens, :]

        grid = image_states.transpose(1, 2).reshape(n_prompts, channels, height, width)
        upscaled = self.output_upscaling(grid)  # (N, C/8, 4h, 4w)
        kernels = torch.stack(
            [head(mask_states[:, k, :]) for k, head in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (N, num_mask_tokens, C/8)
        masks = torch.einsum("nkc,nchw->nkhw", kernels, upscaled)
        return masks, self.iou_prediction_head(iou_state)


def upscale_logits(low_res: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinearly resize mask logits (B, K, L, L) to (B, K, H, W), ``size`` = H = W or (H, W) in px.

    Resize logits, not probabilities or binary masks, then threshold at 0 (SAM's convention).
    """
    target = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(low_res.shape[-2:]) == target:
        return low_res
    return F.interpolate(low_res, size=target, mode="bilinear", align_corners=False)


def valid_mask(valid_sizes: ValidSizes, batch: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 1, S, S) bool mask, True on each image's valid region ``[:h, :w]`` (the top-left ``(h, w)`` px).

    Args:
        valid_sizes: (B, 2) rows ``(h, w)`` in px, 1 <= h, w <= S (each slice's
            :attr:`~sampref_bench.planners.transforms.SliceTransform.valid_size`).
        batch: B, the number of images.
        size: S, the side of the (square) input in px.
        device: where the mask is made.
    Raises:
        ValueError: not B rows of two sizes, or a size outside 1..S.
    """
    sizes = torch.as_tensor(valid_sizes, dtype=torch.long, device=device)
    if sizes.ndim != 2 or tuple(sizes.shape) != (batch, 2):
        raise ValueError(f"valid_sizes must hold one (h, w) pair per image ({batch}), got shape {tuple(sizes.shape)}")
    if bool((sizes < 1).any()) or bool((sizes > size).any()):
        raise ValueError(f"valid sizes must lie in 1..{size} px, got {sizes.tolist()}")
    positions = torch.arange(size, device=device)
    rows = positions[None, :] < sizes[:, :1]  # (B, S)
    cols = positions[None, :] < sizes[:, 1:]  # (B, S)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


class SamModel(nn.Module):
    """A SAM network: ``image_encoder``, ``prompt_encoder`` (SAM's), ``mask_decoder`` (SAM's, batched per image).

    Attributes:
        flavour: builder flavour name (see :mod:`sampref_bench.models.flavours`).
        image_size: input size S in px (images are S x S).
        input_norm: ``"unit"`` (encoder takes [0, 1] input) or ``"sam"`` (SAM mean/std on 0-255).
        weights_id: filename-safe identifier of the weights the model was built with, e.g.
            ``litemedsam-256-79d8c9dca6db4d69`` (flavour, S, first 16 hex digits of the checkpoint's
            SHA-256) or ``tiny-256-random-seed-0``; it does not change when the model is trained afterwards.
        input_convention: version of what the encoder receives for a given image (see
            :mod:`sampref_bench.models.flavours`): 1 for ``unit`` flavours, 2 for ``sam`` flavours.
        embedding_id: key of what the encoder computes from a preprocessed image: ``weights_id``, plus
            ``-in{N}`` for input convention N > 1. Image-embedding caches use it as their folder name.

    The state dict uses SAM's official key layout (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``); the normalization constants are non-persistent buffers.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        *,
        flavour: str,
        image_size: int,
        input_norm: InputNorm,
        weights_id: str,
        input_convention: int = 1,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.flavour = flavour
        self.image_size = int(image_size)
        self.input_norm: InputNorm = input_norm
        self.weights_id = weights_id
        self.input_convention = int(input_convention)
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ sizes
    @property
    def embedding_size(self) -> int:
        """Side E of the image-embedding grid: S/4 (LiteMedSAM, tiny) or S/16 (ViTs)."""
        return int(self.prompt_encoder.image_embedding_size[0])

    @property
    def low_res_size(self) -> int:
        """Side L = 4 E of the decoder's mask logits (256 for LiteMedSAM at 256 px, 64 for ViTs)."""
        return 4 * self.embedding_size

    @property
    def embed_dim(self) -> int:
        """Channels of image embeddings and prompt tokens (256)."""
        return int(self.prompt_encoder.embed_dim)

    @property
    def embedding_id(self) -> str:
        """Key of image embeddings: ``weights_id`` (input convention 1) or ``{weights_id}-in{N}`` (convention N)."""
        return f"{self.weights_id}{input_convention_tag(self.input_convention)}"

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.pixel_mean.device

    # ------------------------------------------------------------------ image side
    def normalize_input(self, images01: torch.Tensor, valid_sizes: ValidSizes | None = None) -> torch.Tensor:
        """Map images in [0, 1] to what the encoder expects, padding included.

        Args:
            images01: (B, 3, S, S) float in [0, 1] (a (B, 1, S, S) grey image is repeated to 3 channels).
            valid_sizes: (B, 2) rows ``(h, w)`` in px: image ``i``'s valid (resized) region is
                ``[:h, :w]`` and the rest is padding, as :class:`~sampref_bench.planners.transforms.SliceTransform`
                lays a slice out (its ``valid_size``). ``None``: every pixel is valid (no padding).
        Returns:
            (B, 3, S, S): unchanged for input norm ``unit``; ``(255 x - mean) / std`` with SAM's
            RGB mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) for ``sam``. The padding
            is 0 for every flavour, as each one's own code pads: in [0, 1] for ``unit`` (LiteMedSAM pads
            the [0, 1] image with 0), after normalization for ``sam`` (SAM and SAM-Med2D normalize, then
            pad with 0).
        """
        if images01.ndim != 4 or images01.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 3, S, S) or (B, 1, S, S), got {tuple(images01.shape)}")
        if images01.shape[1] == 1:
            images01 = images01.expand(-1, 3, -1, -1)
        normalized = images01 if self.input_norm == "unit" else (images01 * 255.0 - self.pixel_mean) / self.pixel_std
        if valid_sizes is None:
            return normalized
        if images01.shape[-1] != images01.shape[-2]:
            raise ValueError(f"valid_sizes needs square images, got {tuple(images01.shape[-2:])}")
        mask = valid_mask(valid_sizes, images01.shape[0], images01.shape[-1], images01.device)
        return normalized.masked_fill(~mask, 0.0)

    def embed(self, images01: torch.Tensor, valid_sizes: ValidSizes | None = None) -> torch.Tensor:
        """Image embeddings (B, 256, E, E) of (B, 3, S, S) images in [0, 1] (S = ``image_size``).

        ``valid_sizes``: (B, 2) rows ``(h, w)`` in px of each image's valid region (the rest is padding that
        reaches the encoder as 0, see :meth:`normalize_input`); ``None`` treats every pixel as valid. Callers
        feeding preprocessed slices pass their ``SliceTransform.valid_size``
        (:func:`sampref_bench.planners.embedding_cache.embed_slices` does).
        """
        if tuple(images01.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.flavour} model was built for {self.image_size} px input, got images of size "
                f"{tuple(images01.shape[-2:])}; resize them (the planner's model input size) or rebuild the model"
            )
        return self.image_encoder(self.normalize_input(images01, valid_sizes))

    # ------------------------------------------------------------------ prompt side
    def encode_prompts(
        self,
        batch_size: int,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
        extra_sparse: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (N, T, 256) and dense (N, 256, E, E) prompt embeddings.

        Args:
            batch_size: N when no prompt is given (decoding without prompts, e.g. text tokens only).
            boxes: (N, 4) or (N, 1, 4) boxes x0, y0, x1, y1 in input px (0..S).
            points: coordinates (N, P, 2) as x, y in input px and labels (N, P): 1 foreground,
                0 background, -1 padding (ignored). Without boxes SAM appends one padding point.
            extra_sparse: (N, T', 256) tokens appended after the point/box tokens (text prompts).
            mask_inputs: (N, 1, 4E, 4E) mask logits from an earlier pass (SAM's dense prompt).
        Returns:
            sparse (N, T, 256) with T = points (+1 padding if no box) + 2 per box + T';
            dense (N, 256, E, E).
        """
        device = self.device
        dtype = self.prompt_encoder.no_mask_embed.weight.dtype
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=dtype, device=device).reshape(-1, 4)
        if points is not None:
            coords, labels = points
            points = (torch.as_tensor(coords, dtype=dtype, device=device), torch.as_tensor(labels, device=device))
        sizes = {
            name: int(value.shape[0])
            for name, value in (
                ("boxes", boxes),
                ("points", None if points is None else points[0]),
                ("extra_sparse", extra_sparse),
                ("mask_inputs", mask_inputs),
            )
            if value is not None
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"prompt batch sizes disagree: {sizes}")
        n_prompts = next(iter(sizes.values())) if sizes else int(batch_size)

        if boxes is None and points is None and mask_inputs is None:
            sparse = torch.zeros((n_prompts, 0, self.embed_dim), dtype=dtype, device=device)
            grid = self.prompt_encoder.image_embedding_size
            dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n_prompts, -1, *grid)
        else:
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        if extra_sparse is not None:
            if extra_sparse.ndim != 3 or extra_sparse.shape[-1] != self.embed_dim:
                raise ValueError(f"extra_sparse must be (N, T, {self.embed_dim}), got {tuple(extra_sparse.shape)}")
            sparse = torch.cat([sparse, extra_sparse.to(device=device, dtype=sparse.dtype)], dim=1)
        return sparse, dense

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
        extra_sparse: torch.Tensor | None = None,
        multimask: bool = False,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits and IoU predictions, keeping gradients.

        Args:
            embeddings: (B, 256, E, E) from :meth:`embed` (or an embedding cache).
            boxes, points, extra_sparse, mask_inputs: prompts for each image, see :meth:`encode_prompts`;
                their batch N must equal B (image i with prompt set i), or B must be 1 (one image,
                N prompt sets). Without any prompt one mask per image is decoded.
            multimask: False -> SAM's single-mask output; True -> its three ambiguity-aware masks.
        Returns:
            logits (N, K, L, L) with K = 1 (or 3 if ``multimask``) and L = 4 E = ``low_res_size``
            (256 for LiteMedSAM/tiny at 256 px, 64 for the ViTs); iou_pred (N, K).
        """
        expected = (self.embed_dim, self.embedding_size, self.embedding_size)
        if embeddings.ndim != 4 or tuple(embeddings.shape[1:]) != expected:
            raise ValueError(
                f"{self.flavour} model ({self.weights_id}) expects embeddings (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(embeddings.shape)}; were they cached from another model?"
            )
        sparse, dense = self.encode_prompts(embeddings.shape[0], boxes, points, extra_sparse, mask_inputs)
        if embeddings.shape[0] not in (1, sparse.shape[0]):
            raise ValueError(
                f"{embeddings.shape[0]} images but {sparse.shape[0]} prompt sets; give one prompt set per image"
            )
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def forward(
        self,
        images01: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
        extra_sparse: torch.Tensor | None = None,
        multimask: bool = False,
        mask_inputs: torch.Tensor | None = None,
        valid_sizes: ValidSizes | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode(embed(images01, valid_sizes), ...)``: (B, 3, S, S) in [0, 1] -> logits (B, K, L, L), iou (B, K)."""
        return self.decode(self.embed(images01, valid_sizes), boxes=boxes, points=points, extra_sparse=extra_sparse,
                           multimask=multimask, mask_inputs=mask_inputs)

    # ------------------------------------------------------------------ utilities
    upscale_logits = staticmethod(upscale_logits)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, then refresh TinyViT's eval-mode attention-bias caches.

        TinyViT attention layers copy their biases into a non-persistent buffer when switched to eval
        mode; loading new weights into an eval-mode model would otherwise keep the stale copy.
        """
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        for module in self.modules():
            if hasattr(module, "attention_biases") and not module.training:
                module.train(False)
        return result

    def extra_repr(self) -> str:
        return (
            f"flavour={self.flavour!r}, image_size={self.image_size}, embedding_size={self.embedding_size}, "
            f"input_norm={self.input_norm!r}, input_convention={self.input_convention}, "
            f"weights_id={self.weights_id!r}"
        )
