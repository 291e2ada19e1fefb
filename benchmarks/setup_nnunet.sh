#!/usr/bin/env bash
# Install nnU-Net v2 for benchmarks/bench_plan.py into benchmarks/.nnunet_site, never into .venv.
#
#   bash benchmarks/setup_nnunet.sh [PYTHON]      (PYTHON defaults to .venv/bin/python)
#
# Idempotent: does nothing when the site already imports nnU-Net's fingerprint entry point at the
# pinned version. Packages go in with --no-deps; the list below is what nnU-Net's fingerprint
# extraction (`nnUNetv2_extract_fingerprint`) needs on top of what sampref's .venv already has (torch,
# numpy, scipy, SimpleITK, nibabel, matplotlib, scikit-learn, tqdm ...). nnU-Net's other dependencies
# (batchgeneratorsv2, imagecodecs, seaborn, yacs, graphviz, timm, ...) are needed for training and
# inference only and are left out. Use it with PYTHONPATH=benchmarks/.nnunet_site.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${1:-$ROOT/.venv/bin/python}"
SITE="$HERE/.nnunet_site"
NNUNET_VERSION="2.8.1"
PACKAGES=(
    "nnunetv2==$NNUNET_VERSION"
    "acvl_utils==0.2.6"
    "dynamic_network_architectures==0.4.4"
    "batchgenerators==0.25.5"
    "scikit-image==0.26.0"
    "lazy_loader==0.6"
    "tifffile==2026.3.3"
    "blosc2==4.14.1"
    "numexpr==2.14.2"
    "msgpack==1.2.4"
    "ndindex==1.10.1"
    "httpx==0.28.1"
    "pandas==3.1.1"
)

check() {
    PYTHONPATH="$SITE" "$PY" - "$NNUNET_VERSION" <<'EOF'
import importlib.metadata
import sys

import nnunetv2.experiment_planning.plan_and_preprocess_entrypoints  # noqa: F401
import nnunetv2.imageio.reader_writer_registry  # noqa: F401
import nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor  # noqa: F401

assert importlib.metadata.version("nnunetv2") == sys.argv[1], importlib.metadata.version("nnunetv2")
EOF
}

if [ -d "$SITE" ] && check >/dev/null 2>&1; then
    echo "nnU-Net $NNUNET_VERSION already installed in $SITE"
    exit 0
fi

# nnU-Net must not be importable from the project's own environment.
if "$PY" -c "import nnunetv2" >/dev/null 2>&1; then
    echo "error: nnunetv2 is importable from $PY without PYTHONPATH; uninstall it from that environment" >&2
    exit 1
fi

rm -rf "$SITE"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$SITE" "${PACKAGES[@]}"
# Keep git (and ruff, which honours .gitignore) away from the installed packages.
printf '*\n' > "$SITE/.gitignore"
check
echo "installed nnU-Net $NNUNET_VERSION into $SITE"
