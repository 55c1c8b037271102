#!/usr/bin/env bash
# Install mofasa into ./.venv (created if absent) with the test tools.
# torch is pinned to the CPU wheel this machine kind carries; pyproject.toml keeps a range so
# GPU users keep their own CUDA build (install torch first, then `pip install -e .`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# pip warns once per package about index locations of this machine's pip config that do not
# exist ("WARNING: Location ... is ignored"): harmless noise, filtered; everything else shows.
pip_quiet() {
    .venv/bin/python -m pip --disable-pip-version-check install --quiet "$@" 2> >(
        grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2)
}
pip_quiet torch==2.13.0
pip_quiet -e ".[dev]"
# Evaluation tools (MOFChecker 0.9.6 with its Python 3.11 fixes, CHGNet): see docs/EVALUATION.md
bash scripts/install_eval.sh
