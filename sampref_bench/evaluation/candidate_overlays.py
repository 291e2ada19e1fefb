"""PNGs of candidate masks for a person to judge (``sampref_candidates``).

Per rated sample, one PNG per candidate: the preprocessed image at its own size (S x S pixels, the grid the
candidates live on) with the candidate's outline drawn in one colour, the same for every candidate so that no
colour hints at an order; and optionally an overview PNG with all K side by side, titled with the candidate
indices the preferences file refers to. Every file is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sampref_bench.utilities.atomic import write_bytes_atomic

#: The outline colour (RGB, 0..255): yellow stands out on grey-scale medical images.
OUTLINE_COLOUR = (255, 220, 0)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W)`` bool: pixels of ``mask`` within ``width`` pixels (4-neighbourhood steps) of its border.

    A mask pixel at the image edge counts as border, so a mask that fills the image is still drawn.
    """
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(max(1, int(width))):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def outline_width(size: int) -> int:
    """A visible outline width for an ``size`` x ``size`` image: one pixel per 256, at least one."""
    return max(1, round(int(size) / 256))


def draw_candidate(image: np.ndarray, mask: np.ndarray, width: int | None = None,
                   colour: tuple[int, int, int] = OUTLINE_COLOUR) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` (``(H, W, 3)`` float in [0, 1]) with the outline of ``(H, W)`` ``mask``."""
    rgb = (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    edge = outline(mask, outline_width(mask.shape[0]) if width is None else width)
    rgb[edge] = colour
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an ``(H, W, 3)`` uint8 array, exactly ``W`` x ``H`` pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def overview_png(drawn: list[np.ndarray], masks: np.ndarray, title: str) -> bytes:
    """One PNG with the ``drawn`` candidate images side by side, each titled ``candidate k`` (``(empty)`` when
    its mask in ``(K, H, W)`` ``masks`` has no pixel), under ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(drawn)
    fig, axes = plt.subplots(1, k, figsize=(3.0 * k, 3.4), squeeze=False)
    for index, (ax, array) in enumerate(zip(axes[0], drawn)):
        ax.imshow(array, interpolation="nearest")
        ax.set_title(f"candidate {index}" + ("" if masks[index].any() else " (empty)"), fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_candidate_pngs(folder: Path, stem: str, image: np.ndarray, candidates: np.ndarray, title: str,
                         overview: bool = True) -> tuple[list[Path], Path | None]:
    """Write ``{stem}_c{k}.png`` for each of the ``(K, H, W)`` bool ``candidates`` on ``(H, W, 3)`` ``image`` (float
    in [0, 1]) into ``folder``, plus ``{stem}_all.png`` (the overview) when ``overview``; return the paths."""
    masks = np.asarray(candidates, dtype=bool)
    drawn = [draw_candidate(image, mask) for mask in masks]
    paths = []
    for index, rgb in enumerate(drawn):
        path = Path(folder) / f"{stem}_c{index}.png"
        write_bytes_atomic(path, png_bytes(rgb))
        paths.append(path)
    summary = None
    if overview:
        summary = Path(folder) / f"{stem}_all.png"
        write_bytes_atomic(summary, overview_png(drawn, masks, title))
    return paths, summary
