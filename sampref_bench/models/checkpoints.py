"""Reading SAM checkpoints safely, fitting them to the model's input size, and explaining mismatches.

* :func:`read_state_dict` loads with ``torch.load(map_location="cpu", weights_only=True)`` and turns a
  missing, corrupt or unsafe file into a :class:`SamprefError` that names the file and the fix.
* :func:`fit_state_dict` interpolates a ViT's absolute position embedding (1, 64, 64, C at 1024 px)
  and its global-attention relative position tables (127, C/heads at 1024 px) to the model's grid
  (16x16 and 31 at 256 px), bilinearly with ``align_corners=False`` as SAM-Med2D does.
* :func:`load_strict` checks keys and shapes first and reports a few missing/unexpected/mis-shaped
  keys, plus the flavour the file seems to be for.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sampref_bench.utilities.errors import SamprefError

#: Keys under which training scripts nest the weights (SAM-Med2D: "model").
_NESTING_KEYS = ("model", "state_dict", "model_state_dict", "network_weights", "weights")
_REL_POS_KEY = re.compile(r"(^|\.)image_encoder\.blocks\.\d+\.attn\.rel_pos_[hw]$")
_POS_EMBED_KEY = re.compile(r"(^|\.)image_encoder\.pos_embed$")
_digest_cache: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------- files
def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, memoized per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def read_state_dict(path: str | Path, flavour: str = "SAM") -> dict[str, torch.Tensor]:
    """Load a checkpoint file on the CPU and return its flat ``{name: tensor}`` state dict.

    Accepts a bare state dict (official SAM, MedSAM, LiteMedSAM) or one nested under ``model``,
    ``state_dict``, ``model_state_dict``, ``network_weights`` or ``weights`` (SAM-Med2D, training
    checkpoints); a ``module.`` prefix (DataParallel/DDP) is removed. ``flavour`` only words errors.

    Raises:
        SamprefError: the file is missing, is not a PyTorch checkpoint, holds Python objects that
            ``weights_only`` loading refuses, or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SamprefError(f"{flavour} checkpoint {path} does not exist; check the path (or download the file)")
    if not path.is_file():
        raise SamprefError(f"{flavour} checkpoint {path} is not a file; pass the path of the .pth file itself")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise SamprefError(
                f"{path} stores a Python object ({unsafe.group(1)}) besides its weights, and sampref only loads "
                "checkpoints with torch.load(weights_only=True). If you trust the file, re-save just the weights: "
                f"torch.save(torch.load('{path}', weights_only=False)['model'], 'weights_only.pth')"
            ) from None
        raise _not_a_checkpoint(path, flavour) from None
    except Exception:  # torch reports corrupt files with many exception types
        raise _not_a_checkpoint(path, flavour) from None
    return extract_state_dict(loaded, source=str(path))


def _not_a_checkpoint(path: Path, flavour: str) -> SamprefError:
    size = path.stat().st_size
    return SamprefError(
        f"{path} ({size} bytes) is not a readable PyTorch checkpoint (truncated download, or not a .pth file?); "
        f"download the {flavour} checkpoint again"
    )


