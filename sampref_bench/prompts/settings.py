"""Planned prompt settings: which saliency source, CRF, points, VQA and text encoder a dataset's prompts use.

``plans.json`` holds them under ``"prompts"`` (with a reason, like every planned value); a trainer may override
any of them by name (``--set saliency=biomedclip``). Every planned value here is part of the key of the cache that
holds its results (:mod:`sampref_bench.prompts.store`), so changing one never reads a stale prompt.

``component_choice`` is the exception, on purpose: it is not planned and not in any cache key. It says how a label's
region is picked among the CRF mask's components, the largest (``"saliency"``, every label of a slice the same) or
the best match of a location prior learned from the run's labeled cases (``"label_prior"``,
:mod:`sampref_bench.prompts.label_prior`). The components are cached label-free and the choice is made at run time,
so the cache is shared by both. Left unset it is resolved from the plan's labels (:func:`default_component_choice`):
``"label_prior"`` with two or more foreground labels, ``"saliency"`` (the behaviour from before the setting existed)
with one, so a single-label dataset such as BUSI keeps its prompts.
"""

from __future__ import annotations

import copy
from typing import Any

from sampref_bench.prompts.label_prior import COMPONENT_CHOICES

#: Saliency sources by name: the weights-free default and the text-driven BiomedCLIP + gScoreCAM source.
SALIENCY_SOURCES = ("dark-basin", "bright-dome", "basin-dome", "biomedclip")

#: Dense-CRF parameters (Kraehenbuehl & Koltun, NeurIPS 2011): a Gaussian smoothness kernel and a bilateral
#: appearance kernel, ``sxy`` in pixels of the 256 px preprocessed image and ``srgb`` in 0-255 intensity units.
#: The unary is ``-log p`` with ``p = sigmoid((saliency - threshold) / softness)``. Chosen on BUSI fold 0's
#: training cases (120 images, never a validation case) among 38 settings: box IoU 0.335 and box centre inside
#: the lesion 66 %, against 0.314 / 63 % for thresholding the saliency at 0.3 without a CRF and 0.135-0.24 for
#: a unary proportional to the raw saliency (which the bilateral term then erased in 23-85 % of the images).
DEFAULT_CRF: dict[str, Any] = {
    "iterations": 5,
    "threshold": 0.2, "softness": 0.05,
    "gaussian_sxy": 3.0, "gaussian_compat": 1.0,
    "bilateral_sxy": 40.0, "bilateral_srgb": 13.0, "bilateral_compat": 3.0,
}

DEFAULT_PROMPTS: dict[str, Any] = {
    "saliency": "dark-basin",
    "smoothing_sigma": 3.0,
    "gscorecam_topk": 300,
    "gscorecam_layer": None,
    "crf": DEFAULT_CRF,
    "points": 1,
    "vqa": "mask",
    "llm_model": "gpt-4o-mini",
    "llm_base_url": None,
    "text_encoder": "auto",
}


def default_prompt_settings(modality: str) -> tuple[dict[str, Any], str]:
    """The planned prompt settings of a dataset of ``modality`` and the reason for them.

    No CLIP weights are needed by the default: the saliency is the weights-free dark-basin depth
    (:func:`~sampref_bench.prompts.saliency.basin_saliency`), which finds dark regions enclosed by brighter
    tissue (hypoechoic lesions in ultrasound); other modalities default to the deeper of dark basins and
    bright domes. ``--set saliency=biomedclip`` (with the weights) switches to BiomedCLIP + gScoreCAM.
    """
    settings = copy.deepcopy(DEFAULT_PROMPTS)
    if modality.upper() not in ("US", "ULTRASOUND"):
        settings["saliency"] = "basin-dome"
    reason = (f"weights-free saliency {settings['saliency']!r} (grayscale hole filling by morphological "
              "reconstruction, Soille 1999), dense CRF refinement, largest component -> box and "
              f"{settings['points']} interior point(s); VQA text answered from the saliency mask; LLM text from "
              "the chat endpoint when OPENAI_API_KEY is set, else dataset.json's target_text; text encoder: "
              "BiomedCLIP's text tower with BiomedCLIP saliency, else MiniLM")
    return settings, reason


#: Prompt settings a trainer or ``sampref_prompts`` may override by name.
OVERRIDABLE = ("saliency", "gscorecam_topk", "gscorecam_layer", "points", "vqa", "llm_model", "llm_base_url",
               "text_encoder", "component_choice")


def default_component_choice(plans: dict[str, Any]) -> str:
    """``"label_prior"`` for a plan with two or more foreground labels, else ``"saliency"`` (one label: the largest
    component, as before ``component_choice`` existed)."""
    foreground = [v for v in (plans.get("labels") or {}).values() if int(v) != 0]
    return "label_prior" if len(foreground) >= 2 else "saliency"


def resolve_prompt_settings(plans: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan's ``prompts`` settings with ``overrides`` (``None`` values keep the plan's); ``component_choice``,
    when neither planned nor overridden, is :func:`default_component_choice` of the plan's labels."""
    from sampref_bench.utilities.errors import SamprefError

    planned = plans.get("prompts")
    if planned is None:
        raise SamprefError(f"plans.json of {plans.get('dataset_name')} has no prompt settings (it predates them): "
                           f"rerun `sampref_plan -d {plans.get('dataset_name')}`")
    unknown = sorted(set(overrides or {}) - set(OVERRIDABLE))
    if unknown:
        raise SamprefError(f"unknown prompt setting(s) {unknown}; known: {', '.join(OVERRIDABLE)}")
    if (overrides or {}).get("saliency") not in (None, *SALIENCY_SOURCES):
        raise SamprefError(f"unknown saliency source {overrides['saliency']!r}; choose one of "
                           f"{', '.join(SALIENCY_SOURCES)}")
    if (overrides or {}).get("component_choice") not in (None, *COMPONENT_CHOICES):
        raise SamprefError(f"unknown component_choice {overrides['component_choice']!r}; choose one of "
                           f"{', '.join(COMPONENT_CHOICES)}")
    settings = {**copy.deepcopy(planned), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if settings.get("component_choice") is None:
        settings["component_choice"] = default_component_choice(plans)
    return settings
