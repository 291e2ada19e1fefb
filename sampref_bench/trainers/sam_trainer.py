"""Supervised SAM fine-tuning: the stage-1 trainer every SAM trainer (prompt variants, DPO) builds on.

Defaults follow the paper (Konwer et al., CVPR 2025): focal + Dice loss weighted 20:1 (MONAI's
``DiceFocalLoss``), Adam with lr 1e-4 halved every 10 epochs, 15 epochs; the image encoder is frozen by
default, so image embeddings come from the shared :class:`EmbeddingCache`. What prompt a sample gets
is the one thing subclasses decide (:meth:`SAMTrainer.prompts`), plus which samples train
(:attr:`SAMTrainer.train_on_absent_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from sampref_bench.planners.embedding_cache import EmbeddingCache
from sampref_bench.planners.preprocessing import from_slices
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.trainers.base import BaseTrainer, epoch_generator
from sampref_bench.trainers.data import Sample

#: At most this many validation samples are scored after each epoch (a fixed, seeded subset).
MAX_EPOCH_VAL_SAMPLES = 64


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` binary masks -> ``(B, 4)`` float boxes ``x0, y0, x1, y1`` in pixels (NaN rows when empty)."""
    boxes = torch.full((masks.shape[0], 4), float("nan"))
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask > 0, as_tuple=True)
        if ys.numel():
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    return boxes


