"""``sampref_train --num-gpus N``: a two-process gloo run (launched the way users launch it) follows the loss curve of a
single-process run with the same global batch, only rank 0 writes, its checkpoint loads into a single process; the
batch sharding helper; trainers that cannot shard refuse."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sampref_bench.cli.train import main as train_main
from sampref_bench.trainers import distributed
from sampref_bench.trainers.registry import get_trainer
from sampref_bench.trainers.run_folder import load_checkpoint
from sampref_bench.utilities.errors import SamprefError
from tests.test_unet_trainers import _planned_phantoms

#: The tiny U-Net run of both sides: 2 epochs x 2 steps of a global batch of 4 slices, 4-16 channels at 64 px.
TINY_ARGS = ["--fraction", "0.5", "--device", "cpu", "--no-progress", "--epochs", "2", "--set", "batch_size=4",
             "--set", "iterations_per_epoch=2", "--set", "channels=[4, 8, 16]", "--set", "num_workers=0"]
TINY = {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 4, "channels": [4, 8, 16], "num_workers": 0}

#: Loaded by every Python process of the launched run (``PYTHONPATH``): records each write (open for writing,
#: mkdir, rename) under ``$SAMPREF_results`` to ``$SAMPREF_TEST_WRITES.{RANK}`` ("launcher": the CLI and torchrun).
WRITE_RECORDER = """
import os
import sys

_root = os.environ.get("SAMPREF_results")
_log = os.environ.get("SAMPREF_TEST_WRITES")
if _root and _log:
    _root = os.path.abspath(_root)
    _record = f"{_log}.{os.environ.get('RANK', 'launcher')}"
    _busy = []

    def _hook(event, args):
        if _busy or event not in ("open", "os.mkdir", "os.rename", "os.replace", "os.remove"):
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writing:
                return
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(_root):
            _busy.append(1)
            try:
                with open(_record, "a") as f:
                    f.write(f"{event} {path}\\n")
            finally:
                _busy.clear()

    sys.addaudithook(_hook)
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in this process (two shared cores; the launched processes get ``OMP_NUM_THREADS=1``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ helpers
def test_shard_batch_by_hand():
    batch = {"index": 3, "labeled": {"image": torch.arange(16.0).reshape(4, 2, 2), "label": torch.tensor([0, 1, 2, 3])},
             "names": ("a", "b"), "scalar": torch.tensor(7.0)}
    first, second = distributed.shard_batch(batch, 0, 2), distributed.shard_batch(batch, 1, 2)
    assert first["index"] == second["index"] == 3 and first["names"] == ("a", "b")
    assert first["labeled"]["label"].tolist() == [0, 1] and second["labeled"]["label"].tolist() == [2, 3]
    assert second["labeled"]["image"].tolist() == [[[8.0, 9.0], [10.0, 11.0]], [[12.0, 13.0], [14.0, 15.0]]]
    assert float(second["scalar"]) == 7.0  # no leading batch axis: kept whole
    assert distributed.shard_batch([torch.arange(6)], 2, 3)[0].tolist() == [4, 5]  # rank 2 of 3: rows 4..5
    assert distributed.shard_batch(batch, 0, 1) is batch
    with pytest.raises(SamprefError, match="3 items cannot be split evenly over 2"):
        distributed.shard_batch(torch.zeros(3), 0, 2)
    assert distributed.check_divisible(8, 4) == 2


def test_helpers_without_a_group():
    assert not distributed.is_active() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main() and distributed.mean_metrics({"loss": 0.5}, torch.device("cpu")) == {"loss": 0.5}
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda")
    command = distributed.torchrun_command(2, ["003", "UNet", "0", "--num-gpus", "2"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert command[6:8] == ["-m", "sampref_bench.cli.train"] and command[-2:] == ["--num-gpus", "2"]


@pytest.mark.parametrize("name", ["MeanTeacher", "SAMBoxOracle"])
def test_trainers_that_cannot_shard_refuse(name, capsys):
    assert not get_trainer(name).supports_distributed() and get_trainer("UNet").supports_distributed()
    assert train_main(["7", name, "0", "--num-gpus", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{name} cannot train as several processes (--num-gpus 2)" in err


def _log(folder: Path) -> list[dict[str, str]]:
    with open(folder / "training_log.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ end to end
def test_two_processes_follow_one_process(sampref_roots, tmp_path):
    """DDP over 2 gloo processes vs one process, same global batch of 4: UNet's DiceCELoss is a mean over items
    (per-sample soft Dice, per-pixel CE), so the curves differ by float rounding only (measured ~1e-7)."""
    dataset = _planned_phantoms()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(WRITE_RECORDER))
    writes = tmp_path / "writes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hooks), "SAMPREF_TEST_WRITES": str(writes)}
    start = time.perf_counter()
    launched = subprocess.run([sys.executable, "-m", "sampref_bench.cli.train", dataset, "UNet", "0", *TINY_ARGS,
                               "--run-name", "ddp", "--num-gpus", "2"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert launched.stdout.count("validation foreground mean Dice") == 1  # rank 0 reports
    assert train_main([dataset, "UNet", "0", *TINY_ARGS, "--run-name", "single"]) == 0

    ddp_trainer = get_trainer("UNet")(dataset, 0, 0.5, overrides=TINY, progress=False, run_name="ddp")
    single_dir = get_trainer("UNet")(dataset, 0, 0.5, overrides=TINY, progress=False, run_name="single").output_dir
    ddp_dir = ddp_trainer.output_dir
    ddp_log, single_log = _log(ddp_dir), _log(single_dir)
    assert [row["epoch"] for row in ddp_log] == ["1", "2"]
    for a, b in zip(ddp_log, single_log, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-6, abs=1e-6)
        assert float(a["val_dice"]) == pytest.approx(float(b["val_dice"]), abs=1e-3)
    assert json.loads((ddp_dir / "config.json").read_text())["processes"] == 2
    assert json.loads((single_dir / "config.json").read_text())["processes"] == 1

    # the weights: saved unwrapped (no "module." prefix), close to the single-process ones
    final = ddp_dir / "checkpoint_final.pth"
    a, b = load_checkpoint(final)["networks"]["network"], load_checkpoint(single_dir / "checkpoint_final.pth")[
        "networks"]["network"]
    assert set(a) == set(b) and not any(key.startswith("module.") for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    ddp_trainer.initialize()
    ddp_trainer.restore(load_checkpoint(final), final)  # loads into a single-process trainer
    assert ddp_trainer.epoch == 2 and ddp_trainer.ddp_networks == {}

    # only rank 0 wrote into the results (the recorder saw it write, so it was listening)
    recorded = {p.name.rsplit(".", 1)[1] for p in tmp_path.glob("writes.*")}
    assert recorded == {"0"}, recorded
    written = (tmp_path / "writes.0").read_text()
    assert "checkpoint_final.pth" in written and "summary.json" in written
    assert {p.name for p in ddp_dir.iterdir()} == {p.name for p in single_dir.iterdir()}
    print(f"two-process run (launcher, torchrun, 2 ranks): {seconds:.1f} s")
