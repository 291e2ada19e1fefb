"""SYNTHETIC multi-channel datasets in nnU-Net v2's raw layout, for tests of the nnU-Net importer.

:func:`write_nnunet_dataset` lays out phantoms of :mod:`sampref_bench.dataset_conversion.phantoms` (2D
slices or 3D volumes) as ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and ``imagesTs/``, one file per
channel, each channel marked by a bright column band. Everything it writes is named ``synthetic``; none of
this is patient data. Arrays use numpy order ``(H, W)`` or ``(Z, Y, X)``; spacing and origin are
``(x, y[, z])`` in millimetres.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sampref_bench.dataset_conversion.phantoms import (
    IDENTITY_3D,
    MR_CHANNEL_MEANS,
    NOISE_SD,
    PHANTOM_LABELS,
    SYNTHETIC_NOTE,
    case_shape,
    centred_origin,
    paint,
    phantom_masks,
    sitk_image,
    to_dtype,
)
from sampref_bench.utilities.imageio import Geometry

#: Channel names of :func:`write_nnunet_dataset`, used in order (cycled with a number beyond five).
NNUNET_CHANNEL_NAMES = ("T2", "ADC", "T1w", "T1gd", "FLAIR")
#: Intensity added to channel c's marker band (columns ``[c*W/C, (c+1)*W/C)``) in :func:`write_nnunet_dataset`.
NNUNET_BAND = 1500.0


def _nnunet_channels(body: np.ndarray, label: np.ndarray, n_channels: int, rng: np.random.Generator
                     ) -> list[np.ndarray]:
    """Float64 channels shaped like ``label``: tissue contrast of MR row ``c % 4`` plus channel c's marker band."""
    width = label.shape[-1]
    channels = []
    for c in range(n_channels):
        image = paint(body, label, MR_CHANNEL_MEANS[c % 4], NOISE_SD["MR"], rng)
        lo, hi = c * width // n_channels, (c + 1) * width // n_channels
        image[..., lo:hi] += NNUNET_BAND
        channels.append(image)
    return channels


