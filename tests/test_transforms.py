import numpy as np
import pytest

from sampref_bench.planners.transforms import SliceTransform


@pytest.mark.parametrize("shape", [(200, 137), (256, 256), (48, 40), (31, 250), (1, 7)])
def test_label_round_trip_is_exact_when_enlarging(shape):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    t = SliceTransform.for_shape(shape, 256)
    forward = t.label(label)
    assert forward.shape == (256, 256)
    assert forward[t.resized[0]:, :].sum() == 0 and forward[:, t.resized[1]:].sum() == 0
    np.testing.assert_array_equal(t.inverse_label(forward), label)


def test_longest_side_and_aspect():
    t = SliceTransform.for_shape((600, 400), 256)
    assert t.resized == (256, 171)
    assert SliceTransform.from_dict(t.to_dict()) == t


def test_image_values_and_padding():
    t = SliceTransform.for_shape((64, 32), 128)
    image = np.full((2, 64, 32), 0.5, np.float32)
    out = t.image(image)
    assert out.shape == (2, 128, 128)
    np.testing.assert_allclose(out[:, :128, :64], 0.5, atol=1e-6)
    assert np.all(out[:, :, 64:] == 0)


def test_inverse_probabilities_shape_and_range():
    t = SliceTransform.for_shape((300, 200), 256)
    probs = np.zeros((1, 256, 256), np.float32)
    probs[0, :128, :] = 1.0
    back = t.inverse_probabilities(probs)
    assert back.shape == (1, 300, 200)
    assert back[0, :140].min() > 0.99 and back[0, 160:].max() < 0.01


def _two_objects(shape):
    """``(H, W)`` uint8 map: a disc (label 1) and a rectangle (label 2), sized relative to the image."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    label = np.zeros(shape, np.uint8)
    radius = 0.2 * min(height, width)
    label[(yy - 0.3 * height) ** 2 + (xx - 0.35 * width) ** 2 <= radius ** 2] = 1
    label[int(0.6 * height):int(0.85 * height), int(0.45 * width):int(0.9 * width)] = 2
    return label


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# (600, 400) and (1000, 300): the long side is vertical; (400, 600): horizontal.
@pytest.mark.parametrize("shape", [(600, 400), (400, 600), (1000, 300)])
def test_inverse_of_originals_larger_than_256(shape):
    label = _two_objects(shape)
    t = SliceTransform.for_shape(shape, 256)
    assert max(t.resized) == 256 and t.resized[0] < shape[0] and t.resized[1] < shape[1]
    forward = t.label(label)
    assert forward.shape == (256, 256)
    assert forward[t.resized[0]:].sum() == 0 and forward[:, t.resized[1]:].sum() == 0
    back = t.inverse_label(forward)
    assert back.shape == shape and back.dtype == np.uint8
    for value in (1, 2):
        assert _dice(back == value, label == value) >= 0.97, value

    one_hot = np.stack([label == k for k in range(3)]).astype(np.float32)   # (K, H, W)
    probabilities = t.image(one_hot)
    assert probabilities.shape == (3, 256, 256)
    restored = t.inverse_probabilities(probabilities)
    assert restored.shape == (3, *shape) and restored.dtype == np.float32
    assert restored.min() >= -1e-4 and restored.max() <= 1 + 1e-4
    merged = restored.argmax(axis=0)
    for value in (1, 2):
        assert _dice(restored[value] >= 0.5, label == value) >= 0.97, value
        assert _dice(merged == value, label == value) >= 0.97, value
