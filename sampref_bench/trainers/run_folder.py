"""The run folder of one training: paths, atomic checkpoints, the CSV log and ``progress.png``.

``$SAMPREF_results/DatasetXXX_Name/{Trainer}__{plans}__{configuration}__f{fraction}/fold_{k}/`` holds
``checkpoint_latest.pth`` (every epoch), ``checkpoint_final.pth`` (only once training finished),
``config.json``, ``training_log.csv``, ``progress.png`` and ``validation/`` (predictions, ``summary.json``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from sampref_bench import paths
from sampref_bench.utilities.atomic import atomic_write, write_bytes_atomic
from sampref_bench.utilities.errors import SamprefError


def run_folder(dataset_name: str, trainer: str, plans_name: str, configuration: str, fraction_key: str,
               fold: int) -> Path:
    """Folder of one run (not created)."""
    return (paths.results_root() / dataset_name / f"{trainer}__{plans_name}__{configuration}__f{fraction_key}"
            / f"fold_{fold}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary sibling and ``os.replace`` (a killed run never leaves half a file)."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a sampref checkpoint on the CPU with ``weights_only=True``; a bad file is a clear error."""
    if not path.is_file():
        raise SamprefError(f"{path} does not exist: nothing to continue from. Start the run without --continue.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise SamprefError(f"{path} is not a readable sampref checkpoint ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200]}). Delete it and restart the run.") from err
    if not isinstance(state, dict) or "network" not in state or "epoch" not in state:
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise SamprefError(f"{path} is not a sampref checkpoint (found {found}). Delete it and restart the run.")
    return state


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the training log as CSV (one row per finished epoch), atomically."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


def plot_progress(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """``progress.png``: training loss and validation Dice per epoch."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["train_loss"] for r in rows], "b-o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(epochs, [r["val_dice"] for r in rows], "g-s", label="val pseudo Dice")
    twin.set_ylabel("Dice")
    twin.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
