"""LoRA in the image encoder's attention qkv projections (SAMed-style parameter-efficient configuration).

Right after ``add_lora`` the model computes what it computed before, bit for bit; only the LoRA factors
train and a step moves nothing else of the encoder (TinyViT's BatchNorm statistics included); the keys keep
SAM's layout and a saved LoRA + decoder subset restores the model. LiteMedSAM runs once with its bundled
weights (one forward and one forward + backward); the ViT flavours at reduced size through ``arch_overrides``.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sampref_bench.models import build_sam, build_sam_architecture
from sampref_bench.models.lora import LoraLinear, add_lora, is_lora, lora_parameter_names
from sampref_bench.utilities.errors import SamprefError

SMALL_VIT = {"embed_dim": 32, "depth": 3, "num_heads": 2, "global_attn_indexes": (1,)}
VALID = [[200, 180], [256, 256]]
BOXES = torch.tensor([[20.0, 30.0, 150.0, 170.0], [60.0, 40.0, 240.0, 220.0]])
#: LiteMedSAM's TinyViT attention blocks: (channels d, blocks) of stages 1..3; each qkv is Linear(d, 3 d).
TINYVIT_ATTENTION = [(128, 2), (160, 6), (320, 2)]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread: the machine's two cores are shared (and results do not depend on it)."""


