"""``sampref_plan``'s work: fingerprint -> plans -> splits -> preprocessing, each redone only when stale.

Every output records ``inputs_hash``, a digest of what it was computed from; a step is skipped when its
output exists with the current digest, and redone when its inputs changed or ``clean`` is set. Outputs
land in ``$SAMPREF_preprocessed/DatasetXXX_Name/``: ``dataset.json``, ``fingerprint.json``, ``plans.json``,
``splits_final.json`` (nnU-Net's list of folds; its ``inputs_hash`` sits in the sidecar
``splits_final_info.json``) and ``samprefPlans_2d/`` (the preprocessed arrays), all written atomically.

What each step's digest covers:

- fingerprint: dataset.json and the raw ``imagesTr``/``labelsTr`` listings (name, size, mtime);
- plans: the fingerprint digest and the planning options;
- splits: the case list, patient groups, planned fractions, ``dpo_labeled_fraction`` and a user's raw
  ``splits_final.json``;
- preprocessing: :func:`~sampref_bench.planners.plans.preprocessing_signature` (only the plan keys that
  change the arrays), the case list and the raw listings, so other fractions, thresholds or training lengths
  never rebuild ``samprefPlans_2d/``. ``preprocessing.json`` also records ``signature_hash``
  (:func:`signature_hash` of the plan it was built with) so that a reader can tell whether a preprocessed
  folder belongs to the plan at hand.

Images that never had labels (``imagesTrUnlabeled/``, optional) are fingerprinted into
``fingerprint_unlabeled.json`` (digest: dataset.json and that folder's listing) and preprocessed with the
labeled cases; ``preprocessing.json`` names them under ``unlabeled_cases`` (``[]`` without any; a folder written
before this key existed has none). They are in no fold and take no part in the plan: the fingerprint, plans
and splits digests never see them, and the preprocessing digest covers their names and listing only when the
folder holds images, so a dataset without them (folder absent or empty) keeps every digest it had.

Planning writes all or nothing: the raw listing is checked first (:func:`verify_raw_listing`), and the plan and
the splits are computed and validated before either is written, so a refused call leaves ``plans.json`` and
``splits_final.json`` byte-identical. ``preprocessing.json`` records the raw files it was built from
(``raw_files``, :mod:`~sampref_bench.planners.raw_record`), which a training run checks. A staging folder left by a
killed preprocessing is removed by the next call (:mod:`~sampref_bench.utilities.staging`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampref_bench import __version__, paths
from sampref_bench.dataset_conversion.dataset_json import load_dataset_json
from sampref_bench.dataset_conversion.verify import verify_raw_listing
from sampref_bench.planners.fingerprint import (
    FINGERPRINT_FORMAT,
    UNLABELED_FINGERPRINT_FORMAT,
    UNLABELED_FOLDER,
    compute_fingerprint,
    compute_unlabeled_fingerprint,
    list_raw_cases,
    list_unlabeled_cases,
)
from sampref_bench.planners.plans import (
    ADDED_PLAN_KEYS,
    DEFAULT_DPO_LABELED_FRACTION,
    DEFAULT_FRACTIONS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_THRESHOLDS,
    PLANS_FORMAT,
    make_plans,
    preprocessing_signature,
)
from sampref_bench.planners.preprocessing import preprocess_dataset, raw_files_of
from sampref_bench.planners.raw_record import RAW_FILES_KEY, raw_file_records
from sampref_bench.planners.splits import (
    SPLITS_FILE,
    SPLITS_INFO_FILE,
    add_budgets,
    kfold_splits,
    validate_user_splits,
)
from sampref_bench.prompts.settings import DEFAULT_PROMPTS
from sampref_bench.utilities.atomic import load_json, write_json_atomic
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.hashing import digest
from sampref_bench.utilities.oserrors import explain_os_errors
from sampref_bench.utilities.staging import owned_staged_directory, remove_stale_staging

#: The fingerprint of the ``imagesTrUnlabeled`` images, beside ``fingerprint.json`` (only when there are any).
UNLABELED_FINGERPRINT_FILE = "fingerprint_unlabeled.json"


def signature_hash(plans: dict[str, Any]) -> str:
    """Digest of :func:`preprocessing_signature` of ``plans``; ``preprocessing.json`` records it as ``signature_hash``.

    Two plans with the same signature hash produce the same preprocessed arrays from the same raw data.
    """
    return digest(preprocessing_signature(plans))


def _listing(folder: Path) -> list[list[Any]]:
    if not folder.is_dir():
        return []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
            if not p.name.startswith(".")]


def _current(path: Path, inputs_hash: str, required: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` records ``inputs_hash`` and holds every ``required`` key (keys added later)."""
    if not path.is_file():
        return False
    try:
        content = load_json(path)
        return content.get("inputs_hash") == inputs_hash and all(key in content for key in required)
    except (SamprefError, AttributeError):
        return False


