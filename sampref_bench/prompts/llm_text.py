"""Generic target descriptions from a chat LLM, the "LLM text" prompt of the unsupervised pipeline.

Konwer et al. 2025 (sec. 3.1) pair each saliency box with a text that an LLM wrote about the target
class (e.g. what a "breast tumor" looks like in ultrasound). This module asks an OpenAI-compatible
chat-completions endpoint for that text once per (target text, modality) and caches the answer.

Only the dataset's target text and the modality name are ever sent; no image, path or patient data.
Endpoint problems never stop a run: after the retries the dataset's own target text is used and a
warning says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sampref_bench.utilities.atomic import load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError

DEFAULT_MODEL = "gpt-4o-mini"
ENV_KEY = "OPENAI_API_KEY"
ENV_BASE_URL = "OPENAI_BASE_URL"
#: The openai client's own default endpoint, used when neither the settings nor the environment name one.
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Bumped whenever :func:`question_for` changes wording, so old cached answers are not reused.
TEMPLATE_VERSION = 1

_SYSTEM_TEXT = (
    "You are a radiologist writing short, generic descriptions of how anatomical structures and lesions "
    "appear in medical images. Answer with one or two plain sentences, no lists and no diagnosis."
)
_USER_TEMPLATE = (
    "In one or two sentences, describe what a {target} typically looks like in {modality} images: "
    "its usual shape, margins, brightness relative to the surrounding tissue and typical size."
)


@dataclass
class LLMSettings:
    """Which endpoint and model answer, and how hard to try.

    ``base_url`` None means the ``OPENAI_BASE_URL`` environment variable, else the openai default.
    Between tries the client sleeps ``backoff_s * 2**attempt`` seconds (attempt 0, 1, ...); a request
    is tried ``1 + retries`` times in all and each try waits at most ``timeout_s`` seconds.
    """

    model: str = DEFAULT_MODEL
    base_url: str | None = None
    temperature: float = 0.0
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.model:
            raise SamprefError("LLMSettings.model is empty; name the chat model to ask (e.g. gpt-4o-mini).")
        if self.retries < 0:
            raise SamprefError(f"LLMSettings.retries must be >= 0, got {self.retries}.")
        if self.backoff_s < 0:
            raise SamprefError(f"LLMSettings.backoff_s must be >= 0 seconds, got {self.backoff_s}.")
        if self.timeout_s <= 0:
            raise SamprefError(f"LLMSettings.timeout_s must be > 0 seconds, got {self.timeout_s}.")

    def resolved_base_url(self) -> str:
        """The endpoint actually used: ``base_url``, else env ``OPENAI_BASE_URL``, else the openai default."""
        url = self.base_url or os.environ.get(ENV_BASE_URL) or OPENAI_DEFAULT_BASE_URL
        return url.rstrip("/")

    def key(self) -> str:
        """12 hex characters identifying (model, resolved endpoint, temperature, template version).

        Names the answer cache file; it is not the API key and contains no secret.
        """
        blob = json.dumps([self.model, self.resolved_base_url(), float(self.temperature), TEMPLATE_VERSION])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def question_for(target_text: str, modality: str) -> list[dict]:
    """The chat messages asking for a generic visual description of ``target_text`` in ``modality``.

    A fixed template; the only variable parts are the two given strings.
    """
    return [
        {"role": "system", "content": _SYSTEM_TEXT},
        {"role": "user", "content": _USER_TEMPLATE.format(target=target_text.strip(), modality=modality.strip())},
    ]


def describe_targets(
    targets: dict[str, str],
    modality: str,
    cache_dir: Path,
    settings: LLMSettings | None = None,
    api_key: str | None = None,
    warn: Callable[[str], None] = print,
) -> dict[str, dict]:
    """A generic description of each target, from the cache or the LLM, else the dataset's own text.

    ``targets`` maps label name -> target text (from dataset.json). Returns label name ->
    ``{"text": str, "source": "llm" | "cache" | "dataset_text", "model": str | None}`` in the order
    of ``targets``; ``model`` is None for ``dataset_text``.

    Cache: ``cache_dir / f"llm_{settings.key()}.json"`` holds ``{"settings": {...}, "answers":
    {modality: {target_text: answer}}}`` (answers are per modality because the question names it).
    A cached answer is returned without any request, with or without an API key. Only real LLM answers
    are cached; the file is rewritten atomically after each new answer.

    API key: ``api_key``, else env ``OPENAI_API_KEY``. Without one, uncached targets get their dataset
    text and one warning says so. Endpoint failures (connection, timeout, HTTP error, empty answer) are
    tried ``1 + settings.retries`` times with exponential backoff, then the target gets its dataset text
    and a warning naming the endpoint and the error; endpoint problems never raise.
    """
    settings = settings or LLMSettings()
    for label, text in targets.items():
        if not isinstance(text, str) or not text.strip():
            raise SamprefError(f"Label {label!r} has an empty target text; set its text in dataset.json.")
    cache_path = Path(cache_dir) / f"llm_{settings.key()}.json"
    cache = _read_cache(cache_path, settings)
    cached = cache["answers"].setdefault(modality, {})

    results: dict[str, dict] = {}
    missing: list[str] = []
    for label, text in targets.items():
        if text in cached:
            results[label] = {"text": cached[text], "source": "cache", "model": settings.model}
        else:
            missing.append(label)
    if not missing:
        return results

    key = api_key or os.environ.get(ENV_KEY)
    if not key:
        warn(
            f"No OpenAI API key (argument or {ENV_KEY}): using the dataset's target text for "
            f"{', '.join(repr(label) for label in missing)} instead of an LLM description; "
            "this text is not cached as an LLM answer."
        )
        for label in missing:
            results[label] = _dataset_text(targets[label])
        return {label: results[label] for label in targets}

    client = _make_client(settings, key)
    endpoint = settings.resolved_base_url()
    answered: dict[str, str | None] = {}  # this call's answers per target text; None: the endpoint failed
    for label in missing:
        text = targets[label]
        if text in answered:
            answer = answered[text]
            if answer is None:
                results[label] = _dataset_text(text)
            else:
                results[label] = {"text": answer, "source": "llm", "model": settings.model}
            continue
        answer, error = _ask(client, settings, question_for(text, modality))
        answered[text] = answer
        if answer is None:
            warn(
                f"LLM endpoint {endpoint} (model {settings.model}) failed for {text!r} after "
                f"{1 + settings.retries} tries ({error}); using the dataset's target text instead."
            )
            results[label] = _dataset_text(text)
            continue
        results[label] = {"text": answer, "source": "llm", "model": settings.model}
        _store_answer(cache_path, settings, modality, text, answer)
    return {label: results[label] for label in targets}


def _dataset_text(text: str) -> dict:
    return {"text": text, "source": "dataset_text", "model": None}


def _settings_record(settings: LLMSettings) -> dict[str, Any]:
    return {
        "model": settings.model,
        "base_url": settings.resolved_base_url(),
        "temperature": float(settings.temperature),
        "template_version": TEMPLATE_VERSION,
    }


def _read_cache(path: Path, settings: LLMSettings) -> dict[str, Any]:
    """The cache file's content, or an empty cache; a file of the wrong shape is a SamprefError."""
    if not path.exists():
        return {"settings": _settings_record(settings), "answers": {}}
    data = load_json(path)
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, dict) or not all(
        isinstance(per_modality, dict) and all(isinstance(v, str) for v in per_modality.values())
        for per_modality in answers.values()
    ):
        raise SamprefError(
            f"{path} is not an LLM answer cache ({{'answers': {{modality: {{target: text}}}}}}); delete it and rerun."
        )
    return {"settings": data.get("settings", _settings_record(settings)), "answers": answers}


