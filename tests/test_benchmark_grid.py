"""``sampref_benchmark``: grid validation, refusals, ordering, locks, local workers and submitit's local executor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sampref_bench.cli.benchmark import main
from sampref_bench.grid.executors import InlineExecutor, ProcessExecutor, SubmititExecutor
from sampref_bench.grid.locks import RunLock, is_locked, lock_path
from sampref_bench.grid.plan import plan_grid
from sampref_bench.grid.runs import RunCall, RunOutcome
from sampref_bench.grid.scheduler import run_grid
from sampref_bench.utilities.errors import SamprefError
from tests.lock_helpers import race_to_acquire
from tests.trainer_helpers import planned_phantoms

#: Tiny SAM settings as --set options (one epoch of two batches of two slices).
TINY = ["--set", "model=tiny", "--set", 'model_arch={"stride": 16}', "--set", "batch_size=2",
        "--set", "iterations_per_epoch=2", "--set", "epochs=1"]

SPY = '''
from sampref_bench.trainers.sam.bounds import SAMNoPrompt


class SpyNoPrompt(SAMNoPrompt):
    """SAMNoPrompt that appends its run folder to a file each time a training (or a resume) starts."""

    def initialize(self) -> None:
        with open({spy!r}, "a") as handle:
            handle.write(f"{{self.output_dir}}\\n")
        super().initialize()
'''


def spy_module(tmp_path: Path) -> tuple[Path, Path]:
    """A trainer module defining ``SpyNoPrompt``, and the file it writes one line to per training start."""
    spy = tmp_path / "spy.txt"
    spy.write_text("")
    module = tmp_path / "spy_trainer.py"
    module.write_text(SPY.format(spy=str(spy)))
    return module, spy


def spy_lines(spy: Path) -> list[str]:
    return [line for line in spy.read_text().splitlines() if line]


def test_validation_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    with pytest.raises(SamprefError) as err:
        plan_grid(dataset, ["SAMNoPromt", "SAMNoPrompt"], [0.3, 0.5], ["0", "9"], {"not_an_option": 1})
    text = str(err.value)
    assert "unknown trainer 'SAMNoPromt'" in text and "did you mean SAMNoPrompt" in text
    assert "fraction 0.3 was not planned" in text
    assert "fold 9 is out of range" in text
    assert "not_an_option" in text
    assert main(["-d", dataset, "-t", "Nope", "--fractions", "0.7", "--folds", "5"]) == 2
    stderr = capsys.readouterr().err
    assert "unknown trainer 'Nope'" in stderr and "fraction 0.7" in stderr and "fold 5" in stderr


def test_refused_pairs_listed_ordered_and_dry_run_trains_nothing(sampref_roots: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["DPORanking", "SAMNoPrompt"], [0.1, 0.5], ["0", "1"], {"model": "tiny"})
    assert [(r.trainer, r.fraction, r.folds) for r in plan.refused] == [("DPORanking", 0.1, [0, 1])]
    assert "buys no rated case" in plan.refused[0].reason
    labels = [job.spec.label for job in plan.jobs]
    assert sorted(labels) == sorted(["SAMBaseline f0.1 fold 0", "SAMBaseline f0.1 fold 1", "DPORanking f0.5 fold 0",
                                     "DPORanking f0.5 fold 1", "SAMNoPrompt f0.1 fold 0", "SAMNoPrompt f0.1 fold 1",
                                     "SAMNoPrompt f0.5 fold 0", "SAMNoPrompt f0.5 fold 1"])
    for fold in (0, 1):  # the stage-1 run is a job of its own, before the DPO run that waits for it
        stage1 = next(j for j in plan.jobs if j.spec.label == f"SAMBaseline f0.1 fold {fold}")
        dpo = next(j for j in plan.jobs if j.spec.label == f"DPORanking f0.5 fold {fold}")
        assert plan.jobs.index(stage1) < plan.jobs.index(dpo)
        assert dpo.depends_on == [stage1.folder] and stage1.added_for == f"DPORanking f0.5 fold {fold}"
    # a stage-1 run the grid asks for itself is the same job (not added twice)
    plan2 = plan_grid(dataset, ["SAMBaseline", "DPORanking"], [0.1, 0.5], ["0"], {"model": "tiny"})
    assert [j.spec.label for j in plan2.jobs] == ["SAMBaseline f0.1 fold 0", "SAMBaseline f0.5 fold 0",
                                                  "DPORanking f0.5 fold 0"]
    assert plan2.jobs[0].added_for is None
    assert main(["-d", dataset, "-t", "DPORanking", "SAMNoPrompt", "--fractions", "0.1", "0.5", "--folds", "0",
                 "--dry-run", *TINY]) == 0
    out = capsys.readouterr().out
    assert "[refused] DPORanking f0.1" in out and "SAMBaseline f0.1 fold 0 (needed by DPORanking f0.5 fold 0)" in out
    assert not list(sampref_roots["results"].rglob("*.pth")) and not list(sampref_roots["results"].rglob("*.csv"))


def test_local_grid_completes_second_run_trains_nothing_and_resumes(tmp_path: Path, sampref_roots: dict[str, Path],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    module, spy = spy_module(tmp_path)
    argv = ["-d", dataset, "-t", "SpyNoPrompt", "--fractions", "0.5", "--folds", "0", "--trainer-module",
            str(module), "--poll", "0.2", *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 run(s) to train" in out and "ETA" in out and "grid finished: 1 trained" in out
    folders = spy_lines(spy)
    assert len(folders) == 1
    summary = Path(folders[0]) / "validation" / "summary.json"
    assert summary.is_file()
    assert (sampref_roots["results"] / "Dataset007_Phantom" / "summary_table.csv").is_file()

    assert main([*argv, "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "0 run(s) to train, 1 already done" in out and "grid finished: 0 trained, 1 already done" in out
    assert len(spy_lines(spy)) == 1

    # an interrupted run (no validation yet) is continued, not retrained from scratch or refused
    summary.unlink()
    assert main([*argv, "--no-report"]) == 0
    assert "(resume)" in capsys.readouterr().out
    assert spy_lines(spy) == folders * 2 and summary.is_file()


def test_run_lock_is_exclusive_across_threads_and_processes(tmp_path: Path) -> None:
    folder = tmp_path / "Run__p__2d__f0.5" / "fold_0"
    locks = [RunLock(folder) for _ in range(8)]
    taken = race_to_acquire(locks)
    assert sum(taken) == 1
    holder = locks[taken.index(True)]
    assert is_locked(folder) and json.loads(lock_path(folder).read_text())["pid"] > 0
    holder.release()
    assert not is_locked(folder) and not lock_path(folder).exists()

    # another process holds it: not ours to take; once that process is gone (even killed) it is free again
    script = ("import sys, time; from sampref_bench.grid.locks import RunLock; lock = RunLock(sys.argv[1]); "
              "assert lock.acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert not RunLock(folder).acquire() and is_locked(folder)
    finally:
        proc.kill()
        proc.wait()
    with RunLock(folder) as lock:
        assert lock.acquire()


def test_two_local_workers_train_each_run_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    module, spy = spy_module(tmp_path)
    assert main(["-d", dataset, "-t", "SpyNoPrompt", "--fractions", "0.5", "--folds", "0", "1", "--workers", "2",
                 "--trainer-module", str(module), "--poll", "0.2", "--no-report", *TINY]) == 0
    assert "grid finished: 2 trained" in capsys.readouterr().out
    folders = spy_lines(spy)
    assert len(folders) == 2 and len(set(folders)) == 2


def _worker_gpu(call: object) -> RunOutcome:
    """A stand-in job: which process ran it and which GPUs it was allowed to see."""
    import os
    import time

    time.sleep(0.3)  # long enough that both workers get jobs
    return RunOutcome("trained", message=f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}")


def test_each_local_worker_gets_its_own_gpu() -> None:
    executor = ProcessExecutor(2, device="cpu", function=_worker_gpu, gpus=["3", "5"])
    try:
        handles = executor.submit([None] * 6)  # type: ignore[list-item]
        seen: list[RunOutcome] = []
        while len(seen) < 6:
            seen += [outcome for _, outcome in executor.wait(handles, timeout=30)]
            handles = [h for h in handles if not h.done()]
    finally:
        executor.close()
    by_pid: dict[str, set[str]] = {}
    for outcome in seen:
        pid, gpu = outcome.message.split()
        by_pid.setdefault(pid, set()).add(gpu)
    assert all(len(gpus) == 1 for gpus in by_pid.values())  # a worker keeps its GPU
    assert set().union(*by_pid.values()) == {"3", "5"}  # two workers, one GPU each
    with pytest.raises(SamprefError, match="no GPU is visible"):
        ProcessExecutor(2, device="cuda", gpus=[])


def test_submitit_local_executor_runs_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    submitit = pytest.importorskip("submitit")
    dataset = planned_phantoms()
    module, spy = spy_module(tmp_path)
    executor = SubmititExecutor(submitit.LocalExecutor(folder=tmp_path / "submitit"), poll_s=0.3)
    argv = ["-d", dataset, "-t", "SpyNoPrompt", "--fractions", "0.5", "--folds", "0", "--trainer-module",
            str(module), "--poll", "0.3", "--no-report", *TINY]
    assert main(argv, executor=executor) == 0
    assert "grid finished: 1 trained" in capsys.readouterr().out
    assert len(spy_lines(spy)) == 1
    assert main(argv, executor=executor) == 0
    assert "0 run(s) to train, 1 already done" in capsys.readouterr().out
    assert len(spy_lines(spy)) == 1


class _FakeJob:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def done(self) -> bool:
        return True

    def result(self) -> RunOutcome:
        return RunOutcome("trained", self.folder, 1.0)


class _FlakyCluster:
    """A submitit-like executor whose submission fails for fold 0 (a full queue, say)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, function: object, call: RunCall) -> _FakeJob:
        if call.spec.fold == 0:
            raise RuntimeError("sbatch: error: QOSMaxSubmitJobPerUserLimit")
        self.submitted.append(call.spec.label)
        return _FakeJob(call.spec.label)


