"""The paper-ready report of sampref_evaluate: Holm-adjusted p-values, the incomplete-grid flag, Markdown and
LaTeX tables, plot sidecars (on the hand-built results tree of test_aggregate)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from test_aggregate import DATASET, row, write_fold, write_folds_tree

from sampref_bench.evaluation.aggregate import FOREGROUND, build_table
from sampref_bench.evaluation.grid import GridPlan, check_grid, read_plan
from sampref_bench.evaluation.paper_tables import PaperTable, latex_escape, to_latex, to_markdown
from sampref_bench.evaluation.run_scan import scan_runs
from sampref_bench.evaluation.statistics import holm_adjust
from sampref_bench.evaluation.table_output import format_table, write_outputs

NAN = math.nan


@pytest.fixture
def results(sampref_roots):
    """test_aggregate's FOLDS tree plus two unfinished folds of DPORanking 2d f1.0."""
    return write_folds_tree(sampref_roots["results"])


# ------------------------------------------------------------------------------------------------------- Holm
def test_holm_against_hand_computation():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
    assert holm_adjust([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # the cap at one, and the running maximum keeps the order of the raw values
    assert holm_adjust([0.5, 0.2, 0.9]) == pytest.approx([1.0, 0.6, 1.0])
    assert holm_adjust([0.04]) == [0.04] and holm_adjust([]) == []


def test_holm_leaves_nan_out_of_the_family():
    adjusted = holm_adjust([NAN, 0.01, NAN, 0.04])
    assert math.isnan(adjusted[0]) and math.isnan(adjusted[2])
    assert adjusted[1] == pytest.approx(0.02) and adjusted[3] == pytest.approx(0.04)  # m = 2, not 4
    assert all(math.isnan(p) for p in holm_adjust([NAN, NAN]))
    with pytest.raises(ValueError):
        holm_adjust([1.5])


@pytest.mark.parametrize(("raw", "expected"), [
    # m = 3 finite: 0.01 x 3 = 0.03, 0.02 x 2 = 0.04, 0.03 x 1 = 0.03 -> running max 0.04
    ([0.01, NAN, 0.03, 0.02, NAN], [0.03, NAN, 0.04, 0.04, NAN]),
    # m = 2: 0.3 x 2 = 0.6, then 0.6 x 1 = 0.6
    ([NAN, 0.6, 0.3], [NAN, 0.6, 0.6]),
    # a tie, m = 2: 0.02 x 2 = 0.04, then max(0.04, 0.02 x 1) = 0.04
    ([0.02, NAN, 0.02], [0.04, NAN, 0.04]),
    # one finite p among NaNs is a family of one: unadjusted (0.3, not 3 x 0.3 = 0.9)
    ([NAN, 0.3, NAN], [NAN, 0.3, NAN]),
    # the cap at one with NaNs around: m = 3, 0.2 x 3 = 0.6, 0.45 x 2 = 0.9, 0.7 x 1 -> 0.9
    ([0.7, NAN, 0.2, 0.45], [0.9, NAN, 0.6, 0.9]),
    ([0.0, NAN, 1.0], [0.0, NAN, 1.0]),  # the ends of [0, 1] are p-values
])
def test_holm_by_hand_with_nan(raw, expected):
    adjusted = holm_adjust(raw)
    assert len(adjusted) == len(raw)
    assert [math.isnan(p) for p in adjusted] == [math.isnan(p) for p in expected]
    assert [p for p in adjusted if not math.isnan(p)] == pytest.approx([p for p in expected if not math.isnan(p)])


@pytest.mark.parametrize("bad", [math.inf, -math.inf, -0.01, 1.0001])
def test_holm_refuses_p_values_outside_the_unit_interval(bad):
    with pytest.raises(ValueError, match="must lie in"):
        holm_adjust([0.01, bad, NAN])


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    raw = [0.001, 0.3, 0.02, 0.049, 0.5, 0.0001]
    assert holm_adjust(raw) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    # with NaNs (left out of the family) and ties, over 25 random tables (a statsmodels call costs ~0.1 s here):
    # statsmodels on the finite p alone
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(1, 12))
        raw = rng.choice([0.01, 0.04, 0.2], n).tolist() if rng.random() < 0.3 else (rng.random(n) ** 3).tolist()
        for i in np.flatnonzero(rng.random(n) < 0.3):
            raw[i] = NAN
        adjusted = holm_adjust(raw)
        finite = [i for i, p in enumerate(raw) if not math.isnan(p)]
        assert all(math.isnan(adjusted[i]) for i in range(n) if i not in finite)
        if finite:
            reference = multipletests([raw[i] for i in finite], method="holm")[1]
            assert [adjusted[i] for i in finite] == pytest.approx(list(reference), abs=1e-12)


def test_table_p_values_holm_adjusted_over_the_table(results):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    tested = [r for r in table.rows if r.paired is not None]
    raw = [r.paired.p_value for r in tested]
    defined = sorted(p for p in raw if not math.isnan(p))
    assert len(defined) == 2 and sum(math.isnan(p) for p in raw) >= 2  # the NaN rows are not in the family
    low, high = defined
    expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), min(1.0, high))}
    for r in tested:
        if math.isnan(r.paired.p_value):
            assert math.isnan(r.paired.p_holm)
        else:
            assert r.paired.p_holm == pytest.approx(expected[r.paired.p_value])


