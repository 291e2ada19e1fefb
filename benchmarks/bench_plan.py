"""Benchmark: sampref's fingerprint + preprocessing against nnU-Net v2's fingerprint extraction.

One run converts two raw datasets into a temporary folder that serves as both ``SAMPREF_raw`` and
``nnUNet_raw`` (sampref's raw format is nnU-Net's):

- ``Dataset901_BUSI``: ``demo_data/BUSI_subset`` converted with ``convert_busi`` (2D PNG);
- ``Dataset902_SyntheticCT``: ``write_synthetic_raw_dataset`` phantoms (3D ``.nii.gz``, int16 CT).

On each it times, every run in a fresh Python process with a fresh output folder:

- sampref: ``plan_dataset(ID, num_processes=NP, clean=True)``, with ``compute_fingerprint`` and
  ``preprocess_dataset`` timed separately (plans and splits are the small remainder);
- nnU-Net: ``nnUNetv2_extract_fingerprint -d ID -np NP --clean`` (its entry function, called in a process
  whose ``PYTHONPATH`` is ``benchmarks/.nnunet_site``; nnU-Net is never installed into ``.venv``).

Step times are measured inside the process (after the top-level imports; worker start-up included);
``wall`` is the whole process, interpreter start and imports included, i.e. what a user of the CLI
waits. Results go to ``benchmarks/results/bench_plan.json``; the tables are printed and written to
``benchmarks/results/bench_plan.md``. The target is sampref's fingerprint + preprocessing no slower than
nnU-Net's fingerprinting (time ratio <= 1).

    bash benchmarks/setup_nnunet.sh                # once; bench_plan also runs it when needed
    .venv/bin/python -m benchmarks.bench_plan      # from the repository root; 3-4 minutes on 2 cores

Only the standard library is imported at module level: the timed children run this file by its path
(``python benchmarks/bench_plan.py --child ...``, however the parent was started, so that ``PYTHONPATH``
decides which ``sampref_bench`` they import), and worker processes started with ``spawn`` re-import it as
``__mp_main__``. ``benchmarks.report`` (which imports torch) is imported by the parent only.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SITE = HERE / ".nnunet_site"
DEFAULT_OUT = HERE / "results" / "bench_plan.json"
BUSI_SOURCE = ROOT / "demo_data" / "BUSI_subset"
BUSI_ID, SYNTH_ID = 901, 902
MARKER = "BENCH_PLAN_RESULT "
VERSIONED = ("sampref", "torch", "monai", "numpy", "scipy", "SimpleITK", "nibabel", "tqdm")


# --------------------------------------------------------------------------- child processes

def _emit(result: dict) -> None:
    print(MARKER + json.dumps(result), flush=True)


def child_sampref(dataset_id: int, num_processes: int) -> None:
    """Run sampref's planning once (``clean=True``) and print its step times."""
    t0 = time.perf_counter()
    from sampref_bench.planners import pipeline

    import_s = time.perf_counter() - t0
    steps: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name] = time.perf_counter() - start
        return wrapper

    pipeline.compute_fingerprint = timed("fingerprint", pipeline.compute_fingerprint)
    pipeline.preprocess_dataset = timed("preprocessing", pipeline.preprocess_dataset)
    start = time.perf_counter()
    outcome = pipeline.plan_dataset(dataset_id, num_processes=num_processes, clean=True, progress=False)
    total_s = time.perf_counter() - start
    marker = json.loads(next(outcome.folder.glob("*/preprocessing.json")).read_text())
    _emit({"import_s": import_s, "fingerprint_s": steps["fingerprint"], "preprocessing_s": steps["preprocessing"],
           "fingerprint_plus_preprocessing_s": total_s, "ran": outcome.ran, "n_cases": len(marker["cases"]),
           "n_slices": marker["n_slices"], "module": pipeline.__file__})


def child_nnunet(dataset_id: int, num_processes: int, verify: bool) -> None:
    """Run ``nnUNetv2_extract_fingerprint -d ID -np NP --clean`` once and print its time."""
    t0 = time.perf_counter()
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import extract_fingerprint_entry

    import_s = time.perf_counter() - t0
    sys.argv = ["nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np", str(num_processes), "--clean",
                "--no_pbar"] + (["--verify_dataset_integrity"] if verify else [])
    start = time.perf_counter()
    extract_fingerprint_entry()
    fingerprint_s = time.perf_counter() - start
    folder = next(Path(os.environ["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id:03d}_*"))
    fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text())
    _emit({"import_s": import_s, "fingerprint_s": fingerprint_s, "argv": sys.argv[1:],
           "n_cases": len(fingerprint["shapes_after_crop"])})


