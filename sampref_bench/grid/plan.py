"""The benchmark grid: expansion of trainers x fractions x folds into runs, validation, refusals and ordering.

:func:`plan_grid` checks the whole request first and raises one :class:`SamprefError` that lists every problem
(unknown trainers with the closest names, fractions the plan does not hold, folds out of range, ``--set`` keys no
trainer of the grid knows). Every remaining (trainer, fraction, fold) is built as a trainer object (cheap: no
network is made), which gives its run folder; a trainer whose constructor refuses the combination (a DPO trainer
at a fraction without rated cases, a semi-supervised one without unlabeled images) is *refused*: listed, never an
error. A run whose folder already holds ``checkpoint_final.pth`` and ``validation/summary.json`` is *done*; one
with a checkpoint is resumed (``--continue``). A finished folder whose ``config.json`` records other
hyperparameters than the run the grid would train there (a run of a default that changed since) is refused with
the differences, never counted as done.

A two-stage trainer (DPO, ``SAMPseudoLabel``, ``SAMBaselineContinued``) needs its stage-1 ``SAMBaseline`` run:
that run is a dependency of the job, placed before it, and added as a job of its own when the grid does not
already hold it, so that one worker trains it once and the dependent runs wait for it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampref_bench import paths
from sampref_bench.planners.pipeline import load_splits
from sampref_bench.planners.plans import fraction_key
from sampref_bench.utilities.errors import SamprefError

#: Files that make a run finished (as ``sampref_evaluate`` reads it).
FINAL_FILES = ("checkpoint_final.pth", "validation/summary.json")


@dataclass(frozen=True)
class RunSpec:
    """Everything that identifies one training run (what ``sampref_train`` gets on its command line)."""

    trainer: str
    fold: int
    fraction: float
    overrides: tuple[tuple[str, Any], ...] = ()
    configuration: str = "2d"
    run_name: str | None = None

    @property
    def label(self) -> str:
        """Short human name: ``DPORanking f0.2 fold 0``."""
        return f"{self.trainer} f{fraction_key(self.fraction)} fold {self.fold}"

    def overrides_dict(self) -> dict[str, Any]:
        """The ``--set`` overrides as a dict."""
        return dict(self.overrides)


@dataclass
class Job:
    """One run of the grid: its spec, its folder, its state, and the folders it waits for."""

    spec: RunSpec
    folder: Path
    state: str  # "new", "resume" or "done"
    depends_on: list[Path] = field(default_factory=list)
    #: Why the job is here when the grid did not ask for it (the stage-1 run of a two-stage trainer).
    added_for: str | None = None


@dataclass
class Refusal:
    """A (trainer, fraction) pair the trainer refuses, with the folds and the reason."""

    trainer: str
    fraction: float
    folds: list[int]
    reason: str


@dataclass
class GridPlan:
    """The expanded grid: jobs in execution order (done ones included), refusals and notes."""

    dataset: str
    jobs: list[Job]
    refused: list[Refusal]
    notes: list[str] = field(default_factory=list)

    @property
    def to_run(self) -> list[Job]:
        """Jobs that still need training (new or resumed)."""
        return [job for job in self.jobs if job.state != "done"]

    def describe(self) -> str:
        """The plan as text: what runs (in order), what is done, what is refused."""
        lines = [f"grid of {self.dataset}: {len(self.to_run)} run(s) to train, "
                 f"{len(self.jobs) - len(self.to_run)} already done, {len(self.refused)} refused pair(s)"]
        for job in self.jobs:
            extra = f" (needed by {job.added_for})" if job.added_for else ""
            wait = f" after {', '.join(_short(p) for p in job.depends_on)}" if job.depends_on else ""
            lines.append(f"  [{job.state:>6}] {job.spec.label}{extra}{wait}  -> {job.folder}")
        for refusal in self.refused:
            folds = ",".join(str(f) for f in refusal.folds)
            lines.append(f"  [refused] {refusal.trainer} f{fraction_key(refusal.fraction)} fold(s) {folds}: "
                         f"{refusal.reason}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _short(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def run_state(folder: Path) -> str:
    """``"done"`` (final checkpoint and validation summary), ``"resume"`` (a checkpoint to continue) or ``"new"``."""
    if all((folder / name).is_file() for name in FINAL_FILES):
        return "done"
    if (folder / "checkpoint_latest.pth").is_file() or (folder / "checkpoint_final.pth").is_file():
        return "resume"
    return "new"


def stale_run(instance: Any, folder: Path) -> str | None:
    """Why the finished run in ``folder`` is not the run ``instance`` would train (its ``config.json`` records other
    hyperparameters, read as :meth:`~sampref_bench.trainers.base.BaseTrainer.recorded_config` reads them: a folder
    of a default that has changed since), or None when it is. A folder without a readable ``config.json`` is
    taken as it is."""
    from sampref_bench.utilities.atomic import load_json

    try:
        saved = load_json(folder / "config.json").get("hyperparameters")
    except (SamprefError, AttributeError):
        return None
    if not isinstance(saved, dict):
        return None
    differences = instance.saved_config_differences(saved)
    if not differences:
        return None
    return (f"{folder} holds a finished run with other hyperparameters ({'; '.join(differences)}), most likely one "
            f"of an earlier default; move that folder away to train today's run there, or pass the saved values "
            f"with --set to report it")


def parse_folds(folds: list[str], n_folds: int) -> tuple[list[int], list[str]]:
    """``["all"]`` or fold numbers -> sorted folds, plus problems (non-numbers, folds out of ``0..n_folds-1``)."""
    if any(str(f).lower() == "all" for f in folds):
        return list(range(n_folds)), []
    out, problems = [], []
    for item in folds:
        try:
            fold = int(item)
        except (TypeError, ValueError):
            problems.append(f"fold {item!r} is not a number (give fold numbers or 'all')")
            continue
        if not 0 <= fold < n_folds:
            problems.append(f"fold {fold} is out of range: splits_final.json has folds 0..{n_folds - 1}")
        elif fold not in out:
            out.append(fold)
    return sorted(out), problems


def plan_grid(dataset: str | int, trainers: list[str], fractions: list[float] | None = None,
              folds: list[str] | None = None, overrides: dict[str, Any] | None = None,
              configuration: str | list[str] = "2d", run_name: str | None = None) -> GridPlan:
    """Validate and expand the grid (see the module docstring). ``fractions=None`` means every planned fraction,
    ``folds=None`` every fold; ``configuration`` one planned configuration or several side by side (a trainer
    without a SAM image encoder, such as the U-Nets, runs once, under the default ``2d`` when it is among them).
    Raises one :class:`SamprefError` listing every problem of the request."""
    from sampref_bench.trainers.options import option_problems
    from sampref_bench.trainers.registry import available_trainers, get_trainer

    name = paths.resolve_dataset(dataset, paths.preprocessed_root(), paths.raw_root())
    splits = load_splits(paths.preprocessed_root() / name)
    planned = [key for key in splits[0]["labeled"] if all(key in entry["labeled"] for entry in splits)]
    overrides = dict(overrides or {})
    configurations = [configuration] if isinstance(configuration, str) else list(dict.fromkeys(configuration))
    problems: list[str] = []

    known = available_trainers()
    classes = {}
    for trainer in dict.fromkeys(trainers):
        if trainer in known:
            classes[trainer] = get_trainer(trainer)
            continue
        close = difflib.get_close_matches(trainer, known, n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        problems.append(f"unknown trainer {trainer!r}{hint}")
    if not trainers:
        problems.append("no trainer given (-t TRAINER ...)")

    wanted = [fraction_key(f) for f in fractions] if fractions else list(planned)
    for key in dict.fromkeys(wanted):
        if key not in planned:
            problems.append(f"fraction {key} was not planned (planned: {', '.join(planned)}; rerun sampref_plan "
                            f"with --fractions including {key})")
    fold_list, fold_problems = parse_folds(list(folds or ["all"]), len(splits))
    problems += fold_problems

    checked: dict[str, dict[str, Any]] = {}
    if classes:
        orphan = sorted(k for k in overrides if not any(k in cls.defaults for cls in classes.values()))
        if orphan:
            problems.append(f"--set key(s) {orphan} are options of none of {', '.join(classes)}")
        for trainer, cls in classes.items():
            mine = {k: v for k, v in overrides.items() if k in cls.defaults}
            checked[trainer], option_errors = option_problems(cls, mine)
            problems += [p for p in option_errors if p not in problems]
    if problems:
        raise SamprefError("the benchmark grid has problems; nothing ran:\n  - " + "\n  - ".join(problems))

    notes: list[str] = []
    jobs: dict[Path, Job] = {}
    stage1_jobs: dict[Path, Job] = {}
    refused: dict[tuple[str, str, str], Refusal] = {}
    for trainer, cls in classes.items():
        mine = checked[trainer]
        left_out = sorted(set(overrides) - set(mine))
        if left_out:
            notes.append(f"--set {', '.join(left_out)} not applied to {trainer} (not its option)")
        mine_configurations = configurations
        if not getattr(cls, "encoder_configurations", False) and "2d" in configurations:
            mine_configurations = ["2d"]
        for key, configuration, fold in ((k, c, f) for k in dict.fromkeys(wanted) for c in mine_configurations
                                         for f in fold_list):
            spec = RunSpec(trainer, fold, float(key), tuple(sorted(mine.items())), configuration, run_name)
            try:
                instance = cls(name, fold, float(key), configuration=configuration, device="cpu",
                               overrides=mine, progress=False, run_name=run_name)
            except SamprefError as err:
                entry = refused.setdefault((trainer, key, configuration), Refusal(trainer, float(key), [], str(err)))
                entry.folds.append(fold)
                continue
            folder = instance.output_dir
            state = run_state(folder)
            stale = stale_run(instance, folder) if state == "done" else None
            if stale is not None:
                entry = refused.setdefault((trainer, key, configuration), Refusal(trainer, float(key), [], stale))
                entry.folds.append(fold)
                continue
            stale = _stale_dependency(instance)
            if stale is not None:
                entry = refused.setdefault((trainer, key, configuration), Refusal(trainer, float(key), [], stale))
                entry.folds.append(fold)
                continue
            job = Job(spec, folder, state)
            dependency = _stage1_job(instance, name, fold, configuration)
            if dependency is not None and dependency.folder != folder:
                job.depends_on.append(dependency.folder)
                if dependency.folder not in stage1_jobs:
                    dependency.added_for = spec.label
                    stage1_jobs[dependency.folder] = dependency
            stored = stage1_jobs.get(dependency.folder) if dependency is not None else None
            for needs, owner in ((job, instance), (stored, _stage1_instance(instance))):
                cascade = _cascade_job(owner, fold, configuration) if needs is not None else None
                if cascade is None or needs is None or cascade.folder in needs.depends_on:
                    continue
                needs.depends_on.append(cascade.folder)
                if cascade.folder not in stage1_jobs:
                    cascade.added_for = needs.spec.label
                    stage1_jobs[cascade.folder] = cascade
            jobs.setdefault(folder, job)
    # a stage-1 run the grid asks for itself is not "added"
    for folder, dependency in stage1_jobs.items():
        if folder in jobs:
            continue
        jobs[folder] = dependency
    ordered = order_jobs(list(jobs.values()))
    for job in ordered:
        job.depends_on = [dep for dep in job.depends_on if run_state(dep) != "done"]
    return GridPlan(name, ordered, list(refused.values()), notes)


def _stage1_job(instance: Any, dataset: str, fold: int, configuration: str) -> Job | None:
    """The job of a two-stage trainer's stage-1 run (None for a one-stage trainer, or with ``stage1_run`` set)."""
    if not (hasattr(instance, "stage1_trainer") and hasattr(instance, "stage1_overrides")):
        return None
    if instance.config.get("stage1_run"):
        return None
    stage1 = instance.stage1_trainer()
    spec = RunSpec(type(stage1).__name__, fold, float(stage1.fraction),
                   tuple(sorted(instance.stage1_overrides().items())), configuration, None)
    return Job(spec, stage1.output_dir, run_state(stage1.output_dir))


