"""Training-time augmentation shared by the U-Net and SAM trainer families (MONAI transforms on preprocessed slices).

Three parts:

* **The U-Net's pipeline** (:func:`spatial_transforms`, :func:`intensity_transforms`, FixMatch's
  :func:`weak_transforms` / :func:`strong_intensity_transforms`, :class:`Augmenter`), moved here unchanged from
  ``trainers/unet/data.py`` so both families run the same transforms; the U-Net imports them from here. Its
  defaults are a subset of nnU-Net's 2D pipeline (Isensee et al., Nature Methods 2021; probabilities and ranges
  of its ``default_2D_augmentation_params``): mirroring along both axes (p 0.5 each), rotation in [-180, 180]
  degrees and scaling (one affine resampling, p 0.2; scale 0.7-1.3, MONAI's symmetric range, where nnU-Net
  draws 0.7-1.4), Gaussian noise (p 0.1), multiplicative brightness 0.75-1.25 (p 0.15) and gamma 0.7-1.5
  (p 0.3); nnU-Net's blur, contrast and low-resolution simulation are left out. Elastic deformation (off in
  nnU-Net's 2D default, p 0.2 in older nnU-Net versions) runs with p 0.1. Labels are resampled with
  nearest-neighbour interpolation so they stay class indices aligned with the image. FixMatch's views (Sohn et
  al. 2020): the *weak* view flips (p 0.5 per axis) and rotates by up to 20 degrees (p 0.5, SSL4MIS's
  ``random_rotate`` range); the *strong* perturbations stand in for RandAugment on grey-level slices (gamma
  contrast, histogram shift, Gaussian noise, Gaussian smoothing, each p 0.5) and one Cutout hole of 1/8 to 1/2
  of the side (always, as FixMatch always applies Cutout).

* **Online augmentation for a trainable SAM encoder** (:func:`online_augment`): the same spatial + intensity
  pipeline on a batch of SAM inputs (``(B, 3, S, S)`` images in [0, 1] and their masks), seeded per item.

* **Fixed views for a frozen or partially trained encoder** (:class:`ViewSpec`, :func:`view_specs`,
  :func:`apply_view`): a few deterministic augmentations per training image, each embedded once and cached
  (:class:`~sampref_bench.planners.embedding_cache.EmbeddingCache` with ``view=``).

Padding. A preprocessed slice is ``S x S`` with the resized image in its top-left ``(h, w)`` valid region and
padding bottom-right (:attr:`~sampref_bench.planners.transforms.SliceTransform.valid_size`); every SAM encoder
sees the padding as 0 whatever the pixels there (:meth:`~sampref_bench.models.sam.SamModel.normalize_input`).
The SAM-side augmentations (:func:`online_augment`, :func:`apply_view`) therefore transform only the valid
region: they crop ``[:h, :w]``, augment that crop (rotation and scaling about its centre, flips within it,
elastic control points ``S // 8`` px apart as the U-Net's), and write it back, so the valid size is unchanged,
no image content moves into the padding (where the encoder would erase it while the mask kept it) and the
padding pixels of image and mask are returned as they came in. Corners the warp uncovers inside the valid
region are 0 (image and mask), as in the U-Net's ``padding_mode="zeros"``. The U-Net itself keeps
transforming the whole ``S x S`` slice, padding included, exactly as before (its benchmark rows stand).

Seeds. :func:`online_augment` reseeds MONAI's random state from each item's own seed before transforming it,
so item ``i``'s output is a function of its image, mask, valid size and seed alone (not of the other items, of
the batch size or of earlier calls): a resumed run draws what an uninterrupted one drew.
:func:`augmentation_seeds` and :func:`draw_view_indices` give those per-item seeds and view choices as pure
functions of ``(seed, epoch, batch)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sampref_bench.utilities.hashing import digest

#: Largest standard deviation of the additive Gaussian noise, in [0, 1] image units. nnU-Net draws the noise
#: variance from U(0, 0.1) on z-scored images (std up to 0.32 image standard deviations); on [0, 1] slices whose
#: standard deviation is about 0.15 that is a std of about 0.05.
NOISE_STD = 0.05


# ---------------------------------------------------------------------------------------------- transforms
def _p(probability: float, always: bool) -> float:
    return 1.0 if always else probability


def _elastic_when_drawn() -> type:
    """MONAI's ``Rand2DElasticd`` that leaves the data untouched when its coin says "do not deform".

    MONAI 1.x resamples every key through an identity grid even then (about 4 ms per 256 px item for an image and a
    label, 90 % of the time at p 0.1), which made it the most expensive step of the U-Net loader. The coin is drawn
    from the transform's own random state, which :class:`Augmenter` reseeds per item, so skipping the unused deform
    draws changes no other transform's numbers; the output equals the original's up to the identity resampling's
    float rounding (tested).
    """
    from monai.transforms import Rand2DElasticd

    class ElasticWhenDrawn(Rand2DElasticd):
        def __call__(self, data: Any) -> dict[Any, Any]:  # type: ignore[override]
            state = self.R.get_state()
            self.randomize(None)
            if not self._do_transform:
                return dict(data)
            self.R.set_state(state)  # the parent draws the same coin again, then deforms
            return super().__call__(data)

    return ElasticWhenDrawn


def spatial_transforms(keys: Sequence[str], label_keys: Sequence[str], image_size: int,
                       always: bool = False) -> list[Any]:
    """nnU-Net-style geometry on dictionary ``keys`` (``label_keys`` among them are resampled nearest): flips, one
    affine rotation + scaling, a mild elastic deformation (see the module docstring). ``image_size`` (px) sets the
    elastic control-point spacing (``image_size // 8``). ``always`` sets every probability to 1 (tests)."""
    from monai.transforms import RandAffined, RandFlipd

    keys = list(keys)
    modes = ["nearest" if key in label_keys else "bilinear" for key in keys]
    return [
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=0),
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=1),
        RandAffined(keys, prob=_p(0.2, always), rotate_range=(math.pi,), scale_range=(0.3, 0.3), mode=modes,
                    padding_mode="zeros"),
        # control points every 1/8 of the side, displaced by N(0, 1) x U(1, 2) px (MONAI's RandDeformGrid)
        _elastic_when_drawn()(keys, spacing=(image_size // 8, image_size // 8), magnitude_range=(1.0, 2.0),
                       prob=_p(0.1, always), mode=modes, padding_mode="zeros"),
    ]


