import json

import pytest

from sampref_bench.utilities.atomic import load_json, staged_directory, write_json_atomic
from sampref_bench.utilities.errors import SamprefError


def test_json_round_trip_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "x.json"
    write_json_atomic(target, {"b": [1, 2.5], "a": float("nan")})
    data = load_json(target)
    assert data["b"] == [1, 2.5] and data["a"] != data["a"]
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_malformed_json_names_file(tmp_path):
    bad = tmp_path / "plans.json"
    bad.write_text("{not json")
    with pytest.raises(SamprefError, match="plans.json is not valid JSON"):
        load_json(bad)


def test_staged_directory_publishes_on_success(tmp_path):
    final = tmp_path / "Dataset001_A"
    with staged_directory(final) as stage:
        (stage / "f.txt").write_text("new")
        assert not final.exists()
    assert (final / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A"]


def test_staged_directory_keeps_old_on_failure(tmp_path):
    final = tmp_path / "Dataset001_A"
    final.mkdir()
    (final / "f.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_directory(final, overwrite=True) as stage:
            (stage / "f.txt").write_text("half")
            raise RuntimeError("converter crashed")
    assert (final / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A"]


def test_staged_directory_refuses_existing_without_overwrite(tmp_path):
    final = tmp_path / "Dataset001_A"
    final.mkdir()
    with pytest.raises(SamprefError, match="--overwrite"):
        with staged_directory(final):
            pass


def test_staged_directory_overwrites(tmp_path):
    final = tmp_path / "Dataset001_A"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staged_directory(final, overwrite=True) as stage:
        (stage / "new.txt").write_text(json.dumps(1))
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A"]