def _stage1_instance(instance: Any) -> Any:
    """The stage-1 trainer of a two-stage instance (None otherwise, or with ``stage1_run`` set)."""
    if not hasattr(instance, "stage1_trainer") or instance.config.get("stage1_run"):
        return None
    return instance.stage1_trainer()


def _stale_dependency(instance: Any) -> str | None:
    """Why a finished run that ``instance`` reads (its stage-1 run; the cascade U-Net of it or of its stage 1) is
    not the run it would get, as :func:`stale_run` says; None when each is current or not finished yet."""
    from sampref_bench.trainers.sam.cascade import cascade_run_folder

    stage1 = _stage1_instance(instance)
    reads = [("stage-1 run", stage1, stage1.output_dir)] if stage1 is not None else []
    for owner in (instance, stage1):
        unet = _cascade_instance(owner)
        if unet is not None:
            reads.append(("cascade U-Net run", unet, cascade_run_folder(owner)))
    for role, reader, folder in reads:
        if run_state(folder) != "done":
            continue
        reason = stale_run(reader, folder)
        if reason is not None:
            return f"its {role} is not today's: {reason}"
    return None


def _cascade_instance(instance: Any) -> Any:
    """The ``UNet`` trainer a ``box_source=run:UNet`` cascade of ``instance`` reads (None for any other)."""
    if instance is None or not getattr(instance, "cascaded", False):
        return None
    from sampref_bench.trainers.registry import get_trainer
    from sampref_bench.trainers.sam.cascade import CASCADE_TRAINER

    return get_trainer(CASCADE_TRAINER)(instance.dataset_name, instance.fold, float(instance.fraction),
                                        device="cpu", progress=False)


