"""Reading SAM checkpoints safely, fitting them to the model's input size, and explaining mismatches.

* :func:`read_state_dict` loads with ``torch.load(map_location="cpu", weights_only=True)``. A file that
  also pickles Python objects (SAM-Med2D saves its ``torch.optim.Adam`` object beside ``model``) is
  read again without running them: every global outside a small allowlist of torch's tensor rebuild
  functions, storage types, dtypes and ``collections.OrderedDict`` becomes an inert stub, and only the
  tensors of the state dict are kept. A missing or corrupt file, or one whose weights cannot be
  recovered that way, becomes a :class:`SamprefError` that names the file, the global and the fix.
* :func:`fit_state_dict` interpolates a ViT's absolute position embedding (1, 64, 64, C at 1024 px)
  and its global-attention relative position tables (127, C/heads at 1024 px) to the model's grid
  (16x16 and 31 at 256 px), bilinearly with ``align_corners=False`` as SAM-Med2D does.
* :func:`load_strict` checks keys and shapes first and reports a few missing/unexpected/mis-shaped
  keys, plus the flavour the file seems to be for.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import functools
import hashlib
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sampref_bench.utilities.errors import SamprefError

#: Keys under which training scripts nest the weights (SAM-Med2D: "model").
_NESTING_KEYS = ("model", "state_dict", "model_state_dict", "network_weights", "weights")
_REL_POS_KEY = re.compile(r"(^|\.)image_encoder\.blocks\.\d+\.attn\.rel_pos_[hw]$")
_POS_EMBED_KEY = re.compile(r"(^|\.)image_encoder\.pos_embed$")
#: How torch's weights_only unpickler names the global it refused (not allowlisted, or its module blocked).
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module [\w.]+ is blocked)")
_digest_cache: dict[tuple[str, int, int], str] = {}
#: Modules whose globals a refusal never suggests allowlisting (torch blocks the first four outright).
_NEVER_ALLOWLIST = frozenset({"os", "posix", "nt", "sys", "builtins", "subprocess"})


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
    checkpoints); a ``module.`` prefix (DataParallel/DDP) is removed. Tensors keep the shapes and
    dtypes they were saved with. ``flavour`` only words errors.

    The file is first read with ``torch.load(weights_only=True)``. Only if that refuses a global
    (SAM-Med2D's release pickles its whole ``torch.optim.Adam`` object) is it read a second time
    with a pickle reader that never imports or calls what the file names: tensors are rebuilt by
    torch's own rebuild functions, everything else is an inert stub, and a ``UserWarning`` lists the
    stubbed globals. Only the tensors of the state dict are returned then, detached (no hooks or
    attributes the pickle may have set).

    Raises:
        SamprefError: the file is missing, is not a PyTorch checkpoint, holds no tensors, or needs a
            stubbed global for its weights themselves (or is not in ``torch.save``'s zip format) so
            they cannot be recovered without running the pickle.
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
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused:
            return _read_with_stubs(path, refused.group(1))
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


def _unrecoverable(path: Path, name: str, problem: str, allowlist: bool = True) -> SamprefError:
    """The refusal of a file whose weights need the global(s) ``name``; ``allowlist`` offers torch's allowlist."""
    fix = "ask the file's authors for plain tensors (a file saved with torch.save(model.state_dict(), path))"
    if allowlist and name.split(".")[0] not in _NEVER_ALLOWLIST:
        fix += (f", or, if you trust the code that defines {name}, allowlist it with "
                f"torch.serialization.add_safe_globals([{name}]) before loading")
    return SamprefError(
        f"{path} {problem}. sampref never imports or runs the Python objects a checkpoint pickles, so these "
        f"weights cannot be recovered. Fix: {fix}"
    )


