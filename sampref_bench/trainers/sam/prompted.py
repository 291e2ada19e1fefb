"""Prompt-sourced SAM trainers: no human click, prompts from unsupervised sources (Konwer et al. 2025, sec. 3.1).

``SAMBaseline`` gets the saliency box and interior points, the VQA answer text and the LLM description;
the ablations of the paper's Table 1 drop parts: ``SAMNoVQA`` (no VQA text), ``SAMBoxOnly`` (the saliency
box alone) and ``SAMTextOnly`` (the LLM text alone). Prompts come from :class:`~sampref_bench.prompts.store.PromptStore`
at training and at inference alike, never from ground truth; texts are encoded once by a frozen encoder
and projected to 256-d tokens by a learned :class:`~sampref_bench.models.text_prompt.TextPromptProjection`.

Which saliency source made the prompts is a hyperparameter (``saliency``; the plan's by default), so it is
in ``config.json`` and in the results tables. Every (slice, label) pair of the training slices is trained,
including pairs where the label is absent: at inference the prompts cannot know that, so the decoder learns
to answer "nothing here" inside a misplaced box.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from sampref_bench.models.text_prompt import TextPromptProjection
from sampref_bench.planners.data import Sample, inference_samples
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
#: from the run's labeled cases (:mod:`.learned_prompts`), or the masks of the finished UNet run of the same fold and
#: fraction (:mod:`.cascade`).
BOX_SOURCES = ("saliency", "learned", CASCADE_SOURCE)


class SAMPromptTrainer(LearnedPrompts, SAMTrainer):
    """A SAM trainer whose prompts come from the prompt cache; subclasses choose which parts they use.

    With ``box_source=learned`` the box and points come from a coarse-mask head trained on the labeled cases
    (:class:`~sampref_bench.trainers.sam.learned_prompts.LearnedPrompts`) instead of the saliency; the text prompts
    stay as they are. Trainers without a box or points (``SAMTextOnly``) refuse it.
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
        "box_source": "saliency", **LEARNED_DEFAULTS,
    }
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
        "box_source": Option("str", choices=BOX_SOURCES, help="box and points from the saliency or a learned head"),
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
        return {**config, **{k: settings[k] for k in PROMPT_KEYS}}

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

    def texts(self, kind: str, samples: list[Sample]) -> list[str]:
        """The ``kind`` text of each sample (VQA: per slice and label; LLM: per label)."""
        if kind == "vqa":
            return [self.prompts.vqa(s.case, s.slice, s.label)["text"] for s in samples]
        return [self.prompts.llm(s.label)["text"] for s in samples]

    def use_data(self, data: Any) -> None:
        """As :meth:`SAMTrainer.use_data`; the prompt store is rebuilt on ``data``, keeping the prompt sources it
        already loaded (saliency model, VQA backend, LLM answers) so nothing is loaded twice."""
        super().use_data(data)
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
            return self.visual_prompt_step(index, samples, self.targets(samples), self.embeddings(samples),
                                           lambda keep: self.cascade_prompts([samples[int(i)] for i in keep]),
                                           0.0, {})
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
        """Also names the U-Net run a cascade reads."""
        record = super().config_record()
        if self.cascaded:
            record["cascade_run"] = str(cascade_run_folder(self))
        return record

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
            visual = [self.prompts.visual(s.case, s.slice, s.label) for s in samples]
            if self.uses_box:
                prompts["boxes"] = torch.from_numpy(np.stack([v.box for v in visual])).to(self.device)
            if self.uses_points and int(self.config["points"]) > 0:
                coords = np.stack([_pad_points(v.points, int(self.config["points"])) for v in visual])
                labels = np.ones(coords.shape[:2], np.int64)
                prompts["points"] = (torch.from_numpy(coords).to(self.device), torch.from_numpy(labels).to(self.device))
        return {**prompts, **self.text_prompts(samples)}

    def text_prompts(self, samples: list[Sample]) -> dict[str, Any]:
        """``extra_sparse`` (B, K, 256): the projected text tokens of :attr:`text_kinds` (none without text)."""
        if not self.text_kinds:
            return {}
        features = {kind: torch.from_numpy(self.text_encoder.encode(self.texts(kind, samples))).to(self.device)
                    for kind in self.text_kinds}
        return {"extra_sparse": self.network.text_projection(features)}


def _pad_points(points: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2)``: ``points`` repeated cyclically when a tiny region gave fewer than ``n``."""
    if len(points) == 0:
        raise RuntimeError("a visual prompt has no point (the prompt cache is corrupt); delete its prompts folder")
    return np.asarray([points[i % len(points)] for i in range(n)], np.float32)


class SAMBaseline(SAMPromptTrainer):
    """The stage-1 model of the method: saliency box and points, VQA text and LLM text."""

    text_kinds = ("vqa", "llm")


class SAMNoVQA(SAMPromptTrainer):
    """Ablation: saliency box and points with the LLM text, without the VQA answers."""

    text_kinds = ("llm",)


class SAMBoxOnly(SAMPromptTrainer):
    """Ablation: the saliency box alone (no points, no text)."""

    uses_points = False


class SAMTextOnly(SAMPromptTrainer):
    """Ablation: the LLM description alone (no box, no points, no VQA text); one text per label."""

    uses_box = False
    uses_points = False
    text_kinds = ("llm",)


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