def test_a_submission_error_fails_its_run_only(capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["SAMNoPrompt"], [0.5], ["0", "1", "2"], {"model": "tiny"})
    cluster = _FlakyCluster()
    result = run_grid(plan, SubmititExecutor(cluster, poll_s=0.01), poll_s=0.01)
    statuses = {job.spec.fold: result.outcomes[job.folder].status for job in plan.jobs}
    assert statuses == {0: "failed", 1: "trained", 2: "trained"}
    assert "QOSMaxSubmitJobPerUserLimit" in result.outcomes[plan.jobs[0].folder].message
    assert cluster.submitted == ["SAMNoPrompt f0.5 fold 1", "SAMNoPrompt f0.5 fold 2"]
    assert "FAILED to submit SAMNoPrompt f0.5 fold 0" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a SLURM cluster is reachable here")
def test_slurm_executor_without_a_cluster_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    assert main(["-d", dataset, "-t", "SAMNoPrompt", "--fractions", "0.5", "--folds", "0", "--executor", "slurm",
                 "--set", "model=tiny"]) == 2
    assert "no SLURM cluster is reachable" in capsys.readouterr().err


def _finish(folder: Path) -> None:
    (folder / "validation").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint_final.pth").write_bytes(b"")
    (folder / "validation" / "summary.json").write_text("{}")