def extract_state_dict(loaded: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the ``{name: tensor}`` mapping in what ``torch.load`` returned (see :func:`read_state_dict`)."""
    loaded, _ = _locate_state_dict(loaded)
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


def _locate_state_dict(loaded: Any) -> tuple[Any, list[str]]:
    """The object the weights are read from, and the nesting keys leading to it (``[]``: the top level)."""
    keys: list[str] = []
    for _ in range(3):  # unwrap {"model": {...}} and the like, at most three levels deep
        if not isinstance(loaded, Mapping) or _is_tensor_mapping(loaded):
            break
        nested = next((k for k in _NESTING_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if nested is None:
            break
        loaded = loaded[nested]
        keys.append(nested)
    return loaded, keys


# ---------------------------------------------------------------------------- reading without running the pickle
class _Stub:
    """Inert stand-in for a global a checkpoint names: built, called, filled or given state, it does nothing.

    One subclass per global (``global_name``); its instances keep nothing of what the pickle passes them.
    """

    global_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:  # any construction is accepted
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return type(self)()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert stub for {self.global_name}>"


@functools.cache
def _allowed_globals() -> dict[str, Any]:
    """The globals a stubbing read resolves to real objects: what rebuilding plain tensors needs, nothing more."""
    allowed: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.UntypedStorage": torch.UntypedStorage,
        "torch.storage.UntypedStorage": torch.UntypedStorage,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        function = getattr(torch._utils, name, None)
        if function is not None:
            allowed[f"torch._utils.{name}"] = function
    allowed.update({f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    return allowed


class _StubbingUnpickler(pickle.Unpickler):
    """``find_class`` returns an allowlisted torch object or an inert :class:`_Stub` subclass; it never imports.

    Legacy storage types (``torch.FloatStorage`` ...) never reach it: ``torch.load`` maps them itself.
    """

    stubs: ClassVar[dict[str, type[_Stub]]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 spells Python 3's names the Python 2 way
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full_name = f"{module}.{name}"
        allowed = _allowed_globals().get(full_name)
        if allowed is not None:
            return allowed
        if full_name not in self.stubs:
            self.stubs[full_name] = type(f"Stub[{full_name}]", (_Stub,), {"global_name": full_name})
        return self.stubs[full_name]


class _StubbingPickleModule:
    """What ``torch.load(pickle_module=...)`` uses of a pickle module, reading through :class:`_StubbingUnpickler`.

    ``stubs`` collects, per instance, the globals the file named that were stubbed.
    """

    __name__ = "sampref_stubbing_pickle"

    def __init__(self) -> None:
        self.stubs: dict[str, type[_Stub]] = {}
        self.Unpickler = type("Unpickler", (_StubbingUnpickler,), {"stubs": self.stubs})

    def load(self, file: IO[bytes], **kwargs: Any) -> Any:
        return self.Unpickler(file, **kwargs).load()


def _is_torch_zip(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` zip archive (not the legacy format, not TorchScript)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("data.pkl") for n in names) and not any(n.endswith("constants.pkl") for n in names)


def _read_with_stubs(path: Path, refused: str) -> dict[str, torch.Tensor]:
    """Second reading of a file ``weights_only`` refused (for ``refused``): stubs for every other global."""
    if not _is_torch_zip(path):
        # torch.load(weights_only=False) would run TorchScript archives and legacy tar containers' hooks.
        raise _unrecoverable(path, refused, f"pickles a {refused} object besides its weights and is not a "
                             "torch.save zip archive (legacy format or TorchScript), which cannot be read safely")
    reader = _StubbingPickleModule()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=reader)
    except Exception as error:  # an allowlisted rebuild function was handed a stub, or the file is corrupt
        names = ", ".join(sorted(reader.stubs)) or refused
        raise _unrecoverable(path, names, "cannot rebuild its tensors once the globals it names are replaced by "
                             f"inert stubs ({type(error).__name__}: {error})") from None
    node, keys = _locate_state_dict(loaded)
    prefix = "".join(f"[{k!r}]" for k in keys)
    where = prefix or "the top level"
    if isinstance(node, Mapping):  # {"model": <a pickled nn.Module>}: the state dict itself is an object
        nested = next((k for k in _NESTING_KEYS if isinstance(node.get(k), _Stub)), None)
        if nested is not None:
            node, where = node[nested], f"{prefix}[{nested!r}]"
    if isinstance(node, _Stub):
        problem = (f"holds a pickled {node.global_name} object at {where} instead of a state dict (e.g. a whole "
                   "model saved with torch.save(model))")
        raise _unrecoverable(path, node.global_name, problem, allowlist=False)
    found = _find_stub(node)
    if found is not None:
        position, stub = found
        raise _unrecoverable(path, stub.global_name, f"has a pickled {stub.global_name} object among the weights "
                             f"it would keep, at {prefix + position}")
    state = {k: v.detach() for k, v in extract_state_dict(loaded, source=str(path)).items()}
    warnings.warn(
        f"{path} pickles Python objects besides its weights ({', '.join(sorted(reader.stubs))}); sampref read them "
        f"as inert stubs without importing or running them and dropped them, keeping the {len(state)} tensors "
        f"at {where}",
        UserWarning,
        stacklevel=3,
    )
    return state


def _find_stub(root: Any) -> tuple[str, _Stub | type[_Stub]] | None:
    """The first stub (instance or class) among the keys and values of the containers under ``root``, with its
    position (``['key'][0]``...), or None. Iterative, so a deeply nested pickle cannot exhaust the stack."""
    pending: list[tuple[str, Any]] = [("", root)]
    seen: set[int] = set()
    while pending:
        position, item = pending.pop()
        if isinstance(item, _Stub) or (isinstance(item, type) and issubclass(item, _Stub)):
            return position, item
        if id(item) in seen or not isinstance(item, Mapping | list | tuple | set | frozenset):
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            for key, value in item.items():
                pending += [(f"{position}[{key!r}]", key), (f"{position}[{key!r}]", value)]
        else:
            pending += [(f"{position}[{index}]", value) for index, value in enumerate(item)]
    return None


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
