"""The raw files a preprocessed folder was built from, and whether they changed since.

``preprocessing.json`` records under ``raw_files`` every raw file it read: its path relative to the raw dataset
folder -> ``{"case", "size", "mtime_ns", "sha256"}``. :func:`check_raw_unchanged` (called when a training run
starts) compares the raw folder with it cheaply: a file whose size and mtime are unchanged is taken as
unchanged; only the others are hashed again. A changed or removed image stops the run (the preprocessed arrays
no longer show it), a changed or removed label is a warning (the run trains on the label preprocessed before the
change, and its final validation scores against the new one); both name the case and the fix, which is
``sampref_plan -d X`` again. A folder preprocessed before this record existed, or a raw folder that is gone
(training needs only the preprocessed data), is not checked; nor is a raw sub-folder that is gone altogether
(``imagesTr`` of a copy that holds only the labels and the preprocessed arrays, as a GPU machine's copy does),
while its files that are there are still compared.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError

#: The key of ``preprocessing.json`` holding the raw file records.
RAW_FILES_KEY = "raw_files"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def raw_file_records(raw_dir: Path, case: str, files: list[Path]) -> dict[str, dict[str, Any]]:
    """``{path relative to raw_dir: {"case", "size", "mtime_ns", "sha256"}}`` for the raw ``files`` of ``case``."""
    records = {}
    for path in files:
        stat = path.stat()
        records[path.relative_to(raw_dir).as_posix()] = {"case": case, "size": stat.st_size,
                                                         "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}
    return records


def changed_raw_files(raw_dir: Path, records: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(relative path, case, what changed)`` for each recorded file that was removed or whose bytes differ."""
    changed = []
    for relative, record in sorted(records.items()):
        path = raw_dir / relative
        try:
            stat = path.stat()
        except OSError:
            changed.append((relative, record["case"], "it was removed"))
            continue
        if stat.st_size == record["size"] and stat.st_mtime_ns == record["mtime_ns"]:
            continue
        try:
            now = file_sha256(path)
        except OSError as err:
            changed.append((relative, record["case"], f"it cannot be read ({err.strerror})"))
            continue
        if now != record["sha256"]:
            changed.append((relative, record["case"], f"its content differs (sha256 {record['sha256'][:12]} when "
                                                      f"planned, {now[:12]} now)"))
    return changed


def check_raw_unchanged(raw_dir: Path, data_dir: Path, dataset_name: str) -> None:
    """Stop (images) or warn (labels) when raw files changed after ``data_dir`` was preprocessed from them."""
    marker = Path(data_dir) / "preprocessing.json"
    if not Path(raw_dir).is_dir() or not marker.is_file():
        return
    records = load_json(marker).get(RAW_FILES_KEY)
    if not isinstance(records, dict) or not records:
        return
    # a top folder that is gone altogether (imagesTr on a machine given only the labels and the arrays) is like a
    # raw folder that is gone: nothing to compare with, not a change
    records = {rel: rec for rel, rec in records.items() if (Path(raw_dir) / Path(rel).parts[0]).is_dir()}
    changed = changed_raw_files(Path(raw_dir), records)
    if not changed:
        return
    fix = f"rerun `sampref_plan -d {dataset_name}` to preprocess them again"

    def listing(items: list[tuple[str, str, str]]) -> str:
        shown = [f"  - {Path(raw_dir) / rel} (case {case}): {what}" for rel, case, what in items[:10]]
        return "\n".join(shown + ([f"  - ... and {len(items) - 10} more"] if len(items) > 10 else []))

    images = [item for item in changed if not item[0].startswith("labelsTr/")]
    labels = [item for item in changed if item[0].startswith("labelsTr/")]
    if labels:
        warnings.warn(f"{len(labels)} raw label(s) changed after sampref_plan preprocessed {data_dir}:\n"
                      f"{listing(labels)}\nThis run trains on the labels as they were planned, and its final "
                      f"validation scores against the files as they are now; {fix}.", UserWarning, stacklevel=2)
    if images:
        raise SamprefError(f"{len(images)} raw image(s) changed after sampref_plan preprocessed {data_dir}, so "
                           f"its arrays are stale:\n{listing(images)}\nNothing was trained; {fix}, then start "
                           "the run again.")
