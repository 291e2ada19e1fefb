from pathlib import Path

import pytest

from sampref_bench import paths
from sampref_bench.utilities.errors import SamprefError


def _make(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_roots_follow_environment(sampref_roots, monkeypatch):
    assert paths.raw_root() == sampref_roots["raw"]
    monkeypatch.delenv("SAMPREF_results")
    assert paths.results_root() == Path("sampref_data") / "results"


@pytest.mark.parametrize("spec", [3, "3", "003", "Dataset003_BUSI"])
def test_every_spelling_resolves(sampref_roots, spec):
    _make(sampref_roots["raw"], "Dataset003_BUSI", "Dataset030_Other")
    assert paths.resolve_dataset(spec) == "Dataset003_BUSI"


def test_missing_id_lists_existing(sampref_roots):
    _make(sampref_roots["raw"], "Dataset003_BUSI", "Dataset010_Liver")
    with pytest.raises(SamprefError, match=r"no dataset matches '7'.*Dataset003_BUSI, Dataset010_Liver"):
        paths.resolve_dataset("7")


def test_ambiguous_id_is_an_error(sampref_roots):
    _make(sampref_roots["raw"], "Dataset003_BUSI", "Dataset003_BUSIv2")
    with pytest.raises(SamprefError, match="ambiguous"):
        paths.resolve_dataset(3)
    assert paths.resolve_dataset("Dataset003_BUSIv2") == "Dataset003_BUSIv2"


def test_preprocessed_only_dataset_resolves(sampref_roots):
    _make(sampref_roots["preprocessed"], "Dataset004_Lung")
    assert paths.preprocessed_dataset_dir("4") == sampref_roots["preprocessed"] / "Dataset004_Lung"


@pytest.mark.parametrize("spec", ["busi", "Dataset3_BUSI", "3.0", ""])
def test_unreadable_specs(spec):
    with pytest.raises(SamprefError, match="cannot read"):
        paths.parse_dataset_id(spec)


@pytest.mark.parametrize("dataset_id,name", [(0, "A"), (1000, "A"), (3, "has space"), (3, "")])
def test_bad_folder_names(dataset_id, name):
    with pytest.raises(SamprefError):
        paths.dataset_folder_name(dataset_id, name)
