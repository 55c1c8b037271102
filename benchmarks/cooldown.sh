#!/usr/bin/env bash
# A cool-down branch of the campaign (warm-up / stable / decay schedule): copy the campaign's
# last checkpoint (model, EMA, optimiser, data position) into a branch folder and resume it
# there with the learning rate decaying linearly to optim.min_lr_ratio over STEPS steps. The
# campaign itself is untouched and keeps its learning rate; a branch is what gets shipped.
#
#   bash benchmarks/cooldown.sh STEPS [BRANCH_DIR]     (default branch runs/cooldown/<step>)
#
# Runs in the foreground (one heavy job: stop the campaign first); probes every STEPS / 2.
# Environment: CAMPAIGN_OUT (runs/campaign), CAMPAIGN_OVERRIDES (the campaign's own extra
# overrides, e.g. flow.overlap_weight=1.0: the branch must train the same objective).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=${1:?usage: cooldown.sh STEPS [BRANCH_DIR]}
SRC=${CAMPAIGN_OUT:-runs/campaign}
PY=${CAMPAIGN_PYTHON:-.venv/bin/python}
if [ -e "$SRC/pid" ] && kill -0 "$(cat "$SRC/pid")" 2>/dev/null; then
  echo "cooldown.sh: the campaign (pid $(cat "$SRC/pid")) is running; stop it first" >&2
  exit 2
fi
STEP=$("$PY" -c "import sys; from mofasa.checkpoint import load_checkpoint; \
print(int(load_checkpoint(sys.argv[1])['step']))" "$SRC/checkpoint.pt")
OUT=${2:-runs/cooldown/$STEP}
mkdir -p "$OUT"
cp "$SRC"/checkpoint.pt* "$SRC/metrics.csv" "$OUT/"
export TQDM_MININTERVAL=60
# shellcheck disable=SC2206  # user overrides are space-separated words
ARGS=(-m mofasa.cli train coordflow --config cond "run.out_dir=$OUT"
      "probes.every=$(( STEPS / 2 ))" optim.schedule=wsd "optim.total_steps=$(( STEP + STEPS ))"
      "optim.decay_steps=$STEPS" ${CAMPAIGN_OVERRIDES:-})
echo "$(date -Iseconds) $(hostname) cooldown of $SRC at step $STEP: $PY ${ARGS[*]}" \
  | tee -a "$SRC/RUNLOG.txt" >>"$OUT/RUNLOG.txt"
"$PY" "${ARGS[@]}" >>"$OUT/train.log" 2>&1
echo "$(date -Iseconds) cooldown done: $OUT/checkpoint.pt at step $(( STEP + STEPS ))" \
  | tee -a "$SRC/RUNLOG.txt" >>"$OUT/RUNLOG.txt"
echo "$OUT"
