#!/usr/bin/env bash
# Install the evaluation tools (mofasa's `eval` and `topology` extras) into ./.venv, with the
# fixes that make mofchecker 0.9.6 and moffragmentor 0.0.6 work on Python 3.11 and current
# pymatgen. Idempotent: a second run that finds everything importable returns in about a second.
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
#     (a constraints file), so the extras never move the base stack.
# Optional (failures tolerated and printed; the features that need them then refuse to run, and
# their tests skip with a message):
#   * pyzeo for pore metrics (`mofasa evaluate --pores`), a cheap wheel.
#   * moffragmentor 0.0.6 for topology (`mofasa evaluate --topology`): installed with --no-deps
#     (its declared dependencies pull in Jupyter through nglview) plus the `topology` extra, which
#     lists what it really imports. It bundles the Systre jar, which needs `java`.
#   * Debian packages, as root with apt-get, one `apt-get update` for both:
#     openjdk-17-jre-headless when `java` is missing (Systre), and chromium when missing (the
#     report screenshot test; about a minute; MOFASA_EVAL_BROWSER=0 opts out).
# Environment: MOFASA_PYTHON (interpreter, default .venv/bin/python), MOFASA_EVAL_FORCE=1
# (reinstall even when everything imports), MOFASA_EVAL_BROWSER=0 (no chromium),
# MOFASA_EVAL_TOPOLOGY=0 (no moffragmentor, no java).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${MOFASA_PYTHON:-.venv/bin/python}"
PIP=(pip_quiet)
pip_quiet() {  # pip, minus its warning about this machine's missing index folders (noise)
    "$PY" -m pip --disable-pip-version-check "$@" 2> >(
        grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2)
}
LIBCONEANGLE=0.1.2
PYEQEQ=0.0.10
MOFFRAGMENTOR=0.0.6
FORCE="${MOFASA_EVAL_FORCE:-0}"
TOPOLOGY="${MOFASA_EVAL_TOPOLOGY:-1}"

# ---- Debian packages (optional): java for Systre, chromium for the report screenshot test
apt_wanted=()
if [ "$TOPOLOGY" != "0" ] && ! command -v java >/dev/null 2>&1; then
    apt_wanted+=(openjdk-17-jre-headless)
fi
if [ "${MOFASA_EVAL_BROWSER:-1}" != "0" ] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1; then
    apt_wanted+=(chromium)
fi
if [ "${#apt_wanted[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        if apt-get update -qq >/dev/null 2>&1; then
            for pkg in "${apt_wanted[@]}"; do  # one at a time: one failure costs one package
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 \
                    && echo "install_eval: installed $pkg" \
                    || echo "install_eval: apt-get install $pkg failed (optional; see below)"
            done
        else
            echo "install_eval: apt-get update failed; not installed: ${apt_wanted[*]}"
        fi
    else
        echo "install_eval: needs root and apt-get to install: ${apt_wanted[*]}"
    fi
    command -v java >/dev/null 2>&1 || [ "$TOPOLOGY" = "0" ] \
        || echo "install_eval: no java: topology (Systre) unavailable; its tests skip"
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || echo "install_eval: no chromium: the report screenshot test skips"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
constraints() {  # hold the base stack where it is
    [ -s "$tmp/constraints.txt" ] && return 0
    "$PY" - >"$tmp/constraints.txt" <<'EOF'
import importlib.metadata as md
for name in ("torch", "numpy", "pymatgen", "pymatgen-core", "ase", "spglib", "networkx"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
}

# ---- core: mofchecker 0.9.6 and its fixes, CHGNet (required)
if [ "$FORCE" != "1" ] && "$PY" - <<'EOF' 2>/dev/null
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
else
    constraints
    "${PIP[@]}" install --quiet -c "$tmp/constraints.txt" "setuptools<81" pybind11 wheel
    if ! "$PY" -c "import pyeqeq.main" 2>/dev/null; then
        "${PIP[@]}" install --quiet --no-build-isolation -c "$tmp/constraints.txt" \
            "pyeqeq==$PYEQEQ"
    fi
    if ! "$PY" -c "import libconeangle" 2>/dev/null; then
        "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
            --platform manylinux_2_17_x86_64 -d "$tmp/lca" "libconeangle==$LIBCONEANGLE"
        "$PY" -m wheel tags --remove --python-tag py3 --abi-tag none "$tmp"/lca/libconeangle-*.whl \
            >/dev/null
        "${PIP[@]}" install --quiet --no-deps "$tmp"/lca/libconeangle-*py3-none-*.whl
    fi
    "${PIP[@]}" install --quiet -c "$tmp/constraints.txt" -e ".[eval]"
    "${PIP[@]}" install --quiet --no-deps "pyzeo==0.2.0" \
        || echo "install_eval: pyzeo not installed (pore metrics unavailable; optional)"
    # fail loudly here rather than silently at evaluation time
    "$PY" -c "from mofasa.evaluation.compat import require_checkers as r; v = r(); print(
        'install_eval: evaluation tools ready (mofchecker', v['mofchecker'], '+ chgnet',
        v['chgnet'] + ')')"
fi

# ---- topology (optional): moffragmentor without its Jupyter dependencies
if [ "$TOPOLOGY" != "0" ]; then
    if [ "$FORCE" != "1" ] && "$PY" - <<EOF 2>/dev/null
import importlib.metadata as md
assert md.version("moffragmentor") == "$MOFFRAGMENTOR"
import rdkit, openbabel, skspatial, pubchempy, more_itertools, loguru  # noqa: F401,E401
EOF
    then
        echo "install_eval: moffragmentor already installed"
    else
        constraints
        # its real imports first, then moffragmentor itself without dependencies: pip checks
        # conflicts only when it resolves dependencies, so the nglview / timeout-decorator it
        # declares (Jupyter viewer, batch harvester: left out on purpose) raise no false alarm
        if "${PIP[@]}" install --quiet -c "$tmp/constraints.txt" -e ".[topology]" \
            && "${PIP[@]}" install --quiet --no-deps "moffragmentor==$MOFFRAGMENTOR"; then
            "$PY" -c "from mofasa.evaluation.topology import require_topology as r; v = r(); print(
                'install_eval: topology ready (moffragmentor', v['moffragmentor'], '+ Systre',
                v['systre'] + ')')" \
                || echo "install_eval: moffragmentor installed but topology is not usable" \
                    "(see the message above; optional)"
        else
            echo "install_eval: moffragmentor not installed (mofasa evaluate --topology" \
                "unavailable; optional)"
        fi
    fi
fi
