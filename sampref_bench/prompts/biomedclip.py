"""BiomedCLIP + gScoreCAM: the text-driven saliency source of the unsupervised prompt pipeline.

The method (Konwer et al. 2025, arXiv 2503.04639, sec. 3.1, after MedCLIP-SAM, Koleilat et al., MICCAI 2024)
localises a target text such as ``"breast tumor"`` with gScoreCAM (Chen et al., ACCV 2022) on BiomedCLIP
(``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``, an open_clip ``CustomTextCLIP`` with a timm
ViT-B/16 image tower and a PubMedBERT text tower).

Weights are only ever read from disk; nothing here downloads. :func:`load_biomedclip` looks, in order, at

1. the ``path`` argument, then the directory named by ``$SAMPREF_BIOMEDCLIP``: a folder holding
   ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``, the file of the hub repository) and
   the weights ``open_clip_pytorch_model.bin`` (or ``open_clip_pytorch_model.safetensors`` /
   ``open_clip_model.safetensors``); ``hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
   --local-dir DIR`` on a machine with internet makes one. Open_clip builds BiomedCLIP's text tower from the
   Hugging Face model named in the config (``text_cfg.hf_model_name``), which needs that model's ``config.json``
   and tokenizer files (``vocab.txt`` / ``tokenizer.json`` / ``tokenizer_config.json``, no weights). They are
   taken from ``DIR/tokenizer/`` if present, else from ``DIR`` itself, else from the local Hugging Face cache;
   e.g. ``hf download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract config.json vocab.txt
   --local-dir DIR/tokenizer``. Towers that need no Hugging Face files (open_clip's own text transformer with
   its bundled BPE vocabulary) need nothing beyond the two files;
2. else the hub repository ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` in the local
   Hugging Face cache (offline: the cached snapshot folder is loaded like a directory of step 1).

gScoreCAM as implemented by :class:`GScoreCAM`, for an image ``I`` and a text ``t``:

* the image is resized (bicubic, antialiased, no crop, so the aspect ratio is not kept) to the tower's square
  input side ``S`` and normalised with the tower's mean/std; ``t`` is tokenized and embedded by the text tower;
* **ranking** -- one forward/backward pass: the cosine ``s`` of the L2-normalised image and text embeddings is
  differentiated with respect to the output ``A`` of the target layer; each channel's importance is its
  gradient averaged over all positions of that output (for ViT blocks: over every token, CLS / prefix tokens
  included; at the last block only the CLS token feeds the pooled embedding, so this is the CLS-token gradient
  that gScoreCAM uses for ViTs; for convolutional maps: over the spatial grid). Only if that gradient is
  identically zero (a layer the embedding does not depend on) are channels ranked by their mean activation.
  The ``topk`` channels with the largest (signed) importance are kept, ties broken by lower channel index;
* **scoring** -- ViT token activations drop the prefix (CLS / register) tokens and are reshaped to
  ``(C, h, w)`` on the patch grid. Each kept map ``A_k`` is upsampled bilinearly to ``S x S`` and min-max
  normalised to ``M_k`` in [0, 1] (a constant map gives 0); the normalised image is multiplied by ``M_k`` (masked
  pixels become the mean colour) and scored with the CLIP logit ``logit_scale * cos`` against ``t``; the channel
  weights are the softmax of these logits over the kept channels (as in the gScoreCAM reference code);
* **map** -- ``ReLU(sum_k w_k A_k)`` on the ``(h, w)`` grid (raw activations, as in ScoreCAM), upsampled
  bilinearly to the input's ``(H, W)`` and min-max normalised to [0, 1]; all zeros when nothing is positive
  (or the map is constant).

Default target layer: the last transformer block of the image tower (``trunk.blocks.<last>`` for timm ViT
towers such as BiomedCLIP's, ``transformer.resblocks.<last>`` for open_clip ViTs), else the last stage of a
convolutional tower (``layer4`` / ``trunk.stages.<last>``). MedCLIP-SAM hooks ``trunk.blocks.11.norm2``; any
dotted module path of ``model.visual`` can be given.

Everything is deterministic on CPU (no sampling; gradients only in the ranking pass, taken with
``torch.autograd.grad`` so no parameter ``.grad`` is touched); on CUDA, kernels may add float noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sampref_bench.utilities.errors import SamprefError

BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
ENV_VAR = "SAMPREF_BIOMEDCLIP"

#: The open_clip model description inside a weights directory.
CONFIG_NAME = "open_clip_config.json"
#: Accepted weights file names, in open_clip's order of preference.
WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
#: Optional sub-folder with the Hugging Face text model's config.json + tokenizer files.
TOKENIZER_DIR = "tokenizer"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHTS_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HASH_CACHE: dict[tuple[str, int, int], str] = {}

_FIX = (
    f"To fix: put {CONFIG_NAME} and open_clip_pytorch_model.bin (or .safetensors) of {BIOMEDCLIP_HUB} in one "
    f"directory (e.g. `hf download {BIOMEDCLIP_HUB.removeprefix('hf-hub:')} --local-dir DIR` on a machine with "
    f"internet), plus the text model's config.json and vocab.txt in DIR/{TOKENIZER_DIR}/, and pass DIR as path "
    f"or set {ENV_VAR}=DIR. Nothing is downloaded here."
)


@dataclass
class ClipBundle:
    """An open_clip model ready for saliency and text embedding.

    model: an open_clip ``CLIP`` / ``CustomTextCLIP`` in eval mode; tokenizer: list of texts -> ``(N, L)`` token
    ids; image_mean / image_std: per-channel RGB normalisation of [0, 1] images; image_size: the image tower's
    (square) input side in pixels; weights_id: filename-safe id of the weights, stable across runs.
    """

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_size: int
    weights_id: str


# ----------------------------------------------------------------------------------------------- loading


def load_biomedclip(path: str | os.PathLike | None = None) -> ClipBundle:
    """Load BiomedCLIP from a local directory, ``$SAMPREF_BIOMEDCLIP``, or the local Hugging Face cache.

    path (or ``$SAMPREF_BIOMEDCLIP`` when None): a directory with ``open_clip_config.json`` and
    ``open_clip_pytorch_model.bin`` (or ``.safetensors``), plus, for Hugging Face text towers such as
    BiomedCLIP's, the text model's ``config.json`` and tokenizer files in ``<dir>/tokenizer/`` (or ``<dir>``, or
    the local Hugging Face cache); see the module docstring. When neither is given, ``BIOMEDCLIP_HUB`` is
    looked up in the local Hugging Face cache only. Never downloads (offline mode is forced while loading).
    ``weights_id`` is ``"biomedclip-"`` + the first 16 hex digits of the weights file's SHA-256.

    Raises SamprefError naming the directory / files / environment variable / hub id expected and how to fix it.
    """
    if path is not None:
        return _load_dir(Path(path), f"the directory {os.fspath(path)!s}")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _load_dir(Path(env), f"the directory {env} (from the environment variable {ENV_VAR})")
    return _load_from_hub_cache()


def bundle_from_model(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                      weights_id: str) -> ClipBundle:
    """Wrap an already built open_clip model (put in eval mode) in a :class:`ClipBundle`.

    Mean/std come from ``model.visual.preprocess_cfg`` (else ``image_mean`` / ``image_std``, else open_clip's
    OpenAI defaults); the input side from ``model.visual.image_size`` (an int or a square ``(h, w)``).
    weights_id must be filename-safe (letters, digits, ``.``, ``_``, ``-``).
    """
    if not isinstance(weights_id, str) or not _WEIGHTS_ID.fullmatch(weights_id):
        raise ValueError(f"weights_id must be filename-safe ([A-Za-z0-9._-], not starting with . _ -): {weights_id!r}")
    visual = getattr(model, "visual", None)
    if visual is None:
        raise TypeError(f"{type(model).__name__} has no .visual image tower; expected an open_clip CLIP model")
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or _OPENAI_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or _OPENAI_STD
    size = getattr(visual, "image_size", None)
    if size is None:
        size = cfg.get("size")
    sizes = (int(size),) * 2 if isinstance(size, int | np.integer) else tuple(int(s) for s in size)
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise SamprefError(f"only square image towers are supported; {type(visual).__name__} takes {size}")
    if len(mean) != 3 or len(std) != 3:
        raise SamprefError(f"expected RGB mean/std of 3 values each, got mean={mean} std={std}")
    model.eval()
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        image_mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
        image_std=tuple(float(v) for v in std),  # type: ignore[arg-type]
        image_size=sizes[0],
        weights_id=weights_id,
    )


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    """Force Hugging Face offline mode (environment and huggingface_hub's cached flag), restoring both after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {key: os.environ.get(key) for key in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    constants: Any = None
    saved_flag = None
    try:
        import huggingface_hub.constants as constants

        saved_flag = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
        constants = None
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hub_cache_root() -> str:
    import huggingface_hub.constants as constants

    return str(constants.HF_HUB_CACHE)


def _cached_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` of ``repo_id`` in the local Hugging Face cache (never the network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id, name)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _load_from_hub_cache() -> ClipBundle:
    repo_id = BIOMEDCLIP_HUB.removeprefix("hf-hub:")
    config = _cached_file(repo_id, (CONFIG_NAME,))
    if config is None:
        raise SamprefError(
            f"BiomedCLIP weights not found: no path was given, {ENV_VAR} is not set, and {BIOMEDCLIP_HUB} is not "
            f"in the local Hugging Face cache ({_hub_cache_root()}). {_FIX}"
        )
    return _load_dir(config.parent, f"the Hugging Face cache snapshot {config.parent} of {BIOMEDCLIP_HUB}")


def _load_dir(directory: Path, source: str) -> ClipBundle:
    """Build the model of ``directory/open_clip_config.json`` and load its weights file (offline)."""
    expected = f"{CONFIG_NAME} and one of {', '.join(WEIGHTS_NAMES)}"
    if not directory.is_dir():
        raise SamprefError(f"BiomedCLIP: {source} does not exist or is not a directory; expected a directory "
                           f"holding {expected}. {_FIX}")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise SamprefError(f"BiomedCLIP: {config_path} is missing ({source} must hold {expected}). {_FIX}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SamprefError(f"BiomedCLIP: {config_path} is not readable JSON ({err}). {_FIX}") from err
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise SamprefError(f"BiomedCLIP: {config_path} has no 'model_cfg' object (the format of the "
                           f"{CONFIG_NAME} of {BIOMEDCLIP_HUB}). {_FIX}")
    weights = next((directory / name for name in WEIGHTS_NAMES if (directory / name).is_file()), None)
    if weights is None:
        raise SamprefError(f"BiomedCLIP: no weights file in {source}; expected one of {', '.join(WEIGHTS_NAMES)} "
                           f"next to {CONFIG_NAME}. {_FIX}")

    import open_clip

    text_cfg = dict(config["model_cfg"].get("text_cfg") or {})
    overrides: dict[str, Any] = {}
    with _offline_hub():
        if text_cfg.get("hf_model_name"):
            # open_clip builds the Hugging Face text tower from its config.json: point it at a local copy.
            text_cfg["hf_model_name"] = str(_hf_dir(directory, str(text_cfg["hf_model_name"]), want_config=True))
            text_cfg["hf_model_pretrained"] = False
            overrides["text_cfg"] = text_cfg
        tokenizer_dir = None
        if text_cfg.get("hf_tokenizer_name"):
            tokenizer_dir = _hf_dir(directory, str(text_cfg["hf_tokenizer_name"]), want_config=False)
        # The weights are loaded below (to tell a bad weights file from a bad config): silence open_clip's
        # "initialized randomly" warning about the bare model.
        quiet = _DropMessage("initialized randomly")
        logging.getLogger().addFilter(quiet)
        try:
            model = open_clip.create_model(f"local-dir:{directory}", load_weights=False, pretrained_image=False,
                                           pretrained_text=False, **overrides)
            if tokenizer_dir is not None:
                tokenizer = open_clip.tokenizer.HFTokenizer(
                    str(tokenizer_dir),
                    context_length=text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH),
                    tokenizer_mode=text_cfg.get("tokenizer_mode"),
                    **dict(text_cfg.get("tokenizer_kwargs") or {}),
                )
            else:
                tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")
        except Exception as err:  # open_clip / timm / transformers raise many types
            raise SamprefError(f"BiomedCLIP: could not build the model described by {config_path}: "
                               f"{type(err).__name__}: {_short(err)}. {_FIX}") from err
        finally:
            logging.getLogger().removeFilter(quiet)
        try:
            open_clip.load_checkpoint(model, str(weights), strict=True)
        except Exception as err:  # torch.load / load_state_dict raise many types
            raise SamprefError(f"BiomedCLIP: {weights} is not an open_clip state dict matching {config_path} "
                               f"({type(err).__name__}: {_short(err)}); expected the weights file of "
                               f"{BIOMEDCLIP_HUB} (or of the model that config describes). {_FIX}") from err
    return bundle_from_model(model, tokenizer, f"biomedclip-{_sha256(weights)[:16]}")


class _DropMessage(logging.Filter):
    """Drop log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _hf_dir(directory: Path, name: str, want_config: bool) -> Path:
    """A local folder with the Hugging Face text model ``name``'s config.json (``want_config``) or tokenizer files:
    ``directory/tokenizer``, ``directory``, ``name`` itself if it is a folder, else its local HF cache snapshot."""

    def usable(folder: Path) -> bool:
        if want_config:
            return _is_hf_config(folder / "config.json")
        return any((folder / f).is_file() for f in _TOKENIZER_FILES)

    for folder in (directory / TOKENIZER_DIR, directory, Path(name)):
        if folder.is_dir() and usable(folder):
            return folder
    found = _cached_file(name, ("config.json",) if want_config else _TOKENIZER_FILES)
    if found is not None:
        return found.parent
    what = "config.json" if want_config else "tokenizer files (vocab.txt / tokenizer.json / tokenizer_config.json)"
    raise SamprefError(
        f"BiomedCLIP: the text tower is the Hugging Face model {name} (text_cfg of {directory / CONFIG_NAME}), but "
        f"its {what} are in none of {directory / TOKENIZER_DIR}, {directory} or the local Hugging Face cache "
        f"({_hub_cache_root()}). Put that model's config.json and vocab.txt (no weights needed) in "
        f"{directory / TOKENIZER_DIR}, e.g. `hf download {name} config.json vocab.txt --local-dir "
        f"{directory / TOKENIZER_DIR}` on a machine with internet. Nothing is downloaded here."
    )


