"""Augmentation for the SAM trainers: per-item seeded online augmentation (trainable encoder), fixed views cached
per view (frozen encoder), and the partial configuration's activation cache (planners/augmentation.py,
planners/embedding_cache.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sampref_bench.models import build_sam
from sampref_bench.models.encoder_split import split_image_encoder
from sampref_bench.planners.augmentation import (
    IDENTITY_VIEW,
    ViewSpec,
    apply_view,
    augmentation_seeds,
    draw_view_indices,
    online_augment,
    view_specs,
)
from sampref_bench.planners.data import PreprocessedData
from sampref_bench.planners.embedding_cache import (
    ActivationCache,
    EmbeddingCache,
    parse_name,
    slice_valid_sizes,
)
from sampref_bench.planners.pipeline import plan_dataset
from tests.trainer_helpers import planned_phantoms

CASE = "synthetic_000"
SIZE = 64
#: Valid region of the test slices: padding below row 48 and right of column 40.
VALID = (48, 40)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread: the machine's two cores are shared."""


def _data(sampref_roots) -> PreprocessedData:
    planned_phantoms()
    return _data_only(sampref_roots)


def _data_only(sampref_roots) -> PreprocessedData:
    folder = sampref_roots["preprocessed"] / "Dataset007_Phantom"
    return PreprocessedData(folder / "samprefPlans_2d", json.loads((folder / "plans.json").read_text()))


def _tiny():
    return build_sam("tiny", seed=0, image_size=256, arch_overrides={"stride": 16}).eval()


