#!/usr/bin/env bash
# The main job of sampref on the bundled BUSI subset: convert, verify, plan, compute the unsupervised prompts
# and report their quality, train three SAM trainers (box oracle, no prompt, unsupervised prompts) on fold 0
# at annotation fraction 0.2 with LiteMedSAM, evaluate, print the Dice table.
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
baseline_epochs=10
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

echo "== 4. unsupervised prompts for every image: weights-free saliency -> dense CRF -> box and point, VQA text"
echo "   from the saliency mask, LLM text (dataset.json's target_text without OPENAI_API_KEY); quality vs ground truth"
"$bin/sampref_prompts" -d 003 --overlays 4

echo "== 5. train on fold 0 at fraction 0.2 (16 labeled images) with LiteMedSAM"
echo "   the plan trains every run for $epochs epochs x $iterations iterations x $batch slices, the same at every"
echo "   fraction (plans.json states its CPU time). To stay within minutes the demo runs a shorter schedule"
echo "   of the same iterations: SAMBoxOracle $oracle_epochs epochs, SAMNoPrompt and SAMBaseline $noprompt_epochs epochs"
echo "   (lr 1e-4, no halving before epoch 10), tagged 'demo' (run folders ...__2d-demo__f0.2). The full-schedule command:"
echo "   sampref_train 003 SAMNoPrompt 0 --fraction 0.2"
for trainer in SAMBoxOracle SAMNoPrompt SAMBaseline; do
  case $trainer in SAMBoxOracle) n=$oracle_epochs ;; SAMNoPrompt) n=$noprompt_epochs ;; *) n=$baseline_epochs ;; esac
  run="$results/Dataset003_BUSI/${trainer}__samprefPlans__2d-demo__f0.2/fold_0"
  resume=()
  if [[ -f "$run/checkpoint_latest.pth" || -f "$run/checkpoint_final.pth" ]]; then resume=(--continue); fi
  "$bin/sampref_train" 003 "$trainer" 0 --fraction 0.2 --epochs "$n" --run-name demo "${resume[@]}"
done

echo "== 6. evaluate: one Dice table over every trainer, fraction and fold"
"$bin/sampref_evaluate" -d 003 --baseline SAMNoPrompt

echo "demo finished in $(( $(date +%s) - start )) s; runs, tables and plots are under $results/Dataset003_BUSI"