# --------------------------------------------------------------------------- helpers of the parent

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def site_ok(python: str, site: Path) -> bool:
    """Whether ``site`` provides nnU-Net's fingerprint entry point."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import nnunetv2.experiment_planning.plan_and_preprocess_entrypoints"
    return site.is_dir() and subprocess.run([python, "-c", code], env=env, capture_output=True).returncode == 0


def nnunet_in_venv(python: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, "-c", "import nnunetv2"], env=env, capture_output=True).returncode == 0


def run_child(args: list[str], env: dict[str, str], label: str) -> dict:
    """Run this file in child mode; return its result dict plus ``wall_s`` (whole process).

    The child is started by path even when the parent runs as ``-m benchmarks.bench_plan``: with ``-m`` the
    working directory (the repository) would come first on ``sys.path`` and shadow the ``sampref_bench``
    that ``PYTHONPATH`` selects (``--ab-sampref-path``). By path, ``sys.path[0]`` is ``benchmarks/``.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True,
                          text=True, timeout=900)
    wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the child and its (waited-for) worker processes: less sensitive to other load than wall.
    cpu_s = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{label} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len(MARKER):]), "wall_s": wall_s, "cpu_s": cpu_s,
            "loadavg_1min_after": os.getloadavg()[0]}


def warm_files(folder: Path) -> int:
    """Read every file under ``folder`` once (page cache), return the bytes read."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            total += len(path.read_bytes())
    return total


def dataset_info(raw_dir: Path) -> dict:
    dataset_json = json.loads((raw_dir / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    images = sorted((raw_dir / "imagesTr").glob(f"*{ending}"))
    import SimpleITK as sitk

    sizes = []
    for path in images:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        sizes.append(list(reversed(reader.GetSize())))
    voxels = [math.prod(s) for s in sizes]
    return {
        "folder": raw_dir.name, "file_ending": ending, "dimensionality": dataset_json["dimensionality"],
        "n_cases": len(list((raw_dir / "labelsTr").glob(f"*{ending}"))),
        "shape_min": min(sizes), "shape_max": max(sizes), "voxels_total": sum(voxels),
        "raw_bytes": sum(p.stat().st_size for p in raw_dir.rglob("*") if p.is_file()),
    }


def machine_info(python: str, site: Path) -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if dist.metadata["Name"].lower() in ("nnunetv2", "acvl_utils", "acvl-utils", "batchgenerators", "blosc2",
                                             "scikit-image"):
            versions[f"{dist.metadata['Name']} (nnunet site)"] = dist.version
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "sampref_bench"],
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(), "python": platform.python_version(), "python_executable": python,
        "versions": versions, "git_commit": commit, "sampref_bench_modified": dirty,
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }


def median_run(runs: list[dict]) -> dict:
    """Median of every numeric field over repeats (other fields from the first run)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in runs)
    out["repeats"] = len(runs)
    return out


def per_second(n: int, seconds: float | None) -> float | None:
    return None if not seconds else n / seconds


# --------------------------------------------------------------------------- the benchmark

def prepare_data(raw: Path, n_volumes: int, shape: tuple[int, int, int]) -> dict[str, dict]:
    from sampref_bench.dataset_conversion.busi import convert_busi
    from sampref_bench.dataset_conversion.phantoms import write_synthetic_raw_dataset

    os.environ["SAMPREF_raw"] = str(raw)
    start = time.perf_counter()
    convert_busi(BUSI_SOURCE, BUSI_ID, name="BUSI")
    busi_s = time.perf_counter() - start
    start = time.perf_counter()
    write_synthetic_raw_dataset(SYNTH_ID, "SyntheticCT", n_volumes, shape_zyx=shape, root=raw, modality="CT")
    synth_s = time.perf_counter() - start
    busi = {**dataset_info(raw / f"Dataset{BUSI_ID:03d}_BUSI"), "id": BUSI_ID, "prepare_s": busi_s,
            "source": "demo_data/BUSI_subset via convert_busi"}
    synth = {**dataset_info(raw / f"Dataset{SYNTH_ID:03d}_SyntheticCT"), "id": SYNTH_ID, "prepare_s": synth_s,
             "source": f"write_synthetic_raw_dataset(n_cases={n_volumes}, shape_zyx={list(shape)}, CT int16)"}
    return {"BUSI": busi, "SyntheticCT": synth}


