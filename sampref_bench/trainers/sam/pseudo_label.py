"""Self-training of SAM (``SAMPseudoLabel``): the simplest semi-supervised SAM baseline.

1. **Stage 1** is the ``SAMBaseline`` run on this run's labeled cases (the supervised budget at fraction f, the
   same run folder as ``sampref_train DATASET SAMBaseline FOLD --fraction f``), reused after the identity check
   of :class:`~sampref_bench.trainers.sam.two_stage.TwoStageSAMTrainer`, continued or trained.
2. **Pseudo-labels**: the frozen stage-1 model predicts every planned hidden-label sample of the unlabeled cases
   (the fold's training cases outside the budget, plus the ``imagesTrUnlabeled`` images when
   ``use_unlabeled_images``) from images and inference prompts alone; no label of those cases is opened. A pixel
   is *confident* when its probability ``p`` satisfies ``p >= c`` or ``p <= 1 - c`` (``c = confidence_cut``).
   Each sample gets a score (``confidence_score``): ``"confident_share"``, the share of its confident pixels, or
   ``"mean_max"``, the pixel mean of ``max(p, 1 - p)``. Samples scoring at least ``min_confidence`` are kept
   (and, when ``keep_top_share`` is set, only that share of all scored samples with the highest scores).
   The pseudo-label is the stage-1 prediction at the run's ``threshold``; with ``ignore_uncertain`` the
   unconfident pixels of a kept sample are left out of its loss. ``pseudo_labels.json`` in the run folder
   records how many samples were scored and kept, the settings, every sample's score and the kept cases.
3. **Stage 2** continues from the stage-1 weights with the stage-1 loss (focal + Dice, 20:1) on batches that mix
   labeled samples and kept pseudo-labeled samples (``pseudo_batch_share`` of each batch, half by default;
   ``pseudo_weight`` scales the pseudo term). It trains what stage 1 trains (``stage2_parameters="stage1"``:
   mask decoder, prompt encoder unless ``train_prompt_encoder`` is off, text projection, and the image encoder
   when it is unfrozen), or only the mask decoder (``"mask_decoder"``, as ``SAMBaselineContinued`` and the DPO
   trainers do). The coarse-mask head of a learned box (``box_source=learned``, the default) stays as stage 1 left
   it: its box and point are not differentiable, and stage 2 decodes from them.

Defaults and why: ``c = 0.9`` treats a pixel as a label when the stage-1 model gives its class at least 90 %;
``min_confidence = 0.9`` with the confident share drops a sample when more than a tenth of its image is
uncertain. A stage-1 model that has learnt the target is uncertain on a thin band along the boundary (a few
percent of the image), which ``ignore_uncertain`` then leaves out of the loss; an image where it is unsure over
a large region is one where its mask is least trustworthy, and training on it would confirm the mistake.
These are priors, not benchmarked values: ``pseudo_labels.json`` shows how much a setting keeps.

Schedule: stage 2 runs for the plan's ``dpo_epochs`` x ``dpo_iterations_per_epoch`` batches at the constant
``dpo_lr`` (the ``dpo_`` schedule keys of the two-stage trainers), so ``SAMPseudoLabel@f``,
``SAMBaselineContinued@f`` and the DPO trainers take the same number of stage-2 steps: the difference between
this run and ``SAMBaselineContinued`` at the same fraction is what the pseudo-labels add beyond more steps.

Diagnostics per epoch (``training_log.csv``): ``train_loss`` (the sum), ``train_supervised_loss``,
``train_pseudo_loss``, ``kept_share`` and ``ignored_share`` (the share of unconfident pixels in kept samples).
The Dice of the pseudo-labels against the truth is never computed here: the unlabeled cases' labels are
hidden from the trainer. A benchmark may compute it afterwards from ``pseudo_labels.json`` and the masks
(:attr:`SAMPseudoLabel.pseudo` after :meth:`~sampref_bench.trainers.base.BaseTrainer.initialize`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from monai.losses.focal_loss import sigmoid_focal_loss

from sampref_bench.planners.data import Sample, hidden_label_samples
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.randomness import epoch_generator, seeded_passes
from sampref_bench.trainers.sam.two_stage import TwoStageSAMTrainer
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.errors import SamprefError

#: How a sample's confidence is scored from its probability map.
CONFIDENCE_SCORES = ("confident_share", "mean_max")
#: What stage 2 trains: what stage 1 trains, or the mask decoder alone.
STAGE2_PARAMETERS = ("stage1", "mask_decoder")
#: Stream of :func:`~sampref_bench.trainers.base.epoch_generator` for the order of pseudo-labeled samples
#: (the labeled samples use stream 0, as in ``SAMBaselineContinued``; train steps use 1 + batch index).
PSEUDO_STREAM = 20_000
#: Samples decoded at once when pseudo-labeling (inference only: larger than a training batch saves the per-call
#: cost of the prompt and text encoders; a constant, so a resumed run decodes exactly as the first one did).
PSEUDO_LABEL_CHUNK = 32
#: Smoothing of the Dice term, as MONAI's ``DiceLoss`` defaults (numerator and denominator).
DICE_SMOOTH = 1e-5


# --------------------------------------------------------------------------------------------- functions
def confident_pixels(probs: torch.Tensor, cut: float) -> torch.Tensor:
    """``(B, S, S)`` bool: pixels whose probability ``p`` in ``(B, S, S)`` probabilities is ``>= cut`` or
    ``<= 1 - cut`` (for ``cut`` in [0.5, 1])."""
    return (probs >= cut) | (probs <= 1.0 - cut)


def confidence_scores(probs: torch.Tensor, cut: float, score: str) -> torch.Tensor:
    """``(B,)`` float scores in [0, 1] of ``(B, S, S)`` probabilities: ``"confident_share"`` (share of
    :func:`confident_pixels`) or ``"mean_max"`` (pixel mean of ``max(p, 1 - p)``, at least 0.5)."""
    if score == "confident_share":
        return confident_pixels(probs, cut).flatten(1).float().mean(dim=1)
    if score == "mean_max":
        return torch.maximum(probs, 1.0 - probs).flatten(1).float().mean(dim=1)
    raise ValueError(f"unknown confidence score {score!r}")


def select_confident(scores: np.ndarray, min_confidence: float, top_share: float | None = None) -> np.ndarray:
    """``(N,)`` bool: samples whose score is ``>= min_confidence`` and, when ``top_share`` is given, among the
    ``ceil(top_share * N)`` highest scores (ties keep the earlier sample)."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = scores >= min_confidence
    if top_share is not None and len(scores):
        n_top = int(math.ceil(float(top_share) * len(scores) - 1e-9))
        top = np.zeros(len(scores), bool)
        top[np.argsort(-scores, kind="stable")[:n_top]] = True
        keep &= top
    return keep