def test_stage1_runs_first_a_failed_stage1_blocks_its_dependents() -> None:
    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["DPORanking"], [0.5], ["0", "1"], {"model": "tiny"})
    folders = {job.spec.label: job.folder for job in plan.jobs}
    calls: list[str] = []

    def fake(call: RunCall) -> RunOutcome:
        calls.append(call.spec.label)
        if call.spec.label == "SAMBaseline f0.1 fold 1":
            return RunOutcome("failed", message="out of memory")
        _finish(folders[call.spec.label])
        return RunOutcome("trained", str(folders[call.spec.label]))

    result = run_grid(plan, InlineExecutor(fake), poll_s=0.01, echo=lambda text: None)
    assert calls.index("SAMBaseline f0.1 fold 0") < calls.index("DPORanking f0.5 fold 0")
    assert "DPORanking f0.5 fold 1" not in calls
    assert result.outcomes[folders["DPORanking f0.5 fold 1"]].status == "blocked"
    assert result.outcomes[folders["DPORanking f0.5 fold 0"]].status == "trained"


def test_a_run_locked_by_another_command_is_waited_for_not_trained() -> None:
    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["SAMNoPrompt"], [0.5], ["0", "1"], {"model": "tiny"})
    other, mine = plan.jobs[0].folder, plan.jobs[1].folder
    lock = RunLock(other)  # "another sampref_benchmark" trains fold 0 ...
    assert lock.acquire()

    def other_finishes() -> None:
        _finish(other)
        lock.release()

    calls: list[str] = []

    def fake(call: RunCall) -> RunOutcome:
        calls.append(call.spec.label)
        _finish(mine)
        threading.Timer(0.3, other_finishes).start()  # ... and finishes while we train fold 1
        return RunOutcome("trained", str(mine))

    result = run_grid(plan, InlineExecutor(fake), poll_s=0.05, echo=lambda text: None)
    assert calls == ["SAMNoPrompt f0.5 fold 1"]
    assert result.outcomes[other].status == "done" and result.outcomes[mine].status == "trained"


