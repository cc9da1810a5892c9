#!/usr/bin/env bash
# Installs nnunet_mtl and everything it needs on a fresh machine (Python 3.10+).
# torch first: the pinned builds keep nnU-Net's trainer lookup working (README.md, Set-up).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
$PY -m pip install -q torch==2.14.1 torchvision==0.29.1
$PY -m pip install -q -e ".[test,cluster]"  # cluster: Ray, for --engine ray and its tests
$PY -c "import nnunetv2, nnunet_mtl; print('nnunet_mtl', nnunet_mtl.__version__, 'with nnunetv2 installed')"
