#!/usr/bin/env bash
# Sets up a development checkout: the Fashion-MNIST data package, a virtual environment in
# .venv, torch, and kdcore plus every plugin under plugins/ installed editable.
# Idempotent: re-running it only installs what is missing. Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || \
  $PIP install -q torch==2.14.1 torchvision==0.29.1
$PIP install -q "setuptools>=64" wheel
editables=(-e ".[test,bench]")
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ]; then editables+=(-e "$plugin"); fi
done
$PIP install -q --no-build-isolation "${editables[@]}"
echo "kdcore installed in .venv: $(.venv/bin/kdcore --version)"