def images(count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def small_model(flavour: str, seed: int = 1):
    overrides = SMALL_VIT if flavour != "tiny" else None
    return build_sam_architecture(flavour, image_size=256, seed=seed, arch_overrides=overrides).eval()


def trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def changed_keys(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}


# ---------------------------------------------------------------------------------------------- LiteMedSAM
def test_litemedsam_lora_is_exact_at_start_and_a_step_moves_only_lora():
    """Bundled weights: the train-mode LoRA encoder gives the original eval-mode embedding bit for bit; one
    Adam step over all parameters moves only the LoRA B factors (A's gradient is exactly 0 while B = 0),
    no frozen weight and no BatchNorm statistic."""
    model = build_sam("litemedsam")
    image = images(1, seed=3)
    with torch.no_grad():
        original = model.image_encoder(image)
    keys = list(model.state_dict())

    summary = add_lora(model, rank=4)
    names = lora_parameter_names(model)
    assert summary.wrapped_layers == 10 and summary.lora_parameters == 29_696
    assert summary.encoder_parameters == 5_726_740 and summary.frozen_norm_layers > 0
    assert [key for key in model.state_dict() if key not in names] == keys  # SAM's layout, order kept
    assert trainable_names(model.image_encoder) == {name.removeprefix("image_encoder.") for name in names}

    model.train()  # as a trainer does; the frozen encoder's BatchNorm stays in eval mode
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    embeddings = model.image_encoder(image)
    assert torch.equal(embeddings, original)
    embeddings.square().mean().backward()
    optimizer.step()

    assert changed_keys(model, before) == {name for name in names if name.endswith("lora_B")}
    frozen = [p for name, p in model.image_encoder.named_parameters() if not name.endswith(("lora_A", "lora_B"))]
    assert all(p.grad is None for p in frozen)


def test_litemedsam_lora_parameter_count_is_rank_times_in_plus_out_per_layer():
    model = build_sam_architecture("litemedsam", seed=0)
    encoder_parameters = sum(p.numel() for p in model.image_encoder.parameters())
    summary = add_lora(model, rank=8, alpha=16.0)
    expected = sum(blocks * 8 * (dim + 3 * dim) for dim, blocks in TINYVIT_ATTENTION)
    assert summary.lora_parameters == expected == 2 * 29_696
    assert summary.wrapped_layers == sum(blocks for _, blocks in TINYVIT_ATTENTION)
    assert summary.layer_names[0] == "layers.1.blocks.0.attn.qkv" and summary.layer_names[-1].startswith("layers.3.")
    assert summary.encoder_parameters == encoder_parameters and summary.scaling == 2.0
    text = summary.describe()
    assert "litemedsam: LoRA rank 8 (alpha 16) on the 10 attention qkv projections of the TinyViT" in text
    assert "59,392 trainable parameters beside 5,726,740 frozen ones (1.03 % of the encoder)" in text


# ---------------------------------------------------------------------------------------------- ViTs
@pytest.mark.parametrize("flavour", ["vit_b", "sam-med2d"])
def test_vit_lora_is_exact_at_start_and_only_lora_requires_grad(flavour):
    model = small_model(flavour)
    batch = images()
    with torch.no_grad():
        original = model(batch, boxes=BOXES, valid_sizes=VALID)
    weights = {name: p.data_ptr() for name, p in model.image_encoder.named_parameters()}

    summary = add_lora(model, rank=2)
    assert is_lora(model) and is_lora(model.image_encoder)
    assert summary.layer_names == ("blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.2.attn.qkv")
    assert summary.lora_parameters == 3 * 2 * (32 + 96)  # rank (in + out) per block, qkv = Linear(32, 96)
    assert all(isinstance(block.attn.qkv, LoraLinear) for block in model.image_encoder.blocks)
    with torch.no_grad():
        after = model(batch, boxes=BOXES, valid_sizes=VALID)
    assert all(torch.equal(a, b) for a, b in zip(after, original))

    names = lora_parameter_names(model)
    assert names == [f"image_encoder.blocks.{i}.attn.qkv.lora_{ab}" for i in range(3) for ab in "AB"]
    assert trainable_names(model.image_encoder) == {name.removeprefix("image_encoder.") for name in names}
    assert all(p.requires_grad for p in [*model.prompt_encoder.parameters(), *model.mask_decoder.parameters()])
    shared = {name: p.data_ptr() for name, p in model.image_encoder.named_parameters() if "lora_" not in name}
    assert shared == weights  # the pretrained weights are wrapped, not copied


def test_vit_adam_steps_move_lora_and_decoder_only_and_a_saved_subset_restores_the_model():
    model = small_model("vit_b")
    add_lora(model, rank=4, alpha=8.0)
    names = lora_parameter_names(model)
    encoder_before = {name: p.detach().clone() for name, p in model.image_encoder.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(2):  # step 1 moves B only (A's gradient is 0 while B = 0), step 2 both
        optimizer.zero_grad()
        logits, _ = model(images(seed=step), boxes=BOXES, valid_sizes=VALID)
        logits.square().mean().backward()
        optimizer.step()
    changed = {
        f"image_encoder.{name}" for name, p in model.image_encoder.named_parameters()
        if not torch.equal(p, encoder_before[name])
    }
    assert changed == set(names)

    model.eval()
    state = model.state_dict()
    saved = {key: state[key].clone() for key in names + [k for k in state if not k.startswith("image_encoder.")]}
    batch = images(seed=5)
    with torch.no_grad():
        expected = model(batch, boxes=BOXES, valid_sizes=VALID)

    fresh = small_model("vit_b")  # same "pretrained" weights (same seed), another LoRA init
    torch.manual_seed(1234)
    add_lora(fresh, rank=4, alpha=8.0)
    assert not torch.equal(fresh.state_dict()[names[0]], saved[names[0]])
    result = fresh.load_state_dict(saved, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {key for key in state if key.startswith("image_encoder.")} - set(names)
    with torch.no_grad():
        restored = fresh(batch, boxes=BOXES, valid_sizes=VALID)
    assert all(torch.equal(a, b) for a, b in zip(restored, expected))


def test_lora_init_follows_the_global_seed_and_keys_are_stable():
    draws = []
    for _ in range(2):
        model = small_model("vit_b")
        torch.manual_seed(7)
        add_lora(model)
        draws.append({key: model.state_dict()[key] for key in lora_parameter_names(model)})
    assert list(draws[0]) == list(draws[1])
    assert all(torch.equal(draws[0][key], draws[1][key]) for key in draws[0])
    a = draws[0]["image_encoder.blocks.0.attn.qkv.lora_A"]
    assert tuple(a.shape) == (4, 32) and float(a.abs().max()) <= 32**-0.5  # U(-1/sqrt(in), 1/sqrt(in))
    assert not torch.equal(a, draws[0]["image_encoder.blocks.1.attn.qkv.lora_A"])
    assert all(not value.any() for key, value in draws[0].items() if key.endswith("lora_B"))


def test_lora_linear_is_w_x_plus_scaled_b_a_x_with_dropout_in_train_mode_only():
    model = small_model("vit_b")
    add_lora(model, rank=4, alpha=2.0, dropout=0.5)
    qkv = model.image_encoder.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.lora_B.normal_()
        x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
        qkv.eval()
        exact = torch.nn.functional.linear(x, qkv.weight, qkv.bias) + 0.5 * x @ qkv.lora_A.T @ qkv.lora_B.T
        assert torch.allclose(qkv(x), exact, atol=1e-5)
        qkv.train()
        assert not torch.allclose(qkv(x), qkv.eval()(x))


# ---------------------------------------------------------------------------------------------- refusals
def test_tiny_flavour_without_attention_is_a_sampref_error_naming_the_configurations():
    model = small_model("tiny")
    needle = (
        "flavour 'tiny': its image encoder (TinyConvEncoder) has no attention qkv projection, so there is nothing to "
        'adapt with LoRA; train it with the configuration "2d", "2d_partial", "2d_full" instead'
    )
    with pytest.raises(SamprefError, match=re.escape(needle)):
        add_lora(model)
    assert not is_lora(model) and lora_parameter_names(model) == []
    assert all(p.requires_grad for p in model.parameters())  # a refusal freezes nothing


def test_adding_lora_twice_is_a_sampref_error():
    model = small_model("vit_b")
    add_lora(model)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(SamprefError, match=r"flavour 'vit_b': LoRA is already in this model's SAM ViT image encoder"):
        add_lora(model, rank=8)
    assert list(model.state_dict()) == list(state)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 0}, "rank must be a positive integer, got 0"),
        ({"rank": 2.0}, "rank must be a positive integer"),
        ({"rank": True}, "rank must be a positive integer"),
        ({"alpha": 0.0}, "alpha must be a positive number"),
        ({"alpha": float("nan")}, "alpha must be a positive number"),
        ({"dropout": 1.0}, "dropout must be a probability in [0, 1), got 1.0"),
    ],
)
def test_bad_lora_arguments_are_sampref_errors(kwargs, needle):
    model = small_model("vit_b")
    with pytest.raises(SamprefError, match=re.escape(needle)):
        add_lora(model, **kwargs)
    assert not is_lora(model)


def test_a_module_without_image_encoder_is_a_sampref_error():
    with pytest.raises(SamprefError, match="add_lora needs a SamModel .with an image_encoder., got Linear"):
        add_lora(nn.Linear(4, 4))
