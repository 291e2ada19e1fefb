#!/usr/bin/env bash
# The main job of sampref on the bundled BUSI subset, every stage that exists so far.
# Usage: bash scripts/demo.sh [VENV]   (make demo calls it). Data goes to ./sampref_data unless the
# SAMPREF_raw / SAMPREF_preprocessed / SAMPREF_results variables say otherwise.
set -euo pipefail
venv=${1:-.venv}
bin="$venv/bin"
export HF_HUB_OFFLINE=1

echo "== 1. convert the bundled BUSI subset (demo_data/BUSI_subset) to Dataset003_BUSI"
"$bin/sampref_convert" busi demo_data/BUSI_subset -d 3 --name BUSI --overwrite

echo "== 2. verify it again, as a user would after editing files by hand"
"$bin/sampref_convert" verify -d 003

echo "== 3. plan it: fingerprint, plans, 5-fold splits with nested fractions, preprocessing"
"$bin/sampref_plan" -d 003