def _is_hf_config(path: Path) -> bool:
    try:
        return path.is_file() and "model_type" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def _short(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, memoised per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 23), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


# ----------------------------------------------------------------------------------------------- text


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _text_features(bundle: ClipBundle, texts: list[str]) -> torch.Tensor:
    """``(N, D)`` float32 L2-normalised text embeddings on the model's device."""
    device, _ = _device_dtype(bundle.model)
    tokens = bundle.tokenizer(texts)
    tokens = torch.as_tensor(tokens).to(device)
    with torch.no_grad():
        features = bundle.model.encode_text(tokens)
    return F.normalize(features.float(), dim=-1)


def encode_texts(bundle: ClipBundle, texts: list[str]) -> np.ndarray:
    """Text-tower embeddings: ``(N, D)`` float32, each row L2-normalised (unit norm); ``(0, D)`` for no texts."""
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of texts, not one string")
    texts = [str(t) for t in texts]
    if not texts:
        width = _text_features(bundle, [""]).shape[1]
        return np.zeros((0, width), np.float32)
    return _text_features(bundle, texts).cpu().numpy().astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------- gScoreCAM


def _block_layers(visual: nn.Module) -> list[str]:
    """Dotted names of the children of every ModuleList / Sequential of the tower (its blocks and stages)."""
    names = []
    for name, module in visual.named_modules():
        if name and isinstance(module, nn.ModuleList | nn.Sequential):
            names.extend(f"{name}.{child}" for child, _ in module.named_children())
    return names


