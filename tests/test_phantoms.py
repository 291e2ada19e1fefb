"""The SYNTHETIC phantom generator: seeded, typed, with background-only slices."""

from __future__ import annotations

import numpy as np
import pytest

from sampref_bench.dataset_conversion.phantoms import make_phantom


def test_ct_phantom_shape_types_and_empty_slices():
    image, label, geometry = make_phantom((24, 48, 40), (0.8, 0.8, 3.0), n_labels=2, seed=0)
    assert image.shape == label.shape == (24, 48, 40)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    assert image.min() == -1000 and 0 < np.median(image[label == 1]) < np.median(image[label == 2])
    per_slice = label.reshape(24, -1).any(axis=1)
    assert not per_slice[:2].any() and not per_slice[-2:].any() and per_slice.sum() >= 6
    assert geometry.spacing == (0.8, 0.8, 3.0) and len(geometry.direction) == 9


def test_seeded_and_mr_variant():
    first = make_phantom(seed=5, modality="MR")
    again = make_phantom(seed=5, modality="MR")
    other = make_phantom(seed=6, modality="MR")
    assert first[0].dtype == np.float32 and first[0].min() >= 0
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert set(np.unique(first[1])) == {0, 1}


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_phantom(n_labels=3)
    with pytest.raises(ValueError):
        make_phantom(shape_zyx=(4, 32, 32))
