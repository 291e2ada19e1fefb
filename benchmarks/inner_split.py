"""An inner split of one fold's training cases, as its own dataset, for choosing defaults without the fold's test set.

A fold's validation cases are its test set: nothing may be chosen on them. To choose a default (a prompt source,
a configuration, a number of augmented views, a training length) a benchmark instead trains and scores on an
*inner* dataset made of the outer fold's training cases only: ``Dataset{inner_id}_{name}inner`` holds a copy of
those raw cases (hard links where the file system allows, else copies; the outer raw folder is only read), and
``sampref_plan`` gives it its own five folds; inner fold 0 then splits the outer training cases about 80/20, and
its fractions label the first ``ceil(f * n)`` of its own permutation.

The inner dataset's preprocessed images are those of the outer dataset (same normalization per image), so their
embedding keys are the same; its ``embeddings/`` folder is a link to the outer one and nothing is embedded twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sampref_bench.utilities.atomic import write_json_atomic


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_inner_dataset(outer_id: int = 3, inner_id: int = 903, fold: int = 0) -> str:
    """Create (once) and plan the inner dataset of ``fold``'s training cases of dataset ``outer_id``; return its
    folder name. The SAMPREF roots must point at the benchmark's workdir (:func:`benchmarks.report.set_roots`)
    and the outer dataset must be planned."""
    from sampref_bench import paths
    from sampref_bench.planners.pipeline import load_splits, plan_dataset

    outer = paths.resolve_dataset(outer_id, paths.preprocessed_root(), paths.raw_root())
    name = outer.split("_", 1)[1] + "inner"
    folder = paths.dataset_folder_name(inner_id, name)
    raw_in, raw_out = paths.raw_root() / outer, paths.raw_root() / folder
    train = set(load_splits(paths.preprocessed_root() / outer)[fold]["train"])
    if not raw_out.is_dir():
        staging = raw_out.with_name(raw_out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        dataset = json.loads((raw_in / "dataset.json").read_text())
        ending = dataset["file_ending"]
        for image in sorted((raw_in / "imagesTr").iterdir()):
            case = image.name[: -len(ending)].rsplit("_", 1)[0]
            if case in train:
                _link_or_copy(image, staging / "imagesTr" / image.name)
                _link_or_copy(raw_in / "labelsTr" / f"{case}{ending}", staging / "labelsTr" / f"{case}{ending}")
        dataset["numTraining"] = len(train)
        dataset["description"] = (f"inner dataset: the {len(train)} training cases of fold {fold} of {outer}, for "
                                  "choosing defaults without that fold's validation cases")
        dataset.pop("case_groups", None) if not dataset.get("case_groups") else dataset.update(
            case_groups={c: g for c, g in dataset["case_groups"].items() if c in train})
        write_json_atomic(staging / "dataset.json", dataset)
        staging.rename(raw_out)
    embeddings = paths.preprocessed_root() / folder / "embeddings"
    if not embeddings.exists():
        shared = paths.preprocessed_root() / outer / "embeddings"
        shared.mkdir(parents=True, exist_ok=True)
        embeddings.parent.mkdir(parents=True, exist_ok=True)
        embeddings.symlink_to(shared, target_is_directory=True)
    plan_dataset(inner_id, num_processes=2, progress=False)
    return folder
