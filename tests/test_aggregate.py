"""Cross-fold aggregation (sampref_bench.evaluation.aggregate) and sampref_evaluate on a hand-built results tree."""

from __future__ import annotations

import ast
import csv
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

import sampref_bench.evaluation as evaluation_package
from sampref_bench.cli.evaluate import main as evaluate_main
from sampref_bench.evaluation.aggregate import FOREGROUND, build_table, parse_baseline
from sampref_bench.evaluation.data_use import DataUse, data_use_range, read_data_use
from sampref_bench.evaluation.plots import figure_vs_fraction
from sampref_bench.evaluation.run_scan import (
    RunConfig,
    merge_prompt_sources,
    parse_run_name,
    read_run_config,
    scan_runs,
)
from sampref_bench.evaluation.statistics import fold_stat, paired_test
from sampref_bench.evaluation.summary import CaseResult, build_summary, write_summary
from sampref_bench.evaluation.table_output import format_table, plot_series, write_outputs
from sampref_bench.utilities.errors import SamprefError

NAN = math.nan
DATASET = "Dataset003_BUSI"
LABELS = {"lesion": 1, "cyst": 2}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (trainer, configuration, fraction, fold) -> (lesion Dice per case, cyst Dice per case); five cases per fold,
# named case_{fold}_{i}, so the same fold of two trainers scores the same cases.
FOLDS = {
    ("DPORanking", "2d", "0.2", 0): ([0.8, 0.7, 0.9, 0.6, 0.5], [0.4] * 5),
    ("DPORanking", "2d", "0.2", 1): ([0.9, 0.8, 0.85, 0.95, 1.0], [0.6, 0.6, NAN, 0.6, 0.6]),
    ("DPORanking", "2d", "0.2", 2): ([0.8] * 5, [0.5] * 5),
    ("DPORanking", "2d", "1.0", 0): ([0.95] * 5, [0.75] * 5),
    ("SAMBoxOracle", "2d", "0.2", 0): ([0.7] * 5, [0.3] * 5),
    ("SAMBoxOracle", "2d", "0.2", 1): ([0.8] * 5, [0.5] * 5),
    ("SAMBoxOracle", "2d", "1.0", 0): ([0.9] * 5, [0.7] * 5),
    ("SAMNoPrompt", "2d", "0.2", 0): ([0.7] * 5, [0.3] * 5),
    ("SAMNoPrompt", "2d", "1.0", 0): ([NAN, NAN, 0.9, 0.9, 0.9], [NAN, NAN, 0.7, 0.7, 0.7]),
    ("SAMNoPrompt", "2d__big", "0.5", 0): ([0.6] * 5, [0.2] * 5),
}


def fold_dir(root, trainer, configuration, fraction, fold):
    return root / DATASET / f"{trainer}__samprefPlans__{configuration}__f{fraction}" / f"fold_{fold}"


def write_fold(root, trainer, configuration, fraction, fold, lesion, cyst, *, final=True, summary=True, config=None):
    """A fold folder; ``config`` is written as config.json (a str as raw text, anything else as JSON; None: none)."""
    folder = fold_dir(root, trainer, configuration, fraction, fold)
    (folder / "validation").mkdir(parents=True)
    if final:
        (folder / "checkpoint_final.pth").touch()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if summary:
        cases = [CaseResult(f"case_{fold}_{i}", f"ref/case_{fold}_{i}.png", f"pred/case_{fold}_{i}.png",
                            {1: {"Dice": a, "IoU": 0.5}, 2: {"Dice": b, "IoU": 0.5}})
                 for i, (a, b) in enumerate(zip(lesion, cyst))]
        write_summary(folder / "validation" / "summary.json", build_summary(cases, LABELS))
    return folder


def write_folds_tree(root):
    """The results tree of FOLDS plus two unfinished folds of DPORanking 2d f1.0 under ``root``."""
    for (trainer, configuration, fraction, fold), (lesion, cyst) in FOLDS.items():
        write_fold(root, trainer, configuration, fraction, fold, lesion, cyst)
    write_fold(root, "DPORanking", "2d", "1.0", 1, [0.1] * 5, [0.1] * 5, final=False)
    write_fold(root, "DPORanking", "2d", "1.0", 2, [], [], summary=False)
    return root


@pytest.fixture
def results(sampref_roots):
    """The results tree of FOLDS plus two unfinished folds, one corrupt summary and one stray folder."""
    root = write_folds_tree(sampref_roots["results"])
    bad = write_fold(root, "SAMNoPrompt", "2d", "0.2", 1, [], [], summary=False)
    (bad / "validation" / "summary.json").write_text("{")
    (root / DATASET / "old_plots").mkdir()
    return root


def row(table, trainer, fraction, configuration="2d"):
    [found] = [r for r in table.rows if (r.key.trainer, r.key.configuration, r.key.fraction)
               == (trainer, configuration, fraction)]
    return found


