#!/usr/bin/env bash
# Install the evaluation tools (mofasa's `eval` extra) into ./.venv, with the fixes that make
# mofchecker 0.9.6 work on Python 3.11 and current pymatgen. Idempotent: a second run that finds
# everything importable returns in about a second.
#
# Why each step (all of these fail SILENTLY otherwise; see docs/EVALUATION.md):
#   * setuptools<81: pyeqeq imports pkg_resources, gone from setuptools 81+. Without it the EQeq
#     charge check returns None and mofchecker flags EVERY structure as having high charges.
#   * pybind11 first, then pyeqeq without build isolation: its isolated build pins an old
#     pybind11 that does not compile on Python 3.11.
#   * libconeangle publishes wheels for CPython <= 3.10 only and its source build clones from
#     GitHub. It loads its Fortran library through ctypes, so the cp310 wheel works on any
#     CPython once retagged py3-none.
#   * torch, numpy, pymatgen, ase, spglib and networkx are held at the versions already installed
#     (a constraints file), so the extra never moves the base stack.
# Optional (cheap wheel, failure tolerated): pyzeo for pore metrics (`mofasa evaluate --pores`).
# Environment: MOFASA_PYTHON (interpreter, default .venv/bin/python), MOFASA_EVAL_FORCE=1
# (reinstall even when everything imports), MOFASA_EVAL_BROWSER=1 (also apt-get chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${MOFASA_PYTHON:-.venv/bin/python}"
PIP=("$PY" -m pip --disable-pip-version-check)
LIBCONEANGLE=0.1.2
PYEQEQ=0.0.10

# Opt-in: Debian's chromium for the report screenshot test (about a minute; root + apt-get).
# Without it that one test skips with a message.
if [ "${MOFASA_EVAL_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
            >/dev/null || echo "install_eval: chromium not installed (screenshot test will skip)"
    else
        echo "install_eval: MOFASA_EVAL_BROWSER=1 needs root and apt-get; chromium skipped"
    fi
fi

if [ "${MOFASA_EVAL_FORCE:-0}" != "1" ] && "$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as md, warnings
warnings.simplefilter("ignore")
import pkg_resources  # noqa: F401  (pyeqeq needs it: setuptools<81)
import pyeqeq.main, libconeangle  # noqa: F401,E401
assert md.version("mofchecker") == "0.9.6"
assert int(md.version("setuptools").split(".")[0]) < 81
for name in ("chgnet", "mofasa", "structuregraph-helpers", "element-coder"):
    md.version(name)
EOF
then
    echo "install_eval: evaluation tools already installed"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# hold the base stack where it is
"$PY" - >"$tmp/constraints.txt" <<'EOF'
import importlib.metadata as md
for name in ("torch", "numpy", "pymatgen", "pymatgen-core", "ase", "spglib", "networkx"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF

"${PIP[@]}" install --quiet -c "$tmp/constraints.txt" "setuptools<81" pybind11 wheel
if ! "$PY" -c "import pyeqeq.main" 2>/dev/null; then
    "${PIP[@]}" install --quiet --no-build-isolation -c "$tmp/constraints.txt" "pyeqeq==$PYEQEQ"
fi
if ! "$PY" -c "import libconeangle" 2>/dev/null; then
    "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
        --platform manylinux_2_17_x86_64 -d "$tmp/lca" "libconeangle==$LIBCONEANGLE"
    "$PY" -m wheel tags --remove --python-tag py3 --abi-tag none "$tmp"/lca/libconeangle-*.whl
    "${PIP[@]}" install --quiet --no-deps "$tmp"/lca/libconeangle-*py3-none-*.whl
fi
"${PIP[@]}" install --quiet -c "$tmp/constraints.txt" -e ".[eval]"
"${PIP[@]}" install --quiet --no-deps "pyzeo==0.2.0" \
    || echo "install_eval: pyzeo not installed (pore metrics unavailable; optional)"

# fail loudly here rather than silently at evaluation time
"$PY" -c "from mofasa.evaluation.compat import require_checkers; print(require_checkers())"
