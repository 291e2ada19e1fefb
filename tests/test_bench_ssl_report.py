"""bench_ssl_busi's report: sections per (schedule, machine), paired differences against the UNet, per-fraction
cells in fraction order, and SAM-trainer rows shared between sections."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_ssl_busi, report

CASES = [f"case_{i}" for i in range(6)]


def run(trainer: str, fraction: float, dice: list[float], train_s: float, unlabeled: int | None = None,
        epochs: int = 25) -> dict:
    """One run record as bench_ssl_busi.train_one writes it."""
    return {"trainer": trainer, "fold": 0, "fraction": fraction, "schedule": "cpu", "device": "cpu",
            "run": f"{trainer}__f{fraction}/fold_0", "train_s": train_s, "wall_s": train_s + 1,
            "steps": {"epochs": epochs, "iterations_per_epoch": 50, "batch_size": 8,
                      "unlabeled_batch_size": 8 if unlabeled else None},
            "data_use": {"unlabeled_used": unlabeled or 0}, "dice": dict(zip(CASES, dice))}


def part(runs: list[dict], gpu: str | None, command: str) -> dict:
    return {"runs": runs, "command": command, "schedule": "cpu",
            "machine": {"cpus": 16 if gpu else 2, "gpu": gpu},
            "cpu_schedule": {"epochs": 25, "iterations_per_epoch": 50},
            "planned": {"unet_epochs": 50, "unet_iterations_per_epoch": 50}}


@pytest.fixture()
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bench_ssl_busi, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    return tmp_path


def rows_of(section: str) -> dict[str, list[str]]:
    """Table rows of one report section by trainer name."""
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in section.splitlines() if line.startswith("| ")
                                          and not line.startswith("| trainer"))}


def test_report_pairs_orders_and_shares_sam_rows(results: Path) -> None:
    unet01, unet02 = [0.5, 0.6, 0.7, 0.4, 0.5, 0.6], [0.6] * 6
    # CPS ran 0.2 first (completion order): its cells must still read f=0.1 then f=0.2
    cps02 = [0.7, 0.6, 0.6, 0.6, 0.6, 0.6]
    cps01 = [u + 0.1 for u in unet01]
    gpu_runs = [run("UNet", 0.1, unet01, 110), run("UNet", 0.2, unet02, 116),
                run("CPS", 0.2, cps02, 211, unlabeled=413), run("CPS", 0.1, cps01, 216, unlabeled=465)]
    (results / "ssl_busi_cpu_gpu.json").write_text(json.dumps(part(gpu_runs[:2], "GPU X", "first call")))
    (results / "ssl_busi_cpu_gpu_ssl.json").write_text(json.dumps(part(gpu_runs[2:], "GPU X", "second call")))
    sam = run("SAMPseudoLabel", 0.1, [0.3] * 6, 2336, unlabeled=465, epochs=30)
    (results / "ssl_busi_cpu.json").write_text(json.dumps(part([run("UNet", 0.1, [0.5] * 6, 1785), sam],
                                                                None, "cpu call")))
    bench_ssl_busi.write_report()
    text = (results / "ssl_busi.md").read_text()
    cpu_section, gpu_section = text.split("## Schedule `cpu` (CPU")[1].split("## Schedule `cpu` (GPU X")
    assert "first call ; second call" in gpu_section  # both GPU files merged into one section

    gpu = rows_of(gpu_section)
    # CPS at 0.1 is UNet + 0.1 on every case; the mean difference is exactly +0.1 (Wilcoxon p of 6 equal
    # positive differences: 2 / 2^6 = 0.03125)
    assert gpu["CPS"][1] == f"{sum(cps01) / 6:.4f}"
    assert gpu["CPS"][2] == "+0.1000 (p 0.031)"
    # at 0.2 only case_0 differs (+0.1): the mean difference is 0.1 / 6
    assert gpu["CPS"][4].startswith(f"{0.1 / 6:+.4f}")
    assert gpu["CPS"][5] == "216 / 211"
    assert gpu["CPS"][7] == "465 / 413"
    assert gpu["UNet"][2] == "-"
    # the SAM trainer ran on the CPU only; the GPU section shows it, marked, paired with that section's UNet
    assert gpu["SAMPseudoLabel"][5] == "(CPU run)"
    assert gpu["SAMPseudoLabel"][2] == f"{0.3 - sum(unet01) / 6:+.4f} (p 0.031)"
    cpu = rows_of(cpu_section)
    assert cpu["SAMPseudoLabel"][3] == "2336"  # its own section (one fraction) shows its own time
    assert "CPS" not in cpu  # U-Net runs are never shared between schedules or machines


def test_uamt_runs_without_monte_carlo_dropout_get_their_own_row(results: Path) -> None:
    old = run("UAMT", 0.1, [0.5] * 6, 290, unlabeled=465)  # a record from before MC dropout: no rates
    new = {**run("UAMT", 0.2, [0.7] * 6, 300, unlabeled=413), "encoder_dropout": [0.05, 0.1, 0.2, 0.3, 0.5]}
    (results / "ssl_busi_cpu_gpu.json").write_text(json.dumps(part(
        [run("UNet", 0.1, [0.6] * 6, 110), run("UNet", 0.2, [0.6] * 6, 116), old, new], "GPU X", "call")))
    bench_ssl_busi.write_report()
    rows = rows_of((results / "ssl_busi.md").read_text())
    before = rows["UAMT (before Monte-Carlo dropout)"]
    assert before[1] == "0.5000" and before[3] == "-" and before[6].endswith("+ 8 unl.")
    assert rows["UAMT"][1] == "-" and rows["UAMT"][3] == "0.7000"
    assert rows["UAMT"][4].startswith("+0.1000")
