"""Bad inputs to conversion and planning: one sentence naming the file and the fix, never a traceback, and
nothing half-written or left behind (issue 20)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from sampref_bench.cli.convert import main as convert_main
from sampref_bench.cli.plan import main as plan_main
from sampref_bench.dataset_conversion import writer as writer_module
from sampref_bench.dataset_conversion.busi import convert_busi
from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset
from sampref_bench.dataset_conversion.verify import verify_raw_dataset
from sampref_bench.planners import preprocessing as preprocessing_module
from sampref_bench.planners.pipeline import data_folder, plan_dataset
from sampref_bench.planners.raw_record import RAW_FILES_KEY, check_raw_unchanged
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.staging import OWNER_FILE, remove_stale_staging
from tests.conftest import REPO

SHAPE = (8, 32, 32)


def _phantoms(dataset_id: int = 7, n: int = 6) -> Path:
    return write_synthetic_raw_dataset(dataset_id, "Phantom", n, shape_zyx=SHAPE, spacing_xyz=(0.8, 0.8, 3.0))


def _plan(spec: int = 7, **kw):
    kw.setdefault("fractions", [0.5, 1.0])
    kw.setdefault("image_size", 64)
    kw.setdefault("num_processes", 1)
    return plan_dataset(spec, progress=False, **kw)


def _digests(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _fake_staging(parent: Path, name: str, pid: int | None, created: float | None = None) -> Path:
    """A staging folder as a killed process leaves it: some arrays, and the owner record unless ``pid`` is None."""
    folder = parent / name
    folder.mkdir(parents=True)
    np.save(folder / "case.npy", np.zeros((64, 64), np.float32))
    if pid is not None:
        record = {"pid": pid, "host": os.uname().nodename, "created": created or time.time()}
        (folder / OWNER_FILE).write_text(json.dumps(record))
    return folder


# ------------------------------------------------------------------------------ 1. planning writes all or nothing
def test_refused_fractions_leave_plans_and_splits_byte_identical():
    _phantoms()
    out = _plan()
    files = ("plans.json", "splits_final.json", "splits_final_info.json", "dataset.json")
    before = _digests(out.folder, files)
    for fractions in ([0.0001, 1.0], [0.0001, 0.2]):   # the second refusal once emptied dpo_fractions
        with pytest.raises(SamprefError, match="less than one case") as err:
            _plan(fractions=fractions)
        assert "Nothing was written" in str(err.value) and "plans.json" in str(err.value)
        assert _digests(out.folder, files) == before
    plans = json.loads(out.plans_file.read_text())
    info = json.loads((out.folder / "splits_final_info.json").read_text())
    assert plans["fractions"] == info["fractions"] == [0.1, 0.5, 1.0]
    assert _plan().ran == []


def test_refused_plan_through_the_cli_is_one_sentence(capsys):
    _phantoms()
    _plan()
    assert plan_main(["-d", "7", "--fractions", "0.0001", "1", "-np", "1", "--image-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sampref_plan: error: fraction 0.0001") and "Traceback" not in err
    assert "Nothing was written" in err


# ------------------------------------------------------------------------------ 2. sentences instead of tracebacks
def test_dataset_json_that_is_a_list_is_named(sampref_roots, capsys):
    raw = _phantoms()
    (raw / "dataset.json").write_text("[1, 2]")
    with pytest.raises(SamprefError, match=r"dataset.json holds a list, not a JSON object"):
        _plan()
    report = verify_raw_dataset(raw)
    assert not report.ok and "holds a list" in report.format_problems()
    assert convert_main(["verify", "-d", "7"]) == 1
    assert "holds a list" in capsys.readouterr().out
    assert not (sampref_roots["preprocessed"] / raw.name / "plans.json").exists()


def test_file_ending_that_matches_no_file_is_refused_before_planning(sampref_roots):
    raw = _phantoms()
    meta = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".png"}))
    with pytest.raises(SamprefError) as err:
        _plan()
    message = str(err.value)
    assert "is not a dataset sampref_plan can read; nothing was planned" in message
    assert f"{raw / 'imagesTr' / 'synthetic_000_0000.nii.gz'}: unexpected file" in message
    assert "numTraining is 6 but 0 labeled case(s) were found" in message
    assert "sampref_convert verify -d Dataset007_Phantom" in message
    assert not (sampref_roots["preprocessed"] / raw.name).exists()


@pytest.mark.parametrize("under", [False, True])
def test_raw_root_that_is_a_file(tmp_path, monkeypatch, under, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    monkeypatch.setenv("SAMPREF_raw", str(blocker / "raw" if under else blocker))
    with pytest.raises(SamprefError, match=rf"\(\$SAMPREF_raw\) must be a folder, but {blocker} is a file"):
        _phantoms()
    with pytest.raises(SamprefError, match=rf"must be a folder, but {blocker} is a file"):
        _plan()
    assert plan_main(["-d", "7"]) == 2
    err = capsys.readouterr().err
    assert "Point SAMPREF_raw at the folder" in err and "Traceback" not in err
    assert blocker.read_text() == "a file"


def test_preprocessed_root_under_a_file(tmp_path, monkeypatch):
    _phantoms()
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    monkeypatch.setenv("SAMPREF_preprocessed", str(blocker / "pre"))
    with pytest.raises(SamprefError, match=r"\(\$SAMPREF_preprocessed\) must be a folder, but .*plain_file is a file"):
        _plan()


def test_unwritable_raw_root_is_one_sentence(sampref_roots, monkeypatch):
    """Works as root too: the denial is simulated where the staging folder is made."""
    real_mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if str(self).startswith(str(sampref_roots["raw"])):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(SamprefError) as err:
        _phantoms()
    assert f"cannot write {sampref_roots['raw']}" in str(err.value)
    assert "must be a folder this user can write: fix its permissions or point SAMPREF_raw" in str(err.value)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_full_disk_during_conversion_keeps_nothing(sampref_roots, monkeypatch, code):
    calls = []
    real = writer_module.write_image

    def fills_up(path, array, geometry=None):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(code, os.strerror(code), str(path))
        real(path, array, geometry)

    monkeypatch.setattr(writer_module, "write_image", fills_up)
    with pytest.raises(SamprefError) as err:
        _phantoms()
    message = str(err.value)
    assert message.startswith(f"the disk holding {sampref_roots['raw']} ($SAMPREF_raw) is full ({os.strerror(code)})")
    assert f"while writing {calls[-1]}" in message and "nothing half-written was kept" in message
    assert list(sampref_roots["raw"].iterdir()) == []   # no staging folder, no dataset


def test_full_disk_reported_by_simpleitk_through_the_cli(sampref_roots, monkeypatch, tmp_path, capsys):
    """SimpleITK says "Could not write" (a RuntimeError); with the disk full, that is a full disk."""
    source = _busi_source(tmp_path, ["benign (1)", "benign (2)"])

    def sitk_fails(path, array, geometry=None):
        raise RuntimeError("itk::ERROR: PNGImageIO: Could not write")

    monkeypatch.setattr(writer_module, "write_image", sitk_fails)
    monkeypatch.setattr(writer_module, "disk_nearly_full", lambda folder, needed=0: True)
    assert convert_main(["busi", str(source), "-d", "3"]) == 2
    err = capsys.readouterr().err
    assert "sampref_convert: error: the disk holding" in err and "is full" in err and "Traceback" not in err
    assert list(sampref_roots["raw"].iterdir()) == []


def test_full_disk_during_preprocessing_keeps_nothing(sampref_roots, monkeypatch):
    raw = _phantoms()

    def full(path, array):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(preprocessing_module, "save_npy_atomic", full)
    with pytest.raises(SamprefError, match=r"\(\$SAMPREF_preprocessed\) is full \(No space left on device\)"):
        _plan()
    out = sampref_roots["preprocessed"] / raw.name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.startswith("samprefPlans")]


def _busi_source(tmp_path: Path, stems: list[str]) -> Path:
    source = tmp_path / "busi"
    (source / "benign").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(source / "benign" / f"{stem}.png")
        mask = np.zeros((24, 24), np.uint8)
        mask[5:12, 6:14] = 255
        Image.fromarray(mask).save(source / "benign" / f"{stem}_mask.png")
    return source


def test_busi_files_mapping_to_one_case_are_both_named(sampref_roots, tmp_path):
    source = _busi_source(tmp_path, ["benign (12)", "benign(12)", "benign (13)"])
    with pytest.raises(SamprefError) as err:
        convert_busi(source, 3)
    message = str(err.value)
    for name in ("benign (12).png", "benign(12).png"):
        assert str(source / "benign" / name) in message
    assert "map to the same case name 'benign_0012'" in message and "rename all but one" in message
    assert not sampref_roots["raw"].exists() or list(sampref_roots["raw"].iterdir()) == []


# ------------------------------------------------------------------------------ 3. no leftovers
def test_stale_staging_of_a_killed_conversion_is_removed(sampref_roots, capsys):
    raw_root = sampref_roots["raw"]
    dead = _fake_staging(raw_root, ".Dataset009_Old.staging-0badc0de", _dead_pid())
    live = _fake_staging(raw_root, ".Dataset010_Busy.staging-12345678", os.getpid())
    fresh_ownerless = _fake_staging(raw_root, ".Dataset011_Old.staging-abcdef01", None)
    old_ownerless = _fake_staging(raw_root, ".Dataset012_Old.staging-abcdef02", None)
    two_hours_ago = time.time() - 7200
    os.utime(old_ownerless, (two_hours_ago, two_hours_ago))
    _phantoms()
    err = capsys.readouterr().err
    assert not dead.exists() and not old_ownerless.exists()
    assert live.exists() and fresh_ownerless.exists()
    assert f"removed the stale staging folder {dead} (0.0 MB, left by process" in err
    assert "which is no longer running" in err and "no owner record, untouched for 2.0 h" in err
    assert (raw_root / "Dataset007_Phantom" / "dataset.json").is_file()
    assert not (raw_root / "Dataset007_Phantom" / OWNER_FILE).exists()


def test_stale_preprocessing_staging_is_removed_even_when_current(capsys):
    _phantoms()
    out = _plan()
    dead = _fake_staging(out.folder, ".samprefPlans_2d.staging-0badc0de", _dead_pid())
    ancient = _fake_staging(out.folder, ".samprefPlans_2d.staging-0badc0df", os.getpid(),
                            created=time.time() - 3 * 24 * 3600)
    assert _plan().ran == []
    assert not dead.exists() and not ancient.exists()
    err = capsys.readouterr().err
    assert str(dead) in err and "h ago by process" in err
    data_dir = data_folder(out.folder, json.loads(out.plans_file.read_text()))
    assert not (data_dir / OWNER_FILE).exists()


def test_interrupted_swap_is_undone(tmp_path, capsys):
    """Killed between the two renames of an overwrite: the previous folder comes back; after the second rename,
    the renamed-away old folder is removed."""
    parent = tmp_path / "pre"
    old = _fake_staging(parent, ".samprefPlans_2d.old-0badc0de", None)
    finished_final = parent / "Dataset003_X"
    finished_final.mkdir()
    finished_old = _fake_staging(parent, ".Dataset003_X.old-0badc0df", None)
    assert remove_stale_staging(parent) == [finished_old]
    assert old.exists()  # just renamed away: maybe a live swap
    remove_stale_staging(parent, now=time.time() + 7200)
    assert (parent / "samprefPlans_2d" / "case.npy").is_file() and not old.exists()
    assert "restored" in capsys.readouterr().err


_POOL_SCRIPT = """
import time
from sampref_bench.utilities.parallel import map_with_progress
map_with_progress(time.sleep, [(0.0,)] + [(120.0,)] * 4, 2, "t", progress=False, min_serial_s=0.0)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_and_resource_tracker_die_with_a_killed_parent():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", _POOL_SCRIPT], cwd=REPO, env=env)
    children: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(children) < 3:  # two workers and the resource tracker
            time.sleep(0.2)
            children = _children(parent.pid)
        assert len(children) >= 3, children
        time.sleep(0.5)  # the workers run their initializer before they take a job
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(pid) for pid in children):
            time.sleep(0.1)
        assert not [pid for pid in children if _running(pid)]
    finally:  # never leave the workers of a failed run behind
        parent.kill()
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    array = change(sitk.GetArrayFromImage(image))
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(path), True)


