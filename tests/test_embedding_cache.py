import json

import numpy as np
import torch

from sampref_bench.models import build_sam
from sampref_bench.planners.data import PreprocessedData
from sampref_bench.planners.embedding_cache import EmbeddingCache
from sampref_bench.planners.pipeline import plan_dataset
from sampref_bench.trainers.registry import get_trainer
from tests.trainer_helpers import FAST, planned_phantoms

ARCH = {"stride": 16}
CASE = "synthetic_000"


def _data(sampref_roots):
    folder = sampref_roots["preprocessed"] / "Dataset007_Phantom"
    plans = json.loads((folder / "plans.json").read_text())
    return PreprocessedData(folder / "samprefPlans_2d", plans)


def _tiny(seed=0, image_size=256):
    return build_sam("tiny", seed=seed, image_size=image_size, arch_overrides=ARCH)


def test_cache_computes_once_per_slice_and_matches_encoder(sampref_roots):
    planned_phantoms()
    data = _data(sampref_roots)
    model = _tiny()
    cache = EmbeddingCache(data, model)
    assert cache.folder == sampref_roots["preprocessed"] / "Dataset007_Phantom" / "embeddings" / model.weights_id
    assert cache.ensure([(CASE, 3), (CASE, 5), (CASE, 3)], progress=False) == 2
    assert sorted(p.name.split("_")[2] for p in cache.folder.iterdir()) == ["0003", "0005"]
    emb = cache.get(CASE, 3)
    assert emb.shape == (256, 16, 16) and emb.dtype == np.float16
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(data.rgb(CASE, [3]))).numpy()
    np.testing.assert_allclose(emb.astype(np.float32), direct[0], rtol=1e-2, atol=1e-2)
    stamp = cache.path(CASE, 3).stat().st_mtime_ns
    again = EmbeddingCache(data, _tiny())
    assert again.ensure([(CASE, 3), (CASE, 5)], progress=False) == 0 and again.computed == 0
    assert again.path(CASE, 3).stat().st_mtime_ns == stamp


def test_size_is_reported_when_built(sampref_roots, capsys):
    planned_phantoms()
    cache = EmbeddingCache(_data(sampref_roots), _tiny())
    cache.ensure([(CASE, 0), (CASE, 1)], progress=True)
    n_files, n_bytes = cache.size_on_disk()
    assert n_files == 2 and n_bytes > 2 * 256 * 16 * 16 * 2
    assert f"2 new of 2 slices read; 2 slices, {n_bytes / 2**20:.1f} MiB on disk" in capsys.readouterr().out
    cache.ensure([(CASE, 0), (CASE, 2)], progress=True)
    assert "1 new of 2 slices read; 3 slices" in capsys.readouterr().out


def test_cache_survives_replanning_fractions_and_thresholds(sampref_roots):
    planned_phantoms()
    cache = EmbeddingCache(_data(sampref_roots), _tiny())
    cache.ensure([(CASE, 0), ("synthetic_001", 2)], progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()}
    plan_dataset(7, fractions=[0.25, 0.5, 1.0], thresholds=[0.4, 0.5], num_processes=1, progress=False)
    replanned = EmbeddingCache(_data(sampref_roots), _tiny())
    assert replanned.folder == cache.folder
    assert replanned.missing([(CASE, 0), ("synthetic_001", 2)]) == []
    assert {p: p.stat().st_mtime_ns for p in replanned.folder.iterdir()} == stamps


def test_cache_keyed_by_weights_and_image_preprocessing(sampref_roots):
    planned_phantoms()
    first = EmbeddingCache(_data(sampref_roots), _tiny())
    assert EmbeddingCache(_data(sampref_roots), _tiny(seed=1)).folder != first.folder
    first.ensure([(CASE, 0), (CASE, 1)], progress=False)
    old_files = sorted(first.folder.iterdir())
    plan_dataset(7, fractions=[0.5, 1.0], image_size=128, num_processes=1, progress=False)
    small = EmbeddingCache(_data(sampref_roots), _tiny(image_size=128))
    assert small.folder != first.folder  # the weights ID names the input size
    # same weights folder, other preprocessed image: the key differs, so old files are never read
    same_weights = EmbeddingCache(_data(sampref_roots), _tiny())
    assert same_weights.folder == first.folder and same_weights.key(CASE) != first.key(CASE)
    assert same_weights.missing([(CASE, 0), (CASE, 1)]) == [(CASE, 0), (CASE, 1)]
    assert sorted(same_weights.prune_stale([CASE])) == old_files
    assert not any(p.exists() for p in old_files)


def test_trainer_embeds_only_what_it_reads_and_nothing_after_replanning(sampref_roots):
    dataset = planned_phantoms()
    trainer = get_trainer("SAMNoPrompt")(dataset, 0, 0.5, overrides={**FAST, "epochs": 1}, progress=False)
    trainer.initialize()
    needed = {(s.case, s.slice) for s in trainer.train_samples}
    needed |= {(c, k) for c in trainer.roles.val for k in range(trainer.data.meta(c)["n_slices"])}
    unlabeled = set(trainer.roles.unlabeled)
    assert trainer.cache.computed == len(needed)
    on_disk = {(p.stem.rsplit("_", 2)[0], int(p.stem.rsplit("_", 2)[1])) for p in trainer.cache.folder.iterdir()}
    assert on_disk == needed and not {c for c, _ in on_disk} & unlabeled
    n_train_slices = sum(len(trainer.data.meta(c)["slice_content"]) for c in trainer.roles.labeled)
    assert len({p for p in needed if p[0] in trainer.roles.labeled}) < n_train_slices  # not every slice
    trainer.run_training()
    plan_dataset(7, fractions=[0.5, 0.7, 1.0], thresholds=[0.35, 0.65], num_processes=1, progress=False)
    again = get_trainer("SAMNoPrompt")(dataset, 0, 0.5, overrides={**FAST, "epochs": 1, "lr": 3e-4}, progress=False)
    again.initialize()
    assert again.cache.computed == 0