def test_holm_in_text_csv_json(results, tmp_path):
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    text = format_table(table)
    assert "p Holm" in text.splitlines()[1] and "p Holm: the p-values Holm-adjusted" in text
    write_outputs(table, tmp_path)
    lines = {(r["trainer"], r["configuration"], r["fraction"]): r
             for r in csv.DictReader((tmp_path / "summary_table.csv").open())}
    dpo = row(table, "DPORanking", "0.2")
    assert float(lines[("DPORanking", "2d", "0.2")]["p_holm"]) == pytest.approx(dpo.paired.p_holm)
    assert lines[("SAMBoxOracle", "2d", "0.2")]["p_holm"] == ""  # the baseline's own row
    data = json.loads((tmp_path / "summary_table.json").read_text(encoding="utf-8"))
    assert data["paired_correction"] == "holm"
    assert data["rows"][0]["paired"]["p_holm"] == pytest.approx(dpo.paired.p_holm)


# ------------------------------------------------------------------------------------------- paper metrics
def test_rows_keep_fold_values_and_every_paper_metric(results):
    table = build_table(scan_runs(DATASET))
    dpo = row(table, "DPORanking", "0.2")
    assert dpo.fold_values == pytest.approx([0.55, 0.75, 0.65])  # foreground mean per fold, by hand
    assert set(dpo.metrics) == {"Dice", "IoU"}  # no HD95 in these summaries
    assert dpo.metrics["Dice"].mean == pytest.approx(dpo.values[FOREGROUND].mean)
    assert dpo.metrics["Dice"].std == pytest.approx(0.1)
    assert dpo.metrics["IoU"].mean == pytest.approx(0.5) and dpo.metrics["IoU"].std == pytest.approx(0.0)
    lesion = build_table(scan_runs(DATASET), label="lesion")
    assert row(lesion, "DPORanking", "0.2").fold_values == pytest.approx([0.7, 0.9, 0.8])


# ------------------------------------------------------------------------------------------------ the grid
def write_splits(roots, n_folds, fractions, dpo_labeled=1):
    """A splits_final.json with ``n_folds`` folds; fraction f budgets ``round(10 f)`` of ten training cases."""
    folder = roots["preprocessed"] / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    train = [f"t{i}" for i in range(10)]
    folds = [{"train": train, "val": [], "permutation": train,
              "labeled": {f: train[:round(10 * float(f))] for f in fractions}, "dpo_labeled": train[:dpo_labeled]}
             for _ in range(n_folds)]
    (folder / "splits_final.json").write_text(json.dumps(folds))


def test_grid_from_splits_flags_missing_folds_and_fractions(results, sampref_roots):
    write_splits(sampref_roots, 3, ["0.1", "0.2", "0.5", "1.0"])
    table = build_table(scan_runs(DATASET))
    plan = read_plan(table)
    assert (plan.folds, plan.fractions) == ((0, 1, 2), ("0.1", "0.2", "0.5", "1.0"))
    assert plan.dpo_fractions == ("0.2", "0.5", "1.0")  # 0.1 buys only the one dpo_labeled case
    grid = check_grid(table, plan)
    dpo02, dpo10 = grid.of(row(table, "DPORanking", "0.2")), grid.of(row(table, "DPORanking", "1.0"))
    assert dpo02.missing_folds == () and dpo10.missing_folds == (1, 2)
    # no row of these runs records ratings, so every group is planned at all four fractions
    assert dpo02.missing_fractions == dpo10.missing_fractions == ("0.1", "0.5")
    assert grid.of(row(table, "SAMNoPrompt", "0.5", "2d__big")).missing_fractions == ("0.1", "0.2", "1.0")
    assert not dpo02.complete and not grid.complete


