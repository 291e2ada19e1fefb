"""BiomedCLIP loading and gScoreCAM, on tiny randomly initialised open_clip models (no real weights needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from sampref_bench.prompts.biomedclip import (
    BIOMEDCLIP_HUB,
    ENV_VAR,
    bundle_from_model,
    encode_texts,
    load_biomedclip,
)
from sampref_bench.prompts.gscorecam import GScoreCAM
from sampref_bench.utilities.errors import SamprefError

MEAN = [0.5, 0.4, 0.3]
STD = [0.2, 0.25, 0.3]
MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip(seed: int = 0, cfg: dict = MODEL_CFG) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(cfg))).eval()
    open_clip.set_model_preprocess_cfg(model, {"size": 32, "mean": MEAN, "std": STD})
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.SimpleTokenizer(context_length=16)


@pytest.fixture(scope="module")
def bundle(tokenizer):
    return bundle_from_model(tiny_clip(), tokenizer, "tiny-test")


def generic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    blob = np.exp(-((yy - 0.3) ** 2 + (xx - 0.6) ** 2) / 0.02)
    return np.clip(0.6 * blob[None] + 0.4 * rng.random((3, height, width)), 0, 1).astype(np.float32)


def save_model_dir(folder: Path, model: torch.nn.Module, model_cfg: dict = MODEL_CFG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": MEAN, "std": STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def image_features(bundle, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bundle.model.encode_image(image, normalize=True)


# --------------------------------------------------------------------------------------------- gScoreCAM


def test_bundle_from_model_reads_preprocessing(bundle):
    assert bundle.image_size == 32
    assert bundle.image_mean == pytest.approx(tuple(MEAN)) and bundle.image_std == pytest.approx(tuple(STD))
    assert not bundle.model.training
    with pytest.raises(ValueError, match="filename-safe"):
        bundle_from_model(bundle.model, bundle.tokenizer, "bad/id")


def test_saliency_shape_dtype_range_on_non_square_image(bundle):
    image = generic_image(45, 71)
    saliency = GScoreCAM(bundle, topk=16)(image, "breast tumor")
    assert saliency.shape == (45, 71) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert saliency.max() == pytest.approx(1.0) and np.ptp(saliency) > 0.5
    assert len(np.unique(saliency)) > 10


def test_saliency_is_deterministic(bundle):
    image = generic_image(40, 50, seed=1)
    first = GScoreCAM(bundle, topk=8)(image, "breast tumor")
    cam = GScoreCAM(bundle, topk=8)
    second, third = cam(image, "breast tumor"), cam(image, "breast tumor")
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)


def test_saliency_rejects_bad_images(bundle):
    cam = GScoreCAM(bundle)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        cam(np.zeros((32, 32), np.float32), "x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cam(np.full((3, 8, 8), 255.0, np.float32), "x")


def independent_ranking(bundle, layer: str, image01: np.ndarray, text: str) -> tuple[np.ndarray, torch.Tensor]:
    """Mean gradient (over all tokens) of the image-text cosine wrt the layer's output, computed here from scratch.

    The image is already at the tower's input size, so the only preprocessing is mean/std normalisation."""
    model = bundle.model
    module = dict(model.visual.named_modules())[layer]
    x = (torch.from_numpy(image01)[None] - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    outputs = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        with torch.no_grad():
            text_feature = model.encode_text(bundle.tokenizer([text]), normalize=True)[0]
        image_feature = model.encode_image(x, normalize=True)[0]
        (grad,) = torch.autograd.grad(image_feature @ text_feature, outputs[0])
    finally:
        handle.remove()
    assert grad.shape == (1, 1 + 16, 32)  # batch-first tokens: CLS + 4 x 4 patches, 32 channels
    return grad[0].mean(dim=0).numpy(), grad


@pytest.mark.parametrize("layer", ["transformer.resblocks.1", "transformer.resblocks.0"])
def test_channels_used_are_the_topk_by_mean_gradient(bundle, layer):
    image = generic_image(32, 32, seed=2)
    cam = GScoreCAM(bundle, target_layer=layer, topk=6)
    cam(image, "breast tumor")
    importance, grad = independent_ranking(bundle, layer, image, "breast tumor")
    expected = np.argsort(-importance, kind="stable")[:6]
    assert cam.last_channels.dtype == np.int64 and len(cam.last_channels) == 6
    assert set(cam.last_channels.tolist()) == set(expected.tolist())
    np.testing.assert_array_equal(cam.last_channels, expected)  # most important first
    if layer == "transformer.resblocks.1":
        # Last block: only the CLS token reaches the embedding, so the ranking is the CLS-token gradient.
        assert float(grad[0, 1:].abs().max()) == 0.0 and float(grad[0, 0].abs().max()) > 0.0


def test_topk_larger_than_channel_count_is_clipped(bundle):
    cam = GScoreCAM(bundle, topk=1000)
    saliency = cam(generic_image(30, 30), "lesion")
    assert sorted(cam.last_channels.tolist()) == list(range(32))
    assert saliency.shape == (30, 30)
    assert cam.settings() == {"method": "gscorecam", "target_layer": "transformer.resblocks.1", "topk": 1000,
                              "weights_id": "tiny-test"}


def test_target_layer_is_configurable_and_unknown_names_are_refused(bundle):
    image = generic_image(32, 40, seed=3)
    last = GScoreCAM(bundle, topk=8)
    first = GScoreCAM(bundle, target_layer="transformer.resblocks.0", topk=8)
    assert last.target_layer == "transformer.resblocks.1" and first.settings()["target_layer"].endswith(".0")
    assert not np.allclose(last(image, "tumor"), first(image, "tumor"))
    with pytest.raises(SamprefError, match="unknown gScoreCAM target layer 'blocks.7'") as info:
        GScoreCAM(bundle, target_layer="blocks.7")
    assert "transformer.resblocks.0" in str(info.value) and "transformer.resblocks.1" in str(info.value)


def test_timm_vit_tower_defaults_to_its_last_block(tokenizer):
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(
        embed_dim=32,
        vision_cfg={"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                    "timm_proj": "linear", "image_size": 32},
        text_cfg=MODEL_CFG["text_cfg"],
    )
    model.visual.set_input_size(32)  # BiomedCLIP's layout (timm ViT trunk, CLS pooling) at a 2 x 2 patch grid
    cam = GScoreCAM(bundle_from_model(model, tokenizer, "tiny-timm"), topk=20)
    assert cam.target_layer == "trunk.blocks.11"
    saliency = cam(generic_image(33, 47), "breast tumor")
    assert saliency.shape == (33, 47) and saliency.dtype == np.float32
    assert 0.0 <= saliency.min() and saliency.max() <= 1.0 and np.ptp(saliency) > 0
    assert len(cam.last_channels) == 20 and cam.last_channels.max() < 192


def test_encode_texts_shape_norm_and_determinism(bundle):
    features = encode_texts(bundle, ["breast tumor", "benign lesion", "background"])
    assert features.shape == (3, 32) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(features, encode_texts(bundle, ["breast tumor", "benign lesion", "background"]))
    assert not np.allclose(features[0], features[1])
    assert encode_texts(bundle, []).shape == (0, 32)


# --------------------------------------------------------------------------------------------- loading


def test_load_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(SamprefError) as info:
        load_biomedclip(missing)
    message = str(info.value)
    assert str(missing) in message and "open_clip_config.json" in message and ENV_VAR in message


def test_load_directory_without_config_names_the_file(tmp_path):
    with pytest.raises(SamprefError, match="open_clip_config.json") as info:
        load_biomedclip(tmp_path)
    assert str(tmp_path / "open_clip_config.json") in str(info.value)


def test_load_directory_without_weights_names_the_weights_file(tmp_path):
    folder = save_model_dir(tmp_path / "clip", tiny_clip())
    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(SamprefError, match="open_clip_pytorch_model.bin") as info:
        load_biomedclip(folder)
    assert str(folder) in str(info.value)


@pytest.mark.parametrize("kind", ["garbage", "other_architecture"])
def test_load_wrong_weights_file_names_it(tmp_path, kind):
    folder = save_model_dir(tmp_path / "clip", tiny_clip())
    weights = folder / "open_clip_pytorch_model.bin"
    if kind == "garbage":
        weights.write_bytes(b"not a checkpoint" * 10)
    else:
        other = json.loads(json.dumps(MODEL_CFG))
        other["vision_cfg"]["width"] = 64
        torch.save(tiny_clip(cfg=other).state_dict(), weights)
    with pytest.raises(SamprefError) as info:
        load_biomedclip(folder)
    assert str(weights) in str(info.value) and "open_clip_config.json" in str(info.value)


def test_load_round_trip_gives_the_same_features(tmp_path, bundle):
    folder = save_model_dir(tmp_path / "clip", bundle.model)
    loaded = load_biomedclip(str(folder))
    digest = hashlib.sha256((folder / "open_clip_pytorch_model.bin").read_bytes()).hexdigest()
    assert loaded.weights_id == f"biomedclip-{digest[:16]}"
    assert load_biomedclip(folder).weights_id == loaded.weights_id
    assert (loaded.image_size, loaded.image_mean, loaded.image_std) == (32, bundle.image_mean, bundle.image_std)
    assert not loaded.model.training
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(image_features(loaded, image), image_features(bundle, image), rtol=0, atol=1e-6)
    np.testing.assert_allclose(encode_texts(loaded, ["breast tumor"]), encode_texts(bundle, ["breast tumor"]),
                               atol=1e-6)
    np.testing.assert_allclose(GScoreCAM(loaded, topk=4)(generic_image(20, 30), "tumor"),
                               GScoreCAM(bundle, topk=4)(generic_image(20, 30), "tumor"), atol=1e-5)


def test_environment_variable_is_honoured(tmp_path, monkeypatch, bundle):
    folder = save_model_dir(tmp_path / "from_env", bundle.model)
    monkeypatch.setenv(ENV_VAR, str(folder))
    loaded = load_biomedclip()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(image_features(loaded, image), image_features(bundle, image), rtol=0, atol=1e-6)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(SamprefError) as info:
        load_biomedclip()
    assert ENV_VAR in str(info.value) and str(tmp_path / "gone") in str(info.value)


def test_hub_id_is_looked_up_in_the_local_cache_only(tmp_path, monkeypatch, bundle):
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SamprefError) as info:
        load_biomedclip()
    assert BIOMEDCLIP_HUB in str(info.value) and ENV_VAR in str(info.value)

    repo = cache / ("models--" + BIOMEDCLIP_HUB.removeprefix("hf-hub:").replace("/", "--"))
    save_model_dir(repo / "snapshots" / ("0" * 40), bundle.model)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    loaded = load_biomedclip()
    assert loaded.weights_id.startswith("biomedclip-")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(image_features(loaded, image), image_features(bundle, image), rtol=0, atol=1e-6)


def test_hugging_face_text_tower_files_come_from_the_tokenizer_folder(tmp_path, monkeypatch, tokenizer):
    """BiomedCLIP's layout: a Hugging Face (BERT) text tower named by hub id, its config.json + vocab.txt given
    locally in <dir>/tokenizer; nothing may be fetched."""
    import huggingface_hub.constants
    from transformers import BertConfig

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))

    folder = tmp_path / "biomedclip"
    text_dir = folder / "tokenizer"
    text_dir.mkdir(parents=True)
    BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=32).save_pretrained(text_dir)
    words = ["breast", "tumor", "benign", "lesion", "background"]
    (text_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    hub_text = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    text_cfg = {"hf_model_name": hub_text, "hf_tokenizer_name": hub_text, "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}
    model_cfg = {"embed_dim": 32, "vision_cfg": MODEL_CFG["vision_cfg"], "text_cfg": text_cfg}
    torch.manual_seed(0)
    original = open_clip.CustomTextCLIP(
        embed_dim=32, vision_cfg=MODEL_CFG["vision_cfg"],
        text_cfg={**text_cfg, "hf_model_name": str(text_dir), "hf_model_pretrained": False},
    ).eval()
    save_model_dir(folder, original, model_cfg)

    loaded = load_biomedclip(folder)
    tokens = loaded.tokenizer(["breast tumor"])
    assert tokens.shape == (1, 16) and tokens[0, :4].tolist() == [2, 5, 6, 3]  # [CLS] breast tumor [SEP]
    with torch.no_grad():
        expected = original.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(encode_texts(loaded, ["breast tumor"]), expected, atol=1e-6)

    (text_dir / "vocab.txt").unlink()
    with pytest.raises(SamprefError, match="tokenizer files") as info:
        load_biomedclip(folder)
    assert hub_text in str(info.value) and str(text_dir) in str(info.value)
