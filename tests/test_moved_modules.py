"""The trainers' family packages: old flat import paths keep working for one release (with a warning), and no
module below the trainers imports them."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from sampref_bench.trainers._moved import MOVED
from sampref_bench.trainers.registry import available_trainers, get_trainer, import_trainer_module

PACKAGE = Path(__file__).resolve().parents[1] / "sampref_bench"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_new_module_and_warns(old: str) -> None:
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is new
    assert sys.modules[old] is new


def test_from_import_of_an_old_path_gives_the_same_classes() -> None:
    sys.modules.pop("sampref_bench.trainers.sam_trainer", None)
    with pytest.warns(DeprecationWarning):
        from sampref_bench.trainers.sam_trainer import SAMTrainer, jitter_boxes  # noqa: F401
    from sampref_bench.trainers.sam.trainer import SAMTrainer as Current

    assert SAMTrainer is Current


def test_a_trainer_module_written_for_the_flat_layout_registers(tmp_path: Path) -> None:
    for old in ("sampref_bench.trainers.sam_trainers", "sampref_bench.trainers.unet_trainer"):
        sys.modules.pop(old, None)
    module = tmp_path / "flat_layout_trainers.py"
    module.write_text(
        "from sampref_bench.trainers.sam_trainers import SAMNoPrompt\n"
        "from sampref_bench.trainers.unet_trainer import UNet\n\n"
        "class FlatLayoutSAM(SAMNoPrompt):\n    pass\n\n"
        "class FlatLayoutUNet(UNet):\n    pass\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # the registry must show them anyway
        import_trainer_module(str(module))
    moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("sampref_bench.trainers.sam.bounds" in m for m in moved), moved
    assert any("sampref_bench.trainers.unet.trainer" in m for m in moved), moved
    assert {"FlatLayoutSAM", "FlatLayoutUNet"} <= set(available_trainers())
    from sampref_bench.trainers.sam.bounds import SAMNoPrompt

    assert issubclass(get_trainer("FlatLayoutSAM"), SAMNoPrompt)


def test_trainer_names_and_modules_of_the_new_layout() -> None:
    where = {name: get_trainer(name).__module__ for name in available_trainers() if not name.startswith("Flat")}
    assert where["SAMBoxOracle"] == "sampref_bench.trainers.sam.bounds"
    assert where["SAMBaseline"] == "sampref_bench.trainers.sam.prompted"
    assert where["SAMBaselineContinued"] == "sampref_bench.trainers.sam.two_stage"
    assert where["SAMPseudoLabel"] == "sampref_bench.trainers.sam.pseudo_label"
    assert where["DPORanking"] == "sampref_bench.trainers.dpo.trainers"
    assert where["UNet"] == "sampref_bench.trainers.unet.trainer"
    assert where["UAMT"] == "sampref_bench.trainers.unet.semi_supervised"
    assert {"CPS", "DPOBestOnly", "DPORating", "FixMatch", "MeanTeacher", "SAMBoxOnly", "SAMNoPrompt", "SAMNoVQA",
            "SAMTextOnly"} <= set(where)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


#: Packages below the trainers: none of them may import a trainer, the grid or a command.
LOWER = ("utilities", "dataset_conversion", "planners", "models", "prompts", "evaluation")
UPPER = ("sampref_bench.trainers", "sampref_bench.grid", "sampref_bench.cli", "sampref_bench.prediction")


@pytest.mark.parametrize("package", LOWER)
def test_no_import_runs_up_the_floors(package: str) -> None:
    offenders = sorted(f"{path.relative_to(PACKAGE)} imports {name}"
                       for path in (PACKAGE / package).rglob("*.py") for name in _imports(path)
                       if name.startswith(UPPER))
    assert offenders == []


#: Which family packages each family may import (DPO builds on the SAM trainers; nothing else crosses).
FAMILY_IMPORTS = {"sam": (), "unet": (), "dpo": ("sam",)}


@pytest.mark.parametrize("family", sorted(FAMILY_IMPORTS))
def test_a_family_imports_only_the_framework_and_the_families_it_builds_on(family: str) -> None:
    others = [f"sampref_bench.trainers.{f}" for f in FAMILY_IMPORTS if f != family and f not in FAMILY_IMPORTS[family]]
    offenders = sorted(f"{path.name} imports {name}" for path in (PACKAGE / "trainers" / family).rglob("*.py")
                       for name in _imports(path) if any(name == o or name.startswith(o + ".") for o in others))
    assert offenders == []
