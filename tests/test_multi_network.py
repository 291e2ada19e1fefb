"""A trainer holding several networks, optimizers and schedulers resumes exactly; helpers of the SAM trainer."""

import csv

import numpy as np
import pytest
import torch

from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.trainers.base import BaseTrainer, epoch_generator
from sampref_bench.trainers.run_folder import load_checkpoint
from sampref_bench.trainers.sam.trainer import boxes_from_masks
from sampref_bench.trainers.validation import merge_label_probabilities
from tests.trainer_helpers import planned_phantoms


class TwoNetworkToy(BaseTrainer):
    """Two trained networks (SGD with momentum + StepLR, Adam without scheduler), an EMA teacher that is
    checkpointed, and a frozen reference that is rebuilt from the seed instead of stored."""

    interrupt_after: int | None = None

    def build_networks(self):
        return {name: torch.nn.Linear(4, 1) for name in ("network", "partner", "teacher", "reference")}

    def rebuilt_networks(self):
        return {"reference"}

    def configure_optimizers(self):
        sgd = torch.optim.SGD(self.networks["network"].parameters(), lr=0.05, momentum=0.9)
        adam = torch.optim.Adam(self.networks["partner"].parameters(), lr=0.01)
        return {"network": sgd, "partner": adam}, {"network": torch.optim.lr_scheduler.StepLR(sgd, 1, 0.7)}

    def train_batches(self, epoch):
        rng = epoch_generator(int(self.config["seed"]), epoch)
        return [rng.normal(size=(8, 4)).astype(np.float32) for _ in range(int(self.config["iterations_per_epoch"]))]

    def train_step(self, batch):
        x = torch.from_numpy(batch)
        noise = 0.1 * torch.randn(8, 1)  # torch's global RNG: its state must be restored on resume
        target = self.networks["reference"](x).detach() + noise
        first = ((self.networks["network"](x) - target) ** 2).mean()
        second = ((self.networks["partner"](x) - self.networks["network"](x).detach()) ** 2).mean()
        for name, loss in (("network", first), ("partner", second)):
            self.optimizers[name].zero_grad()
            loss.backward()
            self.optimizers[name].step()
        with torch.no_grad():
            for t, s in zip(self.networks["teacher"].parameters(), self.networks["network"].parameters()):
                t.mul_(0.9).add_(0.1 * s)
        row = {"loss": float(first.detach()), "partner_loss": float(second.detach())}
        if self.epoch >= 2:
            row["late_metric"] = float(first.detach()) * 2  # a key that appears only in later epochs
        return row

    def validation_step(self):
        return {"val_dice": 0.0}

    def on_epoch_end(self, row):
        if self.interrupt_after is not None and self.epoch == self.interrupt_after:
            raise KeyboardInterrupt

    def predict_case(self, case):
        return np.zeros(self.data.meta(case)["original_shape"], dtype=np.uint8)


def _toy(dataset, run_name):
    return TwoNetworkToy(dataset, 0, 0.5, overrides={"epochs": 4, "iterations_per_epoch": 3}, progress=False,
                         run_name=run_name)


def test_several_networks_resume_exactly():
    dataset = planned_phantoms()
    straight = _toy(dataset, "straight")
    straight.run_training()
    victim = _toy(dataset, "killed")
    victim.interrupt_after = 2
    with pytest.raises(KeyboardInterrupt):
        victim.run_training()
    assert load_checkpoint(victim.output_dir / "checkpoint_latest.pth")["epoch"] == 1  # saved after the epoch
    resumed = _toy(dataset, "killed")
    resumed.run_training(continue_training=True)
    a = load_checkpoint(straight.output_dir / "checkpoint_final.pth")
    b = load_checkpoint(resumed.output_dir / "checkpoint_final.pth")
    assert set(a["networks"]) == {"network", "partner", "teacher"}  # the rebuilt reference is not stored
    assert set(a["optimizers"]) == {"network", "partner"} and set(a["schedulers"]) == {"network"}
    for name in a["networks"]:
        for key, value in a["networks"][name].items():
            assert torch.equal(value, b["networks"][name][key]), (name, key)
    for name in a["optimizers"]:
        for index, state in a["optimizers"][name]["state"].items():
            for key, value in state.items():
                other = b["optimizers"][name]["state"][index][key]
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other))
    assert a["schedulers"]["network"]["last_epoch"] == b["schedulers"]["network"]["last_epoch"] == 4
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["log"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b["log"]]
    assert not torch.equal(a["networks"]["teacher"]["weight"], a["networks"]["network"]["weight"])
    rows = list(csv.DictReader((resumed.output_dir / "training_log.csv").open()))
    assert "train_late_metric" in rows[0] and rows[0]["train_late_metric"] == "" and rows[3]["train_late_metric"]
    assert {"lr_network", "lr_partner", "train_partner_loss"} <= set(rows[0])
    assert float(rows[1]["lr_network"]) == pytest.approx(0.05 * 0.7)


def test_boxes_from_masks_hand_computed():
    masks = torch.zeros(3, 6, 8)
    masks[0, 1:4, 2:7] = 1  # rows 1..3, columns 2..6
    masks[2, 5, 0] = 1
    boxes = boxes_from_masks(masks)
    assert boxes[0].tolist() == [2.0, 1.0, 6.0, 3.0]
    assert torch.isnan(boxes[1]).all()
    assert boxes[2].tolist() == [0.0, 5.0, 0.0, 5.0]


def test_merge_of_overlapping_label_probabilities():
    transform = SliceTransform.for_shape((4, 4), 4)
    probs = np.zeros((2, 1, 4, 4), np.float32)  # (K labels, S slices, size, size)
    probs[0, 0, :, :2] = 0.9  # label 1 on the left half
    probs[1, 0, :, 1:3] = 0.6  # label 3 overlaps column 1, where label 1 is more probable
    probs[1, 0, 0, 1] = 0.95  # ... except one pixel where label 3 wins
    probs[0, 0, 3, 3] = 0.4  # below the threshold: background
    merged = merge_label_probabilities(probs, transform, [1, 3], 0.5, None)
    expected = np.array([[1, 3, 3, 0], [1, 1, 3, 0], [1, 1, 3, 0], [1, 1, 3, 0]], np.uint8)
    np.testing.assert_array_equal(merged, expected)
    assert merged.dtype == np.uint8
