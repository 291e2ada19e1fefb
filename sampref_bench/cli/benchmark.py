"""``sampref_benchmark``: train a grid of trainers x annotation fractions x folds, then write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sampref_bench.cli.common import run_cli
from sampref_bench.cli.train import _overrides
from sampref_bench.grid.locks import LOCK_MODES, STALE_S

EPILOG = """\
examples:
  sampref_benchmark -d 003 -t SAMBaseline DPORanking MeanTeacher --fractions 0.1 0.2 0.5 --folds all
  sampref_benchmark -d 003 -t SAMBaseline DPORanking --dry-run          # what would run, what is done/refused
  sampref_benchmark -d 003 -t SAMNoPrompt --folds 0 1 --set model=tiny --set epochs=1   # a quick smoke grid
  sampref_benchmark -d 003 -t UNet MeanTeacher CPS --workers 2 --device cuda           # two local workers, one GPU each
  sampref_benchmark -d 003 -t DPORanking DPORating --executor slurm --slurm-partition gpu --slurm-gpus 1 \\
      --slurm-cpus 8 --slurm-mem 32 --slurm-time 720 --slurm-array                       # one SLURM array
  sampref_benchmark -d 003 -t UNet --workers 4 --lock-mode lockfile --lock-stale 900   # locks across cluster nodes

