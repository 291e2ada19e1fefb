"""SAM flavours, builders and checkpoint reading; the text-prompt projection (:mod:`.text_prompt`) and the
U-Net of the U-Net baselines (:mod:`.unet`) live beside them.

Public API::

    build_sam(flavour="litemedsam", checkpoint=None, image_size=256, device="cpu", seed=0) -> SamModel
    model.embed(images01, valid_sizes)    (B, 3, S, S) in [0, 1], (B, 2) valid (h, w) px -> (B, 256, E, E)
    model.decode(embeddings, boxes=...)   -> low-res logits (B, 1, 4E, 4E), iou_pred (B, 1)
    upscale_logits(logits, size)          (B, K, L, L) -> (B, K, size, size)

E is S/4 for LiteMedSAM and ``tiny`` and S/16 for the ViT flavours; see :mod:`.sam` and :mod:`.flavours`.
"""

from sampref_bench.models.builders import build_sam, build_sam_architecture, bundled_litemedsam_checkpoint
from sampref_bench.models.checkpoints import (
    file_digest,
    fit_state_dict,
    guess_flavour,
    load_strict,
    read_state_dict,
    resize_pos_embed,
    resize_rel_pos,
)
from sampref_bench.models.flavours import DEFAULT_FLAVOUR, FLAVOURS, FlavourSpec, TinyArch, ViTArch, resolve_flavour
from sampref_bench.models.sam import PerImageMaskDecoder, SamModel, upscale_logits

__all__ = [
    "DEFAULT_FLAVOUR",
    "FLAVOURS",
    "FlavourSpec",
    "PerImageMaskDecoder",
    "SamModel",
    "TinyArch",
    "ViTArch",
    "build_sam",
    "build_sam_architecture",
    "bundled_litemedsam_checkpoint",
    "file_digest",
    "fit_state_dict",
    "guess_flavour",
    "load_strict",
    "read_state_dict",
    "resize_pos_embed",
    "resize_rel_pos",
    "resolve_flavour",
    "upscale_logits",
]
