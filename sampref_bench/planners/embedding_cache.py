"""Image-embedding cache for frozen image encoders, shared by every plan, trainer, fraction and fold.

An encoder pass costs about 2-3 s per image for LiteMedSAM on two CPU cores, so each (weights, slice image)
is embedded once. An embedding is determined by the encoder weights and the image it is fed, nothing else,
so that is all the cache is keyed on:
``$SAMPREF_preprocessed/DatasetXXX_Name/embeddings/{embedding_id}/{case}_{slice:04d}_{key}.npy`` holds the
``(256, E, E)`` float16 embedding of one slice; the model's ``embedding_id`` is its ``weights_id`` (flavour, input
size and weights digest, e.g. ``litemedsam-256-79d8c9dca6db4d69``), followed by ``-in{N}`` for an input
convention N above 1 (``vit_b-256-<digest>-in2``: SAM flavours whose padding reaches the encoder as 0 after
normalization; see :mod:`sampref_bench.models.flavours`). ``key`` digests the case's preprocessed image
(``image_digest`` in its metadata) and the plan's channel-to-RGB mapping. Replanning with other fractions,
thresholds or batch size changes neither, so the cache survives it; a change of image size or
normalization changes the key, so a stale embedding is never read (:meth:`EmbeddingCache.prune_stale`
deletes such files).

Only what a trainer reads is embedded: the slices it trains on, and every slice of its validation cases.
Every slice reaches the encoder with its valid region (:func:`embed_slices`), so its padding is what the
flavour's own code feeds there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.utilities.arrays import load_npy, save_npy_atomic
from sampref_bench.utilities.hashing import image_key

SlicePair = tuple[str, int]


def slice_valid_sizes(data: Any, pairs: Iterable[SlicePair]) -> list[tuple[int, int]]:
    """``(h, w)`` in px of each slice's valid (resized, unpadded) region, from its case's ``transform`` metadata.

    ``data`` is a :class:`~sampref_bench.planners.data.PreprocessedData` (anything with ``meta(case)``).
    """
    return [SliceTransform.from_dict(data.meta(case)["transform"]).valid_size for case, _ in pairs]


def embed_slices(model: Any, data: Any, pairs: Iterable[SlicePair],
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, 256, E, E)`` image embeddings of preprocessed slices ``(case, slice)``, gradients kept.

    Feeds ``model.embed`` the ``(B, 3, S, S)`` [0, 1] images of ``data.rgb`` together with each slice's valid size
    (:func:`slice_valid_sizes`), so the padding reaches the encoder as the flavour's own code pads. The one way
    preprocessed slices enter an image encoder: the cache and trainers with a trainable encoder both use it.
    """
    pairs = list(pairs)
    images = np.concatenate([data.rgb(case, [int(k)]) for case, k in pairs])
    return model.embed(torch.from_numpy(images).to(device), valid_sizes=slice_valid_sizes(data, pairs))


class EmbeddingCache:
    """Compute-once, memory-mapped per-slice embeddings.

    ``data`` is a :class:`~sampref_bench.planners.data.PreprocessedData` (label-free); ``model`` a SAM model
    exposing ``embedding_id`` (or ``weights_id``) and ``embed``. ``root`` defaults to the dataset's ``embeddings/``
    folder beside the plan's data folder; :attr:`folder` is ``root / embedding_id``. :attr:`computed` counts the
    embeddings this object has computed.
    """

    def __init__(self, data: Any, model: Any, device: torch.device | str = "cpu", batch_size: int = 4,
                 root: Path | None = None) -> None:
        self.data = data
        self.model = model
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.root = Path(root) if root is not None else Path(data.data_dir).parent / "embeddings"
        self.folder = self.root / getattr(model, "embedding_id", model.weights_id)
        self.computed = 0
        self._keys: dict[str, str] = {}

    def key(self, case: str) -> str:
        """12 hex digits naming what the encoder sees of ``case`` (:func:`image_key`)."""
        if case not in self._keys:
            self._keys[case] = image_key(self.data, case)
        return self._keys[case]

    def path(self, case: str, slice_index: int) -> Path:
        """File of one slice's embedding."""
        return self.folder / f"{case}_{int(slice_index):04d}_{self.key(case)}.npy"

    def missing(self, pairs: Iterable[SlicePair]) -> list[SlicePair]:
        """The (case, slice) pairs of ``pairs`` not cached yet, without repeats, in first-seen order."""
        seen: dict[SlicePair, None] = {}
        for case, k in pairs:
            if (case, int(k)) not in seen and not self.path(case, k).is_file():
                seen[(case, int(k))] = None
        return list(seen)

    @torch.no_grad()
    def _compute(self, pairs: list[SlicePair]) -> None:
        encoder = self.model.image_encoder
        was_training = encoder.training
        encoder.eval()
        try:
            embedded = embed_slices(self.model, self.data, pairs, self.device).float().cpu().numpy()
        finally:
            encoder.train(was_training)
        for (case, k), array in zip(pairs, embedded):
            save_npy_atomic(self.path(case, k), array.astype(np.float16))
        self.computed += len(pairs)

    def ensure(self, pairs: Iterable[SlicePair], progress: bool = True) -> int:
        """Embed every pair not cached yet (in batches); return how many were computed.

        With ``progress`` on, one line reports how many were new and the cache's size on disk.
        """
        pairs = list(pairs)
        todo = self.missing(pairs)
        with tqdm(total=len(todo), desc=f"embed ({self.folder.name})", unit="slice",
                  disable=not progress or not todo) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                self._compute(chunk)
                bar.update(len(chunk))
        if progress:
            n_files, n_bytes = self.size_on_disk()
            print(f"embedding cache {self.folder}: {len(todo)} new of {len(set(pairs))} slices read; {n_files} "
                  f"slices, {n_bytes / 2**20:.1f} MiB on disk", flush=True)
        return len(todo)

    def get(self, case: str, slice_index: int) -> np.ndarray:
        """``(256, E, E)`` float16 memory-mapped embedding of one slice (computed if missing)."""
        path = self.path(case, slice_index)
        if not path.is_file():
            self._compute([(case, int(slice_index))])
        return load_npy(path)

    def size_on_disk(self) -> tuple[int, int]:
        """``(files, bytes)`` of this weights' cache folder."""
        files = [p for p in self.folder.glob("*.npy")] if self.folder.is_dir() else []
        return len(files), sum(p.stat().st_size for p in files)

    def prune_stale(self, cases: Iterable[str]) -> list[Path]:
        """Delete this weights' cached slices of ``cases`` whose key no longer matches the preprocessed image."""
        removed = []
        for case in cases:
            current = self.key(case)
            for path in self.folder.glob(f"{case}_[0-9][0-9][0-9][0-9]_*.npy"):
                if path.stem.rsplit("_", 2)[0] == case and path.stem.rsplit("_", 1)[1] != current:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed
