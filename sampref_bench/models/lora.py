"""LoRA in the SAM image encoder's attention: a parameter-efficient encoder configuration (after SAMed).

SAMed (Zhang & Liu, 2023, "Customized Segment Anything Model for Medical Image Segmentation") freezes SAM's
image encoder and learns a low-rank update of its attention projections. :func:`add_lora` does that to a
:class:`~sampref_bench.models.sam.SamModel` in place::

    summary = add_lora(model, rank=4)         # every attention qkv Linear of model.image_encoder is wrapped
    print(summary.describe())                 # one line for a plan's reason text
    logits, iou = model(images01, boxes=boxes, valid_sizes=valid)   # as before; the decoder is untouched
    keep = lora_parameter_names(model) + [k for k in model.state_dict() if not k.startswith("image_encoder.")]

Each wrapped projection computes, for input ``x`` of shape (..., in) and output (..., out)::

    y = W x + b + (alpha / rank) * B (A dropout(x))      A: (rank, in), B: (out, rank)

with ``W`` (out, in) and ``b`` (out,) the pretrained weight and bias, frozen. ``B`` starts at zero, so right
after :func:`add_lora` the model computes exactly what it computed before (bit for bit: the update adds 0.0
to every output); ``A`` starts as in the LoRA authors' reference code (Kaiming-uniform with ``a = sqrt(5)``,
i.e. U(-1/sqrt(in), 1/sqrt(in)), the default init of an ``nn.Linear`` weight; the paper calls it a random
Gaussian; with ``B = 0`` only the scale of ``A`` matters early in training). ``alpha`` defaults to ``rank``
(scale 1, SAMed's unscaled ``B A x``).

Where the projections are (wrapped layers at LiteMedSAM's fixed architecture, rank 4 counts):

* TinyViT (``litemedsam``): ``layers.{1,2,3}.blocks.{j}.attn.qkv``, the 2 + 6 + 2 = 10 attention blocks
  (stage 0 is convolutional), Linear(d, 3 d) with d = 128, 160, 320; 29,696 LoRA parameters beside the
  encoder's 5,726,740.
* SAM ViT (``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``sam-med2d``): ``blocks.{i}.attn.qkv``, one per
  block, Linear(C, 3 C) (C = 768 for ViT-B: 12 x 4 x 3,072 = 147,456 at rank 4).
* ``tiny`` (:class:`~sampref_bench.models.encoders.TinyConvEncoder`) has no attention: a
  :class:`~sampref_bench.utilities.errors.SamprefError` says so and names the configurations that work.

Deviation from SAMed. SAMed adapts only the q and v parts of qkv (two rank-r pairs, k unchanged). Here one
rank-r pair adapts the whole qkv output (q, k and v). Reasons: it needs no knowledge of how an encoder lays
out q, k and v in the qkv output (SAM's ViT puts all heads' q, then k, then v; TinyViT interleaves them per
head, ``[q_h, k_h, v_h]`` for each head h, so SAMed's "first and last C channels" would hit the wrong
channels there); and at equal rank the parameter count is the same for SAM's ViT (r (C + 3C) = 2 r (C + C)).
The function families differ: SAMed's update has rank up to 2r with k fixed, this one rank r over q, k, v.

What is frozen. Every image-encoder parameter other than the LoRA factors gets ``requires_grad=False``: also
the neck, SAM-Med2D's adapters and TinyViT's attention biases (unfreeze any of them afterwards to combine).
The prompt encoder and mask decoder are not touched. The encoder's BatchNorm layers (TinyViT's convolutions;
the ViTs have none) are kept in eval mode by a forward pre-hook, whatever mode the model is in: a frozen
encoder in train mode would otherwise normalize with the batch's statistics and update its running
statistics, so its "frozen" part would drift and depend on the other images of the batch. With them in
eval mode (and no dropout or drop-path in these encoders at their settings), the LoRA encoder computes the
same function in train and eval mode, apart from the LoRA ``dropout`` in train mode.

State-dict keys. The wrapper keeps the projection's own ``weight`` and ``bias`` Parameters (shared, not
copied) under their old keys and adds two, so SAM's official key layout is unchanged and a model with LoRA
has exactly the keys of one without plus, per wrapped layer::

    image_encoder.<path>.qkv.lora_A   (rank, in)    trainable
    image_encoder.<path>.qkv.lora_B   (out, rank)   trainable, zeros after add_lora

To restore a trained LoRA model: build it as before (pretrained weights), :func:`add_lora` with the same
rank and alpha, then ``model.load_state_dict(saved, strict=False)`` with the saved LoRA (and decoder) keys.
Keys and their order follow the module tree, so they are the same on every call. The values of ``A`` are
drawn from torch's global CPU random generator at call time, in that order (on the CPU in float32, then
moved to the weight's device and dtype, so they do not depend on the device): ``torch.manual_seed(s)``
before :func:`add_lora` makes them reproducible; the call advances the global generator.

Library choice. This module implements LoRA itself (about 40 lines) instead of depending on ``peft``
(0.21, which installs offline here with torch 2.14.1 and would add ``accelerate`` and ``psutil``). Checked
with ``peft.inject_adapter_in_model(LoraConfig(target_modules=["qkv"]), model.image_encoder)``: it moves
the pretrained weight to ``qkv.base_layer.weight`` and names the factors ``qkv.lora_A.default.weight``,
which breaks SAM's key layout that checkpoint loading (:func:`~sampref_bench.models.checkpoints.load_strict`)
and run snapshots rely on; and importing it pulls in ``transformers`` (about 4 s). For one wrapped Linear
that cost buys nothing here.

Do not combine with :func:`~sampref_bench.models.encoder_split.split_image_encoder`: it sets
``requires_grad=True`` on its tail's parameters, base weights included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sampref_bench.utilities.errors import SamprefError

#: Friendly names of the encoder classes the builders make (error messages and summaries).
_ENCODER_NAMES = {"ImageEncoderViT": "SAM ViT", "TinyViT": "TinyViT", "TinyConvEncoder": "tiny conv"}

#: The plan configurations that train an encoder without attention (the ``tiny`` flavour's).
NON_LORA_CONFIGURATIONS = ("2d", "2d_partial", "2d_full")


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: (..., in) -> (..., out).

    ``forward(x) = F.linear(x, weight, bias) + scaling * F.linear(F.linear(dropout(x), lora_A), lora_B)``
    with ``scaling = alpha / rank``. ``weight`` (out, in) and ``bias`` (out,) are the wrapped Linear's own
    Parameters; ``lora_A`` is (rank, in), ``lora_B`` (out, rank) and zero when made, so the module then
    computes exactly what the Linear computed. Built by :func:`add_lora`; see the module docstring.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        self.weight = base.weight  # the Linear's Parameter itself: same key, same storage
        if base.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = base.bias
        initial = torch.empty(self.rank, self.in_features, dtype=torch.float32)  # drawn on the CPU, see module doc
        nn.init.kaiming_uniform_(initial, a=math.sqrt(5))
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(initial.to(**like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **like))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out): the frozen projection plus the scaled low-rank update."""
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, bias={self.bias is not None}"
        )


