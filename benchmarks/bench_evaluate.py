"""Benchmark sampref's folder evaluation against nnU-Net v2's ``compute_metrics_on_folder``.

Two prediction folders are generated from known references:

- 2D: the bundled BUSI subset (``demo_data/BUSI_subset``) converted with ``convert_busi``; predictions are
  the lesion labels shifted, dilated or eroded, speckled at their border, and for a few cases emptied,
  written as PNG;
- 3D: ``write_synthetic_raw_dataset`` phantoms with two labels; predictions are per-label perturbations
  (one label dropped in a few cases), written as ``.nii.gz`` with the reference geometry.

Both folders are scored by sampref (in this interpreter) and by nnU-Net (in a subprocess whose PYTHONPATH
is ``benchmarks/.nnunet_site``; nnunetv2 is never installed into the project venv). Every case, label
and shared metric must agree: Dice and IoU to 1e-6 (NaN where both say NaN), the voxel counts exactly;
also the per-label means and ``foreground_mean``; the benchmark fails otherwise. Wall times of both
(best of ``--repeats``) and of sampref with HD95 are written to ``benchmarks/results/bench_evaluate.json``,
and a table to ``benchmarks/results/bench_evaluate.md``.

    bash benchmarks/setup_nnunet.sh     # once
    .venv/bin/python -m benchmarks.bench_evaluate [--num-processes 2] [--n3d 16] [--repeats 3]

(from the repository root).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from benchmarks.report import markdown_table, write_markdown

REPO = Path(__file__).resolve().parents[1]
BUSI_SUBSET = REPO / "demo_data" / "BUSI_subset"
DEFAULT_SITE = REPO / "benchmarks" / ".nnunet_site"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "bench_evaluate.json"
SHARED_METRICS = ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
TOLERANCE = 1e-6

NNUNET_RUNNER = """\
import json, sys, time
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

if __name__ == "__main__":
    ref, pred, out, ending, labels, processes = sys.argv[1:7]
    reader = NaturalImage2DIO() if ending == ".png" else SimpleITKIO()
    start = time.perf_counter()
    compute_metrics_on_folder(ref, pred, out, reader, ending, [int(x) for x in labels.split(",")],
                              num_processes=int(processes))
    print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, drop_probability: float) -> np.ndarray:
    """A plausible wrong segmentation of the boolean ``mask`` (2D or 3D): shift, grow/shrink, border speckle."""
    if rng.random() < drop_probability:
        return np.zeros_like(mask)
    shift = [int(rng.integers(-4, 5)) for _ in range(mask.ndim)]
    if mask.ndim == 3:
        shift[0] = int(rng.integers(-1, 2))  # through-plane axis: coarse spacing
    out = ndimage.shift(mask.astype(np.uint8), shift, order=0, mode="constant").astype(bool)
    steps = int(rng.integers(-2, 3))
    if steps > 0:
        out = ndimage.binary_dilation(out, iterations=steps)
    elif steps < 0:
        out = ndimage.binary_erosion(out, iterations=-steps)
    border = ndimage.binary_dilation(out, iterations=2) & ~ndimage.binary_erosion(out, iterations=2)
    flips = border & (rng.random(mask.shape) < 0.15)
    return out ^ flips


def perturb_label_map(label: np.ndarray, values: list[int], rng: np.random.Generator,
                      drop_probability: float) -> np.ndarray:
    """Perturb each label of ``label`` independently; later labels overwrite earlier ones."""
    out = np.zeros_like(label)
    for value in values:
        out[perturb_mask(label == value, rng, drop_probability)] = value
    return out


def make_2d_set(work: Path, seed: int) -> tuple[Path, Path, list[int]]:
    """Convert BUSI_subset into ``work/raw`` and write perturbed PNG predictions; returns (ref, pred, labels)."""
    from sampref_bench.dataset_conversion.busi import convert_busi

    os.environ["SAMPREF_raw"] = str(work / "raw")
    convert_busi(BUSI_SUBSET, 901, name="BUSIbench")
    ref_dir = work / "raw" / "Dataset901_BUSIbench" / "labelsTr"
    pred_dir = work / "pred_2d"
    pred_dir.mkdir()
    rng = np.random.default_rng(seed)
    for path in sorted(ref_dir.glob("*.png")):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        pred = perturb_label_map(label, [1], rng, drop_probability=0.05).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(pred_dir / path.name))
    return ref_dir, pred_dir, [1]


