"""Prompt-sourced trainers: which prompts each ablation gives SAM (from the prompt cache with the saliency box, from
the learned head by default), label-free inference, loading a finished run, a run from before box_source, and the
BiomedCLIP path end to end on a small open_clip model built from config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sampref_bench.planners.data import inference_samples
from sampref_bench.prompts.text_encoder import minilm_encoder
from sampref_bench.trainers.registry import get_trainer, load_trained_run
from sampref_bench.trainers.run_folder import load_checkpoint, save_checkpoint
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import FAST, planned_phantoms

LEARN = {"epochs": 1, "iterations_per_epoch": 2, "lr": 3e-3, "threshold": 0.1}
#: The cached saliency box and points (the default box and point are the learned head's).
SALIENCY = {"box_source": "saliency"}

#: trainer -> (box, number of points, number of text tokens)
COMPOSITION = {
    "SAMBaseline": (True, 1, 2),
    "SAMNoVQA": (True, 1, 1),
    "SAMBoxOnly": (True, 0, 0),
    "SAMTextOnly": (False, 0, 1),
}


def _trainer(name, dataset, **overrides):
    return get_trainer(name)(dataset, 0, 0.5, overrides={**FAST, **LEARN, **overrides}, progress=False)


@pytest.mark.parametrize("name", sorted(COMPOSITION))
def test_each_trainer_gets_its_prompts_from_the_cache(name):
    dataset = planned_phantoms(n_labels=2)
    trainer = _trainer(name, dataset, **SALIENCY)
    trainer.initialize()
    assert trainer.config["saliency"] == "basin-dome"  # the plan's choice for CT-like phantoms
    samples = inference_samples(trainer.data, trainer.roles.val[0], trainer.labels)[:4]
    prompts = trainer.inference_prompts(samples)
    box, n_points, n_text = COMPOSITION[name]
    expected = {"boxes": box, "points": n_points > 0, "extra_sparse": n_text > 0}
    assert set(prompts) == {key for key, used in expected.items() if used}
    if box:
        assert prompts["boxes"].shape == (4, 4)
        # two labels: each label's component is chosen by the labeled cases' location prior
        assert trainer.config["component_choice"] == "label_prior" and trainer.label_prior is not None
        visual = trainer.prompts.visual(samples[1].case, samples[1].slice, samples[1].label, trainer.label_prior)
        np.testing.assert_array_equal(prompts["boxes"][1].numpy(), visual.box)
    if n_points:
        coords, labels = prompts["points"]
        assert coords.shape == (4, n_points, 2) and labels.tolist() == [[1] * n_points] * 4
    if n_text:
        assert prompts["extra_sparse"].shape == (4, n_text, 256)
        assert prompts["extra_sparse"].requires_grad  # the projection is trained
    logits = trainer.predict_logits(samples)
    assert logits.shape == (4, 1, trainer.plans["image_size"], trainer.plans["image_size"])


@pytest.mark.parametrize("name", sorted(COMPOSITION))
def test_each_trainer_with_a_box_defaults_to_the_learned_head_and_keeps_its_composition(name):
    dataset = planned_phantoms(n_labels=2)
    trainer = _trainer(name, dataset)
    box, n_points, n_text = COMPOSITION[name]
    assert trainer.config["box_source"] == ("learned" if box else "saliency")  # SAMTextOnly has no box to learn
    assert trainer.prompt_sources() == (("vqa", "llm")[-n_text:] if n_text else ())  # no saliency box is read
    trainer.initialize()
    assert hasattr(trainer.network, "prompt_head") == box
    samples = inference_samples(trainer.data, trainer.roles.val[0], trainer.labels)[:4]
    prompts = trainer.inference_prompts(samples)
    expected = {"boxes": box, "points": n_points > 0, "extra_sparse": n_text > 0}
    assert set(prompts) == {key for key, used in expected.items() if used}
    if box:
        assert prompts["boxes"].shape == (4, 4)
    if n_points:  # the head's one point, deepest inside its coarse mask
        assert prompts["points"][0].shape == (4, 1, 2)
    if n_text:
        assert prompts["extra_sparse"].shape == (4, n_text, 256)
        assert prompts["extra_sparse"].requires_grad  # the projection is trained, with learned boxes too
    logits = trainer.predict_logits(samples)
    assert logits.shape == (4, 1, trainer.plans["image_size"], trainer.plans["image_size"])


def test_vqa_text_differs_between_images_and_llm_text_between_labels():
    dataset = planned_phantoms(n_labels=2)
    trainer = _trainer("SAMBaseline", dataset)
    trainer.initialize()
    samples = [s for case in trainer.roles.val for s in inference_samples(trainer.data, case, trainer.labels)]
    llm = {s.label: text for s, text in zip(samples, trainer.texts("llm", samples))}
    assert llm[1] != llm[2]  # each label's own target text
    vqa = set(trainer.texts("vqa", samples))
    assert len(vqa) > 1
    target_texts = set(trainer.plans["target_text"].values())
    assert all(any(t in text for t in target_texts) for text in vqa)


def test_config_and_run_name_state_the_saliency_source():
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOnly", dataset, **SALIENCY)
    assert "box_sourcesaliency" in trainer.run_tag  # not the default box source
    out = trainer.run_training()
    record = json.loads((out / "config.json").read_text())
    assert record["hyperparameters"]["saliency"] == "basin-dome"
    assert record["data_use"]["box_source"] == "saliency"
    other = _trainer("SAMBoxOnly", dataset, saliency="dark-basin", **SALIENCY)
    assert other.output_dir != trainer.output_dir  # another saliency source is another run
    with pytest.raises(SamprefError, match='--set saliency="sift": expected one of dark-basin, bright-dome'):
        _trainer("SAMBoxOnly", dataset, saliency="sift", **SALIENCY)


def test_a_run_recorded_before_box_source_is_a_saliency_run():
    dataset = planned_phantoms()
    trainer = _trainer("SAMBoxOnly", dataset, **SALIENCY)
    out = trainer.run_training()
    case = trainer.roles.val[0]
    expected = trainer.predict_case(case)
    path = out / "checkpoint_final.pth"
    state = load_checkpoint(path)
    head_keys = ("box_source", "head_weight", "head_hidden", "head_threshold", "head_points")  # added together
    state["config"] = {k: v for k, v in state["config"].items() if k not in head_keys}
    save_checkpoint(path, state)
    record = json.loads((out / "config.json").read_text())
    record["hyperparameters"] = {k: v for k, v in record["hyperparameters"].items() if k not in head_keys}
    del record["data_use"]["box_source"]
    (out / "config.json").write_text(json.dumps(record))
    old = load_trained_run(out)  # loads as what it was, not as today's learned default
    assert old.config["box_source"] == "saliency" and not hasattr(old.network, "prompt_head")
    np.testing.assert_array_equal(old.predict_case(case), expected)
    learned = _trainer("SAMBoxOnly", dataset)  # the default: a learned run may neither continue nor load it
    with pytest.raises(SamprefError, match='box_source: "saliency" -> "learned"'):
        learned.check_checkpoint(load_checkpoint(path), path)


def test_finished_run_loads_as_a_model_in_one_call_and_predicts_the_same():
    dataset = planned_phantoms()
    trainer = _trainer("SAMBaseline", dataset)
    out = trainer.run_training()
    case = trainer.roles.val[0]
    loaded = load_trained_run(out)
    assert type(loaded).__name__ == "SAMBaseline" and not loaded.network.training
    for key, value in trainer.network.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.predict_case(case), trainer.predict_case(case))
    with pytest.raises(SamprefError, match="config.json is missing"):
        load_trained_run(out.parent)


def test_minilm_encoder_is_real_and_deterministic():
    encoder = minilm_encoder()
    features = encoder.encode(["breast tumor", "a round, small breast tumor", "breast tumor"])
    assert features.shape == (3, 384) and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(features[0], features[2])
    assert features[0] @ features[1] > 0.5  # related sentences are close in a trained encoder
    assert encoder.encode(["lung nodule"])[0] @ features[0] < features[0] @ features[1]


def test_biomedclip_path_end_to_end_on_a_small_model_from_config(tmp_path, monkeypatch):
    from tests.test_biomedclip import save_model_dir, tiny_clip

    folder = save_model_dir(tmp_path / "clip", tiny_clip())
    monkeypatch.setenv("SAMPREF_BIOMEDCLIP", str(folder))
    dataset = planned_phantoms()
    trainer = _trainer("SAMBaseline", dataset, saliency="biomedclip", **SALIENCY)
    out = trainer.run_training()
    record = json.loads((out / "config.json").read_text())
    assert record["hyperparameters"]["saliency"] == "biomedclip"
    # the weights' location is a hyperparameter but not part of the run's name
    by_path = _trainer("SAMBaseline", dataset, saliency="biomedclip", clip_path=str(folder), **SALIENCY)
    assert by_path.config["clip_path"] == str(folder) and by_path.output_dir == trainer.output_dir
    assert trainer.prompts.visual_folder.name.startswith("biomedclip-")
    assert trainer.prompts.saliency_source.settings()["weights_id"].startswith("biomedclip-")
    assert trainer.text_encoder.name.startswith("text-biomedclip-") and trainer.text_encoder.dim == 32
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert summary["n_cases"] == len(trainer.roles.val)
    monkeypatch.setenv("SAMPREF_BIOMEDCLIP", str(tmp_path / "nowhere"))
    with pytest.raises(SamprefError, match="nowhere"):
        _trainer("SAMBoxOnly", dataset, saliency="biomedclip", points=2, **SALIENCY).initialize()