def case_foreground(trainer, configuration, fraction, fold):
    """Per-case foreground mean Dice computed here, independently of the module (NaN where both labels are)."""
    lesion, cyst = FOLDS[(trainer, configuration, fraction, fold)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN case
        return {(fold, f"case_{fold}_{i}"): float(np.nanmean([a, b])) for i, (a, b) in enumerate(zip(lesion, cyst))}


def expected_pairs(trainer, configuration, fraction, folds):
    mine, base = {}, {}
    for fold in folds:
        mine.update(case_foreground(trainer, configuration, fraction, fold))
        base.update(case_foreground("SAMBoxOracle", configuration, fraction, fold))
    keys = [k for k in mine if not math.isnan(mine[k]) and not math.isnan(base[k])]
    return np.array([mine[k] - base[k] for k in keys])


# ------------------------------------------------------------------------------------------------- scanning
@pytest.mark.parametrize("name,expected", [
    ("DPORanking__samprefPlans__2d__f0.2", ("DPORanking", "samprefPlans", "2d", "0.2")),
    ("My_Trainer__samprefPlans__2d__f1.0", ("My_Trainer", "samprefPlans", "2d", "1.0")),
    ("SAMNoPrompt__samprefPlans__2d__big__f0.5", ("SAMNoPrompt", "samprefPlans", "2d__big", "0.5")),
    ("SAMNoPrompt__samprefPlans__2d__f1", ("SAMNoPrompt", "samprefPlans", "2d", "1")),
    ("DPORanking__samprefPlans__2d-lr0.0003__f0.2", ("DPORanking", "samprefPlans", "2d-lr0.0003", "0.2")),
    ("DPORanking__samprefPlans__2d-tiny-myrun__f1.0", ("DPORanking", "samprefPlans", "2d-tiny-myrun", "1.0")),
    ("DPORanking__samprefPlans__2d-f0.5__f0.2", ("DPORanking", "samprefPlans", "2d-f0.5", "0.2")),
    ("DPORanking__samprefPlans__2d-namex___f0.2", ("DPORanking", "samprefPlans", "2d-namex_", "0.2")),
    ("DPORanking__samprefPlans__2d__f0.5__f0.2", ("DPORanking", "samprefPlans", "2d__f0.5", "0.2")),
    ("old_plots", None),
    ("A__B__f0.2", None),
    ("A__B__2d__fhalf", None),
    ("A____2d__f0.2", None),
])
def test_parse_run_name(name, expected):
    key = parse_run_name(name)
    assert (key if key is None else (key.trainer, key.plans, key.configuration, key.fraction)) == expected
    if key is not None:
        assert key.folder_name() == name


def test_scan_separates_finished_and_unfinished(results):
    scan = scan_runs(DATASET)
    assert len(scan.finished) == len(FOLDS)
    reasons = {(u.run, u.fold): u.reason for u in scan.unfinished}
    assert set(reasons) == {("DPORanking__samprefPlans__2d__f1.0", 1), ("DPORanking__samprefPlans__2d__f1.0", 2),
                            ("SAMNoPrompt__samprefPlans__2d__f0.2", 1)}
    assert "checkpoint_final.pth" in reasons[("DPORanking__samprefPlans__2d__f1.0", 1)]
    assert "summary.json" in reasons[("DPORanking__samprefPlans__2d__f1.0", 2)]
    assert "unreadable" in reasons[("SAMNoPrompt__samprefPlans__2d__f0.2", 1)]
    assert scan.skipped == ["old_plots"]


# -------------------------------------------------------------------------------------------------- the table
def test_table_rows_sorted_and_fold_counts(results):
    table = build_table(scan_runs(DATASET))
    assert table.columns == ["lesion", "cyst", FOREGROUND]
    assert [(r.key.trainer, r.key.configuration, r.key.fraction, r.folds) for r in table.rows] == [
        ("DPORanking", "2d", "0.2", [0, 1, 2]), ("DPORanking", "2d", "1.0", [0]),
        ("SAMBoxOracle", "2d", "0.2", [0, 1]), ("SAMBoxOracle", "2d", "1.0", [0]),
        ("SAMNoPrompt", "2d", "0.2", [0]), ("SAMNoPrompt", "2d", "1.0", [0]),
        ("SAMNoPrompt", "2d__big", "0.5", [0]),
    ]


# (trainer, fraction, column, mean, std) worked out by hand from FOLDS (std: ddof=1; None with one fold).
# DPORanking f0.2 fold means: lesion 0.7/0.9/0.8, cyst 0.4/0.6/0.5 (NaN case left out), foreground 0.55/0.75/0.65.
# SAMBoxOracle f0.2: lesion 0.7/0.8, cyst 0.3/0.5, foreground 0.5/0.65.
EXPECTED = [
    ("DPORanking", "0.2", "lesion", 0.8, 0.1),
    ("DPORanking", "0.2", "cyst", 0.5, 0.1),
    ("DPORanking", "0.2", FOREGROUND, 0.65, 0.1),
    ("SAMBoxOracle", "0.2", "lesion", 0.75, 0.1 / math.sqrt(2)),
    ("SAMBoxOracle", "0.2", "cyst", 0.4, 0.2 / math.sqrt(2)),
    ("SAMBoxOracle", "0.2", FOREGROUND, 0.575, 0.15 / math.sqrt(2)),
    ("DPORanking", "1.0", FOREGROUND, 0.85, None),
    ("SAMNoPrompt", "1.0", "lesion", 0.9, None),
]


@pytest.mark.parametrize("trainer,fraction,column,mean,std", EXPECTED)
def test_table_values_hand_computed(results, trainer, fraction, column, mean, std):
    stat = row(build_table(scan_runs(DATASET)), trainer, fraction).values[column]
    assert stat.mean == pytest.approx(mean, abs=1e-12)
    assert stat.std is None if std is None else stat.std == pytest.approx(std, abs=1e-12)


def test_fold_stat_ignores_nan():
    assert fold_stat([0.5, NAN, 0.7]) == pytest.approx(fold_stat([0.5, 0.7]))
    assert fold_stat([0.4]).std is None and fold_stat([0.4]).n == 1
    empty = fold_stat([NAN])
    assert math.isnan(empty.mean) and empty.std is None and empty.n == 0


def test_single_label_option(results):
    table = build_table(scan_runs(DATASET), label="cyst", baseline="SAMBoxOracle")
    assert table.columns == ["cyst"]
    assert row(table, "DPORanking", "0.2").values["cyst"].mean == pytest.approx(0.5)
    # cyst only: fold 0 diffs 0.1 each, fold 1 diffs 0.1 except the NaN case -> 9 pairs, mean 0.1
    paired = row(table, "DPORanking", "0.2").paired
    assert paired.n_pairs == 9 and paired.mean_difference == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- paired tests
def test_paired_test_matches_scipy(results):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    paired = row(table, "DPORanking", "0.2").paired
    diffs = expected_pairs("DPORanking", "2d", "0.2", [0, 1])
    # fold 0: 0.1, 0.05, 0.15, 0, -0.05; fold 1: 0.1, 0.05, 0.2 (lesion only), 0.125, 0.15
    assert paired.n_pairs == 10 == diffs.size
    assert paired.mean_difference == pytest.approx(0.0875, abs=1e-12)
    assert paired.p_value == pytest.approx(wilcoxon(diffs).pvalue, rel=1e-12)
    assert paired.note == ""

    full = row(table, "DPORanking", "1.0").paired
    assert full.n_pairs == 5 and full.mean_difference == pytest.approx(0.05)
    assert full.p_value == pytest.approx(wilcoxon(expected_pairs("DPORanking", "2d", "1.0", [0])).pvalue)
    assert full.p_value == pytest.approx(0.0625)  # exact two-sided: five equal positive differences
    assert row(table, "SAMBoxOracle", "0.2").paired is None


@pytest.mark.parametrize("trainer,fraction,configuration,n_pairs,note", [
    ("SAMNoPrompt", "0.2", "2d", 5, "all paired differences are zero"),
    ("SAMNoPrompt", "1.0", "2d", 3, "only 3 paired cases"),
    ("SAMNoPrompt", "0.5", "2d__big", 0, "no SAMBoxOracle run at configuration 2d__big"),
])
def test_paired_test_without_p_value(results, trainer, fraction, configuration, n_pairs, note):
    paired = row(build_table(scan_runs(DATASET), baseline="SAMBoxOracle"), trainer, fraction, configuration).paired
    assert paired.n_pairs == n_pairs and math.isnan(paired.p_value) and note in paired.note


def test_paired_test_function_directly():
    values = {("a", i): 0.5 + 0.01 * i for i in range(8)} | {("b", 0): NAN}
    reference = {("a", i): 0.5 for i in range(7)} | {("b", 0): 0.4, ("c", 0): 0.1}
    result = paired_test(values, reference)
    diffs = np.array([0.01 * i for i in range(7)])
    assert result.n_pairs == 7
    assert result.mean_difference == pytest.approx(diffs.mean())
    assert result.p_value == pytest.approx(wilcoxon([values[("a", i)] - 0.5 for i in range(7)]).pvalue)
    assert paired_test({}, reference).n_pairs == 0


# ------------------------------------------------------------------------------------------------ outputs
def test_written_csv_json_and_plot(results, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    written = write_outputs(table, tmp_path / "out")
    assert [p.name for p in written][:2] == ["summary_table.csv", "summary_table.json"]
    assert "dice_vs_fraction.png" in [p.name for p in written]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left

    lines = list(csv.DictReader((tmp_path / "out" / "summary_table.csv").open()))
    assert len(lines) == 7
    first = lines[0]
    assert (first["trainer"], first["configuration"], first["fraction"], first["n_folds"], first["folds"]) == (
        "DPORanking", "2d", "0.2", "3", "0;1;2")
    assert float(first["lesion_mean"]) == pytest.approx(0.8) and float(first["foreground_mean_std"]) == (
        pytest.approx(0.1))
    assert float(first["mean_difference"]) == pytest.approx(0.0875) and first["n_pairs"] == "10"
    single = lines[1]
    assert single["foreground_mean_std"] == "" and float(single["p_value"]) == pytest.approx(0.0625)
    assert lines[2]["paired_note"] == "baseline" and lines[2]["p_value"] == ""
    assert lines[4]["p_value"] == "nan" and "zero" in lines[4]["paired_note"]

    data = json.loads((tmp_path / "out" / "summary_table.json").read_text())
    assert data["dataset"] == DATASET and data["metric"] == "Dice" and data["baseline"] == "SAMBoxOracle"
    assert data["columns"] == ["lesion", "cyst", FOREGROUND]
    assert data["rows"][0]["values"]["cyst"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.1)}
    assert data["rows"][1]["values"][FOREGROUND]["std"] is None
    assert data["rows"][0]["paired"]["n_pairs"] == 10
    assert {(u["run"], u["fold"]) for u in data["unfinished"]} == {
        ("DPORanking__samprefPlans__2d__f1.0", 1), ("DPORanking__samprefPlans__2d__f1.0", 2),
        ("SAMNoPrompt__samprefPlans__2d__f0.2", 1)}

    png = (tmp_path / "out" / "dice_vs_fraction.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_text_table_is_aligned(results):
    text = format_table(build_table(scan_runs(DATASET), baseline="SAMBoxOracle"))
    lines = text.splitlines()
    header, body = lines[1], lines[2:9]
    assert header.split()[:4] == ["trainer", "configuration", "fraction", "folds"]
    assert "0.8000 ± 0.1000" in body[0] and "0.8500 ± -" in body[1] and "(baseline)" in body[2]
    positions = {line.index("±") for line in body}
    assert len(positions) == 1  # the first ± of every row in one column
    assert "unfinished (left out): DPORanking__samprefPlans__2d__f1.0/fold_1: no checkpoint_final.pth" in text
    assert "not a run folder (skipped): old_plots" in text
    assert "SAMNoPrompt 2d f1.0: only 3 paired cases" in text


# ------------------------------------------------------------------------------------- oracle rows, run tags
def cfg(oracle, base="2d", tag=None):
    """A config.json as a trainer writes it (only the keys the table reads, plus one it ignores)."""
    return {"trainer": "x", "oracle": oracle, "configuration_base": base, "run_tag": tag}


# (trainer, configuration, fold) -> (Dice of both labels in each of the five cases, config.json); all at f0.2.
MARKED = {
    ("SAMBoxOracle", "2d", 0): ([0.5] * 5, cfg(True)),
    ("SAMBoxOracle", "2d", 1): ([0.5] * 5, None),  # no config.json: the row is oracle through fold 0
    ("SAMBoxOracle", "2d-lr0.001", 0): ([0.6] * 5, cfg(True, tag="lr0.001")),
    ("DPORanking", "2d", 0): ([0.7] * 5, cfg(False)),
    ("DPORanking", "2d", 1): ([0.7] * 5, "{"),  # unreadable config.json
    ("DPORanking", "2d-lr0.0003", 0): ([0.8, 0.82, 0.84, 0.86, 0.88], cfg(False, tag="lr0.0003")),
    ("DPORanking", "2d-lr0.001", 0): ([0.9] * 5, cfg(False, tag="lr0.001")),
    ("DPORanking", "2d-tiny-lr0.01", 0): ([0.45] * 5, cfg(False, base="2d-tiny", tag="lr0.01")),
    ("DPORanking", "2d-tiny-myrun", 0): ([0.4] * 5, {"trainer": "DPORanking"}),  # an old run: no such keys
    ("SAMNoPrompt", "2d", 0): ([0.3] * 5, []),  # config.json that is not an object
}


@pytest.fixture
def marked(sampref_roots):
    root = sampref_roots["results"]
    for (trainer, configuration, fold), (dice, config) in MARKED.items():
        write_fold(root, trainer, configuration, "0.2", fold, dice, dice, config=config)
    return root


def test_run_config_read_per_fold(marked):
    configs = {(r.key.trainer, r.key.configuration, r.fold): r.config for r in scan_runs(DATASET).finished}
    assert configs[("SAMBoxOracle", "2d", 0)] == RunConfig(True, "2d", None)
    assert configs[("DPORanking", "2d-lr0.0003", 0)] == RunConfig(False, "2d", "lr0.0003")
    for missing in [("SAMBoxOracle", "2d", 1), ("DPORanking", "2d", 1), ("DPORanking", "2d-tiny-myrun", 0),
                    ("SAMNoPrompt", "2d", 0)]:
        assert configs[missing] == RunConfig(), missing
    (fold_dir(marked, "SAMNoPrompt", "2d", "0.2", 0) / "config.json").write_text('{"oracle": "yes"}')
    assert read_run_config(fold_dir(marked, "SAMNoPrompt", "2d", "0.2", 0)).oracle is False  # only JSON true


def test_oracle_rows_marked_in_text_csv_json(marked, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    oracle = {(r.key.trainer, r.key.configuration): r.oracle for r in table.rows}
    assert oracle == {("DPORanking", "2d"): False, ("DPORanking", "2d-lr0.0003"): False,
                      ("DPORanking", "2d-lr0.001"): False, ("DPORanking", "2d-tiny-lr0.01"): False,
                      ("DPORanking", "2d-tiny-myrun"): False, ("SAMBoxOracle", "2d"): True,
                      ("SAMBoxOracle", "2d-lr0.001"): True, ("SAMNoPrompt", "2d"): False}

    lines = format_table(table).splitlines()
    body = lines[2:2 + len(table.rows)]
    assert [line.split()[0] + (" [oracle]" if "[oracle]" in line else "") for line in body] == [
        "DPORanking"] * 5 + ["SAMBoxOracle [oracle]"] * 2 + ["SAMNoPrompt"]
    assert all(line.startswith("SAMBoxOracle [oracle]  ") for line in body[5:7])
    assert "  [oracle]: prompts come from the ground truth; an upper bound, not a method" in lines
    assert len({line.index("±") for line in body}) == 1  # the mark widens the column, alignment holds

    write_outputs(table, tmp_path)
    records = list(csv.DictReader((tmp_path / "summary_table.csv").open()))
    assert {(r["trainer"], r["configuration"]): r["oracle"] for r in records} == {
        key: "true" if value else "false" for key, value in oracle.items()}
    data = json.loads((tmp_path / "summary_table.json").read_text())
    assert {(r["trainer"], r["configuration"]): r["oracle"] for r in data["rows"]} == oracle


def test_no_oracle_mark_without_oracle_rows(results):
    text = format_table(build_table(scan_runs(DATASET)))
    assert "[oracle]" not in text  # the results tree has no config.json at all: nothing is an oracle


def test_plot_draws_oracle_dashed_and_labelled(marked):
    table = build_table(scan_runs(DATASET))
    series, dashed = plot_series(table)
    assert dashed == {"SAMBoxOracle 2d (oracle)", "SAMBoxOracle 2d-lr0.001 (oracle)"}
    assert "DPORanking 2d" in series and "DPORanking 2d-lr0.0003" in series
    fig = figure_vs_fraction(series, "t", "Dice", dashed)
    ax = fig.axes[0]
    assert {t.get_text() for t in fig.legends[0].get_texts()} == set(series)
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}  # the data line of each series
    assert styles["SAMBoxOracle 2d (oracle)"] == "--" and styles["SAMBoxOracle 2d-lr0.001 (oracle)"] == "--"
    assert styles["DPORanking 2d"] == "-" and styles["SAMNoPrompt 2d"] == "-"


def test_tagged_runs_are_rows_of_their_own(marked, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    dpo = [r for r in table.rows if r.key.trainer == "DPORanking"]
    assert [(r.key.configuration, r.configuration_base, r.run_tag) for r in dpo] == [
        ("2d", "2d", None), ("2d-lr0.0003", "2d", "lr0.0003"), ("2d-lr0.001", "2d", "lr0.001"),
        ("2d-tiny-lr0.01", "2d-tiny", "lr0.01"), ("2d-tiny-myrun", None, None)]
    assert [r.values[FOREGROUND].mean for r in dpo] == pytest.approx([0.7, 0.84, 0.9, 0.45, 0.4])
    assert [r.folds for r in dpo] == [[0, 1], [0], [0], [0], [0]]

    write_outputs(table, tmp_path)
    records = {r["configuration"]: r for r in csv.DictReader((tmp_path / "summary_table.csv").open())
               if r["trainer"] == "DPORanking"}
    assert (records["2d-lr0.0003"]["run_tag"], records["2d-lr0.0003"]["configuration_base"]) == ("lr0.0003", "2d")
    assert (records["2d-tiny-myrun"]["run_tag"], records["2d-tiny-myrun"]["configuration_base"]) == ("", "")
    data = json.loads((tmp_path / "summary_table.json").read_text())
    [tagged] = [r for r in data["rows"] if r["configuration"] == "2d-lr0.0003"]
    assert tagged["run_tag"] == "lr0.0003" and tagged["paired"]["baseline_configuration"] == "2d"


def test_tagged_runs_pair_exactly_then_with_base_configuration(marked):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    paired = {r.key.configuration: r.paired for r in table.rows if r.key.trainer == "DPORanking"}
    # untagged: the untagged baseline (0.7 - 0.5 over both folds)
    assert (paired["2d"].baseline_configuration, paired["2d"].n_pairs) == ("2d", 10)
    assert paired["2d"].mean_difference == pytest.approx(0.2) and paired["2d"].note == ""
    # the baseline has a run at exactly 2d-lr0.001: paired with it (0.9 - 0.6), not with 2d (which would be 0.4)
    assert paired["2d-lr0.001"].baseline_configuration == "2d-lr0.001"
    assert paired["2d-lr0.001"].mean_difference == pytest.approx(0.3) and paired["2d-lr0.001"].note == ""
    # no baseline at 2d-lr0.0003: falls back to the base configuration 2d (mean 0.84 - 0.5)
    fallback = paired["2d-lr0.0003"]
    assert fallback.baseline_configuration == "2d" and fallback.n_pairs == 5
    assert fallback.mean_difference == pytest.approx(0.34)
    diffs = np.array([0.8, 0.82, 0.84, 0.86, 0.88]) - 0.5
    assert fallback.p_value == pytest.approx(wilcoxon(diffs).pvalue)
    assert "base configuration 2d (none at 2d-lr0.0003)" in fallback.note
    # base configuration known but the baseline has neither: no test, both named
    assert "no SAMBoxOracle run at configuration 2d-tiny-lr0.01 or 2d-tiny" in paired["2d-tiny-lr0.01"].note
    assert paired["2d-tiny-lr0.01"].baseline_configuration is None
    # base configuration unknown (old config.json): exact match only
    assert paired["2d-tiny-myrun"].n_pairs == 0
    assert "no SAMBoxOracle run at configuration 2d-tiny-myrun, fraction 0.2" in paired["2d-tiny-myrun"].note
    assert "DPORanking 2d-lr0.0003 f0.2: paired with SAMBoxOracle at base configuration 2d" in format_table(table)


# ------------------------------------------------------------------------------------ prompt-sourced rows
def prompt_cfg(saliency, oracle=False):
    """A prompt-sourced trainer's config.json: ``hyperparameters.saliency`` names the saliency source."""
    return {**cfg(oracle), "hyperparameters": {"lr": 1e-4, "saliency": saliency, "vqa": "measured"}}


# (trainer, fold) -> (Dice of both labels in each of the five cases, config.json); all at 2d, f0.2.
SOURCED = {
    ("SAMBaseline", 0): ([0.6] * 5, prompt_cfg("dark-basin")),
    ("SAMBaseline", 1): ([0.6] * 5, None),  # no config.json: the row's source comes from fold 0
    ("SAMBoxOnly", 0): ([0.5] * 5, prompt_cfg("dark-basin")),
    ("SAMBoxOnly", 1): ([0.5] * 5, prompt_cfg("biomedclip")),  # folds disagree
    ("SAMBoxOnly", 2): ([0.5] * 5, prompt_cfg("dark-basin")),
    ("SAMNoVQA", 0): ([0.55] * 5, "{"),  # malformed config.json
    ("SAMTextOnly", 0): ([0.45] * 5, prompt_cfg(None)),  # saliency not a string
    ("SAMBoxOracle", 0): ([0.7] * 5, prompt_cfg("biomedclip", oracle=True)),  # both marks, in principle
    ("DPORanking", 0): ([0.65] * 5, cfg(False)),  # not prompt-sourced: no hyperparameters.saliency
}
SOURCES = {"DPORanking": None, "SAMBaseline": "dark-basin", "SAMBoxOnly": "dark-basin+biomedclip",
           "SAMBoxOracle": "biomedclip", "SAMNoVQA": None, "SAMTextOnly": None}


@pytest.fixture
def sourced(sampref_roots):
    root = sampref_roots["results"]
    for (trainer, fold), (dice, config) in SOURCED.items():
        write_fold(root, trainer, "2d", "0.2", fold, dice, dice, config=config)
    return root


def test_prompt_source_read_per_fold(sourced):
    configs = {(r.key.trainer, r.fold): r.config for r in scan_runs(DATASET).finished}
    assert configs[("SAMBaseline", 0)] == RunConfig(False, "2d", None, "dark-basin")
    assert configs[("SAMBoxOnly", 1)].prompt_source == "biomedclip"
    assert configs[("SAMBoxOracle", 0)] == RunConfig(True, "2d", None, "biomedclip")
    for unknown in [("SAMBaseline", 1), ("SAMNoVQA", 0), ("SAMTextOnly", 0), ("DPORanking", 0)]:
        assert configs[unknown].prompt_source is None, unknown
    assert configs[("SAMNoVQA", 0)] == RunConfig()  # malformed config.json: every default
    folder = fold_dir(sourced, "SAMTextOnly", "2d", "0.2", 0)
    for text in ['{"hyperparameters": {"saliency": 3}}', '{"hyperparameters": {"saliency": ""}}',
                 '{"hyperparameters": ["saliency"]}', '{"saliency": "dark-basin"}', "[]"]:
        (folder / "config.json").write_text(text)
        assert read_run_config(folder).prompt_source is None, text


def test_merge_prompt_sources():
    assert merge_prompt_sources([]) is None and merge_prompt_sources([None, None]) is None
    assert merge_prompt_sources([None, "a", "a"]) == "a"  # the first fold that knows it
    assert merge_prompt_sources(["a", None, "b", "a"]) == "a+b"  # distinct values, first-seen order
    assert merge_prompt_sources(["b", "a"]) == "b+a"
    assert merge_prompt_sources(["a+b", "b", "c"]) == "a+b+c"  # merged values merge without repeats


def test_prompt_source_in_text_csv_json(sourced, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    assert {r.key.trainer: r.prompt_source for r in table.rows} == SOURCES
    assert [r.folds for r in table.rows if r.key.trainer == "SAMBoxOnly"] == [[0, 1, 2]]

    lines = format_table(table).splitlines()
    body = lines[2:2 + len(table.rows)]
    marks = [line.split("  ")[0] for line in body]  # the trainer cell: marks are single-space separated
    assert marks == ["DPORanking", "SAMBaseline [saliency: dark-basin]",
                     "SAMBoxOnly [saliency: dark-basin+biomedclip]", "SAMBoxOracle [oracle] [saliency: biomedclip]",
                     "SAMNoVQA", "SAMTextOnly"]
    assert len({line.index("±") for line in body}) == 1  # the marks widen the column, alignment holds
    assert ("  [saliency: SOURCE]: the saliency source that made a prompt-sourced trainer's prompts (config.json "
            "hyperparameters.saliency); a+b: its folds used different sources") in lines
    assert "  [oracle]: prompts come from the ground truth; an upper bound, not a method" in lines

    write_outputs(table, tmp_path)
    with (tmp_path / "summary_table.csv").open() as handle:
        header = next(csv.reader(handle))
    # each new column appended: older columns keep their place (the box source came last)
    assert header[-13:] == ["paired_note", "prompt_source", "baseline_fraction", "pixel_labeled", "pixel_label_share",
                            "rated", "unlabeled_used", "p_holm", "complete", "missing_folds", "missing_fractions",
                            "box_source", "box_source_training"]
    assert header[:9] == ["trainer", "oracle", "plans", "configuration", "configuration_base", "run_tag",
                          "fraction", "n_folds", "folds"]
    records = list(csv.DictReader((tmp_path / "summary_table.csv").open()))
    assert {r["trainer"]: r["prompt_source"] for r in records} == {k: v or "" for k, v in SOURCES.items()}
    assert {r["trainer"]: r["oracle"] for r in records}["SAMBoxOracle"] == "true"
    data = json.loads((tmp_path / "summary_table.json").read_text())
    assert {r["trainer"]: r["prompt_source"] for r in data["rows"]} == SOURCES


def test_no_prompt_source_mark_without_sources(results, tmp_path):
    table = build_table(scan_runs(DATASET))  # the results tree has no config.json at all
    assert all(r.prompt_source is None for r in table.rows)
    text = format_table(table)
    assert "[saliency" not in text and "saliency source" not in text
    write_outputs(table, tmp_path)
    records = list(csv.DictReader((tmp_path / "summary_table.csv").open()))
    assert list(records[0])[-10] == "prompt_source" and {r["prompt_source"] for r in records} == {""}
    data = json.loads((tmp_path / "summary_table.json").read_text())
    assert all("prompt_source" in r and r["prompt_source"] is None for r in data["rows"])


def test_plot_names_the_prompt_source(sourced):
    root = sourced
    # a second fraction of SAMBaseline with another source: its line merges both
    write_fold(root, "SAMBaseline", "2d", "1.0", 0, [0.7] * 5, [0.7] * 5, config=prompt_cfg("biomedclip"))
    series, dashed = plot_series(build_table(scan_runs(DATASET)))
    assert set(series) == {"DPORanking 2d", "SAMBaseline 2d [saliency: dark-basin+biomedclip]",
                           "SAMBoxOnly 2d [saliency: dark-basin+biomedclip]", "SAMNoVQA 2d", "SAMTextOnly 2d",
                           "SAMBoxOracle 2d [saliency: biomedclip] (oracle)"}
    assert dashed == {"SAMBoxOracle 2d [saliency: biomedclip] (oracle)"}
    assert [p[0] for p in series["SAMBaseline 2d [saliency: dark-basin+biomedclip]"]] == [0.2, 1.0]


# ------------------------------------------------------------------------------- a baseline at a fixed fraction
# (trainer, configuration, fraction, fold) -> per-case Dice of both labels (so the foreground mean is that value)
# and config.json. SAMBaseline's fold 1 at 0.1 scores only four cases; DPORanking's fold 2 has no baseline fold.
AT_FRACTION = {
    ("SAMBaseline", "2d", "0.1", 0): ([0.50, 0.52, 0.47, 0.61, 0.55], None),
    ("SAMBaseline", "2d", "0.1", 1): ([0.40, 0.45, 0.58, 0.49], None),
    ("SAMBaseline", "2d", "1.0", 0): ([0.70, 0.66, 0.72, 0.69, 0.75], None),
    ("DPORanking", "2d", "0.1", 0): ([0.55, 0.50, 0.49, 0.66, 0.60], None),
    ("DPORanking", "2d", "0.2", 0): ([0.61, 0.50, 0.66, 0.70, 0.58], None),
    ("DPORanking", "2d", "0.2", 1): ([0.52, NAN, 0.61, 0.60, 0.90], None),
    ("DPORanking", "2d", "0.2", 2): ([0.9] * 5, None),
    ("DPORanking", "2d-lr0.001", "0.5", 0): ([0.80, 0.81, 0.79, 0.83, 0.77], cfg(False, tag="lr0.001")),
    ("SAMNoPrompt", "2d__big", "0.2", 0): ([0.3] * 5, None),
}
# DPORanking 2d f0.2 minus SAMBaseline 2d f0.1 by hand: fold 0 all five cases; fold 1 cases 0, 2, 3 (case 1 is
# NaN, case 4 has no baseline); fold 2 nothing (no baseline fold 2).
DPO_02_VS_01 = np.array([0.61 - 0.50, 0.50 - 0.52, 0.66 - 0.47, 0.70 - 0.61, 0.58 - 0.55,
                         0.52 - 0.40, 0.61 - 0.58, 0.60 - 0.49])


@pytest.fixture
def at_fraction(sampref_roots):
    root = sampref_roots["results"]
    for (trainer, configuration, fraction, fold), (dice, config) in AT_FRACTION.items():
        write_fold(root, trainer, configuration, fraction, fold, dice, dice, config=config)
    return root


def paired_of(table):
    return {(r.key.trainer, r.key.configuration, r.key.fraction): r.paired for r in table.rows}


def test_parse_baseline():
    assert parse_baseline("SAMBaseline") == ("SAMBaseline", None)
    assert parse_baseline("SAMBaseline@0.1") == ("SAMBaseline", "0.1")
    assert parse_baseline("SAMBaseline@f0.1") == ("SAMBaseline", "0.1")
    assert parse_baseline("SAMBaseline@.5") == ("SAMBaseline", ".5")
    assert parse_baseline("SAMBaseline@1") == ("SAMBaseline", "1")
    for bad in ["SAMBaseline@", "@0.1", "SAMBaseline@half", "SAMBaseline@-0.1", "SAMBaseline@0.1.2"]:
        with pytest.raises(SamprefError, match="TRAINER@FRACTION"):
            parse_baseline(bad)


def test_baseline_at_fraction_pairs_every_row_with_that_fraction(at_fraction):
    table = build_table(scan_runs(DATASET), baseline="SAMBaseline@0.1")
    assert (table.baseline, table.baseline_fraction, table.baseline_name) == ("SAMBaseline", "0.1",
                                                                              "SAMBaseline@0.1")
    paired = paired_of(table)
    dpo = paired[("DPORanking", "2d", "0.2")]
    assert dpo.n_pairs == 8 == DPO_02_VS_01.size
    assert dpo.mean_difference == pytest.approx(DPO_02_VS_01.mean(), abs=1e-12)
    assert dpo.p_value == pytest.approx(wilcoxon(DPO_02_VS_01).pvalue, rel=1e-12)
    assert (dpo.baseline_configuration, dpo.baseline_fraction, dpo.note) == ("2d", "0.1", "")

    same = paired[("DPORanking", "2d", "0.1")]
    diffs = np.array([0.55, 0.50, 0.49, 0.66, 0.60]) - np.array([0.50, 0.52, 0.47, 0.61, 0.55])
    assert same.n_pairs == 5 and same.p_value == pytest.approx(wilcoxon(diffs).pvalue, rel=1e-12)
    assert same.baseline_fraction == "0.1"

    # the baseline trainer's own run at another fraction is compared too; its run at 0.1 is the reference
    own = paired[("SAMBaseline", "2d", "1.0")]
    diffs = np.array([0.70, 0.66, 0.72, 0.69, 0.75]) - np.array([0.50, 0.52, 0.47, 0.61, 0.55])
    assert own.n_pairs == 5 and own.mean_difference == pytest.approx(diffs.mean())
    assert own.p_value == pytest.approx(wilcoxon(diffs).pvalue, rel=1e-12) and own.baseline_fraction == "0.1"
    assert paired[("SAMBaseline", "2d", "0.1")] is None

    # a tagged run still falls back to its base configuration, at the baseline's fraction, not its own (0.5)
    tagged = paired[("DPORanking", "2d-lr0.001", "0.5")]
    diffs = np.array([0.80, 0.81, 0.79, 0.83, 0.77]) - np.array([0.50, 0.52, 0.47, 0.61, 0.55])
    assert (tagged.baseline_configuration, tagged.baseline_fraction, tagged.n_pairs) == ("2d", "0.1", 5)
    assert tagged.p_value == pytest.approx(wilcoxon(diffs).pvalue, rel=1e-12)
    assert "base configuration 2d (none at 2d-lr0.001)" in tagged.note

    big = paired[("SAMNoPrompt", "2d__big", "0.2")]
    assert big.n_pairs == 0 and math.isnan(big.p_value) and big.baseline_configuration is None
    assert "no SAMBaseline run at configuration 2d__big, fraction 0.1; no test" in big.note
    assert big.baseline_fraction == "0.1"


def test_baseline_fraction_spelled_otherwise_finds_the_run(at_fraction):
    for spelling in ["0.10", ".1", "f0.1"]:
        table = build_table(scan_runs(DATASET), baseline=f"SAMBaseline@{spelling}")
        assert table.baseline_fraction == "0.1", spelling  # as the run folder spells it
        assert paired_of(table)[("DPORanking", "2d", "0.2")].n_pairs == 8


def test_baseline_without_fraction_pairs_same_fraction_only(at_fraction):
    table = build_table(scan_runs(DATASET), baseline="SAMBaseline")
    assert (table.baseline, table.baseline_fraction, table.baseline_name) == ("SAMBaseline", None, "SAMBaseline")
    paired = paired_of(table)
    # no SAMBaseline run at 0.2: no test, although one at 0.1 exists
    dpo = paired[("DPORanking", "2d", "0.2")]
    assert dpo.n_pairs == 0 and math.isnan(dpo.p_value) and dpo.baseline_configuration is None
    assert "no SAMBaseline run at configuration 2d, fraction 0.2; no test" in dpo.note
    assert dpo.baseline_fraction == "0.2"
    same = paired[("DPORanking", "2d", "0.1")]
    assert (same.n_pairs, same.baseline_fraction) == (5, "0.1")
    assert "fraction 0.5" in paired[("DPORanking", "2d-lr0.001", "0.5")].note
    # every row of the baseline trainer is a reference, at each fraction
    assert paired[("SAMBaseline", "2d", "0.1")] is None and paired[("SAMBaseline", "2d", "1.0")] is None


@pytest.mark.parametrize("baseline,message", [
    ("SAMBaseline@0.3", "baseline 'SAMBaseline' has no finished run at fraction 0.3 of Dataset003_BUSI; "
                        "fractions found for SAMBaseline: 0.1, 1.0"),
    ("DPORanking@1.0", "fractions found for DPORanking: 0.1, 0.2, 0.5"),
    ("SAMBoxOracle@0.1", "baseline 'SAMBoxOracle' has no finished run of Dataset003_BUSI; trainers found: "
                         "DPORanking, SAMBaseline, SAMNoPrompt"),
    ("SAMBaseline@x", "TRAINER@FRACTION"),
])
def test_baseline_fraction_errors(at_fraction, baseline, message):
    with pytest.raises(SamprefError) as err:
        build_table(scan_runs(DATASET), baseline=baseline)
    assert message in str(err.value)


def test_baseline_fraction_in_text_csv_json(at_fraction, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBaseline@0.1")
    text = format_table(table)
    assert "diff vs SAMBaseline@0.1" in text.splitlines()[1]
    assert "row (any fraction) minus SAMBaseline at fraction 0.1" in text
    assert "SAMNoPrompt 2d__big f0.2: no SAMBaseline run at configuration 2d__big, fraction 0.1; no test" in text
    assert "DPORanking 2d-lr0.001 f0.5: paired with SAMBaseline at base configuration 2d" in text

    write_outputs(table, tmp_path)
    records = {(r["trainer"], r["configuration"], r["fraction"]): r
               for r in csv.DictReader((tmp_path / "summary_table.csv").open())}
    assert {k: (r["baseline"], r["baseline_fraction"]) for k, r in records.items()} == {
        k: ("SAMBaseline", "0.1") for k in records}
    dpo = records[("DPORanking", "2d", "0.2")]
    assert float(dpo["p_value"]) == pytest.approx(wilcoxon(DPO_02_VS_01).pvalue, rel=1e-9)
    assert dpo["n_pairs"] == "8" and records[("SAMBaseline", "2d", "0.1")]["paired_note"] == "baseline"

    data = json.loads((tmp_path / "summary_table.json").read_text())
    assert (data["baseline"], data["baseline_fraction"]) == ("SAMBaseline", "0.1")
    rows = {(r["trainer"], r["configuration"], r["fraction"]): r["paired"] for r in data["rows"]}
    assert rows[("SAMBaseline", "2d", "0.1")] is None
    assert rows[("SAMBaseline", "2d", "1.0")]["baseline_fraction"] == "0.1"
    assert rows[("DPORanking", "2d", "0.2")]["baseline_fraction"] == "0.1"
    assert rows[("DPORanking", "2d", "0.2")]["p_value"] == pytest.approx(wilcoxon(DPO_02_VS_01).pvalue)


def test_baseline_without_fraction_outputs_name_each_rows_fraction(at_fraction, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBaseline")
    text = format_table(table)
    assert "diff vs SAMBaseline " in text.splitlines()[1] and "@" not in text.splitlines()[1]
    assert "row minus SAMBaseline at the same configuration (else a tagged run's base configuration) and fraction" \
        in text
    write_outputs(table, tmp_path)
    records = list(csv.DictReader((tmp_path / "summary_table.csv").open()))
    assert all(r["baseline_fraction"] == r["fraction"] for r in records)
    data = json.loads((tmp_path / "summary_table.json").read_text())
    assert data["baseline"] == "SAMBaseline" and data["baseline_fraction"] is None


def test_cli_baseline_at_fraction(at_fraction, capsys):
    assert evaluate_main(["-d", "3", "--baseline", "SAMBaseline@0.1"]) == 0
    assert "diff vs SAMBaseline@0.1" in capsys.readouterr().out
    data = json.loads((at_fraction / DATASET / "summary_table.json").read_text())
    assert data["baseline_fraction"] == "0.1"
    assert evaluate_main(["-d", "3", "--baseline", "SAMBaseline@0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sampref_evaluate: error: ") and "fractions found for SAMBaseline: 0.1, 1.0" in err
    assert "Traceback" not in err


def test_cli_help_shows_baseline_at_fraction(capsys):
    with pytest.raises(SystemExit):
        evaluate_main(["--help"])
    out = capsys.readouterr().out
    assert "TRAINER[@FRACTION]" in out and "--baseline SAMBaseline@0.1" in out


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_into_dataset_folder(results, capsys):
    assert evaluate_main(["-d", "3", "--baseline", "SAMBoxOracle"]) == 0
    out = capsys.readouterr().out
    assert "DPORanking" in out and "0.6500 ± 0.1000" in out and "unfinished (left out)" in out
    for name in ("summary_table.csv", "summary_table.json", "dice_vs_fraction.png"):
        assert (results / DATASET / name).is_file()
        assert f"wrote {results / DATASET / name}" in out


def test_cli_output_dir_metric_and_label(results, tmp_path, capsys):
    out_dir = tmp_path / "tables"
    assert evaluate_main(["-d", DATASET, "--metric", "IoU", "--label", "lesion", "-o", str(out_dir)]) == 0
    assert "0.5000 ± 0.0000" in capsys.readouterr().out
    data = json.loads((out_dir / "summary_table.json").read_text())
    assert data["metric"] == "IoU" and data["columns"] == ["lesion"] and data["baseline"] is None
    assert not (results / DATASET / "summary_table.csv").exists()


@pytest.mark.parametrize("args,message", [
    (["-d", "7"], "no dataset matches '7'"),
    (["-d", "3", "--baseline", "SAMBaseline"],
     "baseline 'SAMBaseline' has no finished run of Dataset003_BUSI; trainers found: DPORanking, SAMBoxOracle, "
     "SAMNoPrompt"),
    (["-d", "3", "--label", "liver"], "labels found: lesion, cyst"),
    (["-d", "3", "--metric", "HD95"], "metric 'HD95' is in no summary.json; metrics found: Dice, IoU"),
])
def test_cli_user_errors(results, capsys, args, message):
    assert evaluate_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sampref_evaluate: error: ") and message in err and "Traceback" not in err


def test_cli_no_finished_run_says_train_first(sampref_roots, capsys):
    (sampref_roots["raw"] / "Dataset005_Empty").mkdir(parents=True)
    assert evaluate_main(["-d", "5"]) == 2
    err = capsys.readouterr().err
    assert "no finished run of Dataset005_Empty" in err and "sampref_train" in err

    write_fold(sampref_roots["results"], "SAMBoxOracle", "2d", "0.2", 0, [0.5], [0.5], final=False)
    assert evaluate_main(["-d", "3"]) == 2
    assert "1 unfinished fold(s) found" in capsys.readouterr().err


def test_build_table_needs_finished_runs(sampref_roots):
    with pytest.raises(SamprefError, match="sampref_train"):
        build_table(scan_runs("Dataset009_None"))


# ------------------------------------------------------------------------------------------------ imports
def _evaluation_imports(path):
    """The ``sampref_bench.evaluation`` modules a source file imports anywhere (function-level ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sampref_bench.evaluation."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.rsplit(".", 1)[1] for a in node.names
                         if a.name.startswith("sampref_bench.evaluation."))
    return found


def test_evaluation_imports_have_no_circle():
    folder = Path(evaluation_package.__file__).parent
    graph = {p.stem: _evaluation_imports(p) for p in folder.glob("*.py") if p.stem != "__init__"}
    assert "table_output" not in graph["aggregate"] and "report" not in graph["aggregate"]
    assert graph["report"] >= {"aggregate", "table_output"}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m)] == []


def test_a_preset_run_falls_back_to_its_family_configuration(sampref_roots):
    root = sampref_roots["results"]
    base = [0.50, 0.52, 0.47, 0.61, 0.55]
    paper = [0.40, 0.50, 0.45, 0.60, 0.52]
    write_fold(root, "SAMBaseline", "2d", "0.1", 0, base, base, config=cfg(False))
    record = {**cfg(False, base="2d-paper", tag="bench"), "configuration_family": "2d"}
    write_fold(root, "DPORanking", "2d-paper-bench", "0.2", 0, paper, paper, config=record)
    write_fold(root, "DPORanking", "2d-paper-old", "0.2", 0, paper, paper, config=cfg(False, base="2d-paper"))
    paired = paired_of(build_table(scan_runs(DATASET), baseline="SAMBaseline@0.1"))
    found = paired[("DPORanking", "2d-paper-bench", "0.2")]
    diffs = np.array(paper) - np.array(base)
    assert (found.n_pairs, found.baseline_configuration) == (5, "2d")
    assert found.mean_difference == pytest.approx(diffs.mean())
    assert found.p_value == pytest.approx(wilcoxon(diffs).pvalue, rel=1e-12)
    # a run written before configuration_family existed has no fallback beyond its base configuration
    assert paired[("DPORanking", "2d-paper-old", "0.2")].n_pairs == 0


# ------------------------------------------------------------------------------------------------- data use
def use_cfg(labeled, share, rated, unlabeled, n_train):
    """A config.json as trainers write it now: ``cases`` (unlabeled = images used) and ``data_use``."""
    return {"trainer": "x", "oracle": False, "configuration_base": "2d", "run_tag": None,
            "cases": {"labeled": labeled, "rated": rated, "unlabeled": unlabeled, "val": 10},
            "data_use": {"pixel_labeled": labeled, "pixel_label_share": share, "rated": rated,
                         "unlabeled_used": unlabeled}, "n_train_for_the_test": n_train}


def old_cfg(labeled, rated, unused):
    """A config.json written before data_use: ``cases.unlabeled`` counted the fold's unused training cases."""
    return {"trainer": "x", "oracle": False, "configuration_base": "2d", "run_tag": None,
            "cases": {"labeled": labeled, "rated": rated, "unlabeled": unused, "val": 10}}


# (trainer, fold) -> config.json; all at 2d f0.2
USED = {
    ("MeanTeacher", 0): use_cfg(8, 0.2, 0, 42, 40),          # 32 fold cases without labels + 10 imagesTrUnlabeled
    ("MeanTeacher", 1): use_cfg(9, 0.2143, 0, 41, 42),
    ("UNet", 0): use_cfg(8, 0.2, 0, 0, 40),
    ("DPORanking", 0): old_cfg(4, 4, 32),                    # old run: 32 is not what it used
    ("SAMBaseline", 0): None,                                # no config.json at all
    ("SAMNoPrompt", 0): use_cfg(8, 0.2, 0, 0, 40),           # folds disagree in what they record
    ("SAMNoPrompt", 1): old_cfg(8, 0, 32),
}


@pytest.fixture
def used(sampref_roots):
    root = sampref_roots["results"]
    for (trainer, fold), config in USED.items():
        write_fold(root, trainer, "2d", "0.2", fold, [0.5] * 5, [0.5] * 5, config=config)
    return root


def test_read_data_use_new_old_and_malformed_records():
    assert read_data_use(use_cfg(8, 0.2, 0, 42, 40)) == DataUse(8, 0.2, 0, 42)
    assert read_data_use(old_cfg(4, 4, 32)) == DataUse(4, 0.1, 4, None)      # share 4 / (4 + 4 + 32)
    assert read_data_use(old_cfg(3, 0, 0)) == DataUse(3, 1.0, 0, None)
    assert read_data_use({"cases": {"labeled": 3, "rated": 0}}) == DataUse(3, None, 0, None)
    assert read_data_use({}) == DataUse() and read_data_use({"cases": [1, 2]}) == DataUse()
    bad = {"data_use": {"pixel_labeled": "8", "pixel_label_share": 1.5, "rated": True, "unlabeled_used": -1},
           "cases": {"labeled": 8, "rated": 0, "unlabeled": 3}}   # data_use wins, every value ill-typed
    assert read_data_use(bad) == DataUse()
    assert data_use_range([DataUse(8, 0.2, 0, 42), DataUse(9, 0.2143, 0, 41)], "pixel_labeled") == (8, 9)
    assert data_use_range([DataUse(8, 0.2, 0, 42), DataUse(9, 0.2143, 0, None)], "unlabeled_used") is None
    assert data_use_range([], "rated") is None


def test_data_use_in_text_csv_json(used, tmp_path):
    table = build_table(scan_runs(DATASET))
    assert {r.key.trainer: r.data_use for r in table.rows}["MeanTeacher"] == [DataUse(8, 0.2, 0, 42),
                                                                           DataUse(9, 0.2143, 0, 41)]
    lines = format_table(table).splitlines()
    head, body = lines[1], lines[2:2 + len(table.rows)]
    assert re.split(r"\s{2,}", head.strip())[:7] == ["trainer", "configuration", "fraction", "folds", "pixel labels",
                                                   "ratings", "unlabeled used"]
    cells = {line.split()[0]: line.split("0.5000")[0].split()[3:] for line in body}
    assert cells == {"DPORanking": ["1", "4", "(10%)", "4", "?"],
                     "MeanTeacher": ["2", "8-9", "(20-21%)", "0", "41-42"],
                     "SAMBaseline": ["1", "?", "?", "?"],
                     "SAMNoPrompt": ["2", "8", "(20%)", "0", "?"],
                     "UNet": ["1", "8", "(20%)", "0", "0"]}
    assert len({line.index("±") for line in body}) == 1
    assert any(line.startswith("  pixel labels (share of the fold's training cases), ratings, unlabeled used")
               for line in lines)
    assert any(line.startswith("  ?: not recorded in some fold's config.json") for line in lines)

    write_outputs(table, tmp_path)
    records = {r["trainer"]: r for r in csv.DictReader((tmp_path / "summary_table.csv").open())}
    fields = ("pixel_labeled", "pixel_label_share", "rated", "unlabeled_used")
    assert {t: tuple(r[f] for f in fields) for t, r in records.items()} == {
        "DPORanking": ("4", "0.1", "4", ""), "MeanTeacher": ("8-9", "0.2-0.2143", "0", "41-42"),
        "SAMBaseline": ("", "", "", ""), "SAMNoPrompt": ("8", "0.2", "0", ""), "UNet": ("8", "0.2", "0", "0")}
    data = json.loads((tmp_path / "summary_table.json").read_text())
    uses = {r["trainer"]: r["data_use"] for r in data["rows"]}
    assert uses["MeanTeacher"] == {"pixel_labeled": [8, 9], "pixel_label_share": [0.2, 0.2143], "rated": [0, 0],
                                   "unlabeled_used": [42, 41]}
    assert uses["DPORanking"] == {"pixel_labeled": [4], "pixel_label_share": [0.1], "rated": [4],
                                  "unlabeled_used": [None]}
    assert uses["SAMNoPrompt"]["unlabeled_used"] == [0, None]


def test_all_recorded_data_use_needs_no_unknown_note(sampref_roots):
    write_fold(sampref_roots["results"], "UNet", "2d", "0.2", 0, [0.5] * 5, [0.5] * 5, config=use_cfg(8, 0.2, 0, 0, 40))
    text = format_table(build_table(scan_runs(DATASET)))
    assert "?" not in text and "pixel labels (share" in text


def test_cli_prints_data_use_columns(used, capsys):
    assert evaluate_main(["-d", "3"]) == 0
    out = capsys.readouterr().out
    assert "pixel labels" in out and "unlabeled used" in out and "8-9 (20-21%)" in out


# ------------------------------------------------------------------------------------------------- box sources
CASCADE_TRAINING = {"run": "UNet__samprefPlans__2d__f0.2/fold_0", "trainer": "UNet", "epochs": 50,
                    "iterations_per_epoch": 250, "pixel_labeled": 8}


def box_cfg(trainer, hyperparameters=None, box_source=None, training=None, **extra):
    """A config.json of ``trainer`` (8 pixel-labeled cases) with ``data_use.box_source`` when given (a record written
    before it when ``None``)."""
    record = {**use_cfg(8, 0.2, 0, 0, 40), "trainer": trainer, **extra}
    if hyperparameters is not None:
        record["hyperparameters"] = hyperparameters
    if box_source is not None:
        record["data_use"] = {**record["data_use"], "box_source": box_source, "box_source_training": training}
    return record


BOXES = {  # folder trainer -> config.json; all at 2d f0.2 fold 0
    "SAMBoxOnly": box_cfg("SAMBoxOnly", {"box_source": "run:UNet"}, "cascade:UNet", CASCADE_TRAINING),
    "SAMNoVQA": box_cfg("SAMNoVQA", {"box_source": "run:UNet"},  # an older cascade record: its run, no length
                        cascade_run="/r/Dataset003_BUSI/UNet__samprefPlans__2d__f0.2/fold_0"),
    "SAMSelfPrompt": box_cfg("SAMSelfPrompt", {}),                 # older record: the trainer says "learned"
    "SAMBaseline": box_cfg("SAMBaseline", {"saliency": "dark-basin", "box_source": "saliency"}, "saliency"),
    "SAMTextOnly": box_cfg("SAMTextOnly", {"saliency": "dark-basin", "box_source": "saliency"}),  # no box
    "UNet": box_cfg("UNet", {"lr": 0.01}),
}


def test_read_box_source_of_new_and_old_records():
    uses = {name: read_data_use(record) for name, record in BOXES.items()}
    assert uses["SAMBoxOnly"] == DataUse(8, 0.2, 0, 0, "cascade:UNet", CASCADE_TRAINING)
    assert uses["SAMNoVQA"].box_source == "cascade:UNet"
    assert uses["SAMNoVQA"].box_source_training["run"] == "UNet__samprefPlans__2d__f0.2/fold_0"
    assert uses["SAMNoVQA"].box_source_training["epochs"] is None
    assert (uses["SAMSelfPrompt"].box_source, uses["SAMBaseline"].box_source) == ("learned", "saliency")
    assert uses["SAMTextOnly"].box_source is None and uses["UNet"] == DataUse(8, 0.2, 0, 0)
    assert read_data_use({"data_use": {"box_source": "oracle"}}).box_source is None  # unknown values are unknown


def test_box_source_column_says_the_learned_sources_spend_no_extra_label(sampref_roots, tmp_path):
    root = sampref_roots["results"]
    for trainer, record in BOXES.items():
        write_fold(root, trainer, "2d", "0.2", 0, [0.5] * 5, [0.5] * 5, config=record)
    table = build_table(scan_runs(DATASET))
    lines = format_table(table).splitlines()
    head = re.split(r"\s{2,}", lines[1].strip())
    assert head[4:8] == ["pixel labels", "ratings", "unlabeled used", "box prompts"]
    cells = {line.split()[0]: re.split(r"\s{2,}", line.strip())[7] for line in lines[2:2 + len(table.rows)]}
    assert cells == {"SAMBaseline": "saliency", "SAMBoxOnly": "cascade:UNet (+UNet 50x250)",
                     "SAMNoVQA": "cascade:UNet", "SAMSelfPrompt": "learned", "SAMTextOnly": "-", "UNet": "-"}
    assert any("neither learned source uses a label beyond the pixel labels column" in line for line in lines)

    write_outputs(table, tmp_path)
    rows = list(csv.reader((tmp_path / "summary_table.csv").open()))
    assert rows[0][-2:] == ["box_source", "box_source_training"]
    by_trainer = {r[0]: r for r in rows[1:]}
    assert by_trainer["SAMBoxOnly"][-2:] == ["cascade:UNet (+UNet 50x250)",
                                             "UNet__samprefPlans__2d__f0.2/fold_0 (50 epochs x 250 iterations)"]
    assert by_trainer["SAMNoVQA"][-1] == "UNet__samprefPlans__2d__f0.2/fold_0 (? epochs x ? iterations)"
    assert by_trainer["UNet"][-2:] == ["", ""]
    data = {r["trainer"]: r for r in json.loads((tmp_path / "summary_table.json").read_text())["rows"]}
    assert data["SAMBoxOnly"]["box_source"] == ["cascade:UNet"]
    assert data["SAMBoxOnly"]["box_source_training"] == [CASCADE_TRAINING]
    assert set(data["SAMBoxOnly"]["data_use"]) == {"pixel_labeled", "pixel_label_share", "rated", "unlabeled_used"}
    assert "| Box prompts |" in (tmp_path / "summary_table.md").read_text()


def test_a_table_without_learned_boxes_keeps_its_columns(sampref_roots, tmp_path):
    root = sampref_roots["results"]
    for trainer in ("SAMBaseline", "UNet"):
        write_fold(root, trainer, "2d", "0.2", 0, [0.5] * 5, [0.5] * 5, config=BOXES[trainer])
    table = build_table(scan_runs(DATASET))
    text = format_table(table)
    assert "box prompts" not in text
    assert re.split(r"\s{2,}", text.splitlines()[1].strip())[4:7] == ["pixel labels", "ratings", "unlabeled used"]
    write_outputs(table, tmp_path)
    assert "Box prompts" not in (tmp_path / "summary_table.md").read_text()