def test_raw_image_edited_after_planning_stops_training():
    from sampref_bench.trainers.registry import get_trainer
    from tests.trainer_helpers import FAST

    raw = _phantoms(n=5)
    out = _plan()
    plans = json.loads(out.plans_file.read_text())
    data_dir = data_folder(out.folder, plans)
    record = json.loads((data_dir / "preprocessing.json").read_text())[RAW_FILES_KEY]
    assert set(record) == {f"imagesTr/synthetic_00{i}_0000.nii.gz" for i in range(5)} | \
        {f"labelsTr/synthetic_00{i}.nii.gz" for i in range(5)}
    image = raw / "imagesTr" / "synthetic_002_0000.nii.gz"
    stat = image.stat()
    image.write_bytes(image.read_bytes())   # same bytes, new mtime: nothing stale
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    check_raw_unchanged(raw, data_dir, raw.name)
    _rewrite(image, lambda a: a[::-1].copy())
    trainer = get_trainer("SAMNoPrompt")("7", 0, 0.5, overrides=FAST, progress=False)
    with pytest.raises(SamprefError) as err:
        trainer.initialize()
    message = str(err.value)
    assert f"{image} (case synthetic_002): its content differs" in message
    assert "arrays are stale" in message and "rerun `sampref_plan -d Dataset007_Phantom`" in message
    assert trainer.networks == {}
    _plan()   # replanning rebuilds the arrays and the record
    check_raw_unchanged(raw, data_dir, raw.name)


