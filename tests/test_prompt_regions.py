"""Saliency -> prompts, pure numpy: basin saliency, dense-CRF mask, largest component, box and interior points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from sampref_bench.prompts.regions import crf_mask, interior_points, largest_component, mask_box, valid_box
from sampref_bench.prompts.saliency import BasinSaliency, basin_saliency, build_saliency
from sampref_bench.prompts.settings import DEFAULT_CRF
from sampref_bench.utilities.errors import SamprefError


def disc(cy, cx, r, shape=(64, 64)):
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def far_from(mask, distance):
    """Pixels at least ``distance`` px from ``mask`` (outside the reach of the Gaussian smoothing)."""
    return ndi.distance_transform_edt(~mask) >= distance


def iou(a, b):
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------------------------ basin saliency
DARK_DISC = disc(32, 32, 10)


@pytest.mark.parametrize("sigma", [0.0, 3.0])
def test_enclosed_dark_disc_is_salient_and_background_is_not(sigma):
    image = np.where(DARK_DISC, 0.1, 0.9)
    sal = basin_saliency(image, sigma=sigma)
    assert sal.dtype == np.float32 and sal.shape == image.shape
    assert sal.min() >= 0.0 and sal.max() == pytest.approx(1.0)
    assert sal[32, 32] == pytest.approx(1.0)
    assert sal[far_from(DARK_DISC, 6)].max() < 0.05
    if sigma == 0:  # unsmoothed: depth 0.8 everywhere inside, exactly 0 outside
        np.testing.assert_allclose(sal[DARK_DISC], 1.0, atol=1e-6)
        assert np.all(sal[~DARK_DISC] == 0)


def test_dark_region_touching_the_border_is_not_enclosed():
    image = np.full((64, 64), 0.9)
    image[:, :20] = 0.1  # dark band along the left border
    image[10:30, 0:5] = 0.0  # even darker, still on the border
    assert np.all(basin_saliency(image, sigma=0.0) == 0)
    assert np.all(basin_saliency(image, sigma=3.0) == 0)


def test_partly_enclosed_region_gets_only_its_barrier_depth():
    # dark square 0.1 whose surround is 0.9 except an opening to the border at 0.5: depth 0.5 - 0.1 = 0.4, and the
    # corridor itself (0.5, connected to the border) is 0
    image = np.full((40, 40), 0.9)
    image[15:25, 15:25] = 0.1
    image[18:22, 0:15] = 0.5
    sal = basin_saliency(image, sigma=0.0)
    assert np.all(sal[15:25, 15:25] == pytest.approx(1.0))  # the only basin: scaled to 1
    assert np.all(sal[18:22, 0:15] == 0)
    assert np.all(sal[image == 0.9] == 0)


BRIGHT_DISC = disc(20, 20, 8)
OTHER_DARK_DISC = disc(44, 44, 8)
GRAY_WITH_BOTH = np.where(BRIGHT_DISC, 0.9, np.where(OTHER_DARK_DISC, 0.1, 0.5))


@pytest.mark.parametrize(("polarity", "bright_found", "dark_found"), [
    ("dark", False, True),
    ("bright", True, False),
    ("both", True, True),
])
def test_polarity_picks_dark_basins_bright_domes_or_both(polarity, bright_found, dark_found):
    sal = basin_saliency(GRAY_WITH_BOTH, sigma=0.0, polarity=polarity)
    assert bool(sal[20, 20] == pytest.approx(1.0)) is bright_found
    assert bool(sal[44, 44] == pytest.approx(1.0)) is dark_found
    if not bright_found:
        assert np.all(sal[BRIGHT_DISC] == 0)
    if not dark_found:
        assert np.all(sal[OTHER_DARK_DISC] == 0)
    assert np.all(sal[~(BRIGHT_DISC | OTHER_DARK_DISC)] == 0)


def test_bright_polarity_finds_a_bright_disc_on_dark_but_dark_does_not():
    image = np.where(DARK_DISC, 0.9, 0.1)
    assert basin_saliency(image, polarity="bright")[32, 32] == pytest.approx(1.0)
    assert np.all(basin_saliency(image, polarity="dark") == 0)


@pytest.mark.parametrize("image", [np.full((20, 20), 0.5), np.zeros((16, 24)), np.ones((2, 50))],
                         ids=["constant", "zeros", "too thin"])
def test_nothing_enclosed_gives_all_zeros(image):
    sal = basin_saliency(image)
    assert sal.dtype == np.float32 and sal.shape == image.shape
    assert not sal.any()


@pytest.mark.parametrize(("image", "polarity"), [
    (np.zeros((3, 16, 16)), "dark"),
    (np.zeros(16), "dark"),
    (np.zeros((16, 16)), "darkest"),
    (np.zeros((16, 16)), "dark-basin"),
])
def test_basin_saliency_rejects_bad_input(image, polarity):
    with pytest.raises(ValueError):
        basin_saliency(image, polarity=polarity)


def test_basin_source_scores_the_mean_of_the_rgb_channels_and_ignores_the_text():
    rgb = np.stack([np.where(DARK_DISC, 0.0, 0.9), np.where(DARK_DISC, 0.3, 0.9), np.where(DARK_DISC, 0.0, 0.9)])
    source = BasinSaliency("dark-basin", sigma=2.0)
    expected = basin_saliency(rgb.mean(axis=0), 2.0, "dark")
    np.testing.assert_array_equal(source(rgb, "breast tumor"), expected)
    np.testing.assert_array_equal(source(rgb, "something else"), expected)
    assert source.settings() == {"method": "dark-basin", "sigma": 2.0}
    assert source.text_driven is False


@pytest.mark.parametrize(("name", "polarity"), [("dark-basin", "dark"), ("bright-dome", "bright"),
                                                ("basin-dome", "both")])
def test_build_saliency_maps_names_to_polarities(name, polarity):
    source = build_saliency({"saliency": name, "smoothing_sigma": 1.5, "gscorecam_topk": 300,
                             "gscorecam_layer": None})
    assert isinstance(source, BasinSaliency)
    assert source.settings() == {"method": name, "sigma": 1.5}
    rgb = np.repeat(GRAY_WITH_BOTH[None], 3, axis=0)
    np.testing.assert_array_equal(source(rgb, ""), basin_saliency(GRAY_WITH_BOTH, 1.5, polarity))


def test_unknown_weights_free_saliency_is_a_user_error():
    with pytest.raises(SamprefError, match="dark-basin"):
        BasinSaliency("spectral-residual")


# ------------------------------------------------------------------------------------------ dense CRF
SQUARE = np.zeros((64, 64), bool)
SQUARE[20:44, 16:40] = True


def noisy_saliency(truth, seed):
    """The true mask blurred, plus Gaussian noise and 8 % salt-and-pepper (uniform values), clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    noisy = np.clip(ndi.gaussian_filter(truth.astype(float), 2) + rng.normal(0, 0.15, truth.shape), 0, 1)
    salt = rng.random(truth.shape) < 0.08
    noisy[salt] = rng.random(int(salt.sum()))
    return noisy


