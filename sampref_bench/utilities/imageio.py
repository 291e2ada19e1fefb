"""Reading and writing images and label maps through SimpleITK, with geometry kept alongside.

Array axis order is SimpleITK's numpy order: ``(H, W)`` for 2D, ``(Z, Y, X)`` for 3D, with a trailing
channel axis ``(..., C)`` for vector (e.g. RGB) images. Geometry (``spacing``, ``origin``) is kept in
SimpleITK's physical order ``(x, y[, z])`` in millimetres where the file knows it (PNG: 1.0 per pixel),
and ``direction`` as the flattened row-major cosine matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sampref_bench.utilities.errors import SamprefError

#: File endings sampref's raw format uses; 2D datasets are PNG, 3D datasets compressed NIfTI.
RAW_ENDINGS = (".png", ".nii.gz")
#: Endings recognised as 2D natural-image files in source folders.
IMAGE_2D_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Endings recognised as volumes in source folders (anything SimpleITK reads; DICOM is handled as series).
VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Geometry:
    """Physical geometry of an image in SimpleITK order: ``spacing``/``origin`` are ``(x, y[, z])`` in mm."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...] = field(default=())

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """Geometry of a SimpleITK image."""
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply(self, image: sitk.Image) -> None:
        """Copy this geometry onto ``image`` (dimensions must agree)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        if self.direction:
            image.SetDirection(self.direction)


def split_ending(path: Path | str, endings: tuple[str, ...] = RAW_ENDINGS + IMAGE_2D_ENDINGS + VOLUME_ENDINGS
                 ) -> tuple[str, str]:
    """Split a file name into ``(stem, ending)`` honouring double endings such as ``.nii.gz``.

    Returns ``(name, "")`` when the name has none of ``endings`` (case-insensitive).
    """
    name = Path(path).name
    lower = name.lower()
    for ending in sorted(endings, key=len, reverse=True):
        if lower.endswith(ending):
            return name[: -len(ending)], ending
    return name, ""


def read_sitk(path: Path) -> sitk.Image:
    """Read any file SimpleITK can; unreadable files raise :class:`SamprefError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SamprefError(f"{path} does not exist or is not a file.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise SamprefError(
            f"cannot read {path}: {first}. Check that the file is complete and in a format SimpleITK reads "
            "(PNG, JPEG, BMP, TIFF, NIfTI, NRRD, MHA); re-export or remove it."
        ) from err


def read_image(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read an image as a numpy array plus its geometry.

    Returns an array of shape ``(H, W)``, ``(H, W, C)`` (vector pixels), ``(Z, Y, X)`` or ``(Z, Y, X, C)``.
    """
    image = read_sitk(path)
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def has_nonfinite(path: Path, array: np.ndarray) -> bool:
    """True when the image ``array`` read from ``path`` holds NaN or Inf intensities.

    SimpleITK reads NIfTI through niftilib, which silently replaces NaN and Inf voxels of floating-point
    files by 0, so ``array`` cannot show them; for ``.nii``/``.nii.gz`` files with floating-point data the
    stored values are checked with nibabel instead.
    """
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        return True
    _, ending = split_ending(path)
    if ending not in (".nii", ".nii.gz"):
        return False
    import nibabel  # only needed here; keeps `import imageio` light

    try:
        image = nibabel.load(str(path))
        if not np.issubdtype(image.get_data_dtype(), np.floating):
            return False
        return not np.isfinite(np.asanyarray(image.dataobj)).all()
    except (OSError, ValueError, nibabel.filebasedimages.ImageFileError):
        return False  # SimpleITK read it; a file nibabel cannot parse is left to that reading


def to_grayscale(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """Collapse a ``(H, W, C)`` colour image to ``(H, W)``; pass ``(H, W)`` through.

    Returns ``(gray, was_colour)``. Equal channels are taken as they are (lossless, ``was_colour`` False);
    otherwise ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` is used, rounded back to the input dtype.
    An alpha channel (C == 4, or C == 2 for gray+alpha) is dropped first.
    """
    if array.ndim == 2:
        return array, False
    if array.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {array.shape}")
    channels = array.shape[-1]
    if channels in (2, 4):
        array = array[..., : channels - 1]
    if array.shape[-1] == 1 or all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
        return np.ascontiguousarray(array[..., 0]), False
    weights = np.array([0.299, 0.587, 0.114])
    luma = array[..., :3].astype(np.float64) @ weights
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        luma = np.clip(np.rint(luma), info.min, info.max)
    return luma.astype(array.dtype), True


def write_image(path: Path, array: np.ndarray, geometry: Geometry | None = None) -> None:
    """Write ``array`` (SimpleITK numpy order) to ``path``; format from the ending, geometry if given.

    PNG accepts ``uint8``/``uint16`` 2D arrays only. NIfTI is written compressed when the name ends in
    ``.nii.gz``.
    """
    path = Path(path)
    _, ending = split_ending(path)
    if ending == ".png":
        if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"PNG needs a 2D uint8/uint16 array, got {array.dtype} {array.shape} for {path}")
    image = sitk.GetImageFromArray(array, isVector=False)
    if geometry is not None:
        geometry.apply(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=ending == ".nii.gz")
