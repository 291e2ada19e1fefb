"""Small datasets and fast settings shared by the trainer tests."""

from __future__ import annotations

from sampref_bench.dataset_conversion.busi import convert_busi
from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
from sampref_bench.planners.pipeline import plan_dataset
from tests.conftest import BUSI_SUBSET

FAST = {"model": "tiny", "model_arch": {"stride": 16}, "batch_size": 2, "iterations_per_epoch": 2}


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
