#!/usr/bin/env bash
# Every test: unit tests, the lessons (nbval), and the documentation build.
# Exits non-zero as soon as one of the three fails.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
.venv/bin/ruff check cxrlearn tests benchmarks
echo "== pytest: tests/"
MPLBACKEND=Agg .venv/bin/python -m pytest tests -q
echo "== pytest --nbval: lessons/"
.venv/bin/python -m pytest --nbval --nbval-current-env -p no:cacheprovider lessons -q  # the kernel draws figures inline
echo "== mkdocs build --strict"
.venv/bin/mkdocs build --strict --quiet
echo "== all checks passed"
