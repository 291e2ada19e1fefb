"""Plots of aggregated results, drawn off-screen (Agg) and written atomically, each with a JSON sidecar.

``dice_vs_fraction.png``: one line per series (trainer and configuration) through its mean over folds at each
annotation fraction, a shaded band of mean ± std over folds (no width where a point has one fold), dashed lines
for the series named ``dashed`` (oracle upper bounds). Series are dodged: series ``i`` of ``n`` is drawn shifted
by :func:`dodge_offsets` along x (a fraction of the smallest gap between fractions) so points at one fraction do
not hide each other; the true fractions stay the tick labels.

``dice_boxplots.png``: for each fraction, one box per series over its per-fold values (median, quartiles,
whiskers at 1.5 IQR as matplotlib draws them), boxes of one fraction side by side.

Both put their legend below the axes, outside them, in two columns where the labels fit (one otherwise); the
figure grows by a row's height per legend row, so a long legend never covers a point or shrinks the axes.

The sidecars (``dice_vs_fraction.json``, ``dice_boxplots.json``, see :func:`vs_fraction_data` and
:func:`box_data`) hold exactly what was drawn, per series, so tests and readers can check the figure against the
table without reading pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sampref_bench.utilities.atomic import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One point of a series: (fraction, mean, std or None).
Point = tuple[float, float, float | None]
#: One box of a series: (fraction, the per-fold values).
Box = tuple[float, Sequence[float]]
#: Share of the smallest gap between two fractions the dodged points of one fraction spread over.
DODGE_SHARE = 0.3


def dodge_offsets(n_series: int, fractions: Collection[float]) -> list[float]:
    """x shifts of ``n_series`` series, centred on zero, spread over :data:`DODGE_SHARE` of the smallest gap
    between the distinct ``fractions`` (of 0.1 with one fraction); all zero for a single series."""
    if n_series <= 1:
        return [0.0] * n_series
    distinct = sorted(set(fractions))
    gap = min((b - a for a, b in zip(distinct, distinct[1:])), default=0.1)
    step = DODGE_SHARE * gap / (n_series - 1)
    return [(i - (n_series - 1) / 2) * step for i in range(n_series)]


def vs_fraction_data(series: Mapping[str, Sequence[Point]], title: str, ylabel: str,
                     dashed: Collection[str] = ()) -> dict[str, Any]:
    """What :func:`figure_vs_fraction` draws: per series its ``fraction``, dodged ``x``, ``y`` (mean), ``std``
    (``None`` with one fold), ``band_low``/``band_high`` (mean ∓ std, the mean itself without a std) and
    ``dashed``. NaN means are left out; a series without any point is left out."""
    kept = {name: sorted(p for p in points if not math.isnan(p[1])) for name, points in series.items()}
    kept = {name: points for name, points in kept.items() if points}
    offsets = dodge_offsets(len(kept), [p[0] for points in kept.values() for p in points])
    drawn = []
    for (name, points), offset in zip(kept.items(), offsets):
        stds = [p[2] for p in points]
        drawn.append({"name": name, "dashed": name in dashed, "fraction": [p[0] for p in points],
                      "x": [p[0] + offset for p in points], "y": [p[1] for p in points], "std": stds,
                      "band_low": [p[1] - (s or 0.0) for p, s in zip(points, stds)],
                      "band_high": [p[1] + (s or 0.0) for p, s in zip(points, stds)]})
    return {"title": title, "xlabel": "annotation fraction", "ylabel": ylabel,
            "band": "mean ± std over folds (no width with one fold)", "dodge_offsets": offsets, "series": drawn}


#: The figure's width (inches) and resolution (dots per inch), the legend's font size (points), the most legend
#: entries per row below the axes and the figure height (inches) each legend row adds.
FIGURE_WIDTH = 7.0
DPI = 100
LEGEND_FONT = 8
LEGEND_COLUMNS = 2
LEGEND_ROW_INCHES = 0.2


def legend_columns(labels: Sequence[str]) -> int:
    """How many legend columns fit the figure's width: :data:`LEGEND_COLUMNS` when that many of the widest label
    (text, line handle and spacing: about 5 font sizes beside the text) fit in it, fewer otherwise, at least 1."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    if not labels:
        return 1
    renderer = RendererAgg(FIGURE_WIDTH * DPI, 100, DPI)
    font = FontProperties(size=LEGEND_FONT)
    widest = max(renderer.get_text_width_height_descent(label, font, ismath=False)[0] for label in labels)
    column = widest + 5 * LEGEND_FONT * DPI / 72  # pixels
    return max(1, min(LEGEND_COLUMNS, int(0.95 * FIGURE_WIDTH * DPI // column)))


def _new_figure(n_legend: int, columns: int) -> Figure:
    """A :data:`FIGURE_WIDTH`-inch-wide figure with a constrained layout, 4.5 inches tall plus room for a legend
    of ``n_legend`` entries in ``columns`` columns below the axes (:func:`_legend_below`), so the axes keep their
    size however many series there are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = -(-n_legend // columns)
    fig = Figure(figsize=(FIGURE_WIDTH, 4.5 + LEGEND_ROW_INCHES * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend_below(fig: Figure, handles: Sequence[Any], columns: int) -> None:
    """The legend of ``handles`` in ``columns`` columns under the axes, outside them, so it never hides a point
    or a box."""
    if handles:
        fig.legend(handles=handles, fontsize=LEGEND_FONT, loc="outside lower center", ncols=columns, frameon=False)


def figure_vs_fraction(series: Mapping[str, Sequence[Point]], title: str, ylabel: str,
                       dashed: Collection[str] = ()) -> Figure:
    """A figure with one dodged line and mean ± std band per series (see the module docstring); the line's label
    is the series name, dashed for the series in ``dashed``."""
    data = vs_fraction_data(series, title, ylabel, dashed)
    columns = legend_columns([entry["name"] for entry in data["series"]])
    fig = _new_figure(len(data["series"]), columns)
    ax = fig.add_subplot()
    handles = []
    for entry in data["series"]:
        [line] = ax.plot(entry["x"], entry["y"], marker="o", markersize=4, label=entry["name"],
                         linestyle="--" if entry["dashed"] else "-")
        ax.fill_between(entry["x"], entry["band_low"], entry["band_high"], color=line.get_color(), alpha=0.15,
                        linewidth=0)
        handles.append(line)
    fractions = sorted({f for entry in data["series"] for f in entry["fraction"]})
    if fractions:
        ax.set_xticks(fractions)
    _legend_below(fig, handles, columns)
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _save(fig: Figure, path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``fig`` as PNG (100 dpi) to ``path`` and ``data`` to its ``.json`` sidecar, both atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    write_bytes_atomic(Path(path), buffer.getvalue())
    write_json_atomic(Path(path).with_suffix(".json"), data)
    return Path(path)


def plot_vs_fraction(series: Mapping[str, Sequence[Point]], path: Path, title: str, ylabel: str,
                     dashed: Collection[str] = ()) -> Path:
    """Draw :func:`figure_vs_fraction` into the PNG ``path`` and :func:`vs_fraction_data` into ``path`` with
    ``.json``; returns ``path``."""
    return _save(figure_vs_fraction(series, title, ylabel, dashed), path,
                 vs_fraction_data(series, title, ylabel, dashed))


def box_data(boxes: Mapping[str, Sequence[Box]], title: str, ylabel: str,
             dashed: Collection[str] = ()) -> dict[str, Any]:
    """What :func:`figure_boxplots` draws: the fractions (one slot each on x, in order) and per series its boxes,
    each with ``fraction``, ``position`` (slot plus the series' offset), the non-NaN ``values``, ``mean`` and
    matplotlib's box statistics (``median``, ``q1``, ``q3``, ``whisker_low``, ``whisker_high``, ``fliers``). A box
    without values is left out."""
    from matplotlib.cbook import boxplot_stats

    fractions = sorted({f for entries in boxes.values() for f, _ in entries})
    slot = {f: i for i, f in enumerate(fractions)}
    width = 0.8 / max(len(boxes), 1)
    drawn = []
    for i, (name, entries) in enumerate(boxes.items()):
        items = []
        for fraction, values in sorted(entries, key=lambda e: e[0]):
            kept = [float(v) for v in values if not math.isnan(v)]
            if not kept:
                continue
            [stats] = boxplot_stats(kept)
            items.append({"fraction": fraction, "position": slot[fraction] + (i - (len(boxes) - 1) / 2) * width,
                          "values": kept, "mean": float(sum(kept) / len(kept)), "median": float(stats["med"]),
                          "q1": float(stats["q1"]), "q3": float(stats["q3"]),
                          "whisker_low": float(stats["whislo"]), "whisker_high": float(stats["whishi"]),
                          "fliers": [float(v) for v in stats["fliers"]]})
        drawn.append({"name": name, "dashed": name in dashed, "boxes": items})
    return {"title": title, "xlabel": "annotation fraction", "ylabel": ylabel, "fractions": fractions,
            "box_width": width, "series": drawn}


def figure_boxplots(boxes: Mapping[str, Sequence[Box]], title: str, ylabel: str,
                    dashed: Collection[str] = ()) -> Figure:
    """Per-fraction box plots of each series' per-fold values (see :func:`box_data`); a series in ``dashed``
    gets dashed box edges."""
    from matplotlib.patches import Patch

    data = box_data(boxes, title, ylabel, dashed)
    columns = legend_columns([entry["name"] for entry in data["series"]])
    fig = _new_figure(len(data["series"]), columns)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(data["series"]))]
    handles = []
    for entry, color in zip(data["series"], colors):
        stats = [{"med": b["median"], "q1": b["q1"], "q3": b["q3"], "whislo": b["whisker_low"],
                  "whishi": b["whisker_high"], "fliers": b["fliers"], "mean": b["mean"], "label": entry["name"]}
                 for b in entry["boxes"]]
        style = "--" if entry["dashed"] else "-"
        if stats:
            ax.bxp(stats, positions=[b["position"] for b in entry["boxes"]], widths=data["box_width"] * 0.9,
                   patch_artist=True, showmeans=True, manage_ticks=False,
                   boxprops={"facecolor": color, "alpha": 0.5, "linestyle": style},
                   medianprops={"color": "black"}, meanprops={"marker": "^", "markerfacecolor": "white",
                                                              "markeredgecolor": "black", "markersize": 4})
        handles.append(Patch(facecolor=color, alpha=0.5, linestyle=style, edgecolor="black", label=entry["name"]))
    ax.set_xticks(range(len(data["fractions"])), [f"{f:g}" for f in data["fractions"]])
    if data["fractions"]:
        ax.set_xlim(-0.6, len(data["fractions"]) - 0.4)
    _legend_below(fig, handles, columns)
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_boxplots(boxes: Mapping[str, Sequence[Box]], path: Path, title: str, ylabel: str,
                  dashed: Collection[str] = ()) -> Path:
    """Draw :func:`figure_boxplots` into the PNG ``path`` and :func:`box_data` into ``path`` with ``.json``;
    returns ``path``."""
    return _save(figure_boxplots(boxes, title, ylabel, dashed), path, box_data(boxes, title, ylabel, dashed))
