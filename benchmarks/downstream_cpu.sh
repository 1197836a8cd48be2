#!/usr/bin/env bash
# Did pretraining help, at CPU compute? The project's own instruments on one pretrained checkpoint
# (docs/downstream.md, "The CPU recipe, 30 minutes"), each against the same network at random init:
#   1. `probe --baseline random` on SST-2 (2,000 training sentences, dev 872) and on IMDB (2,000
#      labelled reviews, 1,000 test reviews): frozen features, logistic regression, a bootstrap interval
#   2. `finetune --baseline scratch` on IMDB with 200 and 800 labelled reviews (first 128 tokens),
#      5 seeds per arm, each arm its own lr grid; the delta of medians with a 95% paired-bootstrap interval
# Run from the repository root, after pretraining CK (e.g. `roberta pretrain --data runs/imdb128
# --out runs/tiny30 --preset tiny --set train.max_time=30m`):
#   CK=runs/tiny30 OUT=runs/downstream_cpu bash benchmarks/downstream_cpu.sh
# Everything runs at one thread (THREADS) so that it can share the machine; the results do not
# depend on speed. The table and a final JSON line are printed.
set -eu
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}; CK=${CK:?set CK to a pretrained run or checkpoint}; OUT=${OUT:-runs/downstream_cpu}
SHARED=${SHARED:-../shared/data}; THREADS=${THREADS:-1}; SEEDS=${SEEDS:-5}
IMDB="--train $SHARED/imdb/train.jsonl.gz --dev $SHARED/imdb/test.jsonl.gz"
mkdir -p "$OUT"
$PY -m roberta probe --checkpoint "$CK" --glue sst2 --glue-dir "$SHARED/glue" --max-train 2000 \
    --baseline random --threads "$THREADS" --quiet --out "$OUT/probe-sst2" > "$OUT/probe-sst2.log" 2>&1
$PY -m roberta probe --checkpoint "$CK" $IMDB --max-train 2000 --max-dev 1000 --seq-len 128 \
    --baseline random --threads "$THREADS" --quiet --out "$OUT/probe-imdb" > "$OUT/probe-imdb.log" 2>&1
for n in 200 800; do
  $PY -m roberta finetune --checkpoint "$CK" $IMDB --max-train $n --max-dev 1000 --seq-len 128 --epochs 4 \
      --seeds "$SEEDS" --batch-size 16 --lr-grid 3e-4,1e-3 --baseline scratch --baseline-lr-grid 3e-4,1e-3 \
      --threads "$THREADS" --quiet --out "$OUT/imdb$n" > "$OUT/imdb$n.log" 2>&1
done
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
print(f"{'task':<34}{'pretrained':>11}{'random':>9}{'delta':>8}  95% interval      verdict")
for name in ("probe-sst2", "probe-imdb", "imdb200", "imdb800"):
    m = json.loads((out / name / "metrics.json").read_text())
    if m.get("metric") in ("accuracy", "f1", "mcc"):  # fractions in metrics.json; points in the table
        m = {**m, **{k: 100 * m[k] for k in ("value", "baseline_value", "delta")},
             "interval": [100 * x for x in m["interval"]]}
    lo, hi = m["interval"]
    rows[name] = {k: m.get(k) for k in ("value", "baseline_value", "delta", "interval", "verdict")}
    print(f"{name:<34}{m['value']:>11.2f}{m['baseline_value']:>9.2f}{m['delta']:>+8.2f}  [{lo:+.2f}, {hi:+.2f}]  "
          f"{m.get('verdict', '')}")
print(json.dumps(rows))
EOF