def _splits_current(splits_path: Path, info_path: Path, inputs_hash: str, clean: bool) -> bool:
    """Whether ``splits_final.json`` is current; refuses to overwrite a hand-edited one unless ``clean``.

    Current means: the sidecar records ``inputs_hash`` and the splits file still has the content the
    sidecar's ``splits_hash`` recorded.
    """
    if not info_path.is_file() or not splits_path.is_file():
        return False
    try:
        info = load_json(info_path)
        written = digest(load_json(splits_path))
    except SamprefError:
        return False
    if not isinstance(info, dict):
        return False
    if info.get("splits_hash") != written:
        if clean:
            return False
        raise SamprefError(
            f"{splits_path} was changed after sampref_plan wrote it. To train on your own folds, put them in "
            "the raw dataset folder as splits_final.json (nnU-Net layout: a list of {'train': [...], 'val': "
            "[...]}) and rerun sampref_plan; to discard the edit, rerun with --clean.")
    return not clean and info.get("inputs_hash") == inputs_hash


@dataclass
class PlanOutcome:
    """Where the plan's outputs are and which steps ran (the others were current)."""

    folder: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def plans_file(self) -> Path:
        """``plans.json``."""
        return self.folder / "plans.json"


def data_folder(preprocessed_dir: Path, plans: dict[str, Any]) -> Path:
    """Folder of the preprocessed arrays of a plan: ``{plans_name}_{configuration}``."""
    return preprocessed_dir / f"{plans['plans_name']}_{plans['configuration']}"


def plan_dataset(spec: str | int, *, image_size: int = DEFAULT_IMAGE_SIZE,
                 fractions: list[float] | tuple[float, ...] = DEFAULT_FRACTIONS,
                 thresholds: list[float] | tuple[float, ...] = DEFAULT_THRESHOLDS,
                 dpo_labeled_fraction: float = DEFAULT_DPO_LABELED_FRACTION, num_processes: int = 2,
                 clean: bool = False, verify: bool = False, progress: bool = True) -> PlanOutcome:
    """Run every planning step for a converted dataset; see the module docstring.

    All or nothing: the raw folder's listing is checked (:func:`verify_raw_listing`, no image read) and the new
    plan and splits are computed and validated before ``dataset.json``, ``plans.json`` and the splits are
    written, so a refused call leaves them byte-identical. A file-system error a user can fix (a full disk, a
    root that is a file or cannot be written) is a :class:`SamprefError` naming it.
    """
    paths.check_root(paths.raw_root())
    try:
        raw_dir = paths.raw_dataset_dir(spec)
    except SamprefError as err:
        raise SamprefError(f"{err} (sampref_plan reads converted datasets: run `sampref_convert` first)") from None
    with explain_os_errors(paths.raw_root(), "SAMPREF_raw"):
        dataset_json = load_dataset_json(raw_dir)
        listing = verify_raw_listing(raw_dir)
    if not listing.ok:
        raise SamprefError(f"{raw_dir} is not a dataset sampref_plan can read; nothing was planned. Fix these (or "
                           f"reconvert the dataset) and rerun:\n{listing.format_problems()}\n"
                           f"`sampref_convert verify -d {raw_dir.name}` also checks every image.")
    if verify:
        from sampref_bench.dataset_conversion.verify import verify_raw_dataset

        report = verify_raw_dataset(raw_dir, progress=progress)
        if not report.ok:
            raise SamprefError(f"{raw_dir} failed verification; fix these and rerun:\n{report.format_problems()}")
    root = paths.preprocessed_root()
    paths.check_root(root)
    with explain_os_errors(root, "SAMPREF_preprocessed"):
        return _plan(raw_dir, dataset_json, root / raw_dir.name, image_size=image_size, fractions=fractions,
                     thresholds=thresholds, dpo_labeled_fraction=dpo_labeled_fraction, num_processes=num_processes,
                     clean=clean, progress=progress)


