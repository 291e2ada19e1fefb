"""Preference optimization of SAM's mask decoder: ``DPORanking``, ``DPORating`` and ``DPOBestOnly``.

Konwer et al. 2025 (CVPR, arXiv 2503.04639), sec. 3.2: after supervised stage 1 on the ``dpo_labeled``
cases, the model is aligned with an annotator's judgement of its own candidate masks on the *rated* cases,
whose pixel labels it never sees. Per rated sample (case, slice, label):

1. **Candidates** (``candidates``) from the frozen stage-1 model (the reference policy), once, before stage 2:

   * ``"thresholds"`` (the paper): its probability map at the plan's thresholds (0.3 0.4 0.5 0.6);
   * ``"adaptive"``: its probability map at thresholds planned after stage 1 from the reference's
     probabilities on its *labeled* cases: the thresholds at which the mean predicted area is
     :data:`ADAPTIVE_AREA_RATIOS` times the mean labeled area (over- to under-segmentation around the truth);
   * ``"jitter"``: the reference under the sample's box and ``n_candidates - 1`` boxes whose sides move by up
     to ``jitter`` of the box size (seeded per sample), each at the run's ``threshold`` (0.5);
   * ``"multimask"``: the single output and SAM's three multimask outputs, each at the run's ``threshold`` (0.5);
   * ``"dropout"``: ``n_candidates`` decodes with dropout ``dropout_p`` on the image embedding, at ``threshold``;
     the dropout masks come from a generator of their own (:func:`seeded_dropout`), so making candidates leaves
     torch's global CPU and CUDA random states as they were.

2. **The annotator** (``annotator``): ``"simulated"`` rates by IoU with the hidden mask (only it reads the
   rated cases' labels); ``"file"`` reads ``ratings_file``. ``rating_noise`` flips adjacent ratings.
   Every run writes the annotations it used to ``preferences.json`` (the file format), so a human file that
   holds the same judgements gives the same run.
3. **The loss** (:mod:`sampref_bench.trainers.preference`): preference weights from the judgement (ranking:
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

from sampref_bench.trainers.annotators import Annotation, FileAnnotator, SimulatedAnnotator, preference_entry
from sampref_bench.trainers.base import epoch_generator, seeded_passes
from sampref_bench.trainers.data import Sample, hidden_label_samples
from sampref_bench.trainers.preference import (
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
from sampref_bench.trainers.sam_trainer import jitter_boxes
from sampref_bench.trainers.two_stage import TwoStageSAMTrainer
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.errors import SamprefError

CANDIDATE_SOURCES = ("thresholds", "adaptive", "jitter", "multimask", "dropout")
#: Mean predicted area relative to the mean labeled area that the adaptive thresholds aim at, best-guess
#: over-segmentation first.
ADAPTIVE_AREA_RATIOS = (1.5, 1.2, 0.85, 0.65)
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


class DPOTrainer(TwoStageSAMTrainer):
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
    def reference_logits(self, samples: list[Sample], prompts: dict[str, Any] | None = None,
                         multimask: bool = False, dropout: float = 0.0, dropout_seed: int = 0) -> torch.Tensor:
        """``(B, 1 or 3, S, S)`` logits of the frozen reference at the preprocessed size; ``dropout > 0`` drops
        out image-embedding features with :func:`seeded_dropout` (seed ``dropout_seed``)."""
        prompts = prompts if prompts is not None else self.reference_prompts(samples)
        embeddings = self.embeddings(samples)
        if dropout > 0:
            embeddings = seeded_dropout(embeddings, dropout, dropout_seed)
        return self.decode_with(self.networks["reference"], embeddings, prompts, multimask)

    def reference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """The inference prompts, without gradients (stage 2 never changes the prompt encoder or text
        projection, so the policy's prompt modules equal the reference's)."""
        with torch.no_grad():
            return self.inference_prompts(samples)

    def candidate_thresholds(self) -> list[float]:
        """Thresholds of the threshold-based candidate sources (the plan's, an override, or adaptive)."""
        if self.config["candidates"] == "adaptive":
            return self.adaptive_thresholds()
        return [float(t) for t in (self.config["thresholds"] or self.plans["thresholds"])]

    @torch.no_grad()
    def adaptive_thresholds(self) -> list[float]:
        """Thresholds at which the reference's mean predicted area on the labeled samples is
        :data:`ADAPTIVE_AREA_RATIOS` times their mean labeled area (interpolated on a grid of 97 thresholds)."""
        grid = np.linspace(0.02, 0.98, 97)
        areas = np.zeros(len(grid))
        truth = 0.0
        step = int(self.config["batch_size"])
        for start in range(0, len(self.train_samples), step):
            chunk = self.train_samples[start:start + step]
            probs = torch.sigmoid(self.reference_logits(chunk))[:, 0].cpu().numpy()
            truth += float(self.targets(chunk).sum())
            areas += np.array([(probs >= t).sum() for t in grid], dtype=np.float64)
        ratios = areas / max(truth, 1.0)
        # ratios fall with the threshold; np.interp wants increasing x
        thresholds = [float(np.interp(r, ratios[::-1], grid[::-1])) for r in ADAPTIVE_AREA_RATIOS]
        self.adaptive_record = {"area_ratios": list(ADAPTIVE_AREA_RATIOS), "thresholds": thresholds}
        return sorted(set(round(t, 4) for t in thresholds))

    @torch.no_grad()
    def make_candidates(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, S, S)`` bool candidates and the ``(B, S, S)`` reference logits under the usual prompts."""
        source = self.config["candidates"]
        logits = self.reference_logits(samples)[:, 0]
        probs = torch.sigmoid(logits)
        cut = float(self.config["threshold"])
        if source in ("thresholds", "adaptive"):
            cands = torch.stack([probs >= t for t in self.thresholds], dim=1)
        elif source == "multimask":
            multi = torch.sigmoid(self.reference_logits(samples, multimask=True))
            cands = torch.cat([probs[:, None], multi], dim=1) >= cut
        elif source == "jitter":
            prompts = self.reference_prompts(samples)
            outs = [probs >= cut]
            for k in range(1, int(self.config["n_candidates"])):
                boxes = torch.stack([
                    jitter_boxes(prompts["boxes"][i:i + 1].cpu(), _sample_rng(self.config["seed"], s, k),
                                 float(self.config["jitter"]), int(self.plans["image_size"]))[0]
                    for i, s in enumerate(samples)]).to(self.device)
                moved = torch.sigmoid(self.reference_logits(samples, {**prompts, "boxes": boxes}))[:, 0]
                outs.append(moved >= cut)
            cands = torch.stack(outs, dim=1)
        else:  # dropout
            outs = []
            for k in range(int(self.config["n_candidates"])):
                dropped = self.reference_logits(samples, dropout=float(self.config["dropout_p"]),
                                                dropout_seed=int(self.config["seed"]) * 1000 + k)
                outs.append(torch.sigmoid(dropped[:, 0]) >= cut)
            cands = torch.stack(outs, dim=1)
        return cands, logits

    def generate_candidates(self) -> list[tuple[Sample, torch.Tensor, torch.Tensor]]:
        """``(sample, (K, S, S) bool candidates, (S, S) reference logits)`` of every rated sample, on the CPU."""
        self.thresholds = self.candidate_thresholds() if self.config["candidates"] in ("thresholds",
                                                                                       "adaptive") else []
        step = int(self.config["batch_size"])
        made: list[tuple[Sample, torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(self.rated_samples), step):
            chunk = self.rated_samples[start:start + step]
            cands, logits = self.make_candidates(chunk)
            made.extend(zip(chunk, cands.cpu(), logits.cpu()))
        return made

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


def seeded_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout of ``x`` (each element zeroed with probability ``p``, the rest scaled by ``1 / (1 - p)``)
    whose mask comes from a CPU generator of its own seeded with ``seed``.

    torch's global random states (CPU and every CUDA device) are neither read nor changed, and the mask is drawn on
    the CPU and moved to ``x``'s device, so it is the same on every device. On the CPU, for float32 ``x``, the
    result equals ``torch.manual_seed(seed); torch.nn.functional.dropout(x, p)`` bit for bit (the same Bernoulli
    draws, the same division and product): the ``"dropout"`` candidates of earlier CPU runs are unchanged.
    """
    if not 0.0 <= p < 1.0:
        raise SamprefError(f"dropout_p must lie in [0, 1), got {p}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.empty(x.shape, dtype=torch.float32).bernoulli_(1.0 - p, generator=generator)
    noise.div_(1.0 - p)
    return x * noise.to(device=x.device, dtype=x.dtype)


def _sample_rng(seed: int, sample: Sample, k: int) -> np.random.Generator:
    from sampref_bench.trainers.annotators import sample_rng

    return sample_rng(int(seed) * 100 + k, sample)


class DPORanking(DPOTrainer):
    """DPO with a ranking of the candidates: weights ``(+b1, +b2, -b2, -b1)`` by place (ties averaged)."""

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """Weights from the ranking (:func:`~sampref_bench.trainers.preference.ranking_weights`)."""
        return ranking_weights(annotation.scores, float(self.config["b1"]), float(self.config["b2"]))


class DPORating(DPOTrainer):
    """DPO with absolute ratings per candidate (1..4 from the simulated annotator, 1..scale from a file): each
    rating's value on the annotator's scale, centred per sample."""

    annotation_kind: ClassVar[str] = "rating"

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """Weights from the ratings on the annotation's own scale
        (:func:`~sampref_bench.trainers.preference.rating_weights`)."""
        assert annotation.ratings is not None
        return rating_weights(annotation.ratings, float(self.config["b1"]), float(self.config["b2"]),
                              scale=annotation.scale)


class DPOBestOnly(DPOTrainer):
    """Only the best candidate is rewarded (``+b1``), nothing is pushed down (the paper's ablation)."""

    def preference_weights(self, annotation: Annotation) -> np.ndarray:
        """Weight ``+b1`` on the best candidate(s) (:func:`~sampref_bench.trainers.preference.best_only_weights`)."""
        return best_only_weights(annotation.scores, float(self.config["b1"]))
