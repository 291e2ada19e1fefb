"""The run folder of one training: paths, atomic checkpoints, the CSV log and ``progress.png``.

``$SAMPREF_results/DatasetXXX_Name/{Trainer}__{plans}__{configuration}__f{fraction}/fold_{k}/`` holds
``checkpoint_latest.pth`` (every epoch), ``checkpoint_final.pth`` (only once training finished),
``config.json``, ``training_log.csv``, ``progress.png`` and ``validation/`` (predictions, ``summary.json``).
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sampref_bench import paths
from sampref_bench.utilities.atomic import as_disk_full_error, atomic_write, write_bytes_atomic
from sampref_bench.utilities.errors import SamprefError


def run_folder(dataset_name: str, trainer: str, plans_name: str, configuration: str, fraction_key: str,
               fold: int) -> Path:
    """Folder of one run (not created)."""
    return (paths.results_root() / dataset_name / f"{trainer}__{plans_name}__{configuration}__f{fraction_key}"
            / f"fold_{fold}")


#: How torch reports a write of its zip writer that failed (the OSError of the handle is swallowed).
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|file write failed|failed writing", re.IGNORECASE)


class _RecordingHandle:
    """Passes writes on to ``handle`` and keeps the :class:`OSError` one raised: ``torch.save`` swallows it and
    reports ``unexpected pos 704 vs 598`` instead."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._handle.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _torch_save(state: dict[str, Any], handle: BinaryIO, path: Path) -> None:
    """``torch.save(state, handle)``; a write that failed is the :class:`OSError` it was (a full disk becomes a
    :class:`~sampref_bench.utilities.atomic.DiskFullError` in :func:`atomic_write`)."""
    recorder = _RecordingHandle(handle)
    try:
        torch.save(state, recorder)
    except RuntimeError as err:
        if recorder.error is not None:
            raise recorder.error from err
        if _TORCH_WRITE_FAILED.search(str(err)):
            first = (str(err).splitlines() or [""])[0].split("] . ")[-1].strip()[:120]
            raise as_disk_full_error(path, detail=f"torch.save: {first}, a write that did not reach the "
                                                   "disk") from err
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary sibling and ``os.replace`` (a killed run never leaves half a file).

    A full disk (or a file too large for its file system) is a :class:`SamprefError` naming the file and where it
    lies; the previous checkpoint stays as it was and no temporary file is left."""
    path = Path(path)
    atomic_write(path, lambda handle: _torch_save(state, handle, path))


#: The first bytes of a zip archive, the format ``torch.save`` writes.
_ZIP_MAGIC = b"PK\x03\x04"


def _damage(path: Path, err: BaseException) -> str | None:
    """How ``path`` is cut short (``is empty (0 bytes)``, ``is truncated (...)``), or None when it is whole but
    unreadable for another reason."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
    except OSError:
        return None
    if size == 0:
        return "is empty (0 bytes)"
    if (head == _ZIP_MAGIC and not zipfile.is_zipfile(path)) or isinstance(err, EOFError):
        return f"is truncated ({size} bytes, the end of the file is missing)"
    return None


