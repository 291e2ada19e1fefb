"""Each SAM flavour's encoder receives the input arithmetic of its authors' code, padding included.

The references below re-implement, on constructed images, what each flavour's own preprocessing computes:

* SAM (``vit_*``): normalize a 0-255 RGB image with pixel mean (123.675, 116.28, 103.53) and std
  (58.395, 57.12, 57.375), then pad bottom/right with 0 to the square input (0 *after* normalization).
* SAM-Med2D: normalize with the same mean/std, then pad with 0 (its loaders pad the normalized image).
  sampref keeps its own geometry (longest side resized, bottom/right padding), so the padding sits where
  sampref puts it; the value is SAM-Med2D's.
* LiteMedSAM / MedSAM: min-max scale to [0, 1], pad bottom/right with 0 (0 in [0, 1]).

What the encoder receives is captured with a forward pre-hook on ``image_encoder`` of small random-init
models (no real weights are needed: the arithmetic happens before the encoder).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sampref_bench.models import build_sam, build_sam_architecture
from sampref_bench.models.flavours import FLAVOURS
from sampref_bench.models.sam import valid_mask
from sampref_bench.planners.data import PreprocessedData
from sampref_bench.planners.embedding_cache import EmbeddingCache, slice_valid_sizes
from sampref_bench.planners.preprocessing import normalize
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.trainers.sam.trainer import SAMTrainer
from tests.trainer_helpers import planned_phantoms

SMALL_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,)}
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
PLANS = {"normalization": {"scheme": "per_image_percentile", "percentiles": [0.5, 99.5]}}
SIZE = 256
CASE = "synthetic_000"


class _Captured(Exception):
    """Raised by the pre-hook once the encoder input is recorded (the encoder itself need not run)."""


def encoder_input(model, images: torch.Tensor, valid_sizes=None) -> torch.Tensor:
    """What ``model.image_encoder`` receives from ``model.embed(images, valid_sizes)``: (B, 3, S, S)."""
    seen = []

    def hook(module, args):
        seen.append(args[0].detach().clone())
        raise _Captured

    handle = model.image_encoder.register_forward_pre_hook(hook)
    try:
        with pytest.raises(_Captured):
            model.embed(images, valid_sizes=valid_sizes)
    finally:
        handle.remove()
    return seen[0]


def small(flavour: str):
    """A random-init model of ``flavour`` at 256 px (ViTs reduced through arch overrides)."""
    overrides = SMALL_VIT if FLAVOURS[flavour].family == "vit" else None
    return build_sam_architecture(flavour, image_size=SIZE, arch_overrides=overrides).eval()


def raw_image(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """(C, H, W) float 0-255 integers; 10% of each channel's pixels are 0 and 10% are 255, so the planner's
    0.5/99.5 percentile scaling is exactly min-max scaling (the reference's arithmetic)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 255, size=(channels, height, width)).astype(np.float64)
    flat = image.reshape(channels, -1)
    n = flat.shape[1] // 10
    for c in range(channels):
        order = rng.permutation(flat.shape[1])
        flat[c, order[:n]] = 0.0
        flat[c, order[n:2 * n]] = 255.0
    return flat.reshape(channels, height, width)


def sampref_input(raw: np.ndarray) -> tuple[torch.Tensor, SliceTransform]:
    """The planner's path: per-image percentile scaling, 3 channels, the slice transform -> (1, 3, S, S) in [0, 1]."""
    image01, _ = normalize(raw, PLANS)
    if image01.shape[0] == 1:
        image01 = np.repeat(image01, 3, axis=0)
    transform = SliceTransform.for_shape(raw.shape[1:], SIZE)
    return torch.from_numpy(transform.image(image01))[None], transform


# ---------------------------------------------------------------- re-implemented references (HWC, as theirs)
def sam_reference(raw: np.ndarray, size: int) -> np.ndarray:
    """SAM: (x - mean) / std on the 0-255 RGB image, then zero padding bottom/right to size x size."""
    hwc = raw.transpose(1, 2, 0)
    normalized = (hwc - MEAN) / STD
    padded = np.zeros((size, size, 3))
    padded[: hwc.shape[0], : hwc.shape[1]] = normalized
    return padded.transpose(2, 0, 1)


def sam_med2d_reference(raw_grey: np.ndarray, size: int) -> np.ndarray:
    """SAM-Med2D's loaders: a 3-channel image normalized with SAM's mean/std, then padded with 0 (here at
    sampref's bottom/right place). Its images are read as BGR and normalized with RGB-ordered statistics;
    for a grey image the three channels are equal, so channel k is still ``(v - mean[k]) / std[k]``."""
    bgr = np.repeat(raw_grey.transpose(1, 2, 0), 3, axis=2)
    normalized = (bgr - MEAN) / STD
    padded = np.zeros((size, size, 3))
    padded[: bgr.shape[0], : bgr.shape[1]] = normalized
    return padded.transpose(2, 0, 1)


def lite_medsam_reference(raw_grey: np.ndarray, size: int) -> np.ndarray:
    """LiteMedSAM / MedSAM: min-max scale the (resized) 3-channel image to [0, 1], then pad with 0."""
    hwc = np.repeat(raw_grey.transpose(1, 2, 0), 3, axis=2)
    scaled = (hwc - hwc.min()) / np.clip(hwc.max() - hwc.min(), 1e-8, None)
    padded = np.zeros((size, size, 3))
    padded[: hwc.shape[0], : hwc.shape[1]] = scaled
    return padded.transpose(2, 0, 1)


# ---------------------------------------------------------------- the arithmetic, per flavour
@pytest.mark.parametrize("flavour", ["vit_b", "vit_l", "vit_h"])
def test_sam_flavours_pad_with_zero_after_normalization(flavour):
    raw = raw_image(SIZE, 160, channels=3)  # longest side already S: no resampling, only padding
    images, transform = sampref_input(raw)
    assert transform.valid_size == (SIZE, 160)
    got = encoder_input(small(flavour), images, [transform.valid_size])[0].double().numpy()
    expected = sam_reference(raw, SIZE)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    assert np.all(got[:, :, 160:] == 0.0)  # not (0 - mean) / std, about -2.1 std


def test_sam_med2d_pads_with_zero_after_normalization():
    raw = raw_image(SIZE, 96, channels=1, seed=1)
    images, transform = sampref_input(raw)
    got = encoder_input(small("sam-med2d"), images, [transform.valid_size])[0].double().numpy()
    np.testing.assert_allclose(got, sam_med2d_reference(raw, SIZE), rtol=0, atol=2e-5)
    assert np.all(got[:, :, 96:] == 0.0)


@pytest.mark.parametrize("flavour", ["litemedsam", "medsam", "tiny"])
def test_unit_flavours_pad_with_zero_in_unit_range_and_are_unchanged(flavour):
    raw = raw_image(200, SIZE, channels=1, seed=2)  # wide image: padding at the bottom
    images, transform = sampref_input(raw)
    model = small(flavour)
    got = encoder_input(model, images, [transform.valid_size])
    np.testing.assert_allclose(got[0].double().numpy(), lite_medsam_reference(raw, SIZE), rtol=0, atol=1e-6)
    assert torch.equal(got[0, :, 200:], torch.zeros(3, SIZE - 200, SIZE))
    # the same numbers as before valid sizes existed: the [0, 1] image passes unchanged
    assert torch.equal(got, images) and torch.equal(encoder_input(model, images), images)


def test_resized_slice_padding_is_zero_and_valid_region_is_normalized():
    raw = raw_image(512, 300, channels=1, seed=3)  # shrunk to 256 x 150, then padded on the right
    images, transform = sampref_input(raw)
    assert transform.valid_size == (256, 150)
    model = small("vit_b")
    got = encoder_input(model, images, [transform.valid_size])[0]
    mean, std = torch.tensor(MEAN).float().view(3, 1, 1), torch.tensor(STD).float().view(3, 1, 1)
    torch.testing.assert_close(got[:, :, :150], (images[0, :, :, :150] * 255 - mean) / std)
    assert torch.equal(got[:, :, 150:], torch.zeros(3, SIZE, SIZE - 150))
    # without valid sizes the whole square counts as image: the old arithmetic, padding at -mean / std
    whole = encoder_input(model, images)[0]
    torch.testing.assert_close(whole[:, 0, 200], (-mean / std).view(3))


def test_batches_mask_each_image_with_its_own_valid_size():
    mask = valid_mask([(4, 2), (1, 3)], batch=2, size=4)
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].sum() == 8 and mask[0, 0, :, :2].all() and not mask[0, 0, :, 2:].any()
    assert mask[1, 0, 0, :3].all() and mask[1, 0].sum() == 3
    model = small("vit_b")
    images = torch.rand(2, 3, SIZE, SIZE)
    got = encoder_input(model, images, torch.tensor([[SIZE, 100], [50, SIZE]]))
    assert torch.equal(got[0, :, :, 100:], torch.zeros(3, SIZE, SIZE - 100)) and got[0, :, :, :100].ne(0).all()
    assert torch.equal(got[1, :, 50:], torch.zeros(3, SIZE - 50, SIZE)) and got[1, :, :50].ne(0).all()