def square_image(dark):
    gray = np.where(SQUARE, 60, 200) if dark else np.where(SQUARE, 200, 60)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dark", [True, False], ids=["dark object", "bright object"])
def test_crf_cleans_a_noisy_saliency_map_better_than_thresholding(seed, dark):
    image = square_image(dark)
    noisy = noisy_saliency(SQUARE, seed)
    mask = crf_mask(image, noisy, DEFAULT_CRF)
    assert mask.dtype == bool and mask.shape == SQUARE.shape
    thresholded = noisy > DEFAULT_CRF["threshold"]
    crf_iou, threshold_iou = iou(mask, SQUARE), iou(thresholded, SQUARE)
    assert threshold_iou < 0.55  # the noise is strong enough to matter
    assert crf_iou > threshold_iou + 0.1
    assert mask[SQUARE].mean() > 0.95  # the object itself is kept
    assert iou(largest_component(mask), SQUARE) > 0.8  # what is left outside is scattered specks


def test_crf_is_deterministic():
    image, noisy = square_image(True), noisy_saliency(SQUARE, 3)
    np.testing.assert_array_equal(crf_mask(image, noisy, DEFAULT_CRF), crf_mask(image, noisy, DEFAULT_CRF))


def test_crf_with_clear_saliency_keeps_the_object_exactly():
    sal = np.where(SQUARE, 0.9, 0.0)
    np.testing.assert_array_equal(crf_mask(square_image(True), sal, DEFAULT_CRF), SQUARE)


@pytest.mark.parametrize("image", [
    np.zeros((64, 64), np.uint8),
    np.zeros((64, 64, 1), np.uint8),
    np.zeros((64, 32, 3), np.uint8),
    np.zeros((32, 64, 3), np.uint8),
], ids=["no channel axis", "one channel", "narrower", "shorter"])
def test_crf_rejects_an_image_that_does_not_match_the_saliency(image):
    with pytest.raises(ValueError, match="does not match"):
        crf_mask(image, np.zeros((64, 64)), DEFAULT_CRF)


# ------------------------------------------------------------------------------------------ components, boxes
def test_largest_component_keeps_the_bigger_blob():
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True  # 9 px, first in raster order
    mask[10:15, 8:12] = True  # 20 px
    expected = np.zeros_like(mask)
    expected[10:15, 8:12] = True
    np.testing.assert_array_equal(largest_component(mask), expected)


def test_largest_component_joins_diagonal_neighbours():
    line = np.zeros((12, 12), bool)
    line[[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]] = True  # 5 px touching only diagonally: one 8-connected component
    square = np.zeros_like(line)
    square[8:10, 8:10] = True  # 4 px: the largest under 4-connectivity
    np.testing.assert_array_equal(largest_component(line | square), line)


