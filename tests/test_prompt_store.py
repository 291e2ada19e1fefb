"""The prompt cache on the bundled BUSI subset: shapes, keys, reuse across replanning, VQA and LLM text, fallbacks."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from sampref_bench.evaluation.prompt_quality import box_iou, write_quality_report
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.prompts.regions import largest_component, mask_box, valid_box
from sampref_bench.prompts.saliency import BasinSaliency
from sampref_bench.prompts.settings import DEFAULT_PROMPTS, resolve_prompt_settings
from sampref_bench.prompts.store import PromptStore, VisualPrompt
from sampref_bench.prompts.vqa import NO_REGION, QUESTIONS, mask_answers
from sampref_bench.trainers.sam.prompted import dataset_prompt_store
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from tests.trainer_helpers import planned_busi

SIZE = 256  # BUSI's planned image size


def some_triples(cases):
    """Two benign and two malignant cases, slice 0, label 1 (the lesion)."""
    benign = [c for c in cases if c.startswith("benign")][:2]
    malignant = [c for c in cases if c.startswith("malignant")][:2]
    return [(c, 0, 1) for c in benign + malignant]


def check_visual_prompt(prompt, valid, n_points):
    h, w = valid
    assert isinstance(prompt, VisualPrompt)
    assert prompt.box.shape == (4,) and prompt.box.dtype == np.float32
    assert prompt.points.shape == (n_points, 2) and prompt.points.dtype == np.float32
    assert prompt.saliency.shape == (SIZE, SIZE) and prompt.saliency.dtype == np.float32
    assert prompt.saliency.min() >= 0 and prompt.saliency.max() <= 1
    assert prompt.mask.shape == (SIZE, SIZE) and prompt.mask.dtype == bool
    # padding (below row h, right of column w) is never salient nor foreground
    assert not prompt.saliency[h:].any() and not prompt.saliency[:, w:].any()
    assert not prompt.mask[h:].any() and not prompt.mask[:, w:].any()
    x0, y0, x1, y1 = prompt.box
    assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1


def test_store_writes_typed_prompts_and_reuses_them_across_replanning():
    planned_busi()
    store, cases = dataset_prompt_store("3")
    assert isinstance(store, PromptStore)
    assert len(cases) == 100 and cases == sorted(cases) and len(set(cases)) == 100
    # the plan's settings, and the unplanned component choice resolved from its one label (today's behaviour)
    assert store.settings == {**store.data.plans["prompts"], "component_choice": "saliency"}
    assert store.settings["points"] == 1 and store.settings["saliency"] == "dark-basin"  # ultrasound default
    assert store.target_text == {1: "breast tumor"}

    triples = some_triples(cases)
    assert store.ensure(triples, ["saliency"], progress=False) == 4
    assert sorted(p.name for p in store.visual_folder.glob("*.npz")) == sorted(
        store.visual_path(*t).name for t in triples)
    assert store.visual_folder.name.startswith("dark-basin-")
    first = {}
    for case, k, v in triples:
        prompt = store.visual(case, k, v)
        meta = store.data.meta(case)["transform"]["resized"]
        check_visual_prompt(prompt, (meta[0], meta[1]), n_points=1)
        assert prompt.saliency.max() == pytest.approx(1.0, abs=1e-3)  # a found basin is scaled to 1 (float16)
        assert not prompt.empty and prompt.mask.any()
        np.testing.assert_array_equal(largest_component(prompt.mask), prompt.mask)  # one component
        np.testing.assert_array_equal(prompt.box, mask_box(prompt.mask))  # the box is the mask's
        x, y = prompt.points[0].astype(int)
        assert prompt.mask[y, x]
        first[case] = prompt

    assert store.ensure(triples, ["saliency"], progress=False) == 0
    again, _ = dataset_prompt_store("3")
    assert again.ensure(triples, ["saliency"], progress=False) == 0  # a fresh store reads the files

    plan_dataset(3, fractions=[0.1, 0.3], num_processes=1, progress=False)
    replanned, replanned_cases = dataset_prompt_store("3")
    assert [round(f, 3) for f in replanned.data.plans["fractions"]] == [0.1, 0.3]  # the replan took effect
    assert replanned_cases == cases
    assert replanned.visual_folder == store.visual_folder
    assert replanned.ensure(triples, ["saliency"], progress=False) == 0
    case = triples[0][0]
    np.testing.assert_array_equal(replanned.visual(case, 0, 1).box, first[case].box)


@pytest.mark.parametrize(("overrides", "folder_prefix", "n_points"), [
    ({"points": 2}, "dark-basin-", 2),
    ({"saliency": "basin-dome"}, "basin-dome-", 1),
    ({"saliency": "dark-basin", "points": None}, None, 1),  # the plan's values: the same cache
])
def test_changed_settings_use_another_folder_and_recompute(overrides, folder_prefix, n_points):
    planned_busi()
    store, cases = dataset_prompt_store("3")
    triples = some_triples(cases)[:2]
    store.ensure(triples, ["saliency"], progress=False)
    other, _ = dataset_prompt_store("3", overrides)
    if folder_prefix is None:
        assert other.visual_folder == store.visual_folder
        assert other.ensure(triples, ["saliency"], progress=False) == 0
        return
    assert other.visual_folder != store.visual_folder
    assert other.visual_folder.name.startswith(folder_prefix)
    assert other.ensure(triples, ["saliency"], progress=False) == 2
    assert store.ensure(triples, ["saliency"], progress=False) == 0  # the first cache is untouched
    for case, k, v in triples:
        prompt = other.visual(case, k, v)
        h, w = store.data.meta(case)["transform"]["resized"]
        check_visual_prompt(prompt, (h, w), n_points)
        if "points" in overrides:  # same saliency and CRF: same mask, the first point is the old one
            base = store.visual(case, k, v)
            np.testing.assert_array_equal(prompt.box, base.box)
            np.testing.assert_array_equal(prompt.points[:1], base.points)
            assert len({tuple(p) for p in prompt.points}) == 2


def test_vqa_and_llm_text_without_labels_or_api_key(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    planned_busi()
    store, cases = dataset_prompt_store("3")
    warnings = []
    store.warn = warnings.append
    triples = some_triples(cases)
    # prompts never read a label: hide the label files of these cases while computing
    hidden = []
    for case, _, _ in triples:
        for suffix in ("_seg.npy", "_labels.json"):
            path = store.data.data_dir / f"{case}{suffix}"
            hidden.append((path.rename(path.with_name(path.name + ".hidden")), path))
    # 4 visual prompts (VQA reads their mask) + 4 VQA answers; the count line counts each against the 4 triples
    assert store.ensure(triples[:1], ["vqa"]) == 2
    line = [text for text in capsys.readouterr().out.splitlines() if text.startswith("prompt cache")]
    assert line and line[-1].endswith(": 1 (case, slice, label) prompts; box prompts: 1 computed, 0 read from the "
                                      "cache; VQA answers: 1 computed, 0 read from the cache")
    assert store.ensure(triples, ["vqa"]) == 6
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(
        ": 4 (case, slice, label) prompts; box prompts: 3 computed, 1 read from the cache; VQA answers: 3 computed, "
        "1 read from the cache")
    for moved, path in hidden:
        moved.rename(path)

    assert store.vqa_folder.name.startswith("vqa-mask-")
    for case, k, v in triples:
        path = store.vqa_path(case, k, v)
        assert path.is_file() and path.parent == store.vqa_folder
        record = load_json(path)
        assert set(record) == {"answers", "text"}
        assert list(record["answers"]) == list(QUESTIONS)
        assert "breast tumor" in record["text"]
        h, w = store.data.meta(case)["transform"]["resized"]
        assert record["answers"] == mask_answers(store.visual(case, k, v).mask, valid=(h, w))
        assert NO_REGION not in record["answers"].values()
    assert store.ensure(triples, ["vqa", "saliency"], progress=False) == 0

    assert store.llm(1) == {"text": "breast tumor", "source": "dataset_text", "model": None}
    assert len(warnings) == 1 and "OPENAI_API_KEY" in warnings[0]
    assert store.ensure(triples, ["llm"], progress=False) == 0  # the fallback text is not written anywhere
    assert not list(store.root.glob("llm_*.json"))
    with pytest.raises(SamprefError, match="unknown prompt source"):
        store.ensure(triples, ["clip"], progress=False)


class ZeroOnFirstCalls:
    """A weights-free saliency source that finds nothing in its first ``n_empty`` images, then defers to dark-basin."""

    name = "zero-test"
    text_driven = False

    def __init__(self, n_empty):
        self.n_empty = n_empty
        self.calls = 0
        self.real = BasinSaliency("dark-basin", 3.0)

    def settings(self):
        return {"method": "zero-test", "n_empty": self.n_empty}

    def __call__(self, image01, text):
        self.calls += 1
        if self.calls <= self.n_empty:
            return np.zeros(image01.shape[1:], np.float32)
        return self.real(image01, text)


def test_empty_saliency_falls_back_to_the_valid_box_and_is_reported(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    planned_busi()
    store, cases = dataset_prompt_store("3")
    triples = some_triples(cases)
    store._saliency = ZeroOnFirstCalls(n_empty=1)
    assert store.ensure(triples, ["saliency"], progress=False) == 4
    assert store.visual_folder.name.startswith("dark-basin-")  # named by the settings, keyed by the source
    real, _ = dataset_prompt_store("3")
    assert store.visual_folder != real.visual_folder

    case = triples[0][0]
    h, w = store.data.meta(case)["transform"]["resized"]
    assert h < w  # a non-square valid region, so a swapped (h, w) would show
    prompt = store.visual(case, 0, 1)
    assert prompt.empty
    np.testing.assert_array_equal(prompt.box, [0, 0, w - 1, h - 1])
    np.testing.assert_array_equal(prompt.box, valid_box(store.valid_region(case)))
    assert not prompt.mask.any() and not prompt.saliency.any()
    check_visual_prompt(prompt, (h, w), n_points=1)  # the point lies in the valid region
    assert store.vqa(case, 0, 1)["answers"] == dict.fromkeys(QUESTIONS, NO_REGION)
    assert not any(store.visual(c, 0, 1).empty for c, _, _ in triples[1:])

    labeled = [c for c, _, _ in triples]
    path, report = write_quality_report(store, store.data.label_store(labeled, "test"), labeled, [1],
                                        n_overlays=0, progress=False)
    assert path == store.visual_folder / "prompt_quality.json" and path.is_file()
    assert report["pooled"]["pairs"] == 4
    assert report["pooled"]["saliency_empty"] == 0.25
    assert report["per_label"]["lesion"]["saliency_empty"] == 0.25
    rows = {c: r[0] for c, r in report["cases"].items()}
    assert [rows[c]["saliency_empty"] for c in labeled] == [1.0, 0.0, 0.0, 0.0]
    # the whole valid box against the lesion's box (inside it): IoU = lesion box area / valid area
    truth = mask_box(store.data.label_store([case], "test").seg(case)[0] == 1)
    expected = (truth[2] - truth[0] + 1) * (truth[3] - truth[1] + 1) / (h * w)
    assert rows[case]["box_iou"] == pytest.approx(expected)
    assert rows[case]["box_iou"] == pytest.approx(box_iou(prompt.box, truth))
    assert report["overlays"] == []


def test_empty_saliency_fallback_point_is_inside_the_valid_region_not_at_its_corner():
    planned_busi()
    store, cases = dataset_prompt_store("3")
    store._saliency = ZeroOnFirstCalls(n_empty=1)
    case = cases[0]
    prompt = store.visual(case, 0, 1)
    h, w = store.valid_region(case)
    assert prompt.empty and prompt.points.shape == (1, 2)
    x, y = prompt.points[0]
    assert w / 4 <= x <= 3 * w / 4 and h / 4 <= y <= 3 * h / 4


PLAN = {"dataset_name": "Dataset003_BUSI", "prompts": copy.deepcopy(DEFAULT_PROMPTS)}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"threshold": 0.3}, "unknown prompt setting"),
    ({"crf": {}}, "unknown prompt setting"),
    ({"saliency": "spectral-residual"}, "unknown saliency source"),
    ({"saliency": "Dark-Basin"}, "unknown saliency source"),
    ({"component_choice": "largest"}, "unknown component_choice"),
])
def test_resolve_prompt_settings_rejects_unknown_names(overrides, message):
    with pytest.raises(SamprefError, match=message):
        resolve_prompt_settings(PLAN, overrides)


@pytest.mark.parametrize(("overrides", "changed"), [
    (None, {}),
    ({}, {}),
    ({"saliency": None, "points": None, "vqa": None, "llm_model": None, "text_encoder": None}, {}),
    ({"points": 3, "saliency": None}, {"points": 3}),
    ({"saliency": "biomedclip", "text_encoder": "minilm"}, {"saliency": "biomedclip", "text_encoder": "minilm"}),
])
def test_resolve_prompt_settings_applies_overrides_and_none_keeps_the_plan(overrides, changed):
    settings = resolve_prompt_settings(PLAN, overrides)
    assert settings == {**DEFAULT_PROMPTS, "component_choice": "saliency", **changed}
    settings["crf"]["threshold"] = 0.9  # a copy: the plan is not changed through it
    assert PLAN["prompts"]["crf"]["threshold"] == DEFAULT_PROMPTS["crf"]["threshold"] == 0.2


@pytest.mark.parametrize(("labels", "override", "expected"), [
    ({"background": 0, "lesion": 1}, None, "saliency"),                       # one label: today's prompts
    ({"background": 0, "left_lung": 1, "right_lung": 2}, None, "label_prior"),
    ({"background": 0, "left_lung": 1, "right_lung": 2}, "saliency", "saliency"),
    ({"background": 0, "lesion": 1}, "label_prior", "label_prior"),
])
def test_component_choice_follows_the_number_of_labels_unless_set(labels, override, expected):
    settings = resolve_prompt_settings({**PLAN, "labels": labels}, {"component_choice": override})
    assert settings["component_choice"] == expected
    assert "component_choice" not in DEFAULT_PROMPTS  # not planned: no plan or cache key changes


def test_resolve_prompt_settings_of_an_old_plan_asks_for_replanning():
    with pytest.raises(SamprefError, match="sampref_plan -d Dataset003_BUSI"):
        resolve_prompt_settings({"dataset_name": "Dataset003_BUSI"}, {})