def extract_state_dict(loaded: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the ``{name: tensor}`` mapping in what ``torch.load`` returned (see :func:`read_state_dict`)."""
    for _ in range(3):  # unwrap {"model": {...}} and the like, at most three levels deep
        if not isinstance(loaded, Mapping) or _is_tensor_mapping(loaded):
            break
        nested = next((loaded[k] for k in _NESTING_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if nested is None:
            break
        loaded = nested
    state = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, Mapping) else {}
    if not state:
        kind = type(loaded).__name__
        keys = list(loaded)[:8] if isinstance(loaded, Mapping) else []
        raise SamprefError(
            f"{source} holds no model weights (a {kind}{f' with keys {keys}' if keys else ''}); "
            "pass a file saved with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_mapping(mapping: Mapping) -> bool:
    return len(mapping) > 0 and all(isinstance(v, torch.Tensor) for v in mapping.values())


# ---------------------------------------------------------------------------- interpolation
def resize_pos_embed(pos_embed: torch.Tensor, grid: int | Sequence[int]) -> torch.Tensor:
    """Resize a ViT absolute position embedding (1, H, W, C) to (1, h, w, C) (``grid`` = h = w or (h, w)).

    Bilinear, ``align_corners=False``, no antialiasing: output cell i samples the input at
    (i + 0.5) H / h - 0.5, i.e. the centre of the input cells it covers (64 -> 16: between cells
    4i + 1 and 4i + 2), so constant and linear fields are reproduced exactly.
    """
    size = (int(grid), int(grid)) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if pos_embed.ndim != 4 or pos_embed.shape[0] != 1:
        raise ValueError(f"expected a (1, H, W, C) position embedding, got {tuple(pos_embed.shape)}")
    if tuple(pos_embed.shape[1:3]) == size:
        return pos_embed
    channels_first = pos_embed.permute(0, 3, 1, 2).float()
    resized = F.interpolate(channels_first, size=size, mode="bilinear", align_corners=False, antialias=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a relative position table (L, C) to (length, C) by linear interpolation along L.

    ``align_corners=False``, identical to SAM-Med2D's bilinear resize of the (1, 1, L, C) table
    (127 -> 31 for SAM's global-attention blocks at 1024 -> 256 px).
    """
    if table.ndim != 2:
        raise ValueError(f"expected a (L, C) relative position table, got {tuple(table.shape)}")
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0).float(), size=int(length), mode="linear", align_corners=False)
    return resized[0].t().to(table.dtype).contiguous()


def fit_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Interpolate a ViT checkpoint's position embeddings to ``model``'s input size.

    Only ``image_encoder.pos_embed`` and ``image_encoder.blocks.{i}.attn.rel_pos_{h,w}`` whose channel
    width matches but whose grid/length differs are changed; everything else is passed through (and
    left to :func:`load_strict` to judge). Returns the new state dict and one note per resized key.
    """
    target = model.state_dict()
    fitted = dict(state)
    notes: list[str] = []
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if _POS_EMBED_KEY.search(key) and value.ndim == 4 and value.shape[-1] == want.shape[-1]:
            fitted[key] = resize_pos_embed(value, tuple(want.shape[1:3]))
        elif _REL_POS_KEY.search(key) and value.ndim == 2 and value.shape[1] == want.shape[1]:
            fitted[key] = resize_rel_pos(value, want.shape[0])
        else:
            continue
        notes.append(f"{key}: {tuple(value.shape)} -> {tuple(want.shape)}")
    return fitted, notes


# ---------------------------------------------------------------------------- strict loading
def guess_flavour(state: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """Flavours a state dict may have been saved from, judged by key names and widths (empty if unknown).

    ViT-B weights cannot tell SAM from MedSAM, so both are returned for them.
    """
    keys = list(state)
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return ("litemedsam",)
    if any(k.startswith("image_encoder.stem.") for k in keys):
        return ("tiny",)
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None or patch.ndim != 4:
        return ()
    if any(".Adapter." in k for k in keys):
        return ("sam-med2d",)
    return {768: ("vit_b", "medsam"), 1024: ("vit_l",), 1280: ("vit_h",)}.get(int(patch.shape[0]), ())


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, flavour: str, source: str) -> None:
    """Load ``state`` into ``model`` with exact key and shape matching, or raise a SamprefError that explains.

    The error lists up to five missing keys, unexpected keys and shape mismatches each, and names
    the flavour the file seems to be for (see :func:`guess_flavour`).
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    reshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(state, strict=True)
        return
    parts = [
        f"{len(items)} {label} (e.g. {', '.join(items[:5])})"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped))
        if items
    ]
    message = f"{source} does not fit the {flavour} architecture: " + "; ".join(parts) + "."
    guesses = guess_flavour(state)
    if guesses and flavour not in guesses:
        message += f" The file looks like a {' or '.join(guesses)} checkpoint: build it with flavour '{guesses[0]}'."
    elif missing and not unexpected and all(".Adapter." in k for k in missing):
        message += " The file has no SAM-Med2D adapter weights: it looks like a plain ViT (vit_*, medsam) checkpoint."
    elif any("image_encoder." in k and not k.startswith("image_encoder.") for k in state):
        message += " Its keys carry an extra prefix; save model.state_dict() of the SAM model itself."
    else:
        message += f" Pass a checkpoint saved from a {flavour} model."
    raise SamprefError(message)
