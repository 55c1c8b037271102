#!/usr/bin/env bash
# One lent GPU window in one call: machine card, fail-fast checks, benchmarks, then (modes
# ae-base / diffusion) training for a wall-clock budget into a slim checkpoint that can be
# carried back next time. Python side: benchmarks/gpu_bench.py.
#
#   bash benchmarks/gpu_window.sh MODE      MODE: ae-base | diffusion | coordflow | bench-only
#
# coordflow: the default family's campaign (`mofasa train coordflow --config cond`), warm-started
# from $GPU_CARRY_DIR/coordflow_cond/slim.pt (or GPU_INIT); no autoencoder needed.
#
# Stages, each under `timeout` so that one failure or hang cannot eat the window:
#   card      $OUT/card.json (nvidia-smi query, torch / CUDA versions)
#   check     imports with pymatgen / ase / spglib blocked + one bf16 autocast training step
#             of the autoencoder and of a latent diffusion model; failure stops the window
#   memory    benchmarks/ae_memory.py: step peak memory, mofasa vs materialised pairs
#   sample_*  benchmarks/sample_speed.py: random:base:base and the bundled default model,
#             bf16, batch 1000, QMOF sizes <= 150 atoms, default steps and 100 steps
#   throughput_{bf16,fp32,compile}: base autoencoder training structures/s
#   train     (ae-base, diffusion) `mofasa train ...` warm-started (run.init_from) from a
#             carried slim checkpoint when one exists, stopped cleanly by run.max_time_s (and
#             `timeout -s TERM` as a guard: the trainer checkpoints on SIGTERM)
#   export    slim carry file (weights only, <= 16 MB parts) sized to fit the 64 MiB carry
#
# $OUT receives at most 8 files (the device tool's limit): card.json, log.txt, results.json
# (every stage's JSON, merged after each stage), train_run.tar.gz (metrics.csv, run.json,
# curves.png) and the slim checkpoint's parts under ae_base/ or diffusion_base/.
#
# Environment:
#   GPU_WINDOW_SECONDS   total wall budget (default 540; dry run 600)
#   GPU_TRAIN_SECONDS    training budget in the train modes (default 420; dry run 25);
#                        benchmarks only get what the window leaves beside it
#   GPU_BENCH            comma list of benchmark stages (default: all; throughput_compile
#                        only in bench-only), or "none"
#   GPU_DATA             prepared dataset (default prepared/qmof150 if carried, else
#                        prepared/qmof; dry run prepared/example)
#   GPU_CARRY_DIR        where carried slim checkpoints are (default runs/gpu_carry:
#                        ae_base/slim.pt, diffusion_base/slim.pt, maybe in parts)
#   GPU_INIT             checkpoint to warm-start from (overrides the carry dir)
#   GPU_AE               autoencoder checkpoint for a fresh diffusion run
#   GPU_TRAIN_OVERRIDES  extra dotted overrides for the training command
#   GPU_NUM_WORKERS      data.num_workers for training (default: the config's)
#   GPU_REWARMUP_STEPS   optim.warmup_steps of a warm-started run (default 200)
#   GPU_WINDOW_DRY=1     CPU rehearsal: tiny configs, prepared/example, a few steps
#   GPU_DEVICE           device of a real (not dry) run (default cuda; cpu only to rehearse
#                        the full-size wiring with small overrides)
#   GPU_PYTHON           interpreter (default python3; dry run .venv/bin/python if present)
#   GPU_KEEP_WORK=1      keep the work folder (full checkpoint, per-stage JSON) in /tmp
set -uo pipefail

MODE=${1:-}
case "$MODE" in
  ae-base|diffusion|coordflow|bench-only) ;;
  *) echo "usage: bash benchmarks/gpu_window.sh ae-base|diffusion|coordflow|bench-only" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
T0=$(date +%s)
DRY=${GPU_WINDOW_DRY:-0}
if [ "$DRY" = 1 ]; then
  WINDOW=${GPU_WINDOW_SECONDS:-600}
  TRAIN_S=${GPU_TRAIN_SECONDS:-25}
else
  WINDOW=${GPU_WINDOW_SECONDS:-540}
  TRAIN_S=${GPU_TRAIN_SECONDS:-420}