def run_benchmark(args: argparse.Namespace) -> dict:
    python = sys.executable
    site = Path(args.nnunet_site).resolve()
    if nnunet_in_venv(python):
        raise SystemExit(f"nnunetv2 is importable from {python} itself; this benchmark expects it only in {site}")
    if not args.skip_nnunet and not site_ok(python, site):
        log(f"nnU-Net not found in {site}: running benchmarks/setup_nnunet.sh")
        subprocess.run(["bash", str(HERE / "setup_nnunet.sh"), python], check=True)

    # "sampref" is the package this interpreter imports (the repo); "sampref-ab" a copy to compare with it.
    variants = {"sampref": None}
    if args.ab_sampref_path:
        variants["sampref-ab"] = str(Path(args.ab_sampref_path).resolve())
    work = Path(tempfile.mkdtemp(prefix="sampref_bench_plan_", dir=args.workdir))
    raw = work / "raw"
    try:
        log(f"preparing raw data in {raw} ...")
        datasets = prepare_data(raw, args.n_volumes, tuple(args.shape))
        for name, info in datasets.items():
            log(f"  {name}: {info['n_cases']} cases, shapes {info['shape_min']}..{info['shape_max']}, "
                f"{info['raw_bytes'] / 2**20:.1f} MiB, made in {info['prepare_s']:.1f} s")
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        base_env.update({"SAMPREF_raw": str(raw), "nnUNet_raw": str(raw),
                         "nnUNet_results": str(work / "nnunet_results")})
        if not args.no_warmup:
            log("warm-up: page cache and one untimed import of each tool ...")
            warm_files(raw)
            for variant_path in variants.values():
                variant_env = {**base_env, **({"PYTHONPATH": variant_path} if variant_path else {})}
                subprocess.run([python, "-c", "import sampref_bench.planners.pipeline"], env=variant_env, check=True,
                               capture_output=True, cwd=work)
            if not args.skip_nnunet:
                subprocess.run([python, "-c", "import nnunetv2.experiment_planning.plan_and_preprocess_entrypoints"],
                               env={**base_env, "PYTHONPATH": str(site)}, check=True, capture_output=True)

        runs: list[dict] = []
        counter = 0
        for name, info in datasets.items():
            jobs = []  # interleaved by -np so that drifting background load hits both tools alike
            for n in sorted(set(args.np) | set(args.nnunet_np)):
                jobs += [(variant, n, False) for variant in variants if n in args.np]
                if not args.skip_nnunet and n in args.nnunet_np:
                    jobs += [("nnunet", n, False)] + ([("nnunet+verify", n, True)] if args.nnunet_verify else [])
            for tool, num_processes, verify in jobs:
                repeats = []
                for _ in range(args.repeats):
                    counter += 1
                    out = work / f"out_{counter:03d}"
                    if tool in variants:
                        env = {**base_env, "SAMPREF_preprocessed": str(out)}
                        if variants[tool]:
                            env["PYTHONPATH"] = variants[tool]
                        child = ["--child", "sampref", str(info["id"]), str(num_processes)]
                    else:
                        env = {**base_env, "nnUNet_preprocessed": str(out), "PYTHONPATH": str(site)}
                        child = ["--child", "nnunet", str(info["id"]), str(num_processes)] + (["--verify"] * verify)
                    result = run_child(child, env, f"{tool} on {name} -np {num_processes}")
                    shutil.rmtree(out, ignore_errors=True)
                    if result["n_cases"] != info["n_cases"]:
                        raise SystemExit(f"{tool} on {name} processed {result['n_cases']} of {info['n_cases']} cases")
                    repeats.append(result)
                    log(f"  {name:12s} {tool:14s} -np {num_processes}: "
                        + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in result.items() if k.endswith("_s")))
                row = {"dataset": name, "tool": tool, "np": num_processes, **median_run(repeats),
                       "all_repeats": repeats if args.repeats > 1 else None}
                n = info["n_cases"]
                row["cases_per_s"] = {k[:-2]: per_second(n, row.get(k)) for k in
                                      ("fingerprint_s", "preprocessing_s", "fingerprint_plus_preprocessing_s",
                                       "wall_s") if row.get(k)}
                runs.append(row)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    comparisons = []
    for name in datasets:
        for sp in (r for r in runs if r["dataset"] == name and r["tool"] in variants):
            nn = next((r for r in runs if r["dataset"] == name and r["tool"] == "nnunet" and r["np"] == sp["np"]),
                      None)
            if nn is None:
                continue
            comparisons.append({
                "dataset": name, "sampref": sp["tool"], "np": sp["np"],
                "fingerprint_ratio": sp["fingerprint_s"] / nn["fingerprint_s"],
                "fingerprint_plus_preprocessing_ratio": sp["fingerprint_plus_preprocessing_s"] / nn["fingerprint_s"],
                "wall_ratio": sp["wall_s"] / nn["wall_s"],
                "cpu_ratio": sp["cpu_s"] / nn["cpu_s"],
                "target_met": sp["fingerprint_plus_preprocessing_s"] <= nn["fingerprint_s"],
                "target_met_wall": sp["wall_s"] <= nn["wall_s"],
            })
    return {
        "benchmark": "bench_plan",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.executable).name, *sys.argv],
        "target": ("sampref fingerprint + preprocessing no slower than nnU-Net's fingerprint extraction: "
                   "fingerprint_plus_preprocessing_ratio <= 1 (ratios are sampref seconds / nnU-Net seconds "
                   "at the same -np; < 1 means sampref is faster)"),
        "definitions": {
            "import_s": "top-level import of the tool's entry module in the fresh process",
            "fingerprint_s": "sampref: compute_fingerprint; nnU-Net: extract_fingerprint_entry (the CLI's body)",
            "preprocessing_s": "sampref: preprocess_dataset",
            "fingerprint_plus_preprocessing_s": "sampref: plan_dataset(clean=True): fingerprint, plans, splits, "
                                                "preprocessing, outputs written",
            "wall_s": "whole child process: interpreter start, imports, work, exit",
            "cpu_s": "user + system CPU seconds of the child process and the worker processes it waited for "
                     "(spawn/fork pools; a fork server's workers are not counted)",
            "loadavg_1min_after": "1-minute load average after the run; above the CPU count other work competed",
        },
        "settings": {"np": args.np, "nnunet_np": args.nnunet_np, "repeats": args.repeats,
                     "sampref_variants": variants,
                     "n_volumes": args.n_volumes, "shape": args.shape, "warmup": not args.no_warmup},
        "machine": machine_info(python, site),
        "datasets": datasets,
        "runs": runs,
        "comparisons": comparisons,
    }


