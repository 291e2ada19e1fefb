"""Semi-supervised trainers on the U-Net backbone: ``MeanTeacher``, ``UAMT``, ``CPS``, ``FixMatch``.

Every batch holds ``batch_size`` labeled slices (the fraction-f cases, supervised by the U-Net's CE + Dice loss)
and ``unlabeled_batch_size`` (default: ``batch_size``) slices of images whose labels the run never reads: the
fold's training cases outside the budget and, with ``use_unlabeled_images`` (default on), the dataset's
``imagesTrUnlabeled`` images. Unlabeled images are read through the label-free image reader only. The sampler,
ramp-ups, EMA and unlabeled losses live in :mod:`~sampref_bench.trainers.unet.parts`.

Defaults follow the published methods and SSL4MIS's 2D settings (Luo, github.com/HiLab-git/SSL4MIS), named at each:

- ``consistency_rampup`` 0.4: the unlabeled weight rises by the sigmoid ramp-up over the first 40% of the run's
  steps. Laine & Aila (2017) ramp over the first 80 of 300 epochs (27%); SSL4MIS's and UA-MT's code ramp over the
  whole run (100% of 30,000 / 6,000 iterations). Our planned runs are 12x shorter than SSL4MIS's, so a ramp over the
  whole run would leave the unlabeled term at full weight for no time; 0.4 sits between the two and is a judgment,
  not a measurement.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch

from sampref_bench.planners.data import hidden_label_slices
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.unet.data import (
    Augmenter,
    WeakStrongAugmenter,
    intensity_transforms,
    spatial_transforms,
    strong_intensity_transforms,
    weak_transforms,
)
from sampref_bench.trainers.unet.parts import (
    bounded_noise,
    confidence_pseudo_labels,
    cps_loss,
    ema_decay,
    ema_update,
    fixmatch_loss,
    item_seed,
    masked_consistency,
    sigmoid_rampup,
    softmax_mse,
    torch_generator,
    uncertainty_mask,
    uncertainty_threshold,
)
from sampref_bench.trainers.unet.trainer import UNet
from sampref_bench.utilities.errors import SamprefError

#: Stream numbers of the per-batch torch generators (input noise of teachers).
NOISE_STREAM = 201
MC_NOISE_STREAM = 202


class SemiSupervisedUNet(UNet):
    """A U-Net trained on labeled and unlabeled slices in every batch; subclasses define the unlabeled term."""

    abstract: ClassVar[bool] = True
    uses_unlabeled: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        **UNet.defaults,
        "unlabeled_batch_size": None,  # None: the plan's batch_size (as many unlabeled as labeled slices)
        "use_unlabeled_images": True,  # also train on imagesTrUnlabeled
    }
    options: ClassVar[dict[str, Option]] = {
        "unlabeled_batch_size": Option("int", low=1, none="the plan's batch_size", help="unlabeled slices per batch"),
        "use_unlabeled_images": Option("bool", help="also train on the raw dataset's imagesTrUnlabeled"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.unlabeled_cases_used():
            extra = "" if self.config["use_unlabeled_images"] else " (use_unlabeled_images is off)"
            raise SamprefError(
                f"{type(self).__name__} at fraction {self.fraction} has no unlabeled image in fold {self.fold}"
                f"{extra}: every training case of the fold is labeled and no imagesTrUnlabeled image is used. "
                "Train it at a smaller fraction, or put images without labels in the raw dataset's "
                "imagesTrUnlabeled/ and rerun sampref_plan.")
        if int(self.unlabeled_batch_size()) < 1:
            raise SamprefError(f"unlabeled_batch_size must be >= 1, got {self.config['unlabeled_batch_size']}")

    def unlabeled_cases_used(self) -> list[str]:
        """The fold's unlabeled training cases, plus the ``imagesTrUnlabeled`` images when ``use_unlabeled_images``."""
        if self.config["use_unlabeled_images"]:
            return list(self.roles.unlabeled) + list(self.roles.extra_unlabeled)
        return list(self.roles.unlabeled)

    def unlabeled_batch_size(self) -> int:
        """``unlabeled_batch_size``, or the plan's ``batch_size`` when it is ``None``."""
        value = self.config["unlabeled_batch_size"]
        return int(self.config["batch_size"] if value is None else value)

    def hidden_slices(self) -> list[tuple[str, int]]:
        """``(case, slice)`` pairs of the unlabeled images: slices with image content (label-free rule)."""
        min_content = float(self.plans["hidden_label_min_content"])
        return [(case, k) for case in self.unlabeled_cases_used()
                for k in hidden_label_slices(self.data.meta(case)["slice_content"], min_content)]

    def unlabeled_view(self) -> Augmenter | WeakStrongAugmenter | None:
        """The labeled slices' augmentation, image only."""
        if not self.config["augment"]:
            return Augmenter([])
        size = int(self.plans["image_size"])
        return Augmenter(spatial_transforms(["image"], [], size) + intensity_transforms("image"))

    def rampup(self, step: int) -> float:
        """Sigmoid ramp-up in [0, 1] over the first ``consistency_rampup`` share of the run's steps."""
        return sigmoid_rampup(step, float(self.config["consistency_rampup"]) * self.total_steps())

    def student_logits(self, network: torch.nn.Module, labeled: torch.Tensor,
                       unlabeled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the labeled and the unlabeled slices from one forward pass (instance norm is per slice, so
        concatenating the streams changes nothing)."""
        logits = network(torch.cat([labeled, unlabeled]))
        return logits[:labeled.shape[0]], logits[labeled.shape[0]:]


class MeanTeacher(SemiSupervisedUNet):
    """Mean Teacher (Tarvainen & Valpola, NeurIPS 2017): an EMA teacher whose predictions on noisy unlabeled
    slices the student's softmax must match (mean squared error), weighted by a sigmoid ramp-up.

    Defaults: EMA decay 0.99 with the warm-up ``min(1 - 1/(step + 1), 0.99)`` and consistency weight 0.1 (SSL4MIS's
    2D mean teacher); the teacher sees the slice plus ``clamp(N(0, 0.1^2), -0.2, 0.2)`` noise, the student the slice
    (SSL4MIS); ramp-up as ``exp(-5 (1 - t)^2)`` (Laine & Aila 2017) over ``consistency_rampup`` of the run.
    The student predicts; the teacher is checkpointed with it.
    """

    defaults: ClassVar[dict[str, Any]] = {
        **SemiSupervisedUNet.defaults,
        "ema_decay": 0.99, "consistency": 0.1, "consistency_rampup": 0.4, "noise_std": 0.1, "noise_bound": 0.2,
    }
    options: ClassVar[dict[str, Option]] = {
        "ema_decay": Option("float", low=0, high=1, help="EMA decay of the teacher"),
        "consistency": Option("float", low=0, help="weight of the consistency loss"),
        "consistency_rampup": Option("float", low=0, high=1, help="share of the run the weight ramps up over"),
        "noise_std": Option("float", low=0, help="standard deviation of the input noise"),
        "noise_bound": Option("float", low=0, help="bound of the input noise"),
    }

    def build_networks(self) -> dict[str, torch.nn.Module]:
        """The student (``network``) and its EMA ``teacher`` (a copy, not trained by gradients)."""
        student = self.build_network()
        teacher = copy.deepcopy(student)
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return {"network": student, "teacher": teacher}

    def unsupervised_weight(self, step: int) -> float:
        """``consistency`` x :meth:`rampup`."""
        return float(self.config["consistency"]) * self.rampup(step)

    def noisy(self, images: torch.Tensor, *stream: int) -> torch.Tensor:
        """``images`` plus bounded Gaussian noise drawn from a generator seeded by (seed, epoch, ``stream``...)."""
        generator = torch_generator(int(self.config["seed"]), self.epoch, *stream)
        noise = bounded_noise(tuple(images.shape), generator, float(self.config["noise_std"]),
                              float(self.config["noise_bound"]))
        return images + noise.to(images.device)

    def consistency(self, student_u: torch.Tensor, unlabeled: torch.Tensor, batch_index: int,
                    step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared softmax difference between student and noisy-input teacher on the unlabeled slices."""
        with torch.no_grad():
            teacher_u = self.networks["teacher"](self.noisy(unlabeled, batch_index, NOISE_STREAM))
        return softmax_mse(student_u, teacher_u).mean(), {}

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Supervised loss + ramped consistency; SGD step of the student, then the teacher's EMA update."""
        labeled, unlabeled = self.to_device(batch["labeled"]), self.to_device(batch["unlabeled"])
        step = self.global_step(batch["index"])
        logits_l, logits_u = self.student_logits(self.network, labeled["image"], unlabeled["image"])
        supervised = self.loss_fn(logits_l, labeled["label"])
        consistency, extra = self.consistency(logits_u, unlabeled["image"], int(batch["index"]), step)
        weight = self.unsupervised_weight(step)
        loss = supervised + weight * consistency
        self.optimize(loss)
        ema_update(self.networks["teacher"], self.network, ema_decay(step, float(self.config["ema_decay"])))
        return {"loss": float(loss.detach()), "supervised": float(supervised.detach()),
                "consistency": float(consistency.detach()), "consistency_weight": weight, **extra}


#: SSL4MIS's encoder dropout rates of its 2D U-Net, top level to bottleneck (``networks/unet.py``).
SSL4MIS_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


def ssl4mis_dropout(levels: int) -> list[float]:
    """SSL4MIS's per-level encoder dropout for a U-Net of ``levels`` levels: its rates from the top down, the
    bottleneck always at its 0.5; a deeper U-Net repeats 0.3 above the bottleneck, a shallower one drops the
    deepest rates above it (``levels`` 3 -> 0.05, 0.1, 0.5)."""
    if levels < 2:
        raise SamprefError(f"a U-Net needs at least 2 levels, got {levels}")
    above = list(SSL4MIS_DROPOUT[:-1])
    above += [above[-1]] * max(0, levels - 1 - len(above))
    return [*above[:levels - 1], SSL4MIS_DROPOUT[-1]]


class UAMT(MeanTeacher):
    """Uncertainty-aware Mean Teacher (Yu et al., MICCAI 2019): the consistency is kept only where the teacher is
    certain. Uncertainty is the entropy of the mean softmax of ``mc_passes`` (T = 8, the paper's) teacher passes on
    independently noised inputs with Monte-Carlo dropout; the threshold rises from 0.75 ln C to ln C over the run
    (sigmoid ramp-up; the paper's schedule with its ln 2 generalized to C classes). The consistency is the
    class-averaged squared softmax difference over the kept pixels (the paper's ``sum(mask * dist) / (2 sum(mask))``
    for two classes).

    Monte-Carlo dropout: ``mc_dropout`` (``None``: :func:`ssl4mis_dropout`, SSL4MIS's 0.05, 0.1, 0.2, 0.3, 0.5 per
    encoder level for the planned 5 levels) puts dropout into the encoder of UAMT's U-Net, student and teacher
    alike (the teacher is the student's EMA). As in SSL4MIS's UA-MT, the teacher runs in training mode, so its
    target pass and its T uncertainty passes all drop out and the T passes differ even on one input; the student
    trains with dropout and predicts without it. Only UAMT's network has dropout: the other U-Net trainers keep
    MONAI's dropout 0 (SSL4MIS has dropout in every method's U-Net), so their rows stand as they were measured.
    ``mc_dropout=[0, 0, 0, 0, 0]`` gives the earlier behaviour (passes that differ by input noise only).
    """

    defaults: ClassVar[dict[str, Any]] = {**MeanTeacher.defaults, "mc_passes": 8, "mc_dropout": None}
    options: ClassVar[dict[str, Option]] = {
        "mc_passes": Option("int", low=1, help="stochastic teacher passes of the uncertainty"),
        "mc_dropout": Option("float_list", low=0, high=1, high_open=True,
                             none="SSL4MIS's rates 0.05, 0.1, 0.2, 0.3, 0.5 by encoder level",
                             help="encoder dropout per level of the Monte-Carlo passes"),
    }

    def architecture(self) -> dict[str, Any]:
        """The U-Net arguments with the encoder dropout of ``mc_dropout``."""
        arch = super().architecture()
        rates = self.config["mc_dropout"]
        arch["encoder_dropout"] = (ssl4mis_dropout(len(arch["channels"])) if rates is None
                                   else [float(r) for r in rates])
        return arch

    def check_checkpoint(self, state: dict[str, Any], path: Any, for_training: bool = True) -> None:
        """Also refuse a checkpoint of a UAMT run trained before Monte-Carlo dropout (its config lacks
        ``mc_dropout``), for ``--continue`` and for prediction alike."""
        if "mc_dropout" not in state.get("config", {}):
            raise SamprefError(f"{path} is a UAMT run trained before UAMT had Monte-Carlo dropout; it cannot be "
                               "continued or loaded as today's UAMT. Move its run folder away and train again "
                               "(or pass another --run-name).")
        super().check_checkpoint(state, path, for_training)

    def teacher_passes(self, unlabeled: torch.Tensor, batch_index: int) -> torch.Tensor:
        """``(T, B, C, H, W)`` softmax probabilities of the teacher's ``mc_passes`` stochastic passes (input noise
        and, in training mode, dropout) on ``(B, C_in, H, W)`` unlabeled slices.

        The noise of all passes is drawn at once; the passes then run one at a time (B slices each, as SSL4MIS
        runs them in chunks): on a CPU one 8 x B batch is about 1.7x slower than 8 batches of B, and instance
        norm is per slice, so only the order of the dropout draws depends on the chunking."""
        passes, size = int(self.config["mc_passes"]), unlabeled.shape[0]
        teacher = self.networks["teacher"]
        with torch.no_grad():
            noisy = self.noisy(unlabeled.repeat(passes, 1, 1, 1), batch_index, MC_NOISE_STREAM)
            return torch.stack([torch.softmax(teacher(noisy[t * size:(t + 1) * size]), dim=1)
                                for t in range(passes)])

    def consistency(self, student_u: torch.Tensor, unlabeled: torch.Tensor, batch_index: int,
                    step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked squared softmax difference; also returns the share of unlabeled pixels kept."""
        with torch.no_grad():
            target = self.networks["teacher"](self.noisy(unlabeled, batch_index, NOISE_STREAM))
            probabilities = self.teacher_passes(unlabeled, batch_index)
            threshold = uncertainty_threshold(step, self.total_steps(), target.shape[1])
            mask = uncertainty_mask(probabilities, threshold)
        loss = masked_consistency(softmax_mse(student_u, target), mask)
        return loss, {"kept_share": float(mask.mean()), "uncertainty_threshold": threshold}


class CPS(SemiSupervisedUNet):
    """Cross Pseudo Supervision (Chen et al., CVPR 2021): two U-Nets of one architecture, initialized differently,
    each supervised on the labeled slices and by the other's argmax on the unlabeled slices:
    ``L = sup_a + sup_b + w * (CE(p_a, argmax p_b) + CE(p_b, argmax p_a))``.

    Defaults: ``cps_weight`` 0.1 with the sigmoid ramp-up over ``consistency_rampup`` of the run (SSL4MIS's 2D CPS:
    weight 0.1, ramped; Chen et al. use 1.5 without ramp on natural images); the pseudo-supervision acts on the
    unlabeled slices (SSL4MIS). ``network`` (the first) predicts; ``network_b`` has its own SGD and poly decay.
    """

    defaults: ClassVar[dict[str, Any]] = {**SemiSupervisedUNet.defaults, "cps_weight": 0.1, "consistency_rampup": 0.4}
    options: ClassVar[dict[str, Option]] = {
        "cps_weight": Option("float", low=0, help="weight of the cross pseudo supervision"),
        "consistency_rampup": Option("float", low=0, high=1, help="share of the run the weight ramps up over"),
    }

    def build_networks(self) -> dict[str, torch.nn.Module]:
        """``network`` from the run's seed and ``network_b`` from a seed derived from it."""
        from sampref_bench.models.unet import build_unet

        seed = int(self.config["seed"])
        return {"network": build_unet(self.architecture(), seed),
                "network_b": build_unet(self.architecture(), item_seed(seed, 1))}

    def trained_networks(self) -> list[str]:
        """Both networks are trained."""
        return ["network", "network_b"]

    def unsupervised_weight(self, step: int) -> float:
        """``cps_weight`` x :meth:`rampup`."""
        return float(self.config["cps_weight"]) * self.rampup(step)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Both supervised losses + ramped cross pseudo supervision; one SGD step of each network."""
        labeled, unlabeled = self.to_device(batch["labeled"]), self.to_device(batch["unlabeled"])
        step = self.global_step(batch["index"])
        la, ua = self.student_logits(self.networks["network"], labeled["image"], unlabeled["image"])
        lb, ub = self.student_logits(self.networks["network_b"], labeled["image"], unlabeled["image"])
        sup_a = self.loss_fn(la, labeled["label"])
        sup_b = self.loss_fn(lb, labeled["label"])
        cross = cps_loss(ua, ub)
        weight = self.unsupervised_weight(step)
        loss = sup_a + sup_b + weight * cross
        self.optimize(loss)
        return {"loss": float(loss.detach()), "supervised_a": float(sup_a.detach()),
                "supervised_b": float(sup_b.detach()), "cps": float(cross.detach()), "cps_weight": weight}


class FixMatch(SemiSupervisedUNet):
    """FixMatch (Sohn et al., NeurIPS 2020) per pixel: pseudo-labels are the argmax of the prediction on a weakly
    augmented view, kept where its softmax confidence is at least ``tau`` (0.95, the paper's), and the prediction on a
    strongly augmented view of the same geometry is trained on them by cross-entropy, weighted by ``lambda_u`` (1, the
    paper's; no ramp-up, as in the paper). Views: :class:`~sampref_bench.trainers.unet.data.WeakStrongAugmenter`."""

    defaults: ClassVar[dict[str, Any]] = {**SemiSupervisedUNet.defaults, "tau": 0.95, "lambda_u": 1.0}
    options: ClassVar[dict[str, Option]] = {
        "tau": Option("float", low=0, high=1, low_open=True, help="confidence of a kept pseudo-label"),
        "lambda_u": Option("float", low=0, help="weight of the unlabeled loss"),
    }

    def unlabeled_view(self) -> WeakStrongAugmenter:
        """Weak (flip, rotate) and strong (weak + intensity perturbations + cutout) views of an unlabeled slice."""
        size = int(self.plans["image_size"])
        return WeakStrongAugmenter(weak_transforms(["image"]), strong_intensity_transforms(size))

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Supervised loss + ``lambda_u`` x masked CE of the strong view against the weak view's pseudo-labels."""
        labeled, unlabeled = self.to_device(batch["labeled"]), self.to_device(batch["unlabeled"])
        with torch.no_grad():
            pseudo, mask = confidence_pseudo_labels(self.network(unlabeled["weak"]), float(self.config["tau"]))
        logits_l, logits_s = self.student_logits(self.network, labeled["image"], unlabeled["strong"])
        supervised = self.loss_fn(logits_l, labeled["label"])
        unsupervised = fixmatch_loss(logits_s, pseudo, mask)
        loss = supervised + float(self.config["lambda_u"]) * unsupervised
        self.optimize(loss)
        return {"loss": float(loss.detach()), "supervised": float(supervised.detach()),
                "unsupervised": float(unsupervised.detach()), "mask_share": float(mask.mean())}

