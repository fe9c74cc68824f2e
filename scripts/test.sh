#!/usr/bin/env bash
# Every test: unit tests, the lessons (nbval), and the documentation build.
# Exits non-zero as soon as one of the three fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
echo "== pytest: tests/"
.venv/bin/python -m pytest tests -q
echo "== pytest --nbval: lessons/"
.venv/bin/python -m pytest --nbval --nbval-current-env -p no:cacheprovider lessons -q
echo "== mkdocs build --strict"
.venv/bin/mkdocs build --strict --quiet
echo "== all checks passed"
