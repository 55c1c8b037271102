#!/usr/bin/env bash
# The training campaign of the default model (issue 11 item 4): start or resume it in the
# background, one heavy job on the cores, atomic checkpoints every ~11 minutes (1,000 steps).
#
#   bash benchmarks/campaign.sh [MINUTES]     (default 60; 0 = until stopped)
#
# The first call warm-starts from the bake-off's arm c checkpoint (CAMPAIGN_INIT) with the
# condition inputs new; every later call resumes runs/campaign/checkpoint.pt exactly (optimiser,
# EMA, data order, RNG). Each call appends what runs where to runs/campaign/RUNLOG.txt.
# Pause for tests with `kill -STOP $(cat runs/campaign/pid)`, continue with `kill -CONT`.
# Environment: CAMPAIGN_OUT (runs/campaign), CAMPAIGN_INIT (runs/bakeoff/c/checkpoint.pt),
# CAMPAIGN_OVERRIDES (extra dotted overrides, e.g. flow.overlap_weight=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MIN=${1:-60}
OUT=${CAMPAIGN_OUT:-runs/campaign}
INIT=${CAMPAIGN_INIT:-runs/bakeoff/c/checkpoint.pt}
PY=${CAMPAIGN_PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
export TQDM_MININTERVAL=60  # one progress line a minute in the log (tqdm >= 4.66)
ARGS=(-m mofasa.cli train coordflow --config cond "run.out_dir=$OUT" probes.every=1000)
if [ "$MIN" != 0 ]; then ARGS+=("run.max_time_s=$(( MIN * 60 ))"); fi
if [ ! -e "$OUT/checkpoint.pt" ] && [ ! -e "$OUT/checkpoint.pt.part000" ]; then
  ARGS+=("run.init_from=$INIT" run.init_keep_step=true run.init_allow_new=true)
fi
# shellcheck disable=SC2206  # user overrides are space-separated words
ARGS+=(${CAMPAIGN_OVERRIDES:-})
echo "$(date -Iseconds) $(hostname) start: $PY ${ARGS[*]}" >>"$OUT/RUNLOG.txt"
nohup "$PY" "${ARGS[@]}" >>"$OUT/train.log" 2>&1 &
echo $! >"$OUT/pid"
echo "campaign pid $(cat "$OUT/pid"), log $OUT/train.log"
