"""Frozen trunk + trainable tail of the image encoder (issue 21, the partial configuration's building block).

``tail(trunk(x))`` must equal the full encoder bit for bit, also from a cached (contiguous) copy of the
activations; only the tail trains, and training it trains the model's own encoder. LiteMedSAM runs with its
bundled weights (they load offline in well under a second) and at random init; the ViT flavours at reduced
size through ``arch_overrides``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from sampref_bench.models import build_sam, build_sam_architecture
from sampref_bench.models.encoder_split import (
    encoder_stage_count,
    split_image_encoder,
    split_parameter_counts,
)
from sampref_bench.utilities.errors import SamprefError

SMALL_VIT = {"embed_dim": 32, "depth": 3, "num_heads": 2, "global_attn_indexes": (1,)}
#: Two images: the first padded below row 200 and right of column 180, the second unpadded.
VALID = [[200, 180], [256, 256]]
BOXES = torch.tensor([[20.0, 30.0, 150.0, 170.0], [60.0, 40.0, 240.0, 220.0]])


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread: the machine's two cores are shared (and results do not depend on it)."""


def images(count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def cached_copy(activations: torch.Tensor) -> torch.Tensor:
    """What an on-disk cache gives back: a C-contiguous copy through numpy."""
    return torch.from_numpy(np.ascontiguousarray(activations.numpy()))


def full_forward(model, images01: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model(images01, BOXES, valid_sizes=VALID)`` in eval mode, with the encoder's own input and output."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, inputs, output):
        seen["input"], seen["output"] = inputs[0], output

    handle = model.image_encoder.register_forward_hook(hook)
    try:
        with torch.no_grad():
            seen["logits"], seen["iou"] = model(images01, boxes=BOXES, valid_sizes=VALID)
    finally:
        handle.remove()
    return seen


def small_model(flavour: str):
    overrides = SMALL_VIT if flavour != "tiny" else None
    return build_sam_architecture(flavour, image_size=256, seed=1, arch_overrides=overrides).eval()


# ---------------------------------------------------------------------------------------------- LiteMedSAM
@pytest.fixture(scope="module")
def lite():
    """LiteMedSAM with its bundled weights, two images and the full forward's encoder input/output and logits."""
    torch.set_num_threads(1)
    model = build_sam("litemedsam")
    batch = images()
    return model, batch, full_forward(model, batch)


@pytest.mark.parametrize(("stages", "shape"), [(1, (4096, 320)), (2, (4096, 160))])
def test_litemedsam_cached_activations_give_the_full_forward(lite, stages, shape):
    """Trunk activations of the SamModel input path, cached and fed to the tail, give the full forward's logits."""
    model, batch, full = lite
    split = split_image_encoder(model, trainable_stages=stages)
    assert split.activation_shape == shape

    activations = split.activations(batch, valid_sizes=VALID)
    assert tuple(activations.shape) == (2, *shape) and not activations.requires_grad
    assert torch.equal(model.normalize_input(batch, VALID), full["input"])  # the encoder saw what the trunk sees

    # The partial configuration's cut (1) is checked from the trunk's own output and from a cache's copy;
    # the deeper cut from the copy only (its tail runs six windowed blocks more).
    for given in (activations, cached_copy(activations)) if stages == 1 else (cached_copy(activations),):
        embeddings = split.embed_activations(given)
        assert torch.equal(embeddings, full["output"])  # == image_encoder(x) == model.embed(batch, VALID)
        with torch.no_grad():
            logits, iou = model.decode(embeddings, boxes=BOXES)
        assert torch.equal(logits, full["logits"]) and torch.equal(iou, full["iou"])


def test_litemedsam_parameters_are_shared_and_only_the_tail_requires_grad():
    model = build_sam_architecture("litemedsam", seed=0).eval()
    encoder_params = dict(model.image_encoder.named_parameters())
    before = {name: p.data_ptr() for name, p in encoder_params.items()}
    counts = {k: split_parameter_counts(model, k) for k in (1, 2)}
    assert all(p.requires_grad for p in model.parameters())  # counting froze nothing

    split = split_image_encoder(model, trainable_stages=1)
    assert encoder_stage_count(model) == 4 and (split.encoder, split.unit, split.stages) == ("TinyViT", "stage", 4)
    trunk_ids = {id(p) for p in split.trunk.parameters()}
    tail_ids = {id(p) for p in split.tail.parameters()}
    assert not trunk_ids & tail_ids and trunk_ids | tail_ids == {id(p) for p in encoder_params.values()}
    trainable = {name for name, p in encoder_params.items() if p.requires_grad}
    assert trainable == {name for name in encoder_params if name.startswith(("layers.3.", "neck."))}
    assert {id(encoder_params[name]) for name in trainable} == tail_ids
    assert all(p.requires_grad for p in [*model.prompt_encoder.parameters(), *model.mask_decoder.parameters()])
    assert {name: p.data_ptr() for name, p in model.image_encoder.named_parameters()} == before  # nothing copied

    assert split.parameter_counts() == counts[1]
    assert (counts[1].tail, counts[1].trunk, counts[1].total) == (3_146_708, 2_580_032, 5_726_740)
    assert (counts[2].tail, counts[2].total) == (5_177_228, 5_726_740)
    text = counts[1].describe()
    assert "litemedsam" in text and "last 1 of 4 TinyViT stage" in text and "3,146,708 of 5,726,740" in text
    assert "(54.9 %)" in text and "4096 x 320 per image" in text


def test_litemedsam_gradient_step_trains_the_tail_only_and_the_trunk_stays_in_eval_mode():
    """Random init, one image: a step on the tail moves the model's layers.3 and neck, never the trunk."""
    model = build_sam_architecture("litemedsam", seed=0).eval()
    split = split_image_encoder(model, trainable_stages=1)
    image = images(1, seed=3)
    cached = split.activations(image)

    model.train()  # as a trainer does: the tail trains in train mode, the trunk must not notice
    trunk_bn = model.image_encoder.layers[0].blocks[0].conv1.bn
    running_mean = trunk_bn.running_mean.clone()
    assert torch.equal(split.activations(image), cached)  # eval-mode activations, not batch statistics
    assert torch.equal(trunk_bn.running_mean, running_mean) and trunk_bn.training  # mode restored after the call

    state = {name: value.clone() for name, value in model.image_encoder.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.image_encoder.parameters() if p.requires_grad], lr=1.0)
    logits, _ = model.decode(split.tail(cached), boxes=BOXES[:1])
    logits.square().mean().backward()
    optimizer.step()

    changed = {name for name, p in model.image_encoder.named_parameters() if not torch.equal(p, state[name])}
    tail_names = {name for name, _ in model.image_encoder.named_parameters() if name.startswith(("layers.3.", "neck."))}
    assert changed == tail_names
    assert all(p.grad is None for p in split.trunk.parameters())

    model.eval()  # refreshes TinyViT's attention-bias copies; the trunk still gives the cached activations
    assert torch.equal(split.activations(image), cached)


# ---------------------------------------------------------------------------------------------- tiny, ViTs
@pytest.mark.parametrize(
    ("flavour", "shape"), [("tiny", (64, 64, 64)), ("vit_b", (16, 16, 32)), ("sam-med2d", (16, 16, 32))]
)
def test_tiny_and_vit_tail_of_trunk_is_the_encoder_at_every_cut(flavour, shape):
    model = small_model(flavour)
    batch = images(seed=1)
    full = full_forward(model, batch)
    stages = encoder_stage_count(model)
    assert stages == (2 if flavour == "tiny" else 3)

    for k in range(1, stages + 1):
        split = split_image_encoder(model, trainable_stages=k)
        assert split.unit == "block" and split.activation_shape == shape
        direct = split.trunk(full["input"])
        assert tuple(direct.shape) == (2, *shape)
        assert torch.equal(split.tail(direct), full["output"])  # tail(trunk(x)) == image_encoder(x)
        assert torch.equal(split.tail(cached_copy(direct)), full["output"])

        embeddings = split.embed_activations(cached_copy(split.activations(batch, VALID)))
        assert torch.equal(embeddings, full["output"])
        with torch.no_grad():
            logits, _ = model.decode(embeddings, boxes=BOXES)
        assert torch.equal(logits, full["logits"])

        blocks = len(model.image_encoder.blocks)
        trainable = {name for name, p in model.image_encoder.named_parameters() if p.requires_grad}
        expected = {
            name for name, _ in model.image_encoder.named_parameters()
            if name.startswith("neck.") or any(name.startswith(f"blocks.{i}.") for i in range(blocks - k, blocks))
        }
        assert trainable == expected

    with pytest.raises(ValueError, match="expects activations"):
        split.embed_activations(torch.zeros(2, 5, 5, 5))


@pytest.mark.parametrize("flavour", ["tiny", "vit_b", "sam-med2d"])
def test_tiny_and_vit_gradient_step_moves_the_tail_blocks_and_neck_only(flavour):
    model = small_model(flavour)
    split = split_image_encoder(model, trainable_stages=1)
    cached = cached_copy(split.activations(images(seed=2)))
    state = {name: p.detach().clone() for name, p in model.image_encoder.named_parameters()}
    optimizer = torch.optim.SGD(split.tail.parameters(), lr=1.0)

    model.train()
    logits, _ = model.decode(split.tail(cached), boxes=BOXES)
    logits.square().mean().backward()
    optimizer.step()

    last = len(model.image_encoder.blocks) - 1
    changed = {name for name, p in model.image_encoder.named_parameters() if not torch.equal(p, state[name])}
    assert changed == {name for name in state if name.startswith(("neck.", f"blocks.{last}."))}


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("flavour", "bad", "needle"),
    [
        ("litemedsam", 0, "'litemedsam': its TinyViT image encoder has 4 stages; trainable_stages must be an integer "
                          "in 1..4"),
        ("litemedsam", 5, "has 4 stages"),
        ("litemedsam", True, "in 1..4"),
        ("vit_b", 4, "'vit_b': its SAM ViT image encoder has 3 blocks; trainable_stages must be an integer in 1..3"),
        ("tiny", 1.0, "'tiny': its tiny conv image encoder has 2 blocks"),
    ],
)
def test_out_of_range_trainable_stages_is_a_sampref_error(flavour, bad, needle):
    model = build_sam_architecture("litemedsam") if flavour == "litemedsam" else small_model(flavour)
    for call in (split_image_encoder, split_parameter_counts):
        with pytest.raises(SamprefError, match=re.escape(needle)):
            call(model, trainable_stages=bad)
    assert all(p.requires_grad for p in model.parameters())  # a refused split freezes nothing


def test_an_unsupported_encoder_is_a_sampref_error():
    model = small_model("tiny")
    model.image_encoder = nn.Conv2d(3, 256, kernel_size=4, stride=4)
    with pytest.raises(SamprefError, match=r"flavour 'tiny': cannot split an image encoder of type Conv2d"):
        split_image_encoder(model)
    with pytest.raises(SamprefError, match="no known stages"):
        encoder_stage_count(model)
