"""Where sampref keeps data, and how dataset IDs resolve to folder names.

Three roots, each overridable by an environment variable of the same name (read at call time, so a
test or a script may change them):

- ``SAMPREF_raw``: converted datasets, ``Dataset003_BUSI/{imagesTr,labelsTr,dataset.json}``
- ``SAMPREF_preprocessed``: plans, splits, preprocessed arrays and caches
- ``SAMPREF_results``: trained runs

The defaults are ``./sampref_data/raw``, ``./sampref_data/preprocessed`` and ``./sampref_data/results``
relative to the working directory. A dataset is named ``Dataset{ID:03d}_{Name}`` as in nnU-Net; ``3``,
``003`` and ``Dataset003_BUSI`` all name the same one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sampref_bench.utilities.errors import SamprefError

_DEFAULT_BASE = Path("sampref_data")
_NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9][A-Za-z0-9_\-]*)$")


def _root(variable: str, default_leaf: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else _DEFAULT_BASE / default_leaf


def raw_root() -> Path:
    """Folder holding converted raw datasets (``$SAMPREF_raw``)."""
    return _root("SAMPREF_raw", "raw")


def preprocessed_root() -> Path:
    """Folder holding plans, splits, preprocessed data and caches (``$SAMPREF_preprocessed``)."""
    return _root("SAMPREF_preprocessed", "preprocessed")


def results_root() -> Path:
    """Folder holding trained runs (``$SAMPREF_results``)."""
    return _root("SAMPREF_results", "results")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset{ID:03d}_{name}`` after checking that the ID is in 1..999 and the name is a plain word."""
    if not 1 <= int(dataset_id) <= 999:
        raise SamprefError(f"dataset ID {dataset_id} is outside 1..999; choose a three-digit ID such as 3 or 103.")
    full = f"Dataset{int(dataset_id):03d}_{name}"
    if not _NAME_RE.match(full):
        raise SamprefError(
            f"dataset name {name!r} may hold only letters, digits, '_' and '-' (and must start with a letter "
            "or digit); pass --name with such a word, e.g. --name BUSI."
        )
    return full


def parse_dataset_id(spec: str | int) -> int | str:
    """Turn ``3``, ``"003"`` or ``"Dataset003_BUSI"`` into an int ID, or the full name when one is given."""
    text = str(spec).strip()
    if text.isdigit():
        return int(text)
    if _NAME_RE.match(text):
        return text
    raise SamprefError(
        f"cannot read {spec!r} as a dataset: give an ID (3 or 003) or a full name (Dataset003_BUSI)."
    )


def root_variable(root: Path) -> str:
    """The environment variable that names ``root`` (``SAMPREF_raw``, ...), or ``"the root"`` for another path."""
    for variable, leaf in (("SAMPREF_raw", "raw"), ("SAMPREF_preprocessed", "preprocessed"),
                           ("SAMPREF_results", "results")):
        if Path(root) == _root(variable, leaf):
            return variable
    return "the root"


def check_root(root: Path) -> None:
    """Raise :class:`SamprefError` when ``root`` (or one of its parents) exists but is a file, not a folder."""
    for candidate in (Path(root), *Path(root).parents):
        if candidate.exists():
            if not candidate.is_dir():
                variable = root_variable(root)
                raise SamprefError(
                    f"{root} (${variable}) must be a folder, but {candidate} is a file. Point {variable} at the "
                    "folder that holds the datasets (it is created when missing) or move the file away.")
            return


def existing_datasets(*roots: Path) -> list[str]:
    """Sorted names of the ``DatasetXXX_Name`` folders found in ``roots`` (default: raw and preprocessed).

    A root that is a file (or lies under one) is a :class:`SamprefError` naming its variable.
    """
    found: set[str] = set()
    for root in roots or (raw_root(), preprocessed_root()):
        check_root(root)
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))
    return sorted(found)


def resolve_dataset(spec: str | int, *roots: Path) -> str:
    """Resolve a dataset spec to its folder name, searching ``roots`` (default: raw, then preprocessed).

    Raises :class:`SamprefError` naming the datasets that exist when the spec matches none or several.
    """
    roots = roots or (raw_root(), preprocessed_root())
    wanted = parse_dataset_id(spec)
    names = existing_datasets(*roots)
    if isinstance(wanted, str):
        matches = [n for n in names if n == wanted]
    else:
        matches = [n for n in names if int(_NAME_RE.match(n).group(1)) == wanted]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(names) if names else "none"
    where = " and ".join(str(r) for r in roots)
    if not matches:
        raise SamprefError(
            f"no dataset matches {spec!r} in {where}. Datasets that exist: {listing}. "
            "Convert one first with `sampref_convert` or set SAMPREF_raw to the folder that holds it."
        )
    raise SamprefError(
        f"dataset ID {spec!r} is ambiguous: {', '.join(matches)} share it. Pass the full name instead, "
        "or remove the stale folder."
    )


def raw_dataset_dir(spec: str | int) -> Path:
    """Path of a converted dataset in ``$SAMPREF_raw`` (it must exist)."""
    return raw_root() / resolve_dataset(spec, raw_root())


def preprocessed_dataset_dir(spec: str | int) -> Path:
    """Path of a dataset's folder in ``$SAMPREF_preprocessed`` (resolved through raw, then preprocessed)."""
    name = resolve_dataset(spec, raw_root(), preprocessed_root())
    return preprocessed_root() / name