def test_raw_label_edited_after_planning_warns():
    raw = _phantoms(n=5)
    out = _plan()
    data_dir = data_folder(out.folder, json.loads(out.plans_file.read_text()))
    label = raw / "labelsTr" / "synthetic_001.nii.gz"
    _rewrite(label, np.zeros_like)
    with pytest.warns(UserWarning, match=r"1 raw label\(s\) changed after sampref_plan preprocessed") as caught:
        check_raw_unchanged(raw, data_dir, raw.name)
    assert "(case synthetic_001)" in str(caught[0].message) and "sampref_plan -d Dataset007_Phantom" in \
        str(caught[0].message)


def test_raw_record_is_added_to_an_older_preprocessed_folder():
    _phantoms(n=5)
    out = _plan()
    marker = data_folder(out.folder, json.loads(out.plans_file.read_text())) / "preprocessing.json"
    record = json.loads(marker.read_text())
    assert RAW_FILES_KEY in record
    old = {k: v for k, v in record.items() if k != RAW_FILES_KEY}
    marker.write_text(json.dumps(old))
    assert _plan().ran == []
    assert json.loads(marker.read_text()) == record


def test_a_copy_without_raw_images_trains_but_a_removed_image_still_stops_it():
    """A GPU machine's copy holds labelsTr and the arrays, no imagesTr: not a change. One image removed from an
    imagesTr that is there is."""
    raw = _phantoms(n=5)
    out = _plan()
    data_dir = data_folder(out.folder, json.loads(out.plans_file.read_text()))
    images = raw / "imagesTr"
    (images / "synthetic_001_0000.nii.gz").unlink()
    with pytest.raises(SamprefError, match=r"synthetic_001_0000.nii.gz \(case synthetic_001\): it was removed"):
        check_raw_unchanged(raw, data_dir, raw.name)
    shutil.rmtree(images)
    check_raw_unchanged(raw, data_dir, raw.name)  # no imagesTr at all: nothing to compare
    _rewrite(raw / "labelsTr" / "synthetic_002.nii.gz", np.zeros_like)
    with pytest.warns(UserWarning, match=r"1 raw label\(s\) changed"):  # the labels that are there still count
        check_raw_unchanged(raw, data_dir, raw.name)
