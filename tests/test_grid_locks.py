"""Grid locks on cluster file systems: lock-mode choice from the mount table, lock files with a heartbeat and stale
recovery, a ``flock`` that raises ``ENOLCK``/``EOPNOTSUPP`` (the grid falls back or fails one run, never crashes)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from sampref_bench.cli.benchmark import main
from sampref_bench.grid import locks
from sampref_bench.grid.executors import InlineExecutor
from sampref_bench.grid.locks import (
    LockFile,
    LockPolicy,
    RunLock,
    check_lock_mode,
    filesystem_type,
    is_locked,
    lock_holder,
    lock_path,
    parse_mounts,
    resolve_lock_policy,
)
from sampref_bench.grid.plan import plan_grid
from sampref_bench.grid.runs import RunCall, RunOutcome
from sampref_bench.grid.scheduler import run_grid
from sampref_bench.utilities.errors import SamprefError
from tests.lock_helpers import race_to_acquire
from tests.trainer_helpers import planned_phantoms

REPO = Path(__file__).resolve().parents[1]

MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
fs1:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
10.0.0.1@o2ib:/scratch /lustre/scratch lustre rw,flock 0 0
/dev/gpfs0 /gpfs gpfs rw 0 0
/dev/vdb /lustre/scratch/local\\040disk xfs rw 0 0
server:/a /data nfs rw 0 0
/dev/vdc /data ext4 rw 0 0
"""


def fake_fcntl(code: int) -> types.SimpleNamespace:
    """The ``fcntl`` that :mod:`sampref_bench.grid.locks` sees, with a ``flock`` that raises ``code``."""

    def flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    return types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN)