def make_3d_set(work: Path, n_cases: int, seed: int, shape_zyx: tuple[int, int, int]
                ) -> tuple[Path, Path, list[int]]:
    """Write a two-label synthetic 3D raw dataset and perturbed ``.nii.gz`` predictions."""
    from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset

    folder = write_synthetic_raw_dataset(902, "SynthBench", n_cases, n_labels=2, seed=seed, root=work / "raw",
                                         shape_zyx=shape_zyx)
    ref_dir = folder / "labelsTr"
    pred_dir = work / "pred_3d"
    pred_dir.mkdir()
    rng = np.random.default_rng(seed + 1)
    for index, path in enumerate(sorted(ref_dir.glob("*.nii.gz"))):
        image = sitk.ReadImage(str(path))
        label = sitk.GetArrayFromImage(image)
        pred = perturb_label_map(label, [1, 2], rng, drop_probability=0.1)
        if index < 2:  # label 2 absent from the reference: both empty (NaN Dice), then prediction only (Dice 0)
            label[label == 2] = 1
            _write_like(image, label, path)
            if index == 0:
                pred[pred == 2] = 1
        _write_like(image, pred, pred_dir / path.name)
    return ref_dir, pred_dir, [1, 2]


def _write_like(reference: sitk.Image, array: np.ndarray, path: Path) -> None:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(reference)
    sitk.WriteImage(out, str(path), useCompression=True)


def run_sampref(ref: Path, pred: Path, labels: list[int], out: Path, processes: int, hd95: bool
                ) -> tuple[dict, float]:
    from sampref_bench.evaluation.evaluate_folder import evaluate_folders

    start = time.perf_counter()
    summary = evaluate_folders(ref, pred, labels=labels, output=out, num_processes=processes, hd95=hd95,
                               progress=False)
    return summary, time.perf_counter() - start


