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
