"""Paper-ready renderings of a results table: GitHub Markdown and a LaTeX ``tabular`` with booktabs rules.

Both take the same :class:`PaperTable` (a title, a header, rows of cell texts, the right-aligned columns and the
notes) that :func:`~sampref_bench.evaluation.table_output.paper_table` builds from a
:class:`~sampref_bench.evaluation.aggregate.ResultTable`; this module knows nothing of runs. Cells are plain
text: ``±`` and ``Δ`` become ``$\\pm$`` and ``$\\Delta$`` in LaTeX, every other character special to LaTeX is
escaped (:func:`latex_escape`), ``|`` is escaped in Markdown. The LaTeX needs ``\\usepackage{booktabs}``; its
notes follow ``\\bottomrule`` as full-width rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "±": r"$\pm$", "Δ": r"$\Delta$",
                  "–": "--"}


@dataclass
class PaperTable:
    """What both renderings show: ``rows`` of cell texts under ``head``; columns in ``numeric`` right-aligned."""

    title: str
    head: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def latex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX tabular cell (``_`` -> ``\\_``, ``%`` -> ``\\%``, ``±`` -> ``$\\pm$`` ...)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: PaperTable) -> str:
    """GitHub Markdown: the title in bold, the pipe table (numeric columns right-aligned), the notes as a list."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(_markdown_cell(c) for c in cells) + " |"

    rule = ["---:" if i in table.numeric else ":---" for i in range(len(table.head))]
    lines = [f"**{_markdown_cell(table.title)}**", "", line(table.head), "| " + " | ".join(rule) + " |"]
    lines += [line(cells) for cells in table.rows]
    if table.notes:
        lines += ["", *(f"- {_markdown_cell(note)}" for note in table.notes)]
    return "\n".join(lines) + "\n"


def to_latex(table: PaperTable) -> str:
    """A LaTeX ``tabular`` (booktabs ``\\toprule``/``\\midrule``/``\\bottomrule``), the title as a comment, the
    notes as full-width rows after the bottom rule."""
    width = len(table.head)
    spec = "".join("r" if i in table.numeric else "l" for i in range(width))
    lines = [f"% {table.title}", "% needs \\usepackage{booktabs}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(c) for c in table.head) + " \\\\", "\\midrule"]
    lines += [" & ".join(latex_escape(c) for c in cells) + " \\\\" for cells in table.rows]
    lines.append("\\bottomrule")
    lines += [f"\\multicolumn{{{width}}}{{l}}{{\\footnotesize {latex_escape(note)}}} \\\\" for note in table.notes]
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"
