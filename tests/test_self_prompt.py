"""SAMSelfPrompt: box and point prompts from a coarse-mask head trained on the labeled cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sampref_bench.evaluation.aggregate import build_table
from sampref_bench.evaluation.data_use import box_sources_text
from sampref_bench.evaluation.run_scan import scan_runs
from sampref_bench.evaluation.table_output import format_table
from sampref_bench.planners.data import inference_samples
from sampref_bench.trainers.registry import get_trainer, load_trained_run
from sampref_bench.trainers.sam.self_prompt import ABSENT_LOGIT, prompts_from_coarse
from tests.trainer_helpers import FAST, planned_phantoms

LEARN = {"epochs": 2, "iterations_per_epoch": 4, "lr": 3e-3, "threshold": 0.1}


def test_prompts_from_coarse_masks_by_hand() -> None:
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 2:5, 3:6] = True  # 3 x 3 block: rows 2-4, columns 3-5
    masks[0, 7, 0] = True  # a smaller component, ignored
    masks[1, 0:2, 6:8] = True  # 2 x 2 block in the top right corner
    boxes, points, found = prompts_from_coarse(masks, image_size=32)  # each cell covers 4 x 4 pixels
    assert found.tolist() == [True, True, False]
    np.testing.assert_array_equal(boxes[0], [12, 8, 23, 19])  # x0 = 3*4, y0 = 2*4, x1 = 6*4 - 1, y1 = 5*4 - 1
    np.testing.assert_array_equal(points[0], [17.5, 13.5])  # centre cell (row 3, col 4): (4.5*4 - .5, 3.5*4 - .5)
    np.testing.assert_array_equal(boxes[1], [24, 0, 31, 7])
    np.testing.assert_array_equal(points[1], [25.5, 1.5])  # all four cells at depth 1: the first, (row 0, col 6)
    np.testing.assert_array_equal(boxes[2], [0, 0, 0, 0])


class _FixedHead(torch.nn.Module):
    """Label 0's map lights the top-left quarter, label 1's the bottom-right one, whatever the image."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        batch, _, grid, _ = embeddings.shape
        out = torch.full((batch, 2, grid, grid), -10.0)
        out[:, 0, : grid // 4, : grid // 4] = 10.0
        out[:, 1, grid // 2:, grid // 2:] = 10.0
        return out


def test_each_label_of_a_slice_gets_its_own_box(sampref_roots) -> None:
    dataset = planned_phantoms(n_labels=2)
    trainer = get_trainer("SAMSelfPrompt")(dataset, 0, 0.5, overrides={**FAST, **LEARN}, progress=False)
    trainer.initialize()
    trainer.network.prompt_head = _FixedHead()
    case = trainer.roles.val[0]
    samples = [s for s in inference_samples(trainer.data, case, trainer.labels) if s.slice == 0]
    assert [s.label for s in samples] == [1, 2]
    boxes = trainer.inference_prompts(samples)["boxes"].cpu().numpy()
    size = int(trainer.plans["image_size"])
    np.testing.assert_allclose(boxes[0], [0, 0, size / 4 - 1, size / 4 - 1])
    np.testing.assert_allclose(boxes[1], [size / 2, size / 2, size - 1, size - 1])


def test_a_label_the_head_finds_absent_is_predicted_empty(sampref_roots) -> None:
    dataset = planned_phantoms()
    trainer = get_trainer("SAMSelfPrompt")(dataset, 0, 0.5, overrides={**FAST, **LEARN}, progress=False)
    trainer.initialize()
    with torch.no_grad():
        trainer.network.prompt_head.body[-1].bias.fill_(-50.0)  # every cell far below the threshold
        samples = inference_samples(trainer.data, trainer.roles.val[0], trainer.labels)[:2]
        logits = trainer.predict_logits(samples)
    assert torch.all(logits == ABSENT_LOGIT)


def test_the_head_trains_is_checkpointed_and_a_reloaded_run_predicts_the_same(sampref_roots) -> None:
    dataset = planned_phantoms()
    trainer = get_trainer("SAMSelfPrompt")(dataset, 0, 0.5, overrides={**FAST, **LEARN, "head_threshold": 0.05},
                                           progress=False)
    trainer.initialize()
    before = {k: v.clone() for k, v in trainer.network.prompt_head.state_dict().items()}
    out = trainer.run_training()
    after = trainer.network.prompt_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert {"train_head_loss", "train_decoder_loss"} <= set(trainer.log[-1])
    loaded = load_trained_run(out)
    for key, value in after.items():
        assert torch.equal(loaded.network.prompt_head.state_dict()[key], value)
    case = trainer.roles.val[0]
    np.testing.assert_array_equal(loaded.predict_case(case), trainer.predict_case(case))


def test_options_are_typed(sampref_roots) -> None:
    from sampref_bench.utilities.errors import SamprefError

    dataset = planned_phantoms()
    with pytest.raises(SamprefError, match="--set head_threshold=1.5: expected a number in \\(0, 1\\)"):
        get_trainer("SAMSelfPrompt")(dataset, 0, 0.5, overrides={**FAST, "head_threshold": 1.5}, progress=False)


# ------------------------------------------------------------------ box_source=learned in the prompt trainers
@pytest.mark.parametrize(("name", "points", "texts"), [("SAMBaseline", 1, 2), ("SAMBoxOnly", 0, 0)])
def test_learned_box_source_replaces_the_saliency_and_keeps_the_text(sampref_roots, name, points, texts) -> None:
    dataset = planned_phantoms(n_labels=2)
    trainer = get_trainer(name)(dataset, 0, 0.5, overrides={**FAST, **LEARN}, progress=False)
    assert trainer.config["box_source"] == "learned"  # the default: the untagged folder
    assert "box_source" not in trainer.output_dir.parent.name
    saliency = get_trainer(name)(dataset, 0, 0.5, overrides={**FAST, **LEARN, "box_source": "saliency"},
                                 progress=False)
    assert "box_sourcesaliency" in saliency.output_dir.parent.name  # the saliency box is its own run
    assert trainer.prompt_sources() == (("vqa", "llm") if texts else ())
    trainer.initialize()
    trainer.network.prompt_head = _FixedHead()
    case = trainer.roles.val[0]
    samples = [s for s in inference_samples(trainer.data, case, trainer.labels) if s.slice == 0]
    prompts = trainer.inference_prompts(samples)
    size = int(trainer.plans["image_size"])
    np.testing.assert_allclose(prompts["boxes"].cpu().numpy(),
                               [[0, 0, size / 4 - 1, size / 4 - 1], [size / 2, size / 2, size - 1, size - 1]])
    assert ("points" in prompts) == bool(points)
    assert (prompts["extra_sparse"].shape[1] if "extra_sparse" in prompts else 0) == texts


def test_learned_box_source_trains_the_head_and_reloads(sampref_roots) -> None:
    dataset = planned_phantoms()
    trainer = get_trainer("SAMBaseline")(dataset, 0, 0.5, overrides={**FAST, **LEARN, "box_source": "learned",
                                                                    "head_threshold": 0.05}, progress=False)
    out = trainer.run_training()
    assert "train_head_loss" in trainer.log[-1]
    loaded = load_trained_run(out)
    case = trainer.roles.val[0]
    np.testing.assert_array_equal(loaded.predict_case(case), trainer.predict_case(case))


def test_a_text_only_trainer_refuses_learned_boxes(sampref_roots) -> None:
    from sampref_bench.utilities.errors import SamprefError

    dataset = planned_phantoms()
    with pytest.raises(SamprefError, match="SAMTextOnly uses neither"):
        get_trainer("SAMTextOnly")(dataset, 0, 0.5, overrides={**FAST, "box_source": "learned"}, progress=False)
    text_only = get_trainer("SAMTextOnly")(dataset, 0, 0.5, overrides=FAST, progress=False)
    assert text_only.config["box_source"] == "saliency"  # its own default, so no box_source in its tag
    assert "box_source" not in text_only.output_dir.parent.name


# ------------------------------------------------------------------ box_source=run:UNet (cascade)
UNET_TINY = {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "channels": [4, 8, 16], "num_workers": 0,
             "lr": 0.1}


def test_a_cascade_without_its_unet_run_prints_the_command(sampref_roots) -> None:
    from sampref_bench.utilities.errors import SamprefError

    dataset = planned_phantoms()
    trainer = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides={**FAST, **LEARN, "box_source": "run:UNet"},
                                        progress=False)
    with pytest.raises(SamprefError, match=r"Train it first: `sampref_train Dataset007_Phantom UNet 0 --fraction 0.5`"):
        trainer.initialize()


def test_cascade_boxes_are_the_unet_masks_boxes(sampref_roots) -> None:
    from sampref_bench.trainers.sam.cascade import cascade_run_folder

    dataset = planned_phantoms(n_labels=2)
    unet = get_trainer("UNet")(dataset, 0, 0.5, overrides=UNET_TINY, progress=False)
    unet.output_dir = cascade_run_folder(unet)  # the folder a cascade reads (the default configuration's)
    unet.run_training()
    trainer = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides={**FAST, **LEARN, "box_source": "run:UNet",
                                                                    "head_points": False}, progress=False)
    out = trainer.run_training()
    record = json.loads((out / "config.json").read_text())
    assert record["cascade_run"] == str(unet.output_dir)
    # budget-honest: the boxes come from a UNet run trained on the same pixel-labeled cases, and the record says
    # so, with the extra training that run cost
    unet_use = json.loads((unet.output_dir / "config.json").read_text())["data_use"]
    assert record["data_use"]["pixel_labeled"] == unet_use["pixel_labeled"] == len(trainer.roles.labeled)
    assert record["data_use"]["box_source"] == "cascade:UNet"
    assert record["data_use"]["box_source_training"] == {
        "run": f"{unet.output_dir.parent.name}/fold_0", "trainer": "UNet", "epochs": 1, "iterations_per_epoch": 2,
        "pixel_labeled": len(trainer.roles.labeled)}
    assert record["hyperparameters"]["component_choice"] == "saliency"  # no saliency region read: no choice
    table = build_table(scan_runs(trainer.dataset_name))
    text = format_table(table)
    assert "box prompts" in text.splitlines()[1] and "cascade:UNet (+UNet 1x2)" in text
    assert "neither learned source uses a label beyond the pixel labels column" in text
    sources = {r.key.trainer: box_sources_text(r.data_use) for r in table.rows}
    assert sources == {"SAMBoxOnly": "cascade:UNet (+UNet 1x2)", "UNet": None}
    case = trainer.roles.val[0]
    samples = inference_samples(trainer.data, case, trainer.labels)
    winner = unet.predict_slices(case, [s.slice for s in samples]).argmax(axis=0)  # (N, S, S)
    boxes, _, found = prompts_from_coarse(np.stack([winner[i] == trainer.labels.index(s.label) + 1
                                                    for i, s in enumerate(samples)]), int(trainer.plans["image_size"]))
    assert found.any()  # the U-Net finds some of the labels (else the comparison below is empty)
    prompts = trainer.inference_prompts(samples)
    assert set(prompts) == {"boxes"}
    np.testing.assert_allclose(prompts["boxes"].cpu().numpy()[found], boxes[found])
    logits = trainer.predict_logits(samples)
    assert torch.all(logits[torch.from_numpy(~found)] == ABSENT_LOGIT)
    np.testing.assert_array_equal(load_trained_run(out).predict_case(case), trainer.predict_case(case))