def intensity_transforms(key: str = "image", always: bool = False) -> list[Any]:
    """nnU-Net-style intensity changes of the image ``key``: Gaussian noise, brightness, gamma."""
    from monai.transforms import RandAdjustContrastd, RandGaussianNoised, RandScaleIntensityd

    return [
        RandGaussianNoised(key, prob=_p(0.1, always), std=NOISE_STD),
        RandScaleIntensityd(key, factors=0.25, prob=_p(0.15, always)),
        RandAdjustContrastd(key, prob=_p(0.3, always), gamma=(0.7, 1.5)),
    ]


def weak_transforms(keys: Sequence[str], label_keys: Sequence[str] = (), always: bool = False) -> list[Any]:
    """FixMatch's weak view: flips along both axes and a rotation of up to 20 degrees."""
    from monai.transforms import RandFlipd, RandRotated

    keys = list(keys)
    modes = ["nearest" if key in label_keys else "bilinear" for key in keys]
    return [
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=0),
        RandFlipd(keys, prob=_p(0.5, always), spatial_axis=1),
        RandRotated(keys, range_x=math.radians(20), prob=_p(0.5, always), mode=modes, padding_mode="zeros"),
    ]


def strong_intensity_transforms(image_size: int, key: str = "image", always: bool = False) -> list[Any]:
    """FixMatch's strong perturbations of an (already weak-augmented) image ``key``; no geometry."""
    from monai.transforms import (
        RandAdjustContrastd,
        RandCoarseDropoutd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandHistogramShiftd,
    )

    return [
        RandAdjustContrastd(key, prob=_p(0.5, always), gamma=(0.5, 2.0)),
        RandHistogramShiftd(key, num_control_points=(5, 10), prob=_p(0.5, always)),
        RandGaussianNoised(key, prob=_p(0.5, always), std=0.1),
        RandGaussianSmoothd(key, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), prob=_p(0.5, always)),
        RandCoarseDropoutd(key, holes=1, spatial_size=max(1, image_size // 8), max_spatial_size=image_size // 2,
                           fill_value=0.0, prob=1.0),
    ]


