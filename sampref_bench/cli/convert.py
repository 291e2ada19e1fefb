"""``sampref_convert``: turn a source dataset into sampref's raw format, or verify a converted one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sampref_bench.cli.common import run_cli

EPILOG = """\
examples:
  sampref_convert busi ~/data/Dataset_BUSI_with_GT -d 3
  sampref_convert folder2d --images imgs/ --masks masks/ -d 10 --name Polyps --modality XR \\
      --mask-suffix _mask --label-map 255:1 --labels polyp
  sampref_convert msd ~/data/Task09_Spleen -d 9
  sampref_convert nnunet ~/nnUNet_raw/Dataset004_Hippocampus -d 4
  sampref_convert nifti --images vols/ --labels segs/ -d 20 --name Liver --modality CT
  sampref_convert nifti --dicom --images dicom_series/ --labels segs/ -d 21 --name Lung --modality CT
  sampref_convert verify -d 003

Converted datasets go to $SAMPREF_raw (default ./sampref_data/raw) as DatasetXXX_Name/ with imagesTr/,
labelsTr/ and dataset.json, in nnU-Net's raw layout. Every conversion is verified before it is kept; the
source folder is only read.
"""


def _label_map(text: str) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for item in text.split(","):
        try:
            source, target = (int(x) for x in item.split(":"))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--label-map wants SRC:DST pairs such as 255:1, got {item!r}") from err
        mapping[source] = target
    return mapping


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_convert`` (one subcommand per source layout, plus ``verify``)."""
    parser = argparse.ArgumentParser(
        prog="sampref_convert", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="layout", required=True, metavar="{busi,folder2d,msd,nifti,nnunet,verify}")

    def common(p: argparse.ArgumentParser, name_required: bool) -> None:
        p.add_argument("-d", "--dataset-id", type=int, required=True, help="output dataset ID, 1..999")
        p.add_argument("--name", required=name_required, help="dataset name used in DatasetXXX_Name")
        p.add_argument("--overwrite", action="store_true", help="replace a dataset that already has this ID")

    p = sub.add_parser("busi", help="the BUSI breast-ultrasound folder layout (benign/, malignant/, normal/)")
    p.add_argument("source", type=Path, help="folder holding benign/ and malignant/ (and normal/)")
    common(p, False)
    p.add_argument("--include-normal", action="store_true", help="add the 'normal' class (empty masks)")

    p = sub.add_parser("folder2d", help="any folder of 2D images plus a folder of masks, matched by file stem")
    p.add_argument("--images", type=Path, required=True, help="folder of images (png, jpg, bmp, tif)")
    p.add_argument("--masks", type=Path, required=True, help="folder of masks")
    common(p, True)
    p.add_argument("--modality", required=True, help="channel name: US, XR, CT, MR, endoscopy, ...")
    p.add_argument("--mask-suffix", default="", help="mask stem = image stem + suffix (e.g. _mask)")
    p.add_argument("--label-map", type=_label_map, default=None,
                   help="comma-separated SRC:DST value pairs, e.g. 255:1 or 0:0,128:1,255:2; "
                        "values not named are an error")
    p.add_argument("--labels", nargs="+", default=["lesion"],
                   help="foreground label names in value order 1, 2, ... (default: lesion)")
    p.add_argument("--target-text", nargs="+", default=None,
                   help="short phrase per label for text prompts (default: the label names)")
    p.add_argument("--groups-csv", type=Path, default=None,
                   help="CSV with columns case,patient: images of one patient stay in one fold")
    p.add_argument("--license", default="unknown", help="license of the source data")
    p.add_argument("--reference", default="", help="citation of the source data")

    p = sub.add_parser("msd", help="a Medical Segmentation Decathlon task folder (imagesTr/, labelsTr/, dataset.json)")
    p.add_argument("source", type=Path, help="the TaskXX_Name folder")
    common(p, False)

    p = sub.add_parser("nifti", help="3D image/label pairs (NIfTI, NRRD, MHA) or DICOM series folders")
    p.add_argument("--images", type=Path, required=True, help="folder of volumes, or of DICOM series folders")
    p.add_argument("--labels", type=Path, required=True, help="folder of label volumes named like the images")
    common(p, True)
    p.add_argument("--modality", required=True, help="channel name: CT, MR, ...")
    p.add_argument("--dicom", action="store_true", help="each subfolder of --images is one DICOM series")
    p.add_argument("--label-names", nargs="+", default=["lesion"],
                   help="foreground label names in value order 1, 2, ... (default: lesion)")
    p.add_argument("--target-text", nargs="+", default=None, help="short phrase per label")
    p.add_argument("--license", default="unknown", help="license of the source data")
    p.add_argument("--reference", default="", help="citation of the source data")

    p = sub.add_parser(
        "nnunet", help="an nnU-Net v2 raw dataset (DatasetXXX_Name: imagesTr/, labelsTr/, imagesTs/, dataset.json)",
        description="Import an nnU-Net v2 raw dataset: channel files CASE_XXXX stay channels in order, "
                    "channel_names and labels (name -> value) are kept, imagesTs/ is kept, 2D or 3D follows the "
                    "images and spacing/origin/direction are kept. Region-based labels are refused.",
        epilog="example: sampref_convert nnunet ~/nnUNet_raw/Dataset004_Hippocampus -d 4")
    p.add_argument("source", type=Path, help="the DatasetXXX_Name folder")
    common(p, False)

    p = sub.add_parser("verify", help="check a converted dataset and report every problem")
    p.add_argument("-d", "--dataset", required=True, help="3, 003 or Dataset003_BUSI")
    return parser


def _run(args: argparse.Namespace) -> int:
    from sampref_bench import paths
    from sampref_bench.dataset_conversion.verify import verify_raw_dataset

    if args.layout == "verify":
        report = verify_raw_dataset(paths.raw_dataset_dir(args.dataset), progress=True)
        print(report.summary())
        return 0 if report.ok else 1
    if args.layout == "busi":
        from sampref_bench.dataset_conversion.busi import convert_busi

        report = convert_busi(args.source, args.dataset_id, name=args.name or "BUSI",
                              include_normal=args.include_normal, overwrite=args.overwrite)
    elif args.layout == "folder2d":
        from sampref_bench.dataset_conversion.folder2d import convert_folder2d

        report = convert_folder2d(args.images, args.masks, args.dataset_id, args.name, modality=args.modality,
                                  mask_suffix=args.mask_suffix, label_map=args.label_map, labels=args.labels,
                                  target_text=args.target_text, groups_csv=args.groups_csv,
                                  license=args.license, reference=args.reference, overwrite=args.overwrite)
    elif args.layout == "msd":
        from sampref_bench.dataset_conversion.msd import convert_msd

        report = convert_msd(args.source, args.dataset_id, name=args.name, overwrite=args.overwrite)
    elif args.layout == "nnunet":
        from sampref_bench.dataset_conversion.nnunet import convert_nnunet

        report = convert_nnunet(args.source, args.dataset_id, name=args.name, overwrite=args.overwrite)
    else:
        from sampref_bench.dataset_conversion.nifti import convert_nifti

        report = convert_nifti(args.images, args.labels, args.dataset_id, args.name, modality=args.modality,
                               dicom=args.dicom, label_names=args.label_names, target_text=args.target_text,
                               license=args.license, reference=args.reference, overwrite=args.overwrite)
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_convert``."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), "sampref_convert")


if __name__ == "__main__":
    sys.exit(main())