def test_the_grid_trains_the_unet_before_a_cascade(sampref_roots) -> None:
    from sampref_bench.grid.plan import plan_grid
    from sampref_bench.trainers.sam.cascade import cascade_run_folder

    dataset = planned_phantoms()
    overrides = {"model": "tiny", "box_source": "run:UNet"}
    plan = plan_grid(dataset, ["SAMBoxOnly", "DPORanking"], [0.5], ["0"], overrides)
    order = [job.folder for job in plan.jobs]
    cascades = [j for j in plan.jobs if j.spec.trainer == "SAMBoxOnly"] + \
        [j for j in plan.jobs if j.spec.trainer == "SAMBaseline"]  # the cascade and DPO's stage 1
    assert len(cascades) == 2
    for job in cascades:
        unet = cascade_run_folder(get_trainer(job.spec.trainer)(dataset, 0, job.spec.fraction, overrides=overrides,
                                                                progress=False))
        made = next(j for j in plan.jobs if j.folder == unet)
        assert made.spec.trainer == "UNet" and made.spec.overrides == () and made.spec.fraction == job.spec.fraction
        assert unet in job.depends_on and order.index(unet) < order.index(job.folder)


def test_cascade_boxes_move_with_a_cached_view(sampref_roots) -> None:
    from sampref_bench.planners.augmentation import draw_view_indices
    from sampref_bench.trainers.sam.cascade import cascade_run_folder

    dataset = planned_phantoms(n_labels=1)
    unet = get_trainer("UNet")(dataset, 0, 0.5, overrides=UNET_TINY, progress=False)
    unet.output_dir = cascade_run_folder(unet)
    unet.run_training()
    trainer = get_trainer("SAMBoxOnly")(dataset, 0, 0.5, overrides={**FAST, **LEARN, "box_source": "run:UNet",
                                                                    "head_points": False, "augment_views": 3},
                                        progress=False)
    trainer.initialize()
    _, samples = next(iter(trainer.train_batches(0)))
    trainer.training_inputs(0, samples)  # draws this batch's views and sets its warp
    plain, found = trainer.cascade_prompts(samples)
    moved = trainer.warp_prompts(plain, list(range(len(samples))))
    drawn = draw_view_indices(int(trainer.config["seed"]), 0, 0, len(samples), len(trainer.views))
    for row, view in enumerate(drawn):
        same = torch.equal(moved["boxes"][row], plain["boxes"][row].float())
        assert same == (view == 0 or not found[row]), (row, view)  # a found box moves exactly when its view does
    assert any(view and found[row] for row, view in enumerate(drawn))
    trainer.set_train_mode()
    assert np.isfinite(trainer.train_step((0, samples))["loss"])