@pytest.mark.parametrize("recorded", [{"box_source": "saliency"}, {}])
def test_a_finished_folder_of_an_earlier_default_is_refused_not_counted_done(recorded: dict[str, str]) -> None:
    """An untagged SAMBaseline folder trained when the saliency box was the default (recorded, or predating the key)
    is not today's learned-box run: the grid names the difference instead of reporting the old run as done."""
    from sampref_bench.trainers.registry import get_trainer

    dataset = planned_phantoms()
    trainer = get_trainer("SAMBaseline")(dataset, 0, 0.5, overrides={"model": "tiny"}, progress=False)
    folder = trainer.output_dir
    _finish(folder)
    hyperparameters = {k: v for k, v in trainer.config.items() if k != "box_source"}
    (folder / "config.json").write_text(json.dumps({"hyperparameters": {**hyperparameters, **recorded}}))
    plan = plan_grid(dataset, ["SAMBaseline"], [0.5], ["0"], {"model": "tiny"})
    assert [job.folder for job in plan.jobs] == []
    (refusal,) = plan.refused
    assert str(folder) in refusal.reason and 'box_source: "saliency" -> "learned"' in refusal.reason
    (folder / "config.json").write_text(json.dumps({"hyperparameters": trainer.config}))
    assert [job.state for job in plan_grid(dataset, ["SAMBaseline"], [0.5], ["0"], {"model": "tiny"}).jobs] == ["done"]
    shutil.rmtree(folder)


def test_a_stale_stage1_or_cascade_folder_refuses_the_run_that_reads_it() -> None:
    """A finished stage-1 folder (or cascade U-Net folder) of an earlier default is not counted done for the run
    that reads it: that run is refused with the difference, as the folder itself would be."""
    from sampref_bench.trainers.registry import get_trainer

    dataset = planned_phantoms()
    dpo = get_trainer("DPORanking")(dataset, 0, 0.5, overrides={"model": "tiny"}, progress=False)
    stage1 = dpo.stage1_trainer()
    _finish(stage1.output_dir)
    old = {k: v for k, v in stage1.config.items() if k != "box_source"}
    (stage1.output_dir / "config.json").write_text(json.dumps({"hyperparameters": {**old, "box_source": "saliency"}}))
    plan = plan_grid(dataset, ["DPORanking"], [0.5], ["0"], {"model": "tiny"})
    assert plan.jobs == []
    (refusal,) = plan.refused
    assert refusal.trainer == "DPORanking" and "its stage-1 run is not today's" in refusal.reason
    assert str(stage1.output_dir) in refusal.reason and 'box_source: "saliency" -> "learned"' in refusal.reason
    (stage1.output_dir / "config.json").write_text(json.dumps({"hyperparameters": stage1.config}))
    plan = plan_grid(dataset, ["DPORanking"], [0.5], ["0"], {"model": "tiny"})
    assert [(job.spec.trainer, job.state, job.depends_on) for job in plan.jobs] == [
        ("SAMBaseline", "done", []), ("DPORanking", "new", [])]
    shutil.rmtree(stage1.output_dir)

    cascade = {"model": "tiny", "box_source": "run:UNet"}
    sam = get_trainer("SAMBaseline")(dataset, 0, 0.5, overrides=cascade, progress=False)
    from sampref_bench.trainers.sam.cascade import cascade_run_folder

    unet_folder = cascade_run_folder(sam)
    unet = get_trainer("UNet")(dataset, 0, 0.5, progress=False)
    lora = get_trainer("SAMBaseline")(dataset, 0, 0.5, configuration="2d_lora", overrides=cascade, progress=False)
    assert cascade_run_folder(lora) == unet_folder == unet.output_dir  # one U-Net run, whatever the SAM encoder does
    _finish(unet_folder)
    (unet_folder / "config.json").write_text(json.dumps({"hyperparameters": {**unet.config,
                                                                             "epochs": unet.config["epochs"] + 1}}))
    (refusal,) = plan_grid(dataset, ["SAMBaseline"], [0.5], ["0"], cascade).refused
    assert "its cascade U-Net run is not today's" in refusal.reason and str(unet_folder) in refusal.reason
    shutil.rmtree(unet_folder)