def _damaged_advice(path: Path) -> str:
    """What to do about a damaged checkpoint ``path``, accurate to what ``--continue`` reads."""
    latest, final = path.parent / "checkpoint_latest.pth", path.parent / "checkpoint_final.pth"
    if path.name == final.name:
        if latest.is_file():
            return (f"Delete it and continue the run (the same `sampref_train` command with --continue, or "
                    f"`sampref_benchmark`, which continues unfinished runs): it resumes from {latest.name} and "
                    f"writes a new {final.name}.")
        return f"Delete the run folder {path.parent} and train the run again."
    if path.name == latest.name:
        if final.is_file():
            return (f"Delete it: {final.name} beside it holds the finished run, and --continue resumes from that "
                    "file.")
        return ("Delete it and rerun the same `sampref_train` command without --continue (or rerun "
                "`sampref_benchmark`): the run starts again from epoch 0, since a cut-short checkpoint cannot be "
                "resumed.")
    return "Delete it and rerun the training that wrote it."


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a sampref checkpoint on the CPU with ``weights_only=True``; a bad file is a clear error.

    An empty or truncated file (a kill, a crash of the machine or a full disk while it was written, or a copy cut
    short) is named as such, with what to do about it."""
    if not path.is_file():
        raise SamprefError(f"{path} does not exist: nothing to continue from. Start the run without --continue.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        damage = _damage(path, err)
        if damage is not None:
            raise SamprefError(f"{path} {damage}: most likely its writing was cut short (the process killed, the "
                               "machine down or the disk full) or it was copied incompletely. "
                               f"{_damaged_advice(path)}") from err
        first = (str(err).splitlines() or [""])[0][:200]
        detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise SamprefError(f"{path} is not a readable sampref checkpoint ({detail}). Delete it and restart the "
                           "run.") from err
    if not isinstance(state, dict) or "networks" not in state or "epoch" not in state:
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise SamprefError(f"{path} is not a checkpoint of this sampref version (found {found}). Delete it and "
                           "restart the run.")
    return state


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the training log as CSV (one row per finished epoch), atomically.

    The header is the union of the rows' keys in first-seen order, so a key that first appears in a later
    epoch (a second training stage's ``dpo_margin``, say) gets its column; a row lacking a key has an empty cell.
    """
    if not rows:
        return
    fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


#: Log columns ``progress.png`` draws in its top panel, and bookkeeping columns it leaves to the CSV (as it
#: leaves ``lr_{name}``, the learning rates of a trainer with several optimizers).
_MAIN_COLUMNS = ("train_loss", "val_dice")
_NOT_PLOTTED = ("epoch", "lr", "seconds")
#: At most this many extra metrics get a panel each; the rest are named in the last panel's title.
_MAX_EXTRA_PANELS = 6


def _as_float(value: Any) -> float:
    """A log cell as a float: NaN for a missing, boolean, non-numeric or unparsable value."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def plot_progress(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """``progress.png``: training loss and validation Dice per epoch on top; below, one small panel per further
    numeric column a trainer logs (``dpo_margin``, ...; at most six, the rest are named under the epoch axis),
    sharing the epoch axis.

    Rows may lack keys and hold NaN, ``None`` or text: such cells are gaps; a column with no finite number is
    not drawn. ``epoch``, ``lr`` and ``seconds`` stay in ``training_log.csv`` only.
    """
    if not rows:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [e if math.isfinite(e := _as_float(r.get("epoch"))) else float(i + 1) for i, r in enumerate(rows)]
    columns = {key: [_as_float(r.get(key)) for r in rows] for key in dict.fromkeys(k for r in rows for k in r)}
    extras = [key for key, values in columns.items() if key not in _MAIN_COLUMNS + _NOT_PLOTTED
              and not key.startswith("lr_") and any(math.isfinite(v) for v in values)]
    shown, hidden = extras[:_MAX_EXTRA_PANELS], extras[_MAX_EXTRA_PANELS:]

    fig = Figure(figsize=(7, 4 + 1.8 * len(shown)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(shown), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [2.2] + [1.0] * len(shown)})[:, 0]
    ax = axes[0]
    ax.plot(epochs, columns.get("train_loss", [math.nan] * len(rows)), "b-o", markersize=4, label="train loss")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(epochs, columns.get("val_dice", [math.nan] * len(rows)), "g-s", markersize=4, label="val pseudo Dice")
    twin.set_ylabel("Dice")
    twin.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    ax.set_title(title, fontsize=9)
    for panel, key in zip(axes[1:], shown):
        panel.plot(epochs, columns[key], "-o", color="tab:purple", markersize=3)
        panel.set_ylabel(key, fontsize=8)
        panel.grid(alpha=0.3)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch" + (f"\n(not drawn, see training_log.csv: {', '.join(hidden)})" if hidden else ""))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_bytes_atomic(path, buffer.getvalue())