@dataclass(frozen=True)
class LoraSummary:
    """What :func:`add_lora` did to a model's image encoder.

    Attributes:
        flavour: the model's flavour.
        encoder: ``"TinyViT"`` or ``"SAM ViT"`` (the class name for other encoders).
        rank, alpha: the update's rank r and alpha (scale alpha / r).
        dropout: dropout probability on the LoRA input (train mode only).
        layer_names: the wrapped projections' module names inside ``image_encoder``, in module order.
        lora_parameters: trainable LoRA parameters, r (in + out) summed over the wrapped layers.
        encoder_parameters: the image encoder's own (now frozen) parameters, LoRA excluded.
        frozen_norm_layers: BatchNorm layers kept in eval mode (see the module docstring).
    """

    flavour: str
    encoder: str
    rank: int
    alpha: float
    dropout: float
    layer_names: tuple[str, ...]
    lora_parameters: int
    encoder_parameters: int
    frozen_norm_layers: int

    @property
    def wrapped_layers(self) -> int:
        """How many attention qkv projections carry a LoRA update."""
        return len(self.layer_names)

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor on ``B A x``."""
        return self.alpha / self.rank

    @property
    def fraction(self) -> float:
        """Share of the image encoder's parameters (LoRA included) that train (0..1)."""
        total = self.lora_parameters + self.encoder_parameters
        return self.lora_parameters / total if total else 0.0

    def describe(self) -> str:
        """One line for a plan's reason text."""
        return (
            f"{self.flavour}: LoRA rank {self.rank} (alpha {self.alpha:g}) on the {self.wrapped_layers} attention qkv "
            f"projections of the {self.encoder} image encoder, {self.lora_parameters:,} trainable parameters beside "
            f"{self.encoder_parameters:,} frozen ones ({100 * self.fraction:.2f} % of the encoder)"
        )


def _keep_eval(module: nn.Module, _inputs: tuple) -> None:
    """Forward pre-hook: a frozen encoder's BatchNorm always normalizes with its running statistics."""
    module.training = False