def test_bad_valid_sizes_are_refused():
    with pytest.raises(ValueError, match="one \\(h, w\\) pair per image"):
        valid_mask([(4, 4)], batch=2, size=4)
    with pytest.raises(ValueError, match="1..4"):
        valid_mask([(5, 4)], batch=1, size=4)
    with pytest.raises(ValueError, match="1..4"):
        valid_mask([(0, 4)], batch=1, size=4)


# ---------------------------------------------------------------- every caller passes the valid size
def _phantom_data(sampref_roots) -> PreprocessedData:
    folder = sampref_roots["preprocessed"] / "Dataset007_Phantom"
    return PreprocessedData(folder / "samprefPlans_2d", json.loads((folder / "plans.json").read_text()))


def _recording(model):
    seen = []
    model.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def test_embedding_cache_and_trainable_encoder_feed_valid_sizes(sampref_roots):
    planned_phantoms()  # 40 x 32 slices: 256 x 205 valid, 51 padded columns
    data = _phantom_data(sampref_roots)
    assert slice_valid_sizes(data, [(CASE, 0)]) == [(256, 205)]
    rgb = torch.from_numpy(data.rgb(CASE, [0, 1]))
    mean, std = torch.tensor(MEAN).float().view(1, 3, 1, 1), torch.tensor(STD).float().view(1, 3, 1, 1)

    sam = small("vit_b")
    seen = _recording(sam)
    EmbeddingCache(data, sam).ensure([(CASE, 0), (CASE, 1)], progress=False)
    fed = torch.cat(seen)
    assert torch.equal(fed[..., 205:], torch.zeros(2, 3, SIZE, SIZE - 205))
    torch.testing.assert_close(fed[..., :205], ((rgb * 255 - mean) / std)[..., :205])

    seen.clear()  # a trainer whose encoder trains embeds through the same path
    stub = SimpleNamespace(cache=None, data=data, network=sam, device=torch.device("cpu"))
    SAMTrainer.embeddings(stub, [SimpleNamespace(case=CASE, slice=0), SimpleNamespace(case=CASE, slice=1)])
    assert torch.equal(seen[0], fed)

    tiny = build_sam("tiny", seed=0, arch_overrides={"stride": 16})
    seen_tiny = _recording(tiny)
    EmbeddingCache(data, tiny).ensure([(CASE, 0), (CASE, 1)], progress=False)
    assert torch.equal(torch.cat(seen_tiny), rgb)  # unit flavours: the stored [0, 1] slices, unchanged