def _plain(value: Any) -> torch.Tensor:
    from monai.utils import convert_to_tensor

    return convert_to_tensor(value, track_meta=False).float().contiguous()


class Augmenter:
    """A MONAI ``Compose`` applied to a dictionary with a given seed; returns plain float tensors.

    ``transforms`` empty means no augmentation. The compose is reseeded before every call, so the result depends on
    the input and the seed only (never on earlier calls or on the process that makes it).
    """

    def __init__(self, transforms: list[Any]) -> None:
        from monai.transforms import Compose

        self.compose = Compose(transforms) if transforms else None

    def __call__(self, sample: dict[str, np.ndarray | torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """``sample``: arrays ``(C, S, S)`` by key -> the augmented tensors by key."""
        if self.compose is None:
            return {key: _plain(value) for key, value in sample.items()}
        from monai.data import get_track_meta, set_track_meta

        self.compose.set_random_state(seed=int(seed))
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors throughout: a quarter faster, the same numbers (tested)
        try:
            out = self.compose(dict(sample))
        finally:
            set_track_meta(tracking)
        return {key: _plain(out[key]) for key in sample}


# ---------------------------------------------------------------------------------------------- seeds
#: Last entry of the seed sequences below, so they never coincide with another generator's ``(seed, epoch, ...)``.
ONLINE_STREAM = 7301
VIEW_STREAM = 7302


def augmentation_seeds(seed: int, epoch: int, batch: int, n_items: int) -> list[int]:
    """``n_items`` 32-bit seeds for :func:`online_augment`, item ``i``'s a pure function of ``(seed, epoch, batch,
    i)`` (numpy's ``SeedSequence``): resuming at any step redraws the same augmentation."""
    return [int(np.random.SeedSequence([int(seed), int(epoch), int(batch), i, ONLINE_STREAM]).generate_state(1)[0])
            for i in range(int(n_items))]


def draw_view_indices(seed: int, epoch: int, batch: int, n_items: int, n_views: int) -> list[int]:
    """Which of ``n_views`` cached views each of ``n_items`` training samples of one batch reads: uniform over
    ``0..n_views - 1`` (the identity view 0 included), a pure function of ``(seed, epoch, batch)``.

    A generator of its own, so a trainer's other draws (sample order, box jitter) are the same with and without
    views; ``n_views == 1`` draws nothing and gives all zeros.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if n_views == 1:
        return [0] * int(n_items)
    rng = np.random.default_rng([int(seed), int(epoch), int(batch), VIEW_STREAM])
    return [int(v) for v in rng.integers(0, int(n_views), size=int(n_items))]


# ---------------------------------------------------------------------------------------------- valid region
def _valid_hw(valid_size: Sequence[int] | None, size: int) -> tuple[int, int]:
    """``(h, w)`` px of the valid region (``None``: the whole ``size x size`` slice), checked."""
    if valid_size is None:
        return size, size
    h, w = (int(v) for v in valid_size)
    if not (1 <= h <= size and 1 <= w <= size):
        raise ValueError(f"valid size {(h, w)} does not fit a {size} x {size} slice")
    return h, w


def _distinct_channels(image: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The distinct channels of ``(C, h, w)`` ``image`` and, per channel, the index of its copy among them.

    A grey image reaches SAM as three equal channels (``PreprocessedData.rgb``); augmenting the distinct channels
    and copying them back is augmenting the stored channels before the RGB mapping, as the U-Net does, so a grey
    image stays grey (per-channel noise would otherwise colour it).
    """
    distinct: list[np.ndarray] = []
    where: list[int] = []
    for channel in image:
        for k, seen in enumerate(distinct):
            if np.array_equal(seen, channel):
                where.append(k)
                break
        else:
            where.append(len(distinct))
            distinct.append(channel)
    return np.stack(distinct), where


@functools.lru_cache(maxsize=8)
def _online_augmenter(image_size: int, with_mask: bool) -> Augmenter:
    keys = ["image", "mask"] if with_mask else ["image"]
    return Augmenter(spatial_transforms(keys, ["mask"], image_size) + intensity_transforms("image"))


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def online_augment(images01: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray | None,
                   valid_sizes: Sequence[Sequence[int]] | None, seeds: Sequence[int]
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The U-Net's spatial + intensity augmentation on a batch of SAM inputs, image and mask together.

    Args:
        images01: ``(B, 3, S, S)`` float images in [0, 1] (``PreprocessedData.rgb``), tensor or array.
        masks: ``(B, 1, S, S)`` or ``(B, S, S)`` masks (binary, or class indices; any dtype), or ``None``.
        valid_sizes: ``B`` rows ``(h, w)`` px of each slice's valid region (``SliceTransform.valid_size``);
            ``None``: every pixel is valid.
        seeds: ``B`` integer seeds in ``[0, 2**32)`` (:func:`augmentation_seeds`); item ``i``'s draw is a function
            of ``seeds[i]`` (and its image's content and valid size) alone.

    Returns:
        ``(images, masks)``: ``(B, 3, S, S)`` float32 in [0, 1] (clipped after the intensity changes) and masks of
        the input's shape and dtype (nearest-neighbour, so a binary mask stays binary), as torch tensors on the
        input's device (CPU for arrays); ``None`` masks give ``None``. Only the valid region is transformed; the
        padding comes back as it came in (module docstring). Pipeline: :func:`spatial_transforms` (flips p 0.5
        per axis, rotation +-180 degrees and scale 0.7-1.3 p 0.2, elastic p 0.1) then
        :func:`intensity_transforms` (noise p 0.1, brightness p 0.15, gamma p 0.3), the U-Net's probabilities.
    """
    device = images01.device if isinstance(images01, torch.Tensor) else torch.device("cpu")
    images = _as_numpy(images01).astype(np.float32, copy=True)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, 3, S, S), got {images.shape}")
    batch, _, size, width = images.shape
    if size != width:
        raise ValueError(f"expected square slices, got {images.shape[-2:]}")
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} images")
    sizes = [None] * batch if valid_sizes is None else list(valid_sizes)
    if len(sizes) != batch:
        raise ValueError(f"{len(sizes)} valid sizes for {batch} images")
    mask_out: np.ndarray | None = None
    if masks is not None:
        mask_in = _as_numpy(masks)
        if mask_in.shape not in ((batch, 1, size, size), (batch, size, size)):
            raise ValueError(f"expected masks of shape (B, 1, S, S) or (B, S, S) for images {images.shape}, "
                             f"got {mask_in.shape}")
        mask_out = mask_in.reshape(batch, size, size).copy()
    augment = _online_augmenter(size, mask_out is not None)
    for i in range(batch):
        h, w = _valid_hw(sizes[i], size)
        distinct, where = _distinct_channels(images[i, :, :h, :w])
        item: dict[str, np.ndarray] = {"image": distinct}
        if mask_out is not None:
            item["mask"] = mask_out[i, None, :h, :w].astype(np.float32)
        out = augment(item, int(seeds[i]))
        images[i, :, :h, :w] = np.clip(out["image"].numpy(), 0.0, 1.0)[where]
        if mask_out is not None:
            mask_out[i, :h, :w] = np.rint(out["mask"][0].numpy()).astype(mask_out.dtype)
    image_tensor = torch.from_numpy(images).to(device)
    if masks is None or mask_out is None:
        return image_tensor, None
    mask_tensor = torch.from_numpy(mask_out.reshape(tuple(masks.shape)))
    if isinstance(masks, torch.Tensor):
        mask_tensor = mask_tensor.to(masks.dtype)
    return image_tensor, mask_tensor.to(device)


# ---------------------------------------------------------------------------------------------- fixed views
#: Version of :func:`apply_view`'s arithmetic, part of every :attr:`ViewSpec.key`: bump it when the warp changes so
#: that cached views computed the old way are never read.
VIEW_PIPELINE = 1
#: Ranges of :func:`view_specs`: rotation in degrees, isotropic scale (MONAI ``Affine`` ``scale_params``) and gamma
#: (drawn log-uniformly): milder than the U-Net's online draws, since a handful of views stands for all of them.
VIEW_ROTATION_DEG = 20.0
VIEW_SCALE = (0.85, 1.15)
VIEW_GAMMA = (0.7, 1.5)


@dataclass(frozen=True)
class ViewSpec:
    """One fixed augmentation of a slice, applied by :func:`apply_view` in this order: flips, one affine warp
    (rotation + scale about the valid region's centre), gamma.

    Attributes:
        flip_rows: mirror the valid region top-bottom (MONAI ``Flip(spatial_axis=0)``).
        flip_cols: mirror it left-right (``spatial_axis=1``).
        rotate_deg: rotation in degrees (MONAI ``Affine`` ``rotate_params``, in radians there).
        scale: isotropic ``Affine`` ``scale_params`` (1: none). MONAI's affine maps output to input coordinates,
            so a value above 1 shrinks the content (1.5: a 30 px object becomes 20 px) and below 1 enlarges it.
        gamma: ``AdjustContrast`` gamma of the image (1: none); the mask is untouched.
    """

    flip_rows: bool = False
    flip_cols: bool = False
    rotate_deg: float = 0.0
    scale: float = 1.0
    gamma: float = 1.0

    @property
    def is_identity(self) -> bool:
        """Whether the view leaves image and mask unchanged (view 0)."""
        return self == ViewSpec()

    def parameters(self) -> dict[str, Any]:
        """The parameters as JSON values, with :data:`VIEW_PIPELINE`: what :attr:`key` digests."""
        return {**asdict(self), "pipeline": VIEW_PIPELINE}

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any]) -> ViewSpec:
        """Inverse of :meth:`parameters` (for views stored in a plan or run record as JSON); ``pipeline`` is
        ignored, so a view recorded under an older :data:`VIEW_PIPELINE` gets the current key."""
        fields = {k: v for k, v in parameters.items() if k != "pipeline"}
        return cls(bool(fields.get("flip_rows", False)), bool(fields.get("flip_cols", False)),
                   float(fields.get("rotate_deg", 0.0)), float(fields.get("scale", 1.0)),
                   float(fields.get("gamma", 1.0)))

    @property
    def key(self) -> str:
        """10 hex digits of the SHA-256 of the parameters' JSON (:meth:`parameters`): names the view in cache files,
        independent of the view's index, the fold, the fraction and the run."""
        return digest(self.parameters(), 10)


IDENTITY_VIEW = ViewSpec()


def _draw_view(rng: np.random.Generator) -> ViewSpec:
    flip_rows, flip_cols = (bool(rng.random() < 0.5) for _ in range(2))
    rotate = round(float(rng.uniform(-VIEW_ROTATION_DEG, VIEW_ROTATION_DEG)), 2)
    scale = round(float(rng.uniform(*VIEW_SCALE)), 3)
    gamma = round(float(math.exp(rng.uniform(math.log(VIEW_GAMMA[0]), math.log(VIEW_GAMMA[1])))), 3)
    return ViewSpec(flip_rows, flip_cols, rotate, scale, gamma)


def view_specs(n_views: int, seed: int) -> list[ViewSpec]:
    """``n_views`` fixed views of every training image: view 0 the identity, the others drawn once from ``seed``.

    View ``i >= 1`` combines a flip of each axis (p 0.5 each), a rotation uniform in +-:data:`VIEW_ROTATION_DEG`
    degrees (rounded to 0.01), a scale uniform in :data:`VIEW_SCALE` (rounded to 0.001) and a gamma log-uniform in
    :data:`VIEW_GAMMA` (rounded to 0.001), from a generator seeded by ``(seed, i)``: a pure function of ``seed``
    and ``i``, so ``view_specs(m, seed)`` is the first ``m`` of ``view_specs(n, seed)`` for ``m <= n`` (raising the
    number of views keeps every cached one). Views are pairwise distinct (a repeat is redrawn). Pass a seed that
    does not depend on the fold or fraction (the plan's), so that every run shares the cached views.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1 (view 0 is the unaugmented image), got {n_views}")
    specs = [IDENTITY_VIEW]
    for i in range(1, int(n_views)):
        rng = np.random.default_rng([int(seed), i, VIEW_STREAM])
        spec = _draw_view(rng)
        while spec in specs:
            spec = _draw_view(rng)
        specs.append(spec)
    return specs


def _warp(crop: np.ndarray, spec: ViewSpec, mode: str) -> np.ndarray:
    """``spec``'s flips and affine warp of a ``(C, h, w)`` float32 crop (``mode``: MONAI's ``bilinear`` or
    ``nearest``), uncovered pixels 0."""
    from monai.transforms import Affine, Flip

    out: Any = torch.from_numpy(np.ascontiguousarray(crop))
    for axis, flip in ((0, spec.flip_rows), (1, spec.flip_cols)):
        if flip:
            out = Flip(spatial_axis=axis)(out)
    if spec.rotate_deg != 0.0 or spec.scale != 1.0:
        out = Affine(rotate_params=math.radians(spec.rotate_deg), scale_params=(spec.scale, spec.scale),
                     padding_mode="zeros", mode=mode, image_only=True)(out)
    return _plain(out).numpy()


def apply_view(image01: np.ndarray | torch.Tensor | None, mask: np.ndarray | torch.Tensor | None,
               valid_size: Sequence[int] | None, spec: ViewSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One fixed view of a slice: deterministic (the same inputs and ``spec`` give the same arrays, bit for bit).

    Args:
        image01: ``(3, S, S)`` (or ``(C, S, S)``) float image in [0, 1], or ``None`` (a view of the mask alone:
            the same geometry, e.g. for a training target whose embedding comes from the cache).
        mask: ``(S, S)`` mask (binary or class indices, any dtype), or ``None``.
        valid_size: ``(h, w)`` px of the valid top-left region (``SliceTransform.valid_size``); ``None``: all.
        spec: the view; :data:`IDENTITY_VIEW` returns (float32) copies of the inputs unchanged.

    Returns:
        ``(image, mask)``: ``(C, S, S)`` float32 in [0, 1] and the ``(S, S)`` mask in its dtype (nearest-neighbour),
        each ``None`` where the input was. Only the valid region is transformed (flips within it, rotation and
        scale about its centre, uncovered corners 0); the padding is returned unchanged. MONAI's array transforms
        do the work (``Flip``, ``Affine`` with bilinear / nearest resampling, ``AdjustContrast`` on the valid
        region's range).
    """
    from monai.transforms import AdjustContrast

    image = None if image01 is None else _as_numpy(image01).astype(np.float32, copy=True)
    out_mask = None if mask is None else _as_numpy(mask).copy()
    if image is not None and (image.ndim != 3 or image.shape[-1] != image.shape[-2]):
        raise ValueError(f"expected an image of shape (3, S, S), got {image.shape}")
    if out_mask is not None and (out_mask.ndim != 2 or out_mask.shape[0] != out_mask.shape[1]
                                 or (image is not None and out_mask.shape != image.shape[-2:])):
        raise ValueError(f"expected a square (S, S) mask matching the image, got {out_mask.shape}")
    if image is None and out_mask is None:
        return None, None
    size = image.shape[-1] if image is not None else out_mask.shape[-1]  # type: ignore[union-attr]
    h, w = _valid_hw(valid_size, size)
    if spec.is_identity:
        return image, out_mask
    if image is not None:
        crop = _warp(image[:, :h, :w], spec, "bilinear")
        if spec.gamma != 1.0:
            crop = _plain(AdjustContrast(gamma=spec.gamma)(torch.from_numpy(crop))).numpy()
        image[:, :h, :w] = np.clip(crop, 0.0, 1.0)
    if out_mask is not None:
        warped = _warp(out_mask[None, :h, :w].astype(np.float32), spec, "nearest")
        out_mask[:h, :w] = np.rint(warped[0]).astype(out_mask.dtype)
    return image, out_mask