def masked_dice_focal(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, focal_weight: float,
                      dice_weight: float, gamma: float = 2.0) -> torch.Tensor:
    """The stage-1 loss (sigmoid focal + soft Dice, MONAI's ``DiceFocalLoss``) over the pixels that count.

    ``logits``, ``targets`` (0/1) and ``weights`` (1 = counts, 0 = ignored) are ``(B, 1, S, S)``. The focal term is
    the mean over counted pixels of the batch; the Dice term is ``1 - (2 sum(p t) + e) / (sum(p) + sum(t) + e)``
    over each sample's counted pixels, averaged over samples (a sample with no counted pixel scores 0). With every
    weight 1 this equals ``DiceFocalLoss(sigmoid=True, lambda_focal=focal_weight, lambda_dice=dice_weight)``.
    """
    focal = sigmoid_focal_loss(logits, targets, gamma)
    focal = (focal * weights).sum() / weights.sum().clamp(min=1.0)
    probs = torch.sigmoid(logits) * weights
    kept_targets = targets * weights
    axes = tuple(range(2, logits.dim()))
    overlap = (probs * kept_targets).sum(dim=axes)
    total = probs.sum(dim=axes) + kept_targets.sum(dim=axes)
    dice = (1.0 - (2.0 * overlap + DICE_SMOOTH) / (total + DICE_SMOOTH)).mean()
    return focal_weight * focal + dice_weight * dice


@dataclass
class PseudoSample:
    """One pseudo-labeled sample: ``target`` ``(S, S)`` bool (the stage-1 prediction at ``threshold``),
    ``confident`` ``(S, S)`` bool (pixels with ``p >= c`` or ``p <= 1 - c``), ``score`` in [0, 1], ``kept``."""

    sample: Sample
    target: torch.Tensor
    confident: torch.Tensor
    score: float
    kept: bool


