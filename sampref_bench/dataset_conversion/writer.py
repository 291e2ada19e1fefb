"""Writing a raw dataset atomically: every converter goes through :class:`RawDatasetWriter`.

The dataset is built in a hidden staging folder beside its destination, verified there, and renamed into
place only when conversion and verification both succeed; on any error the staging folder is removed,
so ``$SAMPREF_raw`` never holds a half-written dataset. Source files are only ever read.

The staging folder records its owner; a staging folder left by a killed conversion is removed by the next one
(:mod:`sampref_bench.utilities.staging`). A full disk, an ``$SAMPREF_raw`` that is a file or cannot be written
is a :class:`SamprefError` naming it (:mod:`sampref_bench.utilities.oserrors`), never a traceback.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from sampref_bench import paths
from sampref_bench.dataset_conversion.dataset_json import make_dataset_json
from sampref_bench.utilities.atomic import write_json_atomic
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import Geometry, write_image
from sampref_bench.utilities.oserrors import describe_os_error, disk_full_error, disk_nearly_full
from sampref_bench.utilities.staging import owned_staged_directory


class RawDatasetWriter:
    """Context manager that stages, writes, verifies and publishes one raw dataset.

    Usage::

        with RawDatasetWriter(3, "BUSI", file_ending=".png", dimensionality=2) as writer:
            writer.add_case("benign_0001", [image], label)
            writer.set_metadata(description=..., channel_names={"0": "US"}, labels={...}, ...)
        report = writer.report   # the VerifyReport of the published dataset

    ``image``/``label`` arrays are in SimpleITK numpy order, ``(H, W)`` or ``(Z, Y, X)``; labels are cast
    to ``uint8``. Images without labels go to ``imagesTrUnlabeled/`` (:meth:`add_unlabeled`, training
    images that never had labels) or ``imagesTs/`` (:meth:`add_test`, a held-out test set). ``overwrite``
    replaces an existing dataset with the same ID (same or other name).
    """

    def __init__(self, dataset_id: int, name: str, *, file_ending: str, dimensionality: int,
                 overwrite: bool = False, root: Path | None = None) -> None:
        self.folder_name = paths.dataset_folder_name(dataset_id, name)
        self.root = Path(root) if root is not None else paths.raw_root()
        paths.check_root(self.root)
        self.final = self.root / self.folder_name
        self.file_ending = file_ending
        self.dimensionality = dimensionality
        self.overwrite = overwrite
        self.cases: list[str] = []
        self.unlabeled: list[str] = []
        self.test: list[str] = []
        self.notes: list[str] = []
        self.metadata: dict[str, Any] | None = None
        self.provenance: dict[str, Any] = {}
        self.report = None
        self._stack = ExitStack()
        self._stage: Path | None = None
        prefix = self.folder_name.split("_")[0] + "_"
        self._same_id_other_name = [p for p in self.root.glob(prefix + "*")
                                    if p.is_dir() and p.name != self.folder_name]
        if self._same_id_other_name and not overwrite:
            raise SamprefError(
                f"dataset ID {dataset_id} is already taken by {self._same_id_other_name[0]}. Pass --overwrite to "
                "replace it, or choose another ID with -d."
            )

    def __enter__(self) -> RawDatasetWriter:
        try:
            self._stage = self._stack.enter_context(owned_staged_directory(self.final, overwrite=self.overwrite))
            for sub in ("imagesTr", "labelsTr"):
                (self._stage / sub).mkdir()
        except OSError as err:
            self._stack.close()
            explained = self._explain(err)
            if explained is None:
                raise
            raise explained from err
        return self

    def _explain(self, err: OSError) -> SamprefError | None:
        """``err`` as a :class:`SamprefError` when it is a fixable file-system problem (a full disk, ...)."""
        message = describe_os_error(err, self.root, "SAMPREF_raw")
        return None if message is None else SamprefError(message)

    def _write_image(self, path: Path, array: np.ndarray, geometry: Geometry | None) -> None:
        """:func:`write_image`; SimpleITK reports a full disk as a RuntimeError, made the ``ENOSPC`` it is."""
        try:
            write_image(path, array, geometry)
        except RuntimeError as err:
            if disk_nearly_full(path.parent, array.nbytes):
                raise disk_full_error(path) from err
            raise

    @property
    def stage(self) -> Path:
        """The staging folder (valid inside the ``with`` block)."""
        if self._stage is None:
            raise RuntimeError("RawDatasetWriter is used outside its with-block")
        return self._stage

    def _write_channels(self, folder: str, case: str, channels: list[np.ndarray],
                        geometry: Geometry | None) -> None:
        if not channels:
            raise ValueError(f"case {case} has no image channel")
        (self.stage / folder).mkdir(exist_ok=True)
        for index, array in enumerate(channels):
            self._write_image(self.stage / folder / f"{case}_{index:04d}{self.file_ending}", array, geometry)

    def add_case(self, case: str, channels: list[np.ndarray], label: np.ndarray,
                 geometry: Geometry | None = None) -> None:
        """Write one labeled case: ``channels`` -> ``imagesTr/{case}_{i:04d}``, ``label`` -> ``labelsTr/{case}``."""
        if case in self.cases:
            raise SamprefError(f"two source items map to the same case name {case!r}; rename one of them.")
        if label.min(initial=0) < 0 or label.max(initial=0) > 255:
            raise SamprefError(f"case {case}: label values must lie in 0..255")
        self._write_channels("imagesTr", case, channels, geometry)
        self._write_image(self.stage / "labelsTr" / f"{case}{self.file_ending}", label.astype(np.uint8), geometry)
        self.cases.append(case)

    def add_unlabeled(self, case: str, channels: list[np.ndarray], geometry: Geometry | None = None) -> None:
        """Write an image that never had a label to ``imagesTrUnlabeled/``."""
        if case in self.unlabeled or case in self.cases:
            raise SamprefError(f"two source items map to the same case name {case!r}; rename one of them.")
        self._write_channels("imagesTrUnlabeled", case, channels, geometry)
        self.unlabeled.append(case)

    def add_test(self, case: str, channels: list[np.ndarray], geometry: Geometry | None = None) -> None:
        """Write a test image (no label) as ``imagesTs/{case}_{i:04d}{ending}``, one file per channel.

        ``channels`` are arrays in SimpleITK numpy order (``(H, W)`` or ``(Z, Y, X)``) sharing ``geometry``.
        Test cases have their own namespace: a test case may share its name with a training case, as in
        nnU-Net's ``imagesTs/``.
        """
        if case in self.test:
            raise SamprefError(f"two test images map to the same case name {case!r}; rename one of them.")
        self._write_channels("imagesTs", case, channels, geometry)
        self.test.append(case)

    def note(self, message: str) -> None:
        """Record a conversion decision (e.g. a colour image reduced to luma) in ``conversion.json``."""
        self.notes.append(message)

    def set_metadata(self, **fields: Any) -> None:
        """Fields for :func:`make_dataset_json` other than ``num_training``, ``file_ending``, ``dimensionality``."""
        self.metadata = fields

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._stack.__exit__(type(err), err, err.__traceback__)
                explained = self._explain(err) if isinstance(err, OSError) else None
                if explained is None:
                    raise
                raise explained from err
        try:
            self._stack.__exit__(exc_type, exc, tb)  # publishes, or removes the staging folder
        except OSError as err:
            explained = self._explain(err)
            if explained is None:
                raise
            raise explained from err
        if isinstance(exc, OSError):  # the staging folder is gone: nothing half-written is kept
            explained = self._explain(exc)
            if explained is not None:
                raise explained from exc
        if exc_type is None:
            for old in self._same_id_other_name:
                shutil.rmtree(old, ignore_errors=True)
        return False

    def _finish(self) -> None:
        from sampref_bench.dataset_conversion.verify import verify_raw_dataset

        if self.metadata is None:
            raise RuntimeError("set_metadata() was not called before the with-block ended")
        if not self.cases:
            raise SamprefError("no labeled case was found in the source; check the path and the layout options.")
        data = make_dataset_json(num_training=len(self.cases), file_ending=self.file_ending,
                                 dimensionality=self.dimensionality, **self.metadata)
        if self.unlabeled:
            data["numUnlabeled"] = len(self.unlabeled)
        if self.test:
            data["numTest"] = len(self.test)
        write_json_atomic(self.stage / "dataset.json", data)
        write_json_atomic(self.stage / "conversion.json", {**self.provenance, "notes": self.notes})
        report = verify_raw_dataset(self.stage)
        if report.problems:
            raise SamprefError("the converted dataset failed verification, nothing was written:\n"
                               + report.format_problems())
        report.folder = self.final
        self.report = report
