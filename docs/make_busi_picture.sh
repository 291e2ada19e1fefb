#!/usr/bin/env bash
# Makes docs/busi_dice_vs_fraction.png (+ .json) and docs/busi_summary_table.md, README's picture, from the
# runs of a full-BUSI benchmark work folder (benchmarks/bench_*_busi.py --workdir WORKDIR) without writing
# into it: fold 0 of the runs named below is copied to a temporary folder (configs, logs and validation
# summaries; each checkpoint_final.pth as an empty placeholder, all sampref_evaluate checks), then
# `sampref_evaluate -d 003 --baseline SAMBaseline@0.1` writes its report there.
# Usage: bash docs/make_busi_picture.sh WORKDIR [VENV]
set -euo pipefail
work=${1:?usage: bash docs/make_busi_picture.sh WORKDIR [VENV]}
venv=${2:-.venv}
dataset=Dataset003_BUSI
# Fold 0 of each: the baseline at 0.1 and 0.2, its extra-steps control and pseudo-labels at 0.1 and 0.2, no
# prompt, the three DPO trainers with their chosen defaults (DPORanking: IPO + anchor, threshold candidates), a
# U-Net and two semi-supervised U-Nets (the 2-core CPU schedule, 25 x 50 steps).
runs=(SAMBaseline__samprefPlans__2d__f0.1 SAMBaseline__samprefPlans__2d__f0.2
      SAMBaselineContinued__samprefPlans__2d-bench-control__f0.1
      SAMBaselineContinued__samprefPlans__2d-bench-control__f0.2 SAMNoPrompt__samprefPlans__2d__f0.1
      SAMPseudoLabel__samprefPlans__2d__f0.1 SAMPseudoLabel__samprefPlans__2d__f0.2
      DPORanking__samprefPlans__2d-bench-ipo-thr__f0.2
      DPOBestOnly__samprefPlans__2d-bench-default__f0.2 DPORating__samprefPlans__2d-bench-default__f0.2
      UNet__samprefPlans__2d-bench-cpu25x50__f0.1 MeanTeacher__samprefPlans__2d-bench-cpu25x50__f0.1
      CPS__samprefPlans__2d-bench-cpu25x50__f0.1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/raw/$dataset" "$tmp/preprocessed/$dataset" "$tmp/results/$dataset"
cp "$work/raw/$dataset/dataset.json" "$tmp/raw/$dataset/"
cp "$work/preprocessed/$dataset/"*.json "$tmp/preprocessed/$dataset/"
for run in "${runs[@]}"; do
  source="$work/results/$dataset/$run/fold_0"
  target="$tmp/results/$dataset/$run/fold_0"
  [[ -f "$source/checkpoint_final.pth" ]] || { echo "$source is not finished" >&2; exit 1; }
  mkdir -p "$target/validation"
  cp "$source/config.json" "$source/training_log.csv" "$target/"
  cp "$source/validation/summary.json" "$target/validation/"
  touch "$target/checkpoint_final.pth"
done
SAMPREF_raw="$tmp/raw" SAMPREF_preprocessed="$tmp/preprocessed" SAMPREF_results="$tmp/results" HF_HUB_OFFLINE=1 \
  "$venv/bin/sampref_evaluate" -d 003 --baseline SAMBaseline@0.1 -o "$tmp/report"
mkdir -p docs
cp "$tmp/report/dice_vs_fraction.png" docs/busi_dice_vs_fraction.png
cp "$tmp/report/dice_vs_fraction.json" docs/busi_dice_vs_fraction.json
sed "s#$tmp#(a copy of $work)#g" "$tmp/report/summary_table.md" > docs/busi_summary_table.md
chmod 644 docs/busi_dice_vs_fraction.png docs/busi_dice_vs_fraction.json docs/busi_summary_table.md
echo "wrote docs/busi_dice_vs_fraction.png, docs/busi_dice_vs_fraction.json, docs/busi_summary_table.md"
