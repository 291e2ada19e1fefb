"""Supervised SAM fine-tuning: the stage-1 trainer every SAM trainer (prompt variants, DPO) builds on.

Defaults follow the paper (Konwer et al., CVPR 2025): focal + Dice loss weighted 20:1 (MONAI's
``DiceFocalLoss``), Adam with lr 1e-4 halved every 10 epochs; the number of epochs, iterations per epoch
and batch size are the plan's. The image encoder is frozen by default, so image embeddings come from the
shared :class:`EmbeddingCache`.

Prompts are the one thing subclasses decide, through two hooks with different inputs:
:meth:`SAMTrainer.train_prompts` sees the training targets (and may jitter them), while
:meth:`SAMTrainer.inference_prompts`, used by per-epoch validation, final validation and prediction, gets
samples alone: the prediction path reads images through the label-free
:class:`~sampref_bench.planners.data.PreprocessedData` and never a label. Only an oracle trainer
(``oracle = True``) may read ground truth at inference, through :meth:`BaseTrainer.oracle_labels`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss
from torchvision.ops import masks_to_boxes

from sampref_bench.evaluation.metrics import confusion_per_label, overlap_scores
from sampref_bench.planners.data import LabelStore, Sample, inference_samples, labeled_samples
from sampref_bench.planners.embedding_cache import ActivationCache, EmbeddingCache, embed_slices
from sampref_bench.planners.transforms import SliceTransform
from sampref_bench.trainers.base import BaseTrainer
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.randomness import epoch_generator, seeded_passes
from sampref_bench.trainers.sam.augmented import AUGMENTATION_DEFAULTS, TrainingAugmentation
from sampref_bench.trainers.sam.encoder_config import EncoderConfiguration
from sampref_bench.trainers.validation import (  # noqa: F401 (re-export)
    MAX_EPOCH_VAL_SAMPLES,
    epoch_validation_subset,
    merge_label_probabilities,
)


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` binary masks -> ``(B, 4)`` float boxes ``x0, y0, x1, y1`` in pixels (NaN rows when empty).

    Coordinates are the first and last foreground pixel indices (torchvision's ``masks_to_boxes``).
    """
    boxes = torch.full((masks.shape[0], 4), float("nan"))
    present = (masks > 0).flatten(1).any(dim=1)
    if present.any():
        boxes[present] = masks_to_boxes(masks[present] > 0).float()
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



def _flavour_names() -> tuple[str, ...]:
    """Every SAM flavour name and alias (the ``model`` option's choices)."""
    from sampref_bench.models.flavours import FLAVOURS

    return tuple(name for spec in FLAVOURS.values() for name in (spec.name, *spec.aliases))