def test_grid_complete_and_dpo_fractions(sampref_roots):
    write_splits(sampref_roots, 2, ["0.1", "0.2"])
    root = sampref_roots["results"]
    rated = {"data_use": {"pixel_labeled": 1, "pixel_label_share": 0.1, "rated": 1, "unlabeled_used": 0}}
    for fold in (0, 1):
        write_fold(root, "DPORanking", "2d", "0.2", fold, [0.5] * 5, [0.5] * 5, config=rated)
        for fraction in ("0.1", "0.2"):
            write_fold(root, "SAMBaseline", "2d", fraction, fold, [0.4] * 5, [0.4] * 5)
    table = build_table(scan_runs(DATASET))
    grid = check_grid(table)
    assert grid.complete  # DPO is planned only at 0.2, where it buys a rated case
    text = format_table(table, grid)
    assert "incomplete" not in text and all(line.rstrip().endswith("yes") for line in text.splitlines()[2:5])


def test_grid_without_splits_uses_what_the_results_hold(results):
    table = build_table(scan_runs(DATASET))
    plan = read_plan(table)
    assert plan.folds == (0, 1, 2) and plan.fractions == ("0.2", "0.5", "1.0") and "results folder" in plan.source
    grid = check_grid(table, GridPlan((0,), ("0.2", "1.0"), ("0.2", "1.0"), "test"))
    assert grid.of(row(table, "SAMNoPrompt", "0.2")).complete
    assert grid.of(row(table, "SAMNoPrompt", "0.5", "2d__big")).complete  # none of its fractions is planned


def test_incomplete_grid_in_text_csv_json(results, sampref_roots, tmp_path):
    write_splits(sampref_roots, 3, ["0.2", "0.5", "1.0"])
    table = build_table(scan_runs(DATASET))
    text = format_table(table)
    assert "complete" in text.splitlines()[1].split()
    assert "incomplete: DPORanking 2d f1.0: 1 of 3 folds (missing fold 1, 2)" in text
    assert "incomplete grid: DPORanking 2d: fraction 0.5 not finished (finished: 0.2, 1.0)" in text
    assert "grid: folds 0, 1, 2, fractions 0.2, 0.5, 1.0 planned (" in text
    write_outputs(table, tmp_path)
    lines = {(r["trainer"], r["configuration"], r["fraction"]): r
             for r in csv.DictReader((tmp_path / "summary_table.csv").open())}
    assert [lines[("DPORanking", "2d", "1.0")][k] for k in ("complete", "missing_folds", "missing_fractions")] == [
        "false", "1;2", "0.5"]
    data = json.loads((tmp_path / "summary_table.json").read_text(encoding="utf-8"))
    first = data["rows"][0]
    assert (first["complete"], first["missing_folds"], first["missing_fractions"]) == (False, [], ["0.5"])
    assert data["grid"]["folds"] == [0, 1, 2] and data["grid"]["complete"] is False
    assert any(n.startswith("incomplete: DPORanking 2d f1.0") for n in data["grid"]["notes"])