def _cascade_job(instance: Any, fold: int, configuration: str) -> Job | None:
    """The job of the ``UNet`` run a ``box_source=run:UNet`` cascade reads (same fold and fraction, default
    configuration); None for any other instance."""
    if instance is None or not getattr(instance, "cascaded", False):
        return None
    from sampref_bench.trainers.sam.cascade import CASCADE_TRAINER, cascade_run_folder

    folder = cascade_run_folder(instance)
    spec = RunSpec(CASCADE_TRAINER, fold, float(instance.fraction), (), "2d", None)  # a U-Net has one configuration
    return Job(spec, folder, run_state(folder))


def order_jobs(jobs: list[Job]) -> list[Job]:
    """Jobs in an order where every job comes after the jobs it depends on: the stage-1 runs others wait for first,
    then fold by fold, one-stage trainers before two-stage ones, then trainer and fraction."""
    by_folder = {job.folder: job for job in jobs}
    needed = {dep for job in jobs for dep in job.depends_on}
    base = sorted(jobs, key=lambda j: (j.folder not in needed, j.spec.fold, bool(j.depends_on), j.spec.trainer,
                                       j.spec.fraction))
    out: list[Job] = []
    placed: set[Path] = set()

    def place(job: Job, chain: tuple[Path, ...]) -> None:
        if job.folder in placed:
            return
        if job.folder in chain:
            raise SamprefError(f"circular stage dependency at {job.folder}")
        for dep in job.depends_on:
            if dep in by_folder:
                place(by_folder[dep], (*chain, job.folder))
        placed.add(job.folder)
        out.append(job)

    for job in base:
        place(job, ())
    return out