RUN_HEAD = ["dataset", "tool", "np", "fp s", "pre s", "fp+pre s", "wall s", "cpu s", "import s", "cases/s"]
RUN_NOTE = "cases/s: sampref over fingerprint + preprocessing, nnU-Net over fingerprinting"
COMPARISON_HEAD = ["dataset", "sampref", "np", "fp/fp", "fp+pre/fp", "wall/wall", "cpu/cpu", "target met",
                   "wall target met"]
COMPARISON_NOTE = "ratios: sampref seconds / nnU-Net seconds at the same -np; <= 1 meets the target"


def table_rows(report: dict) -> tuple[list[list[str]], list[list[str]]]:
    """The rows of the run table and of the comparison table, formatted."""
    def fmt(value: float | None, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    runs = []
    for r in report["runs"]:
        work = r.get("fingerprint_plus_preprocessing_s") or r["fingerprint_s"]
        n = report["datasets"][r["dataset"]]["n_cases"]
        runs.append([r["dataset"], r["tool"], str(r["np"]), fmt(r["fingerprint_s"]), fmt(r.get("preprocessing_s")),
                     fmt(r.get("fingerprint_plus_preprocessing_s")), fmt(r["wall_s"]), fmt(r["cpu_s"]),
                     fmt(r["import_s"]), fmt(n / work, ".1f")])
    comparisons = [[c["dataset"], c["sampref"], str(c["np"]), fmt(c["fingerprint_ratio"]),
                    fmt(c["fingerprint_plus_preprocessing_ratio"]), fmt(c["wall_ratio"]), fmt(c["cpu_ratio"]),
                    "yes" if c["target_met"] else "NO", "yes" if c["target_met_wall"] else "NO"]
                   for c in report["comparisons"]]
    return runs, comparisons


def print_table(report: dict) -> None:
    def aligned(head: list[str], rows: list[list[str]], left: int) -> None:
        widths = [max(len(x) for x in column) for column in zip(head, *rows)]
        for i, row in enumerate([head, *rows]):
            print(" ".join(c.ljust(w) if k < left else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))))
            if i == 0:
                print("-" * (sum(widths) + len(widths) - 1))

    runs, comparisons = table_rows(report)
    aligned(RUN_HEAD, runs, 2)
    print(f"({RUN_NOTE})")
    print()
    aligned(COMPARISON_HEAD, comparisons, 2)
    print(f"({COMPARISON_NOTE})")