def default_target_layer(visual: nn.Module) -> str:
    """The last transformer block (timm ``trunk.blocks``, open_clip ``transformer.resblocks``, ``blocks``) of an
    image tower, else its last convolutional stage (``layer4``, ``stages``)."""
    for prefix, owner in (("trunk.", getattr(visual, "trunk", None)), ("", visual)):
        if owner is None:
            continue
        for attr in ("blocks", "transformer.resblocks", "stages"):
            seq: Any = owner
            for part in attr.split("."):
                seq = getattr(seq, part, None)
            if isinstance(seq, nn.ModuleList | nn.Sequential) and len(seq) > 0:
                return f"{prefix}{attr}.{len(seq) - 1}"
        if isinstance(getattr(owner, "layer4", None), nn.Module):
            return f"{prefix}layer4"
    raise SamprefError(f"no default gScoreCAM target layer for a {type(visual).__name__} image tower; pass "
                       f"target_layer= one of: {', '.join(_block_layers(visual)[:50]) or '(none found)'}")


def _token_grid(visual: nn.Module, num_tokens: int) -> tuple[int, int, int]:
    """``(h, w, prefix)``: the patch grid of a ``num_tokens``-token sequence and its number of leading tokens."""
    grids = []
    for owner in (visual, getattr(visual, "trunk", None)):
        if owner is None:
            continue
        for holder in (owner, getattr(owner, "patch_embed", None)):
            grid = getattr(holder, "grid_size", None) if holder is not None else None
            if grid is not None:
                grids.append(tuple(int(g) for g in grid))
    for grid in grids:
        if len(grid) == 2 and 0 < grid[0] * grid[1] <= num_tokens <= grid[0] * grid[1] + 16:
            return grid[0], grid[1], num_tokens - grid[0] * grid[1]
    for prefix in range(0, 17):
        side = math.isqrt(max(num_tokens - prefix, 0))
        if side > 0 and side * side == num_tokens - prefix:
            return side, side, prefix
    raise SamprefError(f"cannot map {num_tokens} tokens of the target layer onto a patch grid")


