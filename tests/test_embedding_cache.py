import json

import numpy as np
import torch

from sampref_bench.models import build_sam
from sampref_bench.planners.embedding_cache import EmbeddingCache
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.trainers.data import PreprocessedData
from tests.trainer_helpers import planned_phantoms

ARCH = {"stride": 16}


def _data(sampref_roots):
    folder = sampref_roots["preprocessed"] / "Dataset007_Phantom"
    plans = json.loads((folder / "plans.json").read_text())
    return PreprocessedData(folder / "samprefPlans_2d", plans)


def test_cache_computes_once_and_matches_encoder(sampref_roots):
    planned_phantoms()
    data = _data(sampref_roots)
    model = build_sam("tiny", seed=0, arch_overrides=ARCH)
    cache = EmbeddingCache(data, model)
    cache.ensure(["synthetic_000"], progress=False)
    path = cache.path("synthetic_000")
    stamp = path.stat().st_mtime_ns
    emb = cache.get("synthetic_000")
    n_slices = data.meta("synthetic_000")["n_slices"]
    assert emb.shape == (n_slices, 256, 16, 16) and emb.dtype == np.float16
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(data.rgb("synthetic_000", [3]))).numpy()
    np.testing.assert_allclose(emb[3].astype(np.float32), direct[0], rtol=1e-2, atol=1e-2)
    again = EmbeddingCache(data, build_sam("tiny", seed=0, arch_overrides=ARCH))
    again.ensure(["synthetic_000"], progress=False)
    assert again.path("synthetic_000") == path and path.stat().st_mtime_ns == stamp


def test_cache_invalidated_by_weights_and_plan(sampref_roots):
    planned_phantoms()
    data = _data(sampref_roots)
    first = EmbeddingCache(data, build_sam("tiny", seed=0, arch_overrides=ARCH))
    other_weights = EmbeddingCache(data, build_sam("tiny", seed=1, arch_overrides=ARCH))
    assert first.folder != other_weights.folder
    first.ensure(["synthetic_000"], progress=False)
    plan_dataset(7, fractions=[0.5, 1.0], image_size=128, num_processes=1, progress=False)
    replanned = EmbeddingCache(_data(sampref_roots), build_sam("tiny", seed=0, image_size=128, arch_overrides=ARCH))
    assert replanned.folder != first.folder
    assert replanned.prune_stale() == [first.folder.parent / first.folder.name] or not first.folder.exists()
    assert not first.folder.exists()
