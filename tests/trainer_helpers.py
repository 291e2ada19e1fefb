"""Small datasets and fast settings shared by the trainer tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from sampref_bench.dataset_conversion.busi import convert_busi
from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
from sampref_bench.planners.pipeline import plan_dataset
from tests.conftest import BUSI_SUBSET

FAST = {"model": "tiny", "model_arch": {"stride": 16}, "batch_size": 2, "iterations_per_epoch": 2}
#: Two-stage (DPO) trainers at test size: one stage-1 epoch, one stage-2 epoch, a low inference threshold.
DPO_TINY = {**FAST, "epochs": 1, "stage1_epochs": 1, "threshold": 0.1}


def planned_phantoms(dataset_id: int = 7, n_labels: int = 1, n_cases: int = 5,
                     spacing_xyz: tuple[float, float, float] = (0.8, 0.8, 3.0),
                     shape_zyx: tuple[int, int, int] = (12, 40, 32)) -> str:
    """A planned synthetic 3D dataset (fractions 0.5 and 1.0); returns its ID as text.

    The planner slices along the coarsest spacing: numpy axis 0 with the default ``spacing_xyz``.
    """
    write_synthetic_raw_dataset(dataset_id, "Phantom", n_cases, n_labels=n_labels, shape_zyx=shape_zyx,
                                spacing_xyz=spacing_xyz)
    plan_dataset(dataset_id, fractions=[0.5, 1.0], num_processes=1, progress=False)
    return str(dataset_id)


def planned_busi() -> str:
    """The bundled BUSI subset, converted and planned with the default fractions; returns "3"."""
    convert_busi(BUSI_SUBSET, 3)
    plan_dataset(3, num_processes=1, progress=False)
    return "3"


def prepared_dpo_roots(root: Path) -> Path:
    """Under ``root/{raw,preprocessed,results}``: the planned phantoms (dataset 7) with the finished stage-1 run
    of ``DPORanking`` at fraction 0.5, fold 0, :data:`DPO_TINY`, and warm caches; returns ``root``."""
    import pytest

    from sampref_bench.trainers.registry import get_trainer

    with pytest.MonkeyPatch.context() as patch:
        for key in ("raw", "preprocessed", "results"):
            patch.setenv(f"SAMPREF_{key}", str(root / key))
        trainer = get_trainer("DPORanking")(planned_phantoms(), 0, 0.5, overrides=DPO_TINY, progress=False)
        trainer.annotate = False
        trainer.initialize()
    return root


def copy_roots(prepared: Path, roots: dict[str, Path]) -> str:
    """Copy :func:`prepared_dpo_roots`' folders into a test's own ``SAMPREF_*`` roots; returns the dataset ID."""
    for key, folder in roots.items():
        shutil.copytree(prepared / key, folder)
    return "7"
