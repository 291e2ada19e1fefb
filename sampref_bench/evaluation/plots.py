"""Plots of aggregated results, drawn off-screen (Agg) and written atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sampref_bench.utilities.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One point of a series: (fraction, mean, std or None).
Point = tuple[float, float, float | None]


def figure_vs_fraction(series: Mapping[str, Sequence[Point]], title: str, ylabel: str,
                       dashed: Collection[str] = ()) -> Figure:
    """A figure with one line per series (x = annotation fraction, error bars = std over folds); the series
    named in ``dashed`` are drawn with dashed lines (oracle upper bounds, say).

    A point without a std (a single fold) gets no error bar; NaN means are left out of their line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fractions: set[float] = set()
    for name, points in series.items():
        kept = sorted(p for p in points if not math.isnan(p[1]))
        if not kept:
            continue
        xs = [p[0] for p in kept]
        fractions.update(xs)
        ax.errorbar(xs, [p[1] for p in kept], yerr=[p[2] if p[2] is not None else 0.0 for p in kept],
                    marker="o", capsize=3, label=name, linestyle="--" if name in dashed else "-")
    if fractions:
        ax.set_xticks(sorted(fractions))
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("annotation fraction")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_vs_fraction(series: Mapping[str, Sequence[Point]], path: Path, title: str, ylabel: str,
                     dashed: Collection[str] = ()) -> Path:
    """Draw :func:`figure_vs_fraction` into the PNG ``path`` (100 dpi, written atomically); returns ``path``."""
    buffer = io.BytesIO()
    figure_vs_fraction(series, title, ylabel, dashed).savefig(buffer, format="png", dpi=100)
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)
