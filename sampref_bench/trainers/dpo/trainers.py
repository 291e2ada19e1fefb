"""Preference optimization of SAM's mask decoder: ``DPORanking``, ``DPORating`` and ``DPOBestOnly``.

Konwer et al. 2025 (CVPR, arXiv 2503.04639), sec. 3.2: after supervised stage 1 on the ``dpo_labeled``
cases, the model is aligned with an annotator's judgement of its own candidate masks on the *rated* cases,
whose pixel labels it never sees. Per rated sample (case, slice, label):

1. **Candidates** (``candidates``) from the frozen stage-1 model (the reference policy), once, before stage 2:
   the paper's ``"thresholds"`` (its probability map at the plan's thresholds), ``"adaptive"`` thresholds,
   jittered boxes, SAM's multimask outputs or embedding dropout (:mod:`sampref_bench.trainers.dpo.candidates`).

2. **The annotator** (``annotator``): ``"simulated"`` rates by IoU with the hidden mask (only it reads the
   rated cases' labels); ``"file"`` reads ``ratings_file``. ``rating_noise`` flips adjacent ratings.
   Every run writes the annotations it used to ``preferences.json`` (the file format), so a human file that
   holds the same judgements gives the same run.
3. **The loss** (:mod:`sampref_bench.trainers.dpo.losses`): preference weights from the judgement (ranking:
   ``(+b1, +b2, -b2, -b1)`` by place; rating: the rating's value on the annotator's scale, centred (4 points:
   ``+b1, +b2, -b2, -b1``; a file's own scale otherwise, top ``+b1``, bottom ``-b1``); best only: ``+b1`` on the
   best), the log-likelihood of each candidate reduced over pixels by ``reduction``, the loss
   ``"dpo"`` (the paper) or ``"ipo"`` (bounded), plus ``anchor_weight`` x the stage-1 loss on a batch of
   ``anchor_batch_size`` labeled samples and ``kl_weight`` x the mean pixel KL to the reference. Samples whose
   candidates all tie carry no preference and are skipped (``tied_share`` in the log).

``settings`` names a complete preset: ``"paper"`` reproduces the paper (threshold candidates, DPO loss, the
pixel-sum log-likelihood, no anchor); ``"sampref"`` (default) is IPO with a supervised anchor (weight 1, half a
batch of labeled samples per step), the disagreement-mean log-likelihood and the paper's threshold candidates.
Keys given explicitly override the preset. Why (``benchmarks/results/dpo_busi.md``, BUSI fold 0, chosen on an
inner split of 100 training cases outside the 0.2 budget, never on the fold's validation cases): every
unbounded DPO variant lowered the inner Dice below stage 1's 0.592 (pixel sum 0.518, disagreement mean 0.466,
plain mean 0.409), while IPO + anchor raised it with every candidate source tried (thresholds 0.619, jittered
boxes 0.615, adaptive thresholds 0.611; differences among them are within noise, and the first is the
simplest). The same number of extra steps on the labeled cases alone (``SAMBaselineContinued``) lowered it
(0.564). This agrees with the early measurements in ``docs/preference_optimization.md``: candidates that are
nested thresholds make the DPO margin linear in the logits over the disagreement region, with no optimum; the
squared IPO loss has one.

Logged every epoch (``training_log.csv``, ``progress.png``): the loss and its parts, ``reward_margin`` (the
implicit reward of the best minus the worst candidate), ``kl_to_reference``, ``iou_spread`` (the mean over
rated samples of max minus min candidate IoU with the hidden mask; simulated annotator only), ``tied_share``
and the validation pseudo Dice. A spread below :data:`MIN_IOU_SPREAD` draws a warning: candidates that
barely differ give the preference nothing to learn from.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.planners.data import Sample, hidden_label_samples
from sampref_bench.trainers.dpo.annotators import Annotation, FileAnnotator, SimulatedAnnotator, preference_entry
from sampref_bench.trainers.dpo.candidates import CANDIDATE_SOURCES, CandidateGenerator
from sampref_bench.trainers.dpo.losses import (
    LOSSES,
    REDUCTIONS,
    bernoulli_kl,
    best_only_weights,
    candidate_log_likelihood,
    disagreement_region,
    informative,
    preference_loss,
    ranking_weights,
    rating_weights,
)
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.randomness import epoch_generator, seeded_passes
from sampref_bench.trainers.sam.two_stage import TwoStageSAMTrainer
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.errors import SamprefError

#: Below this mean candidate IoU spread a warning says the preferences carry little signal.
MIN_IOU_SPREAD = 0.05

#: Complete settings by name; keys left ``None`` in a run take the preset's value.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"candidates": "thresholds", "loss": "dpo", "reduction": "sum", "anchor_weight": 0.0,
              "kl_weight": 0.0},
    "sampref": {"candidates": "thresholds", "loss": "ipo", "reduction": "disagreement_mean", "anchor_weight": 1.0,
                "kl_weight": 0.0},
}
PRESET_KEYS = ("candidates", "loss", "reduction", "anchor_weight", "kl_weight")
_PRESET = "the value of the settings preset"


@dataclass
class RatedSample:
    """Everything stage 2 needs of one rated sample, fixed before stage 2 starts.

    ``candidates`` (K, S, S) bool; ``region`` (S, S) bool pixels where they disagree; ``reference_ll`` (K,)
    candidate log-likelihoods under the reference; ``reference_probs`` (S, S) float16; ``weights`` (K,).
    """

    sample: Sample
    candidates: torch.Tensor
    region: torch.Tensor
    reference_ll: torch.Tensor
    reference_probs: torch.Tensor
    weights: np.ndarray
    annotation: Annotation


class DPOTrainer(CandidateGenerator, TwoStageSAMTrainer):
    """Stage 2 by preference optimization on the rated cases; subclasses say how judgements become weights."""

    abstract: ClassVar[bool] = True
    budget: ClassVar[str] = "dpo"
    #: What the simulated annotator gives: "ranking" (IoU order) or "rating" (buckets 1..4).
    annotation_kind: ClassVar[str] = "ranking"
    named_in_configuration: ClassVar[tuple[str, ...]] = (*TwoStageSAMTrainer.named_in_configuration, "settings")
    defaults: ClassVar[dict[str, Any]] = {
        **TwoStageSAMTrainer.defaults,
        "settings": "sampref", **dict.fromkeys(PRESET_KEYS),
        "b1": 1.0, "b2": 0.5, "beta": 1.0, "ipo_target": 1.0, "preference_weight": 1.0,
        "anchor_batch_size": None, "thresholds": None, "n_candidates": 4, "jitter": 0.15, "dropout_p": 0.1,
        "annotator": "simulated", "ratings_file": None, "rating_noise": 0.0,
    }
    options: ClassVar[dict[str, Option]] = {
        "settings": Option("str", choices=tuple(PRESETS), help="preset of candidates, loss, reduction and weights"),
        "candidates": Option("str", choices=CANDIDATE_SOURCES, none=_PRESET, help="source of the candidate masks"),
        "loss": Option("str", choices=LOSSES, none=_PRESET, help="preference loss"),
        "reduction": Option("str", choices=REDUCTIONS, none=_PRESET, help="pixel reduction of the log-likelihood"),
        "anchor_weight": Option("float", low=0, none=_PRESET, help="weight of the supervised anchor term"),
        "kl_weight": Option("float", low=0, none=_PRESET, help="weight of the pixel KL to the reference"),
        "b1": Option("float", low=0, help="weight of the best (and minus the worst) candidate"),
        "b2": Option("float", low=0, help="weight of the second (and minus the third) candidate"),
        "beta": Option("float", low=0, low_open=True, help="DPO temperature"),
        "ipo_target": Option("float", low=0, low_open=True, help="IPO margin target"),
        "preference_weight": Option("float", low=0, help="weight of the preference loss"),
        "anchor_batch_size": Option("int", low=1, none="half the batch size", help="labeled samples per anchor step"),
        "thresholds": Option("float_list", low=0, high=1, low_open=True, high_open=True,
                             none="the plan's thresholds", help="thresholds of the threshold candidates"),
        "n_candidates": Option("int", low=2, help="candidates per sample (jitter, dropout)"),
        "jitter": Option("float", low=0, high=1, help="largest box-side move of jittered candidates"),
        "dropout_p": Option("float", low=0, high=1, high_open=True, help="embedding dropout of dropout candidates"),
        "annotator": Option("str", choices=("simulated", "file"), help="who judges the candidates"),
        "ratings_file": Option("path", none="no file (annotator=simulated)", help="preferences file (annotator=file)"),
        "rating_noise": Option("float", low=0, high=1, help="probability of flipping adjacent judgements"),
    }

    # ------------------------------------------------------------ configuration
    def canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        """Preset keys left ``None`` take the preset's value; options are validated."""
        config = super().canonicalize(config)
        if config["settings"] not in PRESETS:
            raise SamprefError(f"settings={config['settings']!r} is unknown; choose one of {sorted(PRESETS)}")
        preset = PRESETS[config["settings"]]
        config = {**config, **{k: preset[k] if config[k] is None else config[k] for k in PRESET_KEYS}}
        checks = [("candidates", CANDIDATE_SOURCES), ("loss", LOSSES), ("reduction", REDUCTIONS),
                  ("annotator", ("simulated", "file"))]
        for key, allowed in checks:
            if config[key] not in allowed:
                raise SamprefError(f"{key}={config[key]!r} is unknown; choose one of {', '.join(allowed)}")
        if config["annotator"] == "file" and not config["ratings_file"]:
            raise SamprefError("annotator=file needs --set ratings_file=PATH (a preferences file; "
                               "sampref_candidates writes a template)")
        if config["candidates"] == "jitter" and not self.uses_box:
            raise SamprefError("candidates=jitter moves the box prompt, and this trainer has none")
        return config

    def anchor_batch_size(self) -> int:
        """Labeled samples per step of the anchor term: ``anchor_batch_size``, by default half the batch size."""
        size = self.config["anchor_batch_size"]
        return int(size) if size is not None else max(1, int(self.config["batch_size"]) // 2)

    def reference_config(self) -> dict[str, Any]:
        """Run tags name differences from the chosen preset, not from the default one."""
        return self.resolve_config({"settings": self.config["settings"]})

    def base_configuration_name(self) -> str:
        """A non-default preset is named in the folder (``2d-paper``)."""
        name = super().base_configuration_name()
        return name if self.config["settings"] == "sampref" else f"{name}-{self.config['settings']}"

    def family_configuration_name(self) -> str:
        """Compared with the model's configuration without the preset (``2d``, not ``2d-paper``)."""
        return TwoStageSAMTrainer.base_configuration_name(self)

    def stage1_fraction(self) -> float:
        """Stage 1 is trained on the ``dpo_labeled`` cases."""
        return float(self.plans["dpo_labeled_fraction"])

    # ------------------------------------------------------------ data
    def slices_read(self) -> list[tuple[str, int]]:
        """Labeled, rated and validation slices."""
        return super().slices_read() + [(s.case, s.slice) for s in self.rated_samples]

    def build_data(self) -> None:
        """Rated samples, embeddings and prompts, candidates, then (unless :attr:`annotate` is False: a
        ``sampref_candidates`` template) judgements, weights and reference likelihoods."""
        self.rated_samples = hidden_label_samples(self.data, self.roles.rated, self.labels)
        super().build_data()
        self.prompts.ensure([(s.case, s.slice, s.label) for s in self.rated_samples], self.prompt_sources(),
                            progress=self.progress)
        self.candidate_sets = self.generate_candidates()
        if self.annotate:
            self.prepare_preferences()

    #: False: stop after the candidates (``sampref_candidates`` writes them for a human to judge).
    annotate: bool = True

    def annotator(self) -> SimulatedAnnotator | FileAnnotator:
        """The configured annotator; the simulated one holds the only label store of the rated cases."""
        if self.config["annotator"] == "file":
            return FileAnnotator(str(self.config["ratings_file"]), needs_ratings=self.annotation_kind == "rating")
        store = self.data.label_store(self.roles.rated, "the simulated annotator of the rated cases")
        return SimulatedAnnotator(store, self.annotation_kind, float(self.config["rating_noise"]),
                                  int(self.config["seed"]))

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """``(K,)`` weights of one judgement (subclasses)."""
        raise NotImplementedError

    @torch.no_grad()
    def prepare_preferences(self) -> None:
        """Candidates, judgements, weights and reference likelihoods of every rated sample (before stage 2)."""
        annotator = self.annotator()
        step = int(self.config["batch_size"])
        made = self.candidate_sets
        if isinstance(annotator, FileAnnotator):
            annotator.check({s: c.numpy() for s, c, _ in made})
        self.rated: list[RatedSample] = []
        entries = []
        for start in range(0, len(made), step):
            part = made[start:start + step]
            cands = torch.stack([c for _, c, _ in part])
            region = disagreement_region(cands)
            ref_ll = candidate_log_likelihood(torch.stack([logits for _, _, logits in part]), cands,
                                              str(self.config["reduction"]), region)
            for i, (sample, cand, logits) in enumerate(part):
                annotation = annotator.annotate(sample, cand.numpy())
                try:
                    weights = self.preference_weights(annotation)
                except ValueError as error:
                    raise SamprefError(f"{annotator.describe()}, {sample.case} slice {sample.slice} label "
                                       f"{sample.label}: {error}; ratings are whole numbers 1..scale, \"scale\" "
                                       "the number of rating points at the file's top") from error
                entries.append(preference_entry(sample, cand.numpy(), annotation))
                self.rated.append(RatedSample(sample, cand, region[i], ref_ll[i], torch.sigmoid(logits).half(), weights,
                                              annotation))
        self.active = [r for r in self.rated if informative(r.weights)]
        self.tied_share = 1.0 - len(self.active) / max(1, len(self.rated))
        spreads = [float(r.annotation.ious.max() - r.annotation.ious.min()) for r in self.rated
                   if r.annotation.ious is not None]
        self.iou_spread = float(np.mean(spreads)) if spreads else math.nan
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "preferences.json", {
            "format": "sampref-preferences/1", "dataset": self.dataset_name, "fold": self.fold,
            "fraction": self.fraction, "trainer": type(self).__name__, "scale": annotator.scale,
            "candidates": self.config["candidates"], "thresholds": self.thresholds,
            "annotator": self.config["annotator"], "rating_noise": self.config["rating_noise"],
            "iou_spread": self.iou_spread, "tied_share": self.tied_share, "entries": entries})
        if not self.active and self.config["preference_weight"] > 0:
            raise SamprefError(f"{self}: every one of the {len(self.rated)} rated sample(s) has candidates that all "
                               "tie; there is no preference to learn from. Try --set candidates=jitter or adaptive.")
        if self.progress:
            print(f"{type(self).__name__}: {len(self.rated)} rated sample(s), {len(self.rated) - len(self.active)} "
                  f"skipped (all candidates tie), candidate IoU spread {self.iou_spread:.4f}", flush=True)
        if math.isfinite(self.iou_spread) and self.iou_spread < MIN_IOU_SPREAD:
            warnings.warn(f"{self}: the candidates' IoU with the hidden masks differs by only {self.iou_spread:.4f} on "
                          f"average (below {MIN_IOU_SPREAD}); preferences between near-identical masks carry little "
                          "signal. Consider --set candidates=jitter, multimask or adaptive.", stacklevel=2)

    # ------------------------------------------------------------ training
    def train_batches(self, epoch: int) -> list[tuple[int, list[int], list[Sample]]]:
        """``(index, rated indices, labeled anchor samples)``: seeded passes over the informative rated samples."""
        rng = epoch_generator(int(self.config["seed"]), epoch)
        size = int(self.config["batch_size"])
        n = int(self.config["iterations_per_epoch"])
        rated = seeded_passes(rng, len(self.active), n, size)
        anchors = (self.labeled_batches(epoch, self.anchor_batch_size(), stream=10_000)
                   if float(self.config["anchor_weight"]) > 0 else [[] for _ in range(n)])
        return [(b, rated[b], anchors[b]) for b in range(n)]

    def train_step(self, batch: tuple[int, list[int], list[Sample]]) -> dict[str, float]:
        """Preference loss on the rated batch (+ anchor and KL terms); one Adam step of the mask decoder."""
        index, rated_idx, anchor = batch
        rng = epoch_generator(int(self.config["seed"]), self.epoch, stream=1 + index)
        out: dict[str, float] = {}
        total = torch.zeros((), device=self.device)
        pref_w = float(self.config["preference_weight"])
        kl_w = float(self.config["kl_weight"])
        if rated_idx and (pref_w > 0 or kl_w > 0):
            items = [self.active[i] for i in rated_idx]
            samples = [r.sample for r in items]
            logits = self.decode_logits(samples, self.inference_prompts(samples))
            cands = torch.stack([r.candidates for r in items]).to(self.device)
            region = torch.stack([r.region for r in items]).to(self.device)
            policy_ll = candidate_log_likelihood(logits, cands, str(self.config["reduction"]), region)
            reference_ll = torch.stack([r.reference_ll for r in items]).to(self.device)
            weights = torch.from_numpy(np.stack([r.weights for r in items])).float().to(self.device)
            values, info = preference_loss(policy_ll, reference_ll, weights, str(self.config["loss"]),
                                           float(self.config["beta"]), float(self.config["ipo_target"]))
            pref = values.mean()
            kl = bernoulli_kl(logits, torch.stack([r.reference_probs for r in items]).to(self.device)).mean()
            total = total + pref_w * pref + kl_w * kl
            out.update(preference_loss=float(pref.detach()), reward_margin=float(info["reward_gap"].mean().detach()),
                       kl_to_reference=float(kl.detach()))
        if anchor:
            sup = self.supervised_loss(anchor, rng)
            total = total + float(self.config["anchor_weight"]) * sup
            out["anchor_loss"] = float(sup.detach())
        optimizer = self.optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        if total.requires_grad:
            total.backward()
            optimizer.step()
        return {"loss": float(total.detach()), **out}

    def validation_step(self) -> dict[str, float]:
        """Pseudo Dice, plus the (fixed) candidate diagnostics so every epoch's row carries them."""
        return {**super().validation_step(), "iou_spread": self.iou_spread, "tied_share": self.tied_share}

    def config_record(self) -> dict[str, Any]:
        """Adds the candidate thresholds used and the preference bookkeeping."""
        record = super().config_record()
        record["preferences"] = {"rated_samples": len(getattr(self, "rated", [])),
                                 "skipped_all_tied": len(getattr(self, "rated", [])) - len(getattr(self, "active", [])),
                                 "thresholds": getattr(self, "thresholds", []),
                                 "iou_spread": getattr(self, "iou_spread", None)}
        return record


