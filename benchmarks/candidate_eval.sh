#!/usr/bin/env bash
# Judge a campaign checkpoint as a candidate default model (issue 11's must-show figures):
# export it as the default would ship (EMA, bf16, the default sampler), sample 1,000 structures
# at the shipped defaults and run the screening evaluation against the QMOF train split.
#
#   bash benchmarks/candidate_eval.sh CHECKPOINT OUT_DIR [NUM]     (NUM default 1000)
#
# One heavy job: stop or pause the campaign first. ~6.5 min for 1,000 on 2 cores.
# Writes OUT_DIR/slim.pt (the file to copy to src/mofasa/sampling/default/model.pt),
# OUT_DIR/samples/ and OUT_DIR/eval/ (summary.json, report), and prints the headline figures.
# Environment: CAND_STEPS (10), CAND_REFINE (18): the sampler the file carries;
# CAND_REFERENCE (prepared/qmof).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CKPT=${1:?usage: candidate_eval.sh CHECKPOINT OUT_DIR [NUM]}
OUT=${2:?usage: candidate_eval.sh CHECKPOINT OUT_DIR [NUM]}
NUM=${3:-1000}
PY=${CAMPAIGN_PYTHON:-.venv/bin/python}
MOFASA=${MOFASA_BIN:-.venv/bin/mofasa}
REF=${CAND_REFERENCE:-prepared/qmof}
mkdir -p "$OUT"
"$PY" - "$CKPT" "$OUT/slim.pt" "${CAND_STEPS:-10}" "${CAND_REFINE:-18}" <<'EOF'
import sys

from mofasa.checkpoint import export_coordflow, load_checkpoint

src, out, steps, refine = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
export_coordflow(src, out, steps=steps, refine=refine)
ckpt = load_checkpoint(out)
print(f"candidate {src}: step {ckpt['step']} (cumulative {ckpt.get('cumulative_step')}),"
      f" sampler Euler {steps} + {refine} -> {out}")
EOF
rm -rf "$OUT/samples" "$OUT/eval"
/usr/bin/time -f "sample wall %e s" "$MOFASA" sample --model "$OUT/slim.pt" --num "$NUM" \
  --seed 0 --out "$OUT/samples" --no-progress >"$OUT/sample.log" 2>&1
tail -1 "$OUT/sample.log"
/usr/bin/time -f "evaluate wall %e s" "$MOFASA" evaluate "$OUT/samples/samples.db" \
  --out "$OUT/eval" --screen --reference "$REF" --workers 2 >"$OUT/eval.log" 2>&1
tail -1 "$OUT/eval.log"
"$PY" - "$OUT/samples/samples.db" "$OUT/eval/summary.json" <<'EOF' | tee "$OUT/figures.json"
import json
import sys

from ase.db import connect

from mofasa.data.crystal import Crystal
from mofasa.data.elements import IS_METAL
from mofasa.data.quality import close_pair_share, pooled_bonded_share

crystals = [Crystal.from_ase(row.toatoms()) for row in connect(sys.argv[1]).select()]
mch = [bool(IS_METAL[c.numbers].any() and (c.numbers == 6).any() and (c.numbers == 1).any())
       for c in crystals]
with open(sys.argv[2]) as fh:
    summary = json.load(fh)
print(json.dumps({"num": len(crystals), "bonded": round(pooled_bonded_share(crystals), 4),
                  "pair_lt_0.8": round(close_pair_share(crystals), 4),
                  "metal_c_h": round(sum(mch) / max(len(mch), 1), 4),
                  **{k: summary[k] for k in ("valid_rate", "valid_rate_strict", "novel_rate",
                                             "unique_rate", "vnu_rate", "screen_stopped_at")},
                  "valid_by_size": {b: [v["n_valid"], v["n"]]
                                    for b, v in summary["valid_rate_by_size"].items() if v["n"]}}))
EOF