# ------------------------------------------------------------------------------------------ Markdown, LaTeX
def md_rows(text):
    """The body rows of a Markdown pipe table as lists of cells (the header and rule left out)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]], lines[0]


def test_latex_escape():
    assert latex_escape("2d__big") == r"2d\_\_big"
    assert latex_escape("10% & #1 $x$") == r"10\% \& \#1 \$x\$"
    assert latex_escape(r"a\b{c}~^") == r"a\textbackslash{}b\{c\}\textasciitilde{}\textasciicircum{}"
    assert latex_escape("0.5 ± 0.1 (< 5)") == r"0.5 $\pm$ 0.1 (\textless{} 5)"


def test_markdown_and_latex_rendering_of_a_small_table():
    table = PaperTable("T_1: 20%", ["Trainer", "Dice"], [["A_b", "0.5 ± 0.1"], ["c|d", "0.7"]], {1}, ["n_1"])
    md = to_markdown(table)
    assert md.splitlines()[:5] == ["**T_1: 20%**", "", "| Trainer | Dice |", "| :--- | ---: |",
                                   "| A_b | 0.5 ± 0.1 |"]
    assert "| c\\|d | 0.7 |" in md and md.rstrip().endswith("- n_1")
    tex = to_latex(table)
    assert "\\begin{tabular}{lr}" in tex and "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "A\\_b & 0.5 $\\pm$ 0.1 \\\\" in tex and "% T_1: 20%" in tex.splitlines()[0]
    assert "\\multicolumn{2}{l}{\\footnotesize n\\_1} \\\\" in tex
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule") < tex.index("end{tabular}")


def test_summary_md_and_tex_hold_the_rows(results, sampref_roots, tmp_path):
    write_splits(sampref_roots, 3, ["0.2", "0.5", "1.0"])
    table = build_table(scan_runs(DATASET), baseline="SAMBoxOracle")
    written = write_outputs(table, tmp_path)
    assert {"summary_table.md", "summary_table.tex"} <= {p.name for p in written}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    md = (tmp_path / "summary_table.md").read_text(encoding="utf-8")
    rows, head = md_rows(md)
    assert head.startswith("| Trainer | Configuration | Fraction | Folds | Pixel labels | Ratings | Unlabeled used | "
                           "Dice | IoU | ΔDice vs SAMBoxOracle | p | p (Holm) | Complete |")
    assert len(rows) == len(table.rows) == 7
    dpo = row(table, "DPORanking", "0.2")
    assert rows[0][:9] == ["DPORanking", "2d", "0.2", "3/3", "?", "?", "?", "0.6500 ± 0.1000", "0.5000 ± 0.0000"]
    assert rows[0][9:] == ["+0.0875", f"{dpo.paired.p_value:.4g}", f"{dpo.paired.p_holm:.4g}", "no"]
    assert rows[1][2:4] == ["1.0", "1/3"] and rows[1][7] == "0.8500"  # one fold: the mean alone
    assert rows[2][9] == "(baseline)" and rows[4][10:12] == ["n/a", "n/a"]
    assert "- incomplete: DPORanking 2d f1.0: 1 of 3 folds (missing fold 1, 2)" in md
    assert "- incomplete grid: SAMNoPrompt 2d__big: fraction 0.2, 1.0 not finished (finished: 0.5)" in md

    tex = (tmp_path / "summary_table.tex").read_text(encoding="utf-8")
    assert "\\begin{tabular}{llrrrrrrrrrrl}" in tex
    assert ("DPORanking & 2d & 0.2 & 3/3 & ? & ? & ? & 0.6500 $\\pm$ 0.1000 & 0.5000 $\\pm$ 0.0000 & +0.0875 & "
            f"{dpo.paired.p_value:.4g} & {dpo.paired.p_holm:.4g} & no \\\\") in tex
    assert "SAMNoPrompt & 2d\\_\\_big & 0.5 & 1/3 &" in tex
    assert "$\\Delta$Dice vs SAMBoxOracle" in tex and "(\\textless{} 5)" in tex
    assert "incomplete: DPORanking 2d f1.0: 1 of 3 folds" in tex


def test_paper_tables_mark_oracle_and_show_hd95(sampref_roots, tmp_path):
    from sampref_bench.evaluation.summary import CaseResult, build_summary, write_summary

    root = sampref_roots["results"]
    for fold, hd in ((0, 4.0), (1, 6.0)):
        folder = write_fold(root, "SAMBoxOracle", "2d-lr_0.1%", "0.2", fold, [0.5] * 5, [0.5] * 5,
                            config={"oracle": True})
        cases = [CaseResult(f"c{i}", "r", "p", {1: {"Dice": 0.5, "IoU": 0.4, "HD95": hd},
                                                2: {"Dice": 0.5, "IoU": 0.4, "HD95": hd}}) for i in range(5)]
        write_summary(folder / "validation" / "summary.json", build_summary(cases, {"lesion": 1, "cyst": 2}))
    table = build_table(scan_runs(DATASET))
    write_outputs(table, tmp_path)
    rows, head = md_rows((tmp_path / "summary_table.md").read_text(encoding="utf-8"))
    assert "| Dice | IoU | HD95 | Complete |" in head
    assert rows[0][0] == "SAMBoxOracle [oracle]" and rows[0][1] == "2d-lr_0.1%"
    assert rows[0][7:10] == ["0.5000 ± 0.0000", "0.4000 ± 0.0000", f"5.00 ± {math.sqrt(2):.2f}"]
    tex = (tmp_path / "summary_table.tex").read_text(encoding="utf-8")
    assert "SAMBoxOracle [oracle] & 2d-lr\\_0.1\\% & 0.2 & 2/2 &" in tex


# ------------------------------------------------------------------------------------------------- the plots
def test_plot_sidecars_match_the_table(results, tmp_path):
    table = build_table(scan_runs(DATASET))
    written = {p.name for p in write_outputs(table, tmp_path)}
    assert {"dice_vs_fraction.png", "dice_vs_fraction.json", "dice_boxplots.png", "dice_boxplots.json"} <= written
    for name in ("dice_vs_fraction.png", "dice_boxplots.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    lines = json.loads((tmp_path / "dice_vs_fraction.json").read_text(encoding="utf-8"))
    by_name = {s["name"]: s for s in lines["series"]}
    assert set(by_name) == {"DPORanking 2d", "SAMBoxOracle 2d", "SAMNoPrompt 2d", "SAMNoPrompt 2d__big"}
    for r in table.rows:
        entry = by_name[f"{r.key.trainer} {r.key.configuration}"]
        i = entry["fraction"].index(r.key.fraction_value)
        stat = r.values[FOREGROUND]
        assert entry["y"][i] == pytest.approx(stat.mean)
        assert entry["std"][i] == (None if stat.std is None else pytest.approx(stat.std))
        width = stat.std or 0.0
        assert (entry["band_low"][i], entry["band_high"][i]) == pytest.approx((stat.mean - width, stat.mean + width))
    # dodged: the series at fraction 0.2 sit at distinct x near 0.2, within 30 % of the smallest gap (0.3)
    at_02 = [s["x"][s["fraction"].index(0.2)] for s in lines["series"] if 0.2 in s["fraction"]]
    assert len(set(at_02)) == len(at_02) == 3 and all(abs(x - 0.2) <= 0.3 * 0.3 / 2 + 1e-12 for x in at_02)
    assert lines["dodge_offsets"] == pytest.approx([-0.045, -0.015, 0.015, 0.045])

    boxes = json.loads((tmp_path / "dice_boxplots.json").read_text(encoding="utf-8"))
    assert boxes["fractions"] == [0.2, 0.5, 1.0]
    dpo = {b["fraction"]: b for b in {s["name"]: s for s in boxes["series"]}["DPORanking 2d"]["boxes"]}
    assert dpo[0.2]["values"] == pytest.approx([0.55, 0.75, 0.65])   # per-fold foreground mean, by hand
    assert dpo[0.2]["median"] == pytest.approx(0.65) and dpo[0.2]["q1"] == pytest.approx(0.6)
    assert dpo[0.2]["mean"] == pytest.approx(row(table, "DPORanking", "0.2").values[FOREGROUND].mean)
    for series in boxes["series"]:
        for box in series["boxes"]:
            assert box["position"] == pytest.approx(boxes["fractions"].index(box["fraction"]), abs=0.4)


def test_vs_fraction_figure_draws_bands_dashed_oracle_and_dodged_lines():
    from sampref_bench.evaluation.plots import box_data, figure_boxplots, figure_vs_fraction, vs_fraction_data

    series = {"A": [(0.1, 0.5, 0.1), (0.5, 0.7, None)], "B (oracle)": [(0.1, 0.9, 0.05), (0.5, NAN, None)],
              "C": [(0.1, NAN, None)]}
    fig = figure_vs_fraction(series, "t", "Dice", {"B (oracle)"})
    ax = fig.axes[0]
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles == {"A": "-", "B (oracle)": "--"}  # C has no point; B's NaN point is left out
    assert len(ax.collections) == 2  # one band per drawn series
    xs = {line.get_label(): list(line.get_xdata()) for line in ax.lines}
    assert xs["A"][0] != xs["B (oracle)"][0] and abs(xs["A"][0] - 0.1) < 0.1
    data = vs_fraction_data(series, "t", "Dice", {"B (oracle)"})
    assert [s["x"] for s in data["series"]] == [pytest.approx(xs["A"]), pytest.approx(xs["B (oracle)"])]
    boxes = {"A": [(0.1, [0.4, 0.5, 0.6]), (0.5, [NAN])], "B": [(0.5, [0.7, 0.8])]}
    drawn = box_data(boxes, "t", "Dice")
    assert [len(s["boxes"]) for s in drawn["series"]] == [1, 1] and drawn["fractions"] == [0.1, 0.5]
    [legend] = figure_boxplots(boxes, "t", "Dice").legends
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B"]


@pytest.mark.parametrize("n_series", [1, 4, 9])
def test_legends_sit_below_the_axes_and_never_cover_them(n_series):
    """However many series, the legend is outside the axes (below them) and the axes keep their height."""
    from matplotlib.transforms import Bbox

    from sampref_bench.evaluation.plots import figure_boxplots, figure_vs_fraction

    names = [f"Trainer{i} 2d-bench-a-long-configuration [saliency: dark-basin]" for i in range(n_series)]
    series = {name: [(0.1, 0.5 + 0.01 * i, None), (0.2, 0.55, None)] for i, name in enumerate(names)}
    boxes = {name: [(0.1, [0.4, 0.5, 0.6])] for name in names}
    heights = []
    for fig in (figure_vs_fraction(series, "t", "Dice"), figure_boxplots(boxes, "t", "Dice")):
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)  # the constrained layout runs at draw time
        [ax], [legend] = fig.axes, fig.legends
        assert ax.get_legend() is None
        box, axes_box = legend.get_window_extent(renderer), ax.get_tightbbox(renderer)
        assert [t.get_text() for t in legend.get_texts()] == names
        assert box.y1 <= axes_box.y0 + 1  # wholly under the axes and their tick labels
        assert Bbox.intersection(box, ax.get_window_extent(renderer)) is None
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
        heights.append(ax.get_window_extent(renderer).height)
    assert min(heights) > 250  # pixels at 100 dpi: the axes are not squeezed by a long legend


def test_legend_columns_follow_label_width():
    from sampref_bench.evaluation.plots import legend_columns

    assert legend_columns([]) == 1
    assert legend_columns(["UNet 2d", "CPS 2d"]) == 2  # short names: two columns
    assert legend_columns(["x" * 120]) == 1  # one label wider than half the figure: one column


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_help_describes_the_report(capsys):
    from sampref_bench.cli.evaluate import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("summary_table.md", "summary_table.tex", "dice_boxplots.png", "dice_vs_fraction.json", "p_holm",
                 "Holm-adjusted", "splits_final.json", "missing_fractions"):
        assert name in out, name


def test_cli_writes_the_whole_report(results, sampref_roots, capsys):
    from sampref_bench.cli.evaluate import main

    write_splits(sampref_roots, 3, ["0.2", "0.5", "1.0"])
    assert main(["-d", "3", "--baseline", "SAMBoxOracle"]) == 0
    out = capsys.readouterr().out
    folder = results / DATASET
    for name in ("summary_table.csv", "summary_table.json", "summary_table.md", "summary_table.tex",
                 "dice_vs_fraction.png", "dice_vs_fraction.json", "dice_boxplots.png", "dice_boxplots.json"):
        assert (folder / name).is_file() and f"wrote {folder / name}" in out, name
    assert "incomplete: DPORanking 2d f1.0: 1 of 3 folds (missing fold 1, 2)" in out
    grid = json.loads((folder / "summary_table.json").read_text(encoding="utf-8"))["grid"]
    assert "splits_final.json" in grid["source"]


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe\x00", b'{"folds": []}', b"[]", b"[1, 2]"])
def test_unreadable_splits_fall_back_to_the_results(results, sampref_roots, content):
    folder = sampref_roots["preprocessed"] / DATASET
    folder.mkdir(parents=True)
    (folder / "splits_final.json").write_bytes(content)
    plan = read_plan(build_table(scan_runs(DATASET)))
    assert plan.folds == (0, 1, 2) and "results folder" in plan.source


def test_paper_cell_of_an_infinite_hd95():
    from sampref_bench.evaluation.statistics import FoldStat
    from sampref_bench.evaluation.table_output import _mean_std

    assert _mean_std(FoldStat(math.inf, NAN, 2), ".2f") == "inf"   # a fold with an empty prediction
    assert _mean_std(FoldStat(5.0, math.sqrt(2), 2), ".2f") == "5.00 ± 1.41"
    assert _mean_std(FoldStat(NAN, None, 0), ".4f") == "n/a" and _mean_std(None, ".4f") == "n/a"