def write_nnunet_dataset(folder: Path, n_cases: int, n_channels: int = 2, dimensionality: int = 3,
                         n_test: int = 1, seed: int = 0, n_labels: int = 2, file_ending: str | None = None,
                         shape: tuple[int, ...] | None = None, spacing: tuple[float, ...] | None = None,
                         direction: tuple[float, ...] | None = None) -> Path:
    """Write a SYNTHETIC multi-channel dataset in nnU-Net v2's raw layout and return ``folder``.

    Layout: ``dataset.json`` (``channel_names`` {"0": "T2", "1": "ADC", ...}, ``labels`` {"background": 0,
    "synthetic_organ": 1[, "synthetic_lesion": 2]}, ``numTraining``, ``file_ending``, ``name``,
    ``description``, ``reference``, ``licence`` as nnU-Net spells it), ``imagesTr/synthetic_XXX_{c:04d}{ending}``
    (one file per channel), ``labelsTr/synthetic_XXX{ending}`` and ``imagesTs/`` with ``n_test`` cases
    numbered after the training cases.

    Channel ``c`` shows the phantom's tissues with its own contrast and adds :data:`NNUNET_BAND` over the
    columns ``[c * W // C, (c + 1) * W // C)`` of the last axis (``W`` wide, ``C = n_channels``), so every
    channel stays recognisable after any per-channel intensity normalization.

    Args:
        folder: the dataset folder to create, e.g. ``tmp/Dataset004_Synth``.
        n_cases: training cases; ``n_test`` more go to ``imagesTs/``.
        n_channels: channel files per case (1 or more).
        dimensionality: 2 (images ``(H, W)``, default shape ``(40, 40)``) or 3 (volumes ``(Z, Y, X)``, default
            ``(12, 32, 32)``, the number of z slices varying by up to +-25 % per case).
        n_labels: 1 (organ) or 2 (organ and lesion).
        file_ending: default ``.png`` for 2D (uint8 images, spacing 1) and ``.nii.gz`` for 3D (float32);
            2D ``.nii.gz`` gives float32 images. For 3D ``.tif`` every file gets nnU-Net's spacing sidecar
            ``{stem}.json`` holding ``{"spacing": [z, y, x]}``.
        spacing: ``(x, y[, z])`` in mm; default ``(1, 1)`` for PNG, ``(0.7, 0.7)`` for other 2D endings,
            ``(0.8, 0.8, 3.0)`` for 3D.
        direction: row-major direction cosines (3D default identity).
    """
    if dimensionality not in (2, 3) or n_channels < 1 or n_labels not in (1, 2):
        raise ValueError(f"need dimensionality 2 or 3, n_channels >= 1, n_labels 1 or 2; got {dimensionality}, "
                         f"{n_channels}, {n_labels}")
    folder = Path(folder)
    ending = file_ending or (".png" if dimensionality == 2 else ".nii.gz")
    png = ending == ".png"
    if shape is None:
        shape = (40, 40) if dimensionality == 2 else (12, 32, 32)
    if spacing is None:
        spacing = (1.0, 1.0) if png else (0.7, 0.7) if dimensionality == 2 else (0.8, 0.8, 3.0)
    if direction is None:
        direction = (1.0, 0.0, 0.0, 1.0) if dimensionality == 2 else IDENTITY_3D
    names = {str(c): NNUNET_CHANNEL_NAMES[c % 5] + (str(c // 5) if c >= 5 else "") for c in range(n_channels)}
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if n_test else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index in range(n_cases + n_test):
        rng = np.random.default_rng([seed, index])
        if dimensionality == 2:
            body, label = phantom_masks((9, *shape), (1.0, 1.0, 1.0), n_labels, rng)
            body, label = body[4], np.ascontiguousarray(label[4])
            origin: tuple[float, ...] = (0.0, 0.0) if png else (-0.5 * shape[1] * spacing[0], 0.0)
        else:
            zyx = case_shape(rng, tuple(shape))
            body, label = phantom_masks(zyx, tuple(spacing), n_labels, rng)
            origin = centred_origin(zyx, tuple(spacing))
        geometry = Geometry(tuple(float(s) for s in spacing), origin, tuple(float(d) for d in direction))
        case = f"synthetic_{index:03d}"
        target = "imagesTr" if index < n_cases else "imagesTs"
        for c, image in enumerate(_nnunet_channels(body, label, n_channels, rng)):
            array = (np.clip(np.rint(image * 255.0 / 2600.0), 0, 255).astype(np.uint8) if png
                     else to_dtype(image, "MR"))
            _write_nnunet_file(folder / target / f"{case}_{c:04d}{ending}", array, geometry)
        if index < n_cases:
            _write_nnunet_file(folder / "labelsTr" / f"{case}{ending}", label, geometry)
    meta = {
        "channel_names": names,
        "labels": {"background": 0, **{PHANTOM_LABELS[v - 1]: v for v in range(1, n_labels + 1)}},
        "numTraining": n_cases, "file_ending": ending,
        "name": "SyntheticNNUNet", "description": SYNTHETIC_NOTE, "reference": "synthetic (sampref phantoms)",
        "licence": "CC0 (synthetic)", "release": "0.0",
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


def _write_nnunet_file(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write one nnU-Net image or label file; 3D TIFFs also get their ``{stem}.json`` spacing sidecar."""
    name = path.name.lower()
    sitk.WriteImage(sitk_image(array, geometry), str(path), name.endswith((".nii.gz", ".nrrd", ".mha")))
    if array.ndim == 3 and name.endswith((".tif", ".tiff")):
        stem = path.name[: path.name.lower().rindex(".tif")]
        (path.parent / f"{stem}.json").write_text(json.dumps({"spacing": list(geometry.spacing[::-1])}))