def _maps_and_importance(out: torch.Tensor, grad: torch.Tensor, visual: nn.Module
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C, h, w)`` activation maps, ``(C,)`` mean gradient and ``(C,)`` mean activation of one image's layer output.

    Accepts ``(1, C, h, w)`` feature maps and ``(1, T, C)`` / ``(T, 1, C)`` token sequences (prefix tokens first).
    """
    if out.ndim == 4 and out.shape[0] == 1:
        maps, g = out[0], grad[0]
        return maps, g.mean(dim=(1, 2)), maps.mean(dim=(1, 2))
    if out.ndim == 3 and 1 in out.shape[:2]:
        tokens, g = (out[0], grad[0]) if out.shape[0] == 1 else (out[:, 0], grad[:, 0])
        h, w, prefix = _token_grid(visual, tokens.shape[0])
        maps = tokens[prefix:].transpose(0, 1).reshape(tokens.shape[1], h, w)
        return maps, g.mean(dim=0), tokens.mean(dim=0)
    raise SamprefError(f"the gScoreCAM target layer must output (1, C, h, w) maps or (1, T, C) tokens for one "
                       f"image; it gave shape {tuple(out.shape)}")


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise over the last two axes; constant slices become 0."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


class GScoreCAM:
    """gScoreCAM saliency of a text on an image (see the module docstring for the exact algorithm).

    target_layer: dotted module path inside ``model.visual`` (default :func:`default_target_layer`: the last
    transformer block, e.g. ``trunk.blocks.11`` for BiomedCLIP); topk: number of channels kept by gradient
    ranking (clipped to the layer's channel count); batch_size: masked images per forward pass.
    """

    def __init__(self, bundle: ClipBundle, target_layer: str | None = None, topk: int = 300,
                 batch_size: int = 32) -> None:
        if int(topk) < 1 or int(batch_size) < 1:
            raise ValueError(f"topk and batch_size must be >= 1 (got {topk}, {batch_size})")
        self.bundle = bundle
        visual = bundle.model.visual
        self.target_layer = default_target_layer(visual) if target_layer is None else str(target_layer)
        modules = dict(visual.named_modules())
        if not self.target_layer or self.target_layer not in modules:
            layers = _block_layers(visual)
            shown = ", ".join(layers[:60]) + (" ..." if len(layers) > 60 else "")
            raise SamprefError(f"unknown gScoreCAM target layer {self.target_layer!r} in the "
                               f"{type(visual).__name__} image tower; available block layers: {shown} (any dotted "
                               f"name from model.visual.named_modules() is accepted)")
        self._module = modules[self.target_layer]
        self.topk = int(topk)
        self.batch_size = int(batch_size)
        #: After a call: indices of the channels used, most important first (int64).
        self.last_channels = np.zeros(0, np.int64)

    def settings(self) -> dict:
        """Everything that determines the output: the cache key of saliency maps."""
        return {"method": "gscorecam", "target_layer": self.target_layer, "topk": self.topk,
                "weights_id": self.bundle.weights_id}

    def _preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` in [0, 1] -> ``(1, 3, S, S)`` normalised, on the model's device and dtype."""
        side = self.bundle.image_size
        x = image[None]
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)
        mean = torch.tensor(self.bundle.image_mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.bundle.image_std, dtype=x.dtype).view(1, 3, 1, 1)
        device, dtype = _device_dtype(self.bundle.model)
        return ((x - mean) / std).to(device=device, dtype=dtype)

    def _rank_pass(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward/backward pass: ``(C, h, w)`` float32 maps and ``(C,)`` channel importance."""
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, tuple | list) else output
            if torch.is_tensor(tensor):
                captured.append(tensor)

        handle = self._module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                leaf = x.detach().clone().requires_grad_(True)
                image = self.bundle.model.encode_image(leaf)
                if not captured:
                    raise SamprefError(f"gScoreCAM target layer {self.target_layer!r} did not run (or gave no "
                                       f"tensor) during encode_image")
                out = captured[-1]
                score = (F.normalize(image.float(), dim=-1)[0] * text).sum()
                (grad,) = torch.autograd.grad(score, out, allow_unused=True)
        finally:
            handle.remove()
        out = out.detach().float()
        grad = torch.zeros_like(out) if grad is None else grad.float()
        maps, importance, mean_activation = _maps_and_importance(out, grad, self.bundle.model.visual)
        if not bool(importance.abs().gt(0).any()):
            importance = mean_activation
        return maps, importance

    def __call__(self, image01: np.ndarray, text: str) -> np.ndarray:
        """Saliency of ``text`` on ``image01`` ((3, H, W) float RGB in [0, 1], any size): (H, W) float32 in
        [0, 1] at the input size, all zeros when no location scores positive."""
        image = _as_image(image01)
        height, width = image.shape[1:]
        model = self.bundle.model
        x = self._preprocess(image)
        text_feature = _text_features(self.bundle, [str(text)])[0]
        maps, importance = self._rank_pass(x, text_feature)

        keep = min(self.topk, maps.shape[0])
        order = torch.sort(importance.cpu(), descending=True, stable=True).indices
        channels = order[:keep].to(maps.device)
        self.last_channels = order[:keep].numpy().astype(np.int64)
        kept = maps[channels]

        side = self.bundle.image_size
        with torch.no_grad():
            masks = _minmax(F.interpolate(kept[:, None], size=(side, side), mode="bilinear", align_corners=False))
            scale = getattr(model, "logit_scale", None)
            scale = float(scale.exp()) if torch.is_tensor(scale) else 1.0
            logits = []
            for start in range(0, keep, self.batch_size):
                batch = x * masks[start:start + self.batch_size].to(x.dtype)
                features = F.normalize(model.encode_image(batch).float(), dim=-1)
                logits.append(scale * (features @ text_feature))
            weights = torch.softmax(torch.cat(logits), dim=0)
            cam = torch.relu(torch.einsum("k,khw->hw", weights, kept))
            if not bool((cam > 0).any()):
                return np.zeros((height, width), np.float32)
            cam = F.interpolate(cam[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            cam = _minmax(cam.clamp_min(0.0))
        return cam.cpu().numpy().astype(np.float32).clip(0.0, 1.0)


def _as_image(image01: np.ndarray) -> torch.Tensor:
    """Validate a ``(3, H, W)`` float RGB image in [0, 1]; return it as a float32 CPU tensor."""
    arr = np.asarray(image01)
    if arr.ndim != 3 or arr.shape[0] != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"image01 must be a (3, H, W) RGB array; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image01 must be float in [0, 1]; got dtype {arr.dtype} (divide uint8 images by 255)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image01 has NaN or infinite values")
    if arr.min() < -1e-3 or arr.max() > 1.0 + 1e-3:
        raise ValueError(f"image01 must lie in [0, 1]; got {arr.min():.3g}..{arr.max():.3g}")
    return torch.from_numpy(np.clip(arr, 0.0, 1.0))
