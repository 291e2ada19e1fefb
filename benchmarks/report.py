"""Shared by the benchmarks: the bundled BUSI subset prepared once, the machine description and the committed
Markdown table of a result.

Every benchmark writes its raw JSON (ignored by git) and a table ``benchmarks/results/NAME.md`` (committed)
that states the machine, the date and the command that reproduces it.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
ROOT = RESULTS.parents[1]


def machine() -> dict[str, object]:
    """CPU count, load average, CPU model, torch threads and versions of this machine."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": [round(v, 2) for v in os.getloadavg()], "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """This process's command line as run from the repository root: ``-m NAME`` when started with ``-m``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        program = ["-m", spec.name.removesuffix(".__main__")]
    else:
        path = Path(sys.argv[0]).resolve()
        program = [str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else sys.argv[0]]
    return " ".join([".venv/bin/python", *map(shlex.quote, [*program, *sys.argv[1:]])])


def write_markdown(name: str, title: str, body: str, command: str | None = None) -> Path:
    """Write ``results/{name}.md``: title, machine, date, the reproducing command (default
    :func:`command_line`), then ``body``."""
    info = machine()
    command = command or command_line()
    text = (f"# {title}\n\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- machine: {info['cpus']} CPU cores ({info['cpu_model'] or 'unknown model'}), "
            f"GPU: {info['gpu'] or 'none'}, torch {info['torch']} ({info['torch_threads']} threads), "
            f"Python {info['python']}; load average at the end {info['load_average']}\n"
            f"- command: `{command}`\n\n{body.rstrip()}\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path


def set_roots(workdir: Path) -> None:
    """Point the SAMPREF raw, preprocessed and results roots at ``workdir/{raw,preprocessed,results}``."""
    for key in ("raw", "preprocessed", "results"):
        os.environ[f"SAMPREF_{key}"] = str(workdir / key)


def prepare_busi_subset(workdir: Path) -> None:
    """Point the SAMPREF roots at ``workdir`` and convert and plan the bundled BUSI subset there as dataset 3
    (the conversion is skipped when already there; planning skips its current steps)."""
    set_roots(workdir)
    from sampref_bench.dataset_conversion.busi import convert_busi
    from sampref_bench.planners.pipeline import plan_dataset

    if not (workdir / "raw" / "Dataset003_BUSI").is_dir():
        convert_busi(REPO / "demo_data" / "BUSI_subset", 3)
    plan_dataset(3, num_processes=1, progress=False)