def _plan(raw_dir: Path, dataset_json: dict[str, Any], out: Path, *, image_size: int,
          fractions: list[float] | tuple[float, ...], thresholds: list[float] | tuple[float, ...],
          dpo_labeled_fraction: float, num_processes: int, clean: bool, progress: bool) -> PlanOutcome:
    outcome = PlanOutcome(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)  # a killed preprocessing's staging folder, even when the arrays are current
    cases = list_raw_cases(raw_dir, dataset_json)

    def step(name: str, path: Path, inputs_hash: str, required: tuple[str, ...] = ()) -> bool:
        if not clean and _current(path, inputs_hash, required):
            outcome.skipped.append(name)
            return False
        outcome.ran.append(name)
        return True

    raw_listing = [_listing(raw_dir / "imagesTr"), _listing(raw_dir / "labelsTr")]
    fp_hash = digest([FINGERPRINT_FORMAT, dataset_json, *raw_listing])
    fp_path = out / "fingerprint.json"
    if step("fingerprint", fp_path, fp_hash):
        try:
            fingerprint = compute_fingerprint(raw_dir, dataset_json, num_processes, progress)
        except SamprefError as err:
            hint = f"Run `sampref_convert verify -d {raw_dir.name}` to list every problem."
            raise SamprefError(f"{err}\n{hint}") from None
        write_json_atomic(fp_path, {"inputs_hash": fp_hash, **fingerprint})
    fingerprint = load_json(fp_path)

    unlabeled = list_unlabeled_cases(raw_dir, dataset_json, cases)
    unlabeled_listing = _listing(raw_dir / UNLABELED_FOLDER) if unlabeled else []
    ufp_path = out / UNLABELED_FINGERPRINT_FILE
    if unlabeled:
        ufp_hash = digest([UNLABELED_FINGERPRINT_FORMAT, dataset_json, unlabeled_listing])
        if step("fingerprint_unlabeled", ufp_path, ufp_hash):
            try:
                ufp = compute_unlabeled_fingerprint(raw_dir, dataset_json, unlabeled, num_processes, progress)
            except SamprefError as err:
                hint = f"Run `sampref_convert verify -d {raw_dir.name}` to list every problem."
                raise SamprefError(f"{err}\n{hint}") from None
            write_json_atomic(ufp_path, {"inputs_hash": ufp_hash, **ufp})
    else:
        ufp_path.unlink(missing_ok=True)  # the folder was emptied or removed: no stale fingerprint

    # plans and splits are computed and validated first and written together afterwards: a refused call (e.g. a
    # fraction that buys less than one case) leaves both files as they were
    options = {"image_size": image_size, "fractions": list(fractions), "thresholds": list(thresholds),
               "dpo_labeled_fraction": dpo_labeled_fraction}
    plans_hash = digest([PLANS_FORMAT, fp_hash, options, DEFAULT_PROMPTS])  # new prompt defaults replan
    plans_path = out / "plans.json"
    # a plans.json without a key added since (ADDED_PLAN_KEYS) is re-planned under the same hash: finished runs
    # record the hash, and the preprocessing signature is unchanged, so nothing else is redone
    new_plans: dict[str, Any] | None = None
    if step("plans", plans_path, plans_hash, ADDED_PLAN_KEYS):
        new_plans = {"inputs_hash": plans_hash,
                     **make_plans(dataset_json, fingerprint, image_size=image_size, fractions=fractions,
                                  thresholds=thresholds, dpo_labeled_fraction=dpo_labeled_fraction)}
        plans = new_plans
    else:
        plans = load_json(plans_path)

    user_splits = raw_dir / "splits_final.json"
    user_content = load_json(user_splits) if user_splits.is_file() else None
    groups = dataset_json.get("case_groups")
    splits_hash = digest([cases, groups, plans["fractions"], plans["dpo_labeled_fraction"], user_content])
    splits_path, info_path = out / SPLITS_FILE, out / SPLITS_INFO_FILE
    new_splits: tuple[list[dict[str, Any]], dict[str, Any]] | None = None
    if _splits_current(splits_path, info_path, splits_hash, clean):
        outcome.skipped.append("splits")
    else:
        outcome.ran.append("splits")
        if user_content is not None:
            validate_user_splits(user_content, cases, groups, str(user_splits))
            folds = [{"train": f["train"], "val": f["val"]} for f in user_content]
            source = str(user_splits)
        else:
            folds, source = kfold_splits(cases, groups), "KFold(n_splits=5, shuffle=True, random_state=12345)"
        try:
            folds = add_budgets(folds, plans["fractions"], plans["dpo_labeled_fraction"])
        except SamprefError as err:
            raise SamprefError(f"{err}. Nothing was written: {plans_path} and {splits_path} are unchanged.") from None
        new_splits = (folds, {"inputs_hash": splits_hash, "splits_hash": digest(folds), "source": source,
                              "sampref_version": __version__, "n_folds": len(folds), "fractions": plans["fractions"],
                              "dpo_labeled_fraction": plans["dpo_labeled_fraction"]})

    copy = out / "dataset.json"
    if not copy.is_file() or _load_or_none(copy) != dataset_json:
        write_json_atomic(copy, dataset_json)
    if new_plans is not None:
        write_json_atomic(plans_path, new_plans)
    if new_splits is not None:
        write_json_atomic(splits_path, new_splits[0])
        write_json_atomic(info_path, new_splits[1])

    data_dir = data_folder(out, plans)
    pre_inputs = [preprocessing_signature(plans), cases, *raw_listing]
    if unlabeled:  # only then: a dataset without unlabeled images keeps the digest it always had
        pre_inputs += [unlabeled, unlabeled_listing]
    pre_hash = digest(pre_inputs)
    marker = data_dir / "preprocessing.json"
    if step("preprocessing", marker, pre_hash):
        with owned_staged_directory(data_dir, overwrite=True) as stage:
            metas = preprocess_dataset(raw_dir, dataset_json, plans, cases, stage, num_processes, progress,
                                       unlabeled_cases=unlabeled)
            raw_files = {rel: record for meta in metas for rel, record in meta[RAW_FILES_KEY].items()}
            write_json_atomic(stage / "preprocessing.json",
                              {"inputs_hash": pre_hash, "signature_hash": signature_hash(plans), "cases": cases,
                               "n_slices": sum(m["n_slices"] for m in metas[:len(cases)]),
                               "unlabeled_cases": unlabeled,
                               "unlabeled_n_slices": sum(m["n_slices"] for m in metas[len(cases):]),
                               RAW_FILES_KEY: raw_files})
    else:
        _add_raw_files(marker, raw_dir, dataset_json, cases, unlabeled)
    return outcome