def _slices(batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(B, 3, S, S)`` grey [0, 1] images (channels equal) with a bright rectangle, and its ``(B, 1, S, S)`` mask;
    the padding (outside :data:`VALID`) holds a marker value so that changes there show."""
    rng = np.random.default_rng(0)
    images = np.zeros((batch, 3, SIZE, SIZE), np.float32)
    masks = np.zeros((batch, 1, SIZE, SIZE), np.float32)
    for i in range(batch):
        grey = rng.uniform(0.0, 0.3, (SIZE, SIZE)).astype(np.float32)
        grey[8 + i:30, 10:24 + i] = 0.9
        images[i] = grey
        masks[i, 0, 8 + i:30, 10:24 + i] = 1.0
    images[:, :, VALID[0]:, :] = 0.5
    images[:, :, :, VALID[1]:] = 0.5
    return images, masks


# ---------------------------------------------------------------------------------------------- online
def test_online_augment_is_seeded_per_item():
    images, masks = _slices()
    sizes = [VALID] * 3
    first = online_augment(images, masks, sizes, [11, 12, 13])
    again = online_augment(images, masks, sizes, [11, 12, 13])
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the same seeds: the same output
    other = online_augment(images, masks, sizes, [11, 99, 13])
    for i in (0, 2):  # changing item 1's seed leaves the others alone
        assert torch.equal(first[0][i], other[0][i]) and torch.equal(first[1][i], other[1][i])
    assert not torch.equal(first[0][1], other[0][1])
    alone = online_augment(images[2:], masks[2:], sizes[2:], [13])  # nor do the batch and position matter
    assert torch.equal(alone[0][0], first[0][2]) and torch.equal(alone[1][0], first[1][2])


def test_online_augment_keeps_mask_binary_on_the_image_and_padding_in_place():
    images, masks = _slices()
    moved = 0
    for seed in range(12):
        out_images, out_masks = online_augment(torch.from_numpy(images), torch.from_numpy(masks), [VALID] * 3,
                                               augmentation_seeds(seed, 0, 0, 3))
        assert out_images.shape == (3, 3, SIZE, SIZE) and out_images.dtype == torch.float32
        assert out_masks.shape == masks.shape and out_masks.dtype == torch.float32
        assert set(torch.unique(out_masks).tolist()) <= {0.0, 1.0}
        assert 0.0 <= float(out_images.min()) and float(out_images.max()) <= 1.0
        assert torch.equal(out_images[:, 0], out_images[:, 1]) and torch.equal(out_images[:, 0], out_images[:, 2])
        for i in range(3):  # padding as it came; the bright object where the mask is
            image, mask = out_images[i, 0].numpy(), out_masks[i, 0].numpy()
            assert (image[VALID[0]:] == 0.5).all() and (image[:, VALID[1]:] == 0.5).all()
            assert not mask[VALID[0]:].any() and not mask[:, VALID[1]:].any()
            if mask.sum() > 20:
                assert image[mask > 0].mean() > image[:VALID[0], :VALID[1]][mask[:VALID[0], :VALID[1]] == 0].mean()
            moved += not np.array_equal(mask, masks[i, 0])
    assert moved >= 6  # flips alone move the rectangle half the time
    flat = online_augment(images, masks[:, 0].astype(np.uint8), [VALID] * 3, [1, 2, 3])[1]
    assert flat.shape == (3, SIZE, SIZE) and flat.dtype == torch.uint8


def test_seeds_and_view_draws_are_pure_functions():
    assert augmentation_seeds(0, 1, 2, 4) == augmentation_seeds(0, 1, 2, 4)
    assert augmentation_seeds(0, 1, 2, 4)[:2] == augmentation_seeds(0, 1, 2, 2)
    assert augmentation_seeds(0, 1, 2, 4) != augmentation_seeds(0, 1, 3, 4)
    drawn = draw_view_indices(0, 1, 2, 64, 4)
    assert drawn == draw_view_indices(0, 1, 2, 64, 4) and set(drawn) == {0, 1, 2, 3}
    assert draw_view_indices(0, 1, 2, 5, 1) == [0] * 5


# ---------------------------------------------------------------------------------------------- views
def test_view_specs_are_fixed_and_keyed_by_their_parameters():
    specs = view_specs(4, seed=3)
    assert specs[0] == IDENTITY_VIEW and specs[0].is_identity
    assert not any(spec.is_identity for spec in specs[1:])
    assert view_specs(4, seed=3) == specs and view_specs(2, seed=3) == specs[:2]
    assert len({spec.key for spec in specs}) == 4
    assert all(len(spec.key) == 10 and int(spec.key, 16) >= 0 for spec in specs)
    assert view_specs(4, seed=4)[1] != specs[1]
    rebuilt = ViewSpec.from_parameters(json.loads(json.dumps(specs[2].parameters())))
    assert rebuilt == specs[2] and rebuilt.key == specs[2].key  # the parameters' digest, not the view's index
    assert ViewSpec(rotate_deg=5.0).key == ViewSpec(rotate_deg=5.0).key != ViewSpec(rotate_deg=5.01).key


def test_apply_view_is_deterministic_and_stays_in_the_valid_region():
    images, masks = _slices(1)
    image, mask = images[0], masks[0, 0].astype(np.uint8)
    same_image, same_mask = apply_view(image, mask, VALID, IDENTITY_VIEW)
    assert np.array_equal(same_image, image) and np.array_equal(same_mask, mask)
    for spec in [*view_specs(4, seed=0)[1:], ViewSpec(rotate_deg=90.0), ViewSpec(flip_rows=True, scale=1.5)]:
        a_image, a_mask = apply_view(image, mask, VALID, spec)
        b_image, b_mask = apply_view(image, mask, VALID, spec)
        assert np.array_equal(a_image, b_image) and np.array_equal(a_mask, b_mask)
        assert a_mask.dtype == np.uint8 and set(np.unique(a_mask)) <= {0, 1} and a_mask.sum() > 0
        assert not np.array_equal(a_mask, mask)
        assert (a_image[:, VALID[0]:] == 0.5).all() and (a_image[:, :, VALID[1]:] == 0.5).all()
        assert not a_mask[VALID[0]:].any() and not a_mask[:, VALID[1]:].any()
        inside = a_mask[:VALID[0], :VALID[1]] > 0
        assert a_image[0, :VALID[0], :VALID[1]][inside].mean() > a_image[0, :VALID[0], :VALID[1]][~inside].mean()
        only_image, no_mask = apply_view(image, None, VALID, spec)
        no_image, only_mask = apply_view(None, mask, VALID, spec)
        assert no_mask is None and no_image is None
        assert np.array_equal(only_image, a_image) and np.array_equal(only_mask, a_mask)  # one geometry
    flipped = apply_view(image, mask, VALID, ViewSpec(flip_cols=True))[1]
    assert np.array_equal(flipped[:VALID[0], :VALID[1]], mask[:VALID[0], :VALID[1]][:, ::-1])


# ---------------------------------------------------------------------------------------------- caches
def test_identity_view_is_the_unaugmented_cache_file(sampref_roots):
    data = _data(sampref_roots)
    model = _tiny()
    cache = EmbeddingCache(data, model)
    pairs = [(CASE, 3), (CASE, 5)]
    assert cache.ensure(pairs, progress=False, views=[IDENTITY_VIEW]) == 2
    for case, k in pairs:
        path = cache.path(case, k, IDENTITY_VIEW)
        assert path == cache.path(case, k) == cache.folder / f"{case}_{k:04d}_{cache.key(case)}.npy"
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(data.rgb(CASE, [3, 5])),
                             valid_sizes=slice_valid_sizes(data, pairs)).numpy().astype(np.float16)
    assert np.array_equal(np.stack([cache.get(c, k) for c, k in pairs]), direct)
    assert EmbeddingCache(data, _tiny()).ensure(pairs, progress=False) == 0  # an old-style cache reads them


def test_views_are_cached_once_each_in_files_of_their_own(sampref_roots):
    data = _data(sampref_roots)
    cache = EmbeddingCache(data, _tiny())
    views = view_specs(3, seed=0)
    pairs = [(CASE, 3), (CASE, 5), (CASE, 3)]
    assert cache.ensure(pairs, progress=False, views=views) == 6
    again = EmbeddingCache(data, _tiny())
    assert again.ensure(pairs, progress=False, views=views) == 0 and again.computed == 0
    names = sorted(p.name for p in cache.folder.iterdir())
    assert len(names) == 6
    key = cache.key(CASE)
    for view in views[1:]:
        assert cache.path(CASE, 3, view).name == f"{CASE}_0003_{key}_v{view.key}.npy"
        assert parse_name(cache.path(CASE, 3, view).name) == (CASE, 3, key, view.key)
    assert parse_name(cache.path(CASE, 3).name) == (CASE, 3, key, None)
    arrays = [cache.get(CASE, 3, view) for view in views]
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[1], arrays[2])
    with torch.no_grad():  # a view's embedding is the encoder's output of the view's image
        image = apply_view(data.rgb(CASE, [3])[0], None, slice_valid_sizes(data, [(CASE, 3)])[0], views[1])[0]
        direct = cache.model.embed(torch.from_numpy(image[None]), valid_sizes=slice_valid_sizes(data, [(CASE, 3)]))
    assert np.array_equal(arrays[1], direct[0].numpy().astype(np.float16))
    recomputed = EmbeddingCache(data, _tiny(), root=cache.root.parent / "elsewhere")
    assert np.array_equal(recomputed.get(CASE, 3, views[2]), arrays[2])  # the same spec: the same array
    plan_dataset(7, fractions=[0.25, 0.5, 1.0], num_processes=1, progress=False)  # other fractions (and folds)
    replanned = EmbeddingCache(_data_only(sampref_roots), _tiny())
    assert all(replanned.missing(pairs, view) == [] for view in views)
    assert sorted(p.name for p in replanned.folder.iterdir()) == names


def test_prune_stale_removes_view_files_too(sampref_roots):
    data = _data(sampref_roots)
    cache = EmbeddingCache(data, _tiny())
    cache.ensure([(CASE, 0)], progress=False, views=view_specs(3, seed=0))
    files = sorted(cache.folder.iterdir())
    assert cache.prune_stale([CASE]) == []
    cache._keys[CASE] = "0" * 12  # as if the case had been preprocessed again
    assert sorted(cache.prune_stale([CASE])) == files and not any(cache.folder.iterdir())


def test_activation_cache_gives_the_split_free_embedding_bit_for_bit(sampref_roots):
    data = _data(sampref_roots)
    reference = build_sam("tiny", seed=0, image_size=256).eval()
    model = build_sam("tiny", seed=0, image_size=256).eval()
    split = split_image_encoder(model, trainable_stages=1)
    cache = ActivationCache(data, split, batch_size=2)
    assert cache.folder.name == f"{model.embedding_id}-trunk1"
    assert cache.folder.parent == EmbeddingCache(data, reference).folder.parent
    pairs = [(CASE, 3), (CASE, 5)]
    views = view_specs(2, seed=0)
    assert cache.ensure(pairs, progress=False, views=views) == 4
    assert cache.ensure(pairs, progress=False, views=views) == 0
    stored = np.stack([cache.get(c, k) for c, k in pairs])
    assert stored.dtype == np.float32 and stored.shape == (2, *split.activation_shape)
    with torch.no_grad():
        tail = split.embed_activations(torch.from_numpy(stored))
        full = reference.embed(torch.from_numpy(data.rgb(CASE, [3, 5])), valid_sizes=slice_valid_sizes(data, pairs))
    assert torch.equal(tail, full)
    assert cache.path(CASE, 3, views[1]).name.endswith(f"_v{views[1].key}.npy")
    assert not np.array_equal(cache.get(CASE, 3, views[1]), stored[0])