def jitter_boxes(boxes: torch.Tensor, rng: np.random.Generator, fraction: float, limit: int) -> torch.Tensor:
    """Move each box side by up to ``fraction`` of the box size (uniform), clipped to ``[0, limit - 1]``."""
    sizes = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1).clamp(min=1.0)
    noise = torch.from_numpy(rng.uniform(-fraction, fraction, size=tuple(boxes.shape))).float()
    moved = boxes + noise * sizes
    x0 = torch.minimum(moved[:, 0], moved[:, 2])
    x1 = torch.maximum(moved[:, 0], moved[:, 2])
    y0 = torch.minimum(moved[:, 1], moved[:, 3])
    y1 = torch.maximum(moved[:, 1], moved[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1).clamp(0, limit - 1)


class SAMTrainer(BaseTrainer):
    """Fine-tunes SAM's mask decoder (and prompt encoder) on labeled cases; prompts come from subclasses."""

    abstract: ClassVar[bool] = True
    #: Whether (slice, label) pairs where the label is absent are trained (targets are then empty).
    train_on_absent_labels: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        **BaseTrainer.defaults,
        "lr": 1e-4, "lr_step_epochs": 10, "lr_gamma": 0.5,
        "focal_weight": 20.0, "dice_weight": 1.0,
        "model": "litemedsam", "model_checkpoint": None, "model_arch": None, "freeze_image_encoder": True,
        "train_prompt_encoder": True, "box_jitter": 0.1, "threshold": 0.5,
    }

    def run_configuration_name(self) -> str:
        """``2d`` for LiteMedSAM with a frozen encoder; other models and an unfrozen encoder are named."""
        name = self.configuration
        if self.config["model"] != "litemedsam":
            name += f"-{self.config['model']}"
        if not self.config["freeze_image_encoder"]:
            name += "-unfrozen"
        return name

    # ------------------------------------------------------------ network
    def build_network(self) -> torch.nn.Module:
        """Build the SAM flavour, freeze what stays fixed, add :meth:`extra_modules`."""
        from sampref_bench.models import build_sam

        model = build_sam(self.config["model"], checkpoint=self.config["model_checkpoint"],
                          image_size=int(self.plans["image_size"]), device="cpu", seed=int(self.config["seed"]),
                          arch_overrides=self.config["model_arch"])
        for p in model.image_encoder.parameters():
            p.requires_grad_(not self.config["freeze_image_encoder"])
        for p in model.prompt_encoder.parameters():
            p.requires_grad_(bool(self.config["train_prompt_encoder"]))
        for name, module in self.extra_modules().items():
            model.add_module(name, module)
        return model

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Modules trained beside SAM (e.g. label tokens); registered as attributes of the network."""
        return {}

    def set_train_mode(self) -> None:
        """Training mode, except a frozen image encoder (its BatchNorm statistics must not drift)."""
        assert self.network is not None
        self.network.train()
        if self.config["freeze_image_encoder"]:
            self.network.image_encoder.eval()

    def trainable_state(self) -> dict[str, Any]:
        """Everything but a frozen image encoder (rebuilt from its weights on load)."""
        assert self.network is not None
        state = self.network.state_dict()
        if self.config["freeze_image_encoder"]:
            state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
        return state

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`trainable_state`; every non-encoder key must match."""
        assert self.network is not None
        missing, unexpected = self.network.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (self.config["freeze_image_encoder"] and k.startswith("image_encoder."))]
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        """Adam over trainable parameters, StepLR halving every ``lr_step_epochs``."""
        assert self.network is not None
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=float(self.config["lr"]))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(self.config["lr_step_epochs"]),
                                                    gamma=float(self.config["lr_gamma"]))
        return optimizer, scheduler

    # --------------------------------------------------------------- data
    def build_data(self) -> None:
        """Training and validation samples, the loss and (frozen encoder) the embedding cache."""
        self.loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=float(self.config["dice_weight"]),
                                     lambda_focal=float(self.config["focal_weight"]))
        self.train_samples = self.training_samples()
        if not self.train_samples:
            raise RuntimeError(f"{self}: no training sample (labeled cases {self.roles.labeled})")
        val = self.data.samples(self.roles.val, self.labels, require_present=not self.train_on_absent_labels)
        keep = np.random.default_rng(int(self.config["seed"])).permutation(len(val))[:MAX_EPOCH_VAL_SAMPLES]
        self.val_samples = [val[i] for i in sorted(keep)]
        self.cache = None
        if self.config["freeze_image_encoder"]:
            self.cache = EmbeddingCache(self.data, self.network, self.device)
            self.cache.ensure(sorted(set(self.roles.labeled) | set(self.roles.val)), progress=self.progress)

    def training_samples(self) -> list[Sample]:
        """(case, slice, label) samples of the labeled cases."""
        return self.data.samples(self.roles.labeled, self.labels, require_present=not self.train_on_absent_labels)

    def train_batches(self, epoch: int) -> Iterable[tuple[int, list[Sample]]]:
        """``(batch index, samples)`` of one epoch, in a seeded order."""
        rng = epoch_generator(int(self.config["seed"]), epoch)
        size = int(self.config["batch_size"])
        n_batches = self.config["iterations_per_epoch"] or math.ceil(len(self.train_samples) / size)
        order: list[int] = []
        while len(order) < n_batches * size:
            order.extend(rng.permutation(len(self.train_samples)).tolist())
        if not self.config["iterations_per_epoch"]:
            order = order[: len(self.train_samples)]
        return [(b, [self.train_samples[i] for i in order[b * size:(b + 1) * size]]) for b in range(n_batches)]

    def embeddings(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 256, E, E)`` image embeddings (cached, or computed with gradients when the encoder trains)."""
        if self.cache is not None:
            arrays = [self.cache.get(s.case)[s.slice] for s in samples]
            return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(self.device)
        images = np.concatenate([self.data.rgb(s.case, [s.slice]) for s in samples])
        return self.network.embed(torch.from_numpy(images).to(self.device))

    def targets(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 1, S, S)`` float binary masks of each sample's label."""
        masks = np.stack([self.data.seg(s.case)[s.slice] == s.label for s in samples]).astype(np.float32)
        return torch.from_numpy(masks)[:, None].to(self.device)

    # ------------------------------------------------------------ prompts
    def prompts(self, samples: list[Sample], targets: torch.Tensor, training: bool,
                rng: np.random.Generator | None) -> dict[str, Any]:
        """Keyword arguments of ``SamModel.decode`` besides the embeddings (boxes, points, extra_sparse)."""
        raise NotImplementedError

    def logits(self, samples: list[Sample], targets: torch.Tensor, training: bool,
               rng: np.random.Generator | None) -> torch.Tensor:
        """``(B, 1, S, S)`` mask logits at the preprocessed size."""
        assert self.network is not None
        low_res, _ = self.network.decode(self.embeddings(samples), **self.prompts(samples, targets, training, rng))
        size = int(self.plans["image_size"])
        return F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)

    # ---------------------------------------------------------------- loop
    def train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """One Adam step on the focal + Dice loss."""
        index, samples = batch
        assert self.optimizer is not None
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        targets = self.targets(samples)
        loss = self.loss_fn(self.logits(samples, targets, True, rng), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def validation_step(self) -> dict[str, float]:
        """Pseudo Dice (TP/FP/FN pooled over a fixed subset of validation samples, preprocessed size)."""
        tp = fp = fn = 0.0
        size = int(self.config["batch_size"])
        for start in range(0, len(self.val_samples), size):
            samples = self.val_samples[start:start + size]
            targets = self.targets(samples)
            pred = torch.sigmoid(self.logits(samples, targets, False, None)) >= self.config["threshold"]
            ref = targets > 0
            tp += float((pred & ref).sum())
            fp += float((pred & ~ref).sum())
            fn += float((~pred & ref).sum())
        dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        return {"val_dice": dice}

    # ----------------------------------------------------- final validation
    @torch.no_grad()
    def predict_probabilities(self, case: str) -> np.ndarray:
        """``(K, S, size, size)`` float32 probabilities of each foreground label for every slice of a case."""
        n_slices = self.data.meta(case)["n_slices"]
        size = int(self.plans["image_size"])
        out = np.zeros((len(self.labels), n_slices, size, size), np.float32)
        samples = [Sample(case, k, label) for k in range(n_slices) for label in self.labels]
        samples = [s for s in samples if self.predicts(s)]
        step = int(self.config["batch_size"])
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            probs = torch.sigmoid(self.logits(chunk, self.targets(chunk), False, None)).cpu().numpy()
            for sample, prob in zip(chunk, probs):
                out[self.labels.index(sample.label), sample.slice] = prob[0]
        return out

    def predicts(self, sample: Sample) -> bool:
        """Whether a (slice, label) pair is predicted at all (an oracle skips labels absent from the slice)."""
        return True

    def predict_case(self, case: str) -> np.ndarray:
        """Label map of a case in its original geometry: per-label probabilities mapped back, highest wins."""
        meta = self.data.meta(case)
        transform = SliceTransform.from_dict(meta["transform"])
        probs = self.predict_probabilities(case)
        back = np.stack([transform.inverse_probabilities(probs[:, k]) for k in range(probs.shape[1])], axis=1)
        best = back.argmax(axis=0)
        values = np.asarray(self.labels, dtype=np.uint8)[best]
        label_slices = np.where(back.max(axis=0) >= self.config["threshold"], values, 0).astype(np.uint8)
        return from_slices(label_slices, meta["slicing_axis"])
