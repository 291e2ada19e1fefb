"""Shared fixtures: every test gets its own SAMPREF_* roots under tmp_path and no network."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUSI_SUBSET = REPO / "demo_data" / "BUSI_subset"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def sampref_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point SAMPREF_raw/preprocessed/results at fresh folders for each test."""
    roots = {}
    for key in ("raw", "preprocessed", "results"):
        folder = tmp_path / "sampref_data" / key
        monkeypatch.setenv(f"SAMPREF_{key}", str(folder))
        roots[key] = folder
    return roots


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test (the machine's two cores are shared; tiny convolutions run slower on more)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