fi
RESERVE=${GPU_EXPORT_RESERVE:-40}  # after training: export, summary, packing
OUT=${OUT:-}
[ -n "$OUT" ] || OUT=$(mktemp -d /tmp/gpu_window_out.XXXXXX)
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_window_work.XXXXXX)
# The work folder holds the full training checkpoint (~100+ MB): removed on exit.
[ "${GPU_KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/log.txt
CARRY=${GPU_CARRY_DIR:-runs/gpu_carry}

PY=${GPU_PYTHON:-}
if [ -z "$PY" ]; then
  if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# Block the optional heavy packages in every Python process (subprocesses too): the GPU
# machine has none of them, and the dry run must prove that nothing here needs them. A
# sitecustomize on PYTHONPATH does it; it chains to the one it shadows, if any.
mkdir -p "$WORK/pyblock"
cat >"$WORK/pyblock/sitecustomize.py" <<'PYEOF'
import importlib.machinery
import importlib.util
import os
import sys

for _name in os.environ.get("MOFASA_BLOCK_MODULES", "").split():
    sys.modules.setdefault(_name, None)  # `import NAME` now raises ImportError
_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
PYEOF
export MOFASA_BLOCK_MODULES="pymatgen ase spglib"
export PYTHONPATH="$WORK/pyblock:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=30  # fewer progress-bar lines in the log (tqdm >= 4.66 reads it)
BENCH="$PY benchmarks/gpu_bench.py"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu AE_CFG=tiny DIFF_CFG=tiny CF_CFG=tiny MEM_CFG=tiny MEM_SIZES="12 24" MEM_FLAGS=""
  SAMPLE_RANDOM=random:tiny:tiny SAMPLE_NUM=8 SAMPLE_BATCH=8 SAMPLE_STEPS="default 3"
  TP_STEPS=6 TP_LOG=2 CHECK_BATCH=4 MIN_TRAIN=5
  DATA=${GPU_DATA:-prepared/example}
  export OMP_NUM_THREADS=1  # the rehearsal shares a small CPU
  TRAIN_OVR=(run.threads=1 data.num_workers=0 run.log_every=2 run.ckpt_every=5
             run.val_every=5 data.batch_size=4)
  TP_OVR=(run.threads=1 data.num_workers=0 data.batch_size=4)
else
  DEVICE=${GPU_DEVICE:-cuda} AE_CFG=base DIFF_CFG=base CF_CFG=cond MEM_CFG=base MEM_SIZES="100 250 500 1000"
  MEM_FLAGS="--in-process"
  SAMPLE_RANDOM=random:base:base SAMPLE_NUM=1000 SAMPLE_BATCH=1000 SAMPLE_STEPS="default 100"
  TP_STEPS=60 TP_LOG=10 CHECK_BATCH=${GPU_CHECK_BATCH:-16} MIN_TRAIN=60
  if [ -n "${GPU_DATA:-}" ]; then DATA=$GPU_DATA
  elif [ -f prepared/qmof150/manifest.json ]; then DATA=prepared/qmof150
  else DATA=prepared/qmof; fi
  TRAIN_OVR=()
  TP_OVR=()
fi
if [ -n "${GPU_NUM_WORKERS:-}" ]; then
  TRAIN_OVR+=("data.num_workers=$GPU_NUM_WORKERS")
  TP_OVR+=("data.num_workers=$GPU_NUM_WORKERS")
fi
DEFAULT_BENCH="memory,sample_random,throughput_bf16,throughput_fp32,sample_default"
[ "$MODE" = bench-only ] && [ "$DRY" != 1 ] && DEFAULT_BENCH="$DEFAULT_BENCH,memory_fp32,throughput_compile"
BENCHES=${GPU_BENCH:-$DEFAULT_BENCH}

now() { date +%s; }
log() { echo "[$(( $(now) - T0 ))s] $*" | tee -a "$LOG"; }
ckpt_exists() { [ -f "$1" ] || compgen -G "$1.part[0-9][0-9][0-9]" >/dev/null; }
wants() { [[ ",$BENCHES," == *",$1,"* ]]; }
collect() {
  $BENCH collect "$WORK" "$OUT/results.json" --extra "{\"mode\": \"$MODE\", \"dry\": $DRY, \
\"window_s\": $WINDOW, \"train_s\": $TRAIN_S, \"data\": \"$DATA\", \
\"elapsed_s\": $(( $(now) - T0 ))}" >/dev/null 2>>"$LOG" || log "warning: collect failed"
}

# stage NAME DEADLINE CAP MIN CMD...: run CMD with timeout min(CAP, DEADLINE - now); skip it
# when fewer than MIN seconds are left. Output goes to the log and stdout.
stage() {
  local name=$1 deadline=$2 cap=$3 min=$4
  shift 4
  local left=$(( deadline - $(now) ))
  local t=$(( cap < left ? cap : left ))
  if (( t < min )); then
    log "skip $name: ${left}s left before its deadline, needs ${min}s"
    echo "{\"stage\": \"$name\", \"status\": \"skipped\", \"left_s\": $left}" >>"$WORK/stages.jsonl"
    return 99
  fi
  log "stage $name (timeout ${t}s): $*"
  local start rc status
  start=$(now)
  timeout -k 15 "$t" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  echo "{\"stage\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( $(now) - start )), \"timeout_s\": $t}" >>"$WORK/stages.jsonl"
  log "stage $name: $status (rc $rc) after $(( $(now) - start ))s"
  collect
  return "$rc"
}

log "gpu_window mode=$MODE dry=$DRY window=${WINDOW}s train=${TRAIN_S}s data=$DATA out=$OUT"
log "python: $PY; benches: $BENCHES"
END=$(( T0 + WINDOW ))
if [ "$MODE" = bench-only ]; then BENCH_END=$(( END - 10 )); else BENCH_END=$(( END - TRAIN_S - RESERVE )); fi

# ---------------------------------------------------------------- card and fail-fast check
stage card $(( END - RESERVE )) 60 5 $BENCH card --out "$OUT/card.json"
if ! stage check $(( END - RESERVE )) 90 20 \
    $BENCH check --config "$AE_CFG" --data "$DATA" --device "$DEVICE" --batch "$CHECK_BATCH" \
    --out "$WORK/res_check.json"; then
  log "check failed: stopping the window here (see results.json: check.errors)"
  collect
  exit 1
fi
WORKERS_OK=$($PY -c "import json,sys; print(int(json.load(open(sys.argv[1])).get('loader_workers_ok', True)))" "$WORK/res_check.json" 2>/dev/null || echo 1)
if [ "$WORKERS_OK" = 0 ] && [ -z "${GPU_NUM_WORKERS:-}" ]; then
  log "DataLoader workers failed in the check: training and throughput use data.num_workers=0"
  TRAIN_OVR+=(data.num_workers=0)
  TP_OVR+=(data.num_workers=0)
fi

# ---------------------------------------------------------------------------- benchmarks
# shellcheck disable=SC2086  # word splitting of the size / step lists is intended
wants memory && stage memory "$BENCH_END" 150 20 \
  $PY benchmarks/ae_memory.py --sizes $MEM_SIZES --config "$MEM_CFG" --device "$DEVICE" --bf16 \
  $MEM_FLAGS --out "$WORK/res_ae_memory_bf16.json"
wants sample_random && stage sample_random "$BENCH_END" 180 30 \
  $PY benchmarks/sample_speed.py --model "$SAMPLE_RANDOM" --num "$SAMPLE_NUM" \
  --batch-size "$SAMPLE_BATCH" --device "$DEVICE" --bf16 --atoms-from "$DATA" --max-atoms 150 \
  --steps $SAMPLE_STEPS --out "$WORK/res_sample_random.json"
wants throughput_bf16 && stage throughput_bf16 "$BENCH_END" 150 30 \
  $BENCH throughput --config "$AE_CFG" --data "$DATA" --device "$DEVICE" --steps "$TP_STEPS" \
  --log-every "$TP_LOG" --bf16 1 --max-seconds 90 --out "$WORK/res_throughput_bf16.json" \
  "${TP_OVR[@]}"
wants throughput_fp32 && stage throughput_fp32 "$BENCH_END" 150 30 \
  $BENCH throughput --config "$AE_CFG" --data "$DATA" --device "$DEVICE" --steps "$TP_STEPS" \
  --log-every "$TP_LOG" --bf16 0 --max-seconds 90 --out "$WORK/res_throughput_fp32.json" \
  "${TP_OVR[@]}"
wants sample_default && stage sample_default "$BENCH_END" 120 25 \
  $PY benchmarks/sample_speed.py --model default --num "$SAMPLE_NUM" \
  --batch-size "$SAMPLE_BATCH" --device "$DEVICE" --bf16 --atoms-from "$DATA" --max-atoms 150 \
  --steps $SAMPLE_STEPS --out "$WORK/res_sample_default.json"
wants memory_fp32 && stage memory_fp32 "$BENCH_END" 120 20 \
  $PY benchmarks/ae_memory.py --sizes $MEM_SIZES --config "$MEM_CFG" --device "$DEVICE" \
  $MEM_FLAGS --out "$WORK/res_ae_memory_fp32.json"
wants throughput_compile && stage throughput_compile "$BENCH_END" 300 150 \
  $BENCH throughput --config "$AE_CFG" --data "$DATA" --device "$DEVICE" \
  --steps $(( TP_STEPS * 2 )) --log-every "$TP_LOG" --bf16 1 --compile 1 --max-seconds 240 \
  --out "$WORK/res_throughput_compile.json" "${TP_OVR[@]}"

if [ "$MODE" = bench-only ]; then
  collect
  log "done (bench-only) in $(( $(now) - T0 ))s"
  ls -l "$OUT" | tee -a "$LOG"
  exit 0
fi

# ------------------------------------------------------------------------------ training
RUN=$WORK/run_${MODE/-/_}
INIT=${GPU_INIT:-}
EXTRA=()
if [ "$MODE" = ae-base ]; then
  NAME=ae_base
  if [ -z "$INIT" ] && ckpt_exists "$CARRY/ae_base/slim.pt"; then INIT=$CARRY/ae_base/slim.pt; fi
  CMD=(train autoencoder --config "$AE_CFG")
elif [ "$MODE" = coordflow ]; then
  NAME=coordflow_cond
  if [ -z "$INIT" ] && ckpt_exists "$CARRY/coordflow_cond/slim.pt"; then
    INIT=$CARRY/coordflow_cond/slim.pt
  fi
  CMD=(train coordflow --config "${GPU_CF_CFG:-$CF_CFG}")
  EXTRA+=(run.init_keep_step=true run.init_allow_new=true)
else
  NAME=diffusion_base
  if [ -z "$INIT" ] && ckpt_exists "$CARRY/diffusion_base/slim.pt"; then
    INIT=$CARRY/diffusion_base/slim.pt
  fi
  if [ -n "$INIT" ]; then  # the diffusion file embeds its frozen autoencoder: take it out
    AE=$WORK/ae_from_diffusion.pt
    stage extract_ae $(( END - RESERVE )) 60 5 \
      $BENCH extract-ae "$INIT" "$AE" --out "$WORK/res_extract_ae.json" || AE=""
  else
    AE=${GPU_AE:-$CARRY/ae_base/slim.pt}
  fi
  if [ -z "$AE" ] || ! ckpt_exists "$AE"; then
    log "no autoencoder for the diffusion run (looked for: ${AE:-none}); carry $CARRY/ae_base or set GPU_AE"
    collect
    exit 1
  fi
  CMD=(train diffusion --config "$DIFF_CFG" --autoencoder "$AE")
fi
if [ -n "$INIT" ]; then
  EXTRA+=("run.init_from=$INIT" "optim.warmup_steps=${GPU_REWARMUP_STEPS:-200}")
  log "warm start from $INIT"
else
  log "no carried checkpoint: training from scratch"
fi
# shellcheck disable=SC2206  # user overrides are space-separated words
USER_OVR=(${GPU_TRAIN_OVERRIDES:-})

train_once() {  # $1: seconds; extra overrides follow
  local secs=$1
  shift
  # run.max_time_s ends the loop cleanly (checkpoint written) before the TERM guard fires;
  # start-up (imports, data, latent statistics) and the final save take the rest. The guard
  # signals the trainer alone (--foreground), not its DataLoader workers, so that it can
  # finish the step and save; the stage's own timeout, 25 s later, is the last resort.
  stage train $(( END - RESERVE + 25 )) $(( secs + 25 )) "$MIN_TRAIN" \
    timeout --foreground -s TERM -k 30 "$secs" \
    $PY -m mofasa.cli "${CMD[@]}" data.path="$DATA" run.out_dir="$RUN" \
    run.max_time_s=$(( secs > 60 ? secs - 40 : secs * 2 / 3 )) run.device="$DEVICE" \
    "${TRAIN_OVR[@]}" "${EXTRA[@]}" "${USER_OVR[@]}" "$@"
}
LEFT=$(( END - RESERVE - $(now) ))
TRAIN_T=$(( TRAIN_S < LEFT ? TRAIN_S : LEFT ))
TRAIN_START=$(now)
train_once "$TRAIN_T"
RC=$?
if [ "$RC" != 0 ] && [ "$RC" != 99 ] && ! ckpt_exists "$RUN/checkpoint.pt" \
    && (( $(now) - TRAIN_START < 120 )); then
  LEFT=$(( END - RESERVE - $(now) ))
  log "training failed early without a checkpoint: one retry with data.num_workers=0"
  train_once $(( TRAIN_S < LEFT ? TRAIN_S : LEFT )) data.num_workers=0
fi

# ----------------------------------------------------------------------- export and pack
if ckpt_exists "$RUN/checkpoint.pt"; then
  $BENCH summary "$RUN/metrics.csv" --out "$WORK/res_train_summary.json" >/dev/null 2>>"$LOG"
  rm -rf "${OUT:?}/$NAME"
  stage export $(( END + 60 )) 120 5 \
    $BENCH export "$RUN/checkpoint.pt" "$OUT/$NAME/slim.pt" --budget-data "$DATA" \
    --out "$WORK/res_carry.json"
  (cd "$RUN" && tar -czf "$OUT/train_run.tar.gz" metrics.csv run.json curves.png 2>/dev/null \
    || tar -czf "$OUT/train_run.tar.gz" ./*.csv ./*.json)
else
  log "no training checkpoint to export"
fi
collect
log "done ($MODE) in $(( $(now) - T0 ))s; files in $OUT:"
ls -lR "$OUT" | tee -a "$LOG"
N=$(find "$OUT" -type f | wc -l)
(( N <= 8 )) || log "warning: $N files in \$OUT; the device tool returns at most 8"
