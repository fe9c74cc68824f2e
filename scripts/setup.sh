#!/usr/bin/env bash
# Set up a fresh clone: a virtual environment in .venv with cxrlearn and everything the
# tests, lessons, docs and app need. constraints.txt pins torch to the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,app,dicom,onnx]"
# ONNX Runtime Web for `cxrlearn export --format web`: fetched once with npm (pinned version,
# sha256-checked) into the cache; the phone app then carries it, so it never needs a CDN.
.venv/bin/python -c "from cxrlearn.export.web.runtime import main; main()" \
  || echo "note: no ONNX Runtime Web (npm missing?); only cxrlearn export --format web needs it"
echo "cxrlearn is installed in .venv (activate it with: source .venv/bin/activate)"