What happens:
  1. The whole request is checked first; every problem is listed at once (unknown trainers with the closest
     names, fractions not in splits_final.json, folds out of range, --set keys no trainer knows, --set values
     outside their option's type or range: `sampref_train --list-options TRAINER`), --dry-run included.
  2. A (trainer, fraction) the trainer refuses (a DPO trainer at the labeled fraction, where no case is left to
     rate; a semi-supervised trainer at 1.0 without imagesTrUnlabeled images) is skipped and listed.
  3. A finished run (checkpoint_final.pth + validation/summary.json) is skipped; an interrupted one
     (checkpoint_latest.pth) is continued, as `sampref_train ... --continue` does.
  4. A two-stage trainer (DPO*, SAMPseudoLabel, SAMBaselineContinued) waits for its stage-1 SAMBaseline run of
     the same fold, which is scheduled first (and added to the grid when you did not ask for it), so it is
     trained once, never by two workers at the same time.
  5. Each run is trained under a lock ({run folder}.lock): two workers, or two sampref_benchmark commands on
     the same results folder, never train the same run; a run locked by another command is waited for.
  6. Progress lines say runs done / running / left and an ETA from the finished runs' durations; while a run
     trains, a line per epoch says its epoch i/N, loss, pseudo Dice and seconds (from --workers processes too;
     a SLURM job writes them to its log). --no-epoch-lines leaves them out.
  7. At the end the report of `sampref_evaluate -d DATASET` is written (summary_table.*, plots).

--set KEY=VALUE goes to every trainer of the grid that has the option (model=tiny is not given to UNet);
a key none of them has is an error. A run with non-default settings gets its own run folder (a tag, or
--run-name), exactly as with sampref_train.
--executor slurm submits one job per run through submitit (or one job array per batch of ready runs with
--slurm-array); the command stays up to submit dependent runs when their stage 1 finishes and to write the
report; job logs go to $SAMPREF_results/DatasetXXX_Name/benchmark_logs/. A submission error is reported for
its run and the rest of the grid goes on. Exit status: 0 when every run finished, 1 when some failed.

Locks (--lock-mode; every command on one results folder must use the same mode):
  auto      (default) flock on a local file system; lock files where the results folder is on nfs, nfs4,
            lustre, gpfs, beegfs, cifs/smb3/smbfs, 9p, afs, glusterfs, panfs, wekafs, orangefs, pvfs2 or a
            fuse.* mount (read from /proc/mounts), whose flock may hold on one node only, and where a flock
            fails with ENOLCK, EOPNOTSUPP or ENOSYS; the choice is printed when it is not flock.
  flock     fcntl.flock, released by the kernel when its holder dies; refused where flock fails.
  lockfile  an O_CREAT|O_EXCL file holding host, PID and a heartbeat refreshed every 30 s (or a quarter of
            --lock-stale) while the run trains: holds across nodes. A lock whose process on this host is gone,
            or whose heartbeat is older than --lock-stale seconds (default 600; keep it well above the clock
            skew between nodes), is taken over, by one command only.
  none      no locks: this command never starts a run twice, but a second command on the same results folder
            could train the same runs.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_benchmark``."""
    parser = argparse.ArgumentParser(prog="sampref_benchmark", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset: 3, 003 or Dataset003_BUSI")
    parser.add_argument("-t", "--trainers", nargs="+", required=True, metavar="TRAINER", help="trainer class names")
    parser.add_argument("--fractions", nargs="+", type=float, default=None,
                        help="annotation fractions (planned ones; default: every planned fraction)")
    parser.add_argument("--folds", nargs="+", default=["all"], help="fold numbers or 'all' (default)")
    parser.add_argument("-c", "--configuration", nargs="+", default=["2d"], metavar="CONFIGURATION",
                        help="planned configuration(s), side by side: 2d (frozen encoder, the CPU default), "
                             "2d_partial, 2d_lora, 2d_full (plans.json states each one's cost); U-Net trainers run "
                             "once, under 2d")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="hyperparameter for every trainer that has it, value parsed as JSON")
    parser.add_argument("--run-name", default=None, metavar="NAME", help="run folder tag of every run of the grid")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"], help="default local")
    parser.add_argument("--workers", type=int, default=1,
                        help="local: runs trained at once, each in its own process (default 1: in this process)")
    parser.add_argument("--gpus", default=None, metavar="IDS",
                        help="local workers with --device cuda: comma-separated GPU ids, worker k uses the k-th "
                             "(cyclically); default: every visible GPU (CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would run, is done or refused; train nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write the sampref_evaluate report at the end")
    parser.add_argument("--trainer-module", action="append", default=[],
                        help="import this module or .py file first so its trainers register (also in workers)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between checks of waiting runs (default 5)")
    parser.add_argument("--no-epoch-lines", action="store_true",
                        help="do not print a line per epoch of the running runs")
    parser.add_argument("--lock-mode", default="auto", choices=list(LOCK_MODES),
                        help="run locks: auto (default: flock, or lock files on nfs/lustre/gpfs/beegfs/smb...), "
                             "flock, lockfile (across nodes, with a heartbeat) or none; see below")
    parser.add_argument("--lock-stale", type=float, default=STALE_S, metavar="SECONDS",
                        help=f"lock files: a heartbeat older than this is a stale lock (default {STALE_S:g})")
    slurm = parser.add_argument_group("slurm (with --executor slurm)")
    slurm.add_argument("--slurm-partition", default=None)
    slurm.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per job (default 1)")
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per job (default 8)")
    slurm.add_argument("--slurm-mem", type=int, default=32, help="memory per job in GB (default 32)")
    slurm.add_argument("--slurm-time", type=int, default=24 * 60, help="time limit per job in minutes (default 1440)")
    slurm.add_argument("--slurm-array", action="store_true", help="submit each batch of ready runs as one job array")
    return parser


def make_executor(args: argparse.Namespace, dataset: str) -> Any:
    """The executor the options ask for."""
    from sampref_bench import paths
    from sampref_bench.grid import executors as ex

    if args.executor == "slurm":
        logs = paths.results_root() / dataset / "benchmark_logs"
        options = ex.SlurmOptions(args.slurm_partition, args.slurm_gpus, args.slurm_cpus, args.slurm_mem,
                               args.slurm_time, args.slurm_array, str(logs))
        return ex.SubmititExecutor(ex.slurm_executor(options), array=args.slurm_array, poll_s=args.poll)
    if args.workers > 1:
        gpus = [item.strip() for item in args.gpus.split(",") if item.strip()] if args.gpus else None
        return ex.ProcessExecutor(args.workers, device=args.device, gpus=gpus)
    return ex.InlineExecutor()


def main(argv: list[str] | None = None, executor: Any = None) -> int:
    """Entry point of ``sampref_benchmark``; ``executor`` replaces the one the options ask for (tests inject
    ``SubmititExecutor(submitit.LocalExecutor(...))``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = _overrides(args.overrides)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))

    def body() -> int:
        from sampref_bench.grid.plan import plan_grid
        from sampref_bench.grid.scheduler import run_grid
        from sampref_bench.trainers.registry import import_trainer_module

        for module in args.trainer_module:
            import_trainer_module(module)
        modules = tuple(str(Path(m).resolve()) if m.endswith(".py") else m for m in args.trainer_module)
        plan = plan_grid(args.dataset, args.trainers, args.fractions, args.folds, overrides,
                         configuration=args.configuration, run_name=args.run_name)
        print(plan.describe(), flush=True)
        if args.dry_run:
            return 0
        runner = executor if executor is not None else make_executor(args, plan.dataset)
        try:
            result = run_grid(plan, runner, device=args.device, trainer_modules=modules,
                              echo=lambda text: print(text, flush=True), poll_s=args.poll,
                              lock_mode=args.lock_mode, lock_stale_s=args.lock_stale,
                              epoch_lines=not args.no_epoch_lines)
        finally:
            runner.close()
        trained = result.count("trained")
        failed = result.failed
        print(f"grid finished: {trained} trained, {result.count('done')} already done, {len(failed)} failed or "
              f"blocked, {len(plan.refused)} refused pair(s)")
        for folder, outcome in failed.items():
            print(f"  {outcome.status}: {folder}: {outcome.message.strip()[:2000]}")
        if not args.no_report:
            from sampref_bench.evaluation.report import evaluate_dataset
            from sampref_bench.evaluation.table_output import format_table

            table, written = evaluate_dataset(plan.dataset)
            print(format_table(table))
            for path in written:
                print(f"wrote {path}")
        return 1 if failed else 0

    return run_cli(body, "sampref_benchmark")


if __name__ == "__main__":
    sys.exit(main())