class DPORanking(DPOTrainer):
    """DPO with a ranking of the candidates: weights ``(+b1, +b2, -b2, -b1)`` by place (ties averaged)."""

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """Weights from the ranking (:func:`~sampref_bench.trainers.dpo.losses.ranking_weights`)."""
        return ranking_weights(annotation.scores, float(self.config["b1"]), float(self.config["b2"]))


class DPORating(DPOTrainer):
    """DPO with absolute ratings per candidate (1..4 from the simulated annotator, 1..scale from a file): each
    rating's value on the annotator's scale, centred per sample."""

    annotation_kind: ClassVar[str] = "rating"

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """Weights from the ratings on the annotation's own scale
        (:func:`~sampref_bench.trainers.dpo.losses.rating_weights`)."""
        assert annotation.ratings is not None
        return rating_weights(annotation.ratings, float(self.config["b1"]), float(self.config["b2"]),
                              scale=annotation.scale)


class DPOBestOnly(DPOTrainer):
    """Only the best candidate is rewarded (``+b1``), nothing is pushed down (the paper's ablation)."""

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """Weight ``+b1`` on the best candidate(s) (:func:`~sampref_bench.trainers.dpo.losses.best_only_weights`)."""
        return best_only_weights(annotation.scores, float(self.config["b1"]))
