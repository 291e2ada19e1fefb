"""Image-specific text about the target ("VQA text") for the unsupervised prompt pipeline.

Konwer et al. 2025 (sec. 3.1) ask a medical VQA model about the target's shape and location in each
image and hand the answers to SAM as text. Two backends answer the same five questions
(:data:`QUESTIONS`) with a ``dict[str, str]``:

* :func:`mask_answers`: no weights; measures the binary saliency/CRF mask that also gives the box.
* :class:`MedVInTBackend`: a VQA model from a local directory, for users who have such weights.

:func:`answers_to_text` turns either backend's answers into one English sentence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sampref_bench.utilities.errors import SamprefError

#: The questions both backends answer, in this order: horizontal side, quadrant, relative size,
#: roundness of the outline, number of separate regions.
QUESTIONS = ("side", "quadrant", "size", "shape", "count")

#: The answer to every question when the mask has no foreground pixel.
NO_REGION = "no region found"

#: Size thresholds (area fraction of the valid image region): below SMALL -> "small", below MEDIUM -> "medium".
SMALL_FRACTION = 0.02
MEDIUM_FRACTION = 0.10
#: Below this eccentricity of the moment ellipse (minor/major axis ratio above ~0.71) an outline is "round".
ROUND_ECCENTRICITY = 0.7
#: Below this ratio of the region's circularity to that of its moment ellipse an outline is "irregular".
IRREGULAR_RATIO = 0.75

#: Environment variable naming the local MedVInT / VQA model directory.
ENV_MEDVINT = "SAMPREF_MEDVINT"

#: The fixed English question asked of a VQA model for each entry of QUESTIONS; ``{target}`` is the target text.
VQA_QUESTIONS = {
    "side": "Is the {target} on the left side, the right side or in the center of the image?",
    "quadrant": "In which quadrant of the image is the {target}: upper left, upper right, lower left or lower right?",
    "size": "Is the {target} small, medium or large compared with the image?",
    "shape": "Is the shape of the {target} round, oval or irregular?",
    "count": "How many separate {target} regions are in the image?",
}

_COUNT_WORDS = {1: "one region", 2: "two regions"}
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def mask_answers(mask: np.ndarray, valid: tuple[int, int] | None = None) -> dict[str, str]:
    """Answer :data:`QUESTIONS` from a binary ``(H, W)`` mask, without any model.

    ``valid`` = ``(h, w)`` pixels of the unpadded image at the top left (images are padded at the
    bottom/right); only ``mask[:h, :w]`` is used and positions and sizes are relative to it.
    Default: the whole mask.

    * side: the foreground centroid's x in the left third -> "left", right third -> "right",
      middle third -> "center".
    * quadrant: "upper"/"lower" by the centroid's y against h/2, "left"/"right" by x against w/2,
      e.g. "upper left".
    * size: foreground area / (h * w) below 2 % -> "small", below 10 % -> "medium", else "large".
    * shape (of the largest 8-connected region): circularity ``4*pi*area/perimeter**2`` (scikit-image
      ``regionprops`` perimeter) divided by the circularity of the ellipse with the region's moments;
      below 0.75 -> "irregular" (a boundary much longer than a smooth outline of that elongation),
      else eccentricity below 0.7 -> "round", else "oval".
    * count: number of 8-connected regions: "one region", "two regions", "several regions".

    An empty mask answers :data:`NO_REGION` to every question.
    """
    from skimage import measure

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise SamprefError(f"mask_answers expects a (H, W) mask, got shape {mask.shape}.")
    h, w = mask.shape if valid is None else (int(valid[0]), int(valid[1]))
    if not (0 < h <= mask.shape[0] and 0 < w <= mask.shape[1]):
        raise SamprefError(f"valid region {valid} does not fit in the mask of shape {mask.shape}.")
    fg = mask[:h, :w] > 0
    if not fg.any():
        return dict.fromkeys(QUESTIONS, NO_REGION)

    ys, xs = np.nonzero(fg)
    cx = (xs.mean() + 0.5) / w  # pixel centres, as a fraction of the valid width
    cy = (ys.mean() + 0.5) / h
    side = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    quadrant = f"{'upper' if cy < 0.5 else 'lower'} {'left' if cx < 0.5 else 'right'}"

    fraction = fg.sum() / float(h * w)
    size = "small" if fraction < SMALL_FRACTION else "medium" if fraction < MEDIUM_FRACTION else "large"

    labels = measure.label(fg, connectivity=2)
    regions = measure.regionprops(labels)
    largest = max(regions, key=lambda region: region.area)
    count = _COUNT_WORDS.get(len(regions), "several regions")

    return {"side": side, "quadrant": quadrant, "size": size, "shape": _shape_word(largest), "count": count}


def _shape_word(region: Any) -> str:
    """'round' / 'oval' / 'irregular' for one skimage region (see :func:`mask_answers`)."""
    eccentricity = float(region.eccentricity)
    perimeter = float(region.perimeter)
    expected = _ellipse_circularity(eccentricity)
    if perimeter > 0 and expected > 0:  # a one-pixel-wide line (eccentricity 1) is simply elongated
        circularity = 4 * math.pi * float(region.area) / perimeter**2
        if circularity / expected < IRREGULAR_RATIO:
            return "irregular"
    return "round" if eccentricity < ROUND_ECCENTRICITY else "oval"


def _ellipse_circularity(eccentricity: float) -> float:
    """4*pi*area/perimeter**2 of an ellipse with this eccentricity (Ramanujan's perimeter); 1 for a circle."""
    a, b = 1.0, math.sqrt(max(0.0, 1.0 - eccentricity**2))
    if b == 0:
        return 0.0
    t = ((a - b) / (a + b)) ** 2
    perimeter = math.pi * (a + b) * (1 + 3 * t / (10 + math.sqrt(4 - 3 * t)))
    return 4 * math.pi * (math.pi * a * b) / perimeter**2


def answers_to_text(answers: dict[str, str], target_text: str) -> str:
    """One English sentence about ``target_text`` holding every answer of :data:`QUESTIONS`.

    Answers in :func:`mask_answers`' vocabulary read e.g. "a round, small breast tumor in the upper
    left quadrant, on the left side, one region"; free-text answers (a VQA model) are listed as
    "breast tumor, side: ..., quadrant: ..., size: ..., shape: ..., count: ...".
    """
    missing = [q for q in QUESTIONS if q not in answers]
    if missing:
        raise SamprefError(f"answers_to_text needs an answer for each of {QUESTIONS}; missing {missing}.")
    target = " ".join(target_text.split())
    got = {q: " ".join(str(answers[q]).split()) or "unknown" for q in QUESTIONS}
    if all(got[q] == NO_REGION for q in QUESTIONS):
        return f"{target}: {NO_REGION}"
    if _is_mask_vocabulary(got):
        where = "centered horizontally" if got["side"] == "center" else f"on the {got['side']} side"
        article = "an" if got["shape"][:1] in "aeiou" else "a"
        return (f"{article} {got['shape']}, {got['size']} {target} in the {got['quadrant']} quadrant, {where}, "
                f"{got['count']}")
    return f"{target}, " + ", ".join(f"{q}: {got[q]}" for q in QUESTIONS)


def _is_mask_vocabulary(answers: dict[str, str]) -> bool:
    vocab = {
        "side": {"left", "right", "center"},
        "quadrant": {f"{v} {h}" for v in ("upper", "lower") for h in ("left", "right")},
        "size": {"small", "medium", "large"},
        "shape": {"round", "oval", "irregular"},
        "count": {"one region", "two regions", "several regions"},
    }
    return all(answers[q] in vocab[q] for q in QUESTIONS)


class MedVInTBackend:
    """VQA answers from a model in a local directory (meant for MedVInT, Zhang et al. 2023, PMC-VQA).

    Assumption, stated plainly: MedVInT's released code is custom (PMC-LLaMA plus a vision encoder)
    and is not a transformers model. This backend loads any directory that transformers itself can
    load as a visual-question-answering model (``AutoModelForVisualQuestionAnswering``: BLIP, BLIP-2,
    ViLT) or an image-text-to-text model (``AutoModelForImageTextToText``), with its processor
    (``AutoProcessor``), using ``local_files_only=True`` and no remote code; nothing is downloaded.
    Users with MedVInT weights need them converted to such a directory.

    ``path``: the directory, else env ``SAMPREF_MEDVINT``. It must hold ``config.json``, weights
    (``*.safetensors`` or ``pytorch_model*.bin``) and the processor/tokenizer files.

    Each entry of :data:`QUESTIONS` is asked as the fixed English question in :data:`VQA_QUESTIONS`
    (greedy decoding, at most 16 new tokens; classifier heads such as ViLT's answer their top label).

    ``weights_id``: ``"vqa-<directory name>-<12 hex>"``, the hex a SHA-256 of ``config.json`` and the
    weight files' names and sizes (not their bytes, which can be many GB).
    """

    max_new_tokens = 16

    def __init__(self, path: str | Path | None = None, device: str = "cpu") -> None:
        self.path = _resolve_model_dir(path)
        self.device = device
        self.weights_id = _weights_id(self.path)
        self.processor, self.model = _load_vqa_model(self.path, device)

    def answers(self, image01: np.ndarray, target_text: str) -> dict[str, str]:
        """Answer :data:`QUESTIONS` about ``target_text`` in ``image01`` ((3, H, W) float in [0, 1]).

        Answers are the model's decoded text with whitespace collapsed and a trailing period removed
        ("unknown" when it produced nothing).
        """
        image = _to_pil(image01)
        target = " ".join(target_text.split())
        return {q: self._ask(image, VQA_QUESTIONS[q].format(target=target)) for q in QUESTIONS}

    def _ask(self, image: Any, question: str) -> str:
        import torch

        processor, model = self.processor, self.model
        prompt = question
        if getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            if model.can_generate():
                out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
                prompt_ids = inputs.get("input_ids")
                n = 0 if prompt_ids is None else prompt_ids.shape[1]
                if n and out.shape[1] >= n and torch.equal(out[0, :n].cpu(), prompt_ids[0].cpu()):
                    out = out[:, n:]  # decoder-only models return the prompt before the answer
                decode = getattr(processor, "batch_decode", None) or processor.tokenizer.batch_decode
                text = decode(out, skip_special_tokens=True)[0]
            else:
                logits = model(**inputs).logits
                text = str(model.config.id2label[int(logits[0].argmax())])
        text = " ".join(text.split()).rstrip(".").strip()
        return text or "unknown"


def _resolve_model_dir(path: str | Path | None) -> Path:
    hint = (
        f"pass the MedVInT/VQA model directory (the `path` argument or the medvint path option) or set "
        f"{ENV_MEDVINT}; it must hold config.json, weights (*.safetensors or pytorch_model*.bin) and the "
        "processor/tokenizer files of a transformers VQA or image-text-to-text model"
    )
    if path is None or str(path) == "":
        env = os.environ.get(ENV_MEDVINT)
        if not env:
            raise SamprefError(f"No MedVInT model directory given: {hint}.")
        path = env
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SamprefError(f"MedVInT model directory {folder} does not exist or is not a folder: {hint}.")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if missing:
        raise SamprefError(f"MedVInT model directory {folder} lacks {' and '.join(missing)}: {hint}.")
    return folder


def _weights_id(folder: Path) -> str:
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    weights = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern)})
    digest.update(json.dumps([(p.name, p.stat().st_size) for p in weights]).encode("utf-8"))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name) or "model"
    return f"vqa-{name}-{digest.hexdigest()[:12]}"


def _load_vqa_model(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoModelForVisualQuestionAnswering,
        AutoProcessor,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        auto = (
            AutoModelForVisualQuestionAnswering
            if config.model_type in MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES
            else AutoModelForImageTextToText
        )
        model = auto.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise SamprefError(
            f"Could not load a VQA model from {folder} ({type(err).__name__}: {err}). The folder must be a "
            f"transformers VQA or image-text-to-text model with its processor, saved locally; set {ENV_MEDVINT} "
            "or the medvint path option to such a folder."
        ) from err
    model.to(device).eval()
    return processor, model


def _to_pil(image01: np.ndarray) -> Any:
    from PIL import Image

    image = np.asarray(image01, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise SamprefError(f"MedVInTBackend.answers expects a (3, H, W) image in [0, 1], got shape {image.shape}.")
    if not np.isfinite(image).all():
        raise SamprefError("MedVInTBackend.answers got an image with NaN or infinite values.")
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