# ----------------------------------------------------------------------------------------------- trainer
class SAMPseudoLabel(TwoStageSAMTrainer):
    """Stage 1 on the labeled cases, pseudo-labels of the unlabeled images by the frozen stage-1 model, stage 2
    on labeled + confident pseudo-labeled samples (see the module docstring)."""

    uses_unlabeled: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        **TwoStageSAMTrainer.defaults,
        "use_unlabeled_images": True, "confidence_cut": 0.9, "confidence_score": "confident_share",
        "min_confidence": 0.9, "keep_top_share": None, "ignore_uncertain": True, "pseudo_weight": 1.0,
        "pseudo_batch_share": 0.5, "stage2_parameters": "stage1",
    }
    options: ClassVar[dict[str, Option]] = {
        "use_unlabeled_images": Option("bool", help="also pseudo-label the raw dataset's imagesTrUnlabeled"),
        "confidence_cut": Option("float", low=0.5, high=1, help="probability (or 1 - it) a pixel counts confident at"),
        "confidence_score": Option("str", choices=CONFIDENCE_SCORES, help="how a pseudo-label is scored"),
        "min_confidence": Option("float", low=0, high=1, help="lowest score of a kept pseudo-label"),
        "keep_top_share": Option("float", low=0, high=1, low_open=True, none="keep every sample above min_confidence",
                                 help="share of the scored samples kept, highest scores first"),
        "ignore_uncertain": Option("bool", help="leave the unconfident pixels out of the loss"),
        "pseudo_weight": Option("float", low=0, help="weight of the pseudo-label loss"),
        "pseudo_batch_share": Option("float", low=0, high=1, help="share of each batch taken from pseudo-labels"),
        "stage2_parameters": Option("str", choices=STAGE2_PARAMETERS, help="what stage 2 trains"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.unlabeled_cases_used():
            extra = ("imagesTrUnlabeled holds none" if self.config["use_unlabeled_images"]
                     else "imagesTrUnlabeled is not used (use_unlabeled_images=False)")
            raise SamprefError(
                f"{type(self).__name__} at fraction {self.fraction} has no unlabeled image to pseudo-label in fold "
                f"{self.fold}: all {len(self.roles.train)} training case(s) are labeled, and {extra}. Run it at a "
                "smaller planned fraction, or add images without labels to imagesTrUnlabeled and rerun sampref_plan.")

    # ------------------------------------------------------------ configuration
    def canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        """Validates the pseudo-label options."""
        config = super().canonicalize(config)
        if config["confidence_score"] not in CONFIDENCE_SCORES:
            raise SamprefError(f"confidence_score={config['confidence_score']!r} is unknown; choose one of "
                               f"{', '.join(CONFIDENCE_SCORES)}")
        if config["stage2_parameters"] not in STAGE2_PARAMETERS:
            raise SamprefError(f"stage2_parameters={config['stage2_parameters']!r} is unknown; choose one of "
                               f"{', '.join(STAGE2_PARAMETERS)}")
        ranges = {"confidence_cut": (0.5, 1.0), "min_confidence": (0.0, 1.0), "pseudo_batch_share": (0.0, 1.0)}
        for key, (low, high) in ranges.items():
            if not low <= float(config[key]) <= high:
                raise SamprefError(f"{key}={config[key]} is outside [{low}, {high}]")
        share = config["keep_top_share"]
        if share is not None and not 0.0 < float(share) <= 1.0:
            raise SamprefError(f"keep_top_share={share} must be in (0, 1] (or None: no top-share limit)")
        if float(config["pseudo_weight"]) < 0:
            raise SamprefError(f"pseudo_weight={config['pseudo_weight']} must not be negative")
        if config["selection"] == "inner" and config["stage2_parameters"] != "mask_decoder":
            raise SamprefError("selection=inner keeps the best epoch's mask decoder only, but stage 2 also trains the "
                               "prompt modules here; add --set stage2_parameters=mask_decoder or use selection=last")
        return config

    def unlabeled_cases_used(self) -> list[str]:
        """Every image pseudo-labeled (scored): the fold's unlabeled training cases, then the
        ``imagesTrUnlabeled`` images when ``use_unlabeled_images``; ``pseudo_labels.json`` says which were kept."""
        extra = list(self.roles.extra_unlabeled) if self.config["use_unlabeled_images"] else []
        return list(self.roles.unlabeled) + extra

    # ------------------------------------------------------------ networks
    def trains_parameter(self, name: str) -> bool:
        """Whether stage 2 trains the network parameter ``name`` (see ``stage2_parameters``)."""
        if name.startswith("mask_decoder."):
            return True
        if self.config["stage2_parameters"] == "mask_decoder":
            return False
        if name.startswith("image_encoder."):
            return not self.config["freeze_image_encoder"]
        if name.startswith("prompt_encoder."):
            return bool(self.config["train_prompt_encoder"])
        return True  # modules added beside SAM (the text projection) train in stage 1

    def build_networks(self) -> dict[str, torch.nn.Module]:
        """Policy and frozen reference from stage 1; the policy trains what :meth:`trains_parameter` says."""
        networks = super().build_networks()
        for name, param in networks["network"].named_parameters():
            param.requires_grad_(self.trains_parameter(name))
        networks["reference"].eval()
        return networks

    def set_train_mode(self) -> None:
        """The policy trains as in stage 1 (a frozen image encoder stays in eval mode); the reference never does."""
        for network in self.networks.values():
            network.eval()
        if self.config["stage2_parameters"] == "mask_decoder":
            self.network.mask_decoder.train()
            return
        self.network.train()
        if self.config["freeze_image_encoder"]:
            self.network.image_encoder.eval()

    def configure_optimizers(self) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """Adam over the policy's trainable parameters at a constant ``dpo_lr``."""
        params = [p for p in self.network.parameters() if p.requires_grad]
        return {"network": torch.optim.Adam(params, lr=float(self.config["dpo_lr"]))}, {}

    # ------------------------------------------------------------ pseudo-labels
    def slices_read(self) -> list[tuple[str, int]]:
        """Labeled, validation and unlabeled slices."""
        return super().slices_read() + [(s.case, s.slice) for s in self.unlabeled_samples]

    def build_data(self) -> None:
        """Unlabeled samples (label-free slice choice), embeddings and prompts, then the pseudo-labels."""
        self.unlabeled_samples = hidden_label_samples(self.data, self.unlabeled_cases_used(), self.labels)
        super().build_data()
        self.prompts.ensure([(s.case, s.slice, s.label) for s in self.unlabeled_samples], self.prompt_sources(),
                            progress=self.progress)
        self.make_pseudo_labels()

    @contextmanager
    def _reference_predicts(self) -> Iterator[None]:
        """Inside, :attr:`network` is the frozen reference, so the whole inference path (embeddings, prompt
        modules, decoder) is the stage-1 model's even after the policy has moved."""
        policy = self.networks["network"]
        self.networks["network"] = self.networks["reference"]
        try:
            yield
        finally:
            self.networks["network"] = policy

    @torch.no_grad()
    def reference_probabilities(self, samples: list[Sample]) -> torch.Tensor:
        """``(B, S, S)`` probabilities of the frozen stage-1 model, from images and inference prompts alone."""
        self.networks["reference"].eval()
        with self._reference_predicts():
            return torch.sigmoid(self.predict_logits(samples)[:, 0])

    def make_pseudo_labels(self) -> None:
        """Score every unlabeled sample, keep the confident ones, write ``pseudo_labels.json``."""
        cut = float(self.config["confidence_cut"])
        step = max(int(self.config["batch_size"]), PSEUDO_LABEL_CHUNK)
        made: list[PseudoSample] = []
        for start in range(0, len(self.unlabeled_samples), step):
            chunk = self.unlabeled_samples[start:start + step]
            probs = self.reference_probabilities(chunk).cpu()
            scores = confidence_scores(probs, cut, str(self.config["confidence_score"]))
            confident = confident_pixels(probs, cut)
            targets = probs >= float(self.config["threshold"])
            made.extend(PseudoSample(s, targets[i], confident[i], float(scores[i]), False) for i, s in enumerate(chunk))
        keep = select_confident(np.array([p.score for p in made]), float(self.config["min_confidence"]),
                                self.config["keep_top_share"])
        for pseudo, kept in zip(made, keep):
            pseudo.kept = bool(kept)
        self.pseudo_all = made
        self.pseudo = [p for p in made if p.kept]
        self.kept_share = len(self.pseudo) / max(1, len(made))
        pixels = sum(p.confident.numel() for p in self.pseudo)
        self.ignored_share = (sum(int((~p.confident).sum()) for p in self.pseudo) / pixels
                              if pixels and self.config["ignore_uncertain"] else 0.0)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "pseudo_labels.json", self.pseudo_label_record())
        if self.progress:
            print(f"{type(self).__name__}: {len(self.pseudo)} of {len(made)} pseudo-labeled sample(s) kept "
                  f"({self.config['confidence_score']} >= {self.config['min_confidence']}, c = {cut})", flush=True)
        if not self.pseudo:
            warnings.warn(f"{self}: no pseudo-label passed the confidence filter ({self.config['confidence_score']} "
                          f">= {self.config['min_confidence']} with confidence_cut={cut}); stage 2 trains on the "
                          "labeled samples alone. Lower min_confidence or set keep_top_share.", stacklevel=2)

    def pseudo_label_record(self) -> dict[str, Any]:
        """What ``pseudo_labels.json`` holds: counts, settings, kept cases and every sample's score."""
        return {
            "format": "sampref-pseudo-labels/1", "trainer": type(self).__name__, "dataset": self.dataset_name,
            "fold": self.fold, "fraction": self.fraction, "stage1_run": str(self.stage1_dir),
            "scored": len(self.pseudo_all), "kept": len(self.pseudo), "kept_share": self.kept_share,
            "confidence_score": self.config["confidence_score"], "confidence_cut": self.config["confidence_cut"],
            "min_confidence": self.config["min_confidence"], "keep_top_share": self.config["keep_top_share"],
            "threshold": self.config["threshold"], "ignore_uncertain": self.config["ignore_uncertain"],
            "ignored_share": self.ignored_share,
            "cases_scored": sorted({p.sample.case for p in self.pseudo_all}),
            "kept_cases": sorted({p.sample.case for p in self.pseudo}),
            "samples": [{"case": p.sample.case, "slice": p.sample.slice, "label": p.sample.label,
                         "score": round(p.score, 6), "kept": p.kept} for p in self.pseudo_all],
        }

    # ------------------------------------------------------------ training
    def batch_sizes(self) -> tuple[int, int]:
        """``(labeled, pseudo)`` samples per batch: ``pseudo_batch_share`` of ``batch_size`` are pseudo-labeled
        (none when no pseudo-label was kept)."""
        size = int(self.config["batch_size"])
        n_pseudo = int(round(size * float(self.config["pseudo_batch_share"]))) if self.pseudo else 0
        return size - n_pseudo, n_pseudo

    def train_batches(self, epoch: int) -> list[tuple[int, list[Sample], list[int]]]:
        """``(index, labeled samples, indices into the kept pseudo-labels)``, each stream in seeded passes."""
        n_labeled, n_pseudo = self.batch_sizes()
        n = int(self.config["iterations_per_epoch"])
        labeled = self.labeled_batches(epoch, n_labeled, stream=0) if n_labeled else [[] for _ in range(n)]
        pseudo = seeded_passes(epoch_generator(int(self.config["seed"]), epoch, PSEUDO_STREAM), len(self.pseudo), n,
                               n_pseudo)
        return [(b, labeled[b], pseudo[b]) for b in range(n)]

    def pseudo_targets(self, items: list[PseudoSample]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, S, S)`` float pseudo-label targets and pixel weights (0 on ignored pixels)."""
        targets = torch.stack([p.target for p in items]).float()[:, None]
        if self.config["ignore_uncertain"]:
            weights = torch.stack([p.confident for p in items]).float()[:, None]
        else:
            weights = torch.ones_like(targets)
        return targets.to(self.device), weights.to(self.device)

    def train_step(self, batch: tuple[int, list[Sample], list[int]]) -> dict[str, float]:
        """One Adam step on ``supervised + pseudo_weight * pseudo`` (both the stage-1 loss), one decode per batch."""
        index, labeled, pseudo_idx = batch
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        items = [self.pseudo[i] for i in pseudo_idx]
        size = int(self.plans["image_size"])
        labeled_targets = self.targets(labeled) if labeled else torch.zeros((0, 1, size, size), device=self.device)
        targets, weights = self.pseudo_targets(items) if items else (labeled_targets[:0], labeled_targets[:0])
        all_targets = torch.cat([labeled_targets, targets])
        samples = labeled + [p.sample for p in items]
        logits = self.decode_logits(samples, self.train_prompts(samples, all_targets, rng))
        total = torch.zeros((), device=self.device)
        out: dict[str, float] = {}
        if labeled:
            sup = self.loss_fn(logits[:len(labeled)], labeled_targets)
            total = total + sup
            out["supervised_loss"] = float(sup.detach())
        if items:
            pseudo_logits = logits[len(labeled):]
            if self.config["ignore_uncertain"]:
                pl = masked_dice_focal(pseudo_logits, targets, weights, float(self.config["focal_weight"]),
                                       float(self.config["dice_weight"]))
            else:
                pl = self.loss_fn(pseudo_logits, targets)
            total = total + float(self.config["pseudo_weight"]) * pl
            out["pseudo_loss"] = float(pl.detach())
        optimizer = self.optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return {"loss": float(total.detach()), **out}

    def validation_step(self) -> dict[str, float]:
        """Pseudo Dice on validation cases, plus the (fixed) kept share and ignored-pixel share."""
        return {**super().validation_step(), "kept_share": self.kept_share, "ignored_share": self.ignored_share}

    def config_record(self) -> dict[str, Any]:
        """Adds the pseudo-label counts."""
        record = super().config_record()
        record["pseudo_labels"] = {"scored": len(getattr(self, "pseudo_all", [])),
                                   "kept": len(getattr(self, "pseudo", [])),
                                   "kept_cases": sorted({p.sample.case for p in getattr(self, "pseudo", [])})}
        return record