def _encoder(model: nn.Module) -> tuple[nn.Module, str, str]:
    encoder = getattr(model, "image_encoder", None)
    flavour = str(getattr(model, "flavour", "?"))
    if not isinstance(encoder, nn.Module):
        raise SamprefError(
            f"add_lora needs a SamModel (with an image_encoder), got {type(model).__name__}; build it with build_sam"
        )
    kind = type(encoder).__name__
    return encoder, flavour, _ENCODER_NAMES.get(kind, kind)


def _check_arguments(rank: object, alpha: object, dropout: object) -> float:
    """The validated alpha (``rank`` when None); SamprefError naming the bad argument."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise SamprefError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = rank if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise SamprefError(f"LoRA alpha must be a positive number (or None for alpha = rank), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise SamprefError(f"LoRA dropout must be a probability in [0, 1), got {dropout!r}")
    return float(alpha)


def _qkv_parents(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module with an ``nn.Linear`` child named ``qkv``, in module order."""
    return [
        (name, module) for name, module in encoder.named_modules()
        if isinstance(dict(module.named_children()).get("qkv"), nn.Linear)
    ]


def add_lora(model: nn.Module, rank: int = 4, alpha: float | None = None, dropout: float = 0.0) -> LoraSummary:
    """Wrap every attention qkv ``nn.Linear`` of ``model.image_encoder`` with a LoRA update, freezing the rest.

    Args:
        model: a :class:`~sampref_bench.models.sam.SamModel` with a TinyViT (``litemedsam``) or SAM ViT
            (``vit_*``, ``medsam``, ``sam-med2d``) image encoder; changed in place.
        rank: r >= 1, the rank of the update ``B A`` (A: (r, in), B: (out, r)).
        alpha: the update is scaled by alpha / r; None means alpha = r (scale 1, as SAMed).
        dropout: probability in [0, 1) of dropping LoRA input elements in train mode (the frozen path sees
            the undropped input).

    Returns:
        A :class:`LoraSummary`. Side effects: the projections are replaced by :class:`LoraLinear` modules
        (``B = 0``: the model's outputs are unchanged, bit for bit); every other image-encoder parameter
        gets ``requires_grad=False`` and the LoRA factors ``True``; the encoder's BatchNorm layers stay in
        eval mode from now on. ``A`` is drawn from torch's global CPU generator (see the module docstring).

    Raises:
        SamprefError: LoRA already added to this model; an encoder without attention qkv projections (the
            ``tiny`` flavour): the message names the flavour, the encoder class and the configurations to
            use instead; or a bad ``rank``, ``alpha`` or ``dropout``.
    """
    encoder, flavour, kind = _encoder(model)
    alpha = _check_arguments(rank, alpha, dropout)
    if is_lora(encoder):
        raise SamprefError(
            f"flavour {flavour!r}: LoRA is already in this model's {kind} image encoder; add_lora works once per "
            "model (build a fresh model to change rank or alpha)"
        )
    parents = _qkv_parents(encoder)
    if not parents:
        choices = ", ".join(f'"{name}"' for name in NON_LORA_CONFIGURATIONS)
        raise SamprefError(
            f"flavour {flavour!r}: its image encoder ({type(encoder).__name__}) has no attention qkv projection, so "
            f"there is nothing to adapt with LoRA; train it with the configuration {choices} instead, or use LoRA "
            "with a TinyViT (litemedsam) or SAM ViT (vit_b, vit_l, vit_h, medsam, sam-med2d) flavour"
        )
    encoder_parameters = sum(parameter.numel() for parameter in encoder.parameters())
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    lora_parameters = 0
    for _, parent in parents:
        wrapped = LoraLinear(parent.qkv, rank, alpha, float(dropout))
        parent.qkv = wrapped
        lora_parameters += wrapped.lora_A.numel() + wrapped.lora_B.numel()
    norms = [module for module in encoder.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.register_forward_pre_hook(_keep_eval)
    return LoraSummary(
        flavour, kind, int(rank), alpha, float(dropout), tuple(f"{name}.qkv" if name else "qkv" for name, _ in parents),
        lora_parameters, encoder_parameters, len(norms),
    )


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` (a SamModel, its image encoder or any module) holds a :class:`LoraLinear`."""
    return any(isinstance(module, LoraLinear) for module in model.modules())


def lora_parameter_names(model: nn.Module) -> list[str]:
    """The state-dict keys of ``model``'s LoRA factors, in state-dict order; [] for a model without LoRA.

    For a SamModel: ``image_encoder.<path>.qkv.lora_A`` and ``...lora_B`` per wrapped layer (keys relative
    to the module passed). A trainer saving a LoRA run keeps these plus the decoder's (and prompt encoder's)
    keys; the frozen encoder weights come back from the pretrained checkpoint.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            prefix = f"{name}." if name else ""
            names += [f"{prefix}lora_A", f"{prefix}lora_B"]
    return names
