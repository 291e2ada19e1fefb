"""VQA text: mask-measured answers, the sentence built from them, and the local-model backend."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import draw

from sampref_bench.prompts.vqa import (
    ENV_MEDVINT,
    NO_REGION,
    QUESTIONS,
    VQA_QUESTIONS,
    MedVInTBackend,
    answers_to_text,
    mask_answers,
)
from sampref_bench.utilities.errors import SamprefError


def disc(cy, cx, r, shape=(100, 100)):
    mask = np.zeros(shape, dtype=np.uint8)
    rr, cc = draw.disk((cy, cx), r, shape=shape)
    mask[rr, cc] = 1
    return mask


def ellipse(cy, cx, ry, rx, rotation=0.0, shape=(100, 100)):
    mask = np.zeros(shape, dtype=np.uint8)
    rr, cc = draw.ellipse(cy, cx, ry, rx, shape=shape, rotation=rotation)
    mask[rr, cc] = 1
    return mask


def square(top, left, side, shape=(100, 100)):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def cross():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[45:55, 10:90] = 1
    mask[10:90, 45:55] = 1
    return mask


MASK_CASES = [
    ("disc upper left", disc(25, 25, 8), None,
     {"quadrant": "upper left", "side": "left", "shape": "round", "count": "one region", "size": "small"}),
    ("disc lower right", disc(80, 75, 12), None,
     {"quadrant": "lower right", "side": "right", "shape": "round", "size": "medium"}),
    ("disc in the middle column", disc(30, 50, 6), None, {"side": "center", "quadrant": "upper right"}),
    ("thin long ellipse", ellipse(50, 50, 3, 30), None, {"shape": "oval", "count": "one region"}),
    ("rotated thin ellipse", ellipse(50, 50, 4, 30, rotation=0.6), None, {"shape": "oval"}),
    ("mildly oval ellipse", ellipse(50, 50, 10, 20), None, {"shape": "oval"}),
    ("cross", cross(), None, {"shape": "irregular", "count": "one region"}),
    ("two discs", disc(25, 25, 8) | disc(70, 70, 8), None, {"count": "two regions"}),
    ("three discs", disc(20, 20, 5) | disc(50, 50, 5) | disc(80, 80, 5), None, {"count": "several regions"}),
    ("diagonal neighbours are one region (8-connected)", np.eye(100, dtype=np.uint8), None, {"count": "one region"}),
    ("large square", square(10, 10, 80), None, {"size": "large", "count": "one region"}),
    # valid region: a disc at x=60 is in the middle of the padded 100-wide image but on the right of the
    # 70-wide valid image; a quarter of its 100x100 area is large, a tenth of the padded image would not be
    ("disc at x=60, whole image", disc(50, 60, 8), None, {"side": "center"}),
    ("disc at x=60, valid width 70", disc(50, 60, 8), (100, 70), {"side": "right"}),
    ("square, whole padded image", square(0, 0, 28, shape=(200, 200)), None, {"size": "small"}),
    ("square, valid 56x56", square(0, 0, 28, shape=(200, 200)), (56, 56), {"size": "large", "side": "left"}),
]


@pytest.mark.parametrize("name, mask, valid, expected", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_mask_answers(name, mask, valid, expected):
    answers = mask_answers(mask, valid)
    assert set(answers) == set(QUESTIONS)
    assert {q: answers[q] for q in expected} == expected


def test_mask_outside_valid_region_is_ignored():
    mask = disc(20, 20, 6, shape=(100, 100))
    mask[80:, 80:] = 1  # padding area: not part of the image
    assert mask_answers(mask, (60, 60))["count"] == "one region"
    assert mask_answers(mask)["count"] == "two regions"


@pytest.mark.parametrize("valid", [None, (50, 50)])
def test_empty_mask_says_no_region(valid):
    assert mask_answers(np.zeros((100, 100), dtype=bool), valid) == dict.fromkeys(QUESTIONS, NO_REGION)
    # foreground only in the padding counts as empty
    padded = np.zeros((100, 100), dtype=bool)
    padded[90:, 90:] = True
    assert mask_answers(padded, (50, 50)) == dict.fromkeys(QUESTIONS, NO_REGION)


@pytest.mark.parametrize("mask, valid", [(np.zeros((4, 4, 3)), None), (np.zeros((10, 10)), (11, 5)),
                                         (np.zeros((10, 10)), (0, 5))])
def test_mask_answers_refuses_bad_input(mask, valid):
    with pytest.raises(SamprefError):
        mask_answers(mask, valid)


@pytest.mark.parametrize(
    "answers, target, must_contain",
    [
        (mask_answers(disc(25, 25, 8)), "breast tumor",
         ["a round, small breast tumor in the upper left quadrant", "on the left side", "one region"]),
        (mask_answers(disc(30, 50, 6)), "kidney", ["kidney", "center", "upper right"]),
        (dict.fromkeys(QUESTIONS, NO_REGION), "liver lesion", ["liver lesion", NO_REGION]),
        ({"side": "The left.", "quadrant": "upper", "size": "tiny", "shape": "lobulated", "count": "2"},
         "polyp", ["polyp", "shape: lobulated", "count: 2"]),
    ],
)
def test_answers_to_text(answers, target, must_contain):
    text = answers_to_text(answers, target)
    assert "\n" not in text and target in text
    for answer in answers.values():
        assert " ".join(answer.split()) in text
    for part in must_contain:
        assert part in text


def test_answers_to_text_needs_every_question():
    with pytest.raises(SamprefError, match="count"):
        answers_to_text({"side": "left"}, "tumor")


# --- MedVInTBackend: path errors --------------------------------------------------------------------


def test_medvint_without_path_or_env_names_the_variable(monkeypatch):
    monkeypatch.delenv(ENV_MEDVINT, raising=False)
    with pytest.raises(SamprefError, match=ENV_MEDVINT):
        MedVInTBackend()


def test_medvint_missing_directory_names_path_and_variable(tmp_path, monkeypatch):
    missing = tmp_path / "medvint_weights"
    monkeypatch.setenv(ENV_MEDVINT, str(missing))
    for make in (lambda: MedVInTBackend(), lambda: MedVInTBackend(missing)):
        with pytest.raises(SamprefError) as info:
            make()
        assert str(missing) in str(info.value) and ENV_MEDVINT in str(info.value)


def test_medvint_directory_without_model_files_names_them(tmp_path):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    with pytest.raises(SamprefError) as info:
        MedVInTBackend(folder)
    message = str(info.value)
    assert str(folder) in message and "config.json" in message and "safetensors" in message
    assert ENV_MEDVINT in message


def test_medvint_unloadable_directory_is_a_sampref_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no_such_model_type"}')
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SamprefError, match="Could not load a VQA model"):
        MedVInTBackend(folder)


# --- MedVInTBackend: tiny random models saved locally ------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + (
    "is the on left right side or in center of image which quadrant upper lower small medium large "
    "compared with shape round oval irregular how many separate regions are breast tumor : , ? ."
).split()


def _tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={word: i for i, word in enumerate(WORDS)}, do_lower_case=True)


def _tiny_blip(folder):
    """A 1-layer BLIP VQA model whose decoder always emits 'round' (text head: zero weights, biased)."""
    import torch
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = BlipConfig(
        text_config={**small, "vocab_size": len(WORDS), "max_position_embeddings": 64,
                     "bos_token_id": WORDS.index("[DEC]"), "pad_token_id": 0, "sep_token_id": WORDS.index("[SEP]")},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(config)
    head = model.text_decoder.cls.predictions
    with torch.no_grad():
        head.decoder.weight.zero_()
        head.bias.zero_()
        head.bias[WORDS.index("round")] = 10.0
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
                  ).save_pretrained(folder)


def _tiny_vilt(folder):
    """A 1-layer ViLT classifier whose answer head always picks 'oval'."""
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor

    labels = ["round", "oval", "irregular"]
    config = ViltConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, max_position_embeddings=64, max_image_length=-1,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = ViltForQuestionAnswering(config)
    final = model.classifier[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.zero_()
        final.bias[labels.index("oval")] = 5.0
    model.save_pretrained(folder)
    processor = ViltProcessor(image_processor=ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8),
                              tokenizer=_tokenizer())
    processor.save_pretrained(folder)


@pytest.mark.parametrize("build, expected", [(_tiny_blip, "round"), (_tiny_vilt, "oval")], ids=["blip", "vilt"])
def test_medvint_backend_loads_a_local_vqa_model(tmp_path, monkeypatch, build, expected):
    folder = tmp_path / "tiny_vqa"
    build(folder)
    monkeypatch.setenv(ENV_MEDVINT, str(folder))
    backend = MedVInTBackend()
    assert backend.path == folder and backend.weights_id.startswith("vqa-tiny_vqa-")
    assert MedVInTBackend(folder).weights_id == backend.weights_id

    rng = np.random.default_rng(0)
    image01 = rng.random((3, 40, 48)).astype(np.float32)
    answers = backend.answers(image01, "breast tumor")
    assert list(answers) == list(QUESTIONS)
    for answer in answers.values():
        assert isinstance(answer, str) and answer.split()[0] == expected
    assert "breast tumor" in answers_to_text(answers, "breast tumor")


def test_medvint_questions_name_the_target():
    assert set(VQA_QUESTIONS) == set(QUESTIONS)
    for question in VQA_QUESTIONS.values():
        assert "{target}" in question and question.endswith("?")


def test_medvint_refuses_wrong_image_shape(tmp_path):
    folder = tmp_path / "tiny_vqa"
    _tiny_blip(folder)
    backend = MedVInTBackend(folder)
    with pytest.raises(SamprefError, match=r"\(3, H, W\)"):
        backend.answers(np.zeros((40, 48, 3), dtype=np.float32), "tumor")


def test_answers_to_text_uses_an_before_a_vowel():
    answers = {"side": "left", "quadrant": "upper left", "size": "small", "shape": "irregular", "count": "one region"}
    assert answers_to_text(answers, "breast tumor").startswith("an irregular, small breast tumor")
    assert answers_to_text({**answers, "shape": "round"}, "breast tumor").startswith("a round, small")