def run_sampref_cli(ref: Path, pred: Path, labels: list[int], out: Path, processes: int, hd95: bool) -> float:
    """Wall seconds of ``sampref_evaluate_folder`` in a fresh interpreter (imports and worker start-up included)."""
    command = [sys.executable, "-m", "sampref_bench.cli.evaluate_folder", str(ref), str(pred), "-o", str(out),
               "-np", str(processes), "--quiet", "-l", *map(str, labels)] + (["--hd95"] if hd95 else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sampref_evaluate_folder failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def run_nnunet(ref: Path, pred: Path, ending: str, labels: list[int], out: Path, processes: int, site: Path,
               runner: Path) -> tuple[dict, float, float]:
    """nnU-Net's evaluation in a subprocess; returns (summary, seconds in compute_metrics_on_folder, wall)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.setdefault(key, str(out.parent))  # silences nnU-Net's warnings about unset paths
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(runner), str(ref), str(pred), str(out), ending,
                           ",".join(map(str, labels)), str(processes)],
                          env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net evaluation failed:\n{done.stdout}\n{done.stderr}")
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return json.loads(out.read_text()), seconds, wall


def _agree(a: float, b: float, exact: bool) -> tuple[bool, float]:
    if a is None or b is None:
        return False, math.inf
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b), 0.0
    diff = abs(a - b)
    return (diff == 0.0 if exact else diff <= TOLERANCE), diff


def compare(ours: dict, theirs: dict, labels: list[int]) -> dict:
    """Compare two summaries case by case (matched by prediction file name); raise on any disagreement."""
    by_file = {Path(e["prediction_file"]).name: e for e in theirs["metric_per_case"]}
    problems: list[str] = []
    max_diff = {"Dice": 0.0, "IoU": 0.0}
    compared = nan_both = 0
    if len(by_file) != len(ours["metric_per_case"]):
        problems.append(f"case counts differ: {len(ours['metric_per_case'])} vs {len(by_file)}")
    for entry in ours["metric_per_case"]:
        other = by_file.get(Path(entry["prediction_file"]).name)
        if other is None:
            problems.append(f"nnU-Net has no result for {entry['prediction_file']}")
            continue
        for label in map(str, labels):
            for metric in SHARED_METRICS:
                ok, diff = _agree(entry["metrics"][label][metric], other["metrics"][label].get(metric),
                                  exact=metric not in max_diff)
                if not ok:
                    problems.append(f"{entry['case']} label {label} {metric}: {entry['metrics'][label][metric]} "
                                    f"vs {other['metrics'][label].get(metric)}")
                if metric in max_diff:
                    max_diff[metric] = max(max_diff[metric], diff)
            compared += 1
            nan_both += math.isnan(entry["metrics"][label]["Dice"])
    for label in map(str, labels):
        for metric in ("Dice", "IoU"):
            ok, diff = _agree(ours["mean"][label][metric], theirs["mean"][label][metric], exact=False)
            if not ok:
                problems.append(f"mean label {label} {metric}: {ours['mean'][label][metric]} vs "
                                f"{theirs['mean'][label][metric]}")
    for metric in ("Dice", "IoU"):
        ok, _ = _agree(ours["foreground_mean"][metric], theirs["foreground_mean"][metric], exact=False)
        if not ok:
            problems.append(f"foreground_mean {metric}: {ours['foreground_mean'][metric]} vs "
                            f"{theirs['foreground_mean'][metric]}")
    if problems:
        raise AssertionError("sampref and nnU-Net disagree:\n  " + "\n  ".join(problems[:50]))
    return {"case_label_pairs_compared": compared, "pairs_with_nan_dice": nan_both,
            "max_abs_diff": max_diff, "foreground_mean_dice": ours["foreground_mean"]["Dice"],
            "mean_dice_per_label": {k: v["Dice"] for k, v in ours["mean"].items()}}


def bench_set(name: str, ref: Path, pred: Path, ending: str, labels: list[int], work: Path, args: argparse.Namespace,
              runner: Path) -> dict:
    sampref_times, sampref_walls, nnunet_times, nnunet_walls = [], [], [], []
    for repeat in range(args.repeats):
        ours, seconds = run_sampref(ref, pred, labels, work / f"{name}_sampref_{repeat}.json", args.num_processes,
                                    hd95=False)
        sampref_times.append(seconds)
        sampref_walls.append(run_sampref_cli(ref, pred, labels, work / f"{name}_cli_{repeat}.json",
                                             args.num_processes, hd95=False))
        theirs, seconds, wall = run_nnunet(ref, pred, ending, labels, work / f"{name}_nnunet_{repeat}.json",
                                           args.num_processes, args.nnunet_site, runner)
        nnunet_times.append(seconds)
        nnunet_walls.append(wall)
    # HD95 in fresh interpreters: MONAI's import (seconds) is paid once per run, in the fork server
    hd95_times = [run_sampref_cli(ref, pred, labels, work / f"{name}_hd95_{p}.json", p, hd95=True)
                  for p in (args.num_processes, 1)]
    result = {
        "n_cases": len(ours["metric_per_case"]), "labels": labels, "file_ending": ending,
        "first_case_shape": list(sitk.GetArrayViewFromImage(sitk.ReadImage(str(sorted(ref.iterdir())[0]))).shape),
        "sampref_seconds_best": min(sampref_times), "sampref_seconds_all": sampref_times,
        "nnunet_seconds_best": min(nnunet_times), "nnunet_seconds_all": nnunet_times,
        "sampref_cli_wall_seconds_best": min(sampref_walls),
        "nnunet_subprocess_wall_seconds_best": min(nnunet_walls),
        "sampref_cli_hd95_wall_seconds": hd95_times[0], "sampref_cli_hd95_one_process_wall_seconds": hd95_times[1],
        "agreement": compare(ours, theirs, labels),
    }
    r, agreement = result, result["agreement"]
    print(f"{name}: {r['n_cases']} cases; in-call: sampref {r['sampref_seconds_best']:.2f} s, "
          f"nnU-Net {r['nnunet_seconds_best']:.2f} s; fresh process: "
          f"sampref {r['sampref_cli_wall_seconds_best']:.2f} s, "
          f"nnU-Net {r['nnunet_subprocess_wall_seconds_best']:.2f} s, sampref --hd95 "
          f"{r['sampref_cli_hd95_wall_seconds']:.2f} s ({r['sampref_cli_hd95_one_process_wall_seconds']:.2f} s "
          f"with -np 1); Dice max |diff| {agreement['max_abs_diff']['Dice']:.2e} over "
          f"{agreement['case_label_pairs_compared']} case-label pairs ({agreement['pairs_with_nan_dice']} NaN)")
    return result


def nnunet_version(site: Path) -> str:
    found = sorted(site.glob("nnunetv2-*.dist-info"))
    return found[0].name.removeprefix("nnunetv2-").removesuffix(".dist-info") if found else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, default=2, help="worker processes for both tools")
    parser.add_argument("--n3d", type=int, default=16, help="number of synthetic 3D cases")
    parser.add_argument("--shape3d", type=int, nargs=3, default=(48, 128, 112), help="3D case shape (z y x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per tool (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nnunet-site", type=Path, default=DEFAULT_SITE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", action="store_true", help="keep the generated folders (path is printed)")
    args = parser.parse_args(argv)
    if not (args.nnunet_site / "nnunetv2").is_dir():
        print(f"{args.nnunet_site} holds no nnunetv2; run benchmarks/setup_nnunet.sh first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sampref_bench_evaluate_"))
    try:
        runner = work / "nnunet_runner.py"
        runner.write_text(NNUNET_RUNNER)
        start = time.perf_counter()
        sets = {"busi_2d_png": (*make_2d_set(work, args.seed), ".png"),
                "synthetic_3d_nifti": (*make_3d_set(work, args.n3d, args.seed, tuple(args.shape3d)), ".nii.gz")}
        generate_seconds = time.perf_counter() - start
        results = {name: bench_set(name, ref, pred, ending, labels, work, args, runner)
                   for name, (ref, pred, labels, ending) in sets.items()}
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    import monai

    report = {
        "benchmark": "bench_evaluate",
        "command": " ".join([".venv/bin/python -m benchmarks.bench_evaluate",
                             *(argv if argv is not None else sys.argv[1:])]),
        "num_processes": args.num_processes, "repeats": args.repeats, "seed": args.seed,
        "dice_tolerance": TOLERANCE, "generate_seconds": generate_seconds,
        "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "platform": platform.platform(), "numpy": np.__version__, "SimpleITK": sitk.__version__,
                        "monai": monai.__version__, "nnunetv2": nnunet_version(args.nnunet_site)},
        "datasets": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(write_markdown("bench_evaluate", "Folder evaluation against nnU-Net's compute_metrics_on_folder",
                         markdown_body(report), report["command"]))
    return 0


def markdown_body(report: dict) -> str:
    """The committed tables: agreement with nnU-Net, then the times of both tools and their ratios."""
    sets = report["datasets"]
    agreement = [[name, r["n_cases"], ", ".join(map(str, r["labels"])), r["agreement"]["case_label_pairs_compared"],
                  r["agreement"]["pairs_with_nan_dice"], f"{r['agreement']['max_abs_diff']['Dice']:.1e}",
                  f"{r['agreement']['max_abs_diff']['IoU']:.1e}", f"{r['agreement']['foreground_mean_dice']:.4f}"]
                 for name, r in sets.items()]
    times = [[name, f"{r['sampref_seconds_best']:.2f}", f"{r['nnunet_seconds_best']:.2f}",
              f"{r['sampref_seconds_best'] / r['nnunet_seconds_best']:.2f}",
              f"{r['sampref_cli_wall_seconds_best']:.2f}", f"{r['nnunet_subprocess_wall_seconds_best']:.2f}",
              f"{r['sampref_cli_wall_seconds_best'] / r['nnunet_subprocess_wall_seconds_best']:.2f}",
              f"{r['sampref_cli_hd95_wall_seconds']:.2f}", f"{r['sampref_cli_hd95_one_process_wall_seconds']:.2f}"]
             for name, r in sets.items()]
    shape = {name: "x".join(map(str, r["first_case_shape"])) for name, r in sets.items()}
    return (f"Predictions made by perturbing known references: the bundled BUSI subset (2D PNG, first case "
            f"{shape.get('busi_2d_png', '?')}) and synthetic two-label phantoms (3D `.nii.gz`, "
            f"{shape.get('synthetic_3d_nifti', '?')}); nnU-Net {report['environment']['nnunetv2']}, "
            f"`-np {report['num_processes']}` for both tools, best of {report['repeats']} repeats.\n\n"
            "Agreement (the benchmark fails unless every case, label and shared metric agrees: Dice and IoU "
            f"to {report['dice_tolerance']:g}, voxel counts exactly, NaN where both give NaN):\n\n"
            + markdown_table(["set", "cases", "labels", "case-label pairs", "NaN Dice (both)", "max abs diff Dice",
                              "max abs diff IoU", "foreground mean Dice"], agreement)
            + "\n\nSeconds (in-call: the evaluation function alone; fresh process: `sampref_evaluate_folder` "
            "and nnU-Net's runner as new interpreters, imports and worker start-up included; ratio = sampref / "
            "nnU-Net, <= 1 means sampref is no slower):\n\n"
            + markdown_table(["set", "sampref in-call", "nnU-Net in-call", "ratio", "sampref process",
                              "nnU-Net process", "ratio", "sampref --hd95 process",
                              "sampref --hd95 process, -np 1"], times)
            + "\n\nThe target is exact agreement with nnU-Net on the shared metrics; HD95 (sampref only, through "
            "MONAI) is the extra price of `--hd95`.\n")


if __name__ == "__main__":
    sys.exit(main())