class SAMTrainer(EncoderConfiguration, TrainingAugmentation, BaseTrainer):
    """Fine-tunes SAM's mask decoder (and prompt encoder) on labeled cases; prompts come from subclasses."""

    abstract: ClassVar[bool] = True
    #: Whether (slice, label) pairs where the label is absent are trained (targets are then empty).
    train_on_absent_labels: ClassVar[bool] = False
    named_in_configuration: ClassVar[tuple[str, ...]] = ("model", "freeze_image_encoder")
    defaults: ClassVar[dict[str, Any]] = {
        **BaseTrainer.defaults,
        "lr": 1e-4, "lr_step_epochs": 10, "lr_gamma": 0.5,
        "focal_weight": 20.0, "dice_weight": 1.0,
        "model": "litemedsam", "model_checkpoint": None, "model_arch": None, "freeze_image_encoder": None,
        "train_prompt_encoder": True, "box_jitter": 0.1, "threshold": 0.5, **AUGMENTATION_DEFAULTS,
    }
    options: ClassVar[dict[str, Option]] = {
        "lr": Option("float", low=0, low_open=True, help="AdamW learning rate"),
        "lr_step_epochs": Option("int", low=1, help="epochs between learning-rate steps"),
        "lr_gamma": Option("float", low=0, high=1, low_open=True, help="factor of each learning-rate step"),
        "focal_weight": Option("float", low=0, help="weight of the focal loss"),
        "dice_weight": Option("float", low=0, help="weight of the Dice loss"),
        "model": Option("str", choices=_flavour_names, ignore_case=True, help="SAM flavour (aliases accepted)"),
        "model_checkpoint": Option("path", none="the flavour's bundled or default weights",
                                   help="weights file of the flavour"),
        "model_arch": Option("dict", none="the flavour's architecture", help="architecture overrides"),
        "freeze_image_encoder": Option("bool", none="the configuration's: true for 2d only",
                                       help="keep the image encoder fixed (embeddings cached); false with -c 2d is "
                                            "-c 2d_full"),
        "train_prompt_encoder": Option("bool", help="train the prompt encoder with the mask decoder"),
        "box_jitter": Option("float", low=0, high=1, help="largest box-side move in training, share of the box"),
        "threshold": Option("float", low=0, high=1, low_open=True, high_open=True,
                            help="probability above which a pixel is foreground"),
    }

    def canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        """Model aliases become the flavour's name (``lite_medsam`` and ``litemedsam`` are one run)."""
        from sampref_bench.models import resolve_flavour

        config = self.canonicalize_encoder({**config, "model": resolve_flavour(config["model"]).name})
        return self.canonicalize_augmentation(config)

    def base_configuration_name(self) -> str:
        """The planned configuration (``2d``, ``2d_partial``, ``2d_lora``, ``2d_full``), followed by the model for any
        but LiteMedSAM (its flavour identity: ``2d-tiny``, ``2d_full-vit_b-in2``)."""
        from sampref_bench.models import resolve_flavour

        name = self.configuration
        if self.config["model"] != "litemedsam":
            name += f"-{resolve_flavour(self.config['model']).identity}"
        return name

    # ------------------------------------------------------------ network
    def build_network(self) -> torch.nn.Module:
        """Build the SAM flavour, freeze what stays fixed, add :meth:`extra_modules`."""
        from sampref_bench.models import build_sam

        model = build_sam(self.config["model"], checkpoint=self.config["model_checkpoint"],
                          image_size=int(self.plans["image_size"]), device="cpu", seed=int(self.config["seed"]),
                          arch_overrides=self.config["model_arch"])
        self.warn_interpolated_vit()
        self.prepare_encoder(model)
        for p in model.prompt_encoder.parameters():
            p.requires_grad_(bool(self.config["train_prompt_encoder"]))
        for name, module in self.extra_modules().items():
            model.add_module(name, module)
        return model

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Modules trained beside SAM (e.g. label tokens); registered as attributes of the network."""
        return {}

    def set_train_mode(self) -> None:
        """Training mode, except what of the image encoder does not train (frozen, LoRA's base weights, the partial
        configuration's trunk): its BatchNorm statistics must not drift."""
        super().set_train_mode()
        self.set_encoder_mode(self.network)

    def network_state(self, name: str, network: torch.nn.Module) -> dict[str, Any]:
        """Everything but a frozen image encoder (rebuilt from its weights on load)."""
        state = network.state_dict()
        if self.config["freeze_image_encoder"]:
            state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
        return state

    def load_network_state(self, name: str, network: torch.nn.Module, state: dict[str, Any]) -> None:
        """Load :meth:`network_state`; every non-encoder key must match."""
        missing, unexpected = network.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (self.config["freeze_image_encoder"] and k.startswith("image_encoder."))]
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")

    def configure_optimizers(self) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """Adam over trainable parameters, StepLR halving every ``lr_step_epochs``."""
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=float(self.config["lr"]))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(self.config["lr_step_epochs"]),
                                                    gamma=float(self.config["lr_gamma"]))
        return {"network": optimizer}, {"network": scheduler}

    # --------------------------------------------------------------- data
    def build_data(self) -> None:
        """Training and validation samples, the loss and (frozen encoder) the embedding cache."""
        self.loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=float(self.config["dice_weight"]),
                                     lambda_focal=float(self.config["focal_weight"]))
        self.train_labels = self.data.label_store(self.roles.labeled, "the labeled cases of this run")
        self.train_samples = self.training_samples()
        if not self.train_samples:
            raise RuntimeError(f"{self}: no training sample (labeled cases {self.roles.labeled})")
        self.val_labels = self.data.label_store(self.roles.val, "scoring of the per-epoch validation")
        val = self.planned_samples(self.val_labels, self.roles.val)
        limit = int(self.planned_configuration().get("epoch_val_samples", MAX_EPOCH_VAL_SAMPLES))
        self.val_samples = epoch_validation_subset(val, int(self.config["seed"]), limit)
        self.cache = self.encoder_cache()
        if self.cache is not None:
            self.cache.ensure(self.slices_read(), progress=self.progress)
            if self.training_views():
                self.cache.ensure([(s.case, s.slice) for s in self.train_samples], progress=self.progress,
                                  views=self.training_views())

    def encoder_cache(self, data: Any = None) -> Any:
        """What of the encoder is cached: the embeddings of a frozen encoder (:class:`EmbeddingCache`), the
        partial configuration's trunk activations (:class:`ActivationCache`), or nothing (LoRA, full)."""
        data = self.data if data is None else data
        if self.config["freeze_image_encoder"]:
            return EmbeddingCache(data, self.network, self.device)
        if getattr(self, "encoder_split", None) is not None:
            return ActivationCache(data, self.encoder_split, self.device)
        return None

    def build_inference_data(self) -> None:
        """A finished run predicts from images alone: only the encoder's cache (:meth:`encoder_cache`; computed
        when first read); no sample list, label store or loss."""
        self.cache = self.encoder_cache()

    def use_data(self, data: Any) -> None:
        """As :meth:`BaseTrainer.use_data`; the encoder's cache is rebuilt beside ``data``."""
        super().use_data(data)
        if getattr(self, "cache", None) is not None:
            self.cache = self.encoder_cache(data)

    def slices_read(self) -> list[tuple[str, int]]:
        """The (case, slice) pairs this run reads: its training slices and every slice of its validation cases."""
        pairs = [(s.case, s.slice) for s in self.train_samples]
        pairs += [(case, k) for case in self.roles.val for k in self.data.all_slices(case)]
        return pairs

    def planned_samples(self, store: LabelStore, cases: list[str]) -> list[Sample]:
        """Samples of labeled ``cases`` on their planned slices, for this trainer's labels (absent ones too when
        :attr:`train_on_absent_labels`)."""
        return labeled_samples(store, cases, self.labels, float(self.plans["background_slice_share"]),
                               require_present=not self.train_on_absent_labels)

    def training_samples(self) -> list[Sample]:
        """(case, slice, label) samples of the labeled cases."""
        return self.planned_samples(self.train_labels, self.roles.labeled)

    def train_batches(self, epoch: int) -> Iterable[tuple[int, list[Sample]]]:
        """``iterations_per_epoch`` batches of ``(batch index, samples)``: seeded passes over the samples."""
        rng = epoch_generator(int(self.config["seed"]), epoch)
        size = int(self.config["batch_size"])
        n_batches = int(self.config["iterations_per_epoch"])
        batches = seeded_passes(rng, len(self.train_samples), n_batches, size)
        return [(b, [self.train_samples[i] for i in batch]) for b, batch in enumerate(batches)]

    def embeddings(self, samples: list[Sample], views: list[Any] | None = None) -> torch.Tensor:
        """``(B, 256, E, E)`` image embeddings: cached (a frozen encoder), the partial configuration's tail on cached
        trunk activations (with gradients), or the whole encoder with gradients (LoRA, full). ``views``: the cached
        view each sample reads (training only; None: the plain slices)."""
        views = [None] * len(samples) if views is None else views
        if self.cache is not None:
            arrays = np.stack([self.cache.get(s.case, s.slice, v) for s, v in zip(samples, views)])
            tensor = torch.from_numpy(arrays.astype(np.float32)).to(self.device)
            split = getattr(self, "encoder_split", None)
            return split.embed_activations(tensor) if split is not None else tensor
        return embed_slices(self.network, self.data, [(s.case, s.slice) for s in samples], self.device)

    def targets(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 1, S, S)`` float binary masks of each training sample's label (labeled cases only)."""
        masks = np.stack([self.train_labels.mask(s) for s in samples]).astype(np.float32)
        return torch.from_numpy(masks)[:, None].to(self.device)

    # ------------------------------------------------------------ prompts
    def train_prompts(self, samples: list[Sample], targets: torch.Tensor,
                      rng: np.random.Generator) -> dict[str, Any]:
        """Prompts of a training batch; may use ``targets`` ``(B, 1, S, S)``, which are augmented like the batch's
        images. Default: :meth:`inference_prompts`, moved with the batch's augmentation (:meth:`warp_prompts`)."""
        return self.warp_prompts(self.inference_prompts(samples))

    def inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """Keyword arguments of ``SamModel.decode`` besides the embeddings (boxes, points, extra_sparse), from
        the samples alone: no label is passed, and none may be read."""
        raise NotImplementedError

    def decode_logits(self, samples: list[Sample], prompts: dict[str, Any]) -> torch.Tensor:
        """``(B, 1, S, S)`` mask logits at the preprocessed size."""
        return self.decode_with(self.network, self.embeddings(samples), prompts)

    def decode_with(self, network: torch.nn.Module, embeddings: torch.Tensor, prompts: dict[str, Any],
                    multimask: bool = False) -> torch.Tensor:
        """``(B, 1 or 3, S, S)`` mask logits of ``network`` (the trained one, or a frozen reference) for
        ``(B, 256, E, E)`` embeddings, upsampled to the preprocessed size."""
        low_res, _ = network.decode(embeddings, multimask=multimask, **prompts)
        size = int(self.plans["image_size"])
        return F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)

    def predict_logits(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, 1, S, S)`` mask logits from images and :meth:`inference_prompts` only."""
        return self.decode_logits(samples, self.inference_prompts(samples))

    # ---------------------------------------------------------------- loop
    def train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """One Adam step on the focal + Dice loss, on the batch augmented as configured (:meth:`training_inputs`)."""
        index, samples = batch
        optimizer = self.optimizers["network"]
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        embeddings, targets = self.training_inputs(index, samples)
        prompts = self.train_prompts(samples, targets, rng)
        loss = self.loss_fn(self.decode_with(self.network, embeddings, prompts), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    def validation_step(self) -> dict[str, float]:
        """Pseudo Dice: predictions of a fixed subset of validation samples (inference path), TP/FP/FN pooled
        over them at the preprocessed size (:func:`~sampref_bench.evaluation.metrics.confusion_per_label`)."""
        return {"val_dice": self.pooled_dice(self.val_samples, self.val_labels)}

    @torch.no_grad()
    def pooled_dice(self, samples: list[Sample], store: LabelStore) -> float:
        """Dice of the predictions of ``samples`` (at ``threshold``) against ``store``'s masks, with TP, FP and FN
        pooled over all samples at the preprocessed size; NaN without samples."""
        size = int(self.config["batch_size"])
        predicted, reference = [], []
        for start in range(0, len(samples), size):
            chunk = samples[start:start + size]
            probs = torch.sigmoid(self.predict_logits(chunk))[:, 0].cpu().numpy()
            predicted.append(probs >= self.config["threshold"])
            reference.append(np.stack([store.mask(s) for s in chunk]))
        if not predicted:
            return float("nan")
        counts = confusion_per_label(np.concatenate(reference), np.concatenate(predicted), [1])[1]
        return overlap_scores(counts["TP"], counts["FP"], counts["FN"])[0]

    # ----------------------------------------------------- final validation
    @torch.no_grad()
    def predict_probabilities(self, case: str) -> np.ndarray:
        """``(K, S, size, size)`` float32 probabilities of each foreground label for every slice of a case."""
        n_slices = self.data.meta(case)["n_slices"]
        size = int(self.plans["image_size"])
        out = np.zeros((len(self.labels), n_slices, size, size), np.float32)
        samples = [s for s in inference_samples(self.data, case, self.labels) if self.predicts(s)]
        step = int(self.config["batch_size"])
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            probs = torch.sigmoid(self.predict_logits(chunk)).cpu().numpy()
            for sample, prob in zip(chunk, probs):
                out[self.labels.index(sample.label), sample.slice] = prob[0]
        return out

    def predicts(self, sample: Sample) -> bool:
        """Whether a (slice, label) pair is predicted at all (an oracle skips labels absent from the slice)."""
        return True

    def predict_case(self, case: str) -> np.ndarray:
        """Label map of a case in its original geometry: per-label probabilities mapped back, highest wins
        where labels overlap, background where the winner is below ``threshold``."""
        meta = self.data.meta(case)
        probs = self.predict_probabilities(case)
        return merge_label_probabilities(probs, SliceTransform.from_dict(meta["transform"]), self.labels,
                                         float(self.config["threshold"]), meta["slicing_axis"])
