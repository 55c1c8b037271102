#!/usr/bin/env bash
# Every CLI case of the hardening issue, as a new user or a hostile one would type it: prints
# the exit code and stderr's last line of each (the goal: exit 2 and one line for each error,
# exit 0 with a one-line warning for the out-of-range atom count).
#   bash benchmarks/hostile_cli.sh [BAD_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/mofasa
BAD="${1:-tests/data/bad}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
run() {  # label, command...
    local label="$1"; shift
    "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    printf '%-44s exit %s | %s\n' "$label" "$rc" "$(grep -v '^\s*$' "$TMP/err" | tail -1)"
}
run "sample --atoms 0" $M sample --num 2 --atoms 0 --out "$TMP/s1" --no-progress
run "  (left behind: settings.json?)" test -e "$TMP/s1/settings.json"
run "  corrected re-run, same --out" $M sample --num 2 --atoms 30 --out "$TMP/s1" --no-progress
run "sample --steps -3" $M sample --num 2 --steps -3 --out "$TMP/s2" --no-progress
run "sample --steps 0" $M sample --num 2 --steps 0 --out "$TMP/s3" --no-progress
run "sample --device cuda (no CUDA here)" $M sample --num 2 --device cuda --out "$TMP/s4" --no-progress
run "sample --device banana" $M sample --num 2 --device banana --out "$TMP/s5" --no-progress
run "sample --atoms 500 (trained 13-60)" $M sample --num 1 --atoms 500 --out "$TMP/s6" --no-progress
run "sample --guidance 2 (no condition)" $M sample --num 2 --guidance 2 --out "$TMP/s7" --no-progress
mkdir -p "$TMP/one" && cp examples/qmof_cifs/qmof-0180057.cif "$TMP/one/"
run "evaluate --timeout 0" $M evaluate "$TMP/one" --out "$TMP/e1" --timeout 0 --no-progress
run "evaluate --reference /nonexistent" $M evaluate "$TMP/one" --out "$TMP/e2" --reference /nonexistent --no-progress
run "evaluate --relax --device cuda" $M evaluate "$TMP/one" --out "$TMP/e3" --relax --device cuda --no-progress
mkdir -p "$TMP/empty" && cp "$BAD/no_atoms.cif" "$TMP/empty/"
run "data prepare (a CIF with no atoms)" $M data prepare --input "$TMP/empty" --out "$TMP/p1" --no-progress
python3 -c "import json; m = json.load(open('$TMP/p1/manifest.json')); print('  manifest rejected:', [(r['reason']) for r in m['rejected']])" 2>/dev/null \
    || python3 -c "import json; m = json.load(open('$TMP/p1/manifest.json')); print('  manifest:', m['rejected_by_reason'])"
