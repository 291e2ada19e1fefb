#!/usr/bin/env bash
# The main job of sampref on the bundled BUSI subset: convert, verify, plan, compute the unsupervised prompts
# and report their quality, train a grid of three SAM trainers (box oracle, no prompt, and SAMBaseline: a box and
# point from a head learned on the labeled images + VQA and LLM text) on fold 0 at annotation fraction 0.2 with
# LiteMedSAM through sampref_benchmark, predict 20 images with the
# trained fold-0 model through sampref_predict, and write the paper-ready report of sampref_evaluate.
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
# The demo's own folders for prediction (next to the three roots, under sampref_data unless they are moved).
demo_dir=$(dirname "$results")
predict_in="$demo_dir/demo_predict/images"
predict_out="$demo_dir/demo_predict/masks"
# The demo's shorter schedule (the plan's is printed below); every run is tagged "demo".
oracle_epochs=2
epochs_short=10
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
echo "   scored on fold 0's training cases only (--fold 0): prompt settings are chosen from training-case reports."
echo "   SAMBaseline reads the texts; its box and point come from a coarse-mask head trained with it on the labeled"
echo "   images (box_source=learned, the default; --set box_source=saliency gives it the saliency box and point)"
"$bin/sampref_prompts" -d 003 --fold 0 --overlays 4

echo "== 5. train the grid with sampref_benchmark: fold 0 at fraction 0.2 (16 labeled images), LiteMedSAM"
echo "   the plan trains every run for $epochs epochs x $iterations iterations x $batch slices, the same at every"
echo "   fraction (plans.json states its CPU time). To stay within minutes the demo runs a shorter schedule of the"
echo "   same iterations (--set epochs=N; lr 1e-4, no halving before epoch 10), tagged --run-name demo (run folders"
echo "   ...__2d-demo__f0.2): SAMNoPrompt and SAMBaseline (learned box and point + text) $epochs_short epochs, then the"
echo "   box oracle $oracle_epochs epochs."
echo "   Finished runs are skipped, interrupted ones continued. The full-schedule grid on every fold:"
echo "   sampref_benchmark -d 003 -t SAMBoxOracle SAMNoPrompt SAMBaseline --fractions 0.2 --folds all"
grid_start=$(date +%s)
"$bin/sampref_benchmark" -d 003 -t SAMNoPrompt SAMBaseline --fractions 0.2 --folds 0 \
  --set epochs="$epochs_short" --run-name demo --no-report
"$bin/sampref_benchmark" -d 003 -t SAMBoxOracle --fractions 0.2 --folds 0 \
  --set epochs="$oracle_epochs" --run-name demo --no-report
grid_seconds=$(( $(date +%s) - grid_start ))
echo "grid: 3 runs in ${grid_seconds} s wall time (runs finished before are skipped, not retrained)"

echo "== 6. predict 20 images with the fold-0 SAMBaseline model (sampref_predict): fold 0's 20 validation images,"
echo "   which that model never trained on, copied to $predict_in as new images would be ({case}_0000.png);"
echo "   masks go to $predict_out. Prompts (the learned head's box and point, the texts) and embeddings come from each"
echo "   image alone, never its label."
mkdir -p "$predict_in"
"$bin/python" - "$preprocessed/Dataset003_BUSI/splits_final.json" "$raw/Dataset003_BUSI/imagesTr" "$predict_in" <<'PY'
import json, shutil, sys
from pathlib import Path
splits, images, target = json.load(open(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
for case in splits[0]["val"][:20]:
    shutil.copy2(images / f"{case}_0000.png", target / f"{case}_0000.png")
PY
predict_start=$(date +%s)
"$bin/sampref_predict" -d 003 -t SAMBaseline --fraction 0.2 -f 0 --run-name demo -i "$predict_in" -o "$predict_out" \
  --no-progress
predict_seconds=$(( $(date +%s) - predict_start ))
echo "predict: $(find "$predict_in" -name '*_0000.png' | wc -l) images in ${predict_seconds} s wall time"
"$bin/python" - "$predict_out" "$results/Dataset003_BUSI/SAMBaseline__samprefPlans__2d-demo__f0.2/fold_0/validation" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
masks, validation = sorted(Path(sys.argv[1]).glob("*.png")), Path(sys.argv[2])
same = sum(np.array_equal(np.asarray(Image.open(m)), np.asarray(Image.open(validation / m.name))) for m in masks)
print(f"   {same} of {len(masks)} masks equal the run's own validation predictions of the same images")
PY

echo "== 7. the report (sampref_evaluate): every trainer, configuration and fraction; Wilcoxon vs SAMNoPrompt"
echo "   with Holm-adjusted p; tables as CSV/JSON/Markdown/LaTeX, Dice-vs-fraction and box plots with JSON sidecars"
evaluate_out=$("$bin/sampref_evaluate" -d 003 --baseline SAMNoPrompt)
report="$results/Dataset003_BUSI"
echo "-- $report/summary_table.md:"
cat "$report/summary_table.md"
echo "-- report files:"
grep '^wrote ' <<<"$evaluate_out" | sed 's/^wrote /   /'

echo "demo finished in $(( $(date +%s) - start )) s (grid ${grid_seconds} s, predict 20 images ${predict_seconds} s);"
echo "runs and report are under $report, predicted masks under $predict_out"
