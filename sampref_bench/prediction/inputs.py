"""Input cases of ``sampref_predict`` and the checks on them and on the output folder.

An input folder holds nnU-Net-style channel files ``{case}_0000{ending}``, ``{case}_0001{ending}`` ... (as a raw
dataset's ``imagesTs/``), in any format SimpleITK reads (:data:`~sampref_bench.utilities.imageio.RAW_ENDINGS`,
:data:`~sampref_bench.utilities.imageio.IMAGE_2D_ENDINGS`, :data:`~sampref_bench.utilities.imageio.VOLUME_ENDINGS`).
Hidden files and files of other endings are ignored. Every problem is a :class:`SamprefError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from sampref_bench.utilities.errors import SamprefError
from sampref_bench.utilities.imageio import split_ending

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its channel files (channel 0 first) and the ending its prediction is written with."""

    case: str
    channel_files: tuple[Path, ...]
    ending: str

    def output_name(self) -> str:
        """``{case}{ending}``: the file name of the predicted mask."""
        return f"{self.case}{self.ending}"


def _check_header(path: Path, dimensionality: int, n_channels: int) -> None:
    """Refuse a file whose pixels have several components (e.g. RGB) or whose dimension is not the dataset's."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise SamprefError(f"cannot read {path}: {str(err).strip().splitlines()[-1] if str(err).strip() else err}. "
                           "Check that the file is complete and in a format SimpleITK reads.") from err
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise SamprefError(
            f"{path}: the image has {components} components per pixel (colour), but the dataset has {n_channels} "
            f"channel(s) of one component each, one file per channel ({{case}}_0000, {{case}}_0001 ...). Convert "
            "the image to grayscale (as sampref_convert did for the training images) or save each component as "
            "its own channel file.")
    dimension = reader.GetDimension()
    if dimension != dimensionality:
        raise SamprefError(f"{path}: a {dimension}D image, but the dataset's images are {dimensionality}D; predict "
                           f"with runs of a {dimension}D dataset or convert the image")


def find_input_cases(input_dir: Path, n_channels: int, dimensionality: int) -> list[InputCase]:
    """The cases of ``input_dir`` sorted by name; each must have exactly channels ``0 .. n_channels - 1``.

    Errors (naming the file): an image file not named ``CASE_XXXX{ending}``, a missing or extra channel, channels
    of one case with different endings, a colour or wrongly dimensioned image, and a folder without any image.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise SamprefError(f"input folder {input_dir} does not exist (or is not a folder)")
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(input_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, ending = split_ending(path)
        if not ending:
            continue
        match = _CHANNEL.match(stem)
        if match is None:
            raise SamprefError(f"{path}: input images must be named CASE_XXXX{ending} (XXXX = channel number, "
                               f"0000 for the first), as in a raw dataset's imagesTs; rename it")
        channels = found.setdefault(match["case"], {})
        channel = int(match["channel"])
        if channel in channels:
            raise SamprefError(f"{path} and {channels[channel]} are both channel {channel} of case {match['case']}; "
                               "keep one of them")
        channels[channel] = path
    if not found:
        raise SamprefError(f"{input_dir} holds no input image: expected files named CASE_0000.png, CASE_0000.nii.gz "
                           "(one per channel) or another format SimpleITK reads")
    cases = []
    for case, channels in sorted(found.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        extra = sorted(c for c in channels if c >= n_channels)
        if missing:
            first = next(iter(channels.values()))
            _, ending = split_ending(first)
            raise SamprefError(f"{input_dir / f'{case}_{missing[0]:04d}{ending}'} is missing: case {case} has "
                               f"{len(channels)} channel file(s) but the dataset has {n_channels} channel(s); add "
                               "the missing channel(s) or remove the case (channels are numbered from 0000)")
        if extra:
            raise SamprefError(f"{channels[extra[0]]}: case {case} has channel(s) {extra}, but the dataset has "
                               f"{n_channels} channel(s) (_0000 .. _{n_channels - 1:04d}); remove the extra file(s)")
        files = tuple(channels[c] for c in range(n_channels))
        endings = {split_ending(f)[1].lower() for f in files}
        if len(endings) != 1:
            raise SamprefError(f"{files[0]}: the channels of case {case} have different endings ({sorted(endings)}); "
                               "save them in one format")
        for path in files:
            _check_header(path, dimensionality, n_channels)
        cases.append(InputCase(case, files, split_ending(files[0])[1]))
    return cases


def check_output_folder(input_dir: Path, output_dir: Path, cases: list[InputCase], save_probabilities: bool) -> None:
    """Refuse an output folder that is the input folder, or in which a written file would replace an input file."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise SamprefError(f"the output folder {output_dir} is the input folder: predictions could replace or mix "
                           "with the input images; choose another -o folder")
    inputs = {f.resolve() for case in cases for f in case.channel_files}
    for case in cases:
        written = [output_dir / case.output_name()]
        if save_probabilities:
            written.append(output_dir / f"{case.case}.npz")
        for path in written:
            if path.resolve() in inputs:
                raise SamprefError(f"writing {path} would overwrite the input file {path.resolve()}; choose another "
                                   "-o folder")
