"""BiomedCLIP, loaded offline: the model behind the text-driven saliency source and the text encoder.

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

gScoreCAM on a loaded bundle lives in :mod:`sampref_bench.prompts.gscorecam`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


def device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def text_features(bundle: ClipBundle, texts: list[str]) -> torch.Tensor:
    """``(N, D)`` float32 L2-normalised text embeddings on the model's device."""
    device, _ = device_dtype(bundle.model)
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
        width = text_features(bundle, [""]).shape[1]
        return np.zeros((0, width), np.float32)
    return text_features(bundle, texts).cpu().numpy().astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------- gScoreCAM
