"""Prompt-sourced SAM trainers: no human click at inference; the box and point come from a head learned on the
labeled cases or from unsupervised saliency, the texts from VQA and an LLM (Konwer et al. 2025, sec. 3.1).

``SAMBaseline`` gets a box and an interior point, the VQA answer text and the LLM description; the ablations of
the paper's Table 1 drop parts: ``SAMNoVQA`` (no VQA text), ``SAMBoxOnly`` (the box alone) and ``SAMTextOnly``
(the LLM text alone). Where the box and point come from is ``box_source``: by default ``"learned"``, a coarse-mask
head on SAM's image embedding trained with the decoder on the run's labeled cases (:mod:`.learned_prompts`; its
options ``head_weight``, ``head_hidden``, ``head_threshold``, ``head_points``); ``"saliency"``, the unsupervised
saliency box and interior points of the prompt cache (as in the paper; the default before the learned head); or
``"run:UNet"``, the masks of the finished UNet run (:mod:`.cascade`). ``SAMTextOnly`` has no box and keeps
``"saliency"`` (it refuses any other source). A run's folder tags what differs from the default, so a
learned run is untagged and a saliency run is tagged ``box_sourcesaliency``.

Cached prompts (saliency boxes, VQA and LLM texts) come from :class:`~sampref_bench.prompts.store.PromptStore` at
training and at inference alike, never from ground truth; the learned head reads the image embedding alone at
inference. Texts are encoded once by a frozen encoder and projected to 256-d tokens by a learned
:class:`~sampref_bench.models.text_prompt.TextPromptProjection`.

Which saliency source made the cached prompts is a hyperparameter (``saliency``; the plan's by default), so it is
in ``config.json`` and in the results tables; with the learned box it still makes the weights-free VQA text
(``vqa=mask``). Every (slice, label) pair of the training slices is trained, including pairs where the label is
absent: at inference saliency prompts cannot know that, so the decoder learns to answer "nothing here" inside a
misplaced box (the learned head trains on those pairs too, and a pair it finds absent is predicted empty).

Which CRF component becomes a label's region is ``component_choice``: ``"saliency"`` (the largest, the same for
every label of a slice) or ``"label_prior"`` (each label's best match to where it lies in the run's labeled cases,
:mod:`sampref_bench.prompts.label_prior`); unset, ``"label_prior"`` with two or more foreground labels and
``"saliency"`` with one. The prior is learned in :meth:`SAMPromptTrainer.build_data` from the labels of
``roles.labeled`` only, kept in the checkpoint (a finished run predicts without a label) and summarised in
``config.json`` (``label_prior``: its digest, slices per label, centroids). The weights-free VQA text then describes
the chosen component too. Identity: the run tag measures ``component_choice`` against ``"saliency"``, the behaviour
of every run from before the setting, so a single-label run keeps its folder, a multi-label run with per-label
regions is tagged ``component_choicelabel_prior`` and an untagged folder always holds shared-region prompts. A
trainer that reads no saliency region (``SAMTextOnly``, ``box_source=learned`` or ``run:UNet`` without mask-VQA
text) records ``"saliency"``: the setting changes nothing there.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.evaluation.data_use import BOX_SOURCE_NAMES
from sampref_bench.models.text_prompt import TextPromptProjection
from sampref_bench.planners.data import Sample, inference_samples
from sampref_bench.prompts.label_prior import (
    COMPONENT_CHOICES,
    LEGACY_COMPONENT_CHOICE,
    LabelPrior,
    learn_label_prior,
)
from sampref_bench.prompts.settings import OVERRIDABLE, SALIENCY_SOURCES, resolve_prompt_settings
from sampref_bench.prompts.store import PromptStore
from sampref_bench.prompts.text_encoder import TEXT_ENCODERS, build_text_encoder
from sampref_bench.trainers.options import Option
from sampref_bench.trainers.sam.cascade import CASCADE_SOURCE, CascadeBoxes, cascade_run_folder
from sampref_bench.trainers.sam.learned_prompts import LEARNED_DEFAULTS, LEARNED_OPTIONS, LearnedPrompts
from sampref_bench.trainers.sam.trainer import SAMTrainer
from sampref_bench.utilities.errors import SamprefError

#: Hyperparameters of the prompt sources; ``None`` means the plan's ``prompts`` value.
PROMPT_KEYS = OVERRIDABLE
_PLANNED_PROMPT = "the plan's prompt setting"


#: Where the box and points come from: the unsupervised saliency of the prompt cache, a coarse-mask head learned
#: from the run's labeled cases (:mod:`.learned_prompts`; the default of every trainer with a box or point), or the
#: masks of the finished UNet run of the same fold and fraction (:mod:`.cascade`).
BOX_SOURCES = ("saliency", "learned", CASCADE_SOURCE)


class SAMPromptTrainer(LearnedPrompts, SAMTrainer):
    """A SAM trainer whose text prompts come from the prompt cache; subclasses choose which parts they use.

    By default (``box_source=learned``) the box and point come from a coarse-mask head trained on the labeled cases
    (:class:`~sampref_bench.trainers.sam.learned_prompts.LearnedPrompts`); ``box_source=saliency`` takes the cached
    saliency box and points instead. The text prompts are the same either way. Trainers without a box or points
    (``SAMTextOnly``) default to ``saliency`` and refuse any other source.
    """

    abstract: ClassVar[bool] = True
    train_on_absent_labels: ClassVar[bool] = True
    #: Whether the saliency box / interior points are given to SAM.
    uses_box: ClassVar[bool] = True
    uses_points: ClassVar[bool] = True
    #: Text prompts appended as tokens, in this order ("vqa", "llm").
    text_kinds: ClassVar[tuple[str, ...]] = ()
    #: Weight locations are not settings: the prompt cache keys on the weights' digest, and a path would make
    #: a long, machine-specific run tag.
    named_in_configuration: ClassVar[tuple[str, ...]] = (*SAMTrainer.named_in_configuration, "clip_path",
                                                         "medvint_path")
    defaults: ClassVar[dict[str, Any]] = {
        **SAMTrainer.defaults,
        **dict.fromkeys(PROMPT_KEYS),
        "clip_path": None, "medvint_path": None,
        "box_source": "learned", **LEARNED_DEFAULTS,
    }
    #: Every run recorded before ``box_source`` existed prompted with the saliency (the default then): a saved config
    #: without the key is a saliency run, never one of today's learned default.
    unrecorded_values: ClassVar[dict[str, Any]] = {"box_source": "saliency"}
    options: ClassVar[dict[str, Option]] = {
        "saliency": Option("str", choices=SALIENCY_SOURCES, none=_PLANNED_PROMPT,
                           help="saliency source of the prompts"),
        "gscorecam_topk": Option("int", low=1, none=_PLANNED_PROMPT, help="gScoreCAM channels kept"),
        "gscorecam_layer": Option("str", none=_PLANNED_PROMPT, help="BiomedCLIP layer gScoreCAM reads"),
        "points": Option("int", low=0, none=_PLANNED_PROMPT, help="interior points per box"),
        "vqa": Option("str", choices=("mask", "medvint"), none=_PLANNED_PROMPT, help="source of the VQA text"),
        "llm_model": Option("str", none=_PLANNED_PROMPT, help="chat model of the LLM text"),
        "llm_base_url": Option("str", none=_PLANNED_PROMPT, help="chat endpoint of the LLM text"),
        "text_encoder": Option("str", choices=TEXT_ENCODERS, none=_PLANNED_PROMPT,
                               help="encoder of the text prompts"),
        "clip_path": Option("path", none="no BiomedCLIP weights", help="local BiomedCLIP weights (saliency, text)"),
        "medvint_path": Option("path", none="no MedVInT weights", help="local MedVInT weights (vqa=medvint)"),
        "box_source": Option("str", choices=BOX_SOURCES,
                             help="box and points from a head learned on the labeled cases, the saliency or the "
                             "UNet run"),
        "component_choice": Option("str", choices=COMPONENT_CHOICES,
                                   none="label_prior with 2+ foreground labels, else saliency",
                                   help="a label's saliency region: the largest CRF component or its labeled-case "
                                   "location prior's best match"),
        **LEARNED_OPTIONS,
    }

    @property
    def learned(self) -> bool:
        """Whether the box and points come from the learned head (``box_source=learned``)."""
        return self.config["box_source"] == "learned"

    @property
    def cascaded(self) -> bool:
        """Whether the box and points come from the finished UNet run (``box_source=run:UNet``)."""
        return self.config["box_source"] == CASCADE_SOURCE

    @property
    def learned_box(self) -> bool:  # type: ignore[override]
        """The learned box goes to the decoder when this trainer uses a box."""
        return self.uses_box

    @property
    def learned_points(self) -> bool:  # type: ignore[override]
        """The learned point goes to the decoder when this trainer uses points."""
        return self.uses_points

    def canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        """Prompt keys left at ``None`` take the plan's value, so ``config.json`` names the saliency source."""
        config = super().canonicalize(config)
        if config["box_source"] != "saliency" and not (self.uses_box or self.uses_points):
            raise SamprefError(f"box_source={config['box_source']} gives a box and a point, and {type(self).__name__} "
                               "uses neither (it prompts with text only); use SAMBaseline, SAMNoVQA or SAMBoxOnly, or "
                               "SAMSelfPrompt")
        settings = resolve_prompt_settings(self.plans, {k: config[k] for k in PROMPT_KEYS})
        config = {**config, **{k: settings[k] for k in PROMPT_KEYS}}
        if not self.reads_saliency_regions(config):
            config["component_choice"] = LEGACY_COMPONENT_CHOICE  # no saliency region is read: nothing to choose
        return config

    def reads_saliency_regions(self, config: dict[str, Any]) -> bool:
        """Whether a run of ``config`` reads a saliency CRF region: the saliency box or points, or the weights-free
        VQA text measured on the region (so ``component_choice`` matters)."""
        visual = (self.uses_box or self.uses_points) and config["box_source"] == "saliency"
        return visual or ("vqa" in self.text_kinds and config["vqa"] == "mask")

    def reference_config(self) -> dict[str, Any]:
        """As every trainer's, with ``component_choice`` at ``"saliency"``: the behaviour of runs from before the
        setting existed, so only per-label regions (``label_prior``) make a run tag and an untagged folder always
        holds shared-region prompts."""
        return {**super().reference_config(), "component_choice": LEGACY_COMPONENT_CHOICE}

    @property
    def uses_label_prior(self) -> bool:
        """Whether the saliency regions are chosen per label by the labeled cases' location prior."""
        return self.config["component_choice"] == "label_prior"

    @property
    def label_prior(self) -> LabelPrior | None:
        """The per-label location prior (``component_choice=label_prior``; else ``None``): from the checkpoint of a
        loaded run, else learned once from the labels of ``roles.labeled`` only (never a validation case)."""
        if not self.uses_label_prior:
            return None
        if getattr(self, "_label_prior", None) is None:
            store = getattr(self, "train_labels", None)
            if store is None or store.cases != frozenset(self.roles.labeled):
                store = self.data.label_store(self.roles.labeled, "the label-location prior of the prompts")
            self._label_prior = learn_label_prior(store, self.roles.labeled, self.labels, self.prompts.valid_region)
        return self._label_prior

    def prompt_settings(self) -> dict[str, Any]:
        """The plan's prompt settings with this run's overrides."""
        return resolve_prompt_settings(self.plans, {k: self.config[k] for k in PROMPT_KEYS})

    def prompt_sources(self) -> tuple[str, ...]:
        """The cached sources this trainer reads (``saliency``, ``vqa``, ``llm``)."""
        visual = (self.uses_box or self.uses_points) and self.config["box_source"] == "saliency"
        sources = ("saliency",) if visual else ()
        return sources + tuple(k for k in ("vqa", "llm") if k in self.text_kinds)

    @property
    def prompts(self) -> PromptStore:
        """The prompt cache of this run's prompt settings (built on first use)."""
        if getattr(self, "_prompts", None) is None:
            self._prompts = PromptStore(self.data, self.prompt_settings(), clip_path=self.config["clip_path"],
                                        medvint_path=self.config["medvint_path"])
        return self._prompts

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """The text projection (when the trainer uses text); loads the frozen text encoder."""
        self.text_encoder = None
        if not self.text_kinds:
            return {}
        source = self.prompts.saliency_source if self.config["text_encoder"] != "minilm" else None
        self.text_encoder = build_text_encoder(str(self.config["text_encoder"]), source)
        return {"text_projection": TextPromptProjection(self.text_kinds, self.text_encoder.dim)}

    def build_data(self) -> None:
        """Samples, embeddings, then every prompt this run reads (computed once into the cache)."""
        if self.cascaded:
            self.cascade = CascadeBoxes(self)
        super().build_data()
        triples = [(s.case, s.slice, s.label) for s in self.train_samples]
        triples += [(s.case, s.slice, s.label) for case in self.roles.val
                    for s in inference_samples(self.data, case, self.labels)]
        self.prompts.ensure(triples, self.prompt_sources(), progress=self.progress)
        prior = self.label_prior  # learned now, from the labeled cases, while their labels are at hand
        if prior is not None and self.progress:
            seen = ", ".join(f"{v}: {prior.slices.get(v, 0)}" for v in self.labels)
            print(f"label prior of the prompts from {prior.n_cases} labeled case(s), slices per label {seen} "
                  f"({prior.digest()})", flush=True)

    def texts(self, kind: str, samples: list[Sample]) -> list[str]:
        """The ``kind`` text of each sample (VQA: per slice and label, describing the label's chosen region with a
        label prior; LLM: per label)."""
        if kind == "vqa":
            return [self.prompts.vqa(s.case, s.slice, s.label, self.label_prior)["text"] for s in samples]
        return [self.prompts.llm(s.label)["text"] for s in samples]

    def use_data(self, data: Any) -> None:
        """As :meth:`SAMTrainer.use_data`; the prompt store is rebuilt on ``data``, keeping the prompt sources it
        already loaded (saliency model, VQA backend, LLM answers) so nothing is loaded twice. A label prior stays:
        it belongs to the run, not to the data it predicts."""
        super().use_data(data)
        self._rebuild_prompt_store()

    def _rebuild_prompt_store(self) -> None:
        """A new prompt store for the current data and settings, keeping the sources the old one loaded."""
        old = getattr(self, "_prompts", None)
        self._prompts = None
        if old is not None:
            new = self.prompts
            for name in ("_saliency", "_vqa", "_llm"):
                if getattr(new, name, None) is None and getattr(old, name, None) is not None:
                    setattr(new, name, getattr(old, name))

    def build_network(self) -> torch.nn.Module:
        """The SAM trainer's network, with the coarse-mask head when ``box_source=learned``."""
        model = super().build_network()
        return self.add_prompt_head(model) if self.learned else model

    def predict_logits(self, samples: list[Sample]) -> torch.Tensor:
        """As every SAM trainer; with learned or cascade prompts, empty where they find nothing."""
        if self.learned:
            return self.learned_predict_logits(samples)
        if self.cascaded:
            prompts, found = self.cascade_prompts(samples)
            return self.gated_logits(samples, self.embeddings(samples), prompts, found)
        return super().predict_logits(samples)

    def train_step(self, batch: tuple[int, list[Sample]]) -> dict[str, float]:
        """As every SAM trainer; with learned prompts head and decoder train together; with cascade prompts the
        decoder trains on the slices that hold the label, from the U-Net's boxes."""
        if self.learned:
            return self.learned_train_step(batch)
        if self.cascaded:
            index, samples = batch
            embeddings, targets = self.training_inputs(index, samples)

            def moved(keep: torch.Tensor) -> tuple[dict[str, Any], np.ndarray]:
                prompts, found = self.cascade_prompts([samples[int(i)] for i in keep])
                return self.warp_prompts(prompts, keep.tolist()), found

            return self.visual_prompt_step(index, samples, targets, embeddings, moved, 0.0, {})
        return super().train_step(batch)

    def cascade_prompts(self, samples: list[Sample]) -> tuple[dict[str, Any], np.ndarray]:
        """The visual prompts of ``samples`` from the cascade's U-Net masks, and which rows it found."""
        return self.visual_prompts(*self.cascade.prompts(samples))

    def build_inference_data(self) -> None:
        """As every SAM trainer, plus the U-Net run of a cascade."""
        super().build_inference_data()
        if self.cascaded:
            self.cascade = CascadeBoxes(self)

    def config_record(self) -> dict[str, Any]:
        """Also names the U-Net run a cascade reads, and summarises a label prior (:meth:`LabelPrior.summary`)."""
        record = super().config_record()
        if self.cascaded:
            record["cascade_run"] = str(cascade_run_folder(self))
        prior = self.label_prior
        if prior is not None:
            record["label_prior"] = prior.summary()
        return record

    def data_use(self) -> dict[str, Any]:
        """As every trainer's, plus where the box and point came from (``box_source``: ``saliency``, ``learned`` or
        ``cascade:UNet``; ``None`` for a trainer that gives SAM no box or point). ``learned`` and ``cascade:UNet``
        are trained on this run's pixel-labeled cases only; the cascade's ``box_source_training`` names the UNet run
        it reads and that run's training length (the extra training it costs)."""
        use = super().data_use()
        use["box_source"] = BOX_SOURCE_NAMES[self.config["box_source"]] if self.uses_box or self.uses_points else None
        if self.cascaded:
            use["box_source_training"] = cascade_training(cascade_run_folder(self))
        return use

    def checkpoint_state(self) -> dict[str, Any]:
        """Also the label prior (``component_choice=label_prior``), so a finished run predicts without a label."""
        state = super().checkpoint_state()
        prior = self.label_prior
        if prior is not None:
            state["label_prior"] = prior.to_state()
        return state

    def check_checkpoint(self, state: dict[str, Any], path: Path, for_training: bool = True) -> None:
        """As every trainer's. A finished run saved before ``component_choice`` existed had one region for every
        label (``"saliency"``): loaded for prediction, it predicts that way again (with a warning); ``--continue``
        of such a run with per-label regions is refused as any changed hyperparameter is."""
        saved = state.get("config", {})
        if not for_training and "component_choice" not in saved and self.uses_label_prior:
            warnings.warn(f"{path} predates component_choice: it was trained with one saliency region for every "
                          "label, and predicts so (component_choice=saliency)", stacklevel=2)
            self.config = {**self.config, "component_choice": LEGACY_COMPONENT_CHOICE}
            self._label_prior = None
            self._rebuild_prompt_store()
        super().check_checkpoint(state, path, for_training)

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """As every trainer's; the label prior saved in the checkpoint must be the one the labeled cases give now."""
        super().restore(state, path)
        self._check_saved_prior(state, path)

    def load_inference_state(self, state: dict[str, Any], path: Path) -> None:
        """As every trainer's, and the label prior comes from the checkpoint (no label is read)."""
        super().load_inference_state(state, path)
        if self.uses_label_prior:
            stored = state.get("label_prior")
            if stored is None:
                raise SamprefError(f"{path} has no label prior, which component_choice=label_prior needs: it is not a "
                                   "checkpoint of this run's settings; train the run again")
            self._label_prior = LabelPrior.from_state(stored)

    def _check_saved_prior(self, state: dict[str, Any], path: Path) -> None:
        stored = state.get("label_prior")
        prior = self.label_prior
        if prior is None or stored is None:
            return
        saved = LabelPrior.from_state(stored)
        if saved.digest() != prior.digest():
            raise SamprefError(f"--continue: {path} was trained with another label prior ({saved.digest()}) than the "
                               f"labeled cases give now ({prior.digest()}): their labels changed. Start the run again.")

    def other_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """The text tokens (with learned visual prompts)."""
        return self.text_prompts(samples)

    def inference_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """``boxes`` (B, 4), ``points`` ((B, P, 2), (B, P)) and text tokens ``extra_sparse`` (B, K, 256), as the
        trainer uses them; from the prompt cache (images and target texts only), or the box and point from the
        learned head."""
        if self.learned:
            return self.learned_inference_prompts(samples)
        if self.cascaded:
            return {**self.cascade_prompts(samples)[0], **self.text_prompts(samples)}
        prompts: dict[str, Any] = {}
        if self.uses_box or self.uses_points:
            visual = self.saliency_boxes(samples)
            if self.uses_box:
                prompts["boxes"] = torch.from_numpy(np.stack([box for box, _ in visual])).to(self.device)
            if self.uses_points and int(self.config["points"]) > 0:
                coords = np.stack([_pad_points(points, int(self.config["points"])) for _, points in visual])
                labels = np.ones(coords.shape[:2], np.int64)
                prompts["points"] = (torch.from_numpy(coords).to(self.device), torch.from_numpy(labels).to(self.device))
        return {**prompts, **self.text_prompts(samples)}

    def saliency_boxes(self, samples: list[Sample]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The saliency ``(4,)`` box and ``(P, 2)`` points of each sample as this run gives them to SAM: the cached
        largest component, or with ``component_choice=label_prior`` the label's own component (from the images and
        the run's label prior only)."""
        prior = self.label_prior
        return [self.prompts.box_and_points(s.case, s.slice, s.label, prior) for s in samples]

    def text_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """``extra_sparse`` (B, K, 256): the projected text tokens of :attr:`text_kinds` (none without text)."""
        if not self.text_kinds:
            return {}
        features = {kind: torch.from_numpy(self.text_encoder.encode(self.texts(kind, samples))).to(self.device)
                    for kind in self.text_kinds}
        return {"extra_sparse": self.network.text_projection(features)}


def cascade_training(folder: Path) -> dict[str, Any]:
    """What a cascade's U-Net run cost, from its ``config.json``: ``run`` (``{run folder}/fold_k``), ``trainer``,
    ``epochs``, ``iterations_per_epoch`` and ``pixel_labeled`` (``None`` where the record does not say)."""
    from sampref_bench.utilities.atomic import load_json

    try:
        record = load_json(folder / "config.json")
    except SamprefError:
        record = {}
    hyper = record.get("hyperparameters") or {}
    use = record.get("data_use") or {}
    return {"run": f"{folder.parent.name}/{folder.name}", "trainer": record.get("trainer"),
            "epochs": hyper.get("epochs"), "iterations_per_epoch": hyper.get("iterations_per_epoch"),
            "pixel_labeled": use.get("pixel_labeled")}


def _pad_points(points: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2)``: ``points`` repeated cyclically when a tiny region gave fewer than ``n``."""
    if len(points) == 0:
        raise RuntimeError("a visual prompt has no point (the prompt cache is corrupt); delete its prompts folder")
    return np.asarray([points[i % len(points)] for i in range(n)], np.float32)


class SAMBaseline(SAMPromptTrainer):
    """The stage-1 model of the method: box and point (learned head by default, ``box_source=saliency`` for the
    saliency ones), VQA text and LLM text."""

    text_kinds = ("vqa", "llm")


class SAMNoVQA(SAMPromptTrainer):
    """Ablation: box and point (learned by default) with the LLM text, without the VQA answers."""

    text_kinds = ("llm",)


class SAMBoxOnly(SAMPromptTrainer):
    """Ablation: the box alone (learned by default; no points, no text)."""

    uses_points = False


class SAMTextOnly(SAMPromptTrainer):
    """Ablation: the LLM description alone (no box, no points, no VQA text); one text per label. Its ``box_source``
    stays ``"saliency"`` (it gives SAM no box or point, and refuses any other source)."""

    uses_box = False
    uses_points = False
    text_kinds = ("llm",)
    defaults: ClassVar[dict[str, Any]] = {**SAMPromptTrainer.defaults, "box_source": "saliency"}


def dataset_prompt_store(dataset: str | int, overrides: dict[str, Any] | None = None, clip_path: str | None = None,
                         medvint_path: str | None = None) -> tuple[PromptStore, list[str]]:
    """The prompt cache a trainer of ``dataset`` would read with these prompt ``overrides``, and every
    preprocessed case of the dataset (sorted), for ``sampref_prompts``."""
    from sampref_bench import paths
    from sampref_bench.planners.data import PreprocessedData
    from sampref_bench.planners.pipeline import data_folder
    from sampref_bench.utilities.atomic import load_json

    name = paths.resolve_dataset(dataset, paths.preprocessed_root(), paths.raw_root())
    plans_path = paths.preprocessed_root() / name / "plans.json"
    if not plans_path.is_file():
        raise SamprefError(f"{plans_path} is missing: run `sampref_plan -d {name}` first")
    plans = load_json(plans_path)
    data = PreprocessedData(data_folder(plans_path.parent, plans), plans)
    cases = sorted(load_json(data.data_dir / "preprocessing.json")["cases"])
    store = PromptStore(data, resolve_prompt_settings(plans, overrides), clip_path=clip_path,
                        medvint_path=medvint_path)
    return store, cases
