#!/usr/bin/env bash
# Every test: the docs build, unit tests, and the lessons (nbval) on two CPU configurations.
# Exits non-zero as soon as one of them fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# Idle OpenMP threads sleep instead of spinning: with a notebook kernel and pytest sharing two
# cores, spinning threads cost up to 4x (benchmarks/README.md, "Threads on a busy machine").
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
echo "== ruff"
.venv/bin/ruff check cxrlearn tests benchmarks tools
# The docs are built once, first (a broken page fails fast); tests/test_docs_site.py checks
# this build instead of making its own.
echo "== mkdocs build --strict"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet -d "$site"
echo "== pytest: tests/ (two processes, each test file in one of them)"
CXRLEARN_BUILT_SITE=$site MPLBACKEND=Agg .venv/bin/python -m pytest tests -q -n 2 --dist loadfile
# The lessons run twice, each time from an empty cache (so the network they share is trained
# in the run, as on a student's first day): on this CPU as it comes, then with another choice
# of floating-point kernels and one thread. A stored output that only one CPU prints fails.
nbval() {
    local cache
    cache=$(mktemp -d)
    CXRLEARN_CACHE_DIR=$cache "$@" .venv/bin/python -m pytest --nbval --nbval-current-env \
        -p no:cacheprovider -p tools.nbval_timing lessons -q -o verbosity_assertions=2
    # (the kernel draws figures inline; a cell whose output differs shows all of it, not a
    # truncated diff: a failing torchrun in lesson 08 prints its stderr there)
    rm -rf "$cache"
}
echo "== pytest --nbval: lessons/, this CPU as it comes"
nbval
echo "== pytest --nbval: lessons/, another CPU configuration (scripts/cpu_variant.sh)"
nbval bash scripts/cpu_variant.sh
echo "== all checks passed"
