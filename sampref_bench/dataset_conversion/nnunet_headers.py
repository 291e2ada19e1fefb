"""Inspecting the image file headers of an nnU-Net v2 raw dataset's cases, before anything is written.

Only headers are read (no pixel data): dimension, size, components per pixel, pixel type and geometry
(spacing, origin, direction; a 3D TIFF's spacing from nnU-Net's sidecar ``{file stem}.json``). Each case is
checked for its channel count against ``channel_names``, for channels on one grid (dimension, shape,
spacing) and for a label on its images' grid; problems and notes are appended to the lists passed in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sampref_bench.dataset_conversion.nnunet_source import FileHeader, SourceCase
from sampref_bench.utilities.atomic import load_json
from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import Geometry


def _tiff_geometry(path: Path, ending: str, notes: list[str]) -> Geometry:
    """Geometry of a 3D TIFF from nnU-Net's sidecar ``{stem}.json`` (``spacing`` in ``[z, y, x]`` mm)."""
    sidecar = path.with_name(path.name[: -len(ending)] + ".json")
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if not sidecar.is_file():
        notes.append(f"{path}: no spacing file {sidecar.name}; spacing 1, 1, 1 mm assumed as nnU-Net does")
        return Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), identity)
    data = load_json(sidecar)
    spacing = data.get("spacing") if isinstance(data, dict) else None
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in spacing)):
        raise SamprefError(f"{sidecar}: 'spacing' must be three positive numbers [z, y, x] in mm (nnU-Net's "
                           f"TIFF spacing file), got {spacing!r}; fix the file.")
    return Geometry(tuple(float(v) for v in reversed(spacing)), (0.0, 0.0, 0.0), identity)


def _read_header(path: Path, ending: str, notes: list[str]) -> FileHeader:
    """Read the header of ``path`` (no pixel data); unreadable files raise :class:`SamprefError`."""
    if not path.is_file():
        raise SamprefError(f"{path} does not exist or is not a file.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise SamprefError(f"cannot read {path}: {reason}. Check that the file is complete and really a "
                           f"{ending} image; re-export or remove it.") from err
    geometry = Geometry(tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
    if ending.lower() in (".tif", ".tiff") and reader.GetDimension() == 3:
        geometry = _tiff_geometry(path, ending, notes)
    return FileHeader(path, reader.GetDimension(), tuple(reader.GetSize()), reader.GetNumberOfComponents(),
                 reader.GetPixelID(), geometry)


def _shape(header: FileHeader) -> tuple[int, ...]:
    """Numpy-order shape of a header's spatial grid."""
    return tuple(reversed(header.size))


def _same_spacing(a: Geometry, b: Geometry) -> bool:
    return len(a.spacing) == len(b.spacing) and bool(np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-6))


def inspect_case(item: SourceCase, n_channels: int, ending: str, problems: list[str], notes: list[str]) -> None:
    """Read the headers of one case and check channel count, dimension, shape and spacing agreement."""
    for path in item.images:
        try:
            item.headers.append(_read_header(path, ending, notes))
        except SamprefError as err:
            problems.append(str(err))
    if item.label is not None:
        try:
            item.label_header = _read_header(item.label, ending, notes)
        except SamprefError as err:
            problems.append(str(err))
    if len(item.headers) != len(item.images):
        return
    first = item.headers[0]
    for header in item.headers:
        if header.dimension not in (2, 3):
            problems.append(f"{header.path} is a {header.dimension}D image; nnU-Net datasets hold 2D or 3D "
                            "images with one file per channel. Split it into one file per channel (4D tasks in "
                            "MSD layout convert with `sampref_convert msd`)")
        elif header.dimension != first.dimension or header.size != first.size:
            problems.append(f"{header.path}: shape {_shape(header)} differs from {first.path.name}'s "
                            f"{_shape(first)}; all channels of a case must lie on one grid (resample them)")
        elif not _same_spacing(header.geometry, first.geometry):
            problems.append(f"{header.path}: spacing {header.geometry.spacing} differs from {first.path.name}'s "
                            f"{first.geometry.spacing}; all channels of a case must lie on one grid (resample "
                            "them)")
    total = sum(h.components for h in item.headers)
    if total != n_channels:
        folder = item.images[0].parent
        counts = ", ".join(f"{h.path.name} ({h.components})" for h in item.headers)
        last = f"{item.source_id}_{len(item.images) - 1:04d}{ending}"
        if total < n_channels and all(h.components == 1 for h in item.headers) and item.images[-1].name == last:
            missing = folder / f"{item.source_id}_{len(item.images):04d}{ending}"
            problems.append(f"{missing}: channel file missing: dataset.json 'channel_names' names {n_channels} "
                            f"channel(s) but case {item.source_id} has {counts}; add the file or fix "
                            "'channel_names'")
        else:
            problems.append(f"{folder}: case {item.source_id} has {total} channel(s) ({counts}, components per "
                            f"file in brackets) but dataset.json 'channel_names' names {n_channels}; add or "
                            "remove channel files, or fix 'channel_names'")
    label = item.label_header
    if label is None:
        return
    if label.components != 1:
        problems.append(f"{label.path} has {label.components} components per pixel; a label map holds one "
                        "integer per pixel. Save it as a single-channel (grayscale) image")
    elif label.dimension != first.dimension or label.size != first.size:
        problems.append(f"shape mismatch: {first.path} is {_shape(first)} but its label {label.path} is "
                        f"{_shape(label)}; the label must lie on its images' grid (resample it or pair the "
                        "right files)")
    elif not _same_spacing(label.geometry, first.geometry):
        problems.append(f"spacing mismatch: {first.path} has spacing {first.geometry.spacing} but its label "
                        f"{label.path} has {label.geometry.spacing}; resample the label onto the image grid")
    elif not (np.allclose(label.geometry.origin, first.geometry.origin, atol=1e-3)
              and np.allclose(label.geometry.direction, first.geometry.direction, atol=1e-4)):
        notes.append(f"{label.path}: origin/direction differ from {first.path.name}; the image's geometry was kept")
