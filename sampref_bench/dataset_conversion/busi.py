"""Converting BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020) to sampref's raw format.

Two source layouts are accepted, both found by a recursive search under the source folder:

- the original release: ``benign/benign (12).png`` with ``benign/benign (12)_mask.png`` and possibly
  ``benign (12)_mask_1.png``, ``_mask_2.png``; likewise ``malignant/`` and ``normal/``;
- a split copy: ``images/benign/benign (12).png`` with ``masks/benign/benign (12)_mask.png`` ...

The class of a file is the nearest enclosing folder named ``benign``, ``malignant`` or ``normal`` (else the
prefix of its name). A mask (stem ending in ``_mask`` or ``_mask_N``) belongs to the image of the same class
and stem. All masks of one image are merged (logical OR) into label 1, ``lesion``. Case names are
``benign_0012``-style. ``normal`` images (no lesion) are added only on request, with empty labels.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sampref_bench.dataset_conversion.folder2d import (
    LUMA_NOTE,
    drop_alpha,
    load_gray_image,
    name_collisions,
    read_2d,
    single_channel,
)
from sampref_bench.dataset_conversion.sources import raise_problems, require_folder, safe_case_name
from sampref_bench.dataset_conversion.verify import VerifyReport
from sampref_bench.dataset_conversion.writer import RawDatasetWriter
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import IMAGE_2D_ENDINGS, split_ending

CLASSES = ("benign", "malignant", "normal")
REFERENCE = ("Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
             "Data in Brief 28 (2020) 104863. doi:10.1016/j.dib.2019.104863")
DESCRIPTION = ("Breast ultrasound images (BUSI; Baheya Hospital, Cairo, 2018; women aged 25-75) with manual "
               "lesion masks. The class (benign, malignant, normal) is the prefix of the case name; all "
               "masks of one image are merged into the single label 'lesion'.")
_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?$", re.IGNORECASE)
_NUMBERED_RE = re.compile(r"^\s*(?:benign|malignant|normal)\s*\(\s*(?P<number>\d+)\s*\)\s*$", re.IGNORECASE)
_PREFIX_RE = re.compile(r"^\s*(?P<cls>benign|malignant|normal)\b", re.IGNORECASE)


@dataclass
class _Item:
    """One BUSI image with its masks (``masks`` ordered by mask index)."""

    cls: str
    stem: str
    images: list[Path] = field(default_factory=list)
    masks: list[tuple[int, Path]] = field(default_factory=list)

    @property
    def case(self) -> str:
        """Output case name: ``benign_0012`` for ``benign (12)``, else ``{class}_{safe stem}``."""
        match = _NUMBERED_RE.match(self.stem)
        if match:
            return f"{self.cls}_{int(match['number']):04d}"
        return f"{self.cls}_{safe_case_name(self.stem)}"


def _class_of(relative: Path) -> str | None:
    """The class of a file from its nearest class-named folder, else from its name's prefix."""
    for part in reversed(relative.parts[:-1]):
        if part.lower() in CLASSES:
            return part.lower()
    match = _PREFIX_RE.match(relative.name)
    return match["cls"].lower() if match else None


def _scan(source: Path) -> tuple[dict[tuple[str, str], _Item], list[str]]:
    """Collect images and masks under ``source`` by (class, stem); problems for files of unknown class."""
    items: dict[tuple[str, str], _Item] = {}
    problems: list[str] = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        stem, ending = split_ending(path, IMAGE_2D_ENDINGS)
        if not ending:
            continue
        cls = _class_of(relative)
        if cls is None:
            problems.append(f"{path}: cannot tell its class; put it in a folder named benign, malignant or "
                            "normal, or remove it")
            continue
        match = _MASK_RE.match(stem)
        key = (cls, match["stem"] if match else stem)
        item = items.setdefault(key, _Item(*key))
        if match:
            item.masks.append((int(match["index"] or 0), path))
        else:
            item.images.append(path)
    for item in items.values():
        item.masks.sort()
    return items, problems


def _structure_problems(items: list[_Item]) -> list[str]:
    """Duplicate images, images without masks (normal excepted) and masks without images."""
    problems = []
    for item in items:
        masks = ", ".join(str(p) for _, p in item.masks)
        if len(item.images) > 1:
            problems.append(f"{', '.join(map(str, item.images))}: the same {item.cls} image appears more "
                            "than once; keep one copy")
        elif not item.images:
            problems.append(f"{masks}: mask(s) without an image: no {item.cls} image named {item.stem!r} "
                            f"(e.g. {item.stem}.png) was found; add the image or remove the mask(s)")
        elif not item.masks and item.cls != "normal":
            problems.append(f"{item.images[0]}: image without a mask: expected {item.stem}_mask.png beside "
                            f"it (or under masks/{item.cls}/); add the mask or remove the image")
    return problems


def _lesion_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read one BUSI mask as a ``(H, W)`` bool lesion map, checking values and size against ``shape``.

    Gray masks must hold 0/255 or 0/1 (or 0 and the dtype's maximum); colour (RGB/RGBA) masks count any
    nonzero colour channel as lesion.
    """
    raw = read_2d(path)
    if raw.shape[:2] != shape:
        raise SamprefError(f"{path}: mask size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from its image "
                           f"({shape[1]}x{shape[0]}); re-export the mask at the image's size or remove the "
                           "pair")
    gray = single_channel(raw)
    if gray is None:
        return np.any(drop_alpha(raw) != 0, axis=-1)
    values = {int(v) for v in np.unique(gray)}
    full = int(np.iinfo(gray.dtype).max) if np.issubdtype(gray.dtype, np.integer) else 1
    if not values <= {0, 1, 255, full}:
        shown = sorted(values)[:8]
        raise SamprefError(f"{path}: mask values {shown}{' ...' if len(values) > 8 else ''} are not binary "
                           "(0/255 or 0/1); re-save the mask as a binary image")
    return gray != 0


def _load_item(item: _Item) -> tuple[np.ndarray, np.ndarray, bool, list[str]]:
    """``(image (H, W), label (H, W) uint8 in {0, 1}, was_colour, problems)`` of one BUSI image."""
    image, was_colour = load_gray_image(item.images[0])
    label = np.zeros(image.shape, bool)
    problems = []
    for _, mask_path in item.masks:
        try:
            label |= _lesion_mask(mask_path, image.shape)
        except SamprefError as err:
            problems.append(str(err))
    return image, label.astype(np.uint8), was_colour, problems


def _provenance(item: _Item, source: Path) -> dict[str, object]:
    """Source files of one case, relative to ``source``."""
    return {"image": str(item.images[0].relative_to(source)),
            "masks": [str(path.relative_to(source)) for _, path in item.masks]}


def convert_busi(source: Path, dataset_id: int, name: str = "BUSI", include_normal: bool = False,
                 overwrite: bool = False) -> VerifyReport:
    """Convert a BUSI folder into ``$SAMPREF_raw/Dataset{ID}_{name}`` (2D PNG, label 1 = lesion).

    Images become ``(H, W)`` uint8 PNGs (colour ones reduced to BT.601 luma, noted in ``conversion.json``),
    labels ``(H, W)`` uint8 PNGs holding 0/1. Every problem in the source is collected and reported in one
    :class:`SamprefError`; the source is only read. Returns the published dataset's report.
    """
    source = require_folder(source, "BUSI source folder")
    found, problems = _scan(source)
    items = sorted(found.values(), key=lambda item: item.case)
    skipped = [item for item in items if item.cls == "normal" and not include_normal]
    items = [item for item in items if include_normal or item.cls != "normal"]
    if not items and not problems:
        hint = " (only normal images were found: pass --include-normal)" if skipped else ""
        raise SamprefError(f"no BUSI images found under {source}{hint}; it should hold benign/ and "
                           "malignant/ folders (or images/benign/ and masks/benign/ ...) with PNG files.")
    problems += _structure_problems(items)
    sources: dict[str, list[Path]] = defaultdict(list)
    for item in items:  # "benign (12).png" and "benign(12).png" are two items with one case name
        sources[item.case] += item.images
    problems += name_collisions(sources)
    ready = [item for item in items if len(item.images) == 1 and (item.masks or item.cls == "normal")]
    writer = RawDatasetWriter(dataset_id, name, file_ending=".png", dimensionality=2, overwrite=overwrite)
    with writer:
        for item in ready:
            try:
                image, label, was_colour, mask_problems = _load_item(item)
            except SamprefError as err:
                problems.append(str(err))
                continue
            problems += mask_problems
            if was_colour:
                writer.note(f"{item.images[0].relative_to(source)}: {LUMA_NOTE}")
            if not problems:
                writer.add_case(item.case, [image], label)
        raise_problems(problems, f"BUSI source {source}")
        if skipped:
            writer.note(f"skipped {len(skipped)} normal image(s); pass --include-normal to add them")
        writer.provenance = {
            "converter": "busi", "source": str(source.resolve()), "include_normal": include_normal,
            "cases": {item.case: _provenance(item, source) for item in ready},
        }
        writer.set_metadata(
            name=name, description=DESCRIPTION, channel_names={"0": "US"},
            labels={"background": 0, "lesion": 1}, target_text={"lesion": "breast tumor"},
            license="CC0 1.0", reference=REFERENCE)
    return writer.report