def test_largest_component_tie_goes_to_the_first_in_raster_order():
    mask = np.zeros((10, 10), bool)
    mask[6:8, 1:3] = True
    mask[1:3, 6:8] = True  # same size, earlier in raster order
    out = largest_component(mask)
    assert out[1:3, 6:8].all() and out.sum() == 4


def test_largest_component_of_empty_mask_is_empty():
    out = largest_component(np.zeros((8, 9), bool))
    assert out.shape == (8, 9) and out.dtype == bool and not out.any()


def _mask(shape, *cells):
    mask = np.zeros(shape, bool)
    for y, x in cells:
        mask[y, x] = True
    return mask


@pytest.mark.parametrize(("mask", "box"), [
    (_mask((10, 12), (4, 7)), [7, 4, 7, 4]),  # one pixel: x0 == x1, y0 == y1
    (np.pad(np.ones((3, 5), bool), ((2, 5), (1, 6))), [1, 2, 5, 4]),  # rows 2-4, columns 1-5
    (_mask((10, 12), (1, 9), (8, 2)), [2, 1, 9, 8]),  # two pixels span the box
    (np.ones((6, 4), bool), [0, 0, 3, 5]),  # whole non-square image: x1 = w - 1, y1 = h - 1
])
def test_mask_box_is_inclusive_x0_y0_x1_y1(mask, box):
    out = mask_box(mask)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, box)


def test_mask_box_of_empty_mask_is_none():
    assert mask_box(np.zeros((5, 5), bool)) is None


# ------------------------------------------------------------------------------------------ interior points
def test_first_interior_point_is_the_centre_of_an_odd_square():
    mask = np.zeros((12, 14), bool)
    mask[3:8, 6:11] = True  # 5x5, centre row 5, column 8
    points = interior_points(mask, 1)
    assert points.dtype == np.float32
    np.testing.assert_array_equal(points, [[8, 5]])


def test_first_interior_point_is_the_distance_transform_maximum():
    mask = disc(30, 20, 6, shape=(50, 60)) | disc(30, 45, 12, shape=(50, 60))  # the bigger disc is deeper
    x, y = interior_points(mask, 3)[0]
    assert (int(x), int(y)) == (45, 30)


def test_interior_points_spread_inside_the_mask():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 5:55] = True  # a wide bar: later points move along it
    points = interior_points(mask, 5)
    assert points.shape == (5, 2)
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    assert mask[ys, xs].all()
    assert len({(x, y) for x, y in zip(xs, ys)}) == 5
    assert xs.max() - xs.min() >= 20  # not clustered at the centre
    np.testing.assert_array_equal(points, interior_points(mask, 5))  # deterministic
    np.testing.assert_array_equal(points[:3], interior_points(mask, 3))  # greedy: a prefix


def test_interior_points_of_a_ring_stay_on_the_ring():
    mask = disc(25, 25, 12, shape=(50, 50)) & ~disc(25, 25, 7, shape=(50, 50))
    points = interior_points(mask, 4).astype(int)
    assert len(points) == 4
    assert mask[points[:, 1], points[:, 0]].all()


@pytest.mark.parametrize(("top", "left", "shape"), [(0, 0, (10, 10)), (5, 5, (10, 10)), (0, 0, (5, 5))],
                         ids=["top-left corner", "bottom-right corner", "fills the array"])
def test_first_interior_point_of_a_square_touching_the_border_is_its_centre(top, left, shape):
    mask = np.zeros(shape, bool)
    mask[top:top + 5, left:left + 5] = True
    np.testing.assert_array_equal(interior_points(mask, 1), [[left + 2, top + 2]])


@pytest.mark.parametrize(("cells", "n", "expected"), [
    ([(2, 3)], 5, 1),
    ([(0, 0), (0, 1), (1, 0), (1, 1)], 10, 4),
    ([(4, 1), (4, 2), (4, 3)], 3, 3),
])
def test_more_points_than_pixels_gives_each_pixel_once(cells, n, expected):
    mask = _mask((6, 6), *cells)
    points = interior_points(mask, n)
    assert points.shape == (expected, 2)
    assert {(int(x), int(y)) for x, y in points} == {(x, y) for y, x in cells}


@pytest.mark.parametrize(("mask", "n"), [
    (np.ones((5, 5), bool), 0),
    (np.ones((5, 5), bool), -2),
    (np.zeros((5, 5), bool), 3),
])
def test_no_points_has_shape_0_2(mask, n):
    points = interior_points(mask, n)
    assert points.shape == (0, 2) and points.dtype == np.float32


@pytest.mark.parametrize(("valid", "box"), [((256, 256), [0, 0, 255, 255]), ((243, 256), [0, 0, 255, 242]),
                                            ((100, 40), [0, 0, 39, 99]), ((1, 1), [0, 0, 0, 0])])
def test_valid_box_is_the_whole_valid_region(valid, box):
    out = valid_box(valid)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, box)