def write_record(folder: Path, **record: object) -> Path:
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def dead_pid() -> int:
    """The PID of a process of this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


# ------------------------------------------------------------------------------------------------ choice of lock
def test_mount_table_decides_lockfile_on_nfs4_and_lustre(tmp_path: Path) -> None:
    table = parse_mounts(MOUNTS)
    assert ("/lustre/scratch/local disk", "xfs") in table  # octal escapes decoded
    assert filesystem_type("/home/ana/results", MOUNTS) == "nfs4"
    assert filesystem_type("/lustre/scratch/ana/x", MOUNTS) == "lustre"
    assert filesystem_type("/lustre/scratch/local disk/x", MOUNTS) == "xfs"  # the longest mount point wins
    assert filesystem_type("/lustre/scratchy", MOUNTS) == "ext4"  # a prefix of a name is no mount above it
    assert filesystem_type("/gpfs", MOUNTS) == "gpfs"
    assert filesystem_type("/data/x", MOUNTS) == "ext4"  # of two mounts on one point, the later is on top
    for path, fs_type in (("/home/ana/results", "nfs4"), ("/lustre/scratch/ana", "lustre"), ("/gpfs/p", "gpfs")):
        policy = resolve_lock_policy("auto", Path(path), mounts=MOUNTS)  # decided without touching the folder
        assert policy.kind == "lockfile" and fs_type in policy.note and "heartbeat" in policy.note
        assert isinstance(policy.lock(Path(path) / "fold_0"), LockFile)
    local = f"/dev/vda1 / ext4 rw 0 0\nfs:/x {tmp_path}/nfs nfs4 rw 0 0\n"
    assert resolve_lock_policy("auto", tmp_path / "results", mounts=local).kind == "flock"
    assert resolve_lock_policy("auto", tmp_path / "nfs" / "results", mounts=local).kind == "lockfile"
    assert resolve_lock_policy("auto", tmp_path, mounts="fuse1 / fuse.sshfs rw 0 0\n").kind == "lockfile"
    # --lock-mode flock where flock may be node-local: allowed, with a warning
    forced = resolve_lock_policy("flock", tmp_path / "nfs" / "results", mounts=local)
    assert forced.kind == "flock" and "one node only" in forced.note
    assert not list(tmp_path.rglob(".sampref-lock-probe-*"))  # the probe leaves nothing behind


def test_an_unknown_lock_mode_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_lock_mode("lockfile") == "lockfile"
    with pytest.raises(SamprefError, match="auto, flock, lockfile, none"):
        check_lock_mode("fcntl")
    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["SAMNoPrompt"], [0.5], ["0"], {"model": "tiny"})
    with pytest.raises(SamprefError, match="unknown lock mode 'posix'.*auto, flock, lockfile, none"):
        run_grid(plan, InlineExecutor(), lock_mode="posix", echo=lambda text: None)
    with pytest.raises(SamprefError, match="--lock-stale"):
        run_grid(plan, InlineExecutor(), lock_mode="lockfile", lock_stale_s=0, echo=lambda text: None)
    with pytest.raises(SystemExit):
        main(["-d", dataset, "-t", "SAMNoPrompt", "--lock-mode", "posix"])
    err = capsys.readouterr().err
    assert "--lock-mode" in err and "'auto', 'flock', 'lockfile', 'none'" in err


# ------------------------------------------------------------------------------------------------ lock files
def test_lock_file_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    folder = tmp_path / "Run__p__2d__f0.5" / "fold_0"
    lockers = [LockFile(folder) for _ in range(8)]
    taken = race_to_acquire(lockers)
    assert sum(taken) == 1
    holder = lockers[taken.index(True)]
    record = json.loads(lock_path(folder).read_text())
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid() and record["mode"] == "lockfile"
    policy = LockPolicy("lockfile")
    assert is_locked(folder, policy) and not LockFile(folder).acquire()
    assert f"pid {os.getpid()}" in lock_holder(folder) and "heartbeat" in lock_holder(folder)
    assert not RunLock(folder).acquire()  # a flock taker leaves a live lock file alone
    holder.release()
    assert not lock_path(folder).exists() and not is_locked(folder, policy)
    assert not list(folder.parent.glob("*.lock*"))
    with LockFile(folder) as again:
        assert again.acquire() and again.recovered == ""


def test_lock_file_heartbeat_is_refreshed_while_held(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "fold_0"
    lock = LockFile(folder, stale_s=60, heartbeat_s=0.05)
    assert lock.acquire()
    first = json.loads(lock_path(folder).read_text())["heartbeat"]
    deadline = time.monotonic() + 5
    while json.loads(lock_path(folder).read_text())["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(lock_path(folder).read_text())["heartbeat"] > first
    thread = lock._thread
    lock.release()
    assert thread is not None and not thread.is_alive() and not lock_path(folder).exists()
    # a holder whose file was taken away notices it at its next heartbeat
    assert lock.acquire()
    lock_path(folder).unlink()
    deadline = time.monotonic() + 5
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.lost
    lock.release()


def stale_record(folder: Path) -> None:
    """A lock file of a holder on another node whose last heartbeat was an hour ago."""
    old = time.time() - 3600
    write_record(folder, host="node17", pid=4242, since="yesterday", mode="lockfile", heartbeat=old,
                 heartbeat_s=30, token="t-old")
    os.utime(lock_path(folder), (old, old))


def test_a_stale_heartbeat_is_taken_over_by_one_recoverer_only(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "fold_0"
    stale_record(folder)
    assert not is_locked(folder, LockPolicy("lockfile"))  # free to take over
    assert not LockFile(folder, stale_s=7200).acquire()  # not stale under a longer timeout
    single = LockFile(folder, stale_s=600)
    assert single.acquire()
    assert "node17 pid 4242" in single.recovered and "heartbeat is 3600 s old" in single.recovered
    assert json.loads(lock_path(folder).read_text())["token"] != "t-old"
    single.release()
    # eight recoverers at once: exactly one holds the lock afterwards (one of them may take it while another
    # has the stale file renamed aside: then the winner saw no stale lock at all)
    stale_record(folder)
    lockers = [LockFile(folder, stale_s=600) for _ in range(8)]
    taken = race_to_acquire(lockers)
    assert sum(taken) == 1
    winner = lockers[taken.index(True)]
    assert json.loads(lock_path(folder).read_text())["token"] == winner._record["token"]
    assert not list(folder.parent.glob("*.stale-*"))
    winner.release()
    # a fresh heartbeat of another host is not stale, however old the file's creation
    write_record(folder, host="node17", pid=4242, mode="lockfile", heartbeat=time.time(), token="t-live")
    assert not LockFile(folder).acquire() and is_locked(folder, LockPolicy("lockfile"))


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "fold_0"
    pid = dead_pid()
    write_record(folder, host=socket.gethostname(), pid=pid, mode="lockfile", heartbeat=time.time(), token="t")
    assert not is_locked(folder, LockPolicy("lockfile"))
    lock = LockFile(folder)
    assert lock.acquire() and f"pid {pid}" in lock.recovered and "no longer running" in lock.recovered
    lock.release()
    # a killed process's lock file (as a SLURM time limit leaves it): free again at once on its own host
    script = ("import sys, time; from sampref_bench.grid.locks import LockFile; lock = LockFile(sys.argv[1]); "
              "assert lock.acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert not LockFile(folder).acquire() and is_locked(folder, LockPolicy("lockfile"))
    finally:
        proc.kill()
        proc.wait()
    assert lock_path(folder).exists()
    lock = LockFile(folder)
    assert lock.acquire() and "no longer running" in lock.recovered
    lock.release()
    # a flock record (another command with --lock-mode flock) is not judged by its age, only by a dead holder
    old = time.time() - 3600
    write_record(folder, host="node3", pid=1, mode="flock")
    os.utime(lock_path(folder), (old, old))
    assert not LockFile(folder).acquire() and "(flock)" in lock_holder(folder)


# ------------------------------------------------------------------------------------------------ a failing flock
LOCK_SPY = '''
import json
from pathlib import Path

from sampref_bench.trainers.sam.bounds import SAMNoPrompt


class LockSpyNoPrompt(SAMNoPrompt):
    """SAMNoPrompt that records the lock file of its run when its training starts."""

    def initialize(self) -> None:
        lock = self.output_dir.with_name(self.output_dir.name + ".lock")
        with open({spy!r}, "a") as handle:
            handle.write(lock.read_text().strip() + "\\n")
        super().initialize()
'''

TINY = ["--set", "model=tiny", "--set", 'model_arch={"stride": 16}', "--set", "batch_size=2",
        "--set", "iterations_per_epoch=2", "--set", "epochs=1"]


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_failing_flock_falls_back_to_lock_files_and_says_so_once(code: int, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dataset = planned_phantoms()
    spy = tmp_path / "spy.txt"
    module = tmp_path / "lock_spy.py"
    module.write_text(LOCK_SPY.format(spy=str(spy)))
    monkeypatch.setattr(locks, "read_mounts", lambda: "/dev/vda1 / ext4 rw 0 0\n")  # a "local" file system
    monkeypatch.setattr(locks, "fcntl", fake_fcntl(code))
    argv = ["-d", dataset, "-t", "LockSpyNoPrompt", "--fractions", "0.5", "--folds", "0", "--trainer-module",
            str(module), "--poll", "0.2", "--no-report", *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    name = errno.errorcode[code]
    assert out.count("flock is not supported") == 1 and f"({name}:" in out and "using lock files" in out
    assert "grid finished: 1 trained" in out
    record = json.loads(spy.read_text().splitlines()[0])  # the run trained under a lock file of this process
    assert record["mode"] == "lockfile" and record["pid"] == os.getpid() and "heartbeat" in record
    assert not list(Path(os.environ["SAMPREF_results"]).rglob("*.lock"))  # released
    # --lock-mode flock on the same file system: one clear error before anything runs, no traceback
    assert main([*argv, "--lock-mode", "flock"]) == 2
    err = capsys.readouterr().err
    assert "flock does not work in" in err and name in err and "--lock-mode lockfile" in err
    assert "Traceback" not in err


def test_a_lock_that_cannot_be_checked_fails_its_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = planned_phantoms()
    plan = plan_grid(dataset, ["SAMNoPrompt"], [0.5], ["0", "1"], {"model": "tiny"})
    broken, fine = plan.jobs[0].folder, plan.jobs[1].folder
    write_record(broken, host="elsewhere", pid=1, mode="flock")  # a lock file left on a file system without flock
    monkeypatch.setattr(locks, "probe_flock", lambda directory: None)  # the probe passed ...
    monkeypatch.setattr(locks, "fcntl", fake_fcntl(errno.ENOLCK))  # ... but flock on the lock files fails
    calls: list[str] = []

    def fake(call: RunCall) -> RunOutcome:
        calls.append(call.spec.label)
        return RunOutcome("trained", str(fine))

    lines: list[str] = []
    result = run_grid(plan, InlineExecutor(fake), lock_mode="flock", poll_s=0.01, echo=lines.append)
    assert result.outcomes[broken].status == "failed" and result.outcomes[fine].status == "trained"
    message = result.outcomes[broken].message
    assert str(lock_path(broken)) in message and "ENOLCK" in message and "--lock-mode lockfile" in message
    assert calls == ["SAMNoPrompt f0.5 fold 1"]
    assert any("FAILED SAMNoPrompt f0.5 fold 0" in line for line in lines)
