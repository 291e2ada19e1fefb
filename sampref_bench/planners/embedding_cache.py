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

Augmented views. A frozen encoder trains on a few fixed augmentations of each training slice
(:func:`~sampref_bench.planners.augmentation.view_specs`), each embedded once: the embedding of view ``v`` of a
slice is ``{case}_{slice:04d}_{key}_v{v.key}.npy`` in the same folder, where ``v.key`` digests the view's
parameters (:attr:`~sampref_bench.planners.augmentation.ViewSpec.key`), never its index, a fold or a fraction.
The identity view (view 0) is the unaugmented file above, byte for byte, so caches written before views existed
stay valid. Validation and prediction read the identity view only.

Activations. The partial configuration (:mod:`sampref_bench.models.encoder_split`) caches the frozen trunk's
activations instead, keyed the same way, in ``embeddings/{embedding_id}-trunk{N}/`` (N the split's
``trainable_stages``): :class:`ActivationCache`. They are stored in float32, so that the tail's output from a
cached copy equals the full encoder's bit for bit; that costs 4 bytes per value: LiteMedSAM at
``trainable_stages=1`` stores (4096, 320) float32 = 5.2 MB (5.0 MiB) per slice and view (1 000 slices with 4
views: about 21 GB), against 256 x 64 x 64 x 2 bytes = 2.1 MB for its float16 embedding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sampref_bench.planners.augmentation import ViewSpec, apply_view
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.utilities.arrays import load_npy, save_npy_atomic
from sampref_bench.utilities.hashing import image_key

SlicePair = tuple[str, int]


def slice_valid_sizes(data: Any, pairs: Iterable[SlicePair]) -> list[tuple[int, int]]:
    """``(h, w)`` in px of each slice's valid (resized, unpadded) region, from its case's ``transform`` metadata.

    ``data`` is a :class:`~sampref_bench.planners.data.PreprocessedData` (anything with ``meta(case)``).
    """
    return [SliceTransform.from_dict(data.meta(case)["transform"]).valid_size for case, _ in pairs]


def view_images(data: Any, pairs: Iterable[SlicePair], view: ViewSpec | None = None) -> np.ndarray:
    """``(B, 3, S, S)`` float32 [0, 1] images of ``data.rgb`` for ``pairs``, each in ``view``
    (:func:`~sampref_bench.planners.augmentation.apply_view` on its valid region); ``None`` or the identity view:
    the images as stored."""
    pairs = list(pairs)
    images = np.concatenate([data.rgb(case, [int(k)]) for case, k in pairs])
    if view is None or view.is_identity:
        return images
    sizes = slice_valid_sizes(data, pairs)
    return np.stack([apply_view(image, None, size, view)[0] for image, size in zip(images, sizes)])


def embed_slices(model: Any, data: Any, pairs: Iterable[SlicePair],
                 device: torch.device | str = "cpu", view: ViewSpec | None = None) -> torch.Tensor:
    """``(B, 256, E, E)`` image embeddings of preprocessed slices ``(case, slice)``, gradients kept.

    Feeds ``model.embed`` the ``(B, 3, S, S)`` [0, 1] images of ``data.rgb`` (in ``view``, :func:`view_images`)
    together with each slice's valid size (:func:`slice_valid_sizes`), so the padding reaches the encoder as the
    flavour's own code pads. The one way preprocessed slices enter an image encoder: the cache and trainers with a
    trainable encoder both use it.
    """
    pairs = list(pairs)
    images = view_images(data, pairs, view)
    return model.embed(torch.from_numpy(images).to(device), valid_sizes=slice_valid_sizes(data, pairs))


def view_suffix(view: ViewSpec | None) -> str:
    """File-name suffix of a view: ``""`` for ``None`` and the identity view, else ``_v{view.key}``."""
    return "" if view is None or view.is_identity else f"_v{view.key}"


def _views(views: Iterable[ViewSpec | None] | None) -> list[ViewSpec | None]:
    return [None] if views is None else list(views)


