"""Image-embedding cache for frozen image encoders.

An encoder pass costs about 3 s per image for LiteMedSAM on two CPU cores, so every trainer, fraction
and fold of a dataset shares one cache, computed once per (encoder weights, preprocessing, case):
``{preprocessed plan folder}/cache/embeddings/{weights_id}-{preprocessing hash}/{case}.npy`` (the weights ID
starts with the flavour name, e.g. ``litemedsam-256-79d8c9dca6db4d69``)
holds the ``(S, 256, E, E)`` float16 embeddings of the case's ``S`` slices. A change of weights or of the
plan changes the folder name, so stale embeddings are never read; ``prune_stale`` deletes old folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sampref_bench.utilities.arrays import load_npy, save_npy_atomic
from sampref_bench.utilities.atomic import load_json


class EmbeddingCache:
    """Compute-once, memory-mapped embeddings of every slice of a case.

    ``data`` is a :class:`~sampref_bench.trainers.data.PreprocessedData`; ``model`` a SAM model exposing
    ``flavour``, ``weights_id``, ``normalize_input`` and ``image_encoder``.
    """

    def __init__(self, data: Any, model: Any, device: torch.device | str = "cpu", batch_size: int = 4) -> None:
        self.data = data
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        pre_hash = load_json(data.data_dir / "preprocessing.json")["inputs_hash"]
        self.root = data.data_dir / "cache" / "embeddings"
        self.folder = self.root / f"{model.weights_id}-{pre_hash}"
        self._loaded: dict[str, np.ndarray] = {}

    def path(self, case: str) -> Path:
        """File of one case's embeddings."""
        return self.folder / f"{case}.npy"

    @torch.no_grad()
    def _compute(self, case: str) -> None:
        n_slices = self.data.meta(case)["n_slices"]
        chunks = []
        encoder = self.model.image_encoder
        was_training = encoder.training
        encoder.eval()
        for start in range(0, n_slices, self.batch_size):
            images = torch.from_numpy(self.data.rgb(case, slice(start, start + self.batch_size))).to(self.device)
            chunks.append(self.model.embed(images).float().cpu().numpy().astype(np.float16))
        encoder.train(was_training)
        save_npy_atomic(self.path(case), np.concatenate(chunks))

    def ensure(self, cases: list[str], progress: bool = True) -> None:
        """Compute the embeddings of every case in ``cases`` that is not cached yet."""
        missing = [c for c in cases if not self.path(c).is_file()]
        for case in tqdm(missing, desc=f"embed ({self.model.flavour})", unit="case", disable=not progress):
            self._compute(case)

    def get(self, case: str) -> np.ndarray:
        """``(S, 256, E, E)`` float16 memory-mapped embeddings of ``case`` (computed if missing)."""
        if case not in self._loaded:
            if not self.path(case).is_file():
                self._compute(case)
            self._loaded[case] = load_npy(self.path(case))
        return self._loaded[case]

    def prune_stale(self) -> list[Path]:
        """Delete cache folders of this flavour made for other weights or plans; return them."""
        removed = []
        for folder in self.root.glob(f"{self.model.flavour}-*"):
            if folder != self.folder and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed
