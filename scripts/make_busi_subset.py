"""Build ``demo_data/BUSI_subset``: a small, downscaled BUSI subset in the original release's folder layout.

Reads a BUSI copy laid out as ``images/{benign,malignant}/X.png`` + ``masks/{benign,malignant}/X_mask*.png``
with a ``manifest.csv`` (columns ``image, masks, n_masks, cls, width, height, channels, sha256_original``) and
writes ``OUT/{benign,malignant}/X.png`` + ``X_mask.png``, ``X_mask_1.png`` ... as in the original release
(Al-Dhabyani et al., Data in Brief 28 (2020) 104863, CC0 1.0), plus ``manifest.csv`` and ``README.md``.

Selection is deterministic: per class, the colour images and the multi-mask images wanted are taken first
(in order of the original file's SHA-256), then the rest in the same order until the class count is
reached. Images are shrunk so that the long side is at most ``--max-side`` pixels (Lanczos), masks with
nearest-neighbour sampling (values stay 0/255). An image whose downscaled mask would be empty is skipped.

Usage::

    python scripts/make_busi_subset.py ../shared/datasets/BUSI demo_data/BUSI_subset
"""

from __future__ import annotations

import argparse
import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: class -> (images wanted, colour images wanted first, multi-mask images wanted first)
PLAN = {"benign": (60, 2, 4), "malignant": (40, 1, 1)}


@dataclass
class Entry:
    """One row of the source manifest."""

    image: str
    masks: list[str]
    cls: str
    width: int
    height: int
    colour: bool
    sha: str


def read_manifest(source: Path) -> list[Entry]:
    """Rows of ``source/manifest.csv``."""
    with open(source / "manifest.csv", newline="", encoding="utf-8") as handle:
        return [Entry(row["image"], row["masks"].split(";"), row["cls"], int(row["width"]),
                      int(row["height"]), row["channels"] == "rgb", row["sha256_original"])
                for row in csv.DictReader(handle)]


def choose(entries: list[Entry], n_total: int, n_colour: int, n_multi: int) -> list[Entry]:
    """Candidates in priority order: ``n_colour`` colour, ``n_multi`` multi-mask images, then the rest."""
    ordered = sorted(entries, key=lambda e: e.sha)
    colour = [e for e in ordered if e.colour][:n_colour]
    multi = sorted((e for e in ordered if len(e.masks) > 1), key=lambda e: (-len(e.masks), e.sha))
    picked = colour + [e for e in multi if e not in colour][:n_multi]
    rest = [e for e in ordered if e not in picked]
    return picked + rest


def new_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the long side is at most ``max_side`` px (never enlarged)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink(source: Path, entry: Entry, max_side: int) -> tuple[Image.Image, list[Image.Image]] | None:
    """Downscaled image and masks, or None when a mask would become empty."""
    image = Image.open(source / entry.image)
    image.load()
    size = new_size(*image.size, max_side)
    small = image.resize(size, Image.Resampling.LANCZOS)
    masks = []
    for mask_file in entry.masks:
        mask = Image.open(source / mask_file).convert("L")
        binary = Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))
        shrunk = binary.resize(size, Image.Resampling.NEAREST)
        if not np.asarray(shrunk).any():
            return None
        masks.append(shrunk)
    return small, masks


def write_entry(out: Path, entry: Entry, image: Image.Image, masks: list[Image.Image]) -> str:
    """Save one image and its masks in the original layout; returns the image path relative to ``out``."""
    stem = Path(entry.image).stem
    folder = out / entry.cls
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{stem}.png", optimize=True)
    for index, mask in enumerate(masks):
        suffix = "_mask" if index == 0 else f"_mask_{index}"
        mask.save(folder / f"{stem}{suffix}.png", optimize=True)
    return f"{entry.cls}/{stem}.png"


README = """\
# BUSI subset (demo data)

{n_total} breast-ultrasound images ({counts}) with their lesion masks, taken from the
**Breast Ultrasound Images Dataset (BUSI)**, in the folder layout of the original release:
`benign/benign (N).png` with `benign/benign (N)_mask.png` (and `_mask_1.png`, `_mask_2.png` where an image
has several lesions), likewise `malignant/`.

## Source and license

Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. *Dataset of breast ultrasound images.*
Data in Brief 28 (2020) 104863. doi:[10.1016/j.dib.2019.104863](https://doi.org/10.1016/j.dib.2019.104863)
(Cairo University / Baheya Hospital, 2018). Please cite this article when you use the data.

The dataset is distributed under **CC0 1.0** (Creative Commons Zero, public domain dedication), as listed
for its Kaggle redistribution ("Breast Ultrasound Images Dataset") and the dataset-ninja catalogue. This
subset is distributed under the same terms.

## What was changed

- **Subset**: {n_total} of the 647 benign/malignant images; no "normal" images. Chosen deterministically by
  `scripts/make_busi_subset.py`: first {colour_note}, then {multi_note},
  then the rest in order of the original file's SHA-256 (images whose mask would vanish when downscaled
  are skipped).
- **Downscaled** so that the long side is at most {max_side} px: images with Lanczos resampling, masks with
  nearest-neighbour sampling (values stay 0 / 255).
- Images stored as 8-bit grayscale PNG, except {n_colour} images with real colour content (colour
  Doppler, coloured text or markers), which stay RGB. The original release stored most grayscale images
  as RGB with three equal channels; the pixel values are the same.
- Masks stored as 8-bit PNG with values 0 / 255.

`manifest.csv` lists every image: `file, class, original_width, original_height, width, height, n_masks,
channels, sha256_original` (SHA-256 of the original release's file).
"""


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="BUSI copy with images/, masks/ and manifest.csv")
    parser.add_argument("out", type=Path, nargs="?", default=Path("demo_data/BUSI_subset"))
    parser.add_argument("--max-side", type=int, default=256)
    args = parser.parse_args()

    entries = read_manifest(args.source)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    rows = []
    for cls, (n_total, n_colour, n_multi) in PLAN.items():
        kept = 0
        for entry in choose([e for e in entries if e.cls == cls], n_total, n_colour, n_multi):
            if kept == n_total:
                break
            shrunk = shrink(args.source, entry, args.max_side)
            if shrunk is None:
                print(f"skipped {entry.image}: a mask vanishes at {args.max_side} px")
                continue
            image, masks = shrunk
            file = write_entry(args.out, entry, image, masks)
            rows.append([file, cls, entry.width, entry.height, *image.size, len(masks),
                         "rgb" if image.mode == "RGB" else "gray", entry.sha])
            kept += 1
    with open(args.out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "original_width", "original_height", "width", "height", "n_masks",
                         "channels", "sha256_original"])
        writer.writerows(rows)
    counts = ", ".join(f"{sum(r[1] == c for r in rows)} {c}" for c in PLAN)
    n_colour = sum(r[7] == "rgb" for r in rows)
    colour_note = " / ".join(f"{PLAN[c][1]} {c}" for c in PLAN) + " colour images"
    multi_note = " / ".join(f"{PLAN[c][2]} {c}" for c in PLAN) + " images with several masks"
    (args.out / "README.md").write_text(README.format(
        n_total=len(rows), counts=counts, colour_note=colour_note, multi_note=multi_note,
        max_side=args.max_side, n_colour=n_colour), encoding="utf-8")
    print(f"wrote {len(rows)} images ({counts}; {n_colour} colour, "
          f"{sum(r[6] > 1 for r in rows)} with several masks) to {args.out}")


if __name__ == "__main__":
    main()
