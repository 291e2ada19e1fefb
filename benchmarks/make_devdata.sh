#!/usr/bin/env bash
# Builds .devdata/, the payload of benchmarks/device_ssl_busi.sh (one GPU-machine call carries at most 64 MiB):
#   sitk.tar.xz   SimpleITK for the GPU machine's Python (PYVER, default 3.12), unpacked, xz-compressed
#   *.whl         monai and segment_anything (pure Python)
#   busi.tar.xz   WORKDIR's preprocessed/Dataset003_BUSI without embeddings or prompts, and raw labelsTr,
#                 dataset.json, conversion.json (what the U-Net trainers and the final validation read)
# Usage: bash benchmarks/make_devdata.sh WORKDIR [VENV]   (WORKDIR: a bench_*_busi.py --workdir, planned)
# Needs the package index (pip download). .devdata/ is kept out of git by .git/info/exclude.
set -euo pipefail
work=${1:?usage: bash benchmarks/make_devdata.sh WORKDIR [VENV]}
venv=${2:-.venv}
pyver=${PYVER:-3.12}
dataset=Dataset003_BUSI
grep -qx "/.devdata/" .git/info/exclude 2>/dev/null || echo "/.devdata/" >> .git/info/exclude
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p .devdata "$tmp/site"
"$venv/bin/pip" download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
  --platform manylinux2014_x86_64 -d "$tmp/wheels" SimpleITK
"$venv/bin/python" -m zipfile -e "$tmp"/wheels/[Ss]imple[Ii][Tt][Kk]-*.whl "$tmp/site"
tar cJf .devdata/sitk.tar.xz -C "$tmp/site" .
"$venv/bin/pip" download --quiet --no-deps -d .devdata monai segment-anything
tar cJf .devdata/busi.tar.xz -C "$work" \
  --exclude "preprocessed/$dataset/embeddings" --exclude "preprocessed/$dataset/prompts" \
  "preprocessed/$dataset" "raw/$dataset/labelsTr" "raw/$dataset/dataset.json" "raw/$dataset/conversion.json"
du -ch .devdata/* | tail -n 1
