"""``UNet``: a supervised 2D U-Net (MONAI) trained on the fraction-f labeled cases, the base of the
semi-supervised trainers.

It reads the same plan, splits, budgets and preprocessed slices as the SAM trainers (the stored channels, not
the RGB mapping) and is scored by the same final validation. All labels are learnt jointly: one sample per slice,
``number of labels + 1`` softmax outputs.

Defaults and their sources:

- architecture: the plan's ``unet`` entry (:func:`~sampref_bench.planners.plans.plan_unet`; widths of SSL4MIS's
  UNet, stride-2 levels down to a >= 16 px bottleneck, 2 residual units); ``channels``, ``strides`` and
  ``num_res_units`` override it;
- loss: 0.5 cross-entropy + 0.5 soft Dice on the softmax (SSL4MIS's supervised loss ``0.5 * (CE + Dice)``), as
  MONAI's ``DiceCELoss``;
- optimizer: SGD, lr 0.01, momentum 0.9, weight decay 1e-4 (SSL4MIS's 2D baselines), learning rate decayed by the
  poly rule ``(1 - epoch / epochs) ** 0.9`` once per epoch (nnU-Net; SSL4MIS applies it per iteration);
- length: ``unet_epochs`` x ``unet_iterations_per_epoch`` batches of the plan's ``batch_size`` labeled slices;
- augmentation: nnU-Net's 2D pipeline through MONAI (:mod:`~sampref_bench.trainers.unet.data`).

Batches are streamed from a ``torch.utils.data.DataLoader``; ``num_workers`` (default
:func:`~sampref_bench.trainers.unet.data.default_num_workers`) is a run-time setting, not a hyperparameter: the
weights do not depend on it (every item's augmentation is seeded by the run's seed and the item's address), so it is
kept out of the run's identity and ``--continue`` may change it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.evaluation.metrics import confusion_per_label, overlap_scores
from sampref_bench.models.unet import build_unet, check_architecture
from sampref_bench.planners.data import LabelStore, labeled_slices
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.trainers.base import BaseTrainer
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.unet.data import (
    LABELED,
    UNLABELED,
    Augmenter,
    ItemKey,
    SliceDataset,
    batch_loader,
    class_lookup,
    default_num_workers,
    intensity_transforms,
    slice_images,
    spatial_transforms,
)
from sampref_bench.trainers.unet.parts import TwoStreamBatchSampler
from sampref_bench.trainers.validation import epoch_validation_subset, merge_label_probabilities
from sampref_bench.utilities.errors import SamprefError

#: Architecture options; ``None`` means the plan's ``unet`` value.
ARCHITECTURE_KEYS = ("channels", "strides", "num_res_units")


#: ``num_workers``: a run-time setting (loader processes), checked like an option but not part of the run's identity.
NUM_WORKERS = Option("int", low=0, none="2 on a machine of 4 or more CPUs, else 0 (in-process)",
                     help="loader processes")


class UNet(BaseTrainer):
    """Supervised MONAI 2D U-Net on the labeled slices (see the module docstring for defaults and sources)."""

    schedule: ClassVar[str] = "unet_"
    #: ``--num-gpus``: each rank steps on a contiguous shard of the labeled stream; MONAI's ``DiceCELoss`` (soft
    #: Dice per sample, cross-entropy per pixel, both averaged) is a mean over items, and instance norm needs no
    #: batch statistics, so the DDP update equals the single-process one up to float rounding.
    distributed: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        **BaseTrainer.defaults,
        # SGD as SSL4MIS's 2D baselines; poly decay with exponent 0.9 as nnU-Net (per epoch)
        "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9,
        # SSL4MIS: loss = 0.5 * (CE + Dice)
        "ce_weight": 0.5, "dice_weight": 0.5,
        # the plan's unet architecture unless given
        "channels": None, "strides": None, "num_res_units": None,
        # nnU-Net-style MONAI augmentation of every training slice
        "augment": True,
    }
    options: ClassVar[dict[str, Option]] = {
        "lr": Option("float", low=0, low_open=True, help="SGD learning rate"),
        "momentum": Option("float", low=0, high=1, high_open=True, help="SGD momentum"),
        "weight_decay": Option("float", low=0, help="SGD weight decay"),
        "poly_power": Option("float", low=0, help="exponent of the poly learning-rate decay"),
        "ce_weight": Option("float", low=0, help="weight of the cross-entropy loss"),
        "dice_weight": Option("float", low=0, help="weight of the Dice loss"),
        "channels": Option("int_list", low=1, none="the plan's unet channels", help="channels per level"),
        "strides": Option("int_list", low=1, none="the plan's unet strides", help="strides between levels"),
        "num_res_units": Option("int", low=0, none="the plan's unet num_res_units", help="residual units per block"),
        "augment": Option("bool", help="MONAI augmentation of the training slices"),
    }

    def __init__(self, dataset: str | int, fold: int, fraction: float = 1.0, configuration: str = "2d",
                 device: str = "cpu", overrides: dict[str, Any] | None = None, progress: bool = True,
                 run_name: str | None = None) -> None:
        overrides = dict(overrides or {})
        workers = NUM_WORKERS.check("num_workers", overrides.pop("num_workers", None))
        self.num_workers = default_num_workers() if workers is None else int(workers)
        super().__init__(dataset, fold, fraction, configuration, device, overrides, progress, run_name)

    # ----------------------------------------------------------- configuration
    def resolve_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Planned schedule (``unet_*``), then the plan's architecture for the ``None`` architecture keys; strides
        default to 2 per level when only ``channels`` is given."""
        config = super().resolve_config(overrides)
        planned = self.plans.get("unet")
        if planned is None:
            raise SamprefError(f"plans.json of {self.dataset_name} has no 'unet' architecture (it predates the U-Net "
                               f"trainers): rerun `sampref_plan -d {self.dataset_name}`")
        if config["channels"] is None:
            config["channels"] = list(planned["channels"])
        if config["strides"] is None:
            same_depth = len(config["channels"]) == len(planned["channels"])
            config["strides"] = list(planned["strides"]) if same_depth else [2] * (len(config["channels"]) - 1)
        if config["num_res_units"] is None:
            config["num_res_units"] = int(planned["num_res_units"])
        config["channels"] = [int(c) for c in config["channels"]]
        config["strides"] = [int(s) for s in config["strides"]]
        return config

    def architecture(self) -> dict[str, Any]:
        """MONAI ``UNet`` arguments of this run: the plan's input and output channels, the configured levels."""
        arch = {"in_channels": int(self.plans["unet"]["in_channels"]), "out_channels": len(self.labels) + 1,
                **{key: self.config[key] for key in ARCHITECTURE_KEYS}}
        check_architecture(arch, int(self.plans["image_size"]))
        return arch

    def config_record(self) -> dict[str, Any]:
        """``config.json`` plus the architecture built and the (non-identifying) number of loader workers."""
        return {**super().config_record(), "architecture": self.architecture(), "num_workers": self.num_workers}

    # ------------------------------------------------------------ networks
    def build_network(self) -> torch.nn.Module:
        """The U-Net, initialized from the run's seed."""
        return build_unet(self.architecture(), int(self.config["seed"]))

    def trained_networks(self) -> list[str]:
        """Networks with an optimizer (default: ``network``)."""
        return ["network"]

    def configure_optimizers(self) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """SGD with momentum and weight decay per trained network, each with a per-epoch poly decay."""
        optimizers, schedulers = {}, {}
        for name in self.trained_networks():
            optimizer = torch.optim.SGD(self.networks[name].parameters(), lr=float(self.config["lr"]),
                                        momentum=float(self.config["momentum"]),
                                        weight_decay=float(self.config["weight_decay"]))
            optimizers[name] = optimizer
            schedulers[name] = torch.optim.lr_scheduler.PolynomialLR(
                optimizer, total_iters=int(self.config["epochs"]), power=float(self.config["poly_power"]))
        return optimizers, schedulers

    # --------------------------------------------------------------- data
    def build_data(self) -> None:
        """Labeled training slices, the fixed validation subset, the loss and the dataset behind the loader."""
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=float(self.config["dice_weight"]),
                                  lambda_ce=float(self.config["ce_weight"]))
        self.lookup = class_lookup(self.labels)
        self.train_labels = self.data.label_store(self.roles.labeled, "the labeled cases of this run")
        self.train_slices = self.planned_slices(self.train_labels, self.roles.labeled)
        if not self.train_slices:
            raise SamprefError(f"{self}: no labeled training slice (labeled cases {self.roles.labeled})")
        self.val_labels = self.data.label_store(self.roles.val, "scoring of the per-epoch validation")
        val = self.planned_slices(self.val_labels, self.roles.val)
        self.val_slices = epoch_validation_subset(val, int(self.config["seed"]))
        self.unlabeled_slices = self.hidden_slices()
        self.dataset = SliceDataset(self.data, self.train_slices, self.unlabeled_slices, self.train_labels,
                                    self.lookup, self.labeled_view(), self.unlabeled_view(),
                                    int(self.config["seed"]))

    def planned_slices(self, store: LabelStore, cases: list[str]) -> list[tuple[str, int]]:
        """``(case, slice)`` pairs of labeled ``cases``: foreground slices plus the plan's share of background."""
        share = float(self.plans["background_slice_share"])
        return [(case, k) for case in cases for k in labeled_slices(store.labels_per_slice(case), share, case)]

    def hidden_slices(self) -> list[tuple[str, int]]:
        """``(case, slice)`` pairs of unlabeled images the trainer reads (none for the supervised U-Net)."""
        return []

    def labeled_view(self) -> Augmenter:
        """Augmentation of a labeled ``{"image", "label"}`` item."""
        if not self.config["augment"]:
            return Augmenter([])
        size = int(self.plans["image_size"])
        return Augmenter(spatial_transforms(["image", "label"], ["label"], size) + intensity_transforms("image"))

    def unlabeled_view(self) -> Augmenter | None:
        """Views of an unlabeled ``{"image"}`` item (``None``: the trainer reads no unlabeled image)."""
        return None

    def unlabeled_batch_size(self) -> int:
        """Unlabeled slices per batch (0 for the supervised U-Net)."""
        return 0

    def sampler(self) -> TwoStreamBatchSampler:
        """The batch composition of every epoch."""
        return TwoStreamBatchSampler(len(self.train_slices), len(self.unlabeled_slices),
                                     int(self.config["batch_size"]), self.unlabeled_batch_size(),
                                     int(self.config["iterations_per_epoch"]), int(self.config["seed"]))

    def train_batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        """Streams ``iterations_per_epoch`` batches ``{"index", "labeled": {"image", "label"}, "unlabeled": ...}``
        from a DataLoader; labeled ``image`` is ``(B, C, S, S)`` float in [0, 1], ``label`` ``(B, 1, S, S)`` class
        indices."""
        keys = []
        for b, (labeled, unlabeled) in enumerate(self.sampler().batches(epoch)):
            keys.append([ItemKey(epoch, b, p, LABELED, i) for p, i in enumerate(labeled)]
                        + [ItemKey(epoch, b, p, UNLABELED, i) for p, i in enumerate(unlabeled)])
        return batch_loader(self.dataset, keys, self.num_workers, pin_memory=self.device.type == "cuda")

    def to_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor of a stream moved to the run's device."""
        return {key: value.to(self.device, non_blocking=True) for key, value in tensors.items()}

    # ---------------------------------------------------------------- loop
    def global_step(self, batch_index: int) -> int:
        """0-based optimisation step of batch ``batch_index`` of the current epoch."""
        return self.epoch * int(self.config["iterations_per_epoch"]) + int(batch_index)

    def total_steps(self) -> int:
        """Steps of the whole run (``epochs`` x ``iterations_per_epoch``)."""
        return int(self.config["epochs"]) * int(self.config["iterations_per_epoch"])

    def supervised_loss(self, network: torch.nn.Module, labeled: dict[str, torch.Tensor]) -> torch.Tensor:
        """The CE + Dice loss of ``network`` on a labeled stream (on the device)."""
        return self.loss_fn(network(labeled["image"]), labeled["label"])

    def optimize(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and step every optimizer."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One SGD step on the supervised loss."""
        loss = self.supervised_loss(self.network, self.to_device(batch["labeled"]))
        self.optimize(loss)
        return {"loss": float(loss.detach())}

    # ----------------------------------------------------------- validation
    @torch.no_grad()
    def predict_slices(self, case: str, slices: list[int]) -> np.ndarray:
        """``(K + 1, N, S, S)`` float32 softmax probabilities (background first) of ``slices`` of ``case``, from
        its images alone, in chunks of ``batch_size`` slices."""
        step = max(1, int(self.config["batch_size"]))
        parts = []
        for start in range(0, len(slices), step):
            images = torch.from_numpy(slice_images(self.data, case, slices[start:start + step])).to(self.device)
            parts.append(torch.softmax(self.network(images).float(), dim=1).cpu().numpy())
        return np.concatenate(parts).transpose(1, 0, 2, 3)

    def validation_step(self) -> dict[str, float]:
        """Pseudo Dice of a fixed, seeded subset of validation slices: TP, FP and FN pooled over the subset at the
        preprocessed size per label, averaged over labels (labels absent from the subset and the prediction are
        left out)."""
        predicted, reference = [], []
        by_case: dict[str, list[int]] = {}
        for case, k in self.val_slices:
            by_case.setdefault(case, []).append(k)
        for case, slices in by_case.items():
            predicted.append(self.predict_slices(case, slices).argmax(axis=0).astype(np.uint8))
            reference.append(self.lookup[np.asarray(self.val_labels.seg(case)[slices])])
        if not predicted:
            return {"val_dice": float("nan")}
        classes = list(range(1, len(self.labels) + 1))
        counts = confusion_per_label(np.concatenate(reference), np.concatenate(predicted), classes)
        dices = [overlap_scores(c["TP"], c["FP"], c["FN"])[0] for c in counts.values()]
        dices = [d for d in dices if not np.isnan(d)]
        return {"val_dice": float(np.mean(dices)) if dices else float("nan")}

    def predict_case(self, case: str) -> np.ndarray:
        """Label map of a case in its original geometry: every class's softmax probabilities mapped back with the
        case's slice transform, argmax over classes (background included), slices restacked."""
        meta = self.data.meta(case)
        probabilities = self.predict_slices(case, self.data.all_slices(case))
        return merge_label_probabilities(probabilities, SliceTransform.from_dict(meta["transform"]),
                                         [0, *self.labels], 0.0, meta["slicing_axis"])