# ---------------------------------------------------------------- identities
#: Values computed with the code before input conventions existed; they must not change.
TODAY = {
    "litemedsam": "litemedsam-256-79d8c9dca6db4d69",
    "tiny": "tiny-256-random-seed-0",
    "tiny_stride16": "tiny-256-random-seed-0-arch4bb79db5",
    "medsam_small": "medsam-256-random-seed-0-arch6710200f",
    "vit_b_small": "vit_b-256-random-seed-0-arch6710200f",
    "sam-med2d_small": "sam-med2d-256-random-seed-0-arch6710200f",
}
TODAY_CACHE = {
    "tiny": "embeddings/tiny-256-random-seed-0-arch4bb79db5/synthetic_000_0003_574e92239f2d.npy",
    "litemedsam": "embeddings/litemedsam-256-79d8c9dca6db4d69/synthetic_000_0003_574e92239f2d.npy",
    "vit_b": "embeddings/vit_b-256-random-seed-0-arch6710200f/synthetic_000_0003_574e92239f2d.npy",
}


def test_unit_flavours_keep_their_identity_and_sam_flavours_get_a_new_one():
    lite = build_sam("litemedsam")
    assert lite.weights_id == lite.embedding_id == TODAY["litemedsam"]
    tiny = build_sam("tiny", seed=0)
    assert tiny.weights_id == tiny.embedding_id == TODAY["tiny"]
    medsam = small("medsam")
    assert medsam.weights_id == medsam.embedding_id == TODAY["medsam_small"]
    for flavour in ("vit_b", "sam-med2d"):
        model = small(flavour)
        assert model.input_convention == 2 and model.weights_id == TODAY[f"{flavour}_small"]
        assert model.embedding_id == f"{TODAY[f'{flavour}_small']}-in2" != TODAY[f"{flavour}_small"]
    assert {name: spec.identity for name, spec in FLAVOURS.items()} == {
        "litemedsam": "litemedsam", "vit_b": "vit_b-in2", "vit_l": "vit_l-in2", "vit_h": "vit_h-in2",
        "medsam": "medsam", "sam-med2d": "sam-med2d-in2", "tiny": "tiny"}


def test_embedding_cache_keys(sampref_roots):
    planned_phantoms()
    data = _phantom_data(sampref_roots)
    root = sampref_roots["preprocessed"] / "Dataset007_Phantom"

    def where(model):
        return EmbeddingCache(data, model).path(CASE, 3).relative_to(root).as_posix()

    assert where(build_sam("tiny", seed=0, arch_overrides={"stride": 16})) == TODAY_CACHE["tiny"]
    assert where(build_sam("litemedsam")) == TODAY_CACHE["litemedsam"]
    new = where(small("vit_b"))
    assert new != TODAY_CACHE["vit_b"]
    assert new == TODAY_CACHE["vit_b"].replace("arch6710200f/", "arch6710200f-in2/")


@pytest.mark.parametrize(("model", "configuration", "expected"), [
    ("litemedsam", "2d", "2d"), ("litemedsam", "2d_full", "2d_full"), ("litemedsam", "2d_lora", "2d_lora"),
    ("tiny", "2d", "2d-tiny"), ("medsam", "2d", "2d-medsam"), ("vit_b", "2d", "2d-vit_b-in2"),
    ("vit_h", "2d_full", "2d_full-vit_h-in2"), ("sam-med2d", "2d_partial", "2d_partial-sam-med2d-in2"),
])
def test_run_folder_configuration(model, configuration, expected):
    stub = SimpleNamespace(configuration=configuration, config={"model": model})
    assert SAMTrainer.base_configuration_name(stub) == expected