class EmbeddingCache:
    """Compute-once, memory-mapped per-slice (and per-view) embeddings.

    ``data`` is a :class:`~sampref_bench.planners.data.PreprocessedData` (label-free); ``model`` a SAM model
    exposing ``embedding_id`` (or ``weights_id``) and ``embed``. ``root`` defaults to the dataset's ``embeddings/``
    folder beside the plan's data folder; :attr:`folder` is ``root / embedding_id``. :attr:`computed` counts the
    arrays (slice-views) this object has computed. Every method takes an optional ``view``
    (:class:`~sampref_bench.planners.augmentation.ViewSpec`); ``None`` and the identity view are the unaugmented
    slice, the file of a cache written before views existed.
    """

    #: dtype of the stored arrays.
    dtype: Any = np.float16

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

    def path(self, case: str, slice_index: int, view: ViewSpec | None = None) -> Path:
        """File of one slice's array in ``view``: ``{case}_{slice:04d}_{key}.npy`` for the identity,
        ``{case}_{slice:04d}_{key}_v{view.key}.npy`` for another view."""
        return self.folder / f"{case}_{int(slice_index):04d}_{self.key(case)}{view_suffix(view)}.npy"

    def missing(self, pairs: Iterable[SlicePair], view: ViewSpec | None = None) -> list[SlicePair]:
        """The (case, slice) pairs of ``pairs`` not cached yet in ``view``, without repeats, in first-seen order."""
        seen: dict[SlicePair, None] = {}
        for case, k in pairs:
            if (case, int(k)) not in seen and not self.path(case, k, view).is_file():
                seen[(case, int(k))] = None
        return list(seen)

    def encode(self, pairs: list[SlicePair], view: ViewSpec | None = None) -> torch.Tensor:
        """``(B, 256, E, E)`` embeddings of ``pairs`` in ``view``, without gradients, the encoder in eval mode:
        what the cache stores (before the cast to :attr:`dtype`)."""
        encoder = self.model.image_encoder
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                return embed_slices(self.model, self.data, pairs, self.device, view=view)
        finally:
            encoder.train(was_training)

    def _compute(self, pairs: list[SlicePair], view: ViewSpec | None = None) -> None:
        arrays = self.encode(pairs, view).float().cpu().numpy()
        for (case, k), array in zip(pairs, arrays):
            save_npy_atomic(self.path(case, k, view), array.astype(self.dtype))
        self.computed += len(pairs)

    def ensure(self, pairs: Iterable[SlicePair], progress: bool = True,
               views: Iterable[ViewSpec | None] | None = None) -> int:
        """Compute every pair not cached yet (in batches) in each of ``views`` (``None``: the identity view only);
        return how many slice-views were computed.

        With ``progress`` on, one line reports how many were new and the cache's size on disk.
        """
        pairs = list(pairs)
        views = _views(views)
        todo = [(view, self.missing(pairs, view)) for view in views]
        total = sum(len(missing) for _, missing in todo)
        with tqdm(total=total, desc=f"embed ({self.folder.name})", unit="slice",
                  disable=not progress or not total) as bar:
            for view, missing in todo:
                for start in range(0, len(missing), self.batch_size):
                    chunk = missing[start:start + self.batch_size]
                    self._compute(chunk, view)
                    bar.update(len(chunk))
        if progress:
            n_files, n_bytes = self.size_on_disk()
            read = len(set(pairs)) * len(views)
            what = "slices" if len(views) == 1 and views[0] is None else f"slice-views ({len(views)} views)"
            print(f"embedding cache {self.folder}: {total} new of {read} {what} read; {n_files} "
                  f"slices, {n_bytes / 2**20:.1f} MiB on disk", flush=True)
        return total

    def get(self, case: str, slice_index: int, view: ViewSpec | None = None) -> np.ndarray:
        """Memory-mapped array of one slice in ``view`` (computed if missing): ``(256, E, E)`` float16."""
        path = self.path(case, slice_index, view)
        if not path.is_file():
            self._compute([(case, int(slice_index))], view)
        return load_npy(path)

    def size_on_disk(self) -> tuple[int, int]:
        """``(files, bytes)`` of this cache's folder (every view)."""
        files = [p for p in self.folder.glob("*.npy")] if self.folder.is_dir() else []
        return len(files), sum(p.stat().st_size for p in files)

    def prune_stale(self, cases: Iterable[str]) -> list[Path]:
        """Delete this folder's cached slices of ``cases`` (every view) whose image key no longer matches the
        preprocessed image."""
        removed = []
        for case in cases:
            current = self.key(case)
            for path in self.folder.glob(f"{case}_[0-9][0-9][0-9][0-9]_*.npy"):
                parsed = parse_name(path.name)
                if parsed is not None and parsed[0] == case and parsed[2] != current:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed


def parse_name(name: str) -> tuple[str, int, str, str | None] | None:
    """``(case, slice, image key, view key or None)`` of a cache file name (:meth:`EmbeddingCache.path`), or
    ``None`` for a name of another form. The image key is hex, so a last part ``v...`` is always a view key."""
    if not name.endswith(".npy"):
        return None
    stem = name[:-4]
    view = None
    head, _, last = stem.rpartition("_")
    if last.startswith("v") and head:
        view = last[1:]
        stem = head
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or len(parts[1]) != 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], view


class ActivationCache(EmbeddingCache):
    """Compute-once trunk activations of the partial configuration, per slice and view, in float32.

    ``split`` is an :class:`~sampref_bench.models.encoder_split.EncoderSplit`; :attr:`folder` is
    ``root / f"{embedding_id}-trunk{split.trainable_stages}"`` (the model's embedding id, as
    :class:`EmbeddingCache`'s folder, and the cut), file names as :meth:`EmbeddingCache.path`. An array is
    ``split.activations(images01, valid_sizes)`` of one slice, ``(*split.activation_shape)`` float32 (LiteMedSAM,
    ``trainable_stages=1``: (4096, 320), 5.2 MB per slice and view); ``split.embed_activations`` of a stack of
    them gives the embeddings, equal bit for bit to the encoder's own forward of the same images (module
    docstring). The trunk is frozen, so the activations depend on the trunk's weights only; ``embedding_id`` must
    name those (a model built from pretrained weights does).
    """

    dtype: Any = np.float32

    def __init__(self, data: Any, split: Any, device: torch.device | str = "cpu", batch_size: int = 4,
                 root: Path | None = None) -> None:
        super().__init__(data, split.model, device, batch_size, root)
        self.split = split
        self.folder = self.folder.with_name(f"{self.folder.name}-trunk{int(split.trainable_stages)}")

    def encode(self, pairs: list[SlicePair], view: ViewSpec | None = None) -> torch.Tensor:
        """``(B, *split.activation_shape)`` float32 trunk activations of ``pairs`` in ``view`` (no gradients; the
        trunk always computes in eval mode)."""
        images = view_images(self.data, pairs, view)
        with torch.no_grad():
            return self.split.activations(torch.from_numpy(images).to(self.device),
                                          slice_valid_sizes(self.data, pairs))

    def get(self, case: str, slice_index: int, view: ViewSpec | None = None) -> np.ndarray:
        """Memory-mapped ``(*split.activation_shape)`` float32 activations of one slice in ``view`` (computed if
        missing)."""
        return super().get(case, slice_index, view)
