"""The prompt cache: unsupervised prompts per (case, slice, label), computed once and kept beside the data.

Layout under ``$SAMPREF_preprocessed/DatasetXXX_Name/prompts/``:

* ``{saliency}-{key}/{case}_{slice:04d}_l{label}_{image}.npz``: the saliency map (float16), the CRF mask
  (its largest component), the box, the interior points and whether the saliency was empty. ``key`` digests
  the saliency source's settings (its weights digest included), the CRF settings and the number of points;
  ``image`` is the image key of :func:`~sampref_bench.planners.embedding_cache.image_key` (the preprocessed
  image and the RGB mapping).
* ``{saliency}-{key}/components/{case}_{slice:04d}[_l{label}]_{image}.npz``: the whole CRF mask (every component,
  packed bits), the candidates of ``component_choice="label_prior"``; written only when a run asks for them, once
  per slice (per label for a text-driven source, whose map depends on the label's text).
* ``vqa-{backend}-{key}/{case}_{slice:04d}_l{label}_{image}.json``: the VQA answers and their sentence; the
  key of the weights-free backend includes the saliency key (it reads the mask).
* ``llm_{key}.json``: LLM descriptions by target text (:mod:`sampref_bench.prompts.llm_text`).

Fractions, folds, thresholds and training settings appear in no key, so replanning them recomputes nothing.
Every source is deterministic. Prompts never read a label: they come from the image and the label's
``target_text`` alone.

The per-label choice of ``component_choice="label_prior"`` (:mod:`.label_prior`) is the one part that depends on
a run's labeled cases. It is never written here: :meth:`PromptStore.visual` and :meth:`PromptStore.vqa` take the
run's :class:`~.label_prior.LabelPrior` and choose among the cached, label-free components at run time (memoised in
memory under the prior's digest), so runs of other folds or fractions share every file of this cache and none reads
a choice made from another run's labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sampref_bench.prompts.label_prior import LabelPrior, choose_component
from sampref_bench.prompts.regions import (
    connected_components,
    crf_mask,
    interior_points,
    largest_component,
    mask_box,
    valid_box,
)
from sampref_bench.prompts.saliency import SaliencySource, build_saliency
from sampref_bench.utilities.atomic import atomic_write, load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.hashing import digest, image_key

#: Version of the stored prompt content; part of every key.
PROMPT_FORMAT = 1
Triple = tuple[str, int, int]


@dataclass(frozen=True)
class VisualPrompt:
    """The visual prompt of one (case, slice, label), in preprocessed pixels.

    ``box``: (4,) float32 ``x0, y0, x1, y1``; ``points``: (P, 2) float32 ``x, y`` (positive points);
    ``saliency``: (S, S) float32 in [0, 1]; ``mask``: (S, S) bool (a CRF component: the largest, or the one a
    label prior chose); ``empty``: True when the saliency found nothing and the box is the whole valid image.
    """

    box: np.ndarray
    points: np.ndarray
    saliency: np.ndarray
    mask: np.ndarray
    empty: bool


class PromptStore:
    """Computes and caches the prompts of a dataset for one set of prompt settings.

    Args:
        data: a :class:`~sampref_bench.planners.data.PreprocessedData` (label-free).
        settings: the plan's ``prompts`` dict with any overrides (see :mod:`.settings`).
        clip_path: local BiomedCLIP directory (``saliency=biomedclip``), else ``$SAMPREF_BIOMEDCLIP``.
        medvint_path: local MedVInT directory (``vqa=medvint``), else ``$SAMPREF_MEDVINT``.
        warn: where warnings go (LLM fallbacks).
    """

    def __init__(self, data: Any, settings: dict[str, Any], clip_path: str | None = None,
                 medvint_path: str | None = None, warn: Any = print) -> None:
        self.data = data
        self.settings = settings
        self.clip_path = clip_path
        self.medvint_path = medvint_path
        self.warn = warn
        self.root = Path(data.data_dir).parent / "prompts"
        plans = data.plans
        self.label_names = {int(v): k for k, v in plans["labels"].items() if int(v) != 0}
        texts = plans.get("target_text") or {}
        self.target_text = {v: texts.get(name) or name.replace("_", " ") for v, name in self.label_names.items()}
        self._saliency: SaliencySource | None = None
        self._vqa: Any = None
        self._llm: dict[int, dict[str, Any]] | None = None
        self.computed = 0
        #: Run-time choices of ``component_choice="label_prior"`` by (prior digest, case, slice, label): the
        #: component number, its box and points (never written to disk).
        self._chosen: dict[tuple[str, str, int, int], tuple[int, np.ndarray, np.ndarray]] = {}
        self._chosen_vqa: dict[tuple[str, str, int, int], dict[str, Any]] = {}

    # -------------------------------------------------------------- sources
    @property
    def saliency_source(self) -> SaliencySource:
        """The saliency source (built on first use: BiomedCLIP loads its weights then)."""
        if self._saliency is None:
            self._saliency = build_saliency(self.settings, self.clip_path)
        return self._saliency

    def visual_key(self) -> str:
        """The key of the visual prompts: saliency settings (weights included), CRF, points, format."""
        return digest([PROMPT_FORMAT, self.saliency_source.settings(), self.settings["crf"], self.settings["points"]],
                      12)

    @property
    def visual_folder(self) -> Path:
        """Folder of the visual prompts of these settings."""
        return self.root / f"{self.settings['saliency']}-{self.visual_key()}"

    def vqa_backend(self) -> Any:
        """``None`` for the weights-free mask backend, else the loaded MedVInT backend."""
        if self.settings["vqa"] == "mask":
            return None
        if self.settings["vqa"] != "medvint":
            raise SamprefError(f"unknown VQA backend {self.settings['vqa']!r}; choose mask or medvint")
        if self._vqa is None:
            from sampref_bench.prompts.vqa import MedVInTBackend

            self._vqa = MedVInTBackend(self.medvint_path)
        return self._vqa

    @property
    def vqa_folder(self) -> Path:
        """Folder of the VQA answers of these settings."""
        backend = self.vqa_backend()
        key = digest([PROMPT_FORMAT, "mask", self.visual_key()] if backend is None
                     else [PROMPT_FORMAT, "medvint", backend.weights_id], 12)
        return self.root / f"vqa-{self.settings['vqa']}-{key}"

    # ---------------------------------------------------------------- files
    def _name(self, case: str, slice_index: int, label: int) -> str:
        return f"{case}_{int(slice_index):04d}_l{int(label)}_{image_key(self.data, case)}"

    def visual_path(self, case: str, slice_index: int, label: int) -> Path:
        """File of one visual prompt."""
        return self.visual_folder / f"{self._name(case, slice_index, label)}.npz"

    def vqa_path(self, case: str, slice_index: int, label: int) -> Path:
        """File of one VQA answer set."""
        return self.vqa_folder / f"{self._name(case, slice_index, label)}.json"

    @property
    def wants_components(self) -> bool:
        """Whether these settings choose a label's component by a prior (``component_choice="label_prior"``), so
        :meth:`ensure` also caches the candidate components."""
        return self.settings.get("component_choice") == "label_prior"

    def components_path(self, case: str, slice_index: int, label: int) -> Path:
        """File of the candidate components of one (case, slice), or of one label with a text-driven source."""
        if self.saliency_source.text_driven:
            name = self._name(case, slice_index, label)
        else:
            name = f"{case}_{int(slice_index):04d}_{image_key(self.data, case)}"
        return self.visual_folder / "components" / f"{name}.npz"

    def valid_region(self, case: str) -> tuple[int, int]:
        """``(h, w)`` of the unpadded image inside the preprocessed square (top-left)."""
        resized = self.data.meta(case)["transform"]["resized"]
        return int(resized[0]), int(resized[1])

    # -------------------------------------------------------------- compute
    def _compute_visual(self, case: str, slice_index: int, labels: list[int], visual: bool = True,
                        components: bool = False) -> None:
        """Write the visual prompts (``visual``) and the candidate components (``components``) of ``labels`` on one
        slice; the saliency and CRF run once per slice (per label text with a text-driven source)."""
        image = self.data.rgb(case, [slice_index])[0]
        size = image.shape[-1]
        h, w = self.valid_region(case)
        crop = image[:, :h, :w]
        rgb_u8 = np.ascontiguousarray((np.clip(crop.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8))
        results: dict[str, tuple] = {}
        for label in labels:
            text = self.target_text[label]
            key = text if self.saliency_source.text_driven else ""
            if key not in results:
                sal = self.saliency_source(crop, text)
                crf = crf_mask(rgb_u8, sal, self.settings["crf"]) if sal.max() > 0 else None
                results[key] = (sal, None if crf is None else largest_component(crf), crf)
            sal, mask, crf = results[key]
            if components:
                full_crf = np.zeros((size, size), bool)
                if crf is not None:
                    full_crf[:h, :w] = crf
                path = self.components_path(case, slice_index, label)
                if not path.is_file():
                    atomic_write(path, lambda handle, m=full_crf: np.savez_compressed(
                        handle, crf=np.packbits(m), size=np.array(size)))
            if not visual:
                continue
            empty = mask is None or not mask.any()
            full_sal = np.zeros((size, size), np.float32)
            full_sal[:h, :w] = sal
            full_mask = np.zeros((size, size), bool)
            if not empty:
                full_mask[:h, :w] = mask
            box = valid_box((h, w)) if empty else mask_box(full_mask)
            points = interior_points(full_mask if not empty else _valid_mask(size, h, w), int(self.settings["points"]))
            arrays = {"box": box, "points": points, "saliency": full_sal.astype(np.float16),
                      "mask": np.packbits(full_mask), "empty": np.array(empty)}
            atomic_write(self.visual_path(case, slice_index, label),
                         lambda handle, a=arrays: np.savez_compressed(handle, **a))
            self.computed += 1

    def components(self, case: str, slice_index: int, label: int) -> tuple[np.ndarray, int]:
        """The candidate components of one (case, slice, label): an ``(S, S)`` int32 map (0 outside the CRF mask,
        components ``1..n`` in raster order, :func:`~.regions.connected_components`) and ``n`` (0 when the saliency
        found nothing); computed and cached (label-free) if missing."""
        path = self.components_path(case, slice_index, label)
        if not path.is_file():
            self._compute_visual(case, slice_index, [label], visual=False, components=True)
        with np.load(path, allow_pickle=False) as z:
            size = int(z["size"])
            crf = np.unpackbits(z["crf"])[:size * size].reshape(size, size).astype(bool)
        return connected_components(crf)

    def _cached_visual(self, case: str, slice_index: int, label: int) -> VisualPrompt:
        path = self.visual_path(case, slice_index, label)
        if not path.is_file():
            self._compute_visual(case, slice_index, [label], components=self.wants_components)
        with np.load(path, allow_pickle=False) as z:
            saliency = z["saliency"].astype(np.float32)
            mask = np.unpackbits(z["mask"])[:saliency.size].reshape(saliency.shape).astype(bool)
            return VisualPrompt(box=z["box"].astype(np.float32), points=z["points"].astype(np.float32),
                                saliency=saliency, mask=mask, empty=bool(z["empty"]))

    def visual(self, case: str, slice_index: int, label: int, prior: LabelPrior | None = None) -> VisualPrompt:
        """The visual prompt of one (case, slice, label), computed if missing.

        ``prior`` ``None``: the cached prompt (the largest CRF component). With a :class:`~.label_prior.LabelPrior`
        the label's own component is chosen at run time (:func:`~.label_prior.choose_component`) and the box
        (4,), points (P, 2) and mask (S, S) are those of that component; nothing of the choice is written to disk.
        An empty saliency gives the cached whole-image prompt either way.
        """
        cached = self._cached_visual(case, slice_index, label)
        if prior is None or cached.empty:
            return cached
        index, box, points = self._choose(case, slice_index, label, prior)
        components, _ = self.components(case, slice_index, label)
        return VisualPrompt(box=box, points=points, saliency=cached.saliency, mask=components == index, empty=False)

    def box_and_points(self, case: str, slice_index: int, label: int,
                       prior: LabelPrior | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(4,)`` box and ``(P, 2)`` points of :meth:`visual` (same ``prior``), without loading the saliency map
        once a prior's choice is memoised (what a trainer's batches read)."""
        if prior is None:
            cached = self._cached_visual(case, slice_index, label)
            return cached.box, cached.points
        _, box, points = self._choose(case, slice_index, label, prior)
        return box, points

    def _choose(self, case: str, slice_index: int, label: int, prior: LabelPrior) -> tuple[int, np.ndarray, np.ndarray]:
        """The chosen component's number (0: no component, the cached whole-image prompt), ``(4,)`` box and
        ``(P, 2)`` points, memoised under the prior's digest."""
        key = (prior.digest(), case, int(slice_index), int(label))
        if key not in self._chosen:
            components, n = self.components(case, slice_index, label)
            if n == 0:
                cached = self._cached_visual(case, slice_index, label)
                self._chosen[key] = (0, cached.box, cached.points)
                return self._chosen[key]
            index = choose_component(components, n, self.valid_region(case), prior.map(label))
            mask = components == index
            box = mask_box(mask)
            assert box is not None  # a component numbered 1..n has pixels
            self._chosen[key] = (index, box, interior_points(mask, int(self.settings["points"])))
        return self._chosen[key]

    def vqa(self, case: str, slice_index: int, label: int, prior: LabelPrior | None = None) -> dict[str, Any]:
        """``{"answers": {question: answer}, "text": sentence}`` of one (case, slice, label), computed if missing.

        With a ``prior`` and the weights-free ``mask`` backend the answers describe the label's chosen component
        (:meth:`visual` with that prior), computed at run time and memoised in memory, never cached on disk; a
        model backend (MedVInT) reads the image and text only, so its cached answers serve every prior.
        """
        from sampref_bench.prompts.vqa import answers_to_text, mask_answers

        if prior is not None and self.vqa_backend() is None:
            key = (prior.digest(), case, int(slice_index), int(label))
            if key not in self._chosen_vqa:
                answers = mask_answers(self.visual(case, slice_index, label, prior).mask,
                                       valid=self.valid_region(case))
                self._chosen_vqa[key] = {"answers": answers, "text": answers_to_text(answers, self.target_text[label])}
            return self._chosen_vqa[key]
        path = self.vqa_path(case, slice_index, label)
        if path.is_file():
            return load_json(path)
        backend = self.vqa_backend()
        h, w = self.valid_region(case)
        if backend is None:
            answers = mask_answers(self.visual(case, slice_index, label).mask, valid=(h, w))
        else:
            answers = backend.answers(self.data.rgb(case, [slice_index])[0][:, :h, :w], self.target_text[label])
        record = {"answers": answers, "text": answers_to_text(answers, self.target_text[label])}
        write_json_atomic(path, record)
        self.computed += 1
        return record

    def llm(self, label: int) -> dict[str, Any]:
        """``{"text", "source", ...}``: the LLM description of a label's target (asked once, then cached)."""
        if self._llm is None:
            from sampref_bench.prompts.llm_text import LLMSettings, describe_targets

            names = {self.label_names[v]: self.target_text[v] for v in self.label_names}
            answers = describe_targets(names, str(self.data.plans.get("modality", "")), self.root,
                                       LLMSettings(model=str(self.settings["llm_model"]),
                                                   base_url=self.settings.get("llm_base_url")), warn=self.warn)
            self._llm = {v: answers[name] for v, name in self.label_names.items()}
        return self._llm[label]

    def ensure(self, triples: Iterable[Triple], sources: Iterable[str] = ("saliency", "vqa", "llm"),
               progress: bool = True) -> int:
        """Compute every missing prompt of ``triples`` for ``sources``; return how many files were written (visual
        prompts and VQA answers; the candidate components that ``component_choice="label_prior"`` settings also
        cache are not counted)."""
        sources = set(sources)
        unknown = sources - {"saliency", "vqa", "llm"}
        if unknown:
            raise SamprefError(f"unknown prompt source(s) {sorted(unknown)}; choose from saliency, vqa, llm")
        triples = list(dict.fromkeys((c, int(k), int(v)) for c, k, v in triples))
        before = self.computed
        if "llm" in sources:
            for label in sorted({v for _, _, v in triples}):
                self.llm(label)
        todo_visual: dict[tuple[str, int], list[int]] = {}
        todo_components: dict[tuple[str, int], list[int]] = {}
        if sources & {"saliency", "vqa"}:
            for case, k, v in triples:
                if not self.visual_path(case, k, v).is_file():
                    todo_visual.setdefault((case, k), []).append(v)
                elif self.wants_components and not self.components_path(case, k, v).is_file():
                    todo_components.setdefault((case, k), []).append(v)
        todo_vqa = [t for t in triples if "vqa" in sources and not self.vqa_path(*t).is_file()]
        visual_missing = sum(len(labels) for labels in todo_visual.values())
        total = len(todo_visual) + len(todo_components) + len(todo_vqa)
        with tqdm(total=total, desc=f"prompts ({self.settings['saliency']})", unit="item",
                  disable=not progress or not total) as bar:
            for (case, k), labels in todo_visual.items():
                self._compute_visual(case, k, labels, components=self.wants_components)
                bar.update(1)
            for (case, k), labels in todo_components.items():
                self._compute_visual(case, k, labels, visual=False, components=True)
                bar.update(1)
            for triple in todo_vqa:
                self.vqa(*triple)
                bar.update(1)
        new = self.computed - before
        if progress and triples:
            parts = []
            if sources & {"saliency", "vqa"}:
                parts.append(f"box prompts: {visual_missing} computed, {len(triples) - visual_missing} read from the "
                             "cache")
            if "vqa" in sources:
                parts.append(f"VQA answers: {len(todo_vqa)} computed, {len(triples) - len(todo_vqa)} read from "
                             "the cache")
            print(f"prompt cache {self.root}: {len(triples)} (case, slice, label) prompts; " + "; ".join(parts),
                  flush=True)
        return new


def _valid_mask(size: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[:h, :w] = True
    return mask