def _store_answer(path: Path, settings: LLMSettings, modality: str, target_text: str, answer: str) -> None:
    """Add one answer to the cache file, re-reading it first so concurrent writers lose little."""
    cache = _read_cache(path, settings)
    cache["answers"].setdefault(modality, {})[target_text] = answer
    write_json_atomic(path, cache)


def _make_client(settings: LLMSettings, api_key: str) -> Any:
    import openai

    return openai.OpenAI(
        api_key=api_key,
        base_url=settings.resolved_base_url(),
        max_retries=0,
        timeout=settings.timeout_s,
    )


def _ask(client: Any, settings: LLMSettings, messages: list[dict]) -> tuple[str | None, str]:
    """One answer text, or (None, description of the last error) after ``1 + retries`` failed tries."""
    import openai

    error = ""
    for attempt in range(1 + settings.retries):
        if attempt:
            time.sleep(settings.backoff_s * 2 ** (attempt - 1))
        try:
            response = client.chat.completions.create(
                model=settings.model, messages=messages, temperature=settings.temperature
            )
        except openai.OpenAIError as err:
            error = f"{type(err).__name__}: {_short(err)}"
            continue
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        if isinstance(content, str) and content.strip():
            return " ".join(content.split()), ""
        error = "empty answer"
    return None, error


def _short(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
