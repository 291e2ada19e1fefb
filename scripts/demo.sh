#!/usr/bin/env bash
# The main job of sampref on the bundled BUSI subset: convert, verify, plan, train two SAM trainers on
# fold 0 at annotation fraction 0.2 with LiteMedSAM, evaluate, print the Dice table.
# Usage: bash scripts/demo.sh [VENV]   (make demo calls it). Data goes to ./sampref_data unless the
# SAMPREF_raw / SAMPREF_preprocessed / SAMPREF_results variables say otherwise. Running it again reuses
# what is done (conversion, plan, embeddings, finished runs) and resumes an interrupted run.
set -euo pipefail
venv=${1:-.venv}
bin="$venv/bin"
export HF_HUB_OFFLINE=1
raw=${SAMPREF_raw:-sampref_data/raw}
preprocessed=${SAMPREF_preprocessed:-sampref_data/preprocessed}
results=${SAMPREF_results:-sampref_data/results}
# The demo's shorter schedule (the plan's is printed below); both runs are tagged "demo".
oracle_epochs=2
noprompt_epochs=10
start=$(date +%s)

echo "== 1. convert the bundled BUSI subset (demo_data/BUSI_subset) to Dataset003_BUSI"
if [[ -d "$raw/Dataset003_BUSI" ]]; then
  echo "$raw/Dataset003_BUSI exists; keeping it (make clean-demo starts over)"
else
  "$bin/sampref_convert" busi demo_data/BUSI_subset -d 3 --name BUSI
fi

echo "== 2. verify it, as a user would after editing files by hand"
"$bin/sampref_convert" verify -d 003

echo "== 3. plan it: fingerprint, plans, 5-fold splits with nested fractions, preprocessing"
"$bin/sampref_plan" -d 003
read -r epochs iterations batch < <("$bin/python" -c 'import json, sys
p = json.load(open(sys.argv[1]))
print(p["epochs"], p["iterations_per_epoch"], p["batch_size"])' "$preprocessed/Dataset003_BUSI/plans.json")

echo "== 4. train on fold 0 at fraction 0.2 (16 labeled images) with LiteMedSAM"
echo "   the plan trains every run for $epochs epochs x $iterations iterations x $batch slices, the same at every"
echo "   fraction (plans.json states its CPU time). To stay within minutes the demo runs a shorter schedule"
echo "   of the same iterations: SAMBoxOracle $oracle_epochs epochs, SAMNoPrompt $noprompt_epochs epochs (lr 1e-4, no"
echo "   halving before epoch 10), tagged 'demo' (run folders ...__2d-demo__f0.2). The full-schedule command:"
echo "   sampref_train 003 SAMNoPrompt 0 --fraction 0.2"
for trainer in SAMBoxOracle SAMNoPrompt; do
  [[ $trainer == SAMBoxOracle ]] && n=$oracle_epochs || n=$noprompt_epochs
  run="$results/Dataset003_BUSI/${trainer}__samprefPlans__2d-demo__f0.2/fold_0"
  resume=()
  if [[ -f "$run/checkpoint_latest.pth" || -f "$run/checkpoint_final.pth" ]]; then resume=(--continue); fi
  "$bin/sampref_train" 003 "$trainer" 0 --fraction 0.2 --epochs "$n" --run-name demo "${resume[@]}"
done

echo "== 5. evaluate: one Dice table over every trainer, fraction and fold"
"$bin/sampref_evaluate" -d 003 --baseline SAMNoPrompt

echo "demo finished in $(( $(date +%s) - start )) s; runs, tables and plots are under $results/Dataset003_BUSI"