def _load_or_none(path: Path) -> Any:
    try:
        return load_json(path)
    except SamprefError:
        return None


def _add_raw_files(marker: Path, raw_dir: Path, dataset_json: dict[str, Any], cases: list[str],
                   unlabeled: list[str]) -> None:
    """Add ``raw_files`` to a current ``preprocessing.json`` written before it was recorded (its digest covers the
    raw files' names, sizes and mtimes, so the files on disk are the ones it was built from)."""
    record = load_json(marker)
    if not isinstance(record, dict) or RAW_FILES_KEY in record:
        return
    raw_files: dict[str, Any] = {}
    for case, is_unlabeled in [*((c, False) for c in cases), *((c, True) for c in unlabeled)]:
        raw_files.update(raw_file_records(raw_dir, case, raw_files_of(raw_dir, dataset_json, case, is_unlabeled)))
    write_json_atomic(marker, {**record, RAW_FILES_KEY: raw_files})


def load_splits(preprocessed_dir: Path) -> list[dict[str, Any]]:
    """The folds of ``splits_final.json``: a list, one dict per fold (a clear error when planning has not run).

    Each fold holds ``train``, ``val``, ``permutation``, ``labeled`` {fraction key -> cases} and ``dpo_labeled``.
    """
    path = Path(preprocessed_dir) / SPLITS_FILE
    rerun = f"run `sampref_plan -d {Path(preprocessed_dir).name}`"
    if not path.is_file():
        raise SamprefError(f"{path} is missing: {rerun} first.")
    folds = load_json(path)
    if isinstance(folds, dict) and "folds" in folds:
        raise SamprefError(f"{path} has the layout of an older sampref (a dict with 'folds'): {rerun} to rewrite it "
                           "as nnU-Net's list of folds.")
    keys = {"train", "val", "permutation", "labeled", "dpo_labeled"}
    if not isinstance(folds, list) or not folds or not all(isinstance(f, dict) and keys <= set(f) for f in folds):
        raise SamprefError(f"{path} must be a list of folds, each with {sorted(keys)}; a file with only train/val "
                           "belongs in the raw dataset folder, where sampref_plan adds the budgets: " + rerun)
    return folds