def markdown_body(report: dict) -> str:
    """The committed Markdown: datasets and settings, the two tables, what the ratios mean."""
    from benchmarks.report import markdown_table  # parent only: it imports torch

    runs, comparisons = table_rows(report)
    datasets = "\n".join(
        f"- `{d['folder']}`: {d['n_cases']} cases ({d['dimensionality']}D, `{d['file_ending']}`), shapes "
        f"{d['shape_min']}..{d['shape_max']}, {d['raw_bytes'] / 2**20:.1f} MiB; {d['source']}"
        for d in report["datasets"].values())
    settings = report["settings"]
    machine = report["machine"]
    load = ", ".join(f"{v:.2f}" for v in (machine["loadavg_before"][0], machine["loadavg_after"][0]))
    return (f"{datasets}\n\nEvery run is a fresh process with an empty output folder; median of "
            f"{settings['repeats']} run(s) per configuration. 1-minute load average before and after: {load} "
            f"(timings are only meaningful on an otherwise idle machine; `cpu s` suffers less from other load than "
            f"`wall s`). sampref commit {machine['git_commit'] or '?'}"
            f"{' with local changes' if machine['sampref_bench_modified'] else ''}; nnU-Net "
            f"{machine['versions'].get('nnunetv2 (nnunet site)', '?')}.\n\n"
            + markdown_table(RUN_HEAD, runs) + f"\n\n{RUN_NOTE}; fp: fingerprint, pre: preprocessing; the "
            "steps are timed inside the process, `wall s` is the whole process (what a CLI user waits).\n\n"
            + markdown_table(COMPARISON_HEAD, comparisons)
            + f"\n\n{COMPARISON_NOTE}. The target is `fp+pre/fp <= 1`: sampref's whole fingerprint plus "
            "preprocessing no slower than nnU-Net's fingerprint extraction alone.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--np", type=int, nargs="+", default=[1, 2], help="sampref -np values (default 1 2)")
    parser.add_argument("--nnunet-np", type=int, nargs="+", default=[1, 2], help="nnU-Net -np values (default 1 2)")
    parser.add_argument("--n-volumes", type=int, default=40, help="synthetic 3D volumes (default 40)")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 192, 192], metavar=("Z", "Y", "X"),
                        help="synthetic volume shape; z varies by +-25%% per case (default 64 192 192)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the median is kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)")
    parser.add_argument("--nnunet-site", type=Path, default=DEFAULT_SITE, help="nnU-Net's --target folder")
    parser.add_argument("--nnunet-verify", action="store_true",
                        help="also time nnU-Net with --verify_dataset_integrity (not used in the ratios)")
    parser.add_argument("--skip-nnunet", action="store_true", help="time sampref only")
    parser.add_argument("--ab-sampref-path", type=Path, default=None,
                        help="folder holding a patched copy of the sampref_bench package: its runs are added as "
                             "tool 'sampref-ab' (the folder goes first on those children's PYTHONPATH)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the page-cache and import warm-up")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary data folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, dataset_id, num_processes = args.child[0], int(args.child[1]), int(args.child[2])
        if tool == "sampref":
            child_sampref(dataset_id, num_processes)
        else:
            child_nnunet(dataset_id, num_processes, args.verify)
        return
    # The parent only (children never import it): torch, via benchmarks.report; needs `-m` from the repo root.
    from benchmarks.report import write_markdown

    start = time.perf_counter()
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(f"warning: 1-minute load average is {load_before[0]:.2f} before starting; other processes compete "
            "for the CPUs and make the timings noisy (cpu_s is less affected than wall_s)")
    report = run_benchmark(args)
    report["machine"]["loadavg_before"] = load_before
    report["machine"]["loadavg_after"] = os.getloadavg()
    report["benchmark_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print_table(report)
    markdown = write_markdown("bench_plan", "Planning speed: sampref against nnU-Net's fingerprint extraction",
                              markdown_body(report))
    print(f"\nwrote {args.out} and {markdown} ({report['benchmark_s']:.0f} s)")


if __name__ == "__main__":
    main()
